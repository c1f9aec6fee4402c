"""A t-SNE map of the latent means that evolves with training: each epoch's map starts from the last one."""

import time
from typing import Any, Callable, Literal, Optional

import lightning as L
import numpy as np
import openTSNE
import torch
from jsonargparse.typing import NonNegativeInt, PositiveFloat, PositiveInt
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.offsetbox import AnnotationBbox, OffsetImage
from openTSNE.affinity import PerplexityBasedNN
from openTSNE.initialization import rescale
from torch import Tensor
from typing_extensions import override

from callbacks.latent_scatter import class_colour
from lvae.errors import ConfigError
from lvae.latents import Latents, unusable
from lvae.metrics import knn_label_agreement
from lvae.pictures import PictureCallback

EARLY_EXAGGERATION = 12  # openTSNE's default factor for the early phase


class TSNEEmbedding(PictureCallback):
    """openTSNE on the validation means of a fixed subset of inputs, with the current prior samples placed in the
    same map.

    The first epoch starts from a PCA of the means (openTSNE's ``initialization="pca"``). Every later epoch
    starts from the previous epoch's map, matched by dataset index and rescaled as openTSNE expects, with new
    affinities for the new means and fewer iterations: the map evolves instead of being redrawn from scratch,
    and costs a fraction of a cold fit. The last map is kept in the checkpoint, so a resumed run continues it.
    ``n_prior`` draws z ~ N(0, I) (seeded: the same z every epoch) are decoded and placed into the map with
    ``TSNEEmbedding.transform`` (prior draws live in the same space as the means), drawn as their decoded images.

    Picture: ``tsne``; scalars: ``tsne/knn_agreement`` (share of each point's 10 nearest map neighbours that
    share its label) and ``tsne/seconds`` (the t-SNE work of the epoch).

    Args:
        max_points: at most this many means are mapped: the first by dataset index of the collected subset, the
            same inputs every epoch. Barnes-Hut t-SNE takes seconds per thousand points on a CPU.
        perplexity: t-SNE perplexity, about the number of neighbours each point keeps close; needs more than
            3 x perplexity points.
        early_exaggeration_iter: iterations of the early-exaggeration phase of the first (cold) map.
        n_iter: iterations of the normal phase of the first map.
        warm_early_exaggeration_iter: iterations of the early-exaggeration phase of later (warm-started) maps.
        warm_n_iter: iterations of the normal phase of later maps.
        negative_gradient_method: ``"bh"`` (Barnes-Hut; much faster than FFT below ~10k points on a CPU) or
            ``"fft"`` (interpolation, for larger maps).
        n_jobs: threads openTSNE uses. It runs beside training, so 1 leaves the training loop its cores.
        n_prior: prior draws placed into the map (0: none).
        seed: seed of the prior draws and of openTSNE (the neighbour search and the PCA jitter).
        every_n_epochs: draw every n-th validation epoch.
        background: draw on a background thread (False draws in the training loop, e.g. for debugging).
    """

    names = ("tsne",)
    figsize = (8.0, 7.2)  # inches; the PNG is 800x720
    knn_k = 10  # neighbours of the quality figure

    def __init__(self, max_points: PositiveInt = 2000, perplexity: PositiveFloat = 30.0,
                 early_exaggeration_iter: NonNegativeInt = 250, n_iter: PositiveInt = 500,
                 warm_early_exaggeration_iter: NonNegativeInt = 0, warm_n_iter: PositiveInt = 100,
                 negative_gradient_method: Literal["bh", "fft"] = "bh", n_jobs: int = 1,
                 n_prior: NonNegativeInt = 64, seed: int = 0, every_n_epochs: PositiveInt = 1,
                 background: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, background=background)
        if max_points < 2:
            raise ConfigError(f"TSNEEmbedding.max_points={max_points} must be >= 2 (2000 maps in a few seconds)")
        if perplexity <= 0:
            raise ConfigError(f"TSNEEmbedding.perplexity={perplexity} must be > 0 (30 is the usual value)")
        if 3 * perplexity >= max_points:
            raise ConfigError(f"TSNEEmbedding.perplexity={perplexity} is too large for TSNEEmbedding.max_points="
                              f"{max_points}: t-SNE needs more than 3 x perplexity points; lower the perplexity "
                              f"below {max_points / 3:g} or raise max_points")
        for key, value, least in (("early_exaggeration_iter", early_exaggeration_iter, 0), ("n_iter", n_iter, 1),
                                  ("warm_early_exaggeration_iter", warm_early_exaggeration_iter, 0),
                                  ("warm_n_iter", warm_n_iter, 1), ("n_prior", n_prior, 0)):
            if value < least:
                raise ConfigError(f"TSNEEmbedding.{key}={value} must be >= {least}")
        if negative_gradient_method not in ("bh", "fft"):
            raise ConfigError(f"TSNEEmbedding.negative_gradient_method={negative_gradient_method!r} is not one of "
                              "'bh' (Barnes-Hut, fast below ~10k points), 'fft'")
        if n_jobs == 0:
            raise ConfigError("TSNEEmbedding.n_jobs=0 must be a thread count (1, 2, ...) or -1 for all cores")
        self.max_points = max_points
        self.perplexity = perplexity
        self.early_exaggeration_iter = early_exaggeration_iter
        self.n_iter = n_iter
        self.warm_early_exaggeration_iter = warm_early_exaggeration_iter
        self.warm_n_iter = warm_n_iter
        self.negative_gradient_method = negative_gradient_method
        self.n_jobs = n_jobs
        self.n_prior = n_prior
        self.seed = seed
        # The last finished map. One dict, replaced whole by the drawing thread, so a checkpoint taken while a
        # map is being computed holds the previous one intact.
        self._map: Optional[dict[str, Any]] = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(max_points=self.max_points, perplexity=self.perplexity)

    @override
    def state_dict(self) -> dict[str, Any]:
        # embedding (N, 2) float64, index (N,) int64: the dataset indices of its rows; embedding_epoch: the epoch
        # of the means it maps; init_epoch: the epoch whose map initialised it (None: PCA).
        state = self._map or {"embedding": None, "index": None, "embedding_epoch": None, "init_epoch": None}
        return dict(state)

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._map = None if state_dict["embedding"] is None else dict(state_dict)

    def prior_z(self, latent_dim: int) -> Tensor:
        """The prior draws placed into the map, (n_prior, Z): a generator of their own, the same z every epoch."""
        generator = torch.Generator().manual_seed(self.seed)
        return torch.randn(self.n_prior, latent_dim, generator=generator)

    @override
    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Callable[[], None]]:
        reason = unusable(latents, min_points=2)
        if reason is not None:
            rank_zero_warn(f"TSNEEmbedding: no t-SNE for epoch {epoch}: {reason}")
            return None
        latents = latents.select(torch.arange(min(len(latents), self.max_points)))  # sorted by index: the same rows
        if 3 * self.perplexity >= len(latents):
            rank_zero_warn(f"TSNEEmbedding: {len(latents)} validation means at epoch {epoch} are too few for "
                           f"TSNEEmbedding.perplexity={self.perplexity} (t-SNE needs more than 3 x perplexity); "
                           f"t-SNE skipped. Lower the perplexity below {len(latents) / 3:g} or follow more inputs "
                           "(model.latent_points, limit_val_batches)")
            return None
        z = self.prior_z(latents.mu.shape[1])
        with torch.inference_mode():
            decoded = pl_module.decode(z.to(device=pl_module.device, dtype=pl_module.dtype))  # (P, 1, 28, 28)
        prior_images = decoded.float().cpu()[:, 0]  # (P, 28, 28)

        def draw() -> None:
            start = time.perf_counter()
            embedding, init_epoch = self.embed(latents.mu, latents.index, epoch)
            prior = self.place(embedding, z)
            seconds = time.perf_counter() - start
            self.keep(embedding, latents.index, epoch, init_epoch)  # after `place`, which centres the map in place
            points = torch.from_numpy(np.asarray(embedding, dtype=np.float64))
            agreement = knn_label_agreement(points, latents.label, k=min(self.knn_k, len(points) - 1))
            self._draw(points.numpy(), latents, prior, prior_images.numpy(), agreement, init_epoch, epoch)
            self.sink.log_scalars({"tsne/knn_agreement": agreement, "tsne/seconds": seconds}, epoch)

        return draw

    def embed(self, mu: Tensor, index: Tensor, epoch: int) -> tuple[openTSNE.TSNEEmbedding, Optional[int]]:
        """The t-SNE step of one epoch: a 2-D map of `mu` (N, Z) whose rows are the inputs `index` (N,).

        Starts from the last kept map when it holds the same inputs, else from a PCA. Returns the map and the
        epoch of the map it started from (None: PCA); `keep` makes it the start of the next epoch's map.
        """
        x = np.ascontiguousarray(mu.double().numpy())  # (N, Z)
        previous = self._map
        warm = previous is not None and torch.equal(previous["index"], index)
        if previous is not None and not warm:
            rank_zero_warn(f"TSNEEmbedding: the inputs mapped at epoch {epoch} are not those of the map of epoch "
                           f"{previous['embedding_epoch']} ({len(index)} vs {len(previous['index'])} points); the map "
                           "starts again from a PCA")
        # Affinities come from this epoch's means; only the starting positions come from the previous map.
        affinities = PerplexityBasedNN(x, perplexity=self.perplexity, n_jobs=self.n_jobs, random_state=self.seed)
        tsne = openTSNE.TSNE(perplexity=self.perplexity, negative_gradient_method=self.negative_gradient_method,
                             n_jobs=self.n_jobs, random_state=self.seed)
        if warm:
            # openTSNE expects a starting map of small spread (its own initialisations use std 1e-4); the
            # previous map's layout is kept, only its scale shrinks.
            start = rescale(previous["embedding"].numpy(), target_std=1e-4)
            exaggerated, normal = self.warm_early_exaggeration_iter, self.warm_n_iter
        else:
            start, exaggerated, normal = "pca", self.early_exaggeration_iter, self.n_iter
        embedding = tsne.prepare_initial(x, affinities=affinities, initialization=start)
        if exaggerated:
            embedding.optimize(n_iter=exaggerated, exaggeration=EARLY_EXAGGERATION, inplace=True)
        embedding.optimize(n_iter=normal, inplace=True)
        return embedding, previous["embedding_epoch"] if warm else None

    def place(self, embedding: openTSNE.TSNEEmbedding, z: Tensor) -> np.ndarray:
        """Positions (P, 2) of the prior draws `z` (P, Z) in `embedding`, which stays as it is (but centred)."""
        if len(z) == 0:
            return np.zeros((0, 2))
        return np.asarray(embedding.transform(np.ascontiguousarray(z.double().numpy())))

    def keep(self, embedding: openTSNE.TSNEEmbedding, index: Tensor, epoch: int, init_epoch: Optional[int]) -> None:
        """Make `embedding` (the map of `epoch`, rows `index`, started from the map of `init_epoch`) the start of
        the next epoch's map and the state a checkpoint saves."""
        self._map = {"embedding": torch.from_numpy(np.array(embedding, dtype=np.float64)), "index": index.clone(),
                     "embedding_epoch": epoch, "init_epoch": init_epoch}

    def _draw(self, points: np.ndarray, latents: Latents, prior: np.ndarray, prior_images: np.ndarray,
              agreement: float, init_epoch: Optional[int], epoch: int) -> None:
        labels = latents.label.numpy()
        fig = Figure(figsize=self.figsize, layout="constrained")
        ax = fig.add_subplot()
        size = float(np.clip(3000.0 / len(points), 3.0, 30.0))  # fewer points, larger dots
        ax.scatter(points[:, 0], points[:, 1], s=size, c=[class_colour(c) for c in labels], alpha=0.8,
                   linewidths=0, rasterized=True)
        for (x, y), image in zip(prior, prior_images):
            image = OffsetImage(image, cmap="gray", norm=Normalize(0.0, 1.0), zoom=0.6)
            box = AnnotationBbox(image, (x, y), frameon=True, pad=0.05,
                                 bboxprops={"edgecolor": "black", "linewidth": 1.0})
            box.set_in_layout(False)  # the layout is made for the axes, the legend and the title
            ax.add_artist(box)
        if len(prior):
            # Annotation boxes do not widen the axes: make room for prior draws placed beyond the data.
            every = np.concatenate([points, prior])
            low, high = every.min(axis=0), every.max(axis=0)
            pad = 0.06 * np.maximum(high - low, 1e-6)
            ax.set_xlim(low[0] - pad[0], high[0] + pad[0])
            ax.set_ylim(low[1] - pad[1], high[1] + pad[1])
        handles = [Line2D([], [], marker="o", linestyle="", color=class_colour(c), label=str(int(c)))
                   for c in np.unique(labels)]
        if len(prior):
            handles.append(Line2D([], [], marker="s", linestyle="", markerfacecolor="white", markeredgecolor="black",
                                  markersize=9, label="prior z,\ndecoded"))
        ax.legend(handles=handles, title="label", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
        ax.set_xticks([])
        ax.set_yticks([])
        init = "PCA" if init_epoch is None else f"the map of epoch {init_epoch}"
        title = f"t-SNE of {len(points)} latent means, epoch {epoch} (perplexity {self.perplexity:g})"
        detail = f"started from {init}; {self.knn_k}-NN label agreement {agreement:.3f}"
        if len(prior):
            detail += f"\nframed images: {len(prior)} prior draws z ~ N(0, I), decoded and placed in the map"
        ax.set_title(f"{title}\n{detail}", fontsize=10)
        self.sink.log_figure("tsne", fig, epoch, caption=f"{title}; {detail}".replace("\n", "; "))
