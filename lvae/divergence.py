"""When a run has diverged: the one rule that the training loop, the checkpoints and the pictures share, the
message the user reads, and the guard that applies the rule to a fit (`DivergenceGuard`).

A run has diverged when its loss is NaN or infinite, or far above what an untrained model scores, or when the
means or log-variances of q(z|x) reach values no healthy posterior has, even while the loss looks fine.
Each limit is one-sided: a loss may be negative (a Gaussian likelihood) and the log-variances may head to
minus infinity (beta = 0); only too large is absurd. The margins over what healthy runs reach are in
bench/README.md ("divergence.py").
"""

import math
from typing import Callable, Optional

import torch
from torch import Tensor

from lvae.errors import DivergenceError

# A decoder that says p = 0.5 for each of an image's D pixel values, as an untrained one roughly does, scores D ln 2
# nats per image: 543.4 for MNIST's 28 x 28. A loss above 100 times that has diverged.
LOSS_FACTOR = 100


def untrained_loss(pixels: int) -> float:
    return pixels * math.log(2)
MU_LIMIT = 1e4  # healthy runs keep |mu| below 30, beta = 0 included
LOGVAR_LIMIT = 20.0  # healthy runs stay below 5; a posterior std of e^10 prior units is no posterior


def vitals(loss: Tensor, recon: Tensor, kl: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """What the rule reads of one batch, (5,) on the device without a sync: the mean loss, recon and kl, the
    largest |mu| and the largest logvar. `loss` is the batch mean, the others per input."""
    return torch.stack([loss, recon.mean(), kl.mean(), mu.abs().amax(), logvar.amax()]).detach()


def latents_diverged(mu_max: float, logvar_max: float) -> Optional[str]:
    """"the means reach 3e+31 (limit 10,000)" and the like, or None when the means and log-variances are sane.
    `mu_max` is the largest |mu|, `logvar_max` the largest logvar; NaN counts as diverged."""
    for name, value, limit in (("means", mu_max, MU_LIMIT), ("log-variances", logvar_max, LOGVAR_LIMIT)):
        if math.isnan(value):
            return f"the {name} are NaN"
        if value > limit:
            return f"the {name} reach {value:.3g} (limit {limit:,g})"
    return None


def diverged(name: str, loss: float, recon: float, kl: float, mu_max: float, logvar_max: float,
             pixels: int = 28 * 28) -> Optional[str]:
    """What has diverged, naming the value (`name` is "loss" or "val/loss"), or None when nothing has. `pixels` is
    D, the number of pixel values per image."""
    if not math.isfinite(loss):
        bad = [f"{part}={value:.4g}" for part, value in (("recon", recon), ("kl", kl)) if not math.isfinite(value)]
        return f"{name}={loss} (non-finite parts: {', '.join(bad) or 'none; beta * kl overflowed'})"
    untrained = untrained_loss(pixels)
    if loss > LOSS_FACTOR * untrained:
        return (f"{name}={loss:.4g} (recon={recon:.4g}, kl={kl:.4g}), over {LOSS_FACTOR * untrained:,.0f} nats per "
                f"image, {LOSS_FACTOR} times the {untrained:.0f} of an untrained model")
    return latents_diverged(mu_max, logvar_max)


def divergence_message(epoch: int, step: int, what: str, lr: float) -> str:
    """The one message for every way a run diverges: the step, what diverged, what is kept and the fix. The CLI adds
    how to continue this run, naming it, when it has a checkpoint."""
    return (f"training diverged at epoch {epoch}, step {step}: {what}. No checkpoint was written from these "
            f"weights. Lower the learning rate (now --model.lr {lr}) or clip gradients "
            f"(--trainer.gradient_clip_val 1.0).")


class DivergenceGuard:
    """The rule applied to a fit, raising `DivergenceError` with the one message: each training step is judged one
    step late (its vitals are read back when the next step starts, so the check never waits for the device), each
    validation epoch on the whole validation set, and the weights of every checkpoint before it is written."""

    def __init__(self, pixels: int):
        self.pixels = pixels  # D, the pixel values per image
        self.pending: Optional[tuple[Tensor, int, int]] = None  # the last step's vitals, its epoch and step
        self.last_batch: Optional[Tensor] = None  # the last training batch, what a checkpoint's weights are scored on

    def record(self, vitals: Tensor, epoch: int, step: int, batch: Tensor) -> None:
        """Keep a training step's `vitals` unread, to be judged when the next step (or a checkpoint) comes."""
        self.pending = (vitals, epoch, step)
        self.last_batch = batch

    def check_step(self, lr: float) -> None:
        """Stop with the divergence message when the last training step had diverged."""
        if self.pending is None:
            return
        values, epoch, step = self.pending
        self.pending = None
        self.stop_if(diverged("loss", *values.tolist(), pixels=self.pixels), epoch, step, lr)

    def check_weights(self, score: Callable[[Tensor], Tensor], epoch: int, step: int, lr: float) -> None:
        """Score the current weights on the last training batch and stop if they have diverged; the lagged check
        has not seen them yet. `score` maps a batch to its `vitals` without drawing noise, so the random stream
        stays as it was."""
        if self.last_batch is None:
            return
        with torch.no_grad():
            values = score(self.last_batch)
        self.stop_if(diverged("loss", *values.tolist(), pixels=self.pixels), epoch, step, lr,
                     where=", with the weights about to be saved")

    def check_validation(self, values: list[float], epoch: int, step: int, lr: float) -> None:
        """Stop if a validation epoch's synced loss, recon, kl and extremes (as `diverged` takes them) have
        diverged; every rank decides alike."""
        self.stop_if(diverged("val/loss", *values, pixels=self.pixels), epoch, step, lr,
                     where=", on the validation set")

    def stop_if(self, what: Optional[str], epoch: int, step: int, lr: float, where: str = "") -> None:
        if what is not None:
            raise DivergenceError(divergence_message(epoch, step, what + where, lr))
