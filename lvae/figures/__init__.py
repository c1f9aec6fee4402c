"""The figures of lvae's pictures, one module per picture, run in the drawing process (`lvae.drawing`).

Each module's job functions take NumPy arrays and plain values, write their PNGs whole and return a `Drawn`. None
imports Lightning, and the training process never imports these modules: callbacks name them in a `Job`.

This package's own module imports nothing: the `lvae` command reads `SHIPPED` before it imports Lightning.
"""

from collections.abc import Iterable

# The figure functions that the picture callbacks lvae ships (`lvae.callbacks`) declare, as "module:function". The
# `lvae` command's early drawing process imports their modules while Lightning loads, before any callback can be
# imported (a callback imports Lightning); tests/test_pictures.py checks this list against the callbacks' own.
SHIPPED = ("lvae.figures.scatter:draw", "lvae.figures.tsne:map_and_draw", "lvae.figures.prior:draw",
           "lvae.figures.uncertainty:draw", "lvae.figures.traversal:draw", "lvae.figures.interpolation:draw",
           "lvae.figures.reconstructions:draw", "lvae.figures.explorer:record", "lvae.figures.explorer:rewrite",
           "lvae.figures.scatter:write_thumbnails", "lvae.figures.animation:animate",
           "lvae.figures.animation:draw_then_animate")
# What the t-SNE map imports only when it first runs: openTSNE, and scikit-learn and SciPy through it.
LIBRARIES = ("openTSNE", "sklearn.neighbors")


def modules(figures: Iterable[str]) -> tuple[str, ...]:
    """The modules of `figures`, each once, in order: "lvae.figures.scatter:draw" -> "lvae.figures.scatter"."""
    return tuple(dict.fromkeys(figure.partition(":")[0] for figure in figures))

# What the `lvae` command's early drawing process imports while Lightning loads (`lvae.drawing.EarlyDrawing`).
DRAWING_STACK = (*modules(SHIPPED), *LIBRARIES)
