"""`TSNEEmbedding`'s job: map the means with t-SNE (`lvae.tsne`), place the prior draws, draw the map."""

import time
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from lvae.drawing import Drawn
from lvae.figures.canvas import (PNG_DPI, add_thumbnails, axes_pixels, class_colour, covered_points, displacement,
                                 label_handles, place_boxes, save_figure, set_title, thumbnail_size, to_pixels)
from lvae.tsne import TSNESteps, align, knn_label_agreement

PRIOR_PX = 20  # a decoded prior draw's longer side in the PNG


def map_and_draw(mu: np.ndarray, index: np.ndarray, labels: np.ndarray, names: Optional[Sequence[str]],
                 start: Optional[np.ndarray], init_epoch: Optional[int], steps: TSNESteps, z: np.ndarray,
                 prior_images: np.ndarray, path: str, epoch: int) -> Drawn:
    """The job of `TSNEEmbedding` (runs in the drawing process): map the means mu (N, Z) of inputs `index` (N,),
    place the prior draws z (P, Z), draw, and hand back the map as the start of the next epoch's. A map started
    from the last one (`start`, the same inputs' places) is turned onto it (orthogonal Procrustes), so the
    pictures keep their orientation, and how far its points moved is measured. The map is also written beside the
    PNG (`map_path`), so a run resumed from a checkpoint saved before the map was finished still starts from it."""
    began = time.perf_counter()
    embedding = steps.embed(mu, start)
    prior = steps.place(embedding, z)  # centres the map in place
    seconds = time.perf_counter() - began
    points = np.array(embedding, dtype=np.float64)  # (N, 2)
    scalars = {"tsne/seconds": seconds, "tsne/outside": 0.0}  # the limits take in every point
    if start is not None:
        rotation, shift = align(points, start)
        points, prior = points @ rotation + shift, prior @ rotation + shift
        scalars["tsne/displacement"] = displacement(points, start)
    agreement = None  # unlabelled inputs: every neighbour would agree
    if len(np.unique(labels)) > 1:
        agreement = scalars["tsne/knn_agreement"] = knn_label_agreement(points, labels,
                                                                        k=min(steps.knn_k, len(points) - 1))
    fig, caption = figure(steps, points, labels, names, prior, prior_images, agreement, init_epoch, epoch)
    save_figure(fig, path)
    save_map(map_path(path), points, index, epoch, init_epoch, prior)
    return Drawn(pictures=[("tsne", path, caption)], scalars=scalars,
                 state={"embedding": points, "index": index, "embedding_epoch": epoch, "init_epoch": init_epoch})


def map_path(png: "str | Path") -> Path:
    """Where the map of the epoch drawn as `png` (``epoch_NNN.png``) is kept: ``map_NNN.npz`` beside it."""
    png = Path(png)
    return png.with_name(png.name.replace("epoch_", "map_")).with_suffix(".npz")


def save_map(path: Path, points: np.ndarray, index: np.ndarray, epoch: int, init_epoch: Optional[int],
             prior: Optional[np.ndarray] = None) -> None:
    """Write a map (N, 2) of inputs `index` (N,), and where the prior draws (P, 2) sit in it (the latent explorer
    shows them), whole or not at all: plain arrays, read back without pickle."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, embedding=points, index=index, epoch=epoch, init_epoch=-1 if init_epoch is None else init_epoch,
             prior=np.zeros((0, 2)) if prior is None else prior)
    tmp.replace(path)


def figure(steps: TSNESteps, points: np.ndarray, labels: np.ndarray, names: Optional[Sequence[str]],
           prior: np.ndarray, prior_images: np.ndarray, agreement: Optional[float], init_epoch: Optional[int],
           epoch: int) -> tuple[Figure, str]:
    """The map: points (N, 2) coloured by labels (N,), the prior draws (P, 2) as crosses, and as many of their
    decoded images (P, H, W[, 3]) uint8 as fit on or beside their crosses without covering one another; they cover
    the means there, and the title counts them."""
    fig = Figure(figsize=steps.figsize, dpi=PNG_DPI)  # the decoded draws are placed in its pixels
    ax = fig.add_axes(steps.axes_rect)
    size = float(np.clip(6000.0 / len(points), 4.0, 30.0))  # fewer points, larger dots
    ax.scatter(points[:, 0], points[:, 1], s=size, c=class_colour(labels), alpha=0.8,
               linewidths=0, rasterized=True)
    every = np.concatenate([points, prior])
    low, high = every.min(axis=0), every.max(axis=0)
    pad = 0.06 * np.maximum(high - low, 1e-6)
    limits = (low[0] - pad[0], high[0] + pad[0], low[1] - pad[1], high[1] + pad[1])
    ax.set_xlim(limits[0], limits[1])
    ax.set_ylim(limits[2], limits[3])
    shown = hidden = 0
    if len(prior):
        ax.scatter(prior[:, 0], prior[:, 1], s=25, marker="x", c="black", linewidths=1.0, zorder=3)
        box = axes_pixels(steps.figsize, steps.axes_rect)
        size = thumbnail_size(prior_images, PRIOR_PX, frame=1)
        # On its cross where that is free, else at most one image away from it; else the cross alone.
        centres = place_boxes(to_pixels(prior, limits, box), size, box, reach=max(size), clear_of_anchors=False)
        black = np.tile([0.0, 0.0, 0.0, 1.0], (len(prior), 1))  # (P, 4)
        shown = add_thumbnails(fig, ax, prior, centres, prior_images, PRIOR_PX, black, limits, box, alpha=0.9,
                               frame=1)
        hidden = int(covered_points(to_pixels(points, limits, box), centres, size).sum())
    handles = label_handles(labels, names)
    if len(prior):
        handles.append(Line2D([], [], marker="x", linestyle="", color="black", markersize=7,
                              label="prior z,\ndecoded"))
    small = names is not None and max(len(str(n)) for n in names) > 6  # long class names: a smaller legend
    if handles:
        ax.legend(handles=handles, title="label" if len(handles) > 1 else None, loc="upper left",
                  bbox_to_anchor=(1.01, 1.0), frameon=False, fontsize=8 if small else None)
    ax.set_xticks([])
    ax.set_yticks([])
    init = "PCA" if init_epoch is None else f"the map of epoch {init_epoch}, aligned"
    title = f"t-SNE of {len(points)} latent means, epoch {epoch} (perplexity {steps.perplexity:g})"
    agrees = "one label" if agreement is None else f"{steps.knn_k}-NN label agreement {agreement:.3f}"
    detail = f"started from {init}; {agrees}; none outside"
    if len(prior):
        detail += (f"\nx: {len(prior)} prior draws z ~ N(0, I) placed in the map, {shown} shown decoded (on or "
                   f"beside their cross, covering {hidden} of the {len(points)} means)")
    set_title(ax, f"{title}\n{detail}")
    return fig, f"{title}; {detail}".replace("\n", "; ")
