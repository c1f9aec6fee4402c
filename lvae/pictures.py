"""The one way a picture leaves lvae, and the plumbing every picture callback shares.

`PictureSink` logs a drawn PNG (``latents/<name>/epoch_<NNN>.png`` under the run folder) as a W&B image on the
``epoch`` axis and as a TensorBoard image, for whichever of those loggers are present. `PictureCallback` decides
when to draw, hands the drawing to a separate low-priority process and turns a failing picture into a warning.
"""

import functools
import multiprocessing
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, Callable, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from PIL import Image
from typing_extensions import override

from lvae.errors import ConfigError
from lvae.figures import PNG_DPI, Drawn, animate, import_modules, lower_priority, run_job, start_drawing_process
from lvae.latents import Latents

__all__ = ["PNG_DPI", "Drawn", "DrawingProcess", "PictureCallback", "PictureSink"]


# Drawing runs in one separate process, at a lower priority than training, and while it draws training leaves
# it a core. Measured on 2 cores (an MLP VAE training step of 4.8 ms alone, 6.5 ms on one thread): a drawing
# *thread* made every step 24-85 ms, because matplotlib holds the GIL that each of training's small torch calls
# needs back (a shorter sys.setswitchinterval still left 12-25 ms); a drawing process beside training's two
# threads made it 26 ms at normal priority (torch's OpenMP threads wait for a core at every op) and 5.4-5.8 ms
# at nice 10, but then drawing got a fifth of a core and fell behind; beside one training thread, 6.5 ms.
class DrawingProcess:
    """The one drawing process of this training process (rank zero's), started on first use and shared by every
    picture callback; jobs run one at a time, in the order they were sent. "spawn" rather than fork: the
    training process holds threads (W&B, the data path) and possibly CUDA, which a forked child must not inherit.
    The process imports only `lvae.figures` and what the jobs name (no Lightning). While jobs are pending, torch
    in the training process uses one thread less (`settle`, on the training thread, gives it back)."""

    _executor: Optional[ProcessPoolExecutor] = None
    _pids: set[int] = set()  # the executor's process
    _pending: set[Future] = set()
    _threads: Optional[int] = None  # torch's thread count to give back when no job is pending

    @classmethod
    def submit(cls, job: Callable[[], Drawn]) -> Future:
        for _ in range(2):
            started = {p.pid for p in multiprocessing.active_children()}
            if cls._executor is None:
                cls._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                    initializer=start_drawing_process)
            try:
                future = cls._executor.submit(run_job, job)
            except BrokenProcessPool:  # the process died (killed, out of memory): start a new one, once
                cls._executor.shutdown(wait=False)
                cls._executor = None
                continue
            # Lowered from here as soon as it exists: its start-up imports would otherwise compete with training
            # at full priority until its initializer runs.
            for process in multiprocessing.active_children():
                if process.pid not in started and process.pid is not None:
                    lower_priority(process.pid)
                    cls._pids.add(process.pid)
            cls._pending.add(future)
            if cls._threads is None and torch.get_num_threads() > 1:
                cls._threads = torch.get_num_threads()
                torch.set_num_threads(cls._threads - 1)  # a core for the drawing
            return future
        raise RuntimeError("the drawing process could not be started")

    @classmethod
    def settle(cls) -> None:
        """Give torch its threads back once no job is pending. On the training thread: torch's thread count is
        the calling thread's own OpenMP setting."""
        cls._pending = {future for future in cls._pending if not future.done()}
        if not cls._pending and cls._threads is not None:
            torch.set_num_threads(cls._threads)
            cls._threads = None

    @classmethod
    def stop(cls) -> None:
        """Stop drawing at once, because training is ending with an error, Ctrl-C or SIGTERM: queued jobs are
        dropped and the one being drawn is abandoned (each PNG is written whole or not at all)."""
        if cls._executor is not None:
            cls._executor.shutdown(wait=False, cancel_futures=True)
            for process in multiprocessing.active_children():
                if process.pid in cls._pids:
                    process.terminate()
                    process.join(timeout=10)
        cls._executor, cls._pids = None, set()
        cls._pending.clear()
        cls.settle()

    @classmethod
    def warm_up(cls, modules: tuple[str, ...]) -> None:
        """Import what the jobs need while training runs its first epoch, so the first picture is not late."""
        cls.submit(functools.partial(import_modules, modules))


class PictureSink:
    """Sends drawn pictures and per-epoch scalars to the trainer's loggers. Only rank zero's training loop uses
    it."""

    def __init__(self, trainer: "L.Trainer", root: Path):
        self.trainer = trainer
        self.root = Path(root)
        self._declared: set[str] = set()

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

    def log_picture(self, name: str, path: Path, epoch: int, caption: Optional[str] = None) -> None:
        """Log the PNG `path` of `name` for `epoch` to every picture-taking logger."""
        for run in self._wandb():
            import wandb

            self._declare(run, f"latents/{name}")
            run.log({f"latents/{name}": wandb.Image(str(path), caption=caption), "epoch": epoch})
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                with Image.open(path) as png:
                    pixels = np.asarray(png.convert("RGB"))
                logger.experiment.add_image(f"latents/{name}", pixels, global_step=epoch, dataformats="HWC")

    def log_scalars(self, values: dict[str, float], epoch: int) -> None:
        """Per-epoch numbers: on W&B's epoch axis, and as ordinary metrics (with `epoch`) for other loggers."""
        for run in self._wandb():
            for key in values:
                self._declare(run, key)
            run.log({**values, "epoch": epoch})
        for logger in self.trainer.loggers:
            if not isinstance(logger, WandbLogger):
                logger.log_metrics({**values, "epoch": epoch}, step=self.trainer.global_step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], epoch: int) -> None:
        """A W&B table (W&B's embedding projector reads tables of vectors); other loggers have no tables."""
        for run in self._wandb():
            import wandb

            self._declare(run, key)
            run.log({key: wandb.Table(columns=columns, data=rows), "epoch": epoch})

    def log_animation(self, name: str, path: Path) -> None:
        """Log the evolution GIF `path` of `name` to W&B (other loggers keep the per-epoch images)."""
        for run in self._wandb():
            import wandb

            run.log({f"latents/{name}/evolution": wandb.Video(str(path), format="gif")})


