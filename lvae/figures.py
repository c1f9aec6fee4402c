"""What runs in the drawing process: the figures of the latent pictures, and the process's own entry points.

Every picture callback does its model work in the training process and sends a job here: a `functools.partial` of
one of the `draw_*` / `map_and_draw` functions over NumPy arrays and plain values. This module imports no
Lightning (nor does `lvae/__init__.py` until asked): the drawing process starts by importing it, and Lightning
alone takes about 6 s of CPU to import on 2 cores, time taken from training.
"""

import math
import os
import signal
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import openTSNE
from matplotlib.axes import Axes
from matplotlib.collections import PolyCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties, findfont
from matplotlib.lines import Line2D
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from openTSNE.affinity import PerplexityBasedNN
from openTSNE.initialization import rescale
from PIL import Image, ImageDraw, ImageFont
from sklearn.neighbors import NearestNeighbors

PNG_DPI = 100
Limits = tuple[float, float, float, float]  # xmin, xmax, ymin, ymax


@dataclass
class Drawn:
    """What a drawing job hands back to the training process: the PNGs it wrote as (name, path, caption), the
    numbers it measured, state for the callback (a t-SNE map) and the evolution GIFs it made as (name, path),
    all picklable."""

    pictures: list[tuple[str, str, str]] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    state: Any = None
    warnings: list[str] = field(default_factory=list)
    animations: list[tuple[str, str]] = field(default_factory=list)


def save_figure(figure: Figure, path: str) -> str:
    """Write `figure` as the PNG `path`, whole or not at all: a reader never sees half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    figure.savefig(tmp, dpi=PNG_DPI)
    tmp.replace(path)
    figure.clear()  # matplotlib.figure.Figure is not tracked by pyplot: dropping it frees it
    return str(path)


def animate(folders: dict[str, str], frame_ms: int = 500) -> Drawn:
    """Turn every epoch's PNG in each folder (`name` -> folder) into `<folder>/evolution.gif`: the evolution of
    each picture at the end of fit. A folder with fewer than two epochs gets no GIF."""
    drawn = Drawn()
    for name, folder in folders.items():
        frames = sorted(Path(folder).glob("epoch_*.png"))
        if len(frames) < 2:
            continue
        images = [Image.open(f).convert("RGB") for f in frames]
        size = images[0].size
        # Pillow's default palette search measured 5x slower than the fast octree (0.51 s against 0.11 s for six
        # 800x660 frames), and the GIF came out 6.5x larger; the fast one looks the same for these plots.
        images = [(im if im.size == size else im.resize(size)).quantize(256, method=Image.Quantize.FASTOCTREE)
                  for im in images]
        path = Path(folder) / "evolution.gif"
        images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
        drawn.animations.append((name, str(path)))
    return drawn


# The drawing process runs at this niceness: it takes the CPU time training leaves (see lvae.pictures).
DRAWING_NICENESS = 10


def lower_priority(pid: int = 0) -> None:
    """Give process `pid` (0: this one) at least the drawing niceness. Absolute, so setting it twice does no
    harm; never raised back (a run started with `nice -n 15` keeps 15, which an unprivileged user could not
    undo); a process already gone or a system without priorities is left as it is."""
    if not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, pid, max(os.getpriority(os.PRIO_PROCESS, pid), DRAWING_NICENESS))
    except OSError:
        pass


def start_drawing_process() -> None:
    """Initializer of the drawing process."""
    lower_priority()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the training process, which saves last.ckpt


def run_job(job: Callable[[], Drawn]) -> Drawn:
    """Runs in the drawing process. Warnings are handed back, to be raised where the user sees them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drawn = job()
    drawn.warnings.extend(str(w.message) for w in caught)
    return drawn


def import_modules(modules: tuple[str, ...]) -> Drawn:
    import importlib

    for module in modules:
        importlib.import_module(module)
    return Drawn()


def class_colour(label: "int | np.ndarray") -> np.ndarray:
    """The colour of a label, or (N, 4) colours of labels (N,), the same in every lvae picture (matplotlib's
    tab10). One call for all the points: one call per point cost 40 ms for 2000 points."""
    from matplotlib import colormaps

    return colormaps["tab10"](np.asarray(label, dtype=np.int64) % 10)


