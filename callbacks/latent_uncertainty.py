"""The encoder's posterior variance as a per-input uncertainty, and what it does (and does not) go with."""

from typing import Callable, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import Tensor
from torchvision.utils import make_grid
from typing_extensions import override

from lvae.errors import ConfigError
from lvae.latents import Latents, unusable
from lvae.metrics import (active_dims, active_units, kl_per_dim, neighbour_disagreement, per_class_mean, pixel_mass,
                          spearman, uncertainty)
from lvae.pictures import PictureCallback

class LatentUncertainty(PictureCallback):
    """Per input, u(x) = the posterior variance exp(logvar) averaged over latent dimensions, and what it tracks.

    Logged each epoch under ``uncertainty/``: ``mean`` (mean u), ``class_<c>`` (mean u per label),
    ``active_units`` (dimensions whose mean varies across inputs by more than 0.01, Burda et al.), the Spearman
    correlations of u(x) with the label disagreement of the input's nearest neighbours in mu-space
    (``spearman_disagreement``), with its reconstruction error (``spearman_recon``) and with its ink
    (``spearman_ink``), and of the per-input negative ELBO with that neighbour disagreement
    (``neg_elbo_spearman_disagreement``). A correlation is NaN where one side is constant.

    Pictures: ``uncertainty_hist``, ``kl_per_dim`` and the labelled grids ``least_uncertain``,
    ``most_uncertain`` and ``highest_neg_elbo``, whose titles carry this epoch's correlations.

    Args:
        n_show: inputs per grid.
        nrow: images per row of a grid.
        k_neighbours: neighbours in mu-space whose labels are compared with the input's own.
        bins: bins of the u(x) histogram.
        every_n_epochs: draw every n-th validation epoch.
        background: draw on a background thread (False draws in the training loop, e.g. for debugging).
    """

    names = ("uncertainty_hist", "kl_per_dim", "least_uncertain", "most_uncertain", "highest_neg_elbo")
    figsizes = {"uncertainty_hist": (6.4, 4.0), "kl_per_dim": (6.4, 3.6), "least_uncertain": (8.0, 2.8),
                "most_uncertain": (8.0, 2.8), "highest_neg_elbo": (8.0, 2.8)}  # inches

    def __init__(self, n_show: int = 16, nrow: int = 8, k_neighbours: int = 10, bins: int = 50,
                 every_n_epochs: int = 1, background: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, background=background)
        for arg, value, hint in (("n_show", n_show, "inputs per grid"), ("nrow", nrow, "images per grid row"),
                                 ("k_neighbours", k_neighbours, "10 is usual"), ("bins", bins, "50 is usual")):
            if value < 1:
                raise ConfigError(f"LatentUncertainty.{arg}={value} must be >= 1 ({hint})")
        self.n_show = n_show
        self.nrow = nrow
        self.k_neighbours = k_neighbours
        self.bins = bins

    def measure(self, latents: Latents) -> dict[str, float]:
        """The epoch's numbers, keyed as they are logged."""
        u = uncertainty(latents.logvar)  # (N,)
        disagreement = neighbour_disagreement(latents.mu, latents.label, self.k_neighbours)  # (N,) in [0, 1]
        values = {"uncertainty/mean": float(u.mean()),
                  "uncertainty/active_units": float(active_units(latents.mu)),
                  "uncertainty/spearman_disagreement": spearman(u, disagreement),
                  "uncertainty/spearman_recon": spearman(u, latents.recon),
                  "uncertainty/spearman_ink": spearman(u, pixel_mass(latents.image)),
                  "uncertainty/neg_elbo_spearman_disagreement": spearman(latents.neg_elbo, disagreement)}
        values.update({f"uncertainty/class_{c}": m for c, m in per_class_mean(u, latents.label).items()})
        return values

    def _skip_reason(self, latents: Optional[Latents]) -> Optional[str]:
        reason = unusable(latents, min_points=self.k_neighbours + 1, finite=("mu", "logvar", "recon", "neg_elbo"))
        if reason is not None:
            return reason
        if not bool(torch.isfinite(uncertainty(latents.logvar)).all()):
            return "exp(logvar) overflows"
        return None

    @override
    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Callable[[], None]]:
        reason = self._skip_reason(latents)
        if reason is not None:
            rank_zero_warn(f"LatentUncertainty: no uncertainty pictures for epoch {epoch}: {reason}")
            return None
        # Numbers are logged here, in the training loop: Lightning's CSVLogger is not safe to call from the drawing
        # thread (its save() can meet a row appended meanwhile). One neighbour search, about 0.1 s at 5000 inputs.
        values = self.measure(latents)
        self.sink.log_scalars(values, epoch)

        def draw() -> None:
            u = uncertainty(latents.logvar)  # (N,)
            self._draw_hist(u, values, epoch)
            self._draw_kl(latents, values, epoch)
            n, of = min(self.n_show, len(latents)), f"of {len(latents)}, epoch {epoch}"
            rho = (f"Spearman of u(x) with neighbour label disagreement "
                   f"{values['uncertainty/spearman_disagreement']:+.2f}, with recon error "
                   f"{values['uncertainty/spearman_recon']:+.2f}, with ink {values['uncertainty/spearman_ink']:+.2f}")
            self._draw_grid("least_uncertain", latents, u, n, largest=False, score="u", epoch=epoch,
                            headline=f"The {n} lowest u(x) {of}", note=rho)
            self._draw_grid("most_uncertain", latents, u, n, largest=True, score="u", epoch=epoch,
                            headline=f"The {n} highest u(x) {of}", note=rho)
            self._draw_grid("highest_neg_elbo", latents, latents.neg_elbo, n, largest=True, score="-ELBO",
                            epoch=epoch, headline=f"The {n} highest negative ELBO {of}",
                            note=f"Spearman of -ELBO with neighbour label disagreement "
                                 f"{values['uncertainty/neg_elbo_spearman_disagreement']:+.2f}")

        return draw

    def _draw_hist(self, u: Tensor, values: dict[str, float], epoch: int) -> None:
        fig = Figure(figsize=self.figsizes["uncertainty_hist"])
        ax = fig.add_axes((0.11, 0.13, 0.85, 0.74))
        counts, edges = np.histogram(u.numpy(), bins=self.bins)
        ax.stairs(counts, edges, fill=True, color="tab:blue")  # one artist, not one patch per bin: quicker to draw
        ax.axvline(values["uncertainty/mean"], color="k", linestyle="--", linewidth=1,
                   label=f"mean {values['uncertainty/mean']:.3g}")
        ax.legend(fontsize=8)
        ax.set_xlabel("u(x) = mean over dimensions of exp(logvar)")
        ax.set_ylabel("inputs")
        title = (f"Posterior variance per input, epoch {epoch}\n{len(u)} inputs, "
                 f"{int(values['uncertainty/active_units'])} active units")
        ax.set_title(title, fontsize=10)
        self.sink.log_figure("uncertainty_hist", fig, epoch, caption=title.replace("\n", ", "))

    def _draw_kl(self, latents: Latents, values: dict[str, float], epoch: int) -> None:
        kl = kl_per_dim(latents.mu, latents.logvar)  # (Z,) nats
        active = active_dims(latents.mu)  # (Z,) the dimensions `active_units` counts
        fig = Figure(figsize=self.figsizes["kl_per_dim"])
        ax = fig.add_axes((0.11, 0.15, 0.85, 0.7))
        ax.bar(np.arange(len(kl)), kl.numpy(), color=np.where(active.numpy(), "tab:blue", "0.7"))
        ax.set_xlabel("latent dimension (grey: inactive)")
        ax.set_ylabel("KL, nats")
        if len(kl) <= 32:
            ax.set_xticks(np.arange(len(kl)))
            ax.tick_params(axis="x", labelsize=7)
        title = (f"KL(q(z_d|x) || N(0, 1)) per dimension, epoch {epoch}\ntotal {float(kl.sum()):.1f} nats, "
                 f"{int(values['uncertainty/active_units'])} of {len(kl)} dimensions active")
        ax.set_title(title, fontsize=10)
        self.sink.log_figure("kl_per_dim", fig, epoch, caption=title.replace("\n", ", "))

    def _draw_grid(self, name: str, latents: Latents, scores: Tensor, n: int, largest: bool, score: str,
                   epoch: int, headline: str, note: str) -> None:
        rows = scores.topk(n, largest=largest).indices  # (n,) most extreme first
        images = latents.image[rows].unsqueeze(1).float() / 255.0  # (n, 1, 28, 28)
        pad, cell = 2, 30  # make_grid's padding and the resulting cell pitch (28 + 2)
        grid = make_grid(images, nrow=self.nrow, padding=pad, pad_value=0.5)  # (3, H, W)
        fig = Figure(figsize=self.figsizes[name])
        ax = fig.add_axes((0.01, 0.01, 0.98, 0.8))
        ax.imshow(grid[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_axis_off()
        labels = latents.label[rows].tolist()
        values = scores[rows].tolist()
        for i, (label, value) in enumerate(zip(labels, values)):
            x, y = pad + cell * (i % self.nrow), pad + cell * (i // self.nrow)  # the cell's top-left pixel
            ax.text(x + 1, y + 1, str(label), color="yellow", fontsize=9, fontweight="bold", va="top")
            ax.text(x + 27, y + 27, f"{value:.3g}", color="cyan", fontsize=6, ha="right", va="bottom")
        title = f"{headline} (label yellow, {score} cyan)\n{note}"
        fig.suptitle(title, fontsize=9)
        caption = (f"{headline}. {note}. Labels: {' '.join(map(str, labels))}. "
                   f"{score}: {' '.join(f'{v:.3g}' for v in values)}")
        self.sink.log_figure(name, fig, epoch, caption=caption)