class PictureCallback(Callback):
    """Base of the latent picture callbacks: when to draw, drawing in another process, failures as warnings.

    Subclasses implement `prepare`, which runs on rank zero in the training loop (model work such as decoding,
    under inference mode, and anything cheap) and returns a job: a picklable function (a `functools.partial` of a
    module-level function, over NumPy arrays and plain values) that draws, writes its PNGs and returns a `Drawn`.
    The job runs in the `DrawingProcess`, so t-SNE and matplotlib neither hold training's GIL nor take its
    cores; its result is logged from the training loop as soon as it is ready (checked after every training
    batch). A callback's next job waits for its last one; fit and `lvae validate` wait for all; an error, Ctrl-C
    or SIGTERM stops the drawing process instead.
    State a job returns (a t-SNE map) is applied by `apply` when it is logged, so a checkpoint holds the state of
    the last finished picture and never waits for one.

    Args:
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
    """

    names: tuple[str, ...] = ()  # picture names this callback writes; each gets an evolution GIF at fit end

    def __init__(self, every_n_epochs: int = 1, background: bool = True):
        if every_n_epochs < 1:
            raise ConfigError(f"{type(self).__name__}.every_n_epochs={every_n_epochs} must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.background = background
        self.sink: Optional[PictureSink] = None
        self._pending: Optional[tuple[Future, int]] = None  # the job in the drawing process and its epoch

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        root = trainer.log_dir or trainer.default_root_dir  # a broadcast: resolved here, on every rank, once
        self.sink = PictureSink(trainer, Path(root))
        if self.background and trainer.is_global_zero and stage in ("fit", "validate"):
            DrawingProcess.warm_up(("lvae.figures",))

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
            job = self.prepare(trainer, pl_module, latents, epoch)
        except Exception as err:  # a picture must never end training
            self._warn(epoch, err)
            return
        if job is not None:
            self._send(job, epoch)

    def _send(self, job: Callable[[], Drawn], epoch: int) -> None:
        """Run `job` in the drawing process (or here, without `background`); its result is logged when ready."""
        if self.background:
            self._pending = (DrawingProcess.submit(job), epoch)
            return
        try:
            drawn = run_job(job)
        except Exception as err:
            self._warn(epoch, err)
            return
        self._log(drawn, epoch)

    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Callable[[], Drawn]]:
        """Do the model work for `epoch` and return the picklable job that draws (None: nothing to draw)."""
        raise NotImplementedError

    def apply(self, state: Any) -> None:
        """Take the state a finished job returned (e.g. a t-SNE map to start the next one from)."""

    def _log(self, drawn: Drawn, epoch: int) -> None:
        for message in drawn.warnings:
            rank_zero_warn(f"{type(self).__name__}, epoch {epoch}: {message}")
        for name, path, caption in drawn.pictures:
            self.sink.log_picture(name, Path(path), epoch, caption)
        if drawn.scalars:
            self.sink.log_scalars(drawn.scalars, epoch)
        if drawn.state is not None:
            self.apply(drawn.state)
        for name, path in drawn.animations:
            self.sink.log_animation(name, Path(path))

    def _collect(self, wait: bool) -> None:
        if self._pending is None or not (wait or self._pending[0].done()):
            DrawingProcess.settle()
            return
        (future, epoch), self._pending = self._pending, None
        future.exception()  # waits, without raising
        DrawingProcess.settle()
        try:
            drawn = future.result()
        except Exception as err:
            self._warn(epoch, err)
            return
        try:
            self._log(drawn, epoch)
        except Exception as err:
            self._warn(epoch, err)

    def _warn(self, epoch: int, err: BaseException) -> None:
        hint = ""
        if isinstance(err, BrokenProcessPool):
            hint = " (the drawing process stopped: killed, or out of memory?; the next picture starts a new one)"
        elif "pickle" in str(err).lower():
            hint = (" (pictures are drawn in a separate process: `prepare` must return a picklable job, e.g. "
                    "functools.partial of a module-level function over NumPy arrays)")
        rank_zero_warn(f"{type(self).__name__}: the picture of epoch {epoch} was skipped ({type(err).__name__}: "
                       f"{err}){hint}; training goes on")

    def join(self) -> None:
        """Wait for this callback's picture being drawn, if any, and log it."""
        self._collect(wait=True)

    @override
    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._collect(wait=False)  # a finished picture reaches W&B within a step, not an epoch later

    @override
    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self.join()
        if trainer.is_global_zero and self.sink is not None and self.names:
            # The GIFs are made in the drawing process while the training process finishes up (the scatter's
            # table, checkpoints); `teardown` collects them.
            folders = {name: str(self.sink.png_path(name, 0).parent) for name in self.names}
            self._send(functools.partial(animate, folders), trainer.current_epoch)

    @override
    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if trainer.state.fn != "fit":
            self.join()  # `lvae validate` draws once and must finish before the process ends

    @override
    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        # Whatever is drawn already is logged; a picture still being drawn must not hold up Ctrl-C or SIGTERM
        # (last.ckpt is saved by then), so the drawing process is stopped rather than waited for.
        self._collect(wait=False)
        self._pending = None
        DrawingProcess.stop()

    @override
    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self.join()