# ----- LatentScatter -----

def draw_scatter(name: str, path: str, figsize: tuple[float, float], axes_rect: tuple[float, float, float, float],
                 points: np.ndarray, labels: np.ndarray, sizes: np.ndarray, alpha: "float | np.ndarray",
                 limits: Optional[Limits], axis_labels: tuple[str, str], thumb_points: np.ndarray,
                 thumb_images: np.ndarray, thumb_labels: np.ndarray, title: str, detail: str) -> Drawn:
    """The drawing job of `LatentScatter` (runs in the drawing process): points (N, 2) coloured by labels (N,),
    thumbnails (K, 28, 28) uint8 at thumb_points (K, 2), framed in their label's colour."""
    fig = Figure(figsize=figsize)
    ax = fig.add_axes(axes_rect)
    ax.scatter(points[:, 0], points[:, 1], s=sizes, c=class_colour(labels), alpha=alpha, linewidths=0,
               rasterized=True)
    if limits is not None:
        ax.set_xlim(limits[0], limits[1])
        ax.set_ylim(limits[2], limits[3])
    for (x, y), image, label in zip(thumb_points, thumb_images, thumb_labels):
        # annotation_clip hides a thumbnail whose point lies outside fixed limits
        box = AnnotationBbox(OffsetImage(image, cmap="gray", norm=Normalize(0, 255), zoom=0.9), (x, y), frameon=True,
                             pad=0.1, annotation_clip=True, bboxprops={"edgecolor": class_colour(label),
                                                                       "linewidth": 1.5})
        ax.add_artist(box)
    handles = [Line2D([], [], marker="o", linestyle="", color=class_colour(c), label=str(int(c)))
               for c in np.unique(labels)]
    ax.legend(handles=handles, title="label", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xlabel(axis_labels[0])
    ax.set_ylabel(axis_labels[1])
    ax.set_title(f"{title}\n{detail}", fontsize=10)
    return Drawn(pictures=[(name, save_figure(fig, path), f"{title}; {detail}")])


# ----- TSNEEmbedding -----

def knn_label_agreement(points: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Share of points' k nearest neighbours (N, D) that share their label (N,): the quality figure of a map."""
    if len(points) <= k:
        raise ValueError(f"{len(points)} points have fewer than k={k} neighbours each")
    neighbours = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points, return_distance=False)
    # Column 0 is the point itself, unless duplicates tie with it: drop the point itself wherever it landed.
    others = np.array([row[row != i][:k] for i, row in enumerate(neighbours)])  # (N, k)
    return float((labels[others] == labels[:, None]).mean())


EARLY_EXAGGERATION = 12  # openTSNE's default factor for the early phase


@dataclass(frozen=True)
class TSNESteps:
    """What the t-SNE of one epoch needs beside the data: `TSNEEmbedding`'s settings, sent to the drawing process."""

    perplexity: float
    early_exaggeration_iter: int
    n_iter: int
    warm_early_exaggeration_iter: int
    warm_n_iter: int
    negative_gradient_method: str
    affinity_method: str
    n_jobs: int
    seed: int
    prior_n_iter: int
    knn_k: int
    figsize: tuple[float, float]
    axes_rect: tuple[float, float, float, float]

    def embed(self, x: np.ndarray, start: Optional[np.ndarray]) -> openTSNE.TSNEEmbedding:
        """A 2-D map of `x` (N, Z), from the previous map `start` (N, 2) (fewer iterations) or from a PCA."""
        x = np.ascontiguousarray(x, dtype=np.float64)
        # Affinities come from this epoch's means; only the starting positions come from the previous map.
        affinities = PerplexityBasedNN(x, perplexity=self.perplexity, method=self.affinity_method, n_jobs=self.n_jobs,
                                       random_state=self.seed)
        tsne = openTSNE.TSNE(perplexity=self.perplexity, negative_gradient_method=self.negative_gradient_method,
                             n_jobs=self.n_jobs, random_state=self.seed)
        if start is not None:
            # openTSNE expects a starting map of small spread (its own initialisations use std 1e-4); the
            # previous map's layout is kept, only its scale shrinks.
            init = rescale(start, target_std=1e-4)
            exaggerated, normal = self.warm_early_exaggeration_iter, self.warm_n_iter
        else:
            init, exaggerated, normal = "pca", self.early_exaggeration_iter, self.n_iter
        embedding = tsne.prepare_initial(x, affinities=affinities, initialization=init)
        if exaggerated:
            embedding.optimize(n_iter=exaggerated, exaggeration=EARLY_EXAGGERATION, inplace=True)
        embedding.optimize(n_iter=normal, inplace=True)
        return embedding

    def place(self, embedding: openTSNE.TSNEEmbedding, z: np.ndarray) -> np.ndarray:
        """Positions (P, 2) of the prior draws `z` (P, Z) in `embedding`, which stays as it is (but centred)."""
        if len(z) == 0:
            return np.zeros((0, 2))
        return np.asarray(embedding.transform(np.ascontiguousarray(z, dtype=np.float64), n_iter=self.prior_n_iter))


def map_and_draw(mu: np.ndarray, index: np.ndarray, labels: np.ndarray, start: Optional[np.ndarray],
                 init_epoch: Optional[int], steps: TSNESteps, z: np.ndarray, prior_images: np.ndarray, path: str,
                 epoch: int) -> Drawn:
    """The job of `TSNEEmbedding` (runs in the drawing process): map the means mu (N, Z) of inputs `index` (N,),
    place the prior draws z (P, Z), draw, and hand back the map as the start of the next epoch's."""
    began = time.perf_counter()
    embedding = steps.embed(mu, start)
    prior = steps.place(embedding, z)  # centres the map in place
    seconds = time.perf_counter() - began
    points = np.array(embedding, dtype=np.float64)  # (N, 2)
    agreement = knn_label_agreement(points, labels, k=min(steps.knn_k, len(points) - 1))
    caption = _draw_tsne(steps, points, labels, prior, prior_images, agreement, init_epoch, epoch, path)
    return Drawn(pictures=[("tsne", path, caption)],
                 scalars={"tsne/knn_agreement": agreement, "tsne/seconds": seconds},
                 state={"embedding": points, "index": index, "embedding_epoch": epoch, "init_epoch": init_epoch})


def _draw_tsne(steps: TSNESteps, points: np.ndarray, labels: np.ndarray, prior: np.ndarray, prior_images: np.ndarray,
          agreement: float, init_epoch: Optional[int], epoch: int, path: str) -> str:
    fig = Figure(figsize=steps.figsize)
    ax = fig.add_axes(steps.axes_rect)
    size = float(np.clip(6000.0 / len(points), 4.0, 30.0))  # fewer points, larger dots
    ax.scatter(points[:, 0], points[:, 1], s=size, c=class_colour(labels), alpha=0.8,
               linewidths=0, rasterized=True)
    for (x, y), image in zip(prior, prior_images):
        image = OffsetImage(image, cmap="gray", norm=Normalize(0.0, 1.0), zoom=0.6)
        box = AnnotationBbox(image, (x, y), frameon=True, pad=0.05, bboxprops={"edgecolor": "black", "linewidth": 1.0})
        ax.add_artist(box)
    if len(prior):
        # Annotation boxes do not widen the axes: make room for prior draws placed beyond the data.
        every = np.concatenate([points, prior])
        low, high = every.min(axis=0), every.max(axis=0)
        pad = 0.06 * np.maximum(high - low, 1e-6)
        ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
        ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
    handles = [Line2D([], [], marker="o", linestyle="", color=class_colour(c), label=str(int(c)))
               for c in np.unique(labels)]
    if len(prior):
        handles.append(Line2D([], [], marker="s", linestyle="", markerfacecolor="white", markeredgecolor="black",
                              markersize=9, label="prior z,\ndecoded"))
    ax.legend(handles=handles, title="label", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    init = "PCA" if init_epoch is None else f"the map of epoch {init_epoch}"
    title = f"t-SNE of {len(points)} latent means, epoch {epoch} (perplexity {steps.perplexity:g})"
    detail = f"started from {init}; {steps.knn_k}-NN label agreement {agreement:.3f}"
    if len(prior):
        detail += f"\nframed images: {len(prior)} prior draws z ~ N(0, I), decoded and placed in the map"
    ax.set_title(f"{title}\n{detail}", fontsize=10)
    save_figure(fig, path)
    return f"{title}; {detail}".replace("\n", "; ")


# ----- PriorSamples -----

def draw_prior(paths: dict[str, str], figsizes: dict[str, tuple[float, float]], epoch: int, seed: int, n: int,
               grid: np.ndarray, manifold: Optional[np.ndarray] = None, quantiles: Optional[np.ndarray] = None,
               z: Optional[np.ndarray] = None, samples: Optional[np.ndarray] = None,
               mu: Optional[np.ndarray] = None) -> Drawn:
    """The drawing job of `PriorSamples` (runs in the drawing process): the sample grid (H, W) and, for Z=2, the
    manifold grid, the quantiles (S,) of its axes, and the draws z (n, 2) with their images (n, 28, 28)."""
    fig = Figure(figsize=figsizes["prior_samples"])
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.86))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    title = f"{n} fixed draws z ~ N(0, I), decoded\nepoch {epoch}, seed {seed}"
    fig.suptitle(title, fontsize=10)
    drawn = Drawn(pictures=[("prior_samples", save_figure(fig, paths["prior_samples"]), title.replace("\n", ", "))])
    if manifold is not None:
        drawn.pictures.append(("manifold", *_draw_manifold(manifold, quantiles, figsizes["manifold"],
                                                           paths["manifold"], epoch)))
        drawn.pictures.append(("prior_positions", *_draw_positions(z, samples, mu, figsizes["prior_positions"],
                                                                   paths["prior_positions"], epoch)))
    return drawn


