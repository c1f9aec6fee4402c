"""A run stopped after epoch 2 and resumed to epoch 4 carries on as if never stopped: the same run folder and
W&B run id, epochs 3 and 4 logged once each, the same prior draws and the same followed validation inputs."""

from pathlib import Path

import pytest
import torch
from conftest import REPO, lvae_said, run_dirs, working_in
from wandb_run import read_run

CONFIG = REPO / "configs" / "mnist.yaml"


def fit(mnist_root: Path, *extra: str) -> None:
    """`lvae fit` in this process, in the current folder."""
    proc = lvae_said("fit", "--config", str(CONFIG), "--data.data_dir", str(mnist_root), "--data.batch_size", "64",
                     "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false", *extra)
    # Every picture on: the drawing process starts and draws (no picture skipped).
    assert proc.returncode == 0 and "was skipped" not in proc.stderr, proc.stderr[-3000:]


@pytest.fixture(scope="module")
def resumed(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    with working_in(tmp_path_factory.mktemp("resume")) as cwd:
        fit(mnist_root, "--trainer.max_epochs", "2")
        (run,) = run_dirs(cwd / "runs")
        first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
        fit(mnist_root, "--trainer.max_epochs", "4", "--ckpt_path", "last")
    return run, first


def test_resume_continues_the_same_run_folder_and_wandb_run(resumed: tuple[Path, dict]) -> None:
    run, _ = resumed
    assert len(run_dirs(run.parent)) == 1
    first, second = read_run(run)
    assert first.run_id == second.run_id == run.name  # `wandb sync` appends the second part to the same run
    assert sorted(set(first.values("epoch"))) == [0, 1]
    assert [row["epoch"] for row in second.rows_with("val/loss")] == [2, 3]  # no repeats, no gaps
    # `wandb sync runs/<id>/wandb/offline-run-*` keeps only rows whose step increases: the second part follows the first.
    steps = [[row["_step"] for row in part.history] for part in (first, second)]
    assert steps[0] and steps[1] and max(steps[0]) < min(steps[1]), steps
    assert (run / "config.yaml").is_file() and (run / "config-2.yaml").is_file()  # both configs kept


def test_resume_keeps_prior_draws_and_followed_inputs(resumed: tuple[Path, dict]) -> None:
    run, first = resumed
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert final["epoch"] >= 3
    prior = next(v for k, v in first["callbacks"].items() if k.startswith("PriorSamples"))
    prior_after = next(v for k, v in final["callbacks"].items() if k.startswith("PriorSamples"))
    assert torch.equal(prior["z"], prior_after["z"])
    assert torch.equal(first["latent_subset"]["subset"], final["latent_subset"]["subset"])


def test_resume_continues_the_picture_folders(resumed: tuple[Path, dict]) -> None:
    run, _ = resumed
    frames = sorted(p.name for p in (run / "latents" / "prior_samples").glob("epoch_*.png"))
    assert frames == [f"epoch_{e:03d}.png" for e in range(4)]


def test_validate_draws_every_picture_for_a_checkpoint(resumed: tuple[Path, dict], mnist_root: Path) -> None:
    run, _ = resumed
    with working_in(run.parent.parent):
        proc = lvae_said("validate", "--config", str(CONFIG), "--data.data_dir", str(mnist_root),
                         "--trainer.accelerator", "cpu", "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    validate_run = run / "validate"  # the run's own folder for it: fit's pictures are left alone
    drawn = {p.parent.name for p in (validate_run / "latents").glob("*/epoch_*.png")}
    # t-SNE is skipped with a warning: the fixture's 30 validation inputs are too few for perplexity 30.
    assert drawn == {"scatter", "prior_samples", "uncertainty", "traversals", "interpolations", "reconstructions"}
    (wandb_run,) = read_run(validate_run)
    assert wandb_run.values("latents/scatter/_type") == ["image-file"] and wandb_run.values("uncertainty/spearman_ink")
    # the table for W&B's projector, logged by validate too
    assert wandb_run.values("latents/means_table/_type") == ["table-file"]
