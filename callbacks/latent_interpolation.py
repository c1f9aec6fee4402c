"""The straight line between two inputs' means, decoded: what the latent space holds between them."""

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


class LatentInterpolation(FixedInputsPicture):
    """Interpolations: fixed pairs of validation inputs with different labels (where there are labels), each pair's
    means joined by a straight line, (1 - t) mu_a + t mu_b for `steps` values of t from 0 to 1, decoded, with the two
    inputs at the ends. The ends, t = 0 and t = 1, are the inputs' reconstructions from their means.

    The pairs are chosen once by dataset index (`FixedInputs`) and kept in the checkpoint. The module needs only
    ``decode(z)``; the means come from the epoch's latents.

    Picture: ``interpolations``.

    Args:
        n_pairs: pairs of inputs, one row each.
        steps: decoded points per pair, the two means included.
        seed: seed of the choice of inputs.
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
        skip_when_busy: skip an epoch whose picture would wait for an earlier one's (the first and the last epoch
            are always drawn); False draws every epoch, training waiting.
    """

    names = ("interpolations",)
    figure = "lvae.figures.interpolation:draw"
    last_drawn_here = True  # matplotlib and PIL only: see PictureCallback.last_drawn_here

    def __init__(self, n_pairs: int = 5, steps: int = 10, seed: int = 0, every_n_epochs: int = 1,
                 background: bool = True, skip_when_busy: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, background=background, skip_when_busy=skip_when_busy)
        at_least("LatentInterpolation.n_pairs", n_pairs, 1, "pairs of inputs, one row each")
        if steps < 2:
            raise ConfigError(f"LatentInterpolation.steps={steps} must be >= 2 (decoded points per pair, the two "
                              "means included; 10 is usual)")
        self.n_pairs = n_pairs
        self.steps = steps
        self.seed = seed
        self.inputs = FixedInputs("LatentInterpolation", 2 * n_pairs, seed)  # pairs are consecutive inputs

    @property
    def state_key(self) -> str:
        return self._generate_state_key(n_pairs=self.n_pairs, seed=self.seed)  # what chooses its pairs

    @override
    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Job]:
        if not self.usable(latents, epoch, "interpolations", min_points=2):
            return None
        rows = self.inputs.rows(latents)
        chosen = latents.select(rows[:len(rows) // 2 * 2])
        a, b = chosen.mu[0::2], chosen.mu[1::2]  # (P, Z) each
        t = torch.linspace(0.0, 1.0, self.steps)[None, :, None]  # (1, S, 1)
        z = (1 - t) * a[:, None] + t * b[:, None]  # (P, S, Z); exactly mu_a at t=0 and mu_b at t=1
        pairs, shape = len(a), tuple(chosen.image.shape[1:])
        lines = pixels(decode_images(pl_module, z.reshape(-1, z.shape[-1]), shape))  # (P*S, H, W[, 3])
        labels, index = label_texts(chosen.label, label_names(trainer), latents.labelled), chosen.index.tolist()
        return self.job(
            path=str(self.sink.png_path("interpolations", epoch)), epoch=epoch,
            ends=pixels(chosen.image).reshape(pairs, 2, *lines.shape[1:]),
            lines=lines.reshape(pairs, self.steps, *lines.shape[1:]), t=t.flatten().numpy(),
            labels=list(zip(labels[0::2], labels[1::2])), index=list(zip(index[0::2], index[1::2])))
