"""Lightning callbacks that show what a VAE's latent space is doing, one per file, all usable from YAML."""

from callbacks.latent_export import LatentExport
from callbacks.latent_scatter import LatentScatter
from callbacks.latent_uncertainty import LatentUncertainty
from callbacks.prior_samples import PriorSamples
from callbacks.tsne_embedding import TSNEEmbedding

__all__ = ["LatentExport", "LatentScatter", "LatentUncertainty", "PriorSamples", "TSNEEmbedding"]
