"""Lightning callbacks that show what a VAE's latent space is doing, one per file, all usable from YAML."""

from callbacks.latent_export import LatentExport

__all__ = ["LatentExport"]
