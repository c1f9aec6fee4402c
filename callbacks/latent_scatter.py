"""Where the inputs sit in latent space: the posterior means mu, coloured by label, epoch after epoch."""

from concurrent.futures import Future
from typing import Any, Literal, Optional

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, PositiveInt
from torch import Tensor
from typing_extensions import override

from lvae.drawing import Job
from lvae.errors import ConfigError, at_least
from lvae.images import as_pictures
from lvae.labels import label_names
from lvae.latent_maths import ellipses, pca_2d
from lvae.latents import Latents
from lvae.metrics import uncertainty as posterior_uncertainty
from lvae.picture_callback import PictureCallback
from lvae.say import notice

Limits = tuple[float, float, float, float]  # xmin, xmax, ymin, ymax


def _matching(index: Tensor, wanted: Tensor) -> tuple[Tensor, Tensor]:
    """Rows of `index` (N,), sorted, that hold the dataset indices `wanted` (M,), and the rows of `wanted` they
    match: (K,) each."""
    rows = torch.searchsorted(index, wanted).clamp_max(len(index) - 1)  # (M,)
    found = index[rows] == wanted
    return rows[found], torch.nonzero(found).flatten()


class LatentScatter(PictureCallback):
    """Scatter of the validation means mu, coloured by label (named by the dataset's classes where it has them),
    with a legend. A 2-D latent space is drawn as it is; a larger one as a 2-D PCA of the means (the title says so)
    or as two chosen dimensions.

    Successive pictures compare. The axes start from the limits of the first drawn epoch (or explicit ones) and
    only ever widen, so the means never leave the picture as they spread out during training; the title counts any
    point outside the limits all the same. The PCA axes keep their orientation: each epoch's two principal axes are
    matched to the last drawn epoch's by order and sign (the axis labels say which component each is), so the
    evolution GIF neither mirrors nor turns. A few inputs, one or two per label and the same ones every epoch, are
    drawn as framed thumbnails beside their points, placed apart from one another where they cover the fewest
    points, with a line to their point. The limits, the PCA axes, the last drawn positions and the thumbnails'
    inputs are kept in the checkpoint, so a resumed run continues them. At the end of fit, and when run by
    ``lvae validate``, a W&B table of the means is logged (index, label, uncertainty, thumbnail and one column per
    latent dimension), which W&B's own 2-D projection panel can show.

    Picture: ``scatter`` (``scatter_dims_<i>_<j>`` for chosen dimensions, so a PCA and a pair of dimensions can
    be drawn side by side); scalars: ``scatter/outside`` (points outside the limits) and ``scatter/displacement``
    (how far the followed points moved since the last drawn epoch: the mean distance over the RMS spread of the
    points, as drawn); table: ``latents/means_table`` (W&B only).

    Args:
        dims: two latent dimensions to plot (None: a PCA of the means for Z > 2, the means themselves for Z=2).
        uncertainty: how the posterior q(z|x) = N(mu, diag(exp(logvar))) is shown: ``"size"`` (larger points have
            a larger u(x), the mean posterior variance), ``"alpha"`` (fainter points have a larger u(x)),
            ``"ellipse"`` (each input's 1-sigma ellipse, semi-axes exp(logvar / 2), or for a PCA the posterior
            covariance projected onto the two axes) or ``"none"``.
        limits: fixed axis limits (xmin, xmax, ymin, ymax); None chooses them as `auto_limits` says.
        auto_limits: without `limits`: ``"grow"`` starts from the first drawn epoch's limits and widens them
            when points leave (never narrows); ``"first"`` keeps the first epoch's limits (points that move beyond
            them are counted in the title; on real data early limits can hide a fifth of the points);
            ``"each"`` fits each epoch on its own (epochs no longer compare).
        thumbnails: how many inputs to draw as thumbnails (0: none), spread over the labels: the input nearest its
            label's median mean first, then a second per label.
        table_rows: rows of the W&B table of means (0: no table). Each row carries a thumbnail, so it is logged
            once, at the end of fit (and by ``lvae validate``), in the training process; in fit, the drawing
            process writes the thumbnails at the first drawn epoch (``latents/<picture>/.table/<index>.png``), so
            the end of fit hands W&B those files. With two scatters, give one of them 0.
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
        skip_when_busy: skip an epoch whose picture would wait for an earlier one's (the first and the last epoch
            are always drawn); False draws every epoch, training waiting.
    """

    names = ("scatter",)
    figure = "lvae.figures.scatter:draw"
    last_drawn_here = True  # matplotlib and PIL only: see PictureCallback.last_drawn_here
    figsize = (8.0, 6.6)  # inches; the PNG is 800x660
    # Axes placed by hand, leaving room for the two-line title and the legends on the right: matplotlib's
    # constrained layout would cost more than drawing the whole figure.
    axes_rect = (0.1, 0.08, 0.77, 0.81)
    table_key = "latents/means_table"
    thumbnail_figure = "lvae.figures.scatter:write_thumbnails"  # the table's thumbnails, written once a fit
    other_figures = (thumbnail_figure,)
    margin = 0.15  # share of each axis' range added on both sides when limits are taken from the data
    z1_height = 0.3  # for Z=1, the height of an ellipse, in label rows

    def __init__(self, dims: Optional[tuple[int, int]] = None,
                 uncertainty: Literal["size", "alpha", "ellipse", "none"] = "size",
                 limits: Optional[tuple[float, float, float, float]] = None,
                 auto_limits: Literal["first", "grow", "each"] = "grow",
                 thumbnails: NonNegativeInt = 12, table_rows: NonNegativeInt = 500,
                 every_n_epochs: PositiveInt = 1, background: bool = True, skip_when_busy: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, background=background, skip_when_busy=skip_when_busy)
        if dims is not None:
            dims = tuple(int(d) for d in dims)
            if len(dims) != 2 or dims[0] == dims[1] or min(dims) < 0:
                raise ConfigError(f"LatentScatter.dims={dims} must be two different latent dimensions, e.g. [0, 1] "
                                  "(or null for a PCA of the means)")
        if uncertainty not in ("size", "alpha", "ellipse", "none"):
            raise ConfigError(f"LatentScatter.uncertainty={uncertainty!r} is not one of 'size', 'alpha', 'ellipse', "
                              "'none'")
        if limits is not None:
            limits = tuple(float(v) for v in limits)
            if len(limits) != 4 or not (limits[0] < limits[1] and limits[2] < limits[3]):
                raise ConfigError(f"LatentScatter.limits={limits} must be [xmin, xmax, ymin, ymax] with xmin < xmax "
                                  "and ymin < ymax (or null: the limits of the first drawn epoch)")
        if auto_limits not in ("first", "grow", "each"):
            raise ConfigError(f"LatentScatter.auto_limits={auto_limits!r} is not one of 'first', 'grow', 'each'")
        at_least("LatentScatter.thumbnails", thumbnails, 0, "0 draws no images")
        at_least("LatentScatter.table_rows", table_rows, 0, "0 logs no table")
        self.dims = dims
        if dims is not None:
            self.names = (f"scatter_dims_{dims[0]}_{dims[1]}",)
        self.uncertainty = uncertainty
        self.limits = limits
        self.auto_limits = auto_limits
        self.thumbnails = thumbnails
        self.table_rows = table_rows
        # What the next epoch's picture continues from (`_frame`), settled when an epoch's picture is sent to the
        # drawing process (it depends only on the epoch's means), all of it belonging to one view (`_view`).
        self._view: Optional[str] = None
        self._fixed: Optional[Limits] = None  # the limits taken from the drawn epochs
        self._basis: Optional[Tensor] = None  # (2, Z) float64: the PCA axes drawn last
        self._drawn: Optional[tuple[Tensor, Tensor]] = None  # dataset index (N,) and drawn positions (N, 2)
        self._thumbs: Optional[Tensor] = None  # (K,) dataset indices of the inputs drawn as thumbnails
        self._next: Optional[tuple] = None  # the `_frame` of the epoch prepared last, once it is drawn
        self._last: Optional[Latents] = None  # the last epoch's latents (drawn at the end of fit), for its table
        # This fit's table rows (dataset indices) and the drawing process writing their thumbnails as PNGs
        self._table_thumbnails: Optional[tuple[Tensor, Future]] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dims=self.dims)

    @override
    def state_dict(self) -> dict[str, Any]:
        index, points = self._drawn if self._drawn is not None else (None, None)
        return {**super().state_dict(), "view": self._view, "limits": self._fixed, "basis": self._basis,
                "index": index, "points": points, "thumbnails": self._thumbs}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Checked against this run's view when drawing: the checkpoint may be loaded before or after `setup`.
        # A checkpoint from before the PCA axes, positions and thumbnails were kept holds only view and limits.
        super().load_state_dict(state_dict)
        self._view = state_dict["view"]
        self._fixed = None if state_dict["limits"] is None else tuple(state_dict["limits"])
        self._basis = state_dict.get("basis")
        index, points = state_dict.get("index"), state_dict.get("points")
        self._drawn = None if index is None else (index, points)
        self._thumbs = state_dict.get("thumbnails")

    def _view_of(self, z: int) -> str:
        """The name of what is drawn for a Z-dimensional latent space; limits belong to one view."""
        if self.dims is not None:
            return f"dims {self.dims[0]},{self.dims[1]}"
        return {1: "z1", 2: "z"}.get(z, "pca")

    def _project(self, latents: Latents) -> tuple[Tensor, Optional[np.ndarray], tuple[str, str], str]:
        """2-D points (N, 2), the posterior ellipses (N, 3) when asked for, the axis labels and the title's
        description of the view."""
        mu, logvar = latents.mu, latents.logvar
        z = mu.shape[1]
        sigma = logvar.double().mul(0.5).exp()  # (N, Z)
        if self.dims is not None or z <= 2:
            if self.dims is not None:
                i, j = self.dims
                if max(i, j) >= z:
                    raise ConfigError(f"LatentScatter.dims={list(self.dims)} names a dimension the model lacks "
                                      f"(Z={z}); choose dimensions below {z}")
                text = f"dimensions {i} and {j} of Z={z}"
            else:
                i, j, text = 0, 1, "Z=2"
            if z == 1 and self.dims is None:
                # One number per input: the means along z_0, one row per label.
                points, names = torch.stack([mu[:, 0], latents.label.to(mu.dtype)], 1), ("z_0", "label")
                heights, text = torch.full_like(sigma[:, 0], self.z1_height), "Z=1, one row per label"
            else:
                points, names, heights = mu[:, [i, j]], (f"z_{i}", f"z_{j}"), 2 * sigma[:, j]
            shapes = torch.stack([2 * sigma[:, i], heights, torch.zeros_like(heights)], 1).numpy()
            return points, shapes if self.uncertainty == "ellipse" else None, names, text
        reference = self._basis if self._basis is not None and self._basis.shape[1] == z else None
        points, explained, self._basis, order = pca_2d(mu, reference)
        shares = [round(100 * float(share)) for share in explained]  # the title's sum agrees with the axes
        names = tuple(f"PC{k + 1}, {share}% of variance" for k, share in zip(order, shares))
        shapes = ellipses(logvar, self._basis) if self.uncertainty == "ellipse" else None
        return points, shapes, names, f"PCA of Z={z} to 2-D ({sum(shares)}% of variance)"

    @override
    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Job]:
        if not self.usable(latents, epoch, "scatter", min_points=2):
            return None
        self._last = latents
        if trainer.state.fn != "fit" and self.sink.has_tables():
            self._log_table(latents, epoch)  # in fit, the table is logged once, at the end
        elif trainer.state.fn == "fit":
            self._send_table_thumbnails(latents)
        drawn = self._frame
        try:
            job = self._job(latents, epoch, label_names(trainer))
            self._next = self._frame
        finally:
            self._frame = drawn  # until this epoch is drawn: a skipped epoch leaves the frame as it was
        return job

    @override
    def commit(self, job: Job, epoch: int) -> Job:
        """This epoch's frame is the one the next picture continues (its limits, axes and positions)."""
        if self._next is not None:
            self._frame, self._next = self._next, None
        return job

    @property
    def _frame(self) -> tuple:
        """What the next picture continues from: the view, limits, PCA axes, positions and thumbnails drawn last."""
        return self._view, self._fixed, self._basis, self._drawn, self._thumbs

    @_frame.setter
    def _frame(self, frame: tuple) -> None:
        self._view, self._fixed, self._basis, self._drawn, self._thumbs = frame

    def _job(self, latents: Latents, epoch: int, names: Optional[list[str]]) -> Job:
        """Everything but the drawing, which `lvae.figures.scatter` does in the drawing process: the projection, the
        limits and the thumbnails' inputs take milliseconds, and must be settled before the next epoch's."""
        view = self._view_of(latents.mu.shape[1])
        if self._view is not None and self._view != view:
            notice(f"LatentScatter: the checkpoint's limits, axes and thumbnails belong to the view "
                   f"{self._view!r}, this run draws {view!r}; they are chosen afresh from this epoch")
            self._fixed = self._basis = self._drawn = self._thumbs = None
        self._view = view
        points, shapes, (xlabel, ylabel), view_text = self._project(latents)
        points = points.double().numpy()  # (N, 2); float64: matplotlib draws it quicker
        u = posterior_uncertainty(latents.logvar).numpy()  # (N,)
        labels = latents.label.numpy()
        # Map u onto [0, 1] within this epoch: its absolute scale depends on how many dimensions are inactive.
        low, high = float(u.min()), float(u.max())
        spread = (u - low) / max(high - low, 1e-12)  # (N,)
        sizes, alpha, key = np.full(len(u), 10.0), 0.75, []
        shown = {"size": "point size: posterior variance u(x)", "alpha": "faint points: high posterior variance u(x)",
                 "none": "mean posterior variance u(x)"}.get(self.uncertainty)
        steps = ((low, 0.0), ((low + high) / 2, 0.5), (high, 1.0))  # the legend's u(x) and place in [0, 1]
        if self.uncertainty == "size":
            sizes = 4.0 + 56.0 * spread
            key = [(f"{value:.3g}", 4.0 + 56.0 * step, 0.75) for value, step in steps]
        elif self.uncertainty == "alpha":
            alpha = 1.0 - 0.85 * spread
            key = [(f"{value:.3g}", 16.0, 1.0 - 0.85 * step) for value, step in steps]
        elif self.uncertainty == "ellipse":
            sizes, alpha = np.full(len(u), 6.0), 0.9
            shown = ("ellipses: q(z|x) at 1 sigma, projected on the two axes" if view == "pca" else
                     "ellipses: q(z_0|x) at 1 sigma, along z_0" if view == "z1" else
                     "ellipses: q(z|x) at 1 sigma, semi-axes exp(logvar/2)")

        limits, widened = self._limits(points)
        title = f"Latent means of {len(points)} validation inputs, {view_text}, epoch {epoch}"
        detail = f"{shown}, u(x) {low:.3g} to {high:.3g}"
        if widened:
            detail += "; limits widened"
        index = latents.index
        previous = None
        if self._drawn is not None:
            # Where each input was drawn last time (NaN for inputs not drawn then), for the displacement.
            before_index, before_points = self._drawn
            previous = np.full(points.shape, np.nan)
            now_rows, before_rows = _matching(index, before_index)
            previous[now_rows] = before_points[before_rows].double().numpy()
        self._drawn = (index.clone(), torch.from_numpy(points).float())
        thumbs = self._thumbnail_rows(latents).numpy()  # (K,) rows
        name = self.names[0]
        return self.job(
            name=name, path=str(self.sink.png_path(name, epoch)), previous=previous, figsize=self.figsize,
            axes_rect=self.axes_rect, points=points, labels=labels, names=names, sizes=sizes, alpha=alpha,
            ellipses=shapes, key=key, key_title="u(x)", limits=limits, axis_labels=(xlabel, ylabel),
            thumb_points=points[thumbs], thumb_images=as_pictures(latents.image[thumbs]), thumb_labels=labels[thumbs],
            title=title, detail=detail)

    def _thumbnail_rows(self, latents: Latents) -> Tensor:
        """The rows of this epoch's inputs drawn as thumbnails: the inputs chosen at the first drawn epoch (again
        when none of them is followed any more)."""
        if self.thumbnails == 0:
            return torch.zeros(0, dtype=torch.long)
        if self._thumbs is not None:
            rows, _ = _matching(latents.index, self._thumbs)
            if len(rows):
                return rows
        # One or two per label: per label, the input whose mean lies nearest the label's median mean, then the next.
        ranked = {}
        for label in latents.label.unique().tolist():
            rows = torch.nonzero(latents.label == label).flatten()  # (n_label,)
            mu = latents.mu[rows].double()
            ranked[label] = rows[(mu - mu.median(dim=0).values).norm(dim=1).argsort()]
        picked = [ranked[label][k] for k in range(max(len(r) for r in ranked.values())) for label in sorted(ranked)
                  if k < len(ranked[label])][:self.thumbnails]
        rows = torch.stack(picked)
        self._thumbs = latents.index[rows].clone()
        return rows

    def _limits(self, points: np.ndarray) -> tuple[Limits, bool]:
        """The axis limits of this epoch and whether they were just widened."""
        if self.limits is not None:
            return self.limits, False
        low, high = points.min(axis=0), points.max(axis=0)  # (2,) each
        pad = self.margin * np.maximum(high - low, 1e-6)
        extent = (float(low[0] - pad[0]), float(high[0] + pad[0]), float(low[1] - pad[1]), float(high[1] + pad[1]))
        if self.auto_limits == "each":
            return extent, False
        if self._fixed is None:
            self._fixed = extent
            return extent, False
        if self.auto_limits == "first":
            return self._fixed, False
        x0, x1, y0, y1 = self._fixed
        if x0 <= low[0] and high[0] <= x1 and y0 <= low[1] and high[1] <= y1:
            return self._fixed, False
        self._fixed = (min(x0, extent[0]), max(x1, extent[1]), min(y0, extent[2]), max(y1, extent[3]))
        return self._fixed, True

    def _send_table_thumbnails(self, latents: Latents) -> None:
        """At the first drawn epoch of a fit, have the drawing process write the thumbnails of the table's rows as
        PNGs (the followed inputs, the same every epoch): the table logged at the end of fit then hands W&B their
        files, instead of the training process encoding them with the user waiting (bench/README.md)."""
        if self._table_thumbnails is not None or not (self.table_rows and self.background and self.sink.has_tables()):
            return
        n = min(self.table_rows, len(latents))
        job = self.job(self.thumbnail_figure, folder=str(self.sink.png_path(self.names[0], 0).parent / ".table"),
                       index=latents.index[:n].numpy(), images=as_pictures(latents.image[:n]))
        try:
            self._table_thumbnails = (latents.index[:n].clone(), self._shared.submit(self, job))
        except Exception:  # the table encodes them itself
            pass

    def _thumbnail_files(self, index: Tensor) -> Optional[list[str]]:
        """The PNGs the drawing process wrote of the thumbnails of the rows `index`, if it wrote them (for those
        inputs, this fit); None: the table encodes them."""
        if self._table_thumbnails is None:
            return None
        sent, future = self._table_thumbnails
        if not future.done() or future.cancelled() or future.exception() is not None or not torch.equal(sent, index):
            return None
        return future.result().state

    def _log_table(self, latents: Latents, epoch: int) -> None:
        """The means as a W&B table: one row per input (the first `table_rows` by index), one column per dim."""
        import wandb

        n = min(self.table_rows, len(latents))
        if n == 0:
            return
        u = posterior_uncertainty(latents.logvar[:n])
        z = latents.mu.shape[1]
        columns = ["index", "label", "uncertainty", "image", *[f"mu_{d}" for d in range(z)]]
        # The files the drawing process wrote this fit, else the pictures (n, H, W) or (n, H, W, 3)
        images = self._thumbnail_files(latents.index[:n]) or as_pictures(latents.image[:n])
        rows = [[int(latents.index[i]), int(latents.label[i]), float(u[i]), wandb.Image(images[i]),
                 *latents.mu[i].tolist()] for i in range(n)]
        self.sink.log_table(self.table_key, columns, rows, epoch)

    @override
    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        super().on_fit_start(trainer, pl_module)
        self._table_thumbnails = None  # each fit writes them again: its inputs may not be the last fit's

    @override
    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # Logged here rather than with the last epoch's picture: early stopping, max_steps or max_time may end
        # fit before max_epochs, and only now is it certain which epoch was the last. After the last epoch's pictures
        # are sent and before waiting for them: W&B's time over the table overlaps the drawing process's.
        self.end_fit(trainer)
        if trainer.is_global_zero and self._last is not None and self.sink.has_tables():
            try:
                self._log_table(self._last, self._last.epoch)
            except Exception as err:
                notice(f"LatentScatter: no table of means ({type(err).__name__}: {err})")
        self._last = None
        super().on_fit_end(trainer, pl_module)  # waits for the last picture


