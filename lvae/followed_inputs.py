"""The validation inputs that the pictures of a module lvae did not write follow: chosen once, encoded once per
epoch, gathered across ranks like lvae's own collection (`lvae.latents`)."""

from typing import Optional

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import default_collate

from lvae.images import to_uint8
from lvae.labels import validation_dataset
from lvae.latent_maths import kl_to_prior
from lvae.latents import Latents, gather_by_index, seeded_choice


class FollowedInputs:
    """The validation inputs that the pictures of a module lvae did not write follow, encoded once per epoch.

    The module needs only ``encode(x) -> (mu, logvar)``. The inputs are chosen once by dataset index from the
    validation DataLoader's dataset (seeded, so every epoch, a resume and any number of processes follow the same
    ones), read as the dataset returns them (`(x, y)` or `(x, y, index)`, torchvision's convention) and held on the
    CPU. Each epoch every rank encodes its share and the shares are gathered by index: a collective.

    Args:
        max_points: how many validation inputs to follow.
        seed: seed of their choice.
        chunk: inputs encoded per forward pass.
    """

    def __init__(self, max_points: int = 2000, seed: int = 0, chunk: int = 512):
        self.max_points, self.seed, self.chunk = max_points, seed, chunk
        self._inputs: Optional[tuple[Tensor, Tensor, Tensor]] = None  # this rank's share: index, x, label
        self._result: Optional[Latents] = None
        self._missing: Optional[str] = None  # why nothing can be followed, said once

    def latents(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> Optional[Latents]:
        """The latents of the current epoch, computed once and cached. Every rank must call it."""
        epoch = trainer.current_epoch
        if self._result is not None and self._result.epoch == epoch:
            return self._result
        if self._inputs is None and self._missing is None:
            self._missing = self._read(trainer)
        if self._missing is not None:
            return None
        index, x, label = self._inputs
        parts = []
        with torch.inference_mode():
            for start in range(0, len(index), self.chunk):
                batch = x[start:start + self.chunk].to(device=pl_module.device, dtype=pl_module.dtype)
                mu, logvar = pl_module.encode(batch)
                parts.append((mu.float().cpu(), logvar.float().cpu()))
        if parts:
            mu, logvar = (torch.cat(p) for p in zip(*parts))
        else:  # a rank with no share still takes part in the gather
            width = self._latent_width(pl_module, x)
            mu, logvar = torch.zeros(0, width), torch.zeros(0, width)
        image = to_uint8(x)  # (n, C, H, W)
        rows = gather_by_index(trainer.strategy, {"index": index, "label": label, "mu": mu, "logvar": logvar,
                                                  "image": image})
        self._result = Latents(epoch=epoch, kl=kl_to_prior(rows["mu"], rows["logvar"]), **rows)
        return self._result

    @staticmethod
    def _latent_width(pl_module: "L.LightningModule", x: Tensor) -> int:
        with torch.inference_mode():
            return int(pl_module.encode(torch.zeros(1, *x.shape[1:], device=pl_module.device))[0].shape[1])

    def _read(self, trainer: "L.Trainer") -> Optional[str]:
        """Read this rank's share of the followed inputs; returns why they cannot be read, or None."""
        dataset = validation_dataset(trainer)
        if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            return ("the validation DataLoader has no dataset that can be indexed (an IterableDataset?), so lvae "
                    "cannot choose inputs to follow; give the pictures a map-style dataset")
        n = len(dataset)
        if n == 0:
            return "the validation dataset is empty"
        chosen = seeded_choice(n, self.max_points, self.seed)
        mine = chosen[trainer.global_rank::trainer.world_size]  # (n_rank,) disjoint shares
        xs, labels = [], []
        for start in range(0, len(mine), self.chunk):
            batch = default_collate([dataset[int(i)] for i in mine[start:start + self.chunk]])
            x, y = (batch[0], batch[1]) if isinstance(batch, (list, tuple)) and len(batch) > 1 else (batch, None)
            if not isinstance(x, Tensor) or x.dim() < 2:
                return f"the validation dataset's items are not images (x, y): got {type(x).__name__}"
            xs.append(x.float())
            labels.append(torch.zeros(len(x), dtype=torch.long) if y is None else torch.as_tensor(y).long().view(-1))
        if xs:
            x = torch.cat(xs)
        else:  # this rank has no share: an empty tensor of the items' shape
            first = default_collate([dataset[0]])
            x = (first[0] if isinstance(first, (list, tuple)) else first).float()[:0]
        if x.dim() == 3:
            x = x.unsqueeze(1)  # (n, H, W) grey images
        self._inputs = (mine, x, torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long))
        return None
