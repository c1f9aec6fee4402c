"""Checkpoints that are always whole, found and checked before use, and written when a run is interrupted; a
resumed run that continues exactly where its checkpoint stopped."""

import collections.abc
import importlib
import importlib.util
import inspect
import json
import os
import pickle
import random
import re
import shutil
import signal
import threading
import types
import typing
from pathlib import Path
from typing import Any, NoReturn, Optional

import lightning as L
import numpy as np
import torch
from jsonargparse import Namespace
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lvae.bounded import check_checkpoint_archive
from lvae.errors import CheckpointError, CheckpointWriteError
from lvae.runs import RUN_ID, shell

# The keys that define a run: the model's class and shape and the data's class and identity. Continuing a run with
# another value for one of these would make it another run under the same name, so a resume that changes one is
# refused; everything else (data_dir, lr, max_epochs, batch size, num_workers, callbacks) may change when a run
# continues. A key that a module does not have (a model of your own) is not compared.
RUN_KEYS = ("model.class_path", "model.latent_dim", "model.architecture", "model.hidden_dim", "model.encoder",
            "model.decoder", "model.image_shape", "model.likelihood",
            "data.class_path", "data.dataset", "data.root", "data.image_size", "data.channels", "data.val_fraction",
            "data.split_seed")
PARTIAL = ".partial"
# What LightningCLI writes into a module's hyperparameters to rebuild it; Lightning imports and calls it on load.
LIGHTNING_INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module", "pytorch_lightning.cli.instantiate_module")


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


def trusted_class(class_path: str) -> Optional[type]:
    """The class `class_path` names when that class is defined in lvae, else None. Only lvae's own modules are
    imported to find out: a path that leaves them (``lvae.model.nn.Linear``, a class lvae merely imports) is not
    followed into another module, and names nothing lvae trusts."""
    parts = class_path.split(".")
    if parts[0] != "lvae" or not all(part.isidentifier() for part in parts):
        return None
    for i in range(len(parts) - 1, 0, -1):  # the longest prefix that is one of lvae's modules
        name = ".".join(parts[:i])
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if found:
            obj: Any = importlib.import_module(name)
            break
    else:
        return None
    for attr in parts[i:]:
        obj = getattr(obj, attr, None)
    defined_in = getattr(obj, "__module__", None) or ""
    return obj if isinstance(obj, type) and (defined_in == "lvae" or defined_in.startswith("lvae.")) else None


UNKNOWN = inspect.Parameter.empty  # the type of a parameter a class does not declare, or does not annotate


def _plain_type(annotation: Any) -> bool:
    """Whether a parameter of this type takes a string as text (str, a number, a path, a literal), never as the
    import path of a class or function, as jsonargparse does for callables and classes."""
    if annotation is UNKNOWN:
        return False
    if annotation is None or annotation is type(None) or annotation is Ellipsis:
        return True
    if isinstance(annotation, type):
        return issubclass(annotation, (str, int, float, bool, Path))
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return True
    if origin in (typing.Union, types.UnionType, tuple, list, dict, collections.abc.Sequence):
        return all(_plain_type(arg) for arg in typing.get_args(annotation))
    return False


def _parameter_types(cls: Optional[type]) -> dict[str, Any]:
    """A class's constructor parameters and their annotations; empty for an unknown class."""
    if cls is None:
        return {}
    try:
        parameters = inspect.signature(cls).parameters
    except (TypeError, ValueError):
        return {}
    return {name: param.annotation for name, param in parameters.items()}


