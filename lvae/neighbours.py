"""Each point's nearest neighbours and whether they share its label, in NumPy alone: the one neighbour search that
the uncertainty numbers (training process) and the t-SNE map's quality figure (drawing process, which imports no
torch) both use."""

import numpy as np


def nearest_neighbours(points: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices (N, k) of each point's k nearest other points (N, D), Euclidean."""
    if len(points) <= k:
        raise ValueError(f"{len(points)} points have fewer than k={k} neighbours each")
    points = np.asarray(points, dtype=np.float64)  # float64: a float32 |a|^2 + |b|^2 - 2ab would blur close ties
    square = (points ** 2).sum(axis=1)  # (N,)
    out = []
    for start in range(0, len(points), chunk):  # chunks bound the (chunk, N) distance matrix
        rows = np.arange(start, min(start + chunk, len(points)))  # (c,)
        d = square[rows, None] + square[None, :] - 2 * points[rows] @ points.T  # (c, N) squared distances
        d[np.arange(len(rows)), rows] = np.inf  # not its own neighbour
        out.append(np.argpartition(d, k - 1, axis=1)[:, :k])
    return np.concatenate(out)


def same_label(points: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Whether each of a point's k nearest neighbours shares its label: (N, D) points, (N,) labels -> (N, k)."""
    labels = np.asarray(labels)
    return labels[nearest_neighbours(points, k)] == labels[:, None]
