"""What every figure shares: the PNG resolution, writing a PNG whole, the label colours and legends, and thumbnails
placed where they hide neither one another nor their points."""

from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from PIL import Image

PNG_DPI = 100
Limits = tuple[float, float, float, float]  # xmin, xmax, ymin, ymax


def save_figure(figure: Figure, path: str) -> str:
    """Write `figure` as the PNG `path`, whole or not at all (a reader never sees half a PNG), and its frame of the
    evolution GIF. Rendered once for both."""
    figure.set_dpi(PNG_DPI)
    # The canvas `set_title` measured the title with, where there is one: its renderer is made once.
    canvas = figure.canvas if isinstance(figure.canvas, FigureCanvasAgg) else FigureCanvasAgg(figure)
    canvas.draw()
    saved = save_png(Image.fromarray(np.asarray(canvas.buffer_rgba())), path)
    figure.clear()  # matplotlib.figure.Figure is not tracked by pyplot: dropping it frees it
    return saved


def save_png(image: Image.Image, path: str) -> str:
    """Write the picture `image` as the PNG `path`, whole or not at all (a reader never sees half a PNG), then its
    frame of the evolution GIF."""
    from lvae.figures.animation import save_frame

    path = Path(path)
    tmp = path.with_suffix(".tmp.png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp, format="PNG", compress_level=1)  # zlib level 1: quicker than 6, slightly larger
        tmp.replace(path)
        save_frame(image, path)
    except OSError as err:  # a full disk: say which file, and leave no half-written one taking the space
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), err.filename or str(path)) from None
    return str(path)


def class_colour(label: "int | np.ndarray") -> np.ndarray:
    """The colour of a label, or (N, 4) colours of labels (N,), the same in every lvae picture (matplotlib's
    tab10). One call for all the points: one call per point is slow."""
    from matplotlib import colormaps

    return colormaps["tab10"](np.asarray(label, dtype=np.int64) % 10)


def label_handles(labels: np.ndarray, names: Optional[Sequence[str]] = None) -> list[Line2D]:
    """Legend entries, one per label present, in the label's colour and named by `names` where given; none for
    unlabelled inputs (one label and no names: an image folder without class folders)."""
    if names is None and len(np.unique(labels)) < 2:
        return []
    return [Line2D([], [], marker="o", linestyle="", color=class_colour(c),
                   label=str(names[int(c)]) if names is not None and 0 <= int(c) < len(names) else str(int(c)))
            for c in np.unique(labels)]


def thumbnail(image: np.ndarray, pixels: float, colour: Sequence[float], alpha: float, frame: int) -> np.ndarray:
    """An input as a picture `pixels` wide (its longer side) in a `frame`-pixel frame of `colour`: RGBA uint8
    (h, w, 4), the image `alpha` opaque. `image` is (H, W) grey or (H, W, 3) colour, uint8."""
    scale = pixels / max(image.shape[:2])
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))  # (w, h)
    inner = np.asarray(Image.fromarray(image).convert("RGB").resize(size, Image.Resampling.BOX))  # (h, w, 3)
    framed = np.empty((size[1] + 2 * frame, size[0] + 2 * frame, 4), dtype=np.uint8)
    framed[...] = np.round(np.asarray(colour[:3]) * 255).astype(np.uint8).tolist() + [255]
    framed[frame:frame + size[1], frame:frame + size[0], :3] = inner
    framed[frame:frame + size[1], frame:frame + size[0], 3] = round(alpha * 255)
    return framed


def outside(points: np.ndarray, limits: Limits) -> np.ndarray:
    """Which points (N, 2) lie outside `limits`: (N,) bool."""
    return ((points[:, 0] < limits[0]) | (points[:, 0] > limits[1]) | (points[:, 1] < limits[2])
            | (points[:, 1] > limits[3]))


def to_pixels(points: np.ndarray, limits: Limits, box: tuple[float, float, float, float]) -> np.ndarray:
    """Data points (N, 2) as PNG pixels (from the lower left) in axes that span `limits` and sit at `box` (x0, y0,
    x1, y1 in pixels)."""
    x0, y0, x1, y1 = box
    return np.stack([x0 + (points[:, 0] - limits[0]) / (limits[1] - limits[0]) * (x1 - x0),
                     y0 + (points[:, 1] - limits[2]) / (limits[3] - limits[2]) * (y1 - y0)], axis=1)


def axes_pixels(figsize: tuple[float, float], rect: tuple[float, float, float, float]) -> tuple[float, ...]:
    """The pixel box (x0, y0, x1, y1) of axes placed at `rect` (figure fractions) in a figure of `figsize`."""
    width, height = figsize[0] * PNG_DPI, figsize[1] * PNG_DPI
    return rect[0] * width, rect[1] * height, (rect[0] + rect[2]) * width, (rect[1] + rect[3]) * height


