"""DDP with 2 CPU processes (gloo) gives the same content as one process: training coverage, validation
loss, the shared latent collection and the predict export."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, cli_env, lvae_said, run_dirs, run_lvae, small_fit_args, working_in

DDP = ["--trainer.devices", "2", "--trainer.strategy", "ddp"]


def probe(out: Path) -> list[str]:
    return ["--trainer.callbacks+=" + json.dumps({"class_path": "ddp_probe.Probe", "init_args": {"out": str(out)}})]


def probe_env() -> dict[str, str]:
    return {**cli_env(), "PYTHONPATH": str(REPO / "tests")}


def one_process(args: list[str], cwd: Path) -> None:
    """The one-process side of a comparison, run in this process (the two-process side needs the command)."""
    with working_in(cwd):
        done = lvae_said(*args)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def ddp_fit(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("ddp")
    run_lvae(small_fit_args(mnist_root, "--data.batch_size", "32", *DDP, *probe(cwd / "probe")), cwd, env=probe_env())
    return cwd


@pytest.fixture(scope="module")
def checkpoint(ddp_fit: Path) -> str:
    (run,) = run_dirs(ddp_fit / "runs")  # taken before validate/predict add their own run folders
    return str(run / "checkpoints" / "last.ckpt")


def test_ddp_training_sees_every_sample_exactly_once_per_epoch(ddp_fit: Path) -> None:
    per_rank = [torch.load(p) for p in sorted((ddp_fit / "probe").glob("seen_rank*.pt"))]
    assert len(per_rank) == 2
    for epoch in (0, 1):
        seen = per_rank[0][epoch] + per_rank[1][epoch]
        assert sorted(seen) == list(range(330)), f"epoch {epoch}"
        assert not set(per_rank[0][epoch]) & set(per_rank[1][epoch])
    assert per_rank[0][0] != per_rank[0][1]  # a fresh permutation each epoch


def test_ddp_run_is_one_run_folder_and_one_wandb_run(ddp_fit: Path, checkpoint: str) -> None:
    run = Path(checkpoint).parent.parent
    assert run_dirs(ddp_fit / "runs")[0] == run
    assert len(list((run / "wandb").glob("offline-run-*"))) == 1


@pytest.fixture(scope="module")
def validated(ddp_fit: Path, checkpoint: str, mnist_root: Path) -> dict[int, dict]:
    """`lvae validate` of the same checkpoint with 1 and with 2 processes."""
    out = {}
    for devices in (1, 2):
        probe_dir = ddp_fit / f"validate{devices}"
        args = ["validate", "--data.data_dir", str(mnist_root), "--data.batch_size", "8", "--trainer.accelerator",
                "cpu", "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
                "--ckpt_path", checkpoint, *probe(probe_dir)]
        if devices == 1:
            one_process(args, ddp_fit)
        else:
            run_lvae(args, ddp_fit, env=probe_env())
        (path,) = probe_dir.glob("latents_validate_*.pt")
        out[devices] = torch.load(path)
    return out


def test_collected_latents_under_ddp_equal_one_process(validated: dict[int, dict]) -> None:
    one, two = validated[1], validated[2]
    assert two["index"].tolist() == list(range(30))  # the whole validation split, no duplicates, in order
    assert torch.equal(one["index"], two["index"])
    torch.testing.assert_close(two["mu"], one["mu"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(two["neg_elbo"], one["neg_elbo"], rtol=1e-5, atol=1e-4)


def test_val_loss_under_ddp_equals_one_process(validated: dict[int, dict]) -> None:
    assert validated[2]["val_loss"] == pytest.approx(validated[1]["val_loss"], rel=1e-5)


def test_predict_export_is_complete_and_ordered_under_ddp(ddp_fit: Path, checkpoint: str, mnist_root: Path) -> None:
    arrays = {}
    for devices in (1, 2):
        path = ddp_fit / f"predict{devices}.npz"
        args = ["predict", "--data.data_dir", str(mnist_root), "--data.batch_size", "16", "--trainer.accelerator",
                "cpu", "--trainer.devices", str(devices), "--trainer.strategy", "ddp" if devices > 1 else "auto",
                "--ckpt_path", checkpoint,
                "--trainer.callbacks+=" + json.dumps({"class_path": "lvae.callbacks.LatentExport",
                                                      "init_args": {"path": str(path)}})]
        if devices == 1:
            one_process(args, ddp_fit)
        else:
            run_lvae(args, ddp_fit)
        arrays[devices] = np.load(path)
    one, two = arrays[1], arrays[2]
    assert sorted(two.files) == ["index", "label", "logvar", "mu"]
    assert two["index"].tolist() == list(range(100)) and two["mu"].shape == (100, 20)
    np.testing.assert_array_equal(one["label"], two["label"])
    np.testing.assert_allclose(two["mu"], one["mu"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(two["logvar"], one["logvar"], rtol=1e-5, atol=1e-5)
