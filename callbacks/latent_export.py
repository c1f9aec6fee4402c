"""`lvae predict` writes the latent means and log-variances of a whole split to one .npz file."""

from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from lvae.latents import gather_by_index
from lvae.say import say


class LatentExport(Callback):
    """Writes arrays `mu`, `logvar`, `label` and `index` of the predicted split, sorted by dataset index.

    Lightning's predict under DDP neither pads nor gathers: each rank holds its own share. This callback
    gathers every rank's rows and orders them by index, so the file is complete and the same for any number
    of processes. The split is chosen with ``--data.predict_split`` (test by default).

    Any VAE: lvae's `VAE.predict_step` returns the rows; for another module the callback encodes each predicted
    batch ``(x, y)`` or ``(x, y, index)`` with its ``encode(x) -> (mu, logvar)``, and takes the dataset indices of a
    batch without them from Lightning's predict batch sampler (the indices its prediction writers get).

    Args:
        path: the .npz file to write; by default ``latents_<split>.npz`` in the run folder.
    """

    def __init__(self, path: Optional[str] = None):
        self.path = path
        self._rows: list[dict[str, torch.Tensor]] = []
        self._target: Optional[Path] = None

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if stage != "predict":
            return
        split = getattr(getattr(trainer.datamodule, "hparams", {}), "get", lambda *_: None)("predict_split")
        root = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast: resolved on every rank
        self._target = Path(self.path) if self.path else root / f"latents_{split or 'predict'}.npz"

    @override
    def on_predict_epoch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._rows = []

    @override
    def on_predict_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any,
                             batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if isinstance(outputs, dict) and {"mu", "logvar", "label", "index"} <= outputs.keys():
            self._rows.append({k: outputs[k].detach() for k in ("mu", "logvar", "label", "index")})
            return
        x, *rest = batch if isinstance(batch, (list, tuple)) else (batch,)
        with torch.inference_mode():
            mu, logvar = pl_module.encode(x)
        label = rest[0] if rest else torch.zeros(len(x), dtype=torch.long)
        index = rest[1] if len(rest) > 1 else self._indices(trainer, batch_idx, dataloader_idx)
        self._rows.append({"mu": mu.detach(), "logvar": logvar.detach(), "label": torch.as_tensor(label).to(mu.device),
                           "index": torch.as_tensor(index).to(mu.device)})

    @staticmethod
    def _indices(trainer: "L.Trainer", batch_idx: int, dataloader_idx: int) -> list[int]:
        loaders = trainer.predict_dataloaders
        loader = loaders[dataloader_idx] if isinstance(loaders, (list, tuple)) else loaders
        seen = getattr(getattr(loader, "batch_sampler", None), "seen_batch_indices", None)
        if not seen:
            raise ValueError("LatentExport cannot tell which dataset inputs a predicted batch holds: give batches "
                             "(x, y, index), or predict from a torch DataLoader")
        return seen[batch_idx]

    @override
    def on_predict_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        local = {k: torch.cat([row[k] for row in self._rows]) for k in self._rows[0]}
        arrays = gather_by_index(trainer.strategy, local)  # a collective: every rank takes part
        self._rows = []
        if trainer.is_global_zero:
            self._target.parent.mkdir(parents=True, exist_ok=True)
            np.savez(self._target, **{k: v.numpy() for k, v in arrays.items()})
            say(f"lvae: wrote {len(arrays['index'])} latents to {self._target}")
