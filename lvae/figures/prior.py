"""`PriorSamples`' figures: the decoded prior draws, and for Z=2 the decoded manifold and the draws' positions."""

from typing import Optional

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from lvae.drawing import Drawn
from lvae.figures.canvas import (PNG_DPI, Limits, add_thumbnails, axes_pixels, covered_points, outside, place_boxes,
                                 save_figure, set_title, thumbnail_size, to_pixels)

AXES = (0.1, 0.08, 0.86, 0.82)  # the manifold's and the positions' axes, as figure fractions
GRID_TITLE_PX = 60  # the sample grid's two title lines
SAMPLE_PX = 20  # a decoded draw's longer side in the positions picture


def draw(paths: dict[str, str], figsizes: dict[str, tuple[float, float]], epoch: int, seed: int, n: int,
         grid: np.ndarray, manifold: Optional[np.ndarray] = None, steps: Optional[int] = None,
         extent: Optional[Limits] = None, z: Optional[np.ndarray] = None, samples: Optional[np.ndarray] = None,
         mu: Optional[np.ndarray] = None) -> Drawn:
    """The drawing job of `PriorSamples` (runs in the drawing process): the sample grid (H, W) and, for Z=2, the
    manifold grid of steps x steps decoded z, evenly spaced over `extent` (z_0 from, to, z_1 from, to: the
    outer cells' z), and the draws z (n, 2) with their images (n, H, W[, 3]) uint8 among the validation means mu
    (N, 2). The grids are (H, W) grey or (H, W, 3) colour, in [0, 1]. Counts the means outside each picture."""
    fig = Figure(figsize=figsizes["prior_samples"], dpi=PNG_DPI)
    width, height = figsizes["prior_samples"][0] * PNG_DPI, figsizes["prior_samples"][1] * PNG_DPI
    # Whole pixels per pixel, as large as fits below the title: sharp, and cheaper than an axes' resampling.
    scale = max(1, int(min((width - 20) / grid.shape[1], (height - GRID_TITLE_PX - 20) / grid.shape[0])))
    big = grid.repeat(scale, axis=0).repeat(scale, axis=1)  # (H * scale, W * scale[, 3])
    fig.figimage(big, xo=round((width - big.shape[1]) / 2), yo=round((height - GRID_TITLE_PX - big.shape[0]) / 2),
                 cmap="gray" if grid.ndim == 2 else None, vmin=0.0, vmax=1.0)
    title = f"{n} fixed draws z ~ N(0, I), decoded\nepoch {epoch}, seed {seed}"
    fig.suptitle(title, fontsize=12)
    drawn = Drawn(pictures=[("prior_samples", save_figure(fig, paths["prior_samples"]), title.replace("\n", ", "))])
    if manifold is None:
        return drawn
    edges = grid_edges(extent, steps)
    limits = positions_limits(edges, figsizes["prior_positions"])
    for name, (fig, caption) in (("manifold", manifold_figure(manifold, steps, extent, mu, figsizes["manifold"],
                                                              epoch)),
                                 ("prior_positions", positions_figure(z, samples, mu, limits,
                                                                      figsizes["prior_positions"], epoch))):
        drawn.pictures.append((name, save_figure(fig, paths[name]), caption))
    if mu is not None:
        # The manifold decodes the cells' centres: a mean beyond the outer centres is counted as outside.
        drawn.scalars = {"manifold/outside": float(outside(mu, extent).sum()),
                         "prior_positions/outside": float(outside(mu, limits).sum())}
    return drawn


def grid_edges(extent: Limits, steps: int) -> Limits:
    """The outer edges of a steps x steps grid whose outer cells' centres are `extent`: half a cell further out."""
    dx, dy = (extent[1] - extent[0]) / (steps - 1), (extent[3] - extent[2]) / (steps - 1)
    return extent[0] - dx / 2, extent[1] + dx / 2, extent[2] - dy / 2, extent[3] + dy / 2


