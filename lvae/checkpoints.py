"""Checkpoints that are always whole, found and checked before use, and written when a run is interrupted; a
resumed run that continues exactly where its checkpoint stopped."""

import os
import pickle
import re
import shutil
import signal
import threading
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lvae.bounded import check_checkpoint_archive
from lvae.errors import CheckpointError, CheckpointWriteError
from lvae.runs import continue_flags
from lvae.say import notice, say

PARTIAL = ".partial"


def load_checkpoint(path: Any, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint's contents as tensors and plain values only (torch's ``weights_only=True``).

    A checkpoint is untrusted input: it may come from anyone, and a full unpickle runs whatever code the file
    names. A file that names anything else is refused by name, before any of it runs."""
    check_checkpoint_archive(path)  # what its records declare fits its size, before torch reads any of them
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        named = re.search(r"GLOBAL (\S+)", str(err))  # torch's refusal names the object, which it never imported
        if named is None:
            raise  # not a pickle torch can read at all
        raise CheckpointError(
            f"{path} is refused: it holds the Python object {named.group(1)}, and loading it could run code from the "
            "file. lvae loads checkpoints as tensors and plain values only (torch.load with weights_only=True), as "
            "its own checkpoints always load. Use a checkpoint written by lvae, or ask its author for one.") from None


def check_weight_shapes(checkpoint: dict[str, Any], own: dict[str, Any]) -> None:
    """Refuse a checkpoint whose weights have other shapes than the model's `own` state dict, naming the first.
    Called before Lightning loads the weights: a crafted or damaged checkpoint is named, not a "size mismatch"
    trace."""
    for name, value in checkpoint.get("state_dict", {}).items():
        if name in own and isinstance(value, torch.Tensor) and value.shape != own[name].shape:
            raise CheckpointError(f"the checkpoint's weight {name} has shape {tuple(value.shape)}, and this "
                                  f"model's has {tuple(own[name].shape)}: the checkpoint was not written for this "
                                  "model. Use the config saved beside the checkpoint, or a checkpoint of this "
                                  "model.")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes a checkpoint beside its target, flushes it to disk, then renames it into place; reads one as tensors
    and plain values only (`load_checkpoint`), whatever Lightning asks for.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the system temp
    folder; when that is another filesystem than the checkpoints (a local /tmp, checkpoints on a network
    drive), the final move is a copy, and a kill during the copy leaves a truncated checkpoint. A rename
    within one folder is atomic: a reader sees the old file or the new one, never half of one.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Optional[Any] = None) -> None:
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}{PARTIAL}")  # one fixed name: a stale one is overwritten
        try:
            with open(partial, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
        except (RuntimeError, OSError) as err:
            # torch.save's zip writer reports a failed write as "unexpected pos", with the real cause as context:
            # Ctrl-C (raised as the interrupt, so that Lightning ends the run as one) or the disk's own error.
            cause = err if isinstance(err, OSError) else err.__context__
            if isinstance(cause, KeyboardInterrupt):
                raise cause from None
            if not isinstance(cause, OSError):
                raise
            partial.unlink(missing_ok=True)
            free = shutil.disk_usage(target.parent).free
            kept = f"{target} still holds the last one written" if target.exists() else f"{target} was not written"
            raise CheckpointWriteError(
                f"{target} could not be written ({cause.strerror or cause}; {free:,} bytes free on its disk). The "
                f"checkpoints on disk are whole: {kept}. Make room, then continue the run.") from None
        os.replace(partial, target)

    @override
    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Optional[bool] = None
                        ) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_checkpoint(path, map_location)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, plus: Ctrl-C or SIGTERM during fit writes `last.ckpt` with the state at the
    interruption, made of whole training steps, and partial files left by a killed run are removed when the run
    continues.

    Ctrl-C that arrives during a training step is held until the step is done (Lightning holds SIGTERM the same
    way): a checkpoint then never records an optimizer step as not taken, so a resumed run trains every batch
    exactly once."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._in_step = False
        self._interrupt_pending = False
        self._sigint_found: Any = signal.default_int_handler
        self._interrupt_saved: Optional[int] = None  # the step whose interruption last.ckpt holds
        self._trained = False  # training ran to its end: an interruption after it (fit's last pictures) loses nothing

    # state_key is ModelCheckpoint's: its monitor, mode and schedule already tell two checkpoints apart.

    @override
    def on_train_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        super().on_train_end(trainer, pl_module)
        self._trained = True

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        # Only when training: `lvae validate` may run beside a fit of the same run, whose write is not stale.
        if stage == "fit" and trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            for stale in Path(self.dirpath).glob(f".*{PARTIAL}"):
                notice(f"removing {stale}, a checkpoint a killed run did not finish writing")
                stale.unlink()

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        super().on_train_start(trainer, pl_module)
        self._trained = False
        # Only over Python's own Ctrl-C handling: a process started with SIGINT ignored keeps ignoring it.
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._sigint_found = signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if not self._in_step or self._interrupt_pending:  # a second Ctrl-C does not wait for a step that hangs
            raise KeyboardInterrupt
        self._interrupt_pending = True

    def _restore_sigint(self) -> None:
        if threading.current_thread() is threading.main_thread() and \
                signal.getsignal(signal.SIGINT) == self._on_sigint:
            signal.signal(signal.SIGINT, self._sigint_found)  # the handler it found: Python's own

    @override
    def on_train_batch_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule", batch: Any,
                             batch_idx: int) -> None:
        self._in_step = True

    @override
    def on_train_batch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule", outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._in_step = False
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._interrupt_pending:
            self._interrupt_pending = False
            raise KeyboardInterrupt

    # Lightning 2.6 writes last.ckpt only at a step where a top-k checkpoint was written: after an epoch whose
    # val/loss did not improve, last.ckpt would stay behind and --ckpt_path last would resume from the past.
    @override
    def on_train_epoch_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._save_last_if_behind(trainer, at_train_epoch_end=True)

    @override
    def on_validation_end(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        super().on_validation_end(trainer, pl_module)
        self._save_last_if_behind(trainer, at_train_epoch_end=False)

    def _save_last_if_behind(self, trainer: "L.Trainer", at_train_epoch_end: bool) -> None:
        due = self._every_n_epochs >= 1 and (trainer.current_epoch + 1) % self._every_n_epochs == 0
        if self.save_last and due and self._should_save_on_train_epoch_end(trainer) == at_train_epoch_end and \
                not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    @override
    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self._restore_sigint()
        # Also mid-validation: trainer.training is False there, but the run being interrupted is a fit.
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.state.fn == "fit":
            self.save_interrupted(trainer)
            if self._trained:  # nothing to continue: the `lvae` command says only that it stopped
                exception.lvae_after_training = True

    def save_interrupted(self, trainer: "L.Trainer") -> None:
        """Write `last.ckpt` with the state at an interruption (Ctrl-C, SIGTERM), once per interruption; picture
        callbacks call it before they wait for their last pictures."""
        if not self.save_last or self.dirpath is None or self._interrupt_saved == trainer.global_step or \
                self._trained:
            return
        self._interrupt_saved = trainer.global_step
        path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        try:
            trainer.save_checkpoint(path, weights_only=self.save_weights_only)
        except Exception as err:  # e.g. the interrupted step had diverged: keep the last good file
            notice(f"interrupted, and no checkpoint could be written ({err}); {path} is the last one")
            return
        say(f"lvae: interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}; saved "
            f"{path}. Continue with {continue_flags(path)}.")

    @override
    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self._restore_sigint()


def read_checkpoint(path: str) -> dict[str, Any]:
    """A `--ckpt_path` file's contents; refuses a missing file or one that is not a Lightning checkpoint."""
    if not Path(path).is_file():
        raise CheckpointError(f"--ckpt_path {path}: no such file")
    try:
        checkpoint = load_checkpoint(path)
    except CheckpointError as err:
        raise CheckpointError(f"--ckpt_path {err}") from None
    except Exception as err:
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise CheckpointError(f"--ckpt_path {path} is not a checkpoint (torch.load: {type(err).__name__}: "
                              f"{first_line})") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"--ckpt_path {path} is not a Lightning checkpoint (it has no state_dict)")
    wrong = checkpoint_parts(checkpoint)
    if wrong:
        raise CheckpointError(f"--ckpt_path {path} is not a Lightning checkpoint: {wrong}. Use a checkpoint written "
                              "by lvae (or Lightning), or ask its author for one.")
    return checkpoint


