"""The one way a picture leaves lvae, and the plumbing every picture callback shares.

`PictureSink` writes a figure as a PNG under the run folder (``latents/<name>/epoch_<NNN>.png``), as a W&B image
on the ``epoch`` axis and as a TensorBoard image, for whichever of those loggers are present. `PictureCallback`
decides when to draw, draws off the training loop and turns a failing picture into a warning.
"""

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import numpy as np
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from PIL import Image
from typing_extensions import override

from lvae.errors import ConfigError
from lvae.latents import Latents

PNG_DPI = 100


# Drawing threads of all picture callbacks take turns, so pictures use at most one core beside training. Measured
# on 2 cores (3 epochs of full Fashion-MNIST, every picture on): 32.1 s with four threads drawing at once, 26-28 s
# taking turns, 12.5 s with no pictures. Also dropping torch to cores-1 threads while drawing made no difference
# beyond noise (median 30.0 s against 28.4 s), so it is not done.
DRAWING_TURN = threading.Lock()


class PictureSink:
    """Sends pictures and per-epoch scalars to disk and to the trainer's loggers. Only rank zero uses it."""

    def __init__(self, trainer: "L.Trainer", root: Path):
        self.trainer = trainer
        self.root = Path(root)
        self._lock = threading.Lock()  # a drawing thread and the training loop may log at the same time
        self._declared: set[str] = set()
        self._owner = threading.get_ident()  # the training-loop thread: the sink is made in `setup`
        self._held: list[tuple[dict[str, float], int]] = []  # scalars for non-W&B loggers, from a drawing thread

    def _wandb(self) -> list[Any]:
        return [lg.experiment for lg in self.trainer.loggers if isinstance(lg, WandbLogger)]

    def _declare(self, run: Any, key: str) -> None:
        # Pictures and their scalars go on an `epoch` axis, so W&B's slider replays the evolution epoch by epoch
        # and never sees a step that goes backwards.
        if key not in self._declared:
            run.define_metric("epoch")
            run.define_metric(key, step_metric="epoch")
            self._declared.add(key)

    def png_path(self, name: str, epoch: int) -> Path:
        return self.root / "latents" / name / f"epoch_{epoch:03d}.png"

    def log_figure(self, name: str, figure: Figure, epoch: int, caption: Optional[str] = None) -> Path:
        """Write `figure` as the PNG of `name` for `epoch` and log it to every picture-taking logger."""
        path = self.png_path(name, epoch)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp.png")
        figure.savefig(tmp, dpi=PNG_DPI)
        tmp.replace(path)  # a reader never sees half a PNG
        figure.clear()  # matplotlib.figure.Figure is not tracked by pyplot: dropping it frees it
        with self._lock:
            for run in self._wandb():
                import wandb

                self._declare(run, f"latents/{name}")
                run.log({f"latents/{name}": wandb.Image(str(path), caption=caption), "epoch": epoch})
            for logger in self.trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    pixels = np.asarray(Image.open(path).convert("RGB"))
                    logger.experiment.add_image(f"latents/{name}", pixels, global_step=epoch, dataformats="HWC")
        return path

    def log_scalars(self, values: dict[str, float], epoch: int) -> None:
        """Per-epoch numbers: on W&B's epoch axis, and as ordinary metrics (with `epoch`) for other loggers."""
        with self._lock:
            for run in self._wandb():
                for key in values:
                    self._declare(run, key)
                run.log({**values, "epoch": epoch})
            self._held.append(({**values, "epoch": epoch}, self.trainer.global_step))
        if threading.get_ident() == self._owner:
            self.flush()

    def flush(self) -> None:
        """Hand held scalars to the non-W&B loggers, on the training-loop thread only: CSVLogger.save() is not
        thread-safe (a row appended while it writes raises "dict contains fields not in fieldnames", or is lost)."""
        with self._lock:
            held, self._held = self._held, []
        for values, step in held:
            for logger in self.trainer.loggers:
                if not isinstance(logger, WandbLogger):
                    logger.log_metrics(values, step=step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], epoch: int) -> None:
        """A W&B table (W&B's embedding projector reads tables of vectors); other loggers have no tables."""
        with self._lock:
            for run in self._wandb():
                import wandb

                self._declare(run, key)
                run.log({key: wandb.Table(columns=columns, data=rows), "epoch": epoch})

    def animate(self, name: str, frame_ms: int = 500) -> Optional[Path]:
        """Turn every epoch's PNG of `name` into `latents/<name>/evolution.gif` and log it."""
        frames = sorted(self.png_path(name, 0).parent.glob("epoch_*.png"))
        if len(frames) < 2:
            return None
        images = [Image.open(f).convert("RGB") for f in frames]
        size = images[0].size
        images = [im if im.size == size else im.resize(size) for im in images]
        path = frames[0].parent / "evolution.gif"
        images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
        with self._lock:
            for run in self._wandb():
                import wandb

                run.log({f"latents/{name}/evolution": wandb.Video(str(path), format="gif")})
        return path


