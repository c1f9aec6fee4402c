"""Nothing lost: divergence, kills, bad files, a missing network and mismatched checkpoints each end in a clear
message with every good checkpoint intact. MESSAGES holds what the user sees; the README's "What happens
when..." table quotes the same phrases and `test_readme_table_quotes_what_users_see` keeps the two in step."""

import json
import math
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import (
    REPO,
    cli_env,
    lvae,
    run_dirs,
    run_lvae,
    small_fit_args,
    toy_digits,
    working_in,
    write_idx,
)
from wandb_run import read_run

from lvae import DataFilesError, MNISTDataModule
from lvae.checkpoints import AtomicCheckpointIO

MESSAGES = {
    "divergence": "training diverged at epoch",
    "finite divergence": "over 54,343 nats per image, 100 times the 543 of an untrained model",  # test_divergence.py
    "diverged pictures": "the model has diverged",  # test_divergence.py
    "sigint": "interrupted at epoch",
    "sigkill": "removing",
    "truncated": "is truncated",
    "count mismatch": "labels; the pair must come from the same split",
    "not an IDX file": "is not an IDX image file",
    "bad labels": "MNIST-format datasets have labels 0-9",
    "missing files": "files not found in",
    "other architecture": "was trained with another model",
    "no such checkpoint": "no such file",
    "not a checkpoint": "is not a checkpoint",
    "no network": "W&B is not reachable",
    "perplexity": "TSNEEmbedding.perplexity=500.0 is too large for",
    "picture fails": "was skipped",  # tests/test_pictures.py
    "drawing stopped": "the drawing process stopped (killed by SIGKILL); the next picture starts a new one",
    "drawing in __main__": "into a module it can import (a .py file on sys.path), or draw in the training loop with "
                           "background=False",  # tests/test_entry_points.py
    "untrusted checkpoint": "is refused: it holds",
    "dead process": "a process of the job stopped",  # tests/test_ddp_watch.py
    # tests/test_runs.py
    "continue the run": "Continue with --run_id",
    "other values": "which differs from this command on keys that define a run",
    "run id taken": "a run id is never reused for another run",
    # tests/test_run_folders.py
    "run id rule": "is refused: a run id is a name of at most 64 ASCII letters, digits, '-', '_' and '.'",
    "live run": "right now; a run is continued by one process at a time",
    "no last.ckpt": "has no checkpoints/last.ckpt, but has",
    "foreign class": "and lvae imports and builds no class from a file that is not defined in lvae",
    "damaged checkpoint": "is not a Lightning checkpoint: its",
    "not text": "is not a YAML file: byte",
    "unwritable runs": "and lvae cannot write there",
    "online without a key": "asks W&B to log online, and W&B has no API key here",
    # tests/test_bounded_reading.py
    "unpacks to more": "longer than its header says: it unpacks to more than",
    "link out of the folder": "outside the folder",
    "links read once": "link(s) to folders or images already read; each image is read once",
    "two labels": "in two class folders: one image would have two labels",
    "compressed checkpoint": "records are compressed",
    "billion laughs": "its aliases would add more than 100,000 values to those it writes",
    "named run started": "has no checkpoint yet; starting it from the beginning",
    "mid-epoch batches": "the rest of that epoch needs the batches it started with",
    "bad value": "for the accepted options.",
    # tests/test_images.py
    "bad image file": "cannot be read as an image",
    "empty folder": "is empty",
    "conv size": "ConvEncoder takes images whose height and width are divisible by 4",
    # tests/test_framework.py
    "class path": "cannot be imported: is its module on PYTHONPATH?",
    "network shape": "lvae needs (mu, logvar), each",
}


def finite_weights(path: Path) -> bool:
    state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_last_checkpoint_is_the_last_epoch_even_when_val_loss_does_not_improve(mnist_root: Path, workdir: Path):
    # mode=max: a falling val/loss never "improves", so only epoch 0 is a top-k checkpoint. Lightning 2.6 alone
    # would then leave last.ckpt at epoch 0, and --ckpt_path last would silently redo two epochs.
    assert lvae(*small_fit_args(mnist_root, "--trainer.max_epochs", "3", "--checkpoint.mode", "max")) == 0
    (run,) = run_dirs(workdir / "runs")
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == 18  # 3 epochs of 6 steps
    assert [p.name for p in (run / "checkpoints").glob("best-*.ckpt")] == ["best-epoch000.ckpt"]