def positions_limits(edges: Limits, figsize: tuple[float, float]) -> Limits:
    """The positions picture's limits: the manifold's `edges`, the shorter side widened so that a unit of z_0 and
    one of z_1 are as long on screen (the positions are distances from the prior's centre)."""
    x0, y0, x1, y1 = axes_pixels(figsize, AXES)
    per_pixel = max((edges[1] - edges[0]) / (x1 - x0), (edges[3] - edges[2]) / (y1 - y0))
    cx, cy = (edges[0] + edges[1]) / 2, (edges[2] + edges[3]) / 2
    half_x, half_y = per_pixel * (x1 - x0) / 2, per_pixel * (y1 - y0) / 2
    return cx - half_x, cx + half_x, cy - half_y, cy + half_y


def manifold_figure(manifold: np.ndarray, steps: int, extent: Limits, mu: Optional[np.ndarray],
                    figsize: tuple[float, float], epoch: int) -> tuple[Figure, str]:
    """The decoded grid (H*S, W*S[, 3]) drawn in z's own units, so its ticks are evenly spaced, readable numbers."""
    fig = Figure(figsize=figsize)
    ax = fig.add_axes(AXES)
    ax.imshow(manifold, cmap="gray" if manifold.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest",
              extent=grid_edges(extent, steps), aspect="auto")  # row 0, the top, holds the largest z_1
    off = "" if mu is None else f"; {int(outside(mu, extent).sum())} of {len(mu)} validation means outside"
    return fig, label_z_axes(ax, f"Decoded z on a {steps}x{steps} grid over the means and N(0, I) to 2 sd, epoch "
                             f"{epoch}\nz_0 {extent[0]:.2f} to {extent[1]:.2f}, z_1 {extent[2]:.2f} to "
                             f"{extent[3]:.2f}{off}")


def positions_figure(z: np.ndarray, samples: np.ndarray, mu: Optional[np.ndarray], limits: Limits,
                     figsize: tuple[float, float], epoch: int) -> tuple[Figure, str]:
    """The draws z (n, 2) among the validation means mu (N, 2), each decoded image on or beside its draw where it
    covers no other image; they cover the means there, and the title counts them."""
    fig = Figure(figsize=figsize, dpi=PNG_DPI)  # the decoded draws are placed in its pixels
    ax = fig.add_axes(AXES)
    if mu is not None:
        ax.scatter(mu[:, 0], mu[:, 1], s=2, c="0.7", rasterized=True, label=f"{len(mu)} validation means")
    ax.scatter(z[:, 0], z[:, 1], s=12, c="tab:red", marker="x", linewidths=1.0, zorder=3,
               label=f"{len(z)} prior draws")
    ax.legend(loc="upper right", fontsize=8, markerscale=2)
    box = axes_pixels(figsize, AXES)
    size = thumbnail_size(samples, SAMPLE_PX, frame=1)
    centres = place_boxes(to_pixels(z, limits, box), size, box, reach=max(size), clear_of_anchors=False)
    red = np.tile(np.array([0.84, 0.15, 0.16, 1.0]), (len(z), 1))  # tab:red, (n, 4)
    shown = add_thumbnails(fig, ax, z, centres, samples, SAMPLE_PX, red, limits, box, alpha=0.9, frame=1)
    ax.set_xlim(limits[0], limits[1])
    ax.set_ylim(limits[2], limits[3])
    off = ""
    if mu is not None:
        hidden = int(covered_points(to_pixels(mu, limits, box), centres, size).sum())
        off = f", covering {hidden} of {len(mu)} means; {int(outside(mu, limits).sum())} of {len(mu)} means outside"
    return fig, label_z_axes(ax, f"The {len(z)} prior draws at their positions, epoch {epoch}\n{shown} shown "
                             f"decoded, on or beside their cross{off}")


def label_z_axes(ax: Axes, title: str) -> str:
    """Name the axes z_0 and z_1 (as the scatter does) and set the title; returns it as a one-line caption."""
    ax.tick_params(labelsize=8)
    ax.set_xlabel("z_0")
    ax.set_ylabel("z_1")
    set_title(ax, title)
    return title.replace("\n", "; ")
