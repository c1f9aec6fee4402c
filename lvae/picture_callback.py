"""The base of every picture callback: when to draw (and which epochs to skip while the drawing is busy), handing
the drawing to the drawing processes, logging what comes back, and turning a failing picture into a warning."""

import time
from collections import deque
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from concurrent.futures import CancelledError, Future
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Union
from weakref import WeakKeyDictionary

import lightning as L
import torch
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lvae.checkpoints import RunCheckpoint
from lvae.drawing import DrawingPool, Drawn, DrawingStopped, Job, process_count, run_job, usable_cores
from lvae.errors import ConfigError, LVAEError
from lvae.figures import modules as modules_of
from lvae.followed_inputs import FollowedInputs
from lvae.latents import Latents, unusable
from lvae.signals import HeldSigterm
from lvae.sink import PictureSink
from lvae.say import notice, say

# How long an interrupted run (Ctrl-C, or SIGTERM from a scheduler whose grace period is tens of seconds) waits for
# the pictures being drawn and those of the last epoch, after last.ckpt is saved, so that the evolution ends where
# training did.
INTERRUPT_GRACE_SECONDS = 15.0
ANIMATION = "lvae.figures.animation:animate"  # every picture's evolution GIF, made at the end of fit
# A fit's last picture and then its evolution GIF, in the process that draws it (`PictureCallback._send`)
DRAW_THEN_ANIMATE = "lvae.figures.animation:draw_then_animate"
# A skipped epoch's weights are copied to the CPU so that, should fit end with it, its pictures are prepared from them
# after training went on (an interrupt, max_time). The copy is made every skipped epoch; above this size it costs
# more time and memory than the prepare it spares, so such a model's skipped epochs are prepared when skipped.
KEPT_WEIGHTS_BYTES = 256 * 2**20


def training_cores(trainer: "L.Trainer") -> int:
    """About how many cores of this machine training keeps busy: torch's threads in each of the trainer's processes
    here on a CPU, about one for each process that drives an accelerator (a GPU)."""
    processes = trainer.num_devices  # the trainer's processes on this machine: one per device
    if isinstance(trainer.accelerator, CPUAccelerator):
        return torch.get_num_threads() * processes
    return processes


def epoch_list(epochs: list[int]) -> str:
    """Epochs as a person writes them: [1, 2, 3, 5, 7, 8] -> "1-3, 5, 7, 8"."""
    runs: list[list[int]] = []
    for epoch in sorted(epochs):
        if runs and epoch == runs[-1][-1] + 1:
            runs[-1].append(epoch)
        else:
            runs.append([epoch])
    return ", ".join(f"{run[0]}-{run[-1]}" if len(run) > 2 else ", ".join(map(str, run)) for run in runs)


class _Picture(NamedTuple):
    """One epoch's picture as `prepare` made it: its job and the numbers measured with it (`log_with_picture`)."""

    job: Callable[[], Drawn]
    epoch: int
    scalars: dict[str, float]
    here: bool = False  # drawn in the training process at the end of fit (`PictureCallback.last_drawn_here`)


class _Kept(NamedTuple):
    """A skipped epoch, kept to be prepared and drawn at the end of fit if it stays the last: its latents (without
    what only a drawn epoch needs, `_Shared.finished`); its weights are in `_Shared`."""

    epoch: int
    latents: Optional[Latents]


@contextmanager
def _evaluating(module: "L.LightningModule") -> Iterator[None]:
    """`module` in eval mode and under inference mode, as validation runs it; each submodule's mode put back after."""
    modes = [(part, part.training) for part in module.modules()]
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        for part, training in modes:
            part.training = training


@contextmanager
def _weights(module: "L.LightningModule", weights: Optional[dict[str, torch.Tensor]]) -> Iterator[None]:
    """`module` holding `weights` (a `state_dict`) for the while, its own put back after, whatever happens; None:
    its own."""
    if weights is None:
        yield
        return
    live = {key: value.detach().clone() for key, value in module.state_dict().items()}  # on its device
    try:
        module.load_state_dict(weights)  # copied into the parameters in place: the optimiser still holds them
        yield
    finally:
        module.load_state_dict(live)