class PictureCallback(Callback):
    """Base of the latent picture callbacks: when to draw, drawing in the background, failures as warnings.

    Subclasses implement `prepare`, which runs on rank zero in the training process (model work such as
    decoding, under inference mode) and returns a function that draws and logs through `self.sink`. That
    function runs on a background thread, so t-SNE and matplotlib do not stall training; it is joined before
    the next one starts, at the end of fit and on an exception. State that a drawing updates (a t-SNE map) is
    saved as of the last finished drawing, so a checkpoint never waits for one.

    Args:
        every_n_epochs: draw every n-th validation epoch.
        background: draw on a background thread (False draws in the training loop, e.g. for debugging).
    """

    names: tuple[str, ...] = ()  # picture names this callback writes; each gets an evolution GIF at fit end

    def __init__(self, every_n_epochs: int = 1, background: bool = True):
        if every_n_epochs < 1:
            raise ConfigError(f"{type(self).__name__}.every_n_epochs={every_n_epochs} must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.background = background
        self.sink: Optional[PictureSink] = None
        self._executor: Optional[ThreadPoolExecutor] = None
        self._pending: Optional[Future] = None

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        root = trainer.log_dir or trainer.default_root_dir  # a broadcast: resolved here, on every rank, once
        self.sink = PictureSink(trainer, Path(root))

    def _due(self, trainer: "L.Trainer") -> bool:
        if trainer.sanity_checking:
            return False
        if trainer.state.fn != "fit":
            return True  # `lvae validate --ckpt_path ...` draws the checkpoint's pictures once
        return (trainer.current_epoch + 1) % self.every_n_epochs == 0

    @override
    def on_validation_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if not self._due(trainer):
            return
        latents = pl_module.validation_latents()  # a collective: every rank takes part, rank zero draws
        if not trainer.is_global_zero:
            return
        self.join()
        epoch = trainer.current_epoch
        try:
            draw = self.prepare(trainer, pl_module, latents, epoch)
        except Exception as err:  # a picture must never end training
            self._warn(epoch, err)
            return
        if draw is None:
            return
        if not self.background:
            self._run(draw, epoch)
            return
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=type(self).__name__)
        self._pending = self._executor.submit(self._run_in_turn, draw, epoch)

    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Callable[[], None]]:
        """Do the model work for `epoch` and return the function that draws (None: nothing to draw)."""
        raise NotImplementedError

    def _run_in_turn(self, draw: Callable[[], None], epoch: int) -> None:
        with DRAWING_TURN:
            self._run(draw, epoch)

    def _run(self, draw: Callable[[], None], epoch: int) -> None:
        try:
            draw()
        except Exception as err:
            self._warn(epoch, err)

    def _warn(self, epoch: int, err: BaseException) -> None:
        rank_zero_warn(f"{type(self).__name__}: the picture of epoch {epoch} was skipped ({type(err).__name__}: "
                       f"{err}); training goes on")

    def join(self) -> None:
        """Wait for the picture being drawn, if any."""
        if self._pending is not None:
            self._pending.result()
            self._pending = None
        if self.sink is not None:
            self.sink.flush()

    @override
    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.join()
        if trainer.is_global_zero and self.sink is not None:
            for name in self.names:
                try:
                    self.sink.animate(name)
                except Exception as err:
                    rank_zero_warn(f"{type(self).__name__}: no evolution GIF for {name} ({err})")

    @override
    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if trainer.state.fn != "fit":
            self.join()  # `lvae validate` draws once and must finish before the process ends

    @override
    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self.join()

    @override
    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self.join()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
