"""`LatentUncertainty`'s figure: the histogram of u(x), the KL per dimension and three labelled grids of inputs."""

import math
from typing import Any, NamedTuple, Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.figure import Figure
from PIL import Image, ImageDraw

from lvae.drawing import Drawn
from lvae.figures.canvas import PNG_DPI, save_figure
from lvae.figures.tiles import font, wrap


class Grid(NamedTuple):
    """One labelled grid of the picture: the inputs of most extreme score, most extreme first."""

    headline: str
    note: str  # the title's second line: the correlations that go with this score ("" for none)
    score: str  # the score's name
    pixels: np.ndarray  # (H, W) or (H, W, 3) uint8, make_grid's rows of cells with 2 px of grey between
    cell: tuple[int, int]  # one input's height and width
    labels: Optional[list[int]]  # None: unlabelled inputs, no label drawn
    values: list[float]


# One figure, not five: each figure costs axes, ticks, text and PNG encoding whatever it holds. Panels
# sit in fixed rectangles (left, bottom, width, height as figure fractions), because a constrained layout would
# double that. Left: the histogram over the KL bars; right: the three grids, each under its title.
HIST = (0.075, 0.6, 0.3, 0.3)
KL = (0.075, 0.1, 0.3, 0.37)
GRIDS = (0.42, 0.025, 0.565, 0.915)
TITLE_PX = 11  # a grid's title lines: matplotlib's 8 pt at 100 dpi
TEXT_PX = math.ceil(8 * PNG_DPI / 72)  # labels and scores: 8 pt in the PNG
TEXT_GAP = 4  # pixels between a label and its score
TILE_GAP = 6  # pixels between two inputs' tiles: one input's score apart from the next one's label


def draw(path: str, figsize: tuple[float, float], epoch: int, counts: np.ndarray, edges: np.ndarray, mean: float,
         kl: np.ndarray, active: np.ndarray, grids: list[dict[str, Any]], nrow: int) -> Drawn:
    """The drawing job of `LatentUncertainty` (runs in the drawing process): the histogram of u(x) (counts (B,)
    between edges (B+1,), and its mean), the KL (Z,) of each latent dimension and whether it is active (Z,), and
    the grids (each the fields of a `Grid`)."""
    grids = [Grid(**grid) for grid in grids]
    fig = Figure(figsize=figsize, dpi=PNG_DPI)  # the grids are placed in pixels
    # Titles are short because matplotlib's text costs time per character.
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
    # One collection of Z rectangles, not Z bar patches: each bar patch is built and drawn on its own.
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


class Text(NamedTuple):
    """A label or score as drawn: its text, origin (the left end of its baseline) and box (left, top, right, bottom)
    in PNG pixels, size in pixels and weight."""

    text: str
    at: tuple[int, int]
    box: tuple[int, int, int, int]
    pixels: int
    bold: bool


class Layout(NamedTuple):
    """Where one grid lies in the PNG, in pixels from its top-left: its title's lines and their top centre; the box
    (left, top, right, bottom) of each input's image; each label and score under it; and the inputs' scale."""

    title: list[str]
    title_at: tuple[int, int]
    tiles: list[tuple[int, int, int, int]]
    texts: list[Text]
    scale: float


