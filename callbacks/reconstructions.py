"""Fixed validation inputs beside their reconstructions, from the mean and from one posterior draw."""

from collections import Counter
from typing import Any, Optional

import lightning as L
import torch
from torch import Tensor
from typing_extensions import override

from lvae.drawing import Job
from lvae.errors import at_least
from lvae.fixed_inputs import FixedInputs, FixedInputsPicture
from lvae.images import decode_images, pixels
from lvae.labels import label_names, label_texts
from lvae.latent_maths import prior_draws, reparameterise
from lvae.latents import Latents


class Reconstructions(FixedInputsPicture):
    """The same validation inputs every epoch, each beside its reconstruction from the mean of q(z|x) and from one
    posterior draw z = mu + sigma * eps, with its reconstruction NLL -log p(x|z) in nats.

    The inputs are chosen once by dataset index, evenly over the labels (`FixedInputs`), and kept in the checkpoint.
    The module needs only ``decode(z)``. For lvae's `VAE` the draw is the one its validation scores
    (``eval_noise``, keyed by dataset index), and the NLL shown is that draw's, as ``val/recon`` averages it. For a
    module lvae did not write the draw's eps is seeded and kept in the checkpoint, and the picture says that there is
    no NLL: only lvae's likelihood gives one.

    Picture: ``reconstructions``.

    Args:
        n_inputs: inputs shown (20: two of each of 10 labels).
        nrow: inputs per row of the picture.
        seed: seed of the choice of inputs (and of the draw, for a module lvae did not write).
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
        skip_when_busy: skip an epoch whose picture would wait for an earlier one's (the first and the last epoch
            are always drawn); False draws every epoch, training waiting.
    """

    names = ("reconstructions",)
    figure = "lvae.figures.reconstructions:draw"
    last_drawn_here = True  # matplotlib and PIL only: see PictureCallback.last_drawn_here

    def __init__(self, n_inputs: int = 20, nrow: int = 5, seed: int = 0, every_n_epochs: int = 1,
                 background: bool = True, skip_when_busy: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, background=background, skip_when_busy=skip_when_busy)
        at_least("Reconstructions.n_inputs", n_inputs, 1, "20: two of each of 10 labels")
        at_least("Reconstructions.nrow", nrow, 1, "inputs per row of the picture")
        self.n_inputs = n_inputs
        self.nrow = nrow
        self.seed = seed
        self.inputs = FixedInputs("Reconstructions", n_inputs, seed)
        self.eps: Optional[Tensor] = None  # (n, Z): the draw for a module without `eval_noise`

    @property
    def state_key(self) -> str:
        return self._generate_state_key(n_inputs=self.n_inputs, seed=self.seed)  # what chooses its inputs

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "eps": self.eps}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.eps = state_dict["eps"]

    def _noise(self, pl_module: "L.LightningModule", chosen: Latents) -> Tensor:
        """eps (n, Z) of the posterior draw shown."""
        scored = getattr(pl_module, "eval_noise", None)
        if callable(scored):  # lvae's VAE: the draw its validation scored, so the NLL shown is this draw's
            return scored(chosen.index.to(pl_module.device), "val")[0].float().cpu()
        wanted = tuple(chosen.mu.shape)
        if self.eps is None or tuple(self.eps.shape) != wanted:
            self.eps = prior_draws(*wanted, self.seed)
        return self.eps

    @override
    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Job]:
        if not self.usable(latents, epoch, "reconstructions", min_points=1, finite=("mu", "recon")):
            return None
        rows = self.inputs.rows(latents)
        # Labels come in turns (FixedInputs): shown one turn after the other, each in label order.
        turns: Counter = Counter()
        keys = []  # (turn, label) of each input
        for label in latents.label[rows].tolist():
            keys.append((turns[label], label))
            turns[label] += 1
        chosen = latents.select(rows[sorted(range(len(rows)), key=keys.__getitem__)])
        eps = self._noise(pl_module, chosen)
        z = torch.cat([chosen.mu, reparameterise(chosen.mu, chosen.logvar, eps)])  # (2n, Z): means, draws
        decoded = pixels(decode_images(pl_module, z, tuple(chosen.image.shape[1:])))  # (2n, H, W[, 3])
        n = len(chosen)
        if chosen.recon is None:
            note = "No NLL: the module exposes no likelihood to lvae (lvae's VAE does)."
        elif callable(getattr(pl_module, "eval_noise", None)):
            note = "NLL: -log p(x|z) of the draw shown, nats (the draw val/recon scores)."
        else:
            note = "NLL: -log p(x|z) of the module's own validation draw, nats."
        return self.job(
            path=str(self.sink.png_path("reconstructions", epoch)), epoch=epoch, inputs=pixels(chosen.image),
            means=decoded[:n], draws=decoded[n:],
            labels=label_texts(chosen.label, label_names(trainer), latents.labelled),
            index=chosen.index.tolist(), nll=None if chosen.recon is None else chosen.recon.tolist(), note=note,
            nrow=self.nrow)