def wait_for(path_glob: str, root: Path, proc: subprocess.Popen, timeout: float = 240) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = sorted(root.glob(path_glob))
        if found:
            return found[0]
        if proc.poll() is not None:
            raise AssertionError(f"lvae exited {proc.returncode} early: {proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"no {path_glob} under {root} after {timeout} s")


def start_fit(mnist_root: Path, cwd: Path, *extra: str, step: int = 8) -> subprocess.Popen:
    """`lvae fit` for 400 epochs in `cwd`, which writes `marks/rank0.pid` as it starts training step `step` (by
    default in the middle of epoch 1): the moment a test sends its signal after."""
    marker = json.dumps({"class_path": "step_marker.StepMarker", "init_args": {"out": str(cwd / "marks"),
                                                                             "step": step}})
    args = small_fit_args(mnist_root, "--trainer.max_epochs", "400", f"--trainer.callbacks+={marker}", *extra)
    env = {**cli_env(), "PYTHONPATH": str(REPO / "tests")}  # step_marker
    return subprocess.Popen([sys.executable, "-m", "lvae", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def test_sigkill_mid_epoch_leaves_whole_checkpoints_and_last_resumes(mnist_root: Path, workdir: Path,
                                                                     capfd: pytest.CaptureFixture) -> None:
    # A checkpoint every step makes it likely that the kill lands during a write.
    proc = start_fit(mnist_root, workdir, "--checkpoint.every_n_train_steps", "1", "--checkpoint.monitor", "null")
    wait_for("marks/rank0.pid", workdir, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (run,) = run_dirs(workdir / "runs")
    visible = sorted((run / "checkpoints").glob("*.ckpt"))
    assert visible and all(finite_weights(p) for p in visible)  # every visible checkpoint loads whole
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    epoch = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["epoch"]
    capfd.readouterr()
    assert lvae(*small_fit_args(mnist_root, "--ckpt_path", "last", "--trainer.max_epochs", str(epoch + 2))) == 0
    assert run_dirs(workdir / "runs") == [run]  # continued in the same run folder
    assert not list((run / "checkpoints").glob(".*.partial"))  # nothing half-written left behind
    final = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    # The resumed run continues the interrupted epoch's order where it stopped: 6 steps an epoch (330 inputs,
    # batches of 64), none lost or repeated.
    assert final["global_step"] == 6 * (epoch + 2) > killed_at
    assert "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize(("sig", "exit_code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_ends_cleanly_with_last_checkpoint_and_complete_wandb_run(
        mnist_root: Path, tmp_path: Path, sig: int, exit_code: int) -> None:
    proc = start_fit(mnist_root, tmp_path)
    wait_for("marks/rank0.pid", tmp_path, proc)  # mid-epoch, past the first epoch's last.ckpt
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=60)[1]
    assert proc.returncode == exit_code and "Traceback" not in stderr, stderr[-3000:]
    found = re.search(rf"{MESSAGES['sigint']} (\d+), step (\d+); saved (\S+last\.ckpt)", stderr)
    assert found, stderr[-3000:]
    last = torch.load(found.group(3), weights_only=False)
    assert last["global_step"] == int(found.group(2))  # the state at the interruption, not at an epoch end
    (run,) = run_dirs(tmp_path / "runs")
    (wandb_run,) = read_run(run)
    assert wandb_run.values("val/loss") and all(math.isfinite(v) for v in wandb_run.values("val/loss"))


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_file(tmp_path: Path, monkeypatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def dies_halfway(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process dies here

    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["state_dict"]["w"], torch.ones(3))  # the old file, whole


def test_ctrl_c_inside_torch_save_is_an_interrupt_not_a_crash(tmp_path: Path, monkeypatch) -> None:
    io, path = AtomicCheckpointIO(), tmp_path / "best.ckpt"
    io.save_checkpoint({"state_dict": {"w": torch.ones(3)}}, path)

    def interrupted_mid_write(obj, f, *args, **kwargs):
        try:
            f.write(b"PK\x03\x04 half a checkpoint")
            raise KeyboardInterrupt  # Ctrl-C arrives while the zip writer writes a record
        finally:
            # what torch's zip writer then raises from its __exit__
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1362112 vs 1362064")

    monkeypatch.setattr(torch, "save", interrupted_mid_write)
    with pytest.raises(KeyboardInterrupt):  # Lightning's interrupt handling saves last.ckpt and exits cleanly
        io.save_checkpoint({"state_dict": {"w": torch.zeros(3)}}, path)
    monkeypatch.undo()
    assert torch.equal(torch.load(path)["state_dict"]["w"], torch.ones(3))  # the old file, whole


def corrupt_copy(src: Path, dst: Path) -> Path:
    raw = dst / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (src / "MNIST" / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes())
    return raw


@pytest.mark.parametrize(("case", "damage", "file"), [
    ("truncated", lambda raw: (raw / "train-images-idx3-ubyte").write_bytes(
        (raw / "train-images-idx3-ubyte").read_bytes()[:5000]), "train-images-idx3-ubyte"),
    ("count mismatch", lambda raw: write_idx(raw, "train", toy_digits(360, 0)[0], toy_digits(350, 0)[1]),
     "train-images-idx3-ubyte"),
    ("not an IDX file", lambda raw: (raw / "t10k-images-idx3-ubyte").write_bytes(
        (raw / "t10k-labels-idx1-ubyte").read_bytes()), "t10k-images-idx3-ubyte"),
    ("bad labels", lambda raw: write_idx(raw, "t10k", toy_digits(100, 1)[0], np.full(100, 42)),
     "t10k-labels-idx1-ubyte"),
])
def test_bad_data_files_are_named_before_training(mnist_root: Path, tmp_path: Path, case: str, damage, file: str):
    raw = corrupt_copy(mnist_root, tmp_path)
    damage(raw)
    with pytest.raises(DataFilesError, match=re.escape(MESSAGES[case])) as err:
        MNISTDataModule(data_dir=str(tmp_path)).setup("fit")
    assert str(raw / file) in str(err.value)


def test_bad_data_file_through_the_cli_is_one_message(mnist_root: Path, workdir: Path,
                                                     capfd: pytest.CaptureFixture) -> None:
    raw = corrupt_copy(mnist_root, workdir / "data")
    (raw / "train-images-idx3-ubyte").write_bytes((raw / "train-images-idx3-ubyte").read_bytes()[:-100])
    assert lvae(*small_fit_args(workdir / "data")) == 2
    said = capfd.readouterr().err
    assert "Traceback" not in said and f"{raw / 'train-images-idx3-ubyte'} {MESSAGES['truncated']}" in said
    assert not list(workdir.glob("runs/*/checkpoints"))  # stopped before any training


@pytest.fixture(scope="module")
def z20_checkpoint(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cwd = tmp_path_factory.mktemp("ckpt")
    with working_in(cwd):
        assert lvae(*small_fit_args(mnist_root, "--trainer.max_epochs", "1")) == 0
    (run,) = run_dirs(cwd / "runs")
    return run / "checkpoints" / "last.ckpt"


@pytest.mark.parametrize(("case", "args", "named"), [
    ("other architecture", ["--model.latent_dim", "2"], "model.latent_dim: checkpoint 20, config 2"),
    ("other architecture", ["--model.architecture", "conv"], "model.architecture: checkpoint 'mlp', config 'conv'"),
    ("no such checkpoint", ["--ckpt_path", "nowhere/last.ckpt"], "nowhere/last.ckpt"),
    ("not a checkpoint", ["--ckpt_path", "{garbage}"], "garbage.ckpt"),
])
def test_mismatched_or_missing_checkpoints_are_refused_with_both_values(
        z20_checkpoint: Path, mnist_root: Path, workdir: Path, capfd: pytest.CaptureFixture, case: str,
        args: list[str], named: str) -> None:
    garbage = workdir / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    args = [a.format(garbage=garbage) for a in args]
    ckpt = [] if "--ckpt_path" in args else ["--ckpt_path", str(z20_checkpoint)]
    code = lvae("validate", "--data.data_dir", str(mnist_root), "--trainer.accelerator", "cpu", *ckpt, *args)
    said = capfd.readouterr().err
    assert code == 2 and "Traceback" not in said, said[-3000:]
    assert MESSAGES[case] in said and named in said


class WritesAFile:
    """Unpickling this runs code: it writes `marker`, as a malicious checkpoint would run anything."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(mnist_root: Path, workdir: Path,
                                                                       capfd: pytest.CaptureFixture,
                                                                       subcommand: str) -> None:
    marker, evil = workdir / "ran.txt", workdir / "shared.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"latent_dim": 20}, "x": WritesAFile(marker)}, evil)
    code = lvae(subcommand, "--data.data_dir", str(mnist_root), "--trainer.accelerator", "cpu", "--ckpt_path",
                str(evil))
    said = capfd.readouterr().err
    assert code == 2 and "Traceback" not in said, said[-3000:]
    assert f"{evil} {MESSAGES['untrusted checkpoint']} the Python object exec," in said
    assert not marker.exists()  # none of its code ran
    assert not (workdir / "runs").exists()


def test_load_from_checkpoint_takes_no_code_and_no_foreign_class_from_the_file(z20_checkpoint: Path,
                                                                               tmp_path: Path) -> None:
    from lvae import VAE, CheckpointError

    marker, evil = tmp_path / "ran.txt", tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "x": WritesAFile(marker)}, evil)
    with pytest.raises(CheckpointError, match="the Python object exec,"):
        VAE.load_from_checkpoint(evil)
    assert not marker.exists()
    # Plain values only, yet they name code to import: an instantiator, or a class that is not lvae's.
    checkpoint = torch.load(z20_checkpoint, weights_only=True)
    for hparams, named in (({"_instantiator": "os.system"}, "instantiator 'os.system'"),
                           ({"encoder": {"class_path": "evil.Encoder"}}, "encoder.class_path names the class")):
        path = tmp_path / "named.ckpt"
        torch.save({**checkpoint, "hyper_parameters": {**checkpoint["hyper_parameters"], **hparams}}, path)
        with pytest.raises(CheckpointError, match=re.escape(named)):
            VAE.load_from_checkpoint(path)
    # lvae's own checkpoint, callback states included, loads as tensors and plain values.
    assert VAE.load_from_checkpoint(z20_checkpoint).hparams.latent_dim == 20


def test_a_callback_value_refused_at_set_up_is_one_message(mnist_root: Path, workdir: Path,
                                                            capfd: pytest.CaptureFixture) -> None:
    tsne = json.dumps({"class_path": "lvae.callbacks.TSNEEmbedding",
                       "init_args": {"perplexity": 500, "max_points": 1000}})
    code = lvae(*small_fit_args(mnist_root, f"--trainer.callbacks+={tsne}"))
    said = capfd.readouterr().err
    assert code == 2 and "Traceback" not in said, said[-3000:]
    assert MESSAGES["perplexity"] in said and "TSNEEmbedding.max_points=1000" in said


def test_ckpt_path_last_without_any_run_says_so(mnist_root: Path, workdir: Path,
                                                 capfd: pytest.CaptureFixture) -> None:
    assert lvae(*small_fit_args(mnist_root, "--ckpt_path", "last")) == 2
    assert "no run under runs has a checkpoints/last.ckpt" in capfd.readouterr().err


class Blackhole:
    """A TCP server on loopback that accepts connections and never answers: a network that hangs."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                self.held.append(self.sock.accept()[0])
            except OSError:
                return

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


def test_online_wandb_without_network_falls_back_to_offline_in_bounded_time(mnist_root: Path, tmp_path: Path):
    hole = Blackhole()
    try:
        env = {**cli_env(), "WANDB_MODE": "online", "WANDB_API_KEY": "x" * 40,
               "WANDB_BASE_URL": f"http://127.0.0.1:{hole.port}"}
        start = time.monotonic()
        proc = run_lvae(small_fit_args(mnist_root, "--trainer.max_epochs", "1"), tmp_path, env=env, timeout=120)
        elapsed = time.monotonic() - start
    finally:
        hole.close()
    assert MESSAGES["no network"] in proc.stderr and "wandb sync" in proc.stderr
    (run,) = run_dirs(tmp_path / "runs")
    (wandb_run,) = read_run(run)
    assert wandb_run.values("val/loss")
    assert elapsed < 90  # the probe waits 5 s, not W&B's 90 s init timeout per attempt


def test_readme_table_quotes_what_users_see() -> None:
    readme = (REPO / "README.md").read_text()
    table = readme[readme.index("## What happens when"):]
    for case, phrase in MESSAGES.items():
        assert phrase in table, f"README 'What happens when...' lacks the {case} row quoting {phrase!r}"