def place_boxes(anchors: np.ndarray, size: tuple[float, float], bounds: tuple[float, ...], reach: float,
                clear_of_anchors: bool, crowd: Optional[np.ndarray] = None, clearance: float = 0.0,
                gap: float = 3.0) -> np.ndarray:
    """Centres (K, 2) for K boxes of `size` (w, h) pixels, each near its anchor (K, 2) in pixels, none overlapping
    another, all within `bounds` (x0, y0, x1, y1). Greedy, in order: each box takes the nearest free place within
    `reach` pixels of its anchor; NaN where none is free. `clear_of_anchors`: no box covers any anchor, its own
    included (a thin line then leads to it); otherwise a box may sit on its own anchor. `crowd` (M, 2) pixels: no
    box covers any of these points, nor comes within `clearance` pixels of one (a dot's radius)."""
    w, h = size
    step = 0.5 * min(w, h)
    first = 0.75 * np.hypot(w, h) if clear_of_anchors else 0.0  # the nearest ring that leaves the anchor free
    rings = np.arange(first, max(reach, first) + 1e-9, step)
    rings = rings[rings > 0] if clear_of_anchors else rings
    # Places on each ring at most `step` apart (12 directions at least, up-right first), so that no gap the size of
    # a box is missed far from the anchor, where a free place in a crowded picture often is.
    offsets = []
    for r in rings:
        angles = np.deg2rad(45) + np.linspace(0, 2 * np.pi, max(12, int(np.ceil(2 * np.pi * r / step))),
                                              endpoint=False)
        offsets.append(r * np.stack([np.cos(angles), np.sin(angles)], 1))
    offsets = np.concatenate(offsets)  # (C, 2), nearest first
    covers = _counter(crowd, bounds) if crowd is not None and len(crowd) else None
    centres = np.full((len(anchors), 2), np.nan)
    for k, anchor in enumerate(anchors):
        candidates = anchor + offsets  # (C, 2), nearest first; each test below keeps the ones still free
        candidates = candidates[(candidates[:, 0] - w / 2 >= bounds[0]) & (candidates[:, 0] + w / 2 <= bounds[2])
                                & (candidates[:, 1] - h / 2 >= bounds[1]) & (candidates[:, 1] + h / 2 <= bounds[3])]
        if covers is not None:
            candidates = candidates[covers(candidates, w + 2 * clearance, h + 2 * clearance) == 0]
        placed = centres[:k][~np.isnan(centres[:k, 0])]  # (P, 2)
        if len(placed):
            apart = ((np.abs(candidates[:, None, 0] - placed[None, :, 0]) >= w + gap)
                     | (np.abs(candidates[:, None, 1] - placed[None, :, 1]) >= h + gap))  # (C', P)
            candidates = candidates[apart.all(axis=1)]
        if clear_of_anchors:
            away = ((np.abs(candidates[:, None, 0] - anchors[None, :, 0]) >= w / 2 + gap)
                    | (np.abs(candidates[:, None, 1] - anchors[None, :, 1]) >= h / 2 + gap))  # (C', K)
            candidates = candidates[away.all(axis=1)]
        if len(candidates):
            centres[k] = candidates[0]
    return centres


def _counter(points: np.ndarray, bounds: tuple[float, ...], cell: float = 2.0):
    """A function counting the `points` (M, 2) under boxes, by a summed-area table of `cell`-pixel bins. It counts
    every bin a box touches, so a box it finds empty covers no point."""
    nx, ny = int(np.ceil((bounds[2] - bounds[0]) / cell)) + 1, int(np.ceil((bounds[3] - bounds[1]) / cell)) + 1
    counts, _, _ = np.histogram2d(points[:, 0], points[:, 1], bins=(nx, ny),
                                  range=((bounds[0], bounds[0] + nx * cell), (bounds[1], bounds[1] + ny * cell)))
    table = np.zeros((nx + 1, ny + 1))
    table[1:, 1:] = counts.cumsum(0).cumsum(1)

    def covered(centres: np.ndarray, w: float, h: float) -> np.ndarray:
        i0 = np.clip(np.floor((centres[:, 0] - w / 2 - bounds[0]) / cell).astype(int), 0, nx)
        i1 = np.clip(np.floor((centres[:, 0] + w / 2 - bounds[0]) / cell).astype(int) + 1, 0, nx)
        j0 = np.clip(np.floor((centres[:, 1] - h / 2 - bounds[1]) / cell).astype(int), 0, ny)
        j1 = np.clip(np.floor((centres[:, 1] + h / 2 - bounds[1]) / cell).astype(int) + 1, 0, ny)
        return table[i1, j1] - table[i0, j1] - table[i1, j0] + table[i0, j0]

    return covered


def covered_points(points: np.ndarray, centres: np.ndarray, size: tuple[float, float]) -> np.ndarray:
    """Which points (M, 2) lie under boxes of `size` (w, h) at `centres` (K, 2; NaN rows: no box), all in pixels:
    (M,) bool."""
    centres = centres[~np.isnan(centres[:, 0])]  # (K', 2)
    under = ((np.abs(points[:, None, 0] - centres[None, :, 0]) <= size[0] / 2)
             & (np.abs(points[:, None, 1] - centres[None, :, 1]) <= size[1] / 2))  # (M, K')
    return under.any(axis=1)


