"""The shared picture plumbing: a failing picture is a warning, never the end of training."""

import functools
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import REPO, cli_env, notices, run_dirs, small_fit_args
from lightning.pytorch.loggers import CSVLogger
from PIL import Image
from wandb_run import read_run

from lvae import VAE, MNISTDataModule
from lvae.drawing import DRAWING_NICENESS, DrawingProcess, DrawingStopped, Drawn, Job
from lvae.picture_callback import PictureCallback


def explode(where: str) -> None:
    raise RuntimeError(f"{where} exploded")


class Broken(PictureCallback):
    """Fails in the training loop (`prepare`), in the drawing job, or hands over a job that cannot be sent to the
    drawing process, as a buggy picture would."""

    names = ("broken",)

    def __init__(self, where: str, background: bool):
        super().__init__(background=background)
        self.where = where

    def prepare(self, trainer, pl_module, latents, epoch):
        if self.where == "prepare":
            raise RuntimeError("prepare exploded")
        if self.where == "unpicklable":
            return lambda: explode("draw")  # a lambda cannot be pickled
        return functools.partial(explode, "draw")


@pytest.mark.parametrize(("where", "background", "message"), [
    ("prepare", True, r"RuntimeError: prepare exploded\)"),
    ("draw", True, r"RuntimeError: draw exploded\)"),
    ("draw", False, r"RuntimeError: draw exploded\)"),
    ("unpicklable", True, r"pickle.*prepare` must return a picklable job"),
])
def test_a_picture_that_raises_does_not_stop_fit(mnist_root: Path, tmp_path: Path, where: str, background: bool,
                                                 message: str):
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(tmp_path), enable_progress_bar=False,
                        callbacks=[Broken(where, background)], default_root_dir=tmp_path)
    with notices(rf"Broken: the picture of epoch \d was skipped \(.*{message}"):
        trainer.fit(VAE(latent_dim=4), MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
    assert trainer.current_epoch == 2 and torch.isfinite(trainer.callback_metrics["val/loss"])
    assert list(tmp_path.glob("**/checkpoints/*.ckpt"))  # the checkpoints were written as usual


def draw_or_die(epoch: int, done: str) -> Drawn:
    if epoch == 0:
        os.kill(os.getpid(), signal.SIGKILL)  # as the out-of-memory killer would
    Path(done).write_text(str(epoch))
    return Drawn()


class Killed(PictureCallback):
    """Its drawing process is killed while drawing epoch 0."""

    def __init__(self, done: Path):
        super().__init__()
        self.done = done

    def prepare(self, trainer, pl_module, latents, epoch):
        return functools.partial(draw_or_die, epoch, str(self.done))


def test_a_killed_drawing_process_costs_one_picture_and_a_new_one_draws_the_next(mnist_root: Path,
                                                                                  tmp_path: Path) -> None:
    done = tmp_path / "drawn"
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, callbacks=[Killed(done)])
    with notices(r"Killed: the picture of epoch 0 was skipped \(the drawing process stopped "
                 r"\(killed by SIGKILL\); the next picture starts a new one\)"):
        trainer.fit(VAE(latent_dim=4), MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
    assert trainer.current_epoch == 2
    assert done.read_text() == "1"  # epoch 1 was drawn by a new drawing process


def test_a_drawing_process_that_dies_or_cannot_start_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    drawing = DrawingProcess()
    try:
        died = drawing.submit(Job("drawing_probe:die", {"words": "Fatal error: out of cheese", "code": 3}))
        with pytest.raises(DrawingStopped, match=r"^the drawing process stopped \(exit code 3: Fatal error: out of "
                                                 r"cheese\); the next picture starts a new one$"):
            died.result(timeout=60)
        assert drawing.submit(Job("drawing_probe:settings")).result(timeout=60).scalars  # a new one
    finally:
        drawing.close()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    with pytest.raises(DrawingStopped, match=r"^the drawing process could not be started \(\[Errno 2\] No such file"):
        DrawingProcess().submit(Job("drawing_probe:settings"))


def draw_slowly(seconds: float) -> Drawn:
    time.sleep(seconds)
    return Drawn()


class Slow(PictureCallback):
    """Draws for a minute, and training fails while it draws; records the drawing process's pid."""

    pid = None

    def prepare(self, trainer, pl_module, latents, epoch):
        return functools.partial(draw_slowly, 60.0)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if trainer.current_epoch == 1:
            (self.pid,) = self._shared.drawing.pids
            raise RuntimeError("training failed")


def test_an_error_in_training_stops_the_drawing_process_instead_of_waiting_for_it(mnist_root: Path) -> None:
    slow = Slow()
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, callbacks=[slow])
    threads, start = torch.get_num_threads(), time.perf_counter()
    with pytest.raises(RuntimeError, match="training failed"):
        trainer.fit(VAE(latent_dim=4), MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
    assert time.perf_counter() - start < 40  # not the minute the picture of epoch 0 would take
    assert slow.pid is not None and not is_running(slow.pid)
    assert torch.get_num_threads() == threads  # the core lent to the drawing process is given back


def report_pid() -> Drawn:
    return Drawn(scalars={"pid": float(os.getpid())})


class DrawnWhere(PictureCallback):
    """Records which process drew its picture."""

    def __init__(self):
        super().__init__()
        self.pids: list[int] = []

    def prepare(self, trainer, pl_module, latents, epoch):
        return report_pid

    def _log(self, drawn: Drawn, epoch: int) -> None:
        self.pids.append(int(drawn.scalars["pid"]))


def test_the_lvae_command_starts_the_drawing_process_early_and_the_fit_draws_with_it(
        mnist_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lvae.command_line import read_command_line
    from lvae.drawing import EarlyDrawing
    from lvae.figures import DRAWING_STACK
    from lvae.runs import RANK_VARIABLES

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    for argv, rank in ((["fit", "--help"], None), (["fit", "--print_config"], None), (["test"], None),
                       (["fit"], ("LOCAL_RANK", "1")), (["fit"], ("RANK", "3")), (["fit"], ("GROUP_RANK", "1"))):
        if rank:
            monkeypatch.setenv(*rank)
        with EarlyDrawing(read_command_line(argv), DRAWING_STACK) as early:
            assert early.process is None, argv  # nothing to draw, or not the rank that draws
        if rank:
            monkeypatch.delenv(rank[0])
    # Started, and not taken by any trainer: stopped with the command.
    with EarlyDrawing(read_command_line(["validate"]), DRAWING_STACK) as early:
        unused = early.process.pid
    assert early.process is None and not is_running(unused)
    with EarlyDrawing(read_command_line(["fit", "--config", "mnist"]), DRAWING_STACK) as early:
        pid = early.process.pid
        assert pid is not None and is_running(pid)
        callback = DrawnWhere()
        trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_progress_bar=False,
                            enable_checkpointing=False, callbacks=[callback])
        trainer.fit(VAE(latent_dim=4), MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
        assert callback.pids == [pid, pid]  # taken over by the first trainer, not a second process
        assert early.process is None and not is_running(pid)  # closed with the fit, as its own would be
    second = DrawnWhere()
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, callbacks=[second])
    trainer.fit(VAE(latent_dim=4), MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
    assert second.pids and second.pids[0] != pid  # outside the command, a trainer starts its own


def is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a child that exited but was not yet reaped is not alive
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def shipped_pictures() -> list[type[PictureCallback]]:
    from lvae import callbacks

    return [getattr(callbacks, name) for name in callbacks.__all__
            if issubclass(getattr(callbacks, name), PictureCallback)]


def test_every_figure_a_shipped_picture_names_is_a_function_and_the_lvae_command_imports_it_early() -> None:
    # A typo in a callback's `figure` would otherwise show only as a warning from the drawing process, each epoch.
    import importlib

    from lvae import figures
    from lvae.figures import DRAWING_STACK

    pictures = shipped_pictures()
    assert len(pictures) == 8, pictures
    named = {figure for picture in pictures for figure in picture.figures()}
    for figure in sorted(named):
        module, _, name = figure.partition(":")
        assert callable(getattr(importlib.import_module(module), name, None)), figure
    assert named == set(figures.SHIPPED)  # the list the `lvae` command reads before it imports any callback
    assert {module for picture in pictures for module in picture.figure_modules()} <= set(DRAWING_STACK)


def test_tensorboard_users_get_the_pictures_as_images(mnist_root: Path, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lvae.callbacks import PriorSamples

    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=logger, enable_progress_bar=False,
                        enable_checkpointing=False, callbacks=[PriorSamples(background=True)])
    trainer.fit(VAE(latent_dim=4), MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("latents/prior_samples")
    assert [image.step for image in images] == [0, 1]  # one per epoch, on the epoch axis
    (png,) = tmp_path.glob("**/prior_samples/epoch_000.png")
    with Image.open(png) as picture:
        assert (images[0].width, images[0].height) == picture.size  # the PNG on disk, as it is
    assert (tmp_path / "latents" / "prior_samples" / "epoch_001.png").is_file()  # and the PNG beside it


def test_the_drawing_process_priority_is_lowered_and_never_raised() -> None:
    code = ("import os; from lvae.drawing import lower_priority; lower_priority(); "
            "print(os.getpriority(os.PRIO_PROCESS, 0))")
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(plain) == max(mine, DRAWING_NICENESS)
    # Started under `nice -n 15`: kept there (an unprivileged user could not raise it back), no error.
    niced = subprocess.run(["nice", "-n", "15", sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout
    assert int(niced) == min(19, mine + 15)


def test_the_drawing_process_imports_neither_torch_nor_lightning_and_runs_one_native_thread() -> None:
    # Either import would cost training CPU on 2 cores: torch 2 s to import and 0.5 s to exit, Lightning 6 s. More
    # OpenMP threads than the one core training leaves wait on one another (0.13 s a neighbour search, not 0.02).
    # It runs niced, leaves Ctrl-C to the training process (which saves last.ckpt), and runs no file as __main__.
    from lvae.figures import DRAWING_STACK

    assert "lvae.figures.tsne" in DRAWING_STACK and "openTSNE" in DRAWING_STACK
    drawing = DrawingProcess()
    try:
        drawing.submit(Job("lvae.drawing:import_modules", {"modules": DRAWING_STACK})).result()
        held = drawing.submit(Job("drawing_probe:heavy_modules")).result(timeout=120).scalars
        pools = drawing.submit(Job("drawing_probe:native_threads")).result(timeout=120).scalars
        settings = drawing.submit(Job("drawing_probe:settings")).result(timeout=120).scalars
    finally:
        drawing.close()
    assert held == {}
    assert settings == {"niceness": max(os.getpriority(os.PRIO_PROCESS, 0), DRAWING_NICENESS), "sigint_ignored": 1.0,
                        "main_is_a_file": 0.0}
    assert any(name.startswith("openmp") for name in pools), pools  # scikit-learn's OpenMP pool was loaded
    assert set(pools.values()) == {1.0}, pools


def slow_picture_args(mnist_root: Path, out: Path, seconds: float, skip_when_busy: bool = True) -> list[str]:
    slow = json.dumps({"class_path": "slow_picture.SlowPicture",
                       "init_args": {"out": str(out), "seconds": seconds, "skip_when_busy": skip_when_busy}})
    return small_fit_args(mnist_root, "--trainer.max_epochs", "400", f"--trainer.callbacks+={slow}")


def start_lvae(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**cli_env(), "PYTHONPATH": str(REPO / "tests")}
    return subprocess.Popen([sys.executable, "-m", "lvae", *args], cwd=cwd, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"lvae exited {proc.returncode} early: {proc.stderr.read()[-3000:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path} after {timeout} s")
        time.sleep(0.05)


# SIGTERM, as a scheduler sends it; Ctrl-C takes the same on_exception path, and is sent at other moments in
# test_faults and test_signals.
@pytest.mark.parametrize(("sig", "exit_code"), [(signal.SIGTERM, 143)])
def test_a_signal_while_a_picture_is_drawn_keeps_last_ckpt_and_every_epochs_picture(
        mnist_root: Path, tmp_path: Path, sig: int, exit_code: int) -> None:
    out = tmp_path / "slow"
    # Every epoch drawn: epoch 1's picture is drawn after epoch 0's, which takes longer than an epoch.
    proc = start_lvae(slow_picture_args(mnist_root, out, seconds=1.5, skip_when_busy=False), tmp_path)
    wait_for_file(out / "started_1", proc)  # epoch 1's picture is being drawn, epoch 0's is done
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=90)[1]
    assert proc.returncode == exit_code and "Traceback" not in stderr, stderr[-3000:]
    assert "was skipped" not in stderr, stderr[-3000:]
    found = re.search(r"interrupted at epoch (\d+), step (\d+); saved (\S+last\.ckpt)", stderr)
    assert found, stderr[-3000:]
    assert torch.load(found.group(3), weights_only=True)["global_step"] == int(found.group(2))
    (run,) = run_dirs(tmp_path / "runs")
    (wandb_run,) = read_run(run)
    validated = {row["epoch"] for row in wandb_run.rows_with("val/loss")}
    drawn = {row["epoch"] for row in wandb_run.rows_with("latents/slow/_type")}
    # The picture being drawn at the signal was finished and logged: the evolution has no gap.
    assert validated and drawn == validated, (validated, drawn)
    assert sorted(p.name for p in (run / "latents" / "slow").glob("epoch_*.png")) == \
        [f"epoch_{e:03d}.png" for e in sorted(validated)]


def descendants(pid: int) -> set[int]:
    """Every process started by `pid`, and by those, recursively (Linux /proc)."""
    found, todo = set(), [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            children = (task / "children").read_text().split() if (task / "children").exists() else []
            for child in map(int, children):
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"  # a zombie has ended
    except FileNotFoundError:
        return False


def test_a_killed_fit_leaves_no_drawing_process_behind(mnist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "slow"
    proc = start_lvae(slow_picture_args(mnist_root, out, seconds=60.0), tmp_path)
    wait_for_file(out / "started_0", proc)
    helpers = descendants(proc.pid)
    drawing = int((out / "started_0").read_text())
    assert drawing in helpers  # the drawing process
    proc.send_signal(signal.SIGKILL)  # as the out-of-memory killer or a scheduler would
    proc.wait(timeout=30)
    deadline = time.monotonic() + 5
    while any(alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in helpers if alive(pid)]  # nothing of the run is left running


def test_the_uncertainty_numbers_leave_the_drawing_stack_out_of_the_training_process() -> None:
    # They are measured in the training loop: scikit-learn (and its OpenMP pool beside torch's) stays in the drawing
    # process.
    code = ("import sys, torch; from lvae.callbacks import LatentUncertainty; from lvae.latents import Latents; "
            "n = 40; g = torch.Generator().manual_seed(0); "
            "latents = Latents(epoch=0, index=torch.arange(n), label=torch.arange(n) % 4, "
            "mu=torch.randn(n, 3, generator=g), logvar=torch.zeros(n, 3), kl=torch.zeros(n), "
            "image=torch.zeros(n, 1, 8, 8, dtype=torch.uint8)); "
            "print('uncertainty/spearman_disagreement' in LatentUncertainty(k_neighbours=5).measure(latents)); "
            "print([m for m in ('sklearn', 'openTSNE') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=cli_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.splitlines() == ["True", "[]"], proc.stdout
