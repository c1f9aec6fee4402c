"""The validation inputs a picture shows every epoch: chosen once, by dataset index, and kept in the checkpoint."""

from typing import Any, Optional

import torch
from torch import Tensor

from lvae.latents import Latents
from lvae.picture_callback import PictureCallback
from lvae.say import notice


class FixedInputs:
    """Dataset indices of the inputs a picture shows, chosen once from the epoch's gathered `Latents` (sorted by
    dataset index, the same on any number of processes), so every epoch, a resume and a DDP run show the same ones.

    The choice is seeded and takes the labels in turn, in a seeded order: n inputs cover min(n, labels) labels,
    evenly, and consecutive inputs differ in label wherever there are two labels (the pairs of an interpolation).

    Args:
        owner: the callback's name, for warnings.
        n: how many inputs.
        seed: seed of the choice.
    """

    def __init__(self, owner: str, n: int, seed: int):
        self.owner, self.n, self.seed = owner, n, seed
        self.index: Optional[Tensor] = None  # (n,) dataset indices, in the order shown

    def rows(self, latents: Latents) -> Tensor:
        """The rows of `latents` that hold the chosen inputs, in their order (chosen on the first call)."""
        if self.index is not None:
            missing = self.index[~torch.isin(self.index, latents.index)]
            if len(missing):
                notice(f"{self.owner}: the inputs it showed (dataset indices {missing.tolist()[:5]}) are not "
                       "among this epoch's validation latents (model.latent_points or the data changed?); "
                       "new inputs are chosen, so the pictures before and after this point differ")
                self.index = None
        if self.index is None:
            self.index = self._choose(latents)
        return torch.searchsorted(latents.index, self.index)  # latents.index is sorted

    def _choose(self, latents: Latents) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(latents), generator=generator)  # (N,) rows in a seeded order
        labels = latents.label.unique()
        labels = labels[torch.randperm(len(labels), generator=generator)]
        queues = [order[latents.label[order] == label].tolist() for label in labels]  # each label's rows
        chosen: list[int] = []
        for turn in range(max(map(len, queues))):
            chosen += [queue[turn] for queue in queues if turn < len(queue)]
            if len(chosen) >= self.n:
                break
        return latents.index[chosen[:self.n]].clone()

    def state_dict(self) -> dict[str, Any]:
        return {"index": self.index, "n": self.n, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if (state["n"], state["seed"]) != (self.n, self.seed):
            notice(f"{self.owner}: the checkpoint showed {state['n']} inputs chosen with seed {state['seed']}, "
                   f"this run asks for {self.n} with seed {self.seed}; new inputs are chosen")
            return
        self.index = state["index"]


class FixedInputsPicture(PictureCallback):
    """A picture of the same validation inputs every epoch (`self.inputs`, a `FixedInputs`), which a resumed run
    continues: the choice is the callback's checkpoint state."""

    inputs: FixedInputs

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "inputs": self.inputs.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.inputs.load_state_dict(state_dict["inputs"])

