"""Each point's nearest neighbours and whether they share its label, by scikit-learn's search: for the t-SNE map's
quality figure, in the drawing process. (The training process never imports scikit-learn: its uncertainty numbers
use the torch search of `lvae.metrics`.)"""

import numpy as np


def nearest_neighbours(points: np.ndarray, k: int) -> np.ndarray:
    """Indices (N, k) of each point's k nearest other points (N, D), Euclidean; a point is never its own neighbour,
    even where another point lies on it."""
    from sklearn.neighbors import NearestNeighbors  # imported when first needed: most commands draw no such figure

    if len(points) <= k:
        raise ValueError(f"{len(points)} points have fewer than k={k} neighbours each")
    # kneighbors() without points asks for the neighbours of the fitted points, each left out of its own answer.
    return NearestNeighbors(n_neighbors=k).fit(np.asarray(points, dtype=np.float64)).kneighbors(return_distance=False)


def same_label(points: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each of a point's k nearest neighbours shares its label: (N, D) points, (N,) labels -> (N, k)."""
    labels = np.asarray(labels)
    return labels[nearest_neighbours(points, k)] == labels[:, None]
