"""What lvae imports from a file: only classes defined in lvae, whatever form a checkpoint's hyperparameters give them.

A checkpoint is untrusted input, and its hyperparameters name code: Lightning's `load_from_checkpoint` imports and
calls an `_instantiator`; that instantiator (jsonargparse) imports every `class_path` and every string where a
callable or a class is expected; lvae's `VAE` builds a network from a `class_path`."""

import collections.abc
import importlib
import importlib.util
import inspect
import re
import types
import typing
from pathlib import Path
from typing import Any, NoReturn, Optional

from lvae.errors import CheckpointError
from lvae.networks import describe_network

# What LightningCLI writes into a module's hyperparameters to rebuild it; Lightning imports and calls it on load.
LIGHTNING_INSTANTIATORS = ("lightning.pytorch.cli.instantiate_module", "pytorch_lightning.cli.instantiate_module")

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


def trusted_load_kwargs(hparams: dict[str, Any], kwargs: dict[str, Any], where: str, owner: type) -> dict[str, Any]:
    """The keyword arguments for loading `owner` from a checkpoint with these hyperparameters, after refusing any
    class the file names that lvae did not write (`check_class_paths`). A network class passed in by keyword that
    is the checkpoint's own is built with the checkpoint's init_args."""
    check_class_paths(hparams, kwargs, where, owner=owner)
    kwargs = dict(kwargs)
    for key in ("encoder", "decoder"):
        saved, given = hparams.get(key), kwargs.get(key)
        if isinstance(saved, dict) and isinstance(given, type) and \
                saved.get("class_path") == describe_network(given)["class_path"]:
            kwargs[key] = saved
    return kwargs
