"""What every figure shares: the PNG resolution, writing a PNG whole, the label colours and legends."""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.offsetbox import OffsetImage

PNG_DPI = 100
Limits = tuple[float, float, float, float]  # xmin, xmax, ymin, ymax


def save_figure(figure: Figure, path: str) -> str:
    """Write `figure` as the PNG `path`, whole or not at all: a reader never sees half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=PNG_DPI)
    tmp.replace(path)
    figure.clear()  # matplotlib.figure.Figure is not tracked by pyplot: dropping it frees it
    return str(path)


def class_colour(label: "int | np.ndarray") -> np.ndarray:
    """The colour of a label, or (N, 4) colours of labels (N,), the same in every lvae picture (matplotlib's
    tab10). One call for all the points: one call per point cost 40 ms for 2000 points."""
    from matplotlib import colormaps

    return colormaps["tab10"](np.asarray(label, dtype=np.int64) % 10)



def label_handles(labels: np.ndarray, names: Optional[Sequence[str]] = None) -> list[Line2D]:
    """Legend entries, one per label present, in the label's colour and named by `names` where given."""
    return [Line2D([], [], marker="o", linestyle="", color=class_colour(c),
                   label=str(names[int(c)]) if names is not None and int(c) < len(names) else str(int(c)))
            for c in np.unique(labels)]


def thumbnail(image: np.ndarray, pixels: float) -> OffsetImage:
    """An input drawn `pixels` wide at a point: `image` is (H, W) grey or (H, W, 3) colour, uint8."""
    zoom = pixels / max(image.shape[:2])
    if image.ndim == 2:
        return OffsetImage(image, cmap="gray", norm=Normalize(0, 255), zoom=zoom)
    return OffsetImage(image, zoom=zoom)
