"""`TSNEEmbedding`'s job: map the means with t-SNE (`lvae.tsne`), place the prior draws, draw the map."""

import time
from pathlib import Path
from typing import Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.offsetbox import AnnotationBbox

from lvae.drawing import Drawn
from lvae.figures.canvas import class_colour, label_handles, save_figure, thumbnail
from lvae.tsne import TSNESteps, knn_label_agreement


def map_and_draw(mu: np.ndarray, index: np.ndarray, labels: np.ndarray, start: Optional[np.ndarray],
                 init_epoch: Optional[int], steps: TSNESteps, z: np.ndarray, prior_images: np.ndarray, path: str,
                 epoch: int) -> Drawn:
    """The job of `TSNEEmbedding` (runs in the drawing process): map the means mu (N, Z) of inputs `index` (N,),
    place the prior draws z (P, Z), draw, and hand back the map as the start of the next epoch's. The map is also
    written beside the PNG (`map_path`), so a run resumed from a checkpoint saved before the map was finished still
    starts from it."""
    began = time.perf_counter()
    embedding = steps.embed(mu, start)
    prior = steps.place(embedding, z)  # centres the map in place
    seconds = time.perf_counter() - began
    points = np.array(embedding, dtype=np.float64)  # (N, 2)
    agreement = knn_label_agreement(points, labels, k=min(steps.knn_k, len(points) - 1))
    caption = _draw_tsne(steps, points, labels, prior, prior_images, agreement, init_epoch, epoch, path)
    save_map(map_path(path), points, index, epoch, init_epoch)
    return Drawn(pictures=[("tsne", path, caption)],
                 scalars={"tsne/knn_agreement": agreement, "tsne/seconds": seconds},
                 state={"embedding": points, "index": index, "embedding_epoch": epoch, "init_epoch": init_epoch})


def map_path(png: "str | Path") -> Path:
    """Where the map of the epoch drawn as `png` (``epoch_NNN.png``) is kept: ``map_NNN.npz`` beside it."""
    png = Path(png)
    return png.with_name(png.name.replace("epoch_", "map_")).with_suffix(".npz")


def save_map(path: Path, points: np.ndarray, index: np.ndarray, epoch: int, init_epoch: Optional[int]) -> None:
    """Write a map (N, 2) of inputs `index` (N,) whole or not at all: plain arrays, read back without pickle."""
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, embedding=points, index=index, epoch=epoch, init_epoch=-1 if init_epoch is None else init_epoch)
    tmp.replace(path)


def _draw_tsne(steps: TSNESteps, points: np.ndarray, labels: np.ndarray, prior: np.ndarray,
               prior_images: np.ndarray, agreement: float, init_epoch: Optional[int], epoch: int, path: str) -> str:
    fig = Figure(figsize=steps.figsize)
    ax = fig.add_axes(steps.axes_rect)
    size = float(np.clip(6000.0 / len(points), 4.0, 30.0))  # fewer points, larger dots
    ax.scatter(points[:, 0], points[:, 1], s=size, c=class_colour(labels), alpha=0.8,
               linewidths=0, rasterized=True)
    for (x, y), image in zip(prior, prior_images):
        box = AnnotationBbox(thumbnail(image, 17), (x, y), frameon=True, pad=0.05,
                             bboxprops={"edgecolor": "black", "linewidth": 1.0})
        ax.add_artist(box)
    if len(prior):
        # Annotation boxes do not widen the axes: make room for prior draws placed beyond the data.
        every = np.concatenate([points, prior])
        low, high = every.min(axis=0), every.max(axis=0)
        pad = 0.06 * np.maximum(high - low, 1e-6)
        ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
        ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
    handles = label_handles(labels)
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

