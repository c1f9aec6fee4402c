"""`LatentUncertainty`'s figure: the histogram of u(x), the KL per dimension and three labelled grids of inputs."""

import math
from typing import Any, NamedTuple, Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont
from PIL import Image, ImageDraw, ImageFont

from lvae.drawing import Drawn
from lvae.figures.canvas import PNG_DPI, save_figure


class Grid(NamedTuple):
    """One labelled grid of the picture: the inputs of most extreme score, most extreme first."""

    headline: str
    note: str  # the title's second line: the correlations that go with this score ("" for none)
    score: str  # the score's name
    pixels: np.ndarray  # (H, W) or (H, W, 3) uint8, make_grid's rows of cells with 2 px of grey between
    cell: tuple[int, int]  # one input's height and width
    labels: Optional[list[int]]  # None: unlabelled inputs, no label drawn
    values: list[float]


# One figure, not five: each figure costs 40-80 ms of axes, ticks, text and PNG encoding whatever it holds. Panels
# sit in fixed rectangles (left, bottom, width, height as figure fractions), because a constrained layout would
# double that. Left: the histogram over the KL bars; right: the three grids, each under its title.
HIST = (0.075, 0.6, 0.3, 0.3)
KL = (0.075, 0.1, 0.3, 0.37)
GRIDS = (0.42, 0.025, 0.565, 0.915)
GRID_TITLE_PX = 36  # a grid's two title lines


def draw(path: str, figsize: tuple[float, float], epoch: int, counts: np.ndarray, edges: np.ndarray, mean: float,
         kl: np.ndarray, active: np.ndarray, grids: list[dict[str, Any]], nrow: int) -> Drawn:
    """The drawing job of `LatentUncertainty` (runs in the drawing process): the histogram of u(x) (counts (B,)
    between edges (B+1,), and its mean), the KL (Z,) of each latent dimension and whether it is active (Z,), and
    the grids (each the fields of a `Grid`)."""
    grids = [Grid(**grid) for grid in grids]
    fig = Figure(figsize=figsize, dpi=PNG_DPI)  # the grids are placed in pixels
    # Titles are short because matplotlib spends about 0.13 ms a character on text.
    fig.suptitle(f"Posterior variance per input, u(x) = mean over dimensions of exp(logvar), epoch {epoch}",
                 fontsize=11, y=0.99)
    summary = (f"{counts.sum()} inputs, mean u(x) {mean:.3g}, {active.sum()} of {len(kl)} latent dimensions active, "
               f"KL(q(z_d|x) || N(0, 1)) {kl.sum():.1f} nats in all")
    _hist(fig.add_axes(HIST), counts, edges, mean, active.sum())
    _kl(fig.add_axes(KL), kl, active)
    _grids(fig, grids, nrow)
    notes = ". ".join(grid.note for grid in grids if grid.note)
    captions = " ".join(f"{grid.headline}: "
                        + (f"labels {' '.join(map(str, grid.labels))}; " if grid.labels is not None else "") +
                        f"{grid.score} {' '.join(f'{v:.3g}' for v in grid.values)}." for grid in grids)
    return Drawn(pictures=[("uncertainty", save_figure(fig, path), f"Epoch {epoch}: {summary}. {notes}. {captions}")])


def _hist(ax: Axes, counts: np.ndarray, edges: np.ndarray, mean: float, units: int) -> None:
    ax.stairs(counts, edges, fill=True, color="tab:blue")  # one artist, not one patch per bin: quicker to draw
    ax.axvline(mean, color="k", linestyle="--", linewidth=1)
    ax.locator_params(nbins=3)  # a tick is five artists, about a millisecond to make and draw; a few read as well
    ax.tick_params(labelsize=8)
    ax.set_xlabel("u(x)", fontsize=9, labelpad=2)
    ax.set_ylabel("inputs", fontsize=9)
    # y=1.0 pins the title above the axes; left to matplotlib, it measures every tick label to place it
    ax.set_title(f"{counts.sum()} inputs, mean u(x) {mean:.3g} (dashed), {units} active units", fontsize=9, y=1.0)


