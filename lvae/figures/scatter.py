"""`LatentScatter`'s figure: the latent means as points coloured by label, with a few inputs as thumbnails."""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.collections import EllipseCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from lvae.drawing import Drawn
from lvae.figures.canvas import (PNG_DPI, Limits, add_thumbnails, axes_pixels, class_colour, displacement,
                                 label_handles, outside, place_boxes, save_figure, set_title, thumbnail_size,
                                 to_pixels)

THUMBNAIL_PX = 24  # a thumbnail's longer side in the PNG


def draw(name: str, path: str, previous: Optional[np.ndarray], **figure_args) -> Drawn:
    """The drawing job of `LatentScatter` (runs in the drawing process): `figure`, written as the PNG `path`, and
    its numbers: how many points lie outside the limits and, given where the points were drawn last (`previous`,
    (N, 2), NaN for points not drawn then), how far they moved."""
    points = figure_args["points"]
    scalars = {f"{name}/outside": float(outside(points, figure_args["limits"]).sum())}
    if previous is not None:
        scalars[f"{name}/displacement"] = displacement(points, previous)
    fig, caption = figure(**figure_args)
    return Drawn(pictures=[(name, save_figure(fig, path), caption)], scalars=scalars)


def write_thumbnails(folder: str, index: np.ndarray, images: np.ndarray) -> Drawn:
    """The thumbnails of `LatentScatter`'s W&B table: each of `images` (N, H, W[, 3]) uint8 as the PNG
    ``<folder>/<dataset index>.png``. Written once a fit, in the drawing process, so that the table logged at the
    end of fit hands W&B files rather than encoding every thumbnail then, with the user waiting. Hands back their
    paths, in the order of `index`, as its state."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in zip(index.tolist(), images):
        path = folder / f"{int(i)}.png"
        Image.fromarray(image).save(path, format="PNG")
        paths.append(str(path))
    return Drawn(state=paths)


def figure(figsize: tuple[float, float], axes_rect: tuple[float, float, float, float], points: np.ndarray,
           labels: np.ndarray, names: Optional[Sequence[str]], sizes: np.ndarray, alpha: "float | np.ndarray",
           ellipses: Optional[np.ndarray], key: list[tuple[str, float, float]], key_title: str, limits: Limits,
           axis_labels: tuple[str, str], thumb_points: np.ndarray, thumb_images: np.ndarray,
           thumb_labels: np.ndarray, title: str, detail: str) -> tuple[Figure, str]:
    """Points (N, 2) coloured by labels (N,) (legend named by `names` where given), of `sizes` (N,) and `alpha`,
    with `ellipses` (N, 3: full width, full height, angle in degrees, in data units) around them where given; `key`
    lists (text, size, alpha) of the point-size legend. Thumbnails (K, H, W) or (K, H, W, 3) uint8 belong to
    thumb_points (K, 2) and are placed beside them, apart from one another and clear of every point's dot, framed
    in their label's colour; one that finds no such place is left out, and the title says so."""
    small = names is not None and max(len(str(n)) for n in names) > 6  # long class names: a smaller legend
    if small:
        axes_rect = (axes_rect[0], axes_rect[1], axes_rect[2] - 0.05, axes_rect[3])  # with room beside the axes
    fig = Figure(figsize=figsize, dpi=PNG_DPI)  # thumbnails are placed in its pixels
    ax = fig.add_axes(axes_rect)
    colours = class_colour(labels)  # (N, 4)
    if ellipses is not None:
        fill, edge = colours.copy(), colours.copy()
        fill[:, 3], edge[:, 3] = 0.06, 0.35
        ax.add_collection(EllipseCollection(ellipses[:, 0], ellipses[:, 1], ellipses[:, 2], units="xy",
                                            offsets=points, offset_transform=ax.transData, facecolors=fill,
                                            edgecolors=edge, linewidths=0.5, rasterized=True))
    ax.scatter(points[:, 0], points[:, 1], s=sizes, c=colours, alpha=alpha, linewidths=0, rasterized=True)
    ax.set_xlim(limits[0], limits[1])
    ax.set_ylim(limits[2], limits[3])
    box = axes_pixels(figsize, axes_rect)
    inside = ((thumb_points[:, 0] >= limits[0]) & (thumb_points[:, 0] <= limits[1])
              & (thumb_points[:, 1] >= limits[2]) & (thumb_points[:, 1] <= limits[3]))
    anchors = to_pixels(thumb_points[inside], limits, box)  # (K, 2)
    images = thumb_images[inside]
    drawn = 0
    if len(images):
        size = thumbnail_size(images, THUMBNAIL_PX, frame=2)
        dot = float(np.sqrt(np.max(sizes))) / 2 * PNG_DPI / 72  # the largest dot's radius in pixels (s is in pt^2)
        centres = place_boxes(anchors, size, box, reach=max(box[2] - box[0], box[3] - box[1]),
                              clear_of_anchors=True, crowd=to_pixels(points, limits, box), clearance=dot + 1)
        drawn = add_thumbnails(fig, ax, thumb_points[inside], centres, images, THUMBNAIL_PX,
                               class_colour(thumb_labels[inside]), limits, box, alpha=0.85, frame=2)
    handles = label_handles(labels, names)
    legend = ax.legend(handles=handles, title="label", loc="upper left", bbox_to_anchor=(1.01, 1.0),
                       frameon=False, fontsize=8 if small else None) if handles else None
    if key:
        if legend is not None:
            ax.add_artist(legend)  # a second legend replaces the first unless the first is kept as an artist
        handles = [Line2D([], [], marker="o", linestyle="", color="0.3", markeredgewidth=0,
                          markersize=np.sqrt(size), alpha=shade, label=text) for text, size, shade in key]
        ax.legend(handles=handles, title=key_title, loc="lower left", bbox_to_anchor=(1.01, 0.0), frameon=False,
                  fontsize=8, title_fontsize=8)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    detail += f"; {int(outside(points, limits).sum())} of {len(points)} outside the limits"
    beyond, no_room = int((~inside).sum()), int(inside.sum()) - drawn
    if beyond or no_room:
        why = [f"{beyond} outside the limits"] if beyond else []
        why += [f"{no_room} without room clear of the points"] if no_room else []
        detail += f"; {beyond + no_room} of {len(thumb_points)} thumbnails left out ({', '.join(why)})"
    set_title(ax, f"{title}\n{detail}")
    return fig, f"{title}; {detail}".replace("\n", "; ")
