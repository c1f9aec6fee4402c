"""`PriorSamples`' figures: the decoded prior draws, and for Z=2 the decoded manifold and the draws' positions."""

from typing import Optional

import numpy as np
from matplotlib.figure import Figure
from matplotlib.offsetbox import AnnotationBbox

from lvae.drawing import Drawn
from lvae.figures.canvas import save_figure, thumbnail


def draw(paths: dict[str, str], figsizes: dict[str, tuple[float, float]], epoch: int, seed: int, n: int,
         grid: np.ndarray, manifold: Optional[np.ndarray] = None, quantiles: Optional[np.ndarray] = None,
         z: Optional[np.ndarray] = None, samples: Optional[np.ndarray] = None,
         mu: Optional[np.ndarray] = None) -> Drawn:
    """The drawing job of `PriorSamples` (runs in the drawing process): the sample grid (H, W) and, for Z=2, the
    manifold grid, the quantiles (S,) of its axes, and the draws z (n, 2) with their images (n, H, W[, 3]) uint8.
    The grids are (H, W) grey or (H, W, 3) colour, in [0, 1]."""
    fig = Figure(figsize=figsizes["prior_samples"])
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.86))
    ax.imshow(grid, cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
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
    ax.imshow(manifold, cmap="gray" if manifold.ndim == 2 else None, vmin=0.0, vmax=1.0,
              interpolation="nearest")  # (H*S, W*S[, 3])
    cell_h, cell_w = manifold.shape[0] / s, manifold.shape[1] / s
    ticks = list(range(0, s, max(1, s // 5))) + [s - 1]
    ax.set_xticks([cell_w * (i + 0.5) - 0.5 for i in ticks], [f"{q[i]:.2f}" for i in ticks], fontsize=8)
    ax.set_yticks([cell_h * (i + 0.5) - 0.5 for i in ticks], [f"{-q[i]:.2f}" for i in ticks], fontsize=8)
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
        ax.add_artist(AnnotationBbox(thumbnail(image, 18), (x, y), frameon=True, pad=0.05,
                                     bboxprops={"edgecolor": "tab:red"}))
    limit = max(3.0, float(np.abs(z).max()) + 0.5)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    ax.set_xlabel("z_1")
    ax.set_ylabel("z_2")
    title = f"The {len(z)} prior draws at their positions, decoded, epoch {epoch}"
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path), title

