"""A drawing job for tests (``drawing_probe:heavy_modules``): which of the training process's heavy imports the
drawing process holds."""

import sys

from lvae.drawing import Drawn


def heavy_modules() -> Drawn:
    return Drawn(scalars={name: 1.0 for name in ("torch", "lightning", "lightning.pytorch") if name in sys.modules})
