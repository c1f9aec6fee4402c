"""Drawing jobs for tests (``drawing_probe:heavy_modules``, ``drawing_probe:native_threads``): what the drawing
process holds."""

import sys

from lvae.drawing import Drawn


def heavy_modules() -> Drawn:
    """Which of the training process's heavy imports the drawing process holds."""
    return Drawn(scalars={name: 1.0 for name in ("torch", "lightning", "lightning.pytorch") if name in sys.modules})


def native_threads() -> Drawn:
    """The thread count of each native thread pool (OpenMP, BLAS) loaded once scikit-learn's neighbour search ran."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_info

    points = np.random.default_rng(0).normal(size=(200, 2))
    NearestNeighbors(n_neighbors=5).fit(points).kneighbors(points)
    return Drawn(scalars={f"{pool['internal_api']}:{pool['filepath']}": float(pool["num_threads"])
                          for pool in threadpool_info()})
