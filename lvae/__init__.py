"""lvae: train VAEs with PyTorch Lightning and watch their latent space learn."""

import importlib
from typing import Any

from lvae.errors import CheckpointError, ConfigError, DataFilesError, DivergenceError, LVAEError

# Imported on first use (PEP 562): the drawing process imports `lvae.figures` and must not pay for Lightning.
_LAZY = {"VAE": "lvae.model", "MNISTDataModule": "lvae.data", "Latents": "lvae.latents",
         "ImageFolderDataModule": "lvae.image_folder", "CIFAR10DataModule": "lvae.cifar"}

__all__ = ["VAE", "MNISTDataModule", "ImageFolderDataModule", "CIFAR10DataModule", "Latents", "LVAEError",
           "ConfigError", "DataFilesError", "CheckpointError", "DivergenceError"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lvae' has no attribute {name!r}")
