"""A callback tests add on the command line (``--trainer.callbacks+=ddp_probe.Probe``) to see, from outside
a DDP run, what each rank trained on and what the shared latent collection held."""

import os
from pathlib import Path

import lightning as L
import torch


class Probe(L.Callback):
    """Saves per rank the training indices of every epoch, and on rank zero the gathered validation latents."""

    def __init__(self, out: str):
        self.out = Path(out)
        self.seen: dict[int, list[int]] = {}
        self.latents = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.seen.setdefault(trainer.current_epoch, []).extend(batch[2].tolist())

    def on_validation_epoch_end(self, trainer, pl_module):
        self.latents = pl_module.validation_latents()  # every rank calls the collective

    def on_validation_end(self, trainer, pl_module):
        # After the epoch's metrics are computed and synced, so val/loss is this epoch's.
        if trainer.is_global_zero and self.latents is not None and not trainer.sanity_checking:
            self.out.mkdir(parents=True, exist_ok=True)
            torch.save({"index": self.latents.index, "mu": self.latents.mu, "neg_elbo": self.latents.neg_elbo,
                        "val_loss": float(trainer.callback_metrics["val/loss"])},
                       self.out / f"latents_{trainer.state.fn.value}_{trainer.current_epoch}.pt")

    def on_train_end(self, trainer, pl_module):
        self.out.mkdir(parents=True, exist_ok=True)
        torch.save(self.seen, self.out / f"seen_rank{trainer.global_rank}_{os.getpid()}.pt")