IMPORT_PATH = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def check_class_paths(hparams: dict[str, Any], given: dict[str, Any], where: str, owner: Optional[type] = None
                      ) -> None:
    """Refuse hyperparameters that would make lvae import or build a class it did not write.

    Lightning's `load_from_checkpoint` imports and calls the checkpoint's `_instantiator`; that instantiator
    (jsonargparse) imports every `class_path` it is handed and every string where a callable or a class is expected;
    `VAE` builds a network from a `class_path`. A file may name only Lightning's own instantiator and classes
    defined in lvae (`trusted_class`), in any of these forms; any other class must be passed in by the caller
    (`given`, the keyword arguments of the load), or be `owner`, the class the caller loads with."""
    instantiator = hparams.get("_instantiator")
    if instantiator is not None and instantiator not in LIGHTNING_INSTANTIATORS:
        raise CheckpointError(f"{where} is refused: its hyperparameters name the instantiator {instantiator!r}, which "
                              "lvae does not import from a file; only Lightning's own is accepted")

    def refuse(key: str, value: str) -> NoReturn:
        top = key.split(".")[0].split("[")[0]
        how = (f"load_from_checkpoint(path, {top}=...)" if top != "_class_path" else
               "load it with that class, YourModule.load_from_checkpoint(path)")
        raise CheckpointError(
            f"{where} is refused: its hyperparameter {key} names the class {value!r}, and lvae imports and builds no "
            f"class from a file that is not defined in lvae. If you trust it, pass it in yourself: {how}, or name "
            "the same class_path in your config.")

    def named_class(value: Any, key: str) -> Optional[type]:
        if not isinstance(value, str):
            refuse(key, repr(value))
        if owner is not None and value == f"{owner.__module__}.{owner.__qualname__}":
            return owner
        return trusted_class(value) or refuse(key, value)

    def visit(value: Any, key: str, annotation: Any) -> None:
        if key.split(".")[0].split("[")[0] in given:
            return
        if isinstance(value, dict):
            path_key = next((k for k in ("class_path", "_class_path") if k in value), None)
            types_ = _parameter_types(named_class(value[path_key], f"{key}.{path_key}" if key else path_key)) \
                if path_key else {}
            for k, v in value.items():
                if k == path_key:
                    continue
                inner = v if k in ("init_args", "dict_kwargs") and isinstance(v, dict) else {k: v}
                for name, item in inner.items():
                    where_ = f"{key}.{k}" if k in ("init_args", "dict_kwargs") else key
                    visit(item, f"{where_}.{name}" if where_ else str(name), types_.get(name, UNKNOWN))
        elif isinstance(value, (list, tuple)):
            for i, item in enumerate(value):
                visit(item, f"{key}[{i}]", UNKNOWN)
        elif isinstance(value, str) and not _plain_type(annotation) and \
                (annotation is not UNKNOWN or IMPORT_PATH.fullmatch(value)):
            named_class(value, key)

    types_ = _parameter_types(owner)
    top_class = hparams.get("_class_path")
    if top_class is not None:
        types_ = _parameter_types(named_class(top_class, "_class_path"))
    for key, value in hparams.items():
        if key not in ("_instantiator", "_class_path"):
            visit(value, key, types_.get(key, UNKNOWN))


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
                rank_zero_warn(f"removing {stale}, a checkpoint a killed run did not finish writing")
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
            rank_zero_warn(f"interrupted, and no checkpoint could be written ({err}); {path} is the last one")
            return
        rank_zero_info(f"lvae: interrupted at epoch {trainer.current_epoch}, step {trainer.global_step}; saved "
                       f"{path}. Continue with {continue_flags(path)}.")

    @override
    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self._restore_sigint()


def continue_flags(last: Path) -> str:
    """The flags that continue the run whose last checkpoint is `last`: the run named when it is a run folder's."""
    if last.parent.name == "checkpoints" and last.name == "last.ckpt":
        return shell("--run_id", last.parent.parent.name, "--ckpt_path", "last")
    return shell("--ckpt_path", last)


class RandomState(Callback):
    """Keeps the random generators' state (torch, CUDA, NumPy, Python) in every checkpoint and restores it when
    training resumes, so a resumed run draws the same training noise as a run that was never stopped (on one
    process; under DDP each rank continues from rank zero's state)."""

    def __init__(self) -> None:
        self._loaded: Optional[dict[str, Any]] = None

    @override
    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                          "has_gauss": has_gauss, "gauss": gauss},
                "python": random.getstate()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # Here rather than on load: the checkpoint's state belongs right before training goes on, after the
        # sanity check and everything else a resumed run does first.
        if self._loaded is None:
            return
        state, self._loaded = self._loaded, None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        random.setstate(state["python"])


