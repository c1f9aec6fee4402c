"""SIGTERM and Ctrl-C at the moments Lightning does not cover: each ends an lvae command with lvae's one line and the
shell's exit code, never a traceback. Each signal is sent after a line the process prints, never after a sleep."""

import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, cli_env


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


@pytest.mark.parametrize(("subcommand", "moment"), [("validate", "batch"), ("test", "batch"), ("predict", "batch"),
                                                    ("validate", "end")])
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