def _draw_manifold(manifold: np.ndarray, q: np.ndarray, figsize: tuple[float, float], path: str,
                   epoch: int) -> tuple[str, str]:
    s = len(q)
    fig = Figure(figsize=figsize)
    ax = fig.add_axes((0.1, 0.08, 0.86, 0.82))
    ax.imshow(manifold, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")  # (28*S, 28*S)
    ticks = list(range(0, s, max(1, s // 5))) + [s - 1]
    ax.set_xticks([28 * i + 13.5 for i in ticks], [f"{q[i]:.2f}" for i in ticks], fontsize=8)
    ax.set_yticks([28 * i + 13.5 for i in ticks], [f"{-q[i]:.2f}" for i in ticks], fontsize=8)
    ax.set_xlabel("z_1")
    ax.set_ylabel("z_2")
    title = f"Decoded latent manifold, epoch {epoch}\nz on a {s}x{s} grid of N(0, 1) quantiles"
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path), title.replace("\n", ", ")


def _draw_positions(z: np.ndarray, samples: np.ndarray, mu: Optional[np.ndarray], figsize: tuple[float, float],
                    path: str, epoch: int) -> tuple[str, str]:
    fig = Figure(figsize=figsize)
    ax = fig.add_axes((0.1, 0.08, 0.86, 0.82))
    if mu is not None:
        ax.scatter(mu[:, 0], mu[:, 1], s=2, c="0.8", rasterized=True, label=f"{len(mu)} validation means")
        ax.legend(loc="upper right", fontsize=8, markerscale=4)
    ax.scatter(z[:, 0], z[:, 1], s=4, c="tab:red")
    for (x, y), image in zip(z.tolist(), samples):
        thumb = OffsetImage(image, cmap="gray", zoom=0.65)
        ax.add_artist(AnnotationBbox(thumb, (x, y), frameon=True, pad=0.05, bboxprops={"edgecolor": "tab:red"}))
    limit = max(3.0, float(np.abs(z).max()) + 0.5)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xlabel("z_1")
    ax.set_ylabel("z_2")
    title = f"The {len(z)} prior draws at their positions, decoded, epoch {epoch}"
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path), title


# ----- LatentUncertainty -----

class Grid(NamedTuple):
    """One labelled grid of the picture: the inputs of most extreme score, most extreme first."""

    headline: str
    note: str  # the title's second line: the correlations that go with this score
    score: str  # the score's name
    pixels: np.ndarray  # (H, W) uint8, make_grid's rows of 28 x 28 cells with 2 px of grey between
    labels: list[int]
    values: list[float]


# One figure, not five: each figure costs 40-80 ms of axes, ticks, text and PNG encoding whatever it holds. Panels
# sit in fixed rectangles (left, bottom, width, height as figure fractions), because a constrained layout would
# double that. Left: the histogram over the KL bars; right: the three grids, each under its title.
HIST = (0.075, 0.6, 0.3, 0.3)
KL = (0.075, 0.1, 0.3, 0.37)
GRIDS = (0.42, 0.025, 0.565, 0.915)
GRID_TITLE_PX = 36  # a grid's two title lines


def draw_uncertainty(path: str, figsize: tuple[float, float], epoch: int, counts: np.ndarray, edges: np.ndarray,
                     mean: float, kl: np.ndarray, active: np.ndarray, grids: list[Grid], nrow: int) -> Drawn:
    """The drawing job of `LatentUncertainty` (runs in the drawing process): the histogram of u(x) (counts (B,)
    between edges (B+1,), and its mean), the KL (Z,) of each latent dimension and whether it is active (Z,), and
    the grids."""
    fig = Figure(figsize=figsize, dpi=PNG_DPI)  # the grids are placed in pixels
    # Titles are short because matplotlib spends about 0.13 ms a character on text.
    fig.suptitle(f"Posterior variance per input, u(x) = mean over dimensions of exp(logvar), epoch {epoch}",
                 fontsize=11, y=0.99)
    summary = (f"{counts.sum()} inputs, mean u(x) {mean:.3g}, {active.sum()} of {len(kl)} latent dimensions active, "
               f"KL(q(z_d|x) || N(0, 1)) {kl.sum():.1f} nats in all")
    _hist(fig.add_axes(HIST), counts, edges, mean, active.sum())
    _kl(fig.add_axes(KL), kl, active)
    _grids(fig, grids, nrow)
    notes = ". ".join(dict.fromkeys(grid.note for grid in grids))  # the two u(x) grids share theirs
    captions = " ".join(f"{grid.headline}: labels {' '.join(map(str, grid.labels))}; "
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
        draw.multiline_text((column.width / 2, k * slot), f"{grid.headline} (label yellow, {grid.score} cyan)\n"
                            f"{grid.note}", fill="black", font=_font(11), anchor="ma", align="center")
        picture = _labelled(grid, nrow, column.width, slot - GRID_TITLE_PX - 6)  # 6 px apart from the next title
        column.paste(picture, ((column.width - picture.width) // 2, k * slot + GRID_TITLE_PX))
    fig.figimage(np.asarray(column), xo=int(left), yo=int(bottom), origin="upper")


def _labelled(grid: Grid, nrow: int, width: int, height: int) -> Image.Image:
    """`grid`'s pixels with each cell's label (yellow) and value (cyan), as large as fits `width` x `height`."""
    pad, cell = (0, 28) if len(grid.labels) == 1 else (2, 30)  # make_grid leaves a lone image unpadded
    fit = min(width / grid.pixels.shape[1], height / grid.pixels.shape[0])
    # Whole pixels keep the digits sharp; a grid of many rows that does not fit at one pixel a pixel shrinks.
    scale = math.floor(fit) if fit >= 1 else fit
    size = (round(grid.pixels.shape[1] * scale), round(grid.pixels.shape[0] * scale))
    picture = Image.fromarray(grid.pixels).convert("RGB")
    picture = picture.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX)
    draw = ImageDraw.Draw(picture)
    # the text shrinks with the cells (60 px at the default 16 inputs in rows of 8), so that it stays inside
    label_font, value_font = _font(min(13.0, 0.22 * 30 * scale), bold=True), _font(min(10.0, 0.16 * 30 * scale))
    for i, (label, value) in enumerate(zip(grid.labels, grid.values)):
        x, y = pad + cell * (i % nrow), pad + cell * (i // nrow)  # the cell's top-left pixel, unscaled
        draw.text(((x + 1) * scale, (y + 1) * scale), str(label), fill="yellow", font=label_font)
        draw.text(((x + 27) * scale, (y + 27) * scale), f"{value:.3g}", fill="cyan", font=value_font, anchor="rb")
    return picture


def _font(pixels: float, bold: bool = False) -> ImageFont.FreeTypeFont:
    """matplotlib's font at `pixels` pixels, for the text PIL writes into a picture."""
    return ImageFont.truetype(findfont(FontProperties(weight="bold" if bold else "normal")), max(1, round(pixels)))
