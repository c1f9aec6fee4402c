"""Fixtures: tiny MNIST-format IDX files written here, real digits from ../shared/data when present, and a way
to run the `lvae` command as a user does and read back what it wrote."""

import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from lvae.data import read_idx_pair, write_idx

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist-t10k"


def toy_digits(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Ten classes of 28x28 images a VAE can tell apart: class c is a bright bar at a class-specific place,
    with per-image jitter and noise, so latents cluster by label."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 30, size=(n, 28, 28)).astype(np.float64)
    for i, c in enumerate(labels):
        r, col = 3 + 2 * c + rng.integers(-1, 2), 4 + rng.integers(0, 10)
        images[i, r:r + 3, col:col + 12 + c % 4] = 255 * rng.uniform(0.7, 1.0)
    return images.clip(0, 255).astype(np.uint8), labels


@pytest.fixture(scope="session")
def mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir holding MNIST/raw/ with 360 training and 100 test images."""
    root = tmp_path_factory.mktemp("data")
    raw = root / "MNIST" / "raw"
    write_idx(raw, "train", *toy_digits(360, seed=0))
    write_idx(raw, "t10k", *toy_digits(100, seed=1))
    return root


@pytest.fixture(scope="session")
def real_mnist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real digits: the official MNIST test set split 8,000 (as train) / 2,000 (as test)."""
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST digits not found at {SHARED_MNIST} (only present beside the lvae checkout here)")
    images, labels = read_idx_pair(SHARED_MNIST / "t10k-images-idx3-ubyte.gz",
                                   SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    root = tmp_path_factory.mktemp("real")
    write_idx(root / "MNIST" / "raw", "train", images[:8000], labels[:8000])
    write_idx(root / "MNIST" / "raw", "t10k", images[8000:], labels[8000:])
    return root


class LvaeLines(logging.Handler):
    """What lvae says (its `lvae` logger: lines and notices) while in a `with`, as the user reads it."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())

    def __enter__(self) -> list[str]:
        logging.getLogger("lvae").addHandler(self)
        return self.lines

    def __exit__(self, *exc) -> None:
        logging.getLogger("lvae").removeHandler(self)


@contextmanager
def notices(pattern: str) -> Iterator[list[str]]:
    """Assert that lvae says a line matching `pattern` while the block runs, as a sentence starting "lvae: " (not a
    Python warning); yields every line it said."""
    with LvaeLines() as lines:
        yield lines
    assert any(re.search(pattern, line) for line in lines), f"no lvae line matches {pattern!r}: {lines}"
    assert all(line.startswith("lvae: ") for line in lines), lines


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "LVAE_"))}
    env.update(WANDB_MODE="offline", WANDB_SILENT="true", PYTHONUNBUFFERED="1")
    return env


LVAE_SCRIPT = Path(sys.executable).parent / "lvae"  # the console script pip installed


def run_lvae(args: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 240,
             check: bool = True, script: bool = False) -> subprocess.CompletedProcess:
    """Run `python -m lvae ARGS` (with `script`, the installed `lvae` command) in `cwd` as a user would, with W&B
    offline."""
    command = [str(LVAE_SCRIPT)] if script else [sys.executable, "-m", "lvae"]
    proc = subprocess.run([*command, *args], cwd=cwd, env=env or cli_env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lvae {' '.join(args)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def lvae(*args: str) -> int:
    """`lvae ARGS` in this process, as a notebook calls it; its exit code. Much faster than `run_lvae` (no import of
    Lightning, torch and W&B per call): for what the command writes and says, not for signals or start-up."""
    from lvae.cli import main

    try:
        main(list(args))
    except SystemExit as exit:
        return exit.code or 0
    return 0


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder, made the current one, with W&B offline (not silent: lvae quiets offline W&B itself),
    as `lvae` in-process needs."""
    cwd = tmp_path / "work"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("WANDB_MODE", "offline")
    return cwd


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB filesystem (tmpfs, mounted as root does in CI): a disk that fills up."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted here ({mounted.stderr.decode().strip()}): needs root")
    yield disk
    subprocess.run(["umount", str(disk)], check=True)


def small_fit_args(data_dir: Path, *extra: str, pictures: bool = False) -> list[str]:
    """A short CPU run on the fixture: the arguments every CLI test shares. Without `pictures`, none of the default
    config's pictures (`lvae fit` draws every picture unless told otherwise); tests add those they need."""
    return ["fit", "--data.data_dir", str(data_dir), "--data.batch_size", "64", "--trainer.max_epochs", "2",
            "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            *([] if pictures else ["--trainer.callbacks", "[]"]), *extra]


def every_epoch_config(folder: Path) -> Path:
    """A config to give after configs/mnist.yaml: its picture callbacks with `skip_when_busy: false`, so that every
    epoch is drawn whatever the machine's pace, as a test that waits for or compares each epoch's pictures needs."""
    import yaml

    callbacks = yaml.safe_load((REPO / "configs" / "mnist.yaml").read_text())["trainer"]["callbacks"]
    for callback in callbacks:
        if callback["class_path"] != "lvae.callbacks.LatentExport":  # the one that draws nothing
            callback.setdefault("init_args", {})["skip_when_busy"] = False
    path = folder / "every_epoch.yaml"
    path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}, sort_keys=False))
    return path


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def assert_gif_shows_each_epoch(folder: Path, epochs: int) -> None:
    """`folder`/evolution.gif has one frame per epoch PNG, in order, each showing that PNG's pixels (up to the
    256-colour palette of a GIF frame) at its top left, on white where the GIF is larger than the PNG."""
    from PIL import Image, ImageSequence

    pngs = sorted(folder.glob("epoch_*.png"))
    assert len(pngs) == epochs, pngs
    with Image.open(folder / "evolution.gif") as gif:
        assert gif.n_frames == epochs
        for png, frame in zip(pngs, ImageSequence.Iterator(gif)):
            with Image.open(png) as drawn:
                pixels = np.asarray(drawn.convert("RGB"), dtype=np.int16)
            shown = np.asarray(frame.convert("RGB"), dtype=np.int16)
            height, width = pixels.shape[:2]
            assert shown.shape[0] >= height and shown.shape[1] >= width, png
            assert np.abs(shown[:height, :width] - pixels).mean() < 4, f"the GIF's frame of {png.name} is not that PNG"
            rest = np.concatenate([shown[height:].reshape(-1, 3), shown[:height, width:].reshape(-1, 3)])
            assert (rest >= 250).all(), f"the GIF's frame of {png.name} is not on white"