# The parts of a Lightning checkpoint lvae reads, and the types they must have.
PARTS = {"state_dict": dict, "hyper_parameters": dict, "datamodule_hyper_parameters": dict, "epoch": int,
         "global_step": int, "callbacks": dict, "optimizer_states": list, "lr_schedulers": list, "loops": dict}


def checkpoint_parts(checkpoint: dict[str, Any]) -> Optional[str]:
    """What is wrong with a checkpoint's parts (a part of the wrong type, a weight that is not a tensor, a weight
    that is not finite), in words; None when nothing is."""
    for key, kind in PARTS.items():
        if key in checkpoint and not isinstance(checkpoint[key], kind) or \
                kind is int and isinstance(checkpoint.get(key), bool):
            return f"its {key} is a {type(checkpoint[key]).__name__}, not a {kind.__name__}"
    for name, value in checkpoint["state_dict"].items():
        if not isinstance(value, torch.Tensor):
            return f"its weight {name} is a {type(value).__name__}, not a tensor"
        if value.is_floating_point() and not torch.isfinite(value).all():
            bad = int((~torch.isfinite(value)).sum())
            return (f"its weight {name} holds {bad} NaN or infinite values: it is the state of a diverged run, which "
                    "lvae never saves (an earlier checkpoint of that run, e.g. best-*.ckpt, holds finite weights)")
    return None




def adopt_legacy_states(checkpoint: dict[str, Any], callbacks: list[Any]) -> None:
    """Move each callback's state that `checkpoint` holds under its class name (as checkpoints written before the
    callback had a `state_key` of its own do) to its `state_key`, before Lightning compares the checkpoint's keys
    with the trainer's callbacks: it would otherwise warn that the run's own callbacks are missing."""
    states = checkpoint.get("callbacks")
    if not isinstance(states, dict):
        return
    keys = {callback.state_key for callback in callbacks}
    for callback in callbacks:
        legacy = type(callback).__qualname__
        if callback.state_key not in states and legacy in states and legacy not in keys:
            states[callback.state_key] = states.pop(legacy)
