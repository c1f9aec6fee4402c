"""lvae: train VAEs with PyTorch Lightning and watch their latent space learn."""

from lvae.data import MNISTDataModule
from lvae.errors import CheckpointError, ConfigError, DataFilesError, DivergenceError, LVAEError
from lvae.latents import Latents
from lvae.model import VAE

__all__ = ["VAE", "MNISTDataModule", "Latents", "LVAEError", "ConfigError", "DataFilesError", "CheckpointError",
           "DivergenceError"]
