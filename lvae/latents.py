"""One collection of latent statistics per validation epoch, shared by every picture, for any VAE.

lvae's `VAE` adds each validation batch to its `LatentCollection`; the first callback that asks for the result
triggers one gather across ranks (`gather_by_index`), after which every other callback reads the same cached
`Latents`. For a module lvae did not write, `lvae.followed_inputs.FollowedInputs` encodes a fixed set of validation
inputs itself, once per epoch. Either way the rows are de-duplicated and ordered by dataset index: N processes give
exactly the set that one process gives.
"""

from dataclasses import dataclass, fields
from typing import Callable, Optional

import torch
from lightning.pytorch.strategies import Strategy
from torch import Tensor

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


def seeded_choice(n: int, k: int, seed: int) -> Tensor:
    """k of the positions 0..n-1, sorted, chosen by a generator of their own seeded `seed` (all n when n <= k): the
    same choice on every epoch, resume and number of processes."""
    if n <= k:
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values


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
        self._result: Optional[Latents] = None  # the gathered latents of the epoch
        self._finished: Optional[Latents] = None  # and with what `result`'s `finish` added

    @property
    def enabled(self) -> bool:
        return self.max_points > 0

    def reset(self, epoch: int) -> None:
        self._batches, self._epoch, self._result, self._finished = [], epoch, None, None

    def add(self, **batch: Tensor) -> None:
        self._batches.append({k: v.detach() for k, v in batch.items()})

    def result(self, strategy: Strategy, finish: Optional[Callable[[Latents], Latents]] = None
               ) -> Optional[Latents]:
        """The gathered latents of the current epoch (None when nothing was collected). Collective, cached.

        `finish` adds what is computed for the followed inputs only (the model's negative ELBO): it gets the
        gathered latents, on the CPU and sorted by index, and returns them with the added entries. It is local work
        on the calling rank, cached too; the latents without it stay at hand for a caller that asks without it."""
        if self._result is None and self.enabled:
            self._result = self._gather(strategy)
        if self._result is None or finish is None:
            return self._result
        if self._finished is None:
            self._finished = finish(self._result)
        return self._finished

    def _gather(self, strategy: Strategy) -> Optional[Latents]:
        local = {k: torch.cat([b[k] for b in self._batches]) for k in self._batches[0]} if self._batches else None
        # Ranks must agree on whether there is anything to gather, or the collective would hang.
        if not strategy.reduce_boolean_decision(local is not None, all=True):
            return None
        if self.subset is not None:
            keep = torch.isin(local["index"], self.subset.to(local["index"].device))
            local = {k: v[keep] for k, v in local.items()}
        rows = gather_by_index(strategy, local)
        if self.subset is None:
            self.subset = rows["index"][seeded_choice(len(rows["index"]), self.max_points, self.seed)]
            keep = torch.isin(rows["index"], self.subset)
            rows = {k: v[keep] for k, v in rows.items()}
        elif len(rows["index"]) < len(self.subset):
            notice(f"only {len(rows['index'])} of the {len(self.subset)} followed validation inputs were seen "
                   "this epoch (limit_val_batches?); the pictures show those")
        return Latents(epoch=self._epoch, **rows)

    def state_dict(self) -> dict:
        return {"subset": self.subset, "max_points": self.max_points, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if state["max_points"] != self.max_points or state["seed"] != self.seed:
            notice(f"the checkpoint followed {state['max_points']} validation inputs (seed {state['seed']}) "
                   f"and this run asks for {self.max_points} (seed {self.seed}): a new subset is drawn")
            return
        self.subset = state["subset"]