def last_checkpoints(root: Path) -> list[Path]:
    """Every run's `last.ckpt` under `root`, the most recently written first."""
    return sorted(root.glob("*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True)


def find_last_checkpoint(root: Path, run_id: Optional[str]) -> tuple[Path, str]:
    """`last.ckpt` of the given run, or of the most recently written run under `root`."""
    if run_id:
        path = root / run_id / "checkpoints" / "last.ckpt"
        if not path.is_file():
            runs = sorted(p.parent.parent.name for p in last_checkpoints(root))
            raise CheckpointError(f"--ckpt_path last: run {run_id!r} has no {path}. Runs under {root} with a last "
                                  f"checkpoint: {', '.join(runs) or 'none'}")
        return path, run_id
    candidates = last_checkpoints(root)
    if not candidates:
        raise CheckpointError(f"--ckpt_path last: no run under {root} has a checkpoints/last.ckpt to resume; start "
                              "a new run without --ckpt_path, or set --trainer.default_root_dir to the runs' folder")
    return candidates[0], candidates[0].parent.parent.name


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


def section_values(config: Namespace, section: str) -> dict[str, Any]:
    """A module's config (`model` or `data`) as plain values: its init_args, and its class_path under "class_path"
    (LightningCLI's subclass mode: ``{class_path, init_args}``)."""
    value = config.get(section)
    if not isinstance(value, Namespace):
        return {}
    values = value.get("init_args", value)
    plain = values.as_dict() if isinstance(values, Namespace) else dict(values or {})
    if value.get("class_path"):
        plain["class_path"] = value.class_path
    return plain


def class_names(class_path: str) -> set[str]:
    """The names a config's class goes by: its module path and, when its package exports it, the shorter one
    (lvae.model.VAE and lvae.VAE). Only the user's own config is imported here, never a checkpoint's."""
    import importlib

    names = {class_path}
    module, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return names
    names.add(f"{cls.__module__}.{cls.__qualname__}")
    top = cls.__module__.split(".")[0]
    try:
        if getattr(importlib.import_module(top), cls.__name__, None) is cls:
            names.add(f"{top}.{cls.__name__}")
    except ImportError:
        pass
    return names


def run_differences(checkpoint: dict[str, Any], config: Namespace,
                    keys: tuple[str, ...] = RUN_KEYS) -> list[tuple[str, Any, Any]]:
    """(key, the checkpoint's value, the command's value) for each of `keys` on which they differ; a key either side
    lacks is not compared (a user's module has its own arguments)."""
    saved = {"model": checkpoint.get("hyper_parameters") or {},
             "data": checkpoint.get("datamodule_hyper_parameters") or {}}
    differences = []
    for key in keys:
        section, name = key.split(".")
        now = section_values(config, section)
        ran = saved[section].get("_class_path" if name == "class_path" else name, None)
        if ran is None or name not in now:
            continue
        if name == "class_path":
            same = ran in class_names(now[name])
        else:
            same = _plain(ran) == _plain(now[name])
        if not same:
            differences.append((key, ran, now[name]))
    return differences


def _plain(value: Any) -> Any:
    """Tuples and lists compare alike (YAML gives lists, Python tuples)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def check_checkpoint(path: str, config: Namespace) -> None:
    """Refuse a missing file, a non-checkpoint, or a checkpoint of another model, naming both values."""
    wrong = [(key, ran, now) for key, ran, now in run_differences(read_checkpoint(path), config)
             if key.startswith("model.")]
    if wrong:
        named = "; ".join(f"{key}: checkpoint {ran!r}, config {now!r}" for key, ran, now in wrong)
        fix = flags([(key, ran) for key, ran, _ in wrong if key != "model.class_path"])
        raise CheckpointError(f"--ckpt_path {path} was trained with another model ({named}). Use the "
                              f"checkpoint's values ({fix or 'its model class'}) or the config saved beside it.")


def flags(values: list[tuple[str, Any]]) -> str:
    """`--key value` for each of `values`, as a shell takes them: a list or a network as JSON, each word quoted. A
    value that names a class lvae does not take from a file is not offered: it is the checkpoint's to claim, not
    lvae's to advise."""
    words: list[str] = []
    for key, value in sorted(values, key=lambda kv: (kv[0].split(".")[0], not kv[0].endswith(".class_path"))):
        if key == "model.image_shape":
            continue  # lvae takes it from the data module
        try:
            check_class_paths({key: value}, {}, "")
            if key.endswith(".class_path") and not trusted_class(value):
                continue  # a class of the user's own: named in their config, not advised from a file
        except CheckpointError:
            continue
        flag = key.removesuffix(".class_path")  # --data lvae.ImageFolderDataModule, then its own arguments
        words += [f"--{flag}", value if isinstance(value, str) else json.dumps(_plain(value))]
    return shell(*words)


def check_continues(path: Path, given: str, config: Namespace, root: Path) -> dict[str, Any]:
    """The checkpoint `path` of a run under `root`, after refusing to continue that run with a command that differs
    from it on a key of RUN_KEYS: the keys are named with both values, and so is the newest run that agrees."""
    checkpoint = read_checkpoint(str(path))
    differences = run_differences(checkpoint, config)
    if not differences:
        return checkpoint

    def agrees(other: Path) -> bool:
        try:
            return not run_differences(load_checkpoint(other), config)
        except Exception:  # unreadable: not a run to offer
            return False

    run = path.parent.parent.name
    named = "; ".join(f"{key}: {ran} (run) vs {now} (now)" for key, ran, now in differences)
    advice = {key: ran for key, ran, _ in differences}
    saved = {"model": checkpoint.get("hyper_parameters") or {},
             "data": checkpoint.get("datamodule_hyper_parameters") or {}}
    for key in RUN_KEYS:  # another class takes the run's other values too (an image folder needs its root)
        section, name = key.split(".")
        if f"{section}.class_path" in advice and saved[section].get(name) is not None and key not in advice:
            advice[key] = saved[section][name]
    own = flags(list(advice.items()))
    other = next((p.parent.parent.name for p in last_checkpoints(root)
                  if p != path and RUN_ID.fullmatch(p.parent.parent.name) and agrees(p)), None)
    ways = [f"Continue it with its own values ({own})"]
    if other:
        ways.append(f"continue the newest run that agrees with this command "
                    f"({shell('--run_id', other, '--ckpt_path', 'last')})")
    ways.append("start a new run (without --ckpt_path)")
    raise CheckpointError(f"--ckpt_path {given} would continue run {run}, which differs from this command on keys that "
                          f"define a run ({named}). {'; or '.join(ways)}. The keys that define a run: "
                          f"{', '.join(RUN_KEYS)}.")
