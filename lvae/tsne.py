"""The t-SNE of the latent means (openTSNE): a map warm-started from the last epoch's, and its quality figure.

The work runs in the drawing process. openTSNE is imported only there, inside the functions, so that
`TSNEEmbedding` can build its settings in the training process without it (it is slow to import).
"""

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import numpy as np

from lvae.neighbours import same_label

if TYPE_CHECKING:
    import openTSNE


def knn_label_agreement(points: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Share of points' k nearest neighbours (N, D) that share their label (N,): the quality figure of a map."""
    return float(same_label(points, labels, k).mean())


EARLY_EXAGGERATION = 12  # openTSNE's default factor for the early phase


@dataclass(frozen=True)
class TSNESteps:
    """`TSNEEmbedding`'s settings, carried unchanged from its YAML to the drawing process."""

    perplexity: float
    early_exaggeration_iter: int
    n_iter: int
    warm_early_exaggeration_iter: int
    warm_n_iter: int
    negative_gradient_method: str
    affinity_method: str
    n_jobs: int
    seed: int
    prior_n_iter: int
    knn_k: int
    figsize: tuple[float, float]
    axes_rect: tuple[float, float, float, float]

    def embed(self, x: np.ndarray, start: Optional[np.ndarray]) -> "openTSNE.TSNEEmbedding":
        """A 2-D map of `x` (N, Z), from the previous map `start` (N, 2) (fewer iterations) or from a PCA."""
        import openTSNE
        from openTSNE.affinity import PerplexityBasedNN
        from openTSNE.initialization import rescale

        x = np.ascontiguousarray(x, dtype=np.float64)
        # Affinities come from this epoch's means; only the starting positions come from the previous map.
        affinities = PerplexityBasedNN(x, perplexity=self.perplexity, method=self.affinity_method, n_jobs=self.n_jobs,
                                       random_state=self.seed)
        tsne = openTSNE.TSNE(perplexity=self.perplexity, negative_gradient_method=self.negative_gradient_method,
                             n_jobs=self.n_jobs, random_state=self.seed)
        if start is not None:
            # openTSNE expects a starting map of small spread (its own initialisations use std 1e-4); the
            # previous map's layout is kept, only its scale shrinks.
            init = rescale(start, target_std=1e-4)
            exaggerated, normal = self.warm_early_exaggeration_iter, self.warm_n_iter
        else:
            init, exaggerated, normal = "pca", self.early_exaggeration_iter, self.n_iter
        embedding = tsne.prepare_initial(x, affinities=affinities, initialization=init)
        if exaggerated:
            embedding.optimize(n_iter=exaggerated, exaggeration=EARLY_EXAGGERATION, inplace=True)
        embedding.optimize(n_iter=normal, inplace=True)
        return embedding

    def place(self, embedding: "openTSNE.TSNEEmbedding", z: np.ndarray) -> np.ndarray:
        """Positions (P, 2) of the prior draws `z` (P, Z) in `embedding`, which stays as it is (but centred)."""
        if len(z) == 0:
            return np.zeros((0, 2))
        return np.asarray(embedding.transform(np.ascontiguousarray(z, dtype=np.float64), n_iter=self.prior_n_iter))



def align(points: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rotation or reflection (2, 2) and the shift (2,) that bring `points` (N, 2) nearest to `reference`
    (N, 2), the same inputs' places in the last map (orthogonal Procrustes): ``points @ rotation + shift``."""
    centre, target = points.mean(axis=0), reference.mean(axis=0)
    u, _, vt = np.linalg.svd((points - centre).T @ (reference - target))
    rotation = u @ vt
    return rotation, target - centre @ rotation
