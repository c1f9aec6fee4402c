"""A callback tests add on the command line (``--trainer.callbacks+=step_marker.StepMarker``) to learn, from
outside a DDP run, which process is which rank when every rank is in the middle of an epoch."""

import os
import time
from pathlib import Path

import lightning as L


class StepMarker(L.Callback):
    """At training step `step`, each rank writes its process id to `<out>/rank<R>.pid`; rank `hold` then waits
    there (to be killed), so the others wait for it in their next collective."""

    def __init__(self, out: str, step: int, hold: int = -1):
        self.out = Path(out)
        self.step = step
        self.hold = hold

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / f"rank{trainer.global_rank}.pid").write_text(str(os.getpid()))
            if trainer.global_rank == self.hold:
                time.sleep(300)
