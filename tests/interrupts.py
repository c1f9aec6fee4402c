"""A callback that interrupts fit as SIGTERM does, at a chosen epoch: shared by the tests of what an interrupt keeps."""

import lightning as L
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException


class StopsMidEpoch(L.Callback):
    """SIGTERM after the first training step of `epoch`, as Lightning's handler raises it; keeps the weights then."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.weights: dict[str, torch.Tensor] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.current_epoch == self.epoch:
            self.weights = {key: value.clone() for key, value in pl_module.state_dict().items()}
            raise SIGTERMException
