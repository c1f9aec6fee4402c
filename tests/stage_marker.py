"""A callback tests add on the command line (``--trainer.callbacks+=stage_marker.StageMarker``) to send a signal at
a known moment of an evaluation: it prints a line there, then holds until the trainer has taken note of SIGTERM."""

import time

import lightning as L


class StageMarker(L.Callback):
    """Prints "at <moment>" at the first evaluation batch ("batch") or once the evaluation is over ("end"), then waits
    (up to 60 s) for the trainer to receive SIGTERM."""

    def __init__(self, moment: str = "batch"):
        self.moment = moment
        self.marked = False

    def _mark(self, trainer: L.Trainer) -> None:
        if self.marked:
            return
        self.marked = True
        print(f"at {self.moment}", flush=True)
        deadline = time.monotonic() + 60
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.01)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.moment == "batch" and not trainer.sanity_checking:
            self._mark(trainer)

    def on_test_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.moment == "batch":
            self._mark(trainer)

    def on_predict_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if self.moment == "batch":
            self._mark(trainer)

    def on_validation_end(self, trainer, pl_module):
        if self.moment == "end" and not trainer.sanity_checking:
            self._mark(trainer)

    def on_test_end(self, trainer, pl_module):
        if self.moment == "end":
            self._mark(trainer)

    def on_predict_end(self, trainer, pl_module):
        if self.moment == "end":
            self._mark(trainer)
