"""How the pictures name the labels: the class names the data gives, and each input's label as a picture writes
it; and the validation dataset those names (and the followed inputs) are read from."""

from typing import Any, Optional, Sequence

import lightning as L
from torch import Tensor


def validation_dataset(trainer: "L.Trainer") -> Optional[Any]:
    """The dataset of the trainer's validation DataLoader (the first one, where there are several); None when there
    is none."""
    loader = trainer.val_dataloaders
    loader = loader[0] if isinstance(loader, (list, tuple)) and loader else loader
    return getattr(loader, "dataset", None)


def label_names(trainer: "L.Trainer") -> Optional[list[str]]:
    """The class names of the labels, for legends: the data module's `classes` (lvae's data modules, following
    torchvision's datasets), else the validation dataset's; None when neither names them."""
    datamodule = getattr(trainer, "datamodule", None)
    names = getattr(datamodule, "classes", None) if datamodule is not None else None
    if names is None:
        names = getattr(validation_dataset(trainer), "classes", None)
    return [str(name) for name in names] if names else None


def label_texts(labels: Tensor, names: Optional[Sequence[str]], labelled: bool = True) -> list[str]:
    """Each label as the picture writes it: its class name where the data names it, else its number; "" for
    unlabelled inputs (`Latents.labelled`)."""
    if not labelled:
        return [""] * len(labels)
    return [names[c] if names is not None and 0 <= c < len(names) else str(c) for c in labels.tolist()]
