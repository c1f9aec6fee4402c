"""One offline page per run that replays the latent space epoch by epoch: the PCA view and the t-SNE map side by
side, an epoch slider, hover cards, paths and a legend that hides classes."""

import time
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from jsonargparse.typing import PositiveInt
from torch import Tensor
from typing_extensions import override

from lvae.callbacks.tsne_embedding import TSNEEmbedding
from lvae.drawing import Job, run_job
from lvae.errors import at_least
from lvae.images import as_pictures, decode_images, to_uint8
from lvae.labels import label_names
from lvae.latent_maths import pca_2d
from lvae.latents import Latents
from lvae.metrics import uncertainty as posterior_uncertainty
from lvae.picture_callback import PictureCallback
from lvae.say import notice


def thumbnails(images: Tensor, px: int) -> np.ndarray:
    """uint8 images (N, C, H, W) as pictures (N, h, w[, 3]) whose longer side is at most `px`, shrunk by averaging
    pixels (area interpolation), so that a thin stroke fades rather than vanishes."""
    height, width = images.shape[-2:]
    if max(height, width) > px:
        scale = px / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        images = to_uint8(F.interpolate(images.float() / 255, size=size, mode="area"))
    return as_pictures(images)


class LatentExplorer(PictureCallback):
    """Writes ``latents/explorer.html``, one self-contained page (Bokeh, every script and image inside; it opens from
    disk with no server and no network) that replays the latent space: the PCA view of the means (the means
    themselves when Z=2), with its axes matched epoch to epoch by order and sign as `LatentScatter` matches them, and
    the t-SNE map `TSNEEmbedding` draws, with its prior draws, side by side. One epoch slider and a play button drive
    both views; hovering an input shows its image, label, dataset index, u(x) and negative ELBO at that epoch and
    rings it in the other view; clicking an input draws its path across the epochs in both views; the legend hides
    and shows classes; hovering a prior draw shows its decoded image at that epoch.

    Each drawn epoch is kept under ``latents/explorer/`` (each input's thumbnail once, then per epoch its places,
    u(x) and negative ELBO: about 80 kB an epoch for 2000 inputs), and the page is written again from all of them in
    the drawing process, beside itself and renamed into place: a page opened during training shows the run so far,
    and ``lvae explore runs/<id>`` writes it again from what the run kept. Writing the page costs the drawing process
    about as much as the other pictures of an epoch together (0.5-0.8 s for 2000 inputs), so during fit it is
    written with a drawn epoch only when `page_seconds` have passed since it was last written, or since fit began for
    the first; the epochs between are kept, and the page is written with every kept epoch with the fit's last epoch
    (at the end of fit) and at an interrupt. The t-SNE map of an epoch is read from the file `TSNEEmbedding` keeps
    beside its PNG when the page is written; at the end of fit the page is written once more if a map came after it.
    The page is logged to W&B at the end of fit (``latents/explorer``, an HTML panel).

    The module needs what the other pictures need: ``encode`` (for a module lvae did not write) and, for the prior
    draws' images, ``decode``.

    Args:
        max_points: at most this many followed inputs are on the page: the first by dataset index, the same every
            epoch (the t-SNE map shows those of them it maps). 2000 inputs over 30 epochs make a page of about 5 MB
            (digits) to 7 MB (colour images).
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
        skip_when_busy: skip an epoch whose picture would wait for an earlier one's (the first and the last epoch
            are always drawn); False draws every epoch, training waiting.
        page_seconds: during fit, write the page with a drawn epoch only once this many seconds have passed since
            it was last written, or since fit began (short epochs do not pay for a page at their first one); the
            fit's last epoch always writes it; 0 writes it with every drawn epoch.
    """

    figure = "lvae.figures.explorer:record"  # keeps an epoch's views and writes the page from all kept so far
    rewrite_figure = "lvae.figures.explorer:rewrite"  # writes the page again, with a t-SNE map that came after it
    other_figures = (rewrite_figure,)
    thumbnail_px = 32  # an input's longer side on the page: the hover card shows it at 64 px
    page_name = "explorer"  # the page is latents/explorer.html, its kept data latents/explorer/

    def __init__(self, max_points: PositiveInt = 2000, every_n_epochs: PositiveInt = 1, background: bool = True,
                 skip_when_busy: bool = True, page_seconds: float = 10.0):
        super().__init__(every_n_epochs=every_n_epochs, background=background, skip_when_busy=skip_when_busy)
        at_least("LatentExplorer.max_points", max_points, 2, "2000 make a page of about 5 MB")
        at_least("LatentExplorer.page_seconds", page_seconds, 0, "0 writes the page with every drawn epoch")
        self.max_points, self.page_seconds = max_points, float(page_seconds)
        self._written_at: Optional[float] = None  # when the last job that writes the page was sent (time.monotonic)
        self._behind = False  # an epoch was sent to be kept since: the page does not show it yet
        self._basis: Optional[Tensor] = None  # (2, Z) float64: the PCA axes of the last drawn epoch
        self._inputs_sent: Optional[Tensor] = None  # dataset indices whose thumbnails this trainer has sent to be kept
        self._maps_shown: list[int] = []  # epochs whose t-SNE map the last page written shows
        self._tsne: Optional[TSNEEmbedding] = None  # the trainer's t-SNE map, whose maps and prior draws are shown
        self._next: Optional[tuple] = None  # `_basis` and `_inputs_sent` of the epoch prepared last, once it is drawn

    # state_key stays the class name: a run has one page, latents/explorer.html, so a trainer has one explorer.
    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "basis": self._basis}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._basis = state_dict["basis"]

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._tsne = next((c for c in trainer.callbacks if isinstance(c, TSNEEmbedding)), None)

    def _project(self, latents: Latents) -> tuple[Tensor, tuple[str, str], str]:
        """The means as the page's left view draws them, (N, 2), its axis names and what the view is."""
        mu = latents.mu  # (N, Z)
        z = mu.shape[1]
        if z == 1:
            return torch.stack([mu[:, 0], latents.label.to(mu.dtype)], 1), ("z_0", "label"), "Z=1, one row per label"
        if z == 2:
            return mu, ("z_0", "z_1"), "The means, Z=2"
        reference = self._basis if self._basis is not None and self._basis.shape[1] == z else None
        points, explained, self._basis, order = pca_2d(mu, reference)
        shares = [round(100 * float(share)) for share in explained]
        axes = tuple(f"PC{k + 1}, {share}% of variance" for k, share in zip(order, shares))
        return points, axes, f"PCA of Z={z} to 2-D ({sum(shares)}% of variance)"

    @override
    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Job]:
        if not self.usable(latents, epoch, "explorer page", min_points=2):
            return None
        drawn = self._basis, self._inputs_sent
        try:
            job = self._job(trainer, pl_module, latents, epoch)
            self._next = self._basis, self._inputs_sent
        finally:
            self._basis, self._inputs_sent = drawn  # until this epoch is drawn: a skipped epoch changes neither
        return job

    @override
    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        super().on_fit_start(trainer, pl_module)
        # The page is first written page_seconds into the fit: on short epochs its first writing would hold up the
        # drawing of the epochs after the first (bench/README.md).
        self._written_at, self._behind = time.monotonic(), False

    @override
    def commit(self, job: Job, epoch: int) -> Job:
        """The axes the next epoch matches, and the thumbnails sent, are this epoch's once it is drawn; the job writes
        the page when `page_seconds` have passed since the last one that did (or since fit began), and with the fit's
        last epoch, so that the end of fit has no page left to write."""
        if self._next is not None:
            (self._basis, self._inputs_sent), self._next = self._next, None
        now = time.monotonic()
        last = self._shared is not None and self._shared.last_epoch(epoch)
        write = last or self._written_at is None or now - self._written_at >= self.page_seconds
        if write:
            self._written_at = now
        self._behind = not write
        return Job(job.target, {**job.kwargs, "write": write})

    def _job(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Latents, epoch: int) -> Job:
        points, axes, view = self._project(latents)  # the PCA of all followed inputs, as LatentScatter's
        rows = torch.arange(min(len(latents), self.max_points))  # sorted by index: the same inputs every epoch
        shown, points = latents.select(rows), points[rows]
        inputs = None
        if self._inputs_sent is None or not torch.equal(self._inputs_sent, shown.index):
            inputs = dict(index=shown.index.numpy(), label=shown.label.numpy(),
                          images=thumbnails(shown.image, self.thumbnail_px), names=label_names(trainer) or [],
                          labelled=shown.labelled)
            self._inputs_sent = shown.index.clone()
        tsne_map, prior = "", np.zeros((0, 0, 0), np.uint8)  # no t-SNE map, no prior draws
        if self._tsne is not None:
            png = self._tsne.sink.png_path(self._tsne.names[0], epoch)
            # TSNEEmbedding keeps the map of the epoch drawn as epoch_NNN.png beside it, as map_NNN.npz.
            tsne_map = str(png.with_name(png.name.replace("epoch_", "map_")).with_suffix(".npz")
                           .relative_to(self.sink.page_path(self.page_name).parent))
            if self._tsne.n_prior:
                z = self._tsne.prior_z(latents.mu.shape[1])  # (P, Z): the draws placed in the map
                decoded = decode_images(pl_module, z, tuple(latents.image.shape[1:]))  # (P, C, H, W) in [0, 1]
                prior = thumbnails(to_uint8(decoded), self.thumbnail_px)
        neg_elbo = shown.neg_elbo if shown.neg_elbo is not None else torch.full((len(shown),), float("nan"))
        return self.job(
            folder=str(self.sink.kept_path(self.page_name)), epoch=epoch, index=shown.index.numpy(),
            pca=points.float().numpy(), axes=axes, view=view, u=posterior_uncertainty(shown.logvar).numpy(),
            neg_elbo=neg_elbo.numpy(), tsne_map=tsne_map, prior_images=prior, inputs=inputs)

    @override
    def apply(self, state: dict[str, Any]) -> None:
        self._maps_shown = state["mapped"]

    def _page_misses_maps(self) -> bool:
        """Whether a t-SNE map of an epoch on the page was made after the page was last written (a map drawn in
        another drawing process, beside the page's job)."""
        if self._tsne is None:
            return False
        epochs = {int(path.stem.split("_")[1]) for path in self.sink.kept_path(self.page_name).glob("epoch_*.npz")}
        maps = self._tsne.sink.png_path(self._tsne.names[0], 0).parent.glob("map_*.npz")
        return bool(epochs & {int(path.stem.split("_")[1]) for path in maps} - set(self._maps_shown))

    def _finish(self, trainer: "L.Trainer") -> None:
        """Once the last epoch's page is written: write it again if a t-SNE map came after it, and log it."""
        if not trainer.is_global_zero or self.sink is None:
            return
        page = self.sink.page_path(self.page_name)
        try:
            if self._tsne is not None:
                self._tsne.join()  # its last map, for the page
            if self._behind or self._page_misses_maps():
                job = self.job(self.rewrite_figure, page=str(page))
                if self.background:  # in the drawing process, where the page's library is imported already
                    drawn = self._result(self._shared.submit(self, job))  # within a SIGTERM's grace
                else:
                    drawn = run_job(job)
                self._behind = False
                self._log(drawn, trainer.current_epoch)
            if page.is_file():
                self.sink.log_page(self.page_name, page)
        except Exception as err:  # a picture must never end training
            notice(f"LatentExplorer: the explorer page was not logged ({type(err).__name__}: {err})")

    @override
    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        super().on_exception(trainer, pl_module, exception)  # the epochs being drawn are kept, or abandoned
        if not (self._behind and trainer.is_global_zero and self.sink is not None):
            return
        # The page with every epoch kept, as the end of fit would write it. The drawing process has stopped: written
        # here, now that nothing trains.
        try:
            run_job(self.job(self.rewrite_figure, page=str(self.sink.page_path(self.page_name))))
            self._behind = False
        except Exception as err:  # never raise here: Lightning would skip the other callbacks' on_exception
            notice(f"LatentExplorer: the explorer page was not written again ({type(err).__name__}: {err}); "
                   f"lvae explore {self.sink.page_path(self.page_name).parent.parent} writes it from the kept epochs")

    @override
    def _end_of_fit(self, trainer: "L.Trainer") -> None:
        # Within the end of fit, while a SIGTERM stays held: the page is finished before the signal is handed on.
        super()._end_of_fit(trainer)  # waits for the last epoch's page
        self._finish(trainer)

    @override
    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        super().on_validation_end(trainer, pl_module)  # `lvae validate` waits for its page here
        if trainer.state.fn != "fit":
            self._finish(trainer)
