"""Where the inputs sit in latent space: the posterior means mu, coloured by label, epoch after epoch."""

from typing import Any, Literal, Optional

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lvae.drawing import Job
from lvae.errors import ConfigError
from lvae.latents import Latents, as_pictures, unusable
from lvae.metrics import uncertainty as posterior_uncertainty
from lvae.picture_callback import PictureCallback

Limits = tuple[float, float, float, float]  # xmin, xmax, ymin, ymax


def pca_2d(mu: Tensor) -> tuple[Tensor, Tensor]:
    """The means projected on their two main principal axes, (N, Z) -> (N, 2), and the share of variance each
    axis explains (2,).

    Each axis is signed so that its largest loading is positive (as scikit-learn's ``svd_flip`` does): an SVD
    may flip an axis between two nearly equal fits, and the pictures of successive epochs should not mirror.
    """
    centred = mu.double() - mu.double().mean(dim=0)  # (N, Z)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (Z, Z), rows are principal axes
    axes = vh[:2]  # (2, Z)
    signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))  # (2, 1)
    axes = axes * signs
    explained = s[:2].pow(2) / s.pow(2).sum().clamp_min(1e-12)  # (2,)
    return (centred @ axes.T).float(), explained.float()


class LatentScatter(PictureCallback):
    """Scatter of the validation means mu, coloured by label, with a legend. A 2-D latent space is drawn as it
    is; a larger one as a 2-D PCA of the means (the title says so) or as two chosen dimensions.

    The axes start from the limits of the first drawn epoch (or explicit ones) and only ever widen, so the
    pictures of successive epochs and their evolution GIF compare without losing points as the means spread out
    during training; the limits are kept in the checkpoint, so a resumed run keeps them too. A few inputs are
    drawn as thumbnails at their points, the same inputs every epoch. At the end of fit, and when run by
    ``lvae validate``, a W&B table of the means is logged (index, label, uncertainty, thumbnail and one column per
    latent dimension), which W&B's own 2-D projection panel can show.

    Picture: ``scatter`` (``scatter_dims_<i>_<j>`` for chosen dimensions, so a PCA and a pair of dimensions can
    be drawn side by side); table: ``latents/means_table`` (W&B only).

    Args:
        dims: two latent dimensions to plot (None: a PCA of the means for Z > 2, the means themselves for Z=2).
        uncertainty: how the posterior uncertainty u(x) (the mean posterior variance) is shown: ``"size"`` (larger
            points are less certain), ``"alpha"`` (fainter points are less certain) or ``"none"``.
        limits: fixed axis limits (xmin, xmax, ymin, ymax); None chooses them as `auto_limits` says.
        auto_limits: without `limits`: ``"grow"`` starts from the first drawn epoch's limits and widens them
            when points leave (never narrows); ``"first"`` keeps the first epoch's limits (points that move beyond
            them are counted in the title; on real data early limits can hide a fifth of the points);
            ``"each"`` fits each epoch on its own (epochs no longer compare).
        thumbnails: how many inputs to draw as images at their points (0: none).
        table_rows: rows of the W&B table of means (0: no table). Each row carries a thumbnail, so it is logged
            once, at the end of fit (and by ``lvae validate``): about 1 s per 1000 rows, in the training process.
            With two scatters, give one of them 0.
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
    """

    names = ("scatter",)
    figure_modules = ("lvae.figures.scatter",)
    figsize = (8.0, 6.6)  # inches; the PNG is 800x660
    # Axes placed by hand, leaving room for the two-line title and the legend on the right: matplotlib's
    # constrained layout measured twice the drawing time of the whole figure (224 ms against 103 ms).
    axes_rect = (0.1, 0.08, 0.77, 0.81)
    table_key = "latents/means_table"
    margin = 0.15  # share of each axis' range added on both sides when limits are taken from the data

    def __init__(self, dims: Optional[tuple[int, int]] = None,
                 uncertainty: Literal["size", "alpha", "none"] = "size",
                 limits: Optional[tuple[float, float, float, float]] = None,
                 auto_limits: Literal["first", "grow", "each"] = "grow",
                 thumbnails: NonNegativeInt = 12, table_rows: NonNegativeInt = 500,
                 every_n_epochs: PositiveInt = 1, background: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, background=background)
        if dims is not None:
            dims = tuple(int(d) for d in dims)
            if len(dims) != 2 or dims[0] == dims[1] or min(dims) < 0:
                raise ConfigError(f"LatentScatter.dims={dims} must be two different latent dimensions, e.g. [0, 1] "
                                  "(or null for a PCA of the means)")
        if uncertainty not in ("size", "alpha", "none"):
            raise ConfigError(f"LatentScatter.uncertainty={uncertainty!r} is not one of 'size', 'alpha', 'none'")
        if limits is not None:
            limits = tuple(float(v) for v in limits)
            if len(limits) != 4 or not (limits[0] < limits[1] and limits[2] < limits[3]):
                raise ConfigError(f"LatentScatter.limits={limits} must be [xmin, xmax, ymin, ymax] with xmin < xmax "
                                  "and ymin < ymax (or null: the limits of the first drawn epoch)")
        if auto_limits not in ("first", "grow", "each"):
            raise ConfigError(f"LatentScatter.auto_limits={auto_limits!r} is not one of 'first', 'grow', 'each'")
        if thumbnails < 0:
            raise ConfigError(f"LatentScatter.thumbnails={thumbnails} must be >= 0 (0 draws no images)")
        if table_rows < 0:
            raise ConfigError(f"LatentScatter.table_rows={table_rows} must be >= 0 (0 logs no table)")
        self.dims = dims
        if dims is not None:
            self.names = (f"scatter_dims_{dims[0]}_{dims[1]}",)
        self.uncertainty = uncertainty
        self.limits = limits
        self.auto_limits = auto_limits
        self.thumbnails = thumbnails
        self.table_rows = table_rows
        # Limits taken from the drawn epochs and the view they belong to, settled when an epoch's picture is sent
        # to the drawing process (they depend only on its points), so the next epoch widens from them.
        self._fixed: Optional[Limits] = None
        self._fixed_view: Optional[str] = None
        self._view: Optional[str] = None
        self._last: Optional[Latents] = None  # the last drawn epoch's latents, for the table at the end of fit

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dims=self.dims)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"limits": self._fixed, "view": self._fixed_view}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checked against this run's view when drawing: the checkpoint may be loaded before or after `setup`.
        self._fixed = None if state_dict["limits"] is None else tuple(state_dict["limits"])
        self._fixed_view = state_dict["view"]

    def _view_of(self, z: int) -> str:
        """The name of what is drawn for a Z-dimensional latent space; limits belong to one view."""
        if self.dims is not None:
            return f"dims {self.dims[0]},{self.dims[1]}"
        return {1: "z1", 2: "z"}.get(z, "pca")

    def _project(self, mu: Tensor, labels: Tensor) -> tuple[Tensor, tuple[str, str], str]:
        """2-D points (N, 2), axis labels and the title's description of the view."""
        z = mu.shape[1]
        if self.dims is not None:
            i, j = self.dims
            if max(i, j) >= z:
                raise ConfigError(f"LatentScatter.dims={list(self.dims)} names a dimension the model lacks (Z={z}); "
                                  f"choose dimensions below {z}")
            return mu[:, [i, j]], (f"z_{i}", f"z_{j}"), f"dimensions {i} and {j} of Z={z}"
        if z == 1:
            # One number per input: the means along z_0, one row per label.
            return torch.stack([mu[:, 0], labels.to(mu.dtype)], 1), ("z_0", "label"), "Z=1, one row per label"
        if z == 2:
            return mu, ("z_0", "z_1"), "Z=2"
        points, explained = pca_2d(mu)
        share = float(explained.sum())
        return (points, (f"PC1 ({explained[0]:.0%} of variance)", f"PC2 ({explained[1]:.0%})"),
                f"PCA of Z={z} to 2-D ({share:.0%} of variance)")

    @override
    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Job]:
        reason = unusable(latents, min_points=2)
        if reason is not None:
            rank_zero_warn(f"LatentScatter: no scatter for epoch {epoch}: {reason}")
            return None
        self._last = latents
        if trainer.state.fn != "fit" and self.sink.has_tables():
            self._log_table(latents, epoch)  # in fit, the table is logged once, at the end
        return self._job(latents, epoch)

    def _job(self, latents: Latents, epoch: int) -> Job:
        """Everything but the drawing, which `lvae.figures.scatter` does in the drawing process: the projection and
        the limits take milliseconds, and the limits must be settled before the next epoch's."""
        self._view = self._view_of(latents.mu.shape[1])
        points, (xlabel, ylabel), view_text = self._project(latents.mu, latents.label)
        points = points.double().numpy()  # (N, 2); float64: matplotlib drew float32 points 40% slower
        u = posterior_uncertainty(latents.logvar).numpy()  # (N,)
        labels = latents.label.numpy()
        # Map u onto [0, 1] within this epoch: its absolute scale depends on how many dimensions are inactive.
        spread = (u - u.min()) / max(float(u.max() - u.min()), 1e-12)  # (N,)
        sizes = 4.0 + 56.0 * spread if self.uncertainty == "size" else np.full(len(u), 10.0)
        alpha = 1.0 - 0.85 * spread if self.uncertainty == "alpha" else 0.75

        limits, widened = self._limits(points)
        outside = 0
        if limits is not None:
            outside = int(((points[:, 0] < limits[0]) | (points[:, 0] > limits[1]) | (points[:, 1] < limits[2])
                           | (points[:, 1] > limits[3])).sum())
        if self.limits is None and self.auto_limits != "each":
            self._fixed, self._fixed_view = limits, self._view
        # The inputs of a few evenly spaced rows (the same inputs every epoch) are drawn at their points.
        thumbs = np.linspace(0, len(points) - 1, min(self.thumbnails, len(points))).round().astype(int)

        shown = {"size": "point size: posterior variance u(x)", "alpha": "faint points: high posterior variance u(x)",
                 "none": "mean posterior variance u(x)"}[self.uncertainty]
        title = f"Latent means of {len(points)} validation inputs, {view_text}, epoch {epoch}"
        detail = f"{shown}, {u.min():.3g} to {u.max():.3g}"
        if outside:
            detail += f"; {outside} outside the fixed limits"
        if widened:
            detail += "; limits widened"
        name = self.names[0]
        return Job("lvae.figures.scatter:draw", dict(
            name=name, path=str(self.sink.png_path(name, epoch)), figsize=self.figsize, axes_rect=self.axes_rect,
            points=points, labels=labels, sizes=sizes, alpha=alpha, limits=limits, axis_labels=(xlabel, ylabel),
            thumb_points=points[thumbs], thumb_images=as_pictures(latents.image[thumbs]), thumb_labels=labels[thumbs],
            title=title, detail=detail))

    def _limits(self, points: np.ndarray) -> tuple[Optional[Limits], bool]:
        """The axis limits of this epoch (None: matplotlib's own) and whether they were just widened."""
        if self.limits is not None:
            return self.limits, False
        if self.auto_limits == "each":
            return None, False
        if self._fixed is not None and self._fixed_view != self._view:
            rank_zero_warn(f"LatentScatter: the checkpoint's axis limits belong to the view {self._fixed_view!r}, "
                           f"this run draws {self._view!r}; new limits are taken from this epoch")
            self._fixed = None
        low, high = points.min(axis=0), points.max(axis=0)  # (2,) each
        pad = self.margin * np.maximum(high - low, 1e-6)
        extent = (float(low[0] - pad[0]), float(high[0] + pad[0]), float(low[1] - pad[1]), float(high[1] + pad[1]))
        if self._fixed is None:
            return extent, False
        if self.auto_limits == "first":
            return self._fixed, False
        x0, x1, y0, y1 = self._fixed
        inside = bool(x0 <= low[0] and high[0] <= x1 and y0 <= low[1] and high[1] <= y1)
        if inside:
            return self._fixed, False
        return (min(x0, extent[0]), max(x1, extent[1]), min(y0, extent[2]), max(y1, extent[3])), True

    def _log_table(self, latents: Latents, epoch: int) -> None:
        """The means as a W&B table: one row per input (the first `table_rows` by index), one column per dim."""
        import wandb

        n = min(self.table_rows, len(latents))
        if n == 0:
            return
        u = posterior_uncertainty(latents.logvar[:n])
        z = latents.mu.shape[1]
        columns = ["index", "label", "uncertainty", "image", *[f"mu_{d}" for d in range(z)]]
        pictures = as_pictures(latents.image[:n])  # (n, H, W) or (n, H, W, 3)
        rows = [[int(latents.index[i]), int(latents.label[i]), float(u[i]), wandb.Image(pictures[i]),
                 *latents.mu[i].tolist()] for i in range(n)]
        self.sink.log_table(self.table_key, columns, rows, epoch)

    @override
    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        super().on_fit_end(trainer, pl_module)  # waits for the last picture
        # Logged here rather than with the last epoch's picture: early stopping, max_steps or max_time may end
        # fit before max_epochs, and only now is it certain which epoch was the last.
        if trainer.is_global_zero and self._last is not None and self.sink.has_tables():
            try:
                self._log_table(self._last, self._last.epoch)
            except Exception as err:
                rank_zero_warn(f"LatentScatter: no table of means ({type(err).__name__}: {err})")
        self._last = None


