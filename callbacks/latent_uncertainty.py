"""The encoder's posterior variance as a per-input uncertainty, and what it does (and does not) go with."""

from typing import Optional

import lightning as L
import numpy as np
import torch
from torchvision.utils import make_grid
from typing_extensions import override

from lvae.drawing import Job
from lvae.errors import at_least
from lvae.images import grid_picture
from lvae.latents import Latents, unusable
from lvae.metrics import (active_dims, active_units, kl_per_dim, neighbour_disagreement, per_class_mean, pixel_mass,
                          spearman, uncertainty)
from lvae.picture_callback import PictureCallback
from lvae.say import notice


class LatentUncertainty(PictureCallback):
    """Per input, u(x) = the posterior variance exp(logvar) averaged over latent dimensions, and what it tracks.

    Logged each drawn epoch under ``uncertainty/``: ``mean`` (mean u), ``class_<c>`` (mean u per label),
    ``active_units`` (dimensions whose mean varies across inputs by more than 0.01, Burda et al.), the Spearman
    correlations of u(x) with the label disagreement of the input's nearest neighbours in mu-space
    (``spearman_disagreement``), with its reconstruction error (``spearman_recon``) and with its ink
    (``spearman_ink``), and of the per-input negative ELBO with that neighbour disagreement
    (``neg_elbo_spearman_disagreement``). A correlation is NaN where one side is constant.

    Picture: ``uncertainty``, one figure holding the histogram of u(x), the KL per latent dimension and three
    labelled grids, the lowest u(x), the highest u(x) and the highest negative ELBO, whose titles carry this
    epoch's correlations. Its W&B caption lists each grid's labels and scores.

    Args:
        n_show: inputs per grid.
        nrow: images per row of a grid.
        k_neighbours: neighbours in mu-space whose labels are compared with the input's own.
        bins: bins of the u(x) histogram.
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
        skip_when_busy: skip an epoch whose picture would wait for an earlier one's (the first and the last epoch
            are always drawn); False draws every epoch, training waiting.
    """

    names = ("uncertainty",)
    figure = "lvae.figures.uncertainty:draw"
    last_drawn_here = True  # matplotlib and PIL only: see PictureCallback.last_drawn_here
    figsizes = {"uncertainty": (9.2, 5.8)}  # inches
    # state_key stays the class name: two in one trainer would log the same uncertainty/ numbers and picture.

    def __init__(self, n_show: int = 16, nrow: int = 8, k_neighbours: int = 10, bins: int = 50,
                 every_n_epochs: int = 1, background: bool = True, skip_when_busy: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, background=background, skip_when_busy=skip_when_busy)
        at_least("LatentUncertainty.n_show", n_show, 1, "inputs per grid")
        at_least("LatentUncertainty.nrow", nrow, 1, "images per grid row")
        at_least("LatentUncertainty.k_neighbours", k_neighbours, 1, "10 is usual")
        at_least("LatentUncertainty.bins", bins, 1, "50 is usual")
        self.n_show = n_show
        self.nrow = nrow
        self.k_neighbours = k_neighbours
        self.bins = bins

    def measure(self, latents: Latents) -> dict[str, float]:
        """The epoch's numbers, keyed as they are logged. Those a module cannot give are left out: the correlations
        with the reconstruction error and the negative ELBO need lvae's likelihood, ink needs grey images, and the
        neighbours' label disagreement needs two labels or more (not unlabelled images)."""
        u = uncertainty(latents.logvar)  # (N,)
        values = {"uncertainty/mean": float(u.mean()),
                  "uncertainty/active_units": float(active_units(latents.mu))}
        labelled = latents.labelled
        if labelled:
            disagreement = neighbour_disagreement(latents.mu, latents.label, self.k_neighbours)  # (N,) in [0, 1]
            values["uncertainty/spearman_disagreement"] = spearman(u, disagreement)
        if latents.recon is not None:
            values["uncertainty/spearman_recon"] = spearman(u, latents.recon)
        if latents.image.shape[1] == 1:
            values["uncertainty/spearman_ink"] = spearman(u, pixel_mass(latents.image))
        if latents.neg_elbo is not None and labelled:
            values["uncertainty/neg_elbo_spearman_disagreement"] = spearman(latents.neg_elbo, disagreement)
        if labelled:
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
                epoch: int) -> Optional[Job]:
        reason = self._skip_reason(latents)
        if reason is not None:
            notice(f"LatentUncertainty: no uncertainty pictures for epoch {epoch}: {reason}")
            return None
        # Numbers are measured here, in the training loop, where the loggers are; the drawing process only draws.
        # One neighbour search, light enough for the training loop.
        values = self.measure(latents)
        self.log_with_picture(values)
        # What the picture shows is picked here (cheap tensor work), so only 3 x n_show images go to the drawing
        # process.
        u = uncertainty(latents.logvar)  # (N,)
        n, of = min(self.n_show, len(latents)), f"of {len(latents)}"
        rho = ", ".join(f"{name} {values[key]:+.2f}" for name, key in (
            ("neighbour label disagreement", "uncertainty/spearman_disagreement"),
            ("recon error", "uncertainty/spearman_recon"), ("ink", "uncertainty/spearman_ink")) if key in values)
        note = "; ".join(([f"Spearman of u(x) with {rho}"] if rho else [])
                         + ([] if "uncertainty/spearman_ink" in values else ["ink is measured on grey images only"]))
        shown = [(f"The {n} lowest u(x) {of}", note, "u(x)", u, False),
                 (f"The {n} highest u(x) {of}", "", "u(x)", u, True)]
        if latents.neg_elbo is not None:
            rho_elbo = values.get("uncertainty/neg_elbo_spearman_disagreement")
            shown.append((f"The {n} highest negative ELBO {of}", "one label: no neighbour label disagreement"
                          if rho_elbo is None else f"Spearman of -ELBO with neighbour label disagreement "
                          f"{rho_elbo:+.2f}", "-ELBO", latents.neg_elbo, True))
        else:
            shown[1] = (*shown[1][:1], "no negative ELBO: the model exposes no likelihood to lvae", *shown[1][2:])
        grids = []
        for headline, note, score, scores, largest in shown:
            rows = scores.topk(n, largest=largest).indices  # (n,) most extreme first
            pixels = grid_picture(make_grid(latents.image[rows], nrow=self.nrow, padding=2, pad_value=128),
                                  latents.image.shape[1])
            grids.append(dict(headline=headline, note=note, score=score, pixels=pixels,
                              cell=tuple(latents.image.shape[2:]),
                              labels=latents.label[rows].tolist() if latents.labelled else None,
                              values=scores[rows].tolist()))
        counts, edges = np.histogram(u.numpy(), bins=self.bins)
        return self.job(
            path=str(self.sink.png_path("uncertainty", epoch)), figsize=self.figsizes["uncertainty"], epoch=epoch,
            counts=counts, edges=edges, mean=values["uncertainty/mean"],
            kl=kl_per_dim(latents.mu, latents.logvar).numpy(), active=active_dims(latents.mu).numpy(), grids=grids,
            nrow=self.nrow)


