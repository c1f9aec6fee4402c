"""A t-SNE map of the latent means that evolves with training: each epoch's map starts from the last one."""

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal, Optional

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from torch import Tensor
from typing_extensions import override

from lvae.drawing import Job
from lvae.errors import ConfigError, at_least
from lvae.images import decode_images, pixels
from lvae.labels import label_names
from lvae.latent_maths import prior_draws
from lvae.latents import Latents, unusable
from lvae.picture_callback import PictureCallback
from lvae.tsne import TSNESteps
from lvae.say import notice

class TSNEEmbedding(PictureCallback):
    """openTSNE on the validation means of a fixed subset of inputs, with the current prior samples placed in the
    same map.

    The first epoch starts from a PCA of the means (openTSNE's ``initialization="pca"``). Every later epoch
    starts from the previous epoch's map, matched by dataset index and rescaled as openTSNE expects, with new
    affinities for the new means and fewer iterations: the map evolves instead of being redrawn from scratch,
    and costs a fraction of a cold fit. The finished map is then turned onto the previous one (the rotation or
    reflection that best matches the same inputs' places, orthogonal Procrustes), so successive pictures keep
    their orientation. The last map is kept in the checkpoint and beside each PNG (``map_<epoch>.npz``), so a
    resumed run continues from the last drawn map, also when the checkpoint was written while that map was still
    being computed.
    ``n_prior`` draws z ~ N(0, I) (seeded: the same z every epoch) are decoded and placed into the map with
    ``TSNEEmbedding.transform`` (prior draws live in the same space as the means), marked by crosses and drawn as
    their decoded images on or beside their cross where these cover no other; the legend names the labels by the
    dataset's classes where it has them.

    Picture: ``tsne``; scalars: ``tsne/knn_agreement`` (share of each point's 10 nearest map neighbours that
    share its label), ``tsne/seconds`` (the t-SNE work of the epoch), ``tsne/displacement`` (how far the mapped
    points moved since the last map, after turning: the mean distance over their RMS spread) and ``tsne/outside``
    (0: the map's limits take in every point).

    Args:
        max_points: at most this many means are mapped: the first by dataset index of the collected subset, the
            same inputs every epoch. Barnes-Hut t-SNE takes seconds per thousand points on a CPU.
        perplexity: t-SNE perplexity, about the number of neighbours each point keeps close; needs more than
            3 x perplexity points.
        early_exaggeration_iter: iterations of the early-exaggeration phase of the first (cold) map.
        n_iter: iterations of the normal phase of the first map.
        warm_early_exaggeration_iter: iterations of the early-exaggeration phase of later (warm-started) maps.
        warm_n_iter: iterations of the normal phase of later maps (25 keeps maps of up to 2000 points as good as a
            cold fit; use 50-100 for 5000-10000, see bench/README.md).
        negative_gradient_method: ``"bh"`` (Barnes-Hut; much faster than FFT below ~10k points on a CPU) or
            ``"fft"`` (interpolation, for larger maps).
        affinity_method: how each mean's nearest neighbours are found for the affinities: ``"exact"`` (quicker
            than Annoy on 20-D means up to 10k points), or openTSNE's ``"annoy"`` / ``"auto"`` (approximate, for
            much larger maps).
        prior_n_iter: iterations that place the prior draws into the finished map (openTSNE's ``transform``).
        n_jobs: threads openTSNE uses. It runs beside training, so 1 leaves the training loop its cores.
        n_prior: prior draws placed into the map (0: none).
        seed: seed of the prior draws and of openTSNE (the neighbour search and the PCA jitter).
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
        skip_when_busy: skip an epoch whose picture would wait for an earlier one's (the first and the last epoch
            are always drawn); False draws every epoch, training waiting.
    """

    names = ("tsne",)
    figure = "lvae.figures.tsne:map_and_draw"
    figsize = (8.0, 7.2)  # inches; the PNG is 800x720
    axes_rect = (0.02, 0.02, 0.8, 0.86)  # placed by hand: constrained layout doubled the drawing time
    knn_k = 10  # neighbours of the quality figure
    map_keys = ("embedding", "index", "embedding_epoch", "init_epoch")  # the last finished map, in the checkpoint

    def __init__(self, max_points: PositiveInt = 2000, perplexity: PositiveFloat = 30.0,
                 early_exaggeration_iter: NonNegativeInt = 125, n_iter: PositiveInt = 250,
                 warm_early_exaggeration_iter: NonNegativeInt = 0, warm_n_iter: PositiveInt = 25,
                 negative_gradient_method: Literal["bh", "fft"] = "bh",
                 affinity_method: Literal["exact", "annoy", "auto"] = "exact", n_jobs: int = 1,
                 n_prior: NonNegativeInt = 64, prior_n_iter: PositiveInt = 50, seed: int = 0,
                 every_n_epochs: PositiveInt = 1, background: bool = True, skip_when_busy: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, background=background, skip_when_busy=skip_when_busy)
        at_least("TSNEEmbedding.max_points", max_points, 2, "2000 maps in a few seconds")
        if perplexity <= 0:
            raise ConfigError(f"TSNEEmbedding.perplexity={perplexity} must be > 0 (30 is the usual value)")
        if 3 * perplexity >= max_points:
            raise ConfigError(f"TSNEEmbedding.perplexity={perplexity} is too large for TSNEEmbedding.max_points="
                              f"{max_points}: t-SNE needs more than 3 x perplexity points; lower the perplexity "
                              f"below {max_points / 3:g} or raise max_points")
        at_least("TSNEEmbedding.early_exaggeration_iter", early_exaggeration_iter, 0)
        at_least("TSNEEmbedding.n_iter", n_iter, 1)
        at_least("TSNEEmbedding.warm_early_exaggeration_iter", warm_early_exaggeration_iter, 0)
        at_least("TSNEEmbedding.warm_n_iter", warm_n_iter, 1)
        at_least("TSNEEmbedding.n_prior", n_prior, 0)
        at_least("TSNEEmbedding.prior_n_iter", prior_n_iter, 1)
        if negative_gradient_method not in ("bh", "fft"):
            raise ConfigError(f"TSNEEmbedding.negative_gradient_method={negative_gradient_method!r} is not one of "
                              "'bh' (Barnes-Hut, fast below ~10k points), 'fft'")
        if affinity_method not in ("exact", "annoy", "auto"):
            raise ConfigError(f"TSNEEmbedding.affinity_method={affinity_method!r} is not one of 'exact' (quickest "
                              "below ~10k points), 'annoy', 'auto'")
        if n_jobs == 0:
            raise ConfigError("TSNEEmbedding.n_jobs=0 must be a thread count (1, 2, ...) or -1 for all cores")
        self.max_points = max_points
        self.n_prior = n_prior
        self.seed = seed
        # What the drawing process maps with, built once here and carried to it unchanged.
        self.settings = TSNESteps(
            perplexity=perplexity, early_exaggeration_iter=early_exaggeration_iter, n_iter=n_iter,
            warm_early_exaggeration_iter=warm_early_exaggeration_iter, warm_n_iter=warm_n_iter,
            negative_gradient_method=negative_gradient_method, affinity_method=affinity_method, n_jobs=n_jobs,
            seed=seed, prior_n_iter=prior_n_iter, knn_k=self.knn_k, figsize=self.figsize, axes_rect=self.axes_rect)
        # The last finished map. One dict, replaced whole when a drawing job hands a new one back, so a checkpoint
        # taken while a map is being computed holds the previous one intact.
        self._map: Optional[dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(max_points=self.max_points, perplexity=self.settings.perplexity)

    @override
    def state_dict(self) -> dict[str, Any]:
        # embedding (N, 2) float64, index (N,) int64: the dataset indices of its rows; embedding_epoch: the epoch
        # of the means it maps; init_epoch: the epoch whose map initialised it (None: PCA).
        state = self._map or dict.fromkeys(self.map_keys)
        return {**super().state_dict(), **state}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self._map = None if state_dict["embedding"] is None else {key: state_dict[key] for key in self.map_keys}

    def prior_z(self, latent_dim: int) -> Tensor:
        """The prior draws placed into the map, (n_prior, Z): a generator of their own, the same z every epoch."""
        return prior_draws(self.n_prior, latent_dim, self.seed)

    @override
    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Job]:
        reason = unusable(latents, min_points=2)
        if reason is None and latents.mu.shape[1] < 2:
            reason = "a 1-D latent space has nothing for t-SNE to arrange; LatentScatter draws its means directly"
        if reason is not None:
            notice(f"TSNEEmbedding: no t-SNE for epoch {epoch}: {reason}")
            return None
        latents = latents.select(torch.arange(min(len(latents), self.max_points)))  # sorted by index: the same rows
        perplexity = self.settings.perplexity
        if 3 * perplexity >= len(latents):
            notice(f"TSNEEmbedding: {len(latents)} validation means at epoch {epoch} are too few for "
                   f"TSNEEmbedding.perplexity={perplexity} (t-SNE needs more than 3 x perplexity); "
                   f"t-SNE skipped. Lower the perplexity below {len(latents) / 3:g} or follow more inputs "
                   "(model.latent_points, limit_val_batches)")
            return None
        z = self.prior_z(latents.mu.shape[1])
        decoded = decode_images(pl_module, z, tuple(latents.image.shape[1:]))  # (P, C, H, W)
        return self.job(
            mu=latents.mu.double().numpy(), index=latents.index.numpy(), labels=latents.label.numpy(),
            names=label_names(trainer), start=None, init_epoch=None, steps=self.settings, z=z.double().numpy(),
            prior_images=pixels(decoded),
            path=str(self.sink.png_path("tsne", epoch)), epoch=epoch)

    @override
    def commit(self, job: Job, epoch: int) -> Job:
        """The map starts from the last one, chosen as it goes to be drawn: a skipped epoch's job, kept since it was
        prepared and drawn at the end of fit, starts from the maps made meanwhile."""
        start, init_epoch = self._start(torch.from_numpy(job.kwargs["index"]), epoch,
                                        Path(job.kwargs["path"]).parent)
        return replace(job, kwargs={**job.kwargs, "start": start, "init_epoch": init_epoch})

    @override
    def apply(self, state: dict[str, Any]) -> None:
        """Keep a finished map (what the job hands back) as the start of the next one."""
        self._map = {"embedding": torch.from_numpy(state["embedding"]), "index": torch.from_numpy(state["index"]),
                     "embedding_epoch": state["embedding_epoch"], "init_epoch": state["init_epoch"]}

    def _newest_map(self, folder: Path, epoch: int) -> Optional[dict[str, Any]]:
        """The newest map the drawing process wrote beside its PNGs before `epoch`, if newer than the kept one: the
        checkpoint of a resumed run may have been written while that map was being computed."""
        kept = -1 if self._map is None else self._map["embedding_epoch"]
        for path in sorted(folder.glob("map_*.npz"), reverse=True):
            found = int(path.stem.split("_")[1])
            if found >= epoch:
                continue
            if found <= kept:
                return None
            try:
                with np.load(path, allow_pickle=False) as saved:  # plain arrays: a file never runs code
                    init = int(saved["init_epoch"])
                    return {"embedding": torch.from_numpy(saved["embedding"]),
                            "index": torch.from_numpy(saved["index"]), "embedding_epoch": found,
                            "init_epoch": None if init < 0 else init}
            except (OSError, KeyError, ValueError):
                return None  # unreadable: keep the checkpoint's map
        return None

    def _start(self, index: Tensor, epoch: int, folder: Path) -> tuple[Optional[np.ndarray], Optional[int]]:
        """The last map (N, 2) and its epoch when it holds the same inputs `index`, else (None, None): PCA."""
        previous = self._newest_map(folder, epoch) or self._map
        if previous is None:
            return None, None
        if not torch.equal(previous["index"], index):
            notice(f"TSNEEmbedding: the inputs mapped at epoch {epoch} are not those of the map of epoch "
                   f"{previous['embedding_epoch']} ({len(index)} vs {len(previous['index'])} points); the map "
                   "starts again from a PCA")
            return None, None
        return previous["embedding"].numpy(), previous["embedding_epoch"]
