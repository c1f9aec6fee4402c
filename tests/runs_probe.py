"""Callbacks tests add on the command line (``--trainer.callbacks+=runs_probe.Record``) to see from outside a run
which inputs each step trained on, and to stop a run with Ctrl-C at an exact place."""

import json
import os
import signal
from pathlib import Path

import lightning as L


class Record(L.Callback):
    """Appends one line per finished training step to `out`: the epoch, the step and the inputs' dataset indices."""

    def __init__(self, out: str):
        self.out = Path(out)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        with open(self.out, "a") as f:
            f.write(json.dumps({"epoch": trainer.current_epoch, "step": trainer.global_step,
                                "index": batch[2].tolist()}) + "\n")


class CtrlC(L.Callback):
    """Sends this process SIGINT, as Ctrl-C does, once training reaches global step `step`: in `hook`, either
    on_train_batch_start (the batch was handed out, its step not begun) or on_after_backward (in the middle of
    the step, before the optimizer's)."""

    def __init__(self, step: int, hook: str):
        self.step, self.hook = step, hook

    def _maybe(self, trainer, hook: str) -> None:
        if hook == self.hook and trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._maybe(trainer, "on_train_batch_start")

    def on_after_backward(self, trainer, pl_module):
        self._maybe(trainer, "on_after_backward")
