"""Checkpoints that are always whole, found and checked before use, and written when a run is interrupted."""

import os
import pickle
import re
from pathlib import Path
from typing import Any, Optional

import lightning as L
import torch
from jsonargparse import Namespace
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lvae.errors import CheckpointError

ARCHITECTURE_KEYS = ("latent_dim", "architecture", "hidden_dim")
PARTIAL = ".partial"
# What LightningCLI writes into a module's hyperparameters to rebuild it; Lightning imports and calls it on load.
LIGHTNING_INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module", "pytorch_lightning.cli.instantiate_module")


def load_checkpoint(path: Any, map_location: Any = "cpu") -> dict[str, Any]:
    """A checkpoint's contents as tensors and plain values only (torch's ``weights_only=True``).

    A checkpoint is untrusted input: it may come from anyone, and a full unpickle runs whatever code the file
    names. A file that names anything else is refused by name, before any of it runs."""
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


def check_class_paths(hparams: dict[str, Any], given: dict[str, Any], where: str) -> None:
    """Refuse hyperparameters that would import a class the user did not ask for.

    Lightning's `load_from_checkpoint` imports and calls the checkpoint's `_instantiator`, and jsonargparse imports
    every `class_path` it is handed. Only Lightning's own instantiator and `lvae.*` classes are taken from a file;
    any other class must be passed in by the caller (`given`, the keyword arguments of the load)."""
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator not in LIGHTNING_INSTANTIATORS:
        raise CheckpointError(f"{where} is refused: its hyperparameters name the instantiator {instantiator!r}, which "
                              "lvae does not import from a file; only Lightning's own is accepted")

    def visit(value: Any, key: str) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(v, f"{key}.{k}" if key else str(k))
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(v, f"{key}[{i}]")
        top = key.split(".")[0].split("[")[0]
        leaf = key.rsplit(".", 1)[-1]
        if leaf in ("class_path", "_class_path") and isinstance(value, str) and top not in given \
                and not value.startswith("lvae."):
            raise CheckpointError(
                f"{where} is refused: its hyperparameter {key} names the class {value!r}, and lvae imports no class "
                f"from a file that is not lvae's own. If you trust it, pass it in yourself: "
                f"load_from_checkpoint(path, {top}=...), or name the same class_path in your config.")

    visit({k: v for k, v in hparams.items() if k != "_instantiator"}, "")


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
        with open(partial, "wb") as f:
            try:
                torch.save(checkpoint, f)
            except RuntimeError as err:
                # Ctrl-C in the middle of torch.save comes out as its zip writer's "unexpected pos" error, with
                # the KeyboardInterrupt as context: raise the interrupt, so that Lightning ends the run as one
                # (last.ckpt saved, no traceback) instead of as a crash. Seen once in CI.
                if isinstance(err.__context__, KeyboardInterrupt):
                    raise err.__context__ from None
                raise
            f.flush()
            os.fsync(f.fileno())
        os.replace(partial, target)

    @override
    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: Optional[bool] = None
                        ) -> dict[str, Any]:
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return load_checkpoint(path, map_location)


class RunCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint, plus: Ctrl-C or SIGTERM during fit writes `last.ckpt` with the state at the
    interruption, and partial files left by a killed run are removed when the run continues."""

    _interrupt_saved: Optional[int] = None  # the step whose interruption last.ckpt holds

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if trainer.is_global_zero and self.dirpath and Path(self.dirpath).is_dir():
            for stale in Path(self.dirpath).glob(f".*{PARTIAL}"):
                rank_zero_warn(f"removing {stale}, a checkpoint a killed run did not finish writing")
                stale.unlink()

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
        # Also mid-validation: trainer.training is False there, but the run being interrupted is a fit.
        if isinstance(exception, (KeyboardInterrupt, SIGTERMException)) and trainer.state.fn == "fit":
            self.save_interrupted(trainer)

    def save_interrupted(self, trainer: "L.Trainer") -> None:
        """Write `last.ckpt` with the state at an interruption (Ctrl-C, SIGTERM), once per interruption; picture
        callbacks call it before they wait for their last pictures."""
        if not self.save_last or self.dirpath is None or self._interrupt_saved == trainer.global_step:
            return
        self._interrupt_saved = trainer.global_step
        path = Path(self.dirpath) / f"{self.CHECKPOINT_NAME_LAST}{self.FILE_EXTENSION}"
        try:
            trainer.save_checkpoint(path, weights_only=self.save_weights_only)
        except Exception as err:  # e.g. the interrupted step had diverged: keep the last good file
            rank_zero_warn(f"interrupted, and no checkpoint could be written ({err}); {path} is the last one")
            return
        rank_zero_info(f"lvae: interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}; saved "
                       f"{path}. Continue with --ckpt_path last.")


def find_last_checkpoint(root: Path, run_id: Optional[str]) -> tuple[Path, str]:
    """`last.ckpt` of the given run, or of the most recently written run under `root`."""
    if run_id:
        path = root / run_id / "checkpoints" / "last.ckpt"
        if not path.is_file():
            runs = sorted(p.parent.parent.name for p in root.glob("*/checkpoints/last.ckpt"))
            raise CheckpointError(f"--ckpt_path last: run {run_id!r} has no {path}. Runs under {root} with a last "
                                  f"checkpoint: {', '.join(runs) or 'none'}")
        return path, run_id
    candidates = sorted(root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(f"--ckpt_path last: no run under {root} has a checkpoints/last.ckpt to resume; start "
                              "a new run without --ckpt_path, or set --trainer.default_root_dir to the runs' folder")
    return candidates[-1], candidates[-1].parent.parent.name


def check_checkpoint(path: str, model: Namespace) -> None:
    """Refuse a missing file, a non-checkpoint, or a checkpoint of another architecture, naming both values."""
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
    trained = checkpoint.get("hyper_parameters", {})
    wrong = [f"model.{key}: checkpoint {trained[key]!r}, config {model[key]!r}"
             for key in ARCHITECTURE_KEYS if key in trained and trained[key] != model[key]]
    if wrong:
        fix = " ".join(f"--model.{key} {trained[key]}" for key in ARCHITECTURE_KEYS if key in trained)
        raise CheckpointError(f"--ckpt_path {path} was trained with another model ({'; '.join(wrong)}). Use the "
                              f"checkpoint's values ({fix}) or the config saved beside it.")