def _kl(ax: Axes, kl: np.ndarray, active: np.ndarray) -> None:
    # One collection of Z rectangles, not Z bar patches: ax.bar costs about 1 ms a bar to build and draw.
    x, zero = np.arange(len(kl)), np.zeros(len(kl))
    corners = np.stack([np.stack(corner, 1) for corner in ((x - 0.4, zero), (x - 0.4, kl), (x + 0.4, kl),
                                                            (x + 0.4, zero))], 1)  # (Z, 4, 2)
    bars = PolyCollection(corners, facecolors=np.where(active, "tab:blue", "0.7"))
    bars.sticky_edges.y.append(0)  # as with ax.bar, no margin below the baseline
    ax.add_collection(bars)
    ax.autoscale_view()
    ax.locator_params(axis="y", nbins=3)
    ax.tick_params(labelsize=8)
    if len(kl) <= 32:
        ax.set_xticks(x)
        ax.tick_params(axis="x", labelsize=6)
    ax.set_xlabel("latent dimension (grey: inactive)", fontsize=9, labelpad=2)
    ax.set_ylabel("KL, nats", fontsize=9)
    ax.set_title(f"KL per dimension, {kl.sum():.1f} nats in all", fontsize=9, y=1.0)


def _grids(fig: Figure, grids: list[Grid], nrow: int) -> None:
    """Draw the grids down the right of `fig`, each under its title."""
    # The column is one picture, its titles, images and labels drawn by PIL and placed pixel for pixel: as
    # matplotlib texts, the 100 or so labels and the titles cost about 0.15 s of the draw, with PIL about 10 ms.
    left, bottom, width, height = (np.array(GRIDS) * np.tile(fig.get_size_inches() * PNG_DPI, 2)).round()
    column = Image.new("RGBA", (int(width), int(height)), "white")  # RGBA: figimage takes it as it is
    draw = ImageDraw.Draw(column)
    slot = column.height // len(grids)
    for k, grid in enumerate(grids):
        # 11 px: matplotlib's 8 pt at 100 dpi
        colours = f"{grid.score} cyan" if grid.labels is None else f"label yellow, {grid.score} cyan"
        draw.multiline_text((column.width / 2, k * slot), f"{grid.headline} ({colours})\n"
                            f"{grid.note}".rstrip(), fill="black", font=_font(11), anchor="ma", align="center")
        picture = _labelled(grid, nrow, column.width, slot - GRID_TITLE_PX - 6)  # 6 px apart from the next title
        column.paste(picture, ((column.width - picture.width) // 2, k * slot + GRID_TITLE_PX))
    fig.figimage(np.asarray(column), xo=int(left), yo=int(bottom), origin="upper")


def _labelled(grid: Grid, nrow: int, width: int, height: int) -> Image.Image:
    """`grid`'s pixels with each cell's label (yellow) and value (cyan) on dark boxes, readable on any image, as
    large as fits `width` x `height`."""
    cell_h, cell_w = grid.cell
    pad = 0 if len(grid.values) == 1 else 2  # make_grid leaves a lone image unpadded
    fit = min(width / grid.pixels.shape[1], height / grid.pixels.shape[0])
    # Whole pixels keep the digits sharp; a grid of many rows that does not fit at one pixel a pixel shrinks.
    scale = math.floor(fit) if fit >= 1 else fit
    size = (round(grid.pixels.shape[1] * scale), round(grid.pixels.shape[0] * scale))
    picture = Image.fromarray(grid.pixels).convert("RGB")
    picture = picture.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX)
    draw = ImageDraw.Draw(picture, "RGBA")
    # the text shrinks with the cells (60 px at the default 16 inputs in rows of 8), so that it stays inside
    side = min(cell_h, cell_w) + 2
    label_font, value_font = _font(min(13.0, 0.22 * side * scale), bold=True), _font(min(10.0, 0.16 * side * scale))
    labels = grid.labels if grid.labels is not None else [None] * len(grid.values)
    for i, (label, value) in enumerate(zip(labels, grid.values)):
        x, y = pad + (cell_w + pad) * (i % nrow), pad + (cell_h + pad) * (i // nrow)  # the cell's top-left, unscaled
        texts = [(f"{value:.3g}", ((x + cell_w - 1) * scale, (y + cell_h - 1) * scale), value_font, "cyan", "rb")]
        if label is not None:
            texts.append((str(label), ((x + 1) * scale, (y + 1) * scale), label_font, "yellow", "la"))
        for text, at, font, colour, anchor in texts:
            box = draw.textbbox(at, text, font=font, anchor=anchor)
            draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0, 170))
            draw.text(at, text, fill=colour, font=font, anchor=anchor)
    return picture


def _font(pixels: float, bold: bool = False) -> ImageFont.FreeTypeFont:
    """matplotlib's font at `pixels` pixels, for the text PIL writes into a picture."""
    return ImageFont.truetype(findfont(FontProperties(weight="bold" if bold else "normal")), max(1, round(pixels)))
