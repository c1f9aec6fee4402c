"""What each latent dimension does: one dimension of a fixed input's mean moved across N(0, 1), decoded."""

from typing import Optional

import lightning as L
import torch
from typing_extensions import override

from lvae.drawing import Job
from lvae.errors import ConfigError, at_least
from lvae.fixed_inputs import FixedInputs, FixedInputsPicture
from lvae.images import decode_images, pixels
from lvae.labels import label_names, label_texts
from lvae.latents import Latents
from lvae.metrics import active_dims, kl_per_dim


class LatentTraversal(FixedInputsPicture):
    """Latent traversals: for a few fixed validation inputs, each latent dimension of the input's mean is set to
    `steps` values from -span to +span, the other dimensions held, and decoded. One row per dimension, ordered by
    its KL(q(z_d|x) || N(0, 1)) averaged over the epoch's validation latents (`lvae.metrics.kl_per_dim`), most
    informative first; inactive dimensions (whose means vary across inputs by less than 0.01,
    `lvae.metrics.active_dims`) are left out and named. A Z=20 run shows which few dimensions the model uses and what
    each one changes.

    The inputs are chosen once by dataset index, of different labels where there are labels (`FixedInputs`), and
    kept in the checkpoint. The module needs only ``decode(z)``; the means come from the epoch's latents.

    Logged each drawn epoch: ``traversals/kl_<d>``, the KL of each dimension in nats, the numbers the rows are ordered
    by. Picture: ``traversals``.

    Args:
        n_inputs: validation inputs shown side by side.
        steps: values each dimension takes.
        span: the values run evenly from -span to +span, in N(0, 1) units (2.5 spans 98.8% of the prior).
        max_dims: most rows; active dimensions past it are left out and named.
        seed: seed of the choice of inputs.
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
        skip_when_busy: skip an epoch whose picture would wait for an earlier one's (the first and the last epoch
            are always drawn); False draws every epoch, training waiting.
    """

    names = ("traversals",)
    figure = "lvae.figures.traversal:draw"
    last_drawn_here = True  # matplotlib and PIL only: see PictureCallback.last_drawn_here

    def __init__(self, n_inputs: int = 3, steps: int = 9, span: float = 2.5, max_dims: int = 10, seed: int = 0,
                 every_n_epochs: int = 1, background: bool = True, skip_when_busy: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, background=background, skip_when_busy=skip_when_busy)
        at_least("LatentTraversal.n_inputs", n_inputs, 1, "inputs side by side")
        at_least("LatentTraversal.steps", steps, 3, "values per dimension; 9 is usual")
        at_least("LatentTraversal.max_dims", max_dims, 1, "most rows")
        if not span > 0:
            raise ConfigError(f"LatentTraversal.span={span} must be > 0 (2.5: from -2.5 to +2.5)")
        self.n_inputs = n_inputs
        self.steps = steps
        self.span = float(span)
        self.max_dims = max_dims
        self.seed = seed
        self.inputs = FixedInputs("LatentTraversal", n_inputs, seed)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(n_inputs=self.n_inputs, seed=self.seed)  # what chooses its inputs

    @override
    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Job]:
        if not self.usable(latents, epoch, "traversals", min_points=2):
            return None
        kl = kl_per_dim(latents.mu, latents.logvar)  # (Z,)
        self.log_with_picture({f"traversals/kl_{d}": float(v) for d, v in enumerate(kl)})
        active = active_dims(latents.mu)  # (Z,)
        order = torch.argsort(kl, descending=True, stable=True)  # (Z,) most KL first
        ranked = order[active[order]]
        dims, beyond = ranked[:self.max_dims], ranked[self.max_dims:]  # (D,), the rows
        chosen = latents.select(self.inputs.rows(latents))
        values = torch.linspace(-self.span, self.span, self.steps)  # (S,)
        n, n_dims, z_dim = len(chosen), len(dims), kl.numel()
        z = chosen.mu[:, None, None, :].repeat(1, n_dims, self.steps, 1)  # (n, D, S, Z)
        z[:, torch.arange(n_dims)[:, None], torch.arange(self.steps)[None, :], dims[:, None]] = values
        shape = tuple(chosen.image.shape[1:])
        decoded = decode_images(pl_module, torch.cat([chosen.mu, z.reshape(-1, z_dim)]), shape)  # one decode
        pictures = pixels(decoded)  # (n + n*D*S, H, W[, 3])
        return self.job(
            path=str(self.sink.png_path("traversals", epoch)), epoch=epoch, inputs=pixels(chosen.image),
            means=pictures[:n], labels=label_texts(chosen.label, label_names(trainer), latents.labelled),
            index=chosen.index.tolist(),
            steps=pictures[n:].reshape(n, n_dims, self.steps, *pictures.shape[1:]), values=values.numpy(),
            dims=dims.tolist(), kl=kl.numpy(), positions=chosen.mu[:, dims].numpy(),
            inactive=sorted(order[~active[order]].tolist()), beyond=beyond.tolist())
