"""SIGTERM and Ctrl-C at the moments Lightning does not cover: each ends an lvae command with lvae's one line and the
shell's exit code, never a traceback. Each signal is sent after a line the process prints, never after a sleep."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import REPO, cli_env, small_fit_args


def stopped_while_starting(args: list[str], cwd: Path, signum: int) -> subprocess.CompletedProcess:
    """`lvae ARGS`, sent `signum` while it imports Lightning."""
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "signal_probe.py"), *args], cwd=cwd,
                            env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "importing lightning\n"
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.parametrize("subcommand", ["fit", "validate", "test", "predict"])
@pytest.mark.parametrize(("signum", "code", "said"), [(signal.SIGTERM, 143, "lvae: stopped by SIGTERM"),
                                                      (signal.SIGINT, 130, "lvae: stopped by Ctrl-C")])
def test_a_signal_while_lvae_starts_is_one_line(tmp_path: Path, subcommand: str, signum: int, code: int,
                                                said: str) -> None:
    proc = stopped_while_starting([subcommand, "--trainer.accelerator", "cpu"], tmp_path, signum)
    assert proc.returncode == code, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == said and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not list(tmp_path.iterdir())  # nothing was written


# validate and test run Lightning's one evaluation loop: its batch moment once (test), its end once (validate).
@pytest.mark.parametrize(("subcommand", "moment"), [("test", "batch"), ("predict", "batch"), ("validate", "end")])
def test_sigterm_during_an_evaluation_ends_it_as_one(mnist_root: Path, tmp_path: Path, subcommand: str,
                                                     moment: str) -> None:
    # Two batches of each split; "end" is after the last batch, where Lightning's loops no longer look.
    marker = f'--trainer.callbacks+={{"class_path": "stage_marker.StageMarker", "init_args": {{"moment": "{moment}"}}}}'
    proc = subprocess.Popen([sys.executable, "-m", "lvae", subcommand, "--data.data_dir", str(mnist_root),
                             "--data.val_fraction", "0.3", "--data.batch_size", "64", "--trainer.accelerator", "cpu",
                             "--trainer.logger", "false", "--trainer.enable_progress_bar", "false",
                             "--trainer.callbacks", "[]", marker], cwd=tmp_path,
                            env={**cli_env(), "PYTHONPATH": str(REPO / "tests")}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if line == f"at {moment}\n":
            break
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert err.strip().splitlines()[-1] == "lvae: stopped by SIGTERM" and "Traceback" not in err, err[-3000:]


@pytest.mark.parametrize("signum, code, said_last", [(signal.SIGTERM, 143, "lvae: stopped by SIGTERM\n"),
                                                      (signal.SIGINT, 130, "lvae: stopped by Ctrl-C\n")])
def test_a_signal_while_fit_waits_for_its_last_pictures_finishes_them(mnist_root: Path, tmp_path: Path, signum: int,
                                                                     code: int, said_last: str) -> None:
    # The last epoch's slow picture (2 s) is being drawn when the signal comes: Lightning has given its SIGTERM
    # handler back; Ctrl-C reaches Lightning's own handling, after training.
    from test_ddp_watch import wandb_closed

    slow = json.dumps({"class_path": "slow_picture.SlowPicture", "init_args": {"out": str(tmp_path / "marks"),
                                                                              "seconds": 2.0}})
    args = small_fit_args(mnist_root, "--run_id", "ending", "--trainer.callbacks+=lvae.callbacks.PriorSamples",
                          f"--trainer.callbacks+={slow}")
    proc = subprocess.Popen([sys.executable, "-m", "lvae", *args], cwd=tmp_path, stdout=subprocess.DEVNULL,
                            env={**cli_env(), "PYTHONPATH": str(REPO / "tests")}, stderr=subprocess.PIPE, text=True)
    said = []
    for line in proc.stderr:
        said.append(line)
        if line.startswith("lvae: drawing the last epoch's"):
            break
    proc.send_signal(signum)
    said += proc.stderr.readlines()
    proc.wait(timeout=120)
    printed = "".join(said)
    assert proc.returncode == code, printed[-3000:]
    assert said[-1] == said_last and "Traceback" not in printed, printed[-3000:]
    assert "Continue with" not in printed  # the run has finished: nothing to continue
    run = tmp_path / "runs" / "ending"
    for picture in ("slow", "prior_samples"):  # the last epoch drawn, and every evolution GIF put together
        assert (run / "latents" / picture / "epoch_001.png").is_file(), picture
        assert (run / "latents" / picture / "evolution.gif").is_file(), picture
    assert wandb_closed(run)


def test_picture_callbacks_hold_sigterm_at_the_end_of_fit_in_any_trainer(tmp_path: Path) -> None:
    # A plain Trainer: the process's own handler gets the SIGTERM, once the last pictures are drawn.
    import lightning as L
    from foreign_vae import ClassicVAE, loader, toy_digits
    from slow_picture import SlowPicture

    got, marks, last = [], tmp_path / "marks", tmp_path / "latents" / "slow" / "evolution.gif"
    # What the process's handler sees when SIGTERM reaches it: whether the last picture and its GIF are done.
    def note(signum, frame) -> None:
        got.append(last.is_file())

    found = signal.signal(signal.SIGTERM, note)

    def terminate_once_the_last_epoch_is_drawn() -> None:
        # Once the last epoch's drawing has begun and fit is over: the handler then is neither Lightning's (it calls
        # the process's handler at once, inside fit) nor the process's own (the window before the hold), but the
        # hold's. A slow machine can begin the drawing while fit is still tearing down.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            handler = signal.getsignal(signal.SIGTERM)
            if (marks / "started_1").exists() and handler is not note and "lightning" not in type(handler).__module__:
                os.kill(os.getpid(), signal.SIGTERM)
                return
            time.sleep(0.005)

    sender = threading.Thread(target=terminate_once_the_last_epoch_is_drawn, daemon=True)
    sender.start()
    try:
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                            callbacks=[SlowPicture(str(marks), seconds=1.0, skip_when_busy=False)])
        trainer.fit(ClassicVAE(), loader(*toy_digits(64, seed=0)), loader(*toy_digits(45, seed=1)))
        sender.join(timeout=30)
        assert got == [True]  # handed on once, after the last picture and the GIFs: not lost, not early
        assert (tmp_path / "latents" / "slow" / "epoch_001.png").is_file()
        assert (tmp_path / "latents" / "slow" / "evolution.gif").is_file()
    finally:
        given_back = signal.signal(signal.SIGTERM, found)
    assert given_back is note  # lvae's hold gave back the handler it found


@pytest.mark.parametrize(("signum", "code", "said"), [(signal.SIGTERM, 143, "lvae: stopped by SIGTERM"),
                                                      (signal.SIGINT, 130, "interrupted at epoch 0")])
def test_a_signal_during_fits_validation_saves_last_ckpt_and_ends_as_one(mnist_root: Path, tmp_path: Path,
                                                                         signum: int, code: int, said: str) -> None:
    marker = '--trainer.callbacks+={"class_path": "stage_marker.StageMarker", "init_args": {"moment": "batch"}}'
    args = small_fit_args(mnist_root, "--run_id", "mid", "--data.val_fraction", "0.3", "--trainer.logger", "false",
                          marker)
    proc = subprocess.Popen([sys.executable, "-m", "lvae", *args], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
                            env={**cli_env(), "PYTHONPATH": str(REPO / "tests")}, stdout=subprocess.PIPE)
    for line in proc.stdout:
        if line == "at batch\n":
            break
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code and said in err and "Traceback" not in err, err[-3000:]
    assert (tmp_path / "runs" / "mid" / "checkpoints" / "last.ckpt").is_file()  # the interrupted state, to continue
