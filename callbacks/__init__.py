"""Lightning callbacks that show what a VAE's latent space is doing, one per file, all usable from YAML.

Installed as `lvae.callbacks` (the folder stays at the repository's top level): a user's own `callbacks.py` cannot
shadow it. None of them imports the drawing stack (matplotlib, openTSNE, scikit-learn); their figures are drawn by
the modules of `lvae.figures`, in the drawing process.
"""

from lvae.callbacks.latent_explorer import LatentExplorer
from lvae.callbacks.latent_export import LatentExport
from lvae.callbacks.latent_interpolation import LatentInterpolation
from lvae.callbacks.latent_scatter import LatentScatter
from lvae.callbacks.latent_traversal import LatentTraversal
from lvae.callbacks.latent_uncertainty import LatentUncertainty
from lvae.callbacks.prior_samples import PriorSamples
from lvae.callbacks.reconstructions import Reconstructions
from lvae.callbacks.tsne_embedding import TSNEEmbedding

__all__ = ["LatentExplorer", "LatentExport", "LatentInterpolation", "LatentScatter", "LatentTraversal",
           "LatentUncertainty", "PriorSamples", "Reconstructions", "TSNEEmbedding"]
