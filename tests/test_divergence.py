"""Divergence, finite or not: a loss far above an untrained model's, absurd means or log-variances, or NaN stop
fit with one message and leave only checkpoints of sane weights; healthy runs never stop."""

import math
import re
from pathlib import Path
from typing import Callable

import lightning as L
import pytest
import torch
from conftest import REPO, lvae_said, run_dirs, small_fit_args
from lightning.pytorch.callbacks import ModelCheckpoint
from test_faults import MESSAGES

from lvae import VAE, DivergenceError, MNISTDataModule
from lvae.divergence import LOSS_FACTOR, MU_LIMIT, diverged, untrained_loss
from lvae.latents import Latents, unusable

UNTRAINED_LOSS = untrained_loss(28 * 28)  # MNIST's 543
LOSS_LIMIT = LOSS_FACTOR * UNTRAINED_LOSS

NAN = float("nan")


def state_of(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_lr_100_explodes_without_a_nan_and_no_checkpoint_is_written(mnist_root: Path, workdir: Path) -> None:
    # The first update already explodes the weights (every later state too); a checkpoint is due after every step,
    # and Lightning alone would write one of the exploded weights each time.
    proc = lvae_said(*small_fit_args(mnist_root, "--model.lr", "100", "--checkpoint.every_n_train_steps", "1",
                                     "--checkpoint.monitor", "null"))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    found = re.search(rf"{MESSAGES['divergence']} 0, step 1: loss=(\S+) \(recon=\S+, kl=\S+\), "
                      rf"{MESSAGES['finite divergence']}, with the weights about to be saved\.", proc.stderr)
    assert found and LOSS_LIMIT < float(found.group(1)) < math.inf, proc.stderr[-3000:]
    assert "--model.lr 100.0" in proc.stderr
    (run,) = run_dirs(workdir / "runs")
    assert not list(run.glob("checkpoints/*.ckpt"))
    # No checkpoint of this run to continue from: the message says so instead of advising --ckpt_path last.
    assert f"Run {run.name} wrote no checkpoint" in proc.stderr and "--ckpt_path last" not in proc.stderr


def fit(mnist_root: Path, model: VAE, *callbacks: L.Callback, epochs: int = 2, ckpt_path: Path | None = None,
        **trainer) -> L.Trainer:
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=list(callbacks), **trainer)
    trainer.fit(model, MNISTDataModule(data_dir=str(mnist_root), batch_size=64), ckpt_path=ckpt_path)
    return trainer


def test_lr_100_stops_one_step_late_on_the_training_loss_alone(mnist_root: Path) -> None:
    # No checkpoints, no validation: only the lagged check on the training loss can stop it.
    model = VAE(lr=100, latent_points=0)
    with pytest.raises(DivergenceError, match=r"at epoch 0, step 1: loss=\S+ \(recon=\S+, kl=\S+\), over 54,343 "):
        fit(mnist_root, model, enable_checkpointing=False, limit_val_batches=0)
    assert model.global_step == 2  # judged at the start of the next step, without waiting for the device


class Damage(L.Callback):
    """Damages the weights right after a given optimizer step, as one bad update would."""

    def __init__(self, after_step: int, damage: Callable[[VAE], None]):
        self.after_step, self.damage = after_step, damage

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: VAE, *args) -> None:
        if trainer.global_step == self.after_step:
            with torch.no_grad():
                self.damage(pl_module)


def nan_weight(model: VAE) -> None:
    model.encoder.mu.weight[0, 0] = NAN


def huge_means(model: VAE) -> None:
    # The means grow a million-fold and the decoder's first layer shrinks as much: the same reconstructions.
    model.encoder.mu.weight *= 1e6
    model.encoder.mu.bias *= 1e6
    model.decoder.net[0].weight /= 1e6


def huge_logits(model: VAE) -> None:
    model.decoder.net[2].bias += 1e5  # the output layer (net[3] unflattens its logits)


@pytest.mark.parametrize(("damage", "after_step", "beta", "checkpoints", "said"), [
    # checkpoints after every step: the weights about to be saved are judged before the write
    (nan_weight, 3, 1.0, True, r"epoch 0, step 3: loss=nan \(non-finite parts: recon=nan, kl=nan\), with the "
                               r"weights about to be saved"),
    (huge_logits, 3, 1.0, True, r"epoch 0, step 3: loss=\S+ \(recon=\S+, kl=\S+\), over 54,343 nats per image, 100 "
                                r"times the 543 of an untrained model, with the weights about to be saved"),
    # beta = 0: the loss stays sane, the means do not
    (huge_means, 3, 0.0, False, r"epoch 0, step 3: the means reach \S+ \(limit 10,000\)\."),
    # the last update of the epoch: only validation sees it, before the epoch's checkpoints are written
    (huge_logits, 6, 1.0, False, r"epoch 0, step 6: val/loss=\S+ \(recon=\S+, kl=\S+\), over 54,343 nats per "
                                 r"image, 100 times the 543 of an untrained model, on the validation set\."),
])
def test_each_way_of_diverging_is_named_and_nothing_diverged_is_saved(mnist_root: Path, tmp_path: Path, damage,
                                                                       after_step: int, beta: float,
                                                                       checkpoints: bool, said: str) -> None:
    saver = ModelCheckpoint(dirpath=tmp_path, filename="step{step}", every_n_train_steps=1 if checkpoints else 0,
                            save_top_k=-1, save_last=True, monitor=None)
    with pytest.raises(DivergenceError, match=said):
        fit(mnist_root, VAE(beta=beta, latent_points=0), Damage(after_step, damage), saver)
    saved = sorted(tmp_path.glob("*.ckpt"))
    steps = sorted(torch.load(p, weights_only=True)["global_step"] for p in saved)
    assert steps == ([1, 2, 2] if checkpoints else [])  # one per sane step, and last.ckpt of step 2
    for path in saved:
        weights = state_of(path)
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())


