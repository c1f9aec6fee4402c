"""The foundation as a user meets it: `lvae fit/test` on MNIST-format files, the run folder, the W&B run, errors."""

import math
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import lvae_said, run_dirs, small_fit_args, working_in
from wandb_run import read_run

from lvae import VAE, MNISTDataModule
from lvae.data import InMemoryBatches

LOSS_KEYS = [f"{stage}/{part}" for stage in ("train", "val") for part in ("loss", "recon", "kl")]


def test_data_module_reads_idx_files_through_torchvision(mnist_root: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_root), batch_size=50)
    dm.prepare_data()
    dm.setup("fit")
    sizes = {split: len(images) for split, (images, _) in dm.splits.items()}
    assert sizes == {"train": 330, "val": 30, "test": 100}  # 360 training images, 1/12 held out
    images, labels = dm.splits["train"]
    assert images.dtype == torch.uint8 and images.shape[1:] == (28, 28)
    assert set(labels.tolist()) == set(range(10))
    x, y, index = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape == (50, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(dm.splits["train"][1][index], y)


def test_in_memory_loader_yields_every_index_once_in_a_new_order_each_epoch() -> None:
    images, labels = torch.zeros(103, 28, 28, dtype=torch.uint8), torch.arange(103)
    loader = InMemoryBatches(images, labels, batch_size=10, shuffle=True, seed=0)
    orders = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        batches = [index for _, _, index in loader]
        assert len(batches) == len(loader) == 11 and [len(b) for b in batches][-1] == 3  # last partial batch
        order = torch.cat(batches)
        assert sorted(order.tolist()) == list(range(103))
        orders.append(order)
    assert not torch.equal(orders[0], orders[1]) and not torch.equal(orders[1], orders[2])


@pytest.mark.parametrize("world", [2, 3])
def test_in_memory_loader_gives_ranks_disjoint_shares_and_equal_step_counts(monkeypatch, world: int) -> None:
    images, labels = torch.zeros(103, 28, 28, dtype=torch.uint8), torch.arange(103)
    loader = InMemoryBatches(images, labels, batch_size=10, shuffle=True, seed=0)
    seen, steps = [], set()
    for rank in range(world):
        monkeypatch.setattr(InMemoryBatches, "_rank_world", staticmethod(lambda r=rank: (r, world)))
        batches = [index for _, _, index in loader]
        assert all(len(b) > 0 for b in batches)
        steps.add(len(batches))
        seen.extend(torch.cat(batches).tolist())
    assert len(steps) == 1  # DDP needs every rank to run the same number of steps
    assert sorted(seen) == list(range(103))  # every input exactly once across ranks


@pytest.fixture(scope="module")
def fitted_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One `lvae fit` of 2 epochs, in this process; returns the working folder."""
    with working_in(tmp_path_factory.mktemp("fit")) as cwd:
        assert lvae_said(*small_fit_args(mnist_root)).returncode == 0
    return cwd


def test_fit_writes_one_run_folder_with_config_checkpoints_and_wandb_run(fitted_run: Path) -> None:
    (run,) = run_dirs(fitted_run / "runs")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-epoch001.ckpt", "last.ckpt"]
    assert not (fitted_run / "wandb").exists() and not (fitted_run / "lvae").exists()  # nothing outside the run
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["model"]["class_path"] == "lvae.VAE" and config["model"]["init_args"]["latent_dim"] == 20
    assert config["run_id"] == run.name
    (wandb_run,) = read_run(run)
    assert wandb_run.run_id == run.name
    assert wandb_run.config["config"]["data"]["init_args"]["batch_size"] == 64  # the resolved CLI config, in W&B too
    for key in LOSS_KEYS:
        values = wandb_run.values(key)
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
    loss, recon, kl = (wandb_run.values(f"val/{p}")[-1] for p in ("loss", "recon", "kl"))
    assert loss == pytest.approx(recon + kl, rel=1e-5)  # beta = 1: the loss is the negative ELBO


def test_checkpoint_reload_gives_the_same_encoding(mnist_root: Path, tmp_path: Path) -> None:
    dm = MNISTDataModule(data_dir=str(mnist_root), batch_size=64)
    model = VAE(latent_dim=4)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, dm)
    trainer.save_checkpoint(tmp_path / "model.ckpt")
    reloaded = VAE.load_from_checkpoint(tmp_path / "model.ckpt")
    x = dm.splits["test"][0][:32].unsqueeze(1).float() / 255
    model.eval(), reloaded.eval()
    with torch.inference_mode():
        for a, b in zip(model.encode(x), reloaded.encode(x)):
            assert torch.equal(a, b)
    assert reloaded.hparams.latent_dim == 4


def test_test_subcommand_reports_loss_and_iwae_nll(fitted_run: Path, mnist_root: Path) -> None:
    (run,) = run_dirs(fitted_run / "runs")
    with working_in(fitted_run):
        proc = lvae_said("test", "--data.data_dir", str(mnist_root), "--trainer.accelerator", "cpu",
                         "--model.iwae_samples", "20", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "test/nll" in proc.stdout and "test/loss" in proc.stdout
    assert run_dirs(fitted_run / "runs") == [run]  # the test of a run's checkpoint stays with the run
    (wandb_run,) = read_run(run / "test")
    nll, loss = wandb_run.values("test/nll")[0], wandb_run.values("test/loss")[0]
    assert 0 < nll <= loss * 1.001  # the IWAE bound is tighter than the single-sample ELBO


def test_importance_weighted_bound_tightens_with_k() -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=4).eval()
    x = torch.rand(8, 1, 28, 28).round()
    with torch.inference_mode():
        elbo = torch.stack([model._loss_parts(x)[2] + model._loss_parts(x)[3] for _ in range(200)]).mean(0)
        nll_1 = torch.stack([model.iwae_nll(x, k=1) for _ in range(200)]).mean(0)
        nll_100 = model.iwae_nll(x, k=100)
    assert torch.allclose(nll_1, elbo, rtol=0.02)  # k=1 is the ELBO
    assert (nll_100 < nll_1).all()


def test_per_input_negative_elbo_is_computed_for_the_followed_inputs(mnist_root: Path, tmp_path: Path) -> None:
    seen = {}

    class Grab(L.Callback):
        def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: VAE) -> None:
            if not trainer.sanity_checking:
                seen["latents"] = pl_module.validation_latents()

    model = VAE(latent_dim=4, latent_points=20, elbo_samples=4)
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, default_root_dir=tmp_path, callbacks=[Grab()])
    trainer.fit(model, MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
    latents = seen["latents"]
    assert len(latents) == 20 and len(latents.neg_elbo) == 20  # the followed subset of the 30 validation inputs
    x = latents.image.float() / 255  # (N, C, H, W)
    model.eval()
    with torch.inference_mode():
        # Draws 1..4 of each input's evaluation noise: the same number on any number of processes.
        fixed = model.neg_elbo(x, latents.mu, latents.logvar, model.eval_noise(latents.index, "val", 5)[1:])
        fresh = torch.stack([model.neg_elbo(x, latents.mu, latents.logvar) for _ in range(100)]).mean(0)
    torch.testing.assert_close(latents.neg_elbo, fixed)
    torch.testing.assert_close(latents.neg_elbo, fresh, rtol=0.15, atol=0)  # a 4-draw ELBO estimate, in nats


def test_missing_data_fails_at_once_with_the_folder_and_files_named(workdir: Path) -> None:
    proc = lvae_said(*small_fit_args(workdir / "nodata"))
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    message = proc.stderr
    assert f"{workdir / 'nodata' / 'MNIST' / 'raw'}" in message
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        assert name in message
    assert not (workdir / "nodata").exists()  # nothing half-written left behind


@pytest.mark.parametrize(("args", "named"), [
    (["--model.latent_dim", "0"], "model.latent_dim"),
    (["--model.lr", "-0.1"], "model.lr"),
    (["--data.dataset", "cifar"], "data.dataset"),
    (["--model.no_such_key", "1"], "no_such_key"),
    (["--data.batch_size", "0"], "data.batch_size"),
    (["--data.val_fraction", "1.5"], "data.val_fraction"),
    (["--model.beta", "-1"], "model.beta"),
    (["--trainer.max_epochs", "0"], "trainer.max_epochs"),
])
def test_bad_values_are_refused_with_the_key_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture,
                                                   args: list[str], named: str) -> None:
    from lvae.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:  # in this process, as a notebook calls it
        main(small_fit_args(tmp_path / "unused", *args))
    said = capfd.readouterr().err.splitlines()
    assert exit.value.code == 2 and said[0].startswith("lvae fit: error: ") and named in said[0], said
    assert said[-1] == "See 'lvae fit --help' for the accepted options." and len(said) <= 5, said
    assert not caplog.messages  # nothing said before the refusal ("Seed set to 0")
    assert not list(tmp_path.iterdir())  # refused before anything was built


def test_rerun_in_the_same_root_keeps_both_runs(mnist_root: Path, workdir: Path) -> None:
    args = small_fit_args(mnist_root, "--trainer.max_epochs", "1", "--trainer.default_root_dir", str(workdir))
    assert lvae_said(*args).returncode == 0
    assert lvae_said(*args).returncode == 0
    assert len(run_dirs(workdir)) == 2  # a re-run is a new versioned folder, not a crash on config.yaml


def test_real_digits_val_loss_falls_well_below_first_epoch(real_mnist_root: Path) -> None:
    L.seed_everything(0)
    model = VAE()
    dm = MNISTDataModule(data_dir=str(real_mnist_root), batch_size=128)
    losses = []

    class Record(L.Callback):
        def on_validation_epoch_end(self, trainer, pl_module):
            if not trainer.sanity_checking:
                losses.append(float(trainer.callback_metrics["val/loss"]))

    trainer = L.Trainer(max_epochs=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, callbacks=[Record()])
    trainer.fit(model, dm)
    assert losses[0] > 140 and losses[-1] < losses[0] - 25, losses  # nats per image


def test_processes_of_one_torchrun_or_slurm_job_share_one_run_id(monkeypatch) -> None:
    from lvae.runs import launcher_run_id

    for var in ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert launcher_run_id() is None
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert launcher_run_id() is None  # one task (an interactive allocation): a fresh id per run
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert launcher_run_id() == "slurm-4242"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job7")
    assert launcher_run_id() == "job7"  # the rendezvous id is the run id, as the README says


def test_a_model_loaded_with_a_new_lr_trains_with_that_lr(mnist_root: Path, tmp_path: Path) -> None:
    # load_from_checkpoint(lr=...) builds a new optimiser with that lr (the kwargs replace the checkpoint's hparams
    # before on_load_checkpoint reads them): the rule that rescales a restored optimiser on resume must not apply.
    def fit(model: VAE) -> L.Trainer:
        trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=1, accelerator="cpu", logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)
        trainer.fit(model, MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
        return trainer

    fit(VAE(latent_dim=4, hidden_dim=16, latent_points=0)).save_checkpoint(tmp_path / "lr.ckpt")
    trainer = fit(VAE.load_from_checkpoint(tmp_path / "lr.ckpt", lr=1e-4))
    assert [group["lr"] for group in trainer.optimizers[0].param_groups] == [1e-4]