def set_title(ax: Axes, text: str, fontsize: float = 10) -> None:
    """`text` as the title of `ax`, each line broken (at "; ", else ", ", else a space) where it would reach past the
    figure's edges: the title is centred over the axes, which need not be centred in the figure. Pinned above the
    axes (y=1.0): placing it would measure every tick label."""
    fig = ax.figure
    renderer = FigureCanvasAgg(fig).get_renderer()
    width = fig.get_figwidth() * fig.dpi
    left, right = ax.get_position().x0 * width, ax.get_position().x1 * width
    centre = (left + right) / 2
    room = 2 * min(centre, width - centre) - 8  # pixels; 4 clear of either edge
    font = FontProperties(size=fontsize)

    def fits(line: str) -> bool:
        return renderer.get_text_width_height_descent(line, font, ismath=False)[0] <= room

    def broken(line: str, separators: tuple[str, ...]) -> list[str]:
        if fits(line) or not separators:
            return [line]
        sep, lines = separators[0], []
        for part in line.split(sep):
            if lines and fits(lines[-1] + sep + part):
                lines[-1] += sep + part
            else:
                if lines:
                    lines[-1] += sep.rstrip()  # "a;" ends a line that "b" continues
                lines.extend(broken(part, separators[1:]))
        return lines

    ax.set_title("\n".join(out for line in text.split("\n") for out in broken(line, ("; ", ", ", " "))),
                 fontsize=fontsize, y=1.0)


def thumbnail_size(images: np.ndarray, pixels: float, frame: int) -> tuple[float, float]:
    """The (w, h) in pixels of the thumbnails of `images` (K, H, W[, 3]), frame included."""
    scale = pixels / max(images.shape[1:3])
    return round(images.shape[2] * scale) + 2 * frame, round(images.shape[1] * scale) + 2 * frame


def add_thumbnails(fig: Figure, ax: Axes, anchors: np.ndarray, centres: np.ndarray, images: np.ndarray,
                   pixels: float, colours: np.ndarray, limits: Limits, box: tuple[float, ...], alpha: float,
                   frame: int) -> int:
    """Draw each image (K, H, W[, 3]) at its centre (K, 2 pixels, from `place_boxes`, which keeps them apart; NaN:
    not drawn), framed in its colour (K, 4), with a thin line from its anchor (K, 2, data) where it sits away from
    it. All of them are one figure image, placed pixel for pixel: an annotation box or a figure image each costs
    its own layout and draw. Returns how many were drawn."""
    x0, y0, x1, y1 = box
    to_data = np.array([(limits[1] - limits[0]) / (x1 - x0), (limits[3] - limits[2]) / (y1 - y0)])
    lines, line_colours, placed = [], [], []
    for anchor, centre, image, colour in zip(anchors, centres, images, colours):
        if np.isnan(centre[0]):
            continue
        picture = thumbnail(image, pixels, colour, alpha, frame)  # (h, w, 4)
        h, w = picture.shape[:2]
        placed.append((picture, round(centre[0] - w / 2), round(centre[1] - h / 2)))  # its lower left, in pixels
        at = np.array([limits[0], limits[2]]) + (centre - np.array([x0, y0])) * to_data  # the centre, in data
        gap = (anchor - at) / to_data  # pixels from the centre to the anchor
        if np.abs(gap).max() > 0.5:
            edge = min(w / 2 / max(abs(gap[0]), 1e-9), h / 2 / max(abs(gap[1]), 1e-9), 1.0)
            lines.append([anchor, at + edge * gap * to_data])
            line_colours.append(colour)
    if placed:
        left, bottom = min(x for _, x, _ in placed), min(y for _, _, y in placed)
        right, top = max(x + p.shape[1] for p, x, _ in placed), max(y + p.shape[0] for p, _, y in placed)
        sheet = np.zeros((top - bottom, right - left, 4), dtype=np.uint8)  # transparent between the thumbnails
        for picture, x, y in placed:
            row = top - y - picture.shape[0]  # the sheet's first row is its top
            sheet[row:row + picture.shape[0], x - left:x - left + picture.shape[1]] = picture
        fig.figimage(sheet, xo=left, yo=bottom, zorder=4)
    if lines:
        ax.add_collection(LineCollection(lines, colors=line_colours, linewidths=0.8, zorder=3), autolim=False)
    return len(placed)


def displacement(now: np.ndarray, before: np.ndarray) -> float:
    """How far points (N, 2) moved from where they were drawn in the frame before (N, 2; NaN rows: not drawn then):
    the mean distance moved over the RMS distance of the earlier points from their centre, so 1 means as far as
    the points typically lie apart; NaN when no point is in both frames."""
    both = ~np.isnan(before).any(axis=1)
    if not both.any():
        return float("nan")
    now, before = now[both], before[both]
    spread = np.sqrt(((before - before.mean(axis=0)) ** 2).sum(axis=1).mean())
    return float(np.linalg.norm(now - before, axis=1).mean() / max(spread, 1e-12))