class LearningRates(L.Callback):
    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.seen.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_resuming_with_a_lower_lr_trains_with_it(mnist_root: Path, tmp_path: Path) -> None:
    # The divergence message's fix; Lightning alone would restore the checkpoint optimiser's lr of 1e-3.
    fit(mnist_root, VAE(latent_points=0), epochs=1, enable_checkpointing=False).save_checkpoint(tmp_path / "a.ckpt")
    lrs = LearningRates()
    fit(mnist_root, VAE(lr=1e-5, latent_points=0), lrs, ckpt_path=tmp_path / "a.ckpt", enable_checkpointing=False)
    assert lrs.seen == [1e-5]


@pytest.mark.parametrize("settings", [
    {}, {"beta": 0.0}, {"beta": 1000.0}, {"latent_dim": 2}, {"latent_dim": 64},
    {"architecture": "conv", "latent_dim": 64, "beta": 0.0},
], ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()) or "defaults")
def test_healthy_runs_never_stop(mnist_root: Path, tmp_path: Path, settings: dict) -> None:
    # A checkpoint every third step judges those weights too, besides every step and each validation.
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, monitor=None)
    trainer = fit(mnist_root, VAE(latent_points=0, **settings), saver)
    assert trainer.global_step == 12 and trainer.current_epoch == 2
    assert 0 < trainer.callback_metrics["val/loss"] < UNTRAINED_LOSS  # learnt something, far from the limit


@pytest.mark.parametrize(("values", "said"), [
    ((5.5e32, 1e24, 5.5e32, 1.9e4, 76.1), "loss=5.5e+32 (recon=1e+24, kl=5.5e+32), over 54,343 nats per image"),
    ((math.inf, 600.0, 1e38, 1e19, 1.0), "loss=inf (non-finite parts: none; beta * kl overflowed)"),
    ((150.0, 140.0, 10.0, 2e5, 1.0), "the means reach 2e+05 (limit 10,000)"),
    ((150.0, 140.0, 10.0, 3.0, 76.1), "the log-variances reach 76.1 (limit 20)"),
    ((150.0, 140.0, 10.0, NAN, 1.0), "the means are NaN"),
    ((-2000.0, -2100.0, 100.0, 3.0, 1.0), None),  # a Gaussian likelihood's negative loss is fine
    ((120.0, 120.0, 900.0, 25.0, -1e6), None),  # beta = 0: log-variances heading to minus infinity are fine
])
def test_the_rule_is_one_sided_and_says_which_value(values: tuple, said) -> None:
    what = diverged("loss", *values)
    if said is None:
        assert what is None
    else:
        assert said in what


def latents(mu: torch.Tensor, logvar: torch.Tensor) -> Latents:
    n = len(mu)
    return Latents(epoch=0, index=torch.arange(n), label=torch.arange(n) % 2, mu=mu, logvar=logvar,
                   recon=torch.full((n,), 100.0), kl=torch.ones(n), neg_elbo=torch.full((n,), 101.0),
                   image=torch.zeros(n, 28, 28, dtype=torch.uint8))


@pytest.mark.parametrize(("mu", "logvar", "reason"), [
    (3e31, 0.0, "the means reach 3e+31 (limit 10,000): the model has diverged"),
    (-3e31, 0.0, "the means reach 3e+31 (limit 10,000): the model has diverged"),
    (1.0, 76.1, "the log-variances reach 76.1 (limit 20): the model has diverged"),
    (1.0, NAN, "latents.logvar holds NaN or infinite values: the model has diverged"),
    (0.9 * MU_LIMIT, -40.0, None),
])
def test_pictures_of_diverged_latents_are_refused_in_lvaes_words(mu: float, logvar: float, reason) -> None:
    z = torch.randn(8, 4)
    z[3, 1] = mu
    logvar_values = torch.zeros(8, 4)
    logvar_values[5, 2] = logvar
    for finite in (("mu",), ("mu", "logvar", "recon", "neg_elbo")):  # what the pictures ask for
        assert unusable(latents(z, logvar_values), min_points=2, finite=finite) == reason


def test_the_cause_is_named_rather_than_its_consequences() -> None:
    broken = latents(torch.full((8, 4), 3e31), torch.zeros(8, 4))
    broken.neg_elbo[:] = math.inf  # the KL of such means overflows
    assert unusable(broken, min_points=2, finite=("mu", "logvar", "recon", "neg_elbo")) == \
        "the means reach 3e+31 (limit 10,000): the model has diverged"


def test_readme_states_the_limits() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## What happens when"):]
    assert f"{LOSS_LIMIT:,.0f} nats per image" in table and f"{MU_LIMIT:,.0f}" in table
