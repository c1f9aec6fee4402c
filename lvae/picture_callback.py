"""The base of every picture callback: when to draw, handing the drawing to the drawing process, logging what comes
back, and turning a failing picture into a warning."""

from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any, Callable, Optional
from weakref import WeakKeyDictionary

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lvae.checkpoints import RunCheckpoint
from lvae.drawing import DrawingPool, Drawn, DrawingStopped, Job, process_count, run_job, usable_cores
from lvae.errors import ConfigError, LVAEError
from lvae.latents import FollowedInputs, Latents, unusable
from lvae.sink import PictureSink

# How long an interrupted run (Ctrl-C, or SIGTERM from a scheduler whose grace period is tens of seconds) waits for
# the pictures being drawn, after last.ckpt is saved, so that the evolution has no gap.
INTERRUPT_GRACE_SECONDS = 15.0


def training_cores(trainer: "L.Trainer") -> int:
    """About how many cores of this machine training keeps busy: torch's threads in each of the trainer's processes
    here on a CPU, about one for each process that drives an accelerator (a GPU)."""
    processes = trainer.num_devices  # the trainer's processes on this machine: one per device
    if isinstance(trainer.accelerator, CPUAccelerator):
        return torch.get_num_threads() * processes
    return processes


class _Shared:
    """What the picture callbacks of one trainer share: the drawing processes (one per core training leaves free,
    at least one, the first the one the `lvae` command started early; closed by the last callback to tear down), each
    callback's slot among them, and, for a module lvae did not write, the followed validation inputs."""

    def __init__(self, trainer: "L.Trainer") -> None:
        training = training_cores(trainer)
        self.drawing = DrawingPool(process_count(training), lend_core=usable_cores() <= training)
        self.followed = FollowedInputs()
        self.users: set[int] = set()
        self.slots: dict[int, int] = {}  # id of a callback -> the drawing process its jobs go to

    def join(self, callback: "PictureCallback") -> None:
        self.users.add(id(callback))
        if id(callback) not in self.slots:
            self.slots[id(callback)] = self.drawing.slot()

    def submit(self, callback: "PictureCallback", job: Callable[[], Drawn]) -> Future:
        return self.drawing.submit(self.slots[id(callback)], job)


_SHARED: "WeakKeyDictionary[L.Trainer, _Shared]" = WeakKeyDictionary()


