"""Lightning callbacks that show what a VAE's latent space is doing, one per file, all usable from YAML."""

from callbacks.latent_export import LatentExport
from callbacks.latent_uncertainty import LatentUncertainty
from callbacks.prior_samples import PriorSamples

__all__ = ["LatentExport", "LatentUncertainty", "PriorSamples"]