def grid_layouts(figsize: tuple[float, float], grids: list[Grid], nrow: int) -> list[Layout]:
    """Each grid's layout in a PNG of `figsize`, one under the other down the right (the GRIDS rectangle)."""
    left, top, width, height = _column(figsize)
    slot = height // len(grids)
    layouts = []
    for k, grid in enumerate(grids):
        shown = grid.score if grid.labels is None else f"label, {grid.score}"
        title = [line for text in (f"{grid.headline} (under each: {shown})", grid.note) if text
                 for line in wrap(text, font(TITLE_PX), width)]
        title_h = max(2, len(title)) * (TITLE_PX + 4)  # two lines at least: the grids line up
        origin = (left, top + k * slot + title_h)  # the grid's top-left
        layout = _layout(grid, nrow, width, slot - title_h - 4, origin)  # 4 px apart from the next title
        layouts.append(layout._replace(title=title, title_at=(left + width // 2, top + k * slot)))
    return layouts


def _column(figsize: tuple[float, float]) -> tuple[int, int, int, int]:
    """The GRIDS rectangle in a PNG of `figsize`: left, top (from the PNG's top), width, height in pixels."""
    png_w, png_h = round(figsize[0] * PNG_DPI), round(figsize[1] * PNG_DPI)
    left, bottom, width, height = (round(f * size) for f, size in zip(GRIDS, (png_w, png_h, png_w, png_h)))
    return left, png_h - bottom - height, width, height


def _grids(fig: Figure, grids: list[Grid], nrow: int) -> None:
    """Draw the grids down the right of `fig`, each under its title, each input's label and score under it."""
    # The column is one picture, its titles, images and labels drawn by PIL and placed pixel for pixel: PIL draws
    # the 100 or so labels far quicker than matplotlib texts.
    figsize = tuple(fig.get_size_inches())
    left, top, width, height = _column(figsize)
    column = Image.new("RGBA", (width, height), "white")  # RGBA: figimage takes it as it is
    draw = ImageDraw.Draw(column)
    for grid, layout in zip(grids, grid_layouts(figsize, grids, nrow)):
        draw.multiline_text((layout.title_at[0] - left, layout.title_at[1] - top), "\n".join(layout.title),
                            fill="black", font=font(TITLE_PX), anchor="ma", align="center")
        for box, picture in zip(layout.tiles, _cells(grid, layout)):
            column.paste(picture, (box[0] - left, box[1] - top))
        for text in layout.texts:
            draw.text((text.at[0] - left, text.at[1] - top), text.text, fill="black",
                      font=font(text.pixels, text.bold), anchor="ls")
    fig.figimage(np.asarray(column), xo=left, yo=round(figsize[1] * PNG_DPI) - top - height, origin="upper")


def _cells(grid: Grid, layout: Layout) -> list[Image.Image]:
    """Each input of `grid`, cut from make_grid's rows and scaled to its tile."""
    cell_h, cell_w = grid.cell
    pad = 0 if len(grid.values) == 1 else 2  # make_grid leaves a lone image unpadded
    nrow = (grid.pixels.shape[1] - pad) // (cell_w + pad)
    # Whole pixels keep the digits sharp; other scales are smoothed rather than made of uneven pixels.
    resample = (Image.Resampling.NEAREST if layout.scale == int(layout.scale) else
                Image.Resampling.LANCZOS if layout.scale > 1 else Image.Resampling.BOX)
    pictures = []
    for i, box in enumerate(layout.tiles):
        x, y = pad + (cell_w + pad) * (i % nrow), pad + (cell_h + pad) * (i // nrow)
        picture = Image.fromarray(grid.pixels[y:y + cell_h, x:x + cell_w]).convert("RGB")
        pictures.append(picture.resize((box[2] - box[0], box[3] - box[1]), resample))
    return pictures


def _layout(grid: Grid, nrow: int, width: int, height: int, origin: tuple[int, int]) -> Layout:
    """Tiles of `grid`'s inputs in rows of `nrow`, centred in `width` x `height` pixels from `origin` (the PNG's
    pixels), as large as fits, each with its label (bold) and score under it: off the images and at TEXT_PX, the
    PNG's 8 pt, on one line where a column is wide enough, else label over score (and smaller only where even that
    is wider than a column can be)."""
    cell_h, cell_w = grid.cell
    n = len(grid.values)
    cols, rows = min(n, nrow), math.ceil(n / nrow)
    scores = [f"{value:.3g}" for value in grid.values]
    labels = [str(label) for label in grid.labels] if grid.labels is not None else []
    for px, lines in [(px, lines) for px in range(TEXT_PX, 5, -1) for lines in (1, 2)]:
        label_w = max((font(px, bold=True).getlength(t) for t in labels), default=0.0)
        score_w = max(font(px).getlength(t) for t in scores)
        text_w = math.ceil(label_w + TEXT_GAP + score_w if labels and lines == 1 else max(label_w, score_w))
        digit = -font(px).getbbox("0", anchor="ls")[1]  # labels and scores are numbers: no descenders
        strip = lines * (digit + 3)
        fit = min((width - (cols - 1) * TILE_GAP) / (cols * cell_w),
                  (height - rows * strip - (rows - 1) * TILE_GAP) / (rows * cell_h))
        scale = math.floor(fit) if fit >= 1 and math.floor(fit) >= 0.85 * fit else fit  # whole pixels: sharp
        tile_w, tile_h = max(1, int(cell_w * scale)), max(1, int(cell_h * scale))
        room = max(tile_w, text_w)  # a column's width
        if cols * (room + TILE_GAP) - TILE_GAP <= width:
            break
    x0 = origin[0] + (width - cols * (room + TILE_GAP) + TILE_GAP) // 2
    tiles, texts = [], []
    for i in range(n):
        row, col = divmod(i, nrow)
        x, y = x0 + col * (room + TILE_GAP), origin[1] + row * (tile_h + strip + TILE_GAP)
        tiles.append((x + (room - tile_w) // 2, y, x + (room - tile_w) // 2 + tile_w, y + tile_h))
        pieces = ([(labels[i], True)] if labels else []) + [(scores[i], False)]
        for j, (text, bold) in enumerate(pieces):
            face = font(px, bold)
            length = math.ceil(face.getlength(text))
            if lines == 1:  # the label at the column's left, the score at its right
                at = (x if bold else x + room - length, y + tile_h + 2 + digit)
            else:
                at = (x + (room - length) // 2, y + tile_h + 2 + digit + j * (digit + 3))
            l, t, r, b = face.getbbox(text, anchor="ls")
            texts.append(Text(text, at, (at[0] + l, at[1] + t, at[0] + r, at[1] + b), px, bold))
    return Layout([], origin, tiles, texts, scale)
