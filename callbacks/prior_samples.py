"""What the decoder makes of the prior: the same z ~ N(0, I) decoded every epoch, and for Z=2 the whole manifold."""

from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor
from torchvision.utils import make_grid
from typing_extensions import override

from lvae.drawing import Job
from lvae.errors import ConfigError, at_least
from lvae.images import decode_images, grid_picture, pixels
from lvae.latent_maths import prior_draws
from lvae.latents import Latents
from lvae.picture_callback import PictureCallback
from lvae.say import notice


class PriorSamples(PictureCallback):
    """Decodes a fixed set of prior draws z ~ N(0, I) each epoch, so the grids of successive epochs differ only
    by what the decoder learned. The draws are seeded, made once and kept in the checkpoint: a resumed run shows
    the same z. With a 2-D latent space it also decodes an evenly spaced grid of z (Kingma and Welling's manifold
    picture) and plots the drawn z at their positions with their decoded images, among the validation means. Both
    span the same region, where the validation means lie and where the prior does (2 standard deviations each
    way, and every draw); it only widens from epoch to epoch, as the scatter's limits do, and is kept in the
    checkpoint.

    Pictures: ``prior_samples`` (every Z), ``manifold`` and ``prior_positions`` (Z=2 only); scalars (Z=2):
    ``manifold/outside`` and ``prior_positions/outside``, the validation means outside each picture (none: the
    region widens to take them in; the titles say so too).

    Args:
        n_samples: how many prior draws to decode.
        nrow: images per row of the sample grid.
        seed: seed of the draws (a generator of their own: the training RNG is untouched).
        manifold_steps: z values per axis of the Z=2 manifold, evenly spaced.
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
        skip_when_busy: skip an epoch whose picture would wait for an earlier one's (the first and the last epoch
            are always drawn); False draws every epoch, training waiting.
    """

    names = ("prior_samples", "manifold", "prior_positions")
    figure = "lvae.figures.prior:draw"
    last_drawn_here = True  # matplotlib and PIL only: see PictureCallback.last_drawn_here
    # inches; the sample grid at 2 PNG pixels an image pixel (8x8 MNIST draws: 484 px square)
    figsizes = {"prior_samples": (5.6, 6.0), "manifold": (6.4, 6.8), "prior_positions": (6.4, 6.4)}
    prior_reach = 2.0  # the manifold spans at least N(0, 1)'s -2 to 2 on each axis

    def __init__(self, n_samples: int = 64, nrow: int = 8, seed: int = 0, manifold_steps: int = 20,
                 every_n_epochs: int = 1, background: bool = True, skip_when_busy: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, background=background, skip_when_busy=skip_when_busy)
        at_least("PriorSamples.n_samples", n_samples, 1, "64 gives an 8x8 grid")
        at_least("PriorSamples.nrow", nrow, 1, "images per row of the grid")
        if manifold_steps < 2:
            raise ConfigError(f"PriorSamples.manifold_steps={manifold_steps} must be >= 2 (z values per axis; "
                              "20 is the classic picture)")
        self.n_samples = n_samples
        self.nrow = nrow
        self.seed = seed
        self.manifold_steps = manifold_steps
        self.z: Optional[Tensor] = None  # (n_samples, Z) on the CPU, the same every epoch
        self._latent_dim: Optional[int] = None
        self._extent: Optional[Tensor] = None  # (4,) float64, Z=2: z_0 from, to, z_1 from, to of the manifold

    def _draw_prior(self) -> Tensor:
        return prior_draws(self.n_samples, self._latent_dim, self.seed)  # (n, Z)

    def _check_prior(self) -> None:
        """Draw z when there is none; redraw, with a warning, a loaded z that does not fit this model."""
        if self._latent_dim is None:
            return  # Z is read from the first epoch's means
        wanted = (self.n_samples, self._latent_dim)
        if self.z is None:
            self.z = self._draw_prior()
        elif tuple(self.z.shape) != wanted:
            notice(f"PriorSamples: the checkpoint's prior draws have shape {tuple(self.z.shape)}, this run "
                   f"needs (n_samples, latent_dim) = {wanted}; new draws are made (seed {self.seed}), so the "
                   "sample grids before and after this point are not comparable")
            self.z = self._draw_prior()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(n_samples=self.n_samples, seed=self.seed)  # what makes its draws z

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "z": self.z, "seed": self.seed, "extent": self._extent}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict["seed"] != self.seed:
            notice(f"PriorSamples: the checkpoint's prior draws were made with seed {state_dict['seed']}, "
                   f"this run asks for PriorSamples.seed={self.seed}; new draws are made")
            return
        self.z = state_dict["z"]
        self._check_prior()
        self._extent = state_dict.get("extent")  # absent from checkpoints made before the manifold followed the means

    def _manifold_extent(self, mu: Optional[Tensor]) -> Tensor:
        """The manifold's region, (4,): the last one widened to take in the means mu (N, 2), the prior draws and
        N(0, 1)'s +-prior_reach on each axis."""
        every = torch.cat([self.z.double(), torch.full((1, 2), -self.prior_reach, dtype=torch.float64),
                           torch.full((1, 2), self.prior_reach, dtype=torch.float64)])
        if mu is not None:
            every = torch.cat([every, mu.double()])
        low, high = every.min(dim=0).values, every.max(dim=0).values  # (2,) each
        if self._extent is not None:
            low = torch.minimum(low, self._extent[[0, 2]])
            high = torch.maximum(high, self._extent[[1, 3]])
        return torch.stack([low[0], high[0], low[1], high[1]])

    def _manifold_z(self) -> Tensor:
        """z on a steps x steps grid spanning the manifold's region evenly, row by row from the top (the largest
        z_1) down: (S*S, 2)."""
        s = self.manifold_steps
        x = torch.linspace(float(self._extent[0]), float(self._extent[1]), s)  # (S,)
        y = torch.linspace(float(self._extent[3]), float(self._extent[2]), s)  # (S,), from the top
        return torch.stack([x.repeat(s), y.repeat_interleave(s)], dim=1)  # (S*S, 2)

    @override
    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Job]:
        if latents is not None:
            self._latent_dim = int(latents.mu.shape[1])
        elif self._latent_dim is None and self.z is not None:
            self._latent_dim = int(self.z.shape[1])  # nothing collected this epoch: the checkpoint's draws
        if self._latent_dim is None:
            notice(f"PriorSamples: no prior samples for epoch {epoch}: no validation latents were collected, "
                   "so the size of z is unknown")
            return None
        self._check_prior()
        z = self.z
        shape = None if latents is None else tuple(latents.image.shape[1:])
        samples = decode_images(pl_module, z, shape)  # (n, C, H, W)
        channels = samples.shape[1]
        # The grids are put together here (cheap tensor work); the drawing process only draws them.
        grid = make_grid(samples, nrow=self.nrow, padding=2, pad_value=0.5)  # grey lines between cells
        args = dict(paths={n: str(self.sink.png_path(n, epoch)) for n in self.names}, figsizes=self.figsizes,
                    epoch=epoch, seed=self.seed, n=len(samples), grid=grid_picture(grid, channels))
        if z.shape[1] == 2:
            # The validation means show where the data sits relative to the prior draws.
            self._extent = self._manifold_extent(None if latents is None else latents.mu)
            manifold = make_grid(decode_images(pl_module, self._manifold_z(), shape), nrow=self.manifold_steps,
                                 padding=0)
            args.update(manifold=grid_picture(manifold, channels), steps=self.manifold_steps,
                        extent=tuple(self._extent.tolist()), z=z.numpy(),
                        samples=pixels(samples),
                        mu=None if latents is None else latents.mu.double().numpy())
        return self.job(**args)


