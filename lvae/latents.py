"""One collection of latent statistics per validation epoch, shared by every picture, for any VAE.

lvae's `VAE` adds each validation batch to its `LatentCollection`; the first callback that asks for the result
triggers one gather across ranks, after which every other callback reads the same cached `Latents`. For a module
lvae did not write, `FollowedInputs` encodes a fixed set of validation inputs itself, once per epoch. Either way the
rows are de-duplicated and ordered by dataset index: N processes give exactly the set that one process gives.
"""

from dataclasses import dataclass, fields
from typing import Callable, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor
from torch.utils.data import default_collate

from lvae.divergence import latents_diverged
from lvae.say import notice


@dataclass(frozen=True)
class Latents:
    """Per-input statistics of one validation epoch, on the CPU, sorted by dataset index."""

    epoch: int
    index: Tensor  # (N,) int64, position in the validation split
    label: Tensor  # (N,) int64
    mu: Tensor  # (N, Z) means of q(z|x)
    logvar: Tensor  # (N, Z) log-variances of q(z|x)
    kl: Tensor  # (N,) KL(q(z|x) || N(0, I)), nats
    image: Tensor  # (N, C, H, W) uint8 inputs
    recon: Optional[Tensor] = None  # (N,) reconstruction NLL, nats; None where the module has no likelihood
    neg_elbo: Optional[Tensor] = None  # (N,) negative ELBO averaged over several z draws, nats; the same

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labelled(self) -> bool:
        """Whether the inputs carry labels worth drawing: an image folder without class folders gives every input
        label 0, and its pictures draw no label."""
        return len(self.label.unique()) > 1

    def select(self, rows: Tensor) -> "Latents":
        """The same statistics for a subset of rows."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return Latents(**{k: v if k == "epoch" or v is None else v[rows] for k, v in values.items()})


def unusable(latents: Optional[Latents], min_points: int, finite: tuple[str, ...] = ("mu",)) -> Optional[str]:
    """Why `latents` cannot make a picture (None when they can): the one check every
    picture callback shares, so each skips with a warning in lvae's words instead of raising. Means or
    log-variances that the divergence rule calls absurd (`lvae.divergence`) are refused for every picture,
    e.g. "the means reach 3e+31 (limit 10,000): the model has diverged". Inputs that all share one label
    (unlabelled images) are drawn in one colour."""
    if latents is None:
        return "no validation latents were collected (model.latent_points=0, or no validation batches)"
    if len(latents) < min_points:
        return f"{len(latents)} validation inputs are too few (this picture needs {min_points})"
    # Every picture reads the means and log-variances; what the rest holds is a consequence when these diverged.
    for name in ("mu", "logvar"):
        if not bool(torch.isfinite(getattr(latents, name)).all()):
            return f"latents.{name} holds NaN or infinite values: the model has diverged"
    absurd = latents_diverged(float(latents.mu.abs().max()), float(latents.logvar.max()))
    if absurd is not None:
        return f"{absurd}: the model has diverged"
    for name in finite:
        if getattr(latents, name) is not None and not bool(torch.isfinite(getattr(latents, name)).all()):
            return f"latents.{name} holds NaN or infinite values"
    return None


def gather_by_index(strategy: Strategy, parts: dict[str, Tensor]) -> dict[str, Tensor]:
    """All ranks' rows of `parts` (which holds an "index" entry), de-duplicated and sorted by index, on the CPU.

    A collective: every rank must call it. Ranks may hold different numbers of rows.
    """
    if strategy.world_size > 1:
        n = torch.tensor([len(parts["index"])], device=strategy.root_device)
        sizes = strategy.all_gather(n).view(-1).tolist()  # (world,)
        width = max(sizes)
        gathered = {}
        for key, value in parts.items():
            padded = value.new_zeros((width, *value.shape[1:]))
            padded[: len(value)] = value
            stacked = strategy.all_gather(padded)  # (world, width, ...)
            gathered[key] = torch.cat([stacked[r, :size] for r, size in enumerate(sizes)])
        parts = gathered
    parts = {k: v.cpu() for k, v in parts.items()}
    order = torch.argsort(parts["index"], stable=True)
    ordered = parts["index"][order]
    first = torch.ones_like(ordered, dtype=torch.bool)
    first[1:] = ordered[1:] != ordered[:-1]  # padding repeats an index; keep its first copy
    keep = order[first]
    return {k: v[keep] for k, v in parts.items()}


class LatentCollection:
    """Accumulates validation batches and hands out the epoch's gathered `Latents`, once.

    Args:
        max_points: how many inputs to follow. When the validation set is larger, a subset of this size is
            drawn once (seeded) and kept in the checkpoint, so the same inputs are followed epoch after epoch
            and across a resume. 0 switches collection off.
        seed: seed of that draw.
    """

    def __init__(self, max_points: int, seed: int = 0):
        self.max_points = max_points
        self.seed = seed
        self.subset: Optional[Tensor] = None  # sorted dataset indices followed by every picture
        self._batches: list[dict[str, Tensor]] = []
        self._epoch = 0
        self._result: Optional[Latents] = None

    @property
    def enabled(self) -> bool:
        return self.max_points > 0

    def reset(self, epoch: int) -> None:
        self._batches, self._epoch, self._result = [], epoch, None

    def add(self, **batch: Tensor) -> None:
        self._batches.append({k: v.detach() for k, v in batch.items()})

    def result(self, strategy: Strategy, finish: Optional[Callable[[dict[str, Tensor]], dict[str, Tensor]]] = None
               ) -> Optional[Latents]:
        """The gathered latents of the current epoch (None when nothing was collected). Collective, cached.

        `finish` adds what is computed for the followed inputs only (the model's negative ELBO): it gets their
        gathered rows, on the CPU and sorted by index, and returns them with the added entries."""
        if self._result is not None or not self.enabled:
            return self._result
        local = {k: torch.cat([b[k] for b in self._batches]) for k in self._batches[0]} if self._batches else None
        # Ranks must agree on whether there is anything to gather, or the collective would hang.
        if not strategy.reduce_boolean_decision(local is not None, all=True):
            return None
        if self.subset is not None:
            keep = torch.isin(local["index"], self.subset.to(local["index"].device))
            local = {k: v[keep] for k, v in local.items()}
        rows = gather_by_index(strategy, local)
        if self.subset is None:
            self.subset = self._choose_subset(rows["index"])
            keep = torch.isin(rows["index"], self.subset)
            rows = {k: v[keep] for k, v in rows.items()}
        elif len(rows["index"]) < len(self.subset):
            notice(f"only {len(rows['index'])} of the {len(self.subset)} followed validation inputs were seen "
                   "this epoch (limit_val_batches?); the pictures show those")
        if finish is not None:
            rows = finish(rows)
        self._result = Latents(epoch=self._epoch, **rows)
        return self._result

    def _choose_subset(self, index: Tensor) -> Tensor:
        if len(index) <= self.max_points:
            return index.clone()
        generator = torch.Generator().manual_seed(self.seed)
        return index[torch.randperm(len(index), generator=generator)[: self.max_points]].sort().values

    def state_dict(self) -> dict:
        return {"subset": self.subset, "max_points": self.max_points, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["max_points"] != self.max_points or state["seed"] != self.seed:
            notice(f"the checkpoint followed {state['max_points']} validation inputs (seed {state['seed']}) "
                   f"and this run asks for {self.max_points} (seed {self.seed}): a new subset is drawn")
            return
        self.subset = state["subset"]


def as_pictures(images: Tensor) -> np.ndarray:
    """Images (N, C, H, W) as the arrays matplotlib and PIL draw: (N, H, W) when grey, (N, H, W, 3) in colour."""
    images = images.permute(0, 2, 3, 1)  # (N, H, W, C)
    return (images[..., 0] if images.shape[-1] == 1 else images).numpy()


def grid_picture(grid: Tensor, channels: int) -> np.ndarray:
    """A `torchvision.utils.make_grid` result (3, H, W) as one picture: (H, W) for grey inputs (make_grid repeats
    a single channel three times), (H, W, 3) for colour."""
    return grid[0].numpy() if channels == 1 else grid.permute(1, 2, 0).numpy()


def label_names(trainer: "L.Trainer") -> Optional[list[str]]:
    """The class names of the labels, for legends: the data module's `classes` (lvae's data modules, following
    torchvision's datasets), else the validation dataset's; None when neither names them."""
    datamodule = getattr(trainer, "datamodule", None)
    names = getattr(datamodule, "classes", None) if datamodule is not None else None
    if names is None:
        loader = trainer.val_dataloaders
        loader = loader[0] if isinstance(loader, (list, tuple)) and loader else loader
        names = getattr(getattr(loader, "dataset", None), "classes", None)
    return [str(name) for name in names] if names else None


def kl_to_prior(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per input, (N, Z) -> (N,), in nats: the one formula lvae uses."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)


def decode_images(pl_module: "L.LightningModule", z: Tensor, image_shape: Optional[tuple[int, ...]]) -> Tensor:
    """`pl_module.decode(z)` for latent codes (B, Z), as images (B, C, H, W) in [0, 1] on the CPU. A decoder may
    return them flattened, (B, C*H*W), as the classic PyTorch example's does; `image_shape` (C, H, W), the inputs'
    shape, restores them."""
    with torch.inference_mode():
        images = pl_module.decode(z.to(device=pl_module.device, dtype=pl_module.dtype)).float().cpu()
    if image_shape is not None:
        return images.reshape(len(z), *image_shape)
    if images.dim() != 4:
        raise ValueError(f"decode returned shape {tuple(images.shape)}, and no validation input was collected to "
                         "give the images' (C, H, W)")
    return images


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
        image = (x.clamp(0, 1) * 255).round().to(torch.uint8)  # (n, C, H, W)
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
        loader = trainer.val_dataloaders
        loader = loader[0] if isinstance(loader, (list, tuple)) and loader else loader
        dataset = getattr(loader, "dataset", None)
        if dataset is None or not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            return ("the validation DataLoader has no dataset that can be indexed (an IterableDataset?), so lvae "
                    "cannot choose inputs to follow; give the pictures a map-style dataset")
        n = len(dataset)
        if n == 0:
            return "the validation dataset is empty"
        chosen = torch.arange(n) if n <= self.max_points else torch.randperm(
            n, generator=torch.Generator().manual_seed(self.seed))[:self.max_points].sort().values
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
