"""`--ckpt_path`: which checkpoint a command means (`last` of a run, or of the newest run), and whether it may
continue that run, with advice that works when pasted."""

import importlib
import json
from pathlib import Path
from typing import Any, Optional

from jsonargparse import Namespace

from lvae.checkpoints import load_checkpoint, read_checkpoint
from lvae.errors import CheckpointError
from lvae.runs import RUN_ID, shell
from lvae.trust import check_class_paths, trusted_class

# The keys that define a run: the model's class and shape and the data's class and identity. Continuing a run with
# another value for one of these would make it another run under the same name, so a resume that changes one is
# refused; everything else (data_dir, lr, max_epochs, batch size, num_workers, callbacks) may change when a run
# continues. A key that a module does not have (a model of your own) is not compared.
RUN_KEYS = ("model.class_path", "model.latent_dim", "model.architecture", "model.hidden_dim", "model.encoder",
            "model.decoder", "model.image_shape", "model.likelihood",
            "data.class_path", "data.dataset", "data.root", "data.image_size", "data.channels", "data.val_fraction",
            "data.split_seed")

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