class _Shared:
    """What the picture callbacks of one trainer share: the drawing processes (one per core training leaves free,
    at least one, the first the one the `lvae` command started early; closed by the last callback to tear down), each
    callback's slot among them, the decision of each epoch whether the drawing is free, and, for a module lvae did not
    write, the followed validation inputs."""

    def __init__(self, trainer: "L.Trainer") -> None:
        training = training_cores(trainer)
        self.drawing = DrawingPool(process_count(training), lend_core=usable_cores() <= training)
        self.followed = FollowedInputs()
        self.users: list["PictureCallback"] = []  # in the trainer's order
        self.slots: dict[int, int] = {}  # id of a callback -> the drawing process its jobs go to
        self._free: Optional[tuple[int, bool]] = None  # (epoch, whether the drawing was free at its end)
        self._last_epoch: Optional[int] = None  # the fit's last epoch, where it is known beforehand
        self._ends: list[tuple[int, float]] = []  # (epoch, time.monotonic()) of this fit's validation ends
        self._drawings: dict[int, tuple[float, list[Future], list[float]]] = {}  # epoch -> first sent, jobs, done at
        self._first_drawn: Optional[int] = None  # this fit's first drawn epoch
        self._finished: Optional[tuple[Latents, Latents]] = None  # latents, and as drawn (`finished`)
        self._kept_weights: dict[int, dict[str, torch.Tensor]] = {}  # skipped epoch -> its weights, on the CPU
        self._ended = False  # the end of this fit was seen to
        self.fit_ended = False  # fit's end proper began (training done): an interrupt then still makes every GIF
        self.sigterm = HeldSigterm(INTERRUPT_GRACE_SECONDS)  # held from the end of fit until every picture is done
        self._fit_done: set[int] = set()  # ids of the callbacks whose end of fit is done

    def join(self, callback: "PictureCallback") -> None:
        if callback not in self.users:
            self.users.append(callback)
        if id(callback) not in self.slots:
            self.slots[id(callback)] = self.drawing.slot()

    def leave(self, callback: "PictureCallback") -> bool:
        """Whether `callback` was the last to leave."""
        if callback in self.users:
            self.users.remove(callback)
        return not self.users

    def submit(self, callback: "PictureCallback", job: Callable[[], Drawn], epoch: Optional[int] = None) -> Future:
        """Send `job` to `callback`'s drawing process; with `epoch`, timed as part of that epoch's drawing."""
        future = self.drawing.submit(self.slots[id(callback)], job)
        if epoch is not None:
            if epoch not in self._drawings:  # the newest epoch drawn before it is what `_late` reads
                self._drawings = {e: d for e, d in self._drawings.items() if e == max(self._drawings)}
                self._drawings[epoch] = (time.monotonic(), [], [])
                if self._first_drawn is None:
                    self._first_drawn = epoch
            _, sent, done = self._drawings[epoch]
            sent.append(future)
            future.add_done_callback(lambda _: done.append(time.monotonic()))
        return future

    def start_fit(self, trainer: "L.Trainer") -> None:
        self._free, self._ended, self._fit_done, self.fit_ended = None, False, set(), False
        self._ends, self._drawings, self._kept_weights, self._first_drawn = [], {}, {}, None
        # The last epoch is known when fit runs to max_epochs validating every epoch (max_steps or max_time may end it
        # sooner: then no epoch is found late).
        # (An int val_check_interval counts batches, not a fraction of the epoch.)
        every_epoch = trainer.check_val_every_n_epoch == 1 and trainer.val_check_interval == 1.0 and \
            isinstance(trainer.val_check_interval, float)
        known = trainer.max_epochs is not None and trainer.max_epochs > 0 and every_epoch
        self._last_epoch = trainer.max_epochs - 1 if known else None

    def last_epoch(self, epoch: int) -> bool:
        """Whether `epoch` is the fit's last, where that is known beforehand (fit runs to max_epochs validating every
        epoch)."""
        return self._last_epoch is not None and epoch == self._last_epoch

    def fit_done(self, callback: "PictureCallback") -> None:
        """`callback`'s end of fit is done; once every picture's is, a SIGTERM held meanwhile is handed on."""
        self._fit_done.add(id(callback))
        if all(id(user) in self._fit_done for user in self.users):
            self.sigterm.release()

    def free(self, epoch: int) -> bool:
        """Whether `epoch` may be drawn, as it was when the first picture of `epoch` asked: no picture of an earlier
        epoch is still being drawn, and its drawing would be done before the last epoch's validation ends (`_late`).
        One decision per epoch, so that the pictures read side by side (the scatter and the t-SNE map) draw the same
        epochs."""
        if self._free is None or self._free[0] != epoch:
            self._ends = [*self._ends[-3:], (epoch, time.monotonic())]  # the recent epochs' pace
            busy = any(user._drawing_before(epoch) for user in self.users)
            self._free = (epoch, not busy and not self._late(epoch))
        return self._free[1]

    def _late(self, epoch: int) -> bool:
        """Whether drawing `epoch` would, by the estimate, still go on when the last epoch's validation ends, so that
        the end of fit would wait for it before drawing the last epoch: the drawing takes what the last drawn
        epoch's did (from its first picture sent to its last done), an epoch what the recent ones did."""
        if self._last_epoch is None or epoch >= self._last_epoch or self._ends[0][0] == epoch:
            return False
        # Not the fit's first drawn epoch: it also paid for the drawing's first use (the cold t-SNE map, matplotlib's
        # first figure), about twice a later epoch's time, and would skip epochs that draw in time.
        drawn = [e for e in self._drawings if e < epoch and e != self._first_drawn]
        if not drawn:
            return False
        sent_at, sent, done = self._drawings[max(drawn)]
        if len(done) < len(sent):
            return False  # still being drawn: the epoch is skipped as busy anyway
        (first, began), (now_epoch, now) = self._ends[0], self._ends[-1]
        per_epoch = (now - began) / (now_epoch - first)
        return max(done) - sent_at > (self._last_epoch - epoch) * per_epoch

    def finished(self, module: "L.LightningModule", latents: Optional[Latents]) -> Optional[Latents]:
        """`latents` with what the module adds for a drawn epoch only, by its weights now (lvae's `VAE`: each input's
        negative ELBO, `with_neg_elbo`): once per epoch for all the pictures, on rank zero."""
        add = getattr(module, "with_neg_elbo", None)
        if latents is None or not callable(add):
            return latents
        if self._finished is None or self._finished[0] is not latents:
            self._finished = (latents, add(latents))
        return self._finished[1]

    def keep_weights(self, module: "L.LightningModule", epoch: int) -> bool:
        """Keep a copy of the weights `epoch` was validated with, on the CPU, once for all the pictures that skip it,
        to prepare it from at the end of fit should training go on meanwhile. Whether they were kept: not above
        `KEPT_WEIGHTS_BYTES`, nor a state holding more than tensors (a module's `get_extra_state`), which a copy
        might not bring back whole (then the epoch's pictures are prepared now)."""
        if epoch not in self._kept_weights:
            kept = {user._kept.epoch for user in self.users if user._kept is not None}
            self._kept_weights = {e: weights for e, weights in self._kept_weights.items() if e in kept}
            state = module.state_dict()
            if not all(isinstance(value, torch.Tensor) for value in state.values()):
                return False
            if sum(value.numel() * value.element_size() for value in state.values()) > KEPT_WEIGHTS_BYTES:
                return False
            with torch.inference_mode(False):  # plain tensors: they are loaded into the module after validation
                self._kept_weights[epoch] = {key: value.detach().to("cpu", copy=True) for key, value in state.items()}
        return True

    def _prepare_kept(self, trainer: "L.Trainer") -> None:
        """Prepare the skipped epochs kept to be drawn (`_Kept`), each from the weights it was validated with: the
        copy kept of them (training may have gone on since, or a callback changed them at its end), loaded for the
        while and the module's own put back after."""
        module = trainer.lightning_module
        kept = [user for user in self.users if isinstance(user._kept, _Kept)]
        for epoch in sorted({user._kept.epoch for user in kept}):
            users = [user for user in kept if user._kept.epoch == epoch]
            # The copy even where no step was trained since: a callback (stochastic weight averaging) may have
            # changed the weights at the end of training.
            weights = self._kept_weights.get(epoch)
            try:
                with _weights(module, weights), _evaluating(module):
                    for user in users:
                        user._kept = user._prepare(trainer, module, user._kept.latents, epoch)
            except Exception as err:  # loading the kept weights failed: a picture must never end training
                for user in users:
                    if isinstance(user._kept, _Kept):
                        user._warn(epoch, err)
                        user._kept = None
        self._kept_weights, self._finished = {}, None

    def end_fit(self, trainer: "L.Trainer", gifs: bool, timeout: Optional[float] = None) -> None:
        """At the end of fit (or at Ctrl-C), by the first picture to get there, on rank zero: the kept epochs'
        pictures are prepared (`_prepare_kept`), one line says which epochs were skipped and one what fit now waits
        for (with `gifs`, the evolution GIFs too); then the pictures kept of the last epoch go to be drawn
        (`PictureCallback._draw_kept`), those of callbacks with nothing being drawn first, so that the drawing does
        not wait on the others; those for this process are left to `draw_here`. With `timeout` (the grace of an
        interrupt), every one goes to the drawing process, and a kept picture whose callback's earlier one is not
        done by then is not drawn."""
        if self._ended:
            if timeout is not None:  # Ctrl-C while `draw_here` drew: what it had not drawn goes to the drawing process
                self._send_kept(timeout)
            return
        self._ended, self.fit_ended = True, timeout is None
        self.sigterm.hold()
        self._prepare_kept(trainer)
        for line in _skipped_lines(self.users):
            say(line)
        pictures = sum(1 for user in self.users if user._pending or user._kept is not None)
        made = sum(user._gifs_to_make() for user in self.users) if gifs else 0
        waiting = [f"the last epoch's {pictures} picture{'s' * (pictures != 1)}"] * bool(pictures) + \
                  [f"{made} evolution GIF{'s' * (made != 1)}"] * bool(made)
        if waiting:
            say(f"lvae: drawing {' and '.join(waiting)}...")
        self._send_kept(timeout)

    def _send_kept(self, timeout: Optional[float]) -> None:
        """Send the kept pictures to be drawn (`PictureCallback._draw_kept`), those of callbacks with nothing being
        drawn first; at the end of fit proper, not those for this process (`draw_here`)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for user in sorted(self.users, key=lambda user: bool(user._pending)):
            if timeout is None and user._drawn_here():
                continue  # by `draw_here`, once what the end of fit does first (a W&B table) is done
            user._draw_kept(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def draw_here(self) -> None:
        """At the end of fit proper, after `end_fit`: draw the last epoch's pictures kept for this process
        (`PictureCallback.last_drawn_here`), each one here while the drawing process is busy, or sent to it when it
        is free. Training has ended: the drawing process and this one draw side by side."""
        for user in self.users:
            if user._drawn_here():
                if not self.drawing.busy():
                    user._kept = user._kept._replace(here=False)
                user._draw_kept(None)


def _skipped_lines(users: list["PictureCallback"]) -> list[str]:
    """One line for each set of pictures that skipped the same epochs of this fit, naming them and the epochs."""
    groups: dict[tuple[tuple[int, ...], tuple[int, ...]], list[str]] = {}
    for user in users:
        drawn, skipped = (tuple(epoch for epoch in epochs if epoch >= user._fit_start) for epochs in user._epochs())
        if skipped:
            groups.setdefault((drawn, skipped), []).append(type(user).__name__)
    lines = []
    for (drawn, skipped), names in groups.items():
        who = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
        lines.append(f"lvae: {who} drew {len(drawn)} of {len(drawn) + len(skipped)} epochs ({epoch_list(drawn)}), "
                     f"skipping {epoch_list(skipped)} while the drawing of an earlier epoch was not done or would "
                     "have held up the last: training does not wait for it (skip_when_busy: false draws every epoch, "
                     "training waiting)")
    return lines


_SHARED: "WeakKeyDictionary[L.Trainer, _Shared]" = WeakKeyDictionary()


class PictureCallback(Callback):
    """Base of the latent picture callbacks: when to draw, drawing in another process, failures as warnings.

    Subclasses name their drawing function once, in `figure`, and implement `prepare`, which runs on rank zero in
    the training loop (model work such as decoding, under inference mode, and anything cheap), only for the epochs
    whose pictures are drawn (a kept epoch's at the end of fit, with that epoch's weights), and returns a job:
    `job(...)`, a `lvae.drawing.Job` of that function of an `lvae.figures` module and its arguments (NumPy arrays and
    plain values). The function draws, writes its PNGs
    and returns a `Drawn`. The job runs in one of the trainer's drawing processes (`lvae.drawing.DrawingPool`: one
    per core training leaves free, at least one; all of a callback's jobs in the same one, in order), so t-SNE and
    matplotlib neither hold training's GIL nor take its cores, and the training process never imports them; the
    result is logged from the training loop as soon as it is ready (checked after every training batch). State a job
    returns (a t-SNE map) is applied by `apply` when it is logged.

    Training never waits for a picture of an earlier epoch. When a validation epoch ends while a picture of an earlier
    epoch is still being drawn, this epoch's pictures are skipped, not queued behind it: the drawing draws the newest
    epoch whenever it is free. The first epoch of a run and the last one of each fit (however fit ends: max_epochs,
    early stopping, max_time, Ctrl-C) are always drawn. A skipped epoch costs no model work: of the newest one its
    latents and its weights are kept (a copy on the CPU, up to `KEPT_WEIGHTS_BYTES`; a larger model's epoch is prepared
    when skipped), and it is prepared from them and drawn at the end of fit if it stays the last. Where fit's last epoch
    is known (max_epochs, validating every epoch), an epoch whose drawing would, at the pace of the last drawn epoch's
    and of the recent epochs, still go on when the last epoch's validation ends is skipped too, so that the end of fit
    does not wait for it before drawing the last. Whether the drawing is free is decided once per epoch for all the
    pictures of a trainer, so pictures read side by side show the same epochs. At the end of fit one line says which
    epochs were skipped; only drawn epochs are logged, so W&B's slider and the evolution GIFs show what was drawn. The
    epochs drawn and skipped are kept in the checkpoint. With `skip_when_busy=False` every epoch is drawn and the next
    waits for the last, training waiting.

    A picture that two of one trainer may show with different arguments defines `state_key` from those arguments
    (Lightning's `_generate_state_key`), so that each keeps its own state in the checkpoint.

    State that follows the drawn pictures (the frame the next one continues) moves on in `commit`, which brings a job up
    to date as it goes to be drawn; `prepare` runs for drawn epochs only, so state it keeps follows them too. Numbers
    that `prepare` measures are handed to `log_with_picture`: logged when its picture goes to be drawn. Fit's end waits
    only for the last epoch's pictures and the GIFs, saying so in one line; `lvae validate` waits for all. An error
    stops the drawing; Ctrl-C or SIGTERM first saves last.ckpt, then waits up to `INTERRUPT_GRACE_SECONDS` for the
    pictures being drawn and those of the last epoch.

    Args:
        every_n_epochs: draw every n-th validation epoch.
        background: draw in the drawing process (False draws in the training loop, e.g. for debugging).
        skip_when_busy: skip an epoch whose pictures would wait for an earlier one's (the first and the last epoch
            are always drawn); False draws every epoch, training waiting.
    """

    names: tuple[str, ...] = ()  # picture names this callback writes; each gets an evolution GIF at fit end
    # The function that draws this callback's picture, "lvae.figures.scatter:draw", named here only: `job` builds the
    # jobs from it, and the drawing process imports its module while the first epoch trains.
    figure: str = ""
    other_figures: tuple[str, ...] = ()  # further functions its jobs name (`job(figure, ...)`)
    # Where the trainer has one drawing process, the fit's last epoch of this picture is drawn in the training process
    # at the end of fit, beside the drawing process, which meanwhile draws the pictures that must follow their own
    # earlier jobs there (the t-SNE map, the explorer page): training has ended, so its core is free. For a picture
    # whose job needs only matplotlib and PIL (no t-SNE, no bokeh in the training process) and nothing an earlier
    # job made. A Ctrl-C meanwhile hands what is left to the drawing process.
    last_drawn_here: bool = False

    def __init__(self, every_n_epochs: int = 1, background: bool = True, skip_when_busy: bool = True):
        if every_n_epochs < 1:
            raise ConfigError(f"{type(self).__name__}.every_n_epochs={every_n_epochs} must be >= 1")
        self.every_n_epochs = every_n_epochs
        self.background = background
        self.skip_when_busy = skip_when_busy
        self.sink: Optional[PictureSink] = None
        self._shared: Optional[_Shared] = None
        self._pending: deque[tuple[Future, int]] = deque()  # jobs in the drawing process and their epochs, in order
        # The newest skipped epoch, prepared at the end of fit (or when skipped, for a large model) and drawn then
        self._kept: Union[_Kept, _Picture, None] = None
        self._measured: dict[str, float] = {}  # what `prepare` handed to `log_with_picture`
        self._drawn_epochs: list[int] = []  # epochs of the run whose pictures were sent to be drawn
        self._skipped_epochs: list[int] = []  # epochs of the run skipped while the drawing was busy (not the kept one)
        self._fit_start = 0  # the first epoch of this fit: the end-of-fit line is about this fit
        self._animated = False  # this fit's evolution GIFs are made: with its last picture (`_send`), or here
        self._checkpoint_epoch: Optional[int] = None  # the epoch of a checkpoint loaded for validate

    @classmethod
    def figures(cls) -> tuple[str, ...]:
        """Every figure function this callback's jobs name: its `figure`, its `other_figures` and, when it writes
        pictures, the evolution GIF's."""
        gifs = (ANIMATION, DRAW_THEN_ANIMATE) if cls.names else ()
        return (*(figure for figure in (cls.figure, *cls.other_figures) if figure), *gifs)

    @classmethod
    def figure_modules(cls) -> tuple[str, ...]:
        """The modules of its `figures`: imported by the drawing process while the first epoch trains."""
        return modules_of(cls.figures())

    def job(self, figure: Optional[str] = None, /, **kwargs: Any) -> Job:
        """The job that draws with `figure` (by default this callback's own) from `kwargs`: NumPy arrays and plain
        values."""
        return Job(figure or self.figure, kwargs)

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
                self._shared.submit(self, Job("lvae.drawing:import_modules", {"modules": self.figure_modules()}))
            except DrawingStopped:
                pass  # the first picture starts it again, and its warning says why it could not

    @override
    def on_fit_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        self._fit_start = trainer.current_epoch  # after a checkpoint was restored: where this fit starts
        self._animated = False
        if self._shared is not None:
            self._shared.start_fit(trainer)

    def _epochs(self) -> tuple[list[int], list[int]]:
        """The epochs of the run drawn and skipped. The kept epoch counts as drawn: it is drawn at the end of fit, or
        at Ctrl-C, if it stays the last."""
        kept = [] if self._kept is None else [self._kept.epoch]
        return [*self._drawn_epochs, *kept], list(self._skipped_epochs)

    @property
    def _legacy_state_key(self) -> str:
        # Checkpoints written before a picture had a `state_key` of its own hold its state under the class name;
        # Lightning looks here when `state_key` is not found, so such a run still resumes with its pictures' state.
        return type(self).__qualname__

    @override
    def state_dict(self) -> dict[str, Any]:
        drawn, skipped = self._epochs()
        return {"drawn_epochs": drawn, "skipped_epochs": skipped}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Absent from checkpoints made before pictures skipped epochs: the resumed fit's first epoch is drawn.
        self._drawn_epochs = list(state_dict.get("drawn_epochs", []))
        self._skipped_epochs = list(state_dict.get("skipped_epochs", []))

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
        fitting = trainer.state.fn == "fit"
        skips = self.skip_when_busy and self.background and fitting
        self._collect(wait=not skips)  # a picture that does not skip waits for its last one, training with it
        epoch = self._epoch(trainer)
        if skips and not self._shared.free(epoch) and self._drawn_epochs:
            self._skip(trainer, pl_module, latents, epoch)
            return
        picture = self._prepare(trainer, pl_module, latents, epoch)
        if picture is None:
            return
        if fitting:
            if self._kept is not None:  # a newer epoch is drawn: the kept one stays skipped
                self._skipped_epochs.append(self._kept.epoch)
                self._kept = None
            if self._draws_here(epoch):
                self._kept = picture._replace(here=True)  # by `_Shared.draw_here`, after the checkpoints are saved
                return
            self._drawn_epochs.append(epoch)
        self._send(picture, gifs=fitting and self._shared.last_epoch(epoch))

    def _drawn_here(self) -> bool:
        """Whether the kept picture is the fit's last, to be drawn in the training process (`_Shared.draw_here`)."""
        return isinstance(self._kept, _Picture) and self._kept.here

    def _draws_here(self, epoch: int) -> bool:
        """Whether `epoch`, the fit's last, is drawn in the training process at the end of fit (`last_drawn_here`)."""
        return self.last_drawn_here and self.background and self._shared.last_epoch(epoch) and \
            len(self._shared.drawing.processes) == 1

    def _skip(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
              epoch: int) -> None:
        """Skip `epoch`'s pictures, keeping what prepares them at the end of fit should it stay the last: its
        latents and its weights (`_Shared.keep_weights`). No model work is done for it now, unless the model is too
        large to keep a copy of its weights."""
        if self._shared.keep_weights(pl_module, epoch):
            kept: Union[_Kept, _Picture] = _Kept(epoch, latents)
        else:
            kept = self._prepare(trainer, pl_module, latents, epoch)
            if kept is None:
                return
        if self._kept is not None:
            self._skipped_epochs.append(self._kept.epoch)
        self._kept = kept

    def _prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                 epoch: int) -> Optional[_Picture]:
        """`epoch`'s picture from `pl_module` as it is now: its latents finished (`_Shared.finished`) and `prepare`
        run; None when there is nothing to draw or it failed (a warning)."""
        self._measured = {}
        try:
            job = self.prepare(trainer, pl_module, self._shared.finished(pl_module, latents), epoch)
        except Exception as err:  # a picture must never end training
            self._warn(epoch, err)
            return None
        return None if job is None else _Picture(job, epoch, self._measured)

    def _draw_kept(self, timeout: Optional[float]) -> None:
        """Send the kept picture (the last epoch's, at the end of fit) to be drawn, once this callback's pictures
        before it are done (up to `timeout` seconds; None: however long): a t-SNE map starts from the last one, and a
        drawing process that died drawing one of them is replaced, not sent to."""
        if self._kept is None:
            return
        pending = [future for future, _ in self._pending]
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:  # in slices: a SIGTERM held meanwhile sets a deadline of its own (the grace period)
            held = self._shared.sigterm.deadline if self._shared is not None else None
            ends = [end for end in (deadline, held) if end is not None]
            left = min(ends) - time.monotonic() if ends else None
            _, running = futures.wait(pending, 0.1 if left is None else max(0.0, min(0.1, left)))
            if not running:
                break
            if left is not None and left <= 0:
                return
        self._collect(wait=False)  # their state (a t-SNE map) is what the kept picture continues
        picture, self._kept = self._kept, None
        # Here only at the end of fit proper: an interrupt's grace is for the drawing process, which can be stopped.
        here = picture.here and timeout is None
        try:
            self._send(picture, here=here, gifs=timeout is None)  # at an interrupt, no GIFs
        except BaseException:
            if here:  # Ctrl-C while it was drawn here: kept, for the interrupt to send to the drawing process
                self._kept = picture._replace(here=False)
            raise
        self._drawn_epochs.append(picture.epoch)

    def _drawing_before(self, epoch: int) -> bool:
        """Whether a picture of this callback of an epoch before `epoch` is still being drawn."""
        return any(drawn < epoch and not future.done() for future, drawn in self._pending)

    def latents(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> Optional[Latents]:
        """This epoch's latents, read once for every picture: lvae's `VAE` (or any module with a
        `validation_latents()`) collects them during validation; for any other module the followed validation inputs
        are encoded with its `encode`. A collective: every rank calls it. A module with a `with_neg_elbo(latents)`
        is asked for them without (`validation_latents(neg_elbo=False)`): only rank zero adds it, and only for an
        epoch whose pictures are prepared (`_Shared.finished`)."""
        collected = getattr(pl_module, "validation_latents", None)
        if callable(collected):
            return collected(neg_elbo=False) if callable(getattr(pl_module, "with_neg_elbo", None)) else collected()
        return self._shared.followed.latents(trainer, pl_module)

    def _send(self, picture: _Picture, here: bool = False, gifs: bool = False) -> None:
        """Draw `picture` in the drawing process (or here: without `background`, or with `here`), its result logged
        when ready, and log the numbers measured with it. With `gifs` (the fit's last picture), the process that
        draws it then puts this callback's evolution GIFs together, beside the other pictures of the end of fit."""
        try:
            job = self.commit(picture.job, picture.epoch)
        except Exception as err:  # a picture must never end training
            self._warn(picture.epoch, err)
            return
        if gifs and self.names and self.sink is not None:
            job = Job(DRAW_THEN_ANIMATE, {"job": job, "folders": self._gif_folders()})
        drawn = None
        if self.background and not here:
            try:
                self._pending.append((self._shared.submit(self, job, picture.epoch), picture.epoch))
            except Exception as err:  # e.g. a job that cannot be pickled
                self._warn(picture.epoch, err)
        else:
            try:
                drawn = run_job(job)
            except Exception as err:
                self._warn(picture.epoch, err)
        if picture.scalars:  # while the drawing process draws
            self.sink.log_scalars(picture.scalars, picture.epoch)
        if drawn is not None:
            self._log(drawn, picture.epoch)

    def prepare(self, trainer: "L.Trainer", pl_module: "L.LightningModule", latents: Optional[Latents],
                epoch: int) -> Optional[Callable[[], Drawn]]:
        """Do the model work for `epoch` and return the job that draws (None: nothing to draw)."""
        raise NotImplementedError

    def commit(self, job: Callable[[], Drawn], epoch: int) -> Callable[[], Drawn]:
        """`job`, the picture of `epoch`, goes to be drawn: now, or at the end of fit from the arrays kept when its
        epoch was skipped. Move on what follows the drawn pictures (the frame the next one continues) and return the
        job as it is to be drawn, brought up to date with the pictures drawn since it was prepared. By default the
        job as it is."""
        return job

    def log_with_picture(self, values: dict[str, float]) -> None:
        """Numbers `prepare` measured for its epoch: logged when the epoch's picture goes to be drawn, so that W&B
        holds them for the epochs drawn."""
        self._measured.update(values)

    def usable(self, latents: Optional[Latents], epoch: int, what: str, min_points: int,
               finite: tuple[str, ...] = ("mu",)) -> bool:
        """Whether `latents` can make this epoch's picture; when not, one warning in lvae's words says why
        (`lvae.latents.unusable`), e.g. "LatentTraversal: no traversals for epoch 3: ...", and the picture is
        skipped."""
        reason = unusable(latents, min_points, finite)
        if reason is not None:
            notice(f"{type(self).__name__}: no {what} for epoch {epoch}: {reason}")
        return reason is None

    def apply(self, state: Any) -> None:
        """Take the state a finished job returned (e.g. a t-SNE map to start the next one from)."""

    def _log(self, drawn: Drawn, epoch: int) -> None:
        for message in drawn.warnings:
            notice(f"{type(self).__name__}: while drawing the picture of epoch {epoch}: {message}")
        for name, path, caption in drawn.pictures:
            self.sink.log_picture(name, Path(path), epoch, caption)
        if drawn.scalars:
            self.sink.log_scalars(drawn.scalars, epoch)
        if drawn.state is not None:
            self.apply(drawn.state)
        for name, path in drawn.animations:
            self.sink.log_animation(name, Path(path))
        self._animated = self._animated or drawn.animated

    def _collect(self, wait: bool) -> None:
        """Log this callback's finished pictures, in order (waiting for them with `wait`). Never raises: a picture
        that failed, was cancelled or whose process died is a warning."""
        while self._pending and (wait or self._pending[0][0].done()):
            future, epoch = self._pending.popleft()
            try:
                drawn = self._result(future)
                self._log(drawn, epoch)
            except Exception as err:  # a failed or cancelled job, or a dead process; Ctrl-C is not caught
                self._warn(epoch, err)
        if self._shared is not None and self.background:
            self._shared.drawing.settle()

    def _result(self, future: Future) -> Drawn:
        """`future`'s picture, waited for; when a SIGTERM held at the end of fit set a deadline, no longer than that."""
        while True:
            deadline = self._shared.sigterm.deadline if self._shared is not None else None
            if deadline is not None and time.monotonic() > deadline and not future.done():
                raise TimeoutError("not drawn within the grace period after SIGTERM")
            try:
                return future.result(timeout=0.1 if deadline is None else max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                if future.done():
                    raise  # the job's own TimeoutError
                continue

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
        notice(f"{type(self).__name__}: the picture of epoch {epoch} was skipped ({what}){hint}; training "
               "goes on")

    def join(self) -> None:
        """Wait for this callback's pictures being drawn, if any, and log them."""
        self._collect(wait=True)

    def end_fit(self, trainer: "L.Trainer") -> None:
        """The end of fit, seen to once for all the trainer's pictures by the first to call it: the last epoch's kept
        pictures go to be drawn and the end-of-fit lines are said (`_Shared.end_fit`)."""
        if trainer.is_global_zero and self._shared is not None:
            self._shared.end_fit(trainer, gifs=True)

    def _gifs_to_make(self) -> int:
        """How many evolution GIFs this callback will put together at the end of fit: one per picture of at least
        two epochs, counting the one being drawn."""
        if self.sink is None:
            return 0
        count = 0
        for name in self.names:
            pngs = len(list(self.sink.png_path(name, 0).parent.glob("epoch_*.png")))
            epochs = [epoch for _, epoch in self._pending] + ([self._kept.epoch] if self._kept is not None else [])
            coming = sum(not self.sink.png_path(name, epoch).exists() for epoch in epochs)
            count += pngs + coming >= 2
        return count

    @override
    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._collect(wait=False)  # a finished picture reaches W&B within a step, not an epoch later

    @override
    def on_fit_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        shared = self._shared
        try:
            self._end_of_fit(trainer)
        finally:
            if shared is not None:
                shared.fit_done(self)  # the last one hands on a SIGTERM held meanwhile

    def _gif_folders(self) -> dict[str, str]:
        """Each picture name's folder, whose epochs' frames make its evolution GIF."""
        return {name: str(self.sink.png_path(name, 0).parent) for name in self.names}

    def _end_of_fit(self, trainer: "L.Trainer") -> None:
        self.end_fit(trainer)
        if self._shared is not None:
            self._shared.draw_here()
        self.join()
        self._make_gifs(trainer)

    def _make_gifs(self, trainer: "L.Trainer") -> None:
        """This fit's evolution GIFs, made here (PIL only) from the frames of the epochs drawn, unless they are made
        already: by the last picture, where it was drawn, or here. Made here when the last picture failed, when fit's
        last epoch was not drawn (every_n_epochs), or when Ctrl-C sent it to be drawn again."""
        if trainer.is_global_zero and self.sink is not None and self.names and not self._animated:
            self._animated = True  # once, also when it fails: one notice
            try:
                drawn = run_job(Job(ANIMATION, {"folders": self._gif_folders()}))
            except Exception as err:  # a picture must never end training
                notice(f"{type(self).__name__}: no evolution GIF ({type(err).__name__}: {err})")
                return
            for message in drawn.warnings:
                notice(f"{type(self).__name__}: while making the evolution GIF: {message}")
            for name, path in drawn.animations:
                self.sink.log_animation(name, Path(path))

    @override
    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        if trainer.state.fn != "fit":
            self.join()  # `lvae validate` draws once and must finish before the process ends

    @override
    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        shared = self._shared
        try:
            interrupted = isinstance(exception, (KeyboardInterrupt, SIGTERMException))
            if interrupted and trainer.state.fn == "fit" and isinstance(trainer.checkpoint_callback, RunCheckpoint):
                # last.ckpt first: a scheduler's grace period may end in a SIGKILL while the pictures finish.
                trainer.checkpoint_callback.save_interrupted(trainer)
            if shared is not None and interrupted:
                deadline = time.monotonic() + INTERRUPT_GRACE_SECONDS
                if trainer.state.fn == "fit" and trainer.is_global_zero:
                    # The last epoch's kept pictures too: the evolution ends where fit did.
                    shared.end_fit(trainer, gifs=False, timeout=INTERRUPT_GRACE_SECONDS)
                shared.drawing.wait(max(0.0, deadline - time.monotonic()))
            self._collect(wait=False)
            if interrupted and shared is not None and shared.fit_ended:
                self._make_gifs(trainer)  # Ctrl-C while fit waited for its last pictures: the evolution is whole
        except Exception as err:  # never raise here: Lightning would skip the other callbacks' on_exception
            notice(f"{type(self).__name__}: could not log the last pictures ({type(err).__name__}: {err})")
        finally:
            self._pending.clear()  # a picture not finished by now is abandoned
            self._kept, self._shared = None, None
            if shared is not None:
                if shared.leave(self):
                    shared.sigterm.release(deliver=False)  # the command already ends
                shared.drawing.stop()

    @override
    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self.join()
        shared, self._shared = self._shared, None
        if shared is not None and shared.leave(self):
            shared.sigterm.release(deliver=False)  # given back in any case (on_fit_end hands a SIGTERM on)
            shared.drawing.close()
