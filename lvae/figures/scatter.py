"""`LatentScatter`'s figure: the latent means as points coloured by label, with a few inputs as thumbnails."""

from typing import Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox

from lvae.drawing import Drawn
from lvae.figures.canvas import Limits, class_colour, label_handles, save_figure, thumbnail


def draw(name: str, path: str, figsize: tuple[float, float], axes_rect: tuple[float, float, float, float],
         points: np.ndarray, labels: np.ndarray, sizes: np.ndarray, alpha: "float | np.ndarray",
         limits: Optional[Limits], axis_labels: tuple[str, str], thumb_points: np.ndarray, thumb_images: np.ndarray,
         thumb_labels: np.ndarray, title: str, detail: str) -> Drawn:
    """The drawing job of `LatentScatter` (runs in the drawing process): points (N, 2) coloured by labels (N,),
    thumbnails (K, H, W) or (K, H, W, 3) uint8 at thumb_points (K, 2), framed in their label's colour."""
    fig = Figure(figsize=figsize)
    ax = fig.add_axes(axes_rect)
    ax.scatter(points[:, 0], points[:, 1], s=sizes, c=class_colour(labels), alpha=alpha, linewidths=0,
               rasterized=True)
    if limits is not None:
        ax.set_xlim(limits[0], limits[1])
        ax.set_ylim(limits[2], limits[3])
    for (x, y), image, label in zip(thumb_points, thumb_images, thumb_labels):
        # annotation_clip hides a thumbnail whose point lies outside fixed limits
        box = AnnotationBbox(thumbnail(image, 25), (x, y), frameon=True, pad=0.1, annotation_clip=True,
                             bboxprops={"edgecolor": class_colour(label), "linewidth": 1.5})
        ax.add_artist(box)
    ax.legend(handles=label_handles(labels), title="label", loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(f"{title}\n{detail}", fontsize=10)
    return Drawn(pictures=[(name, save_figure(fig, path), f"{title}; {detail}")])