class PictureCallback(Callback):
    """Base of the latent picture callbacks: when to draw, drawing in another process, failures as warnings.

    Subclasses implement `prepare`, which runs on rank zero in the training loop (model work such as decoding,
    under inference mode, and anything cheap) and returns a job: a `lvae.drawing.Job` naming a function of an
    `lvae.figures` module and its arguments (NumPy arrays and plain values). The function draws, writes its PNGs
    and returns a `Drawn`. The job runs in the trainer's `DrawingProcess`, so t-SNE and matplotlib neither hold
    training's GIL nor take its cores, and the training process never imports them; the result is logged from the
    training loop as soon as it is ready (checked after every training batch). A callback's next job waits for its
    last one; fit and `lvae validate` wait for all. An error stops the drawing process; Ctrl-C or SIGTERM first
    saves last.ckpt, then waits up to `INTERRUPT_GRACE_SECONDS` for the pictures being drawn.
    State a job returns (a t-SNE map) is applied by `apply` when it is logged.

    Args:
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
    """

    names: tuple[str, ...] = ()  # picture names this callback writes; each gets an evolution GIF at fit end
    figure_modules: tuple[str, ...] = ()  # imported by the drawing process while the first epoch trains

    def __init__(self, every_n_epochs: int = 1, background: bool = True):
        if every_n_epochs < 1:
            raise ConfigError(f"{type(self).__name__}.every_n_epochs={every_n_epochs} must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.background = background
        self.sink: Optional[PictureSink] = None
        self._shared: Optional[_Shared] = None
        self._pending: Optional[tuple[Future, int]] = None  # the job in the drawing process and its epoch
        self._checkpoint_epoch: Optional[int] = None  # the epoch of a checkpoint loaded for validate

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        root = trainer.log_dir or trainer.default_root_dir  # a broadcast: resolved here, on every rank, once
        self.sink = PictureSink(trainer, Path(root))
        if trainer not in _SHARED:
            _SHARED[trainer] = _Shared(trainer)
        self._shared = _SHARED[trainer]
        self._shared.join(self)
        if self.background and trainer.is_global_zero and stage in ("fit", "validate"):
            # Starts the drawing process and imports the figures while the first epoch trains.
            try:
                self._shared.submit(self, Job("lvae.drawing:import_modules", {"modules": self.figure_modules}))
            except DrawingStopped:
                pass  # the first picture starts it again, and its warning says why it could not

    @override
    def on_load_checkpoint(self, trainer: "L.Trainer", pl_module: "L.LightningModule",
                           checkpoint: dict[str, Any]) -> None:
        self._checkpoint_epoch = checkpoint.get("epoch")

    def _epoch(self, trainer: "L.Trainer") -> int:
        """The epoch a picture belongs to: in fit the current one; for `lvae validate` the checkpoint's."""
        if trainer.state.fn != "fit" and self._checkpoint_epoch is not None:
            return int(self._checkpoint_epoch)
        return trainer.current_epoch

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
        latents = self.latents(trainer, pl_module)  # a collective: every rank takes part, rank zero draws
        if not trainer.is_global_zero:
            return
        self.join()
        epoch = self._epoch(trainer)
        try:
            job = self.prepare(trainer, pl_module, latents, epoch)
        except Exception as err:  # a picture must never end training
            self._warn(epoch, err)
            return
        if job is not None:
            self._send(job, epoch)

    def latents(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> Optional[Latents]:
        """This epoch's latents, read once for every picture: lvae's `VAE` (or any module with a
        `validation_latents()`) collects them during validation; for any other module the followed validation inputs
        are encoded with its `encode`. A collective: every rank calls it."""
        collected = getattr(pl_module, "validation_latents", None)
        if callable(collected):
            return collected()
        return self._shared.followed.latents(trainer, pl_module)

    def _send(self, job: Callable[[], Drawn], epoch: int) -> None:
        """Run `job` in the drawing process (or here, without `background`); its result is logged when ready."""
        if self.background:
            try:
                self._pending = (self._shared.submit(self, job), epoch)
            except Exception as err:  # e.g. a job that cannot be pickled
                self._warn(epoch, err)
            return
        try:
            drawn = run_job(job)
        except Exception as err:
            self._warn(epoch, err)
            return
        self._log(drawn, epoch)

    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Callable[[], Drawn]]:
        """Do the model work for `epoch` and return the job that draws (None: nothing to draw)."""
        raise NotImplementedError

    def usable(self, latents: Optional[Latents], epoch: int, what: str, min_points: int,
               finite: tuple[str, ...] = ("mu",)) -> bool:
        """Whether `latents` can make this epoch's picture; when not, one warning in lvae's words says why
        (`lvae.latents.unusable`), e.g. "LatentTraversal: no traversals for epoch 3: ...", and the picture is
        skipped."""
        reason = unusable(latents, min_points, finite)
        if reason is not None:
            rank_zero_warn(f"{type(self).__name__}: no {what} for epoch {epoch}: {reason}")
        return reason is None

    def apply(self, state: Any) -> None:
        """Take the state a finished job returned (e.g. a t-SNE map to start the next one from)."""

    def _log(self, drawn: Drawn, epoch: int) -> None:
        for message in drawn.warnings:
            rank_zero_warn(f"{type(self).__name__}: while drawing the picture of epoch {epoch}: {message}")
        for name, path, caption in drawn.pictures:
            self.sink.log_picture(name, Path(path), epoch, caption)
        if drawn.scalars:
            self.sink.log_scalars(drawn.scalars, epoch)
        if drawn.state is not None:
            self.apply(drawn.state)

    def _collect(self, wait: bool) -> None:
        """Log this callback's finished picture (waiting for it with `wait`). Never raises: a picture that failed,
        was cancelled or whose process died is a warning."""
        if self._pending is not None and (wait or self._pending[0].done()):
            (future, epoch), self._pending = self._pending, None
            try:
                drawn = future.result()
                self._log(drawn, epoch)
            except Exception as err:  # a failed or cancelled job, or a dead process; Ctrl-C is not caught
                self._warn(epoch, err)
        if self._shared is not None and self.background:
            self._shared.drawing.settle()

    def _warn(self, epoch: int, err: BaseException) -> None:
        hint = ""
        if isinstance(err, CancelledError):
            hint = " (training ended before it was drawn)"
        elif "pickle" in str(err).lower():
            hint = (" (pictures are drawn in a separate process: `prepare` must return a picklable job, e.g. a "
                    "lvae.drawing.Job, or functools.partial of a module-level function over NumPy arrays)")
        if isinstance(err, LVAEError):  # its message says what happened, as the CLI prints it
            what = str(err)
        else:
            what = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        rank_zero_warn(f"{type(self).__name__}: the picture of epoch {epoch} was skipped ({what}){hint}; training "
                       "goes on")

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
            # The GIF is made here (PIL only), by a training process that has nothing left to train, while the
            # drawing process goes on with the other pictures' last epoch: fit's tail is the longer of the two,
            # not their sum (bench/README.md).
            folders = {name: str(self.sink.png_path(name, 0).parent) for name in self.names}
            try:
                drawn = run_job(Job("lvae.figures.animation:animate", {"folders": folders}))
            except Exception as err:  # a picture must never end training
                rank_zero_warn(f"{type(self).__name__}: no evolution GIF ({type(err).__name__}: {err})")
                return
            for message in drawn.warnings:
                rank_zero_warn(f"{type(self).__name__}: while making the evolution GIF: {message}")
            for name, path in drawn.animations:
                self.sink.log_animation(name, Path(path))

    @override
    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if trainer.state.fn != "fit":
            self.join()  # `lvae validate` draws once and must finish before the process ends

    @override
    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        shared, self._shared = self._shared, None
        try:
            interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
            if interrupted and trainer.state.fn == "fit" and isinstance(trainer.checkpoint_callback, RunCheckpoint):
                # last.ckpt first: a scheduler's grace period may end in a SIGKILL while the pictures finish.
                trainer.checkpoint_callback.save_interrupted(trainer)
            if shared is not None and interrupted:
                shared.drawing.wait(INTERRUPT_GRACE_SECONDS)
            self._collect(wait=False)
        except Exception as err:  # never raise here: Lightning would skip the other callbacks' on_exception
            rank_zero_warn(f"{type(self).__name__}: could not log the last pictures ({type(err).__name__}: {err})")
        finally:
            self._pending = None  # a picture not finished by now is abandoned
            if shared is not None:
                shared.users.discard(id(self))
                shared.drawing.stop()

    @override
    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self.join()
        shared, self._shared = self._shared, None
        if shared is not None:
            shared.users.discard(id(self))
            if not shared.users:
                shared.drawing.close()