_RUNS_A_COMMAND: dict[str, bool] = {}


def pytest_collection_modifyitems(items: list) -> None:
    """Mark `command` the tests of modules that start the lvae command or another process: `make test-fast` runs the
    rest, in-process, after every change. Those modules go first (in their order, each module's tests in theirs):
    `make test` hands each of its workers a module at a time, and the long ones started first leave the many short
    in-process ones to even out the end, rather than one worker finishing a long module alone."""
    import inspect

    for item in items:
        module = item.module.__name__
        if module not in _RUNS_A_COMMAND:
            source = inspect.getsource(item.module)
            _RUNS_A_COMMAND[module] = any(call in source for call in ("run_lvae(", "subprocess.", "Popen("))
        if _RUNS_A_COMMAND[module]:
            item.add_marker(pytest.mark.command)
    items.sort(key=lambda item: not _RUNS_A_COMMAND[item.module.__name__])  # stable: the order within is kept


class Said:
    """What one in-process `lvae` command ended with: its exit code, its stdout, and everything else it said (printed
    lines, lvae's and Lightning's log lines, warnings) in one text, as a terminal shows them."""

    def __init__(self, code: int, stdout: str, stderr: str) -> None:
        self.returncode, self.stdout, self.stderr = code, stdout, stderr


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: dict[int, logging.LogRecord] = {}  # by id: a record that propagates reaches it twice

    def emit(self, record: logging.LogRecord) -> None:
        self.records.setdefault(id(record), record)


def lvae_said(*args: str) -> Said:
    """`lvae ARGS` in this process (see `lvae`), keeping what it says (capfd and caplog cannot go into module-scoped
    fixtures), and with W&B's service stopped when it returns, as the command's exit stops it. Run it in a folder set up
    as `workdir` does (`working_in`)."""
    import io
    import warnings
    from contextlib import redirect_stderr, redirect_stdout

    keep = _Keep()
    # Lightning's logger stops propagating when it was imported before the root logger had a handler.
    loggers = [logging.getLogger(), logging.getLogger("lightning.pytorch"), logging.getLogger("lvae")]
    for logger in loggers:
        logger.addHandler(keep)
    out, err, code = io.StringIO(), io.StringIO(), 1  # 1: what the command's exit says of an uncaught error
    try:
        with warnings.catch_warnings(record=True) as caught, redirect_stdout(out), redirect_stderr(err):
            warnings.simplefilter("always")
            code = lvae(*args)
    finally:
        for logger in loggers:
            logger.removeHandler(keep)
        # lvae closed its W&B run; W&B's service, shared by every run of a process, stays until the process exits:
        # stopped here as that exit would, so that its log of the next command is not linked from this one's folder.
        wandb = sys.modules.get("wandb")
        if wandb is not None:
            if wandb.run is not None:  # the command failed before lvae could close it
                wandb.finish(exit_code=code)
            wandb.teardown()
    lines = [record.getMessage() for record in keep.records.values()] + [str(w.message) for w in caught]
    return Said(code, out.getvalue(), err.getvalue() + "".join(f"{line}\n" for line in lines))


@contextmanager
def working_in(folder: Path) -> Iterator[Path]:
    """`folder` as the current one, with W&B offline (as the `workdir` fixture sets them), for a module-scoped
    fixture's in-process `lvae` commands."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setenv("WANDB_MODE", "offline")
        yield folder
