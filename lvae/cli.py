"""The `lvae` command: a LightningCLI over `VAE` and `MNISTDataModule` with the defaults users expect.

Every run lives in one folder, ``<trainer.default_root_dir>/<run_id>/``: the resolved config, ``checkpoints/``,
the W&B run (offline unless a W&B API key is configured) and ``latents/`` with every picture as PNG; `validate`,
`test` and `predict` of a run's checkpoint write into ``<run folder>/<subcommand>/``. Lightning's own defaults
scatter these (a WandbLogger ignores default_root_dir), make ``--ckpt_path last`` silently start over or continue
an unrelated run, and refuse to run twice in one folder; this module is where those are put right.
"""

import importlib
import importlib.resources
import inspect
import json
import netrc
import os
import re
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn, Optional

import lightning as L
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, DefaultHelpFormatter, Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lvae import noise
from lvae.bounded import check_yaml_aliases
from lvae.checkpoints import AtomicCheckpointIO, RunCheckpoint
from lvae.ckpt_path import check_checkpoint, check_continues, find_last_checkpoint, section_values
from lvae.command_line import PRINT_CONFIG, read_command_line
from lvae.data import check_same_batches, saved_train_position
from lvae.ddp_watch import DDPWatch
from lvae.errors import CheckpointError, ConfigError, DivergenceError, LVAEError
from lvae.model import VAE
from lvae.resume import RandomState, WandbHistory
from lvae.runs import RunFolder, check_run_id, continue_flags, first_start, global_zero, launcher_run_id, shell
from lvae.signals import SIGINT_EXIT, SIGTERM_EXIT, STOPPED, EntrySignals
from lvae.say import notice, say

RUN_ID_ENV = "LVAE_RUN_ID"  # how DDP ranks started by Lightning learn the run id that rank zero chose
WANDB_PROBE_SECONDS = 5.0
# Filled in after parsing, not as the parser's default: resolving WandbLogger's signature imports wandb, a second
# that `lvae --help` and a mistyped value would otherwise wait for.
DEFAULT_LOGGER = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "lvae"}}
ERROR_LINES = 4  # of a parser's message: with the line pointing at --help, a bad value costs at most 5 lines
DESCRIPTION = ("Train a VAE (lvae's, or your own LightningModule with encode/decode) on MNIST-format digits, CIFAR-10 "
               "or a folder of your images, and watch its latent space learn. Each run lives in runs/<run_id>/: its "
               "config, checkpoints, W&B run and pictures. `lvae explore runs/<run_id>` writes a run's latent "
               "explorer page (latents/explorer.html) again from what it kept.")
SUBCOMMANDS = {
    "fit": "Train a VAE; --ckpt_path last continues the most recent run, --run_id ID --ckpt_path last continues "
           "run ID (or starts it, if it does not exist yet).",
    "validate": "Evaluate a checkpoint on the validation split and draw every latent picture, into "
                "runs/<run_id>/validate/ of the checkpoint's run.",
    "test": "Report a checkpoint's test losses and importance-weighted NLL, into runs/<run_id>/test/ of its run.",
    "predict": "Write the latent means and log-variances of a split to latents_<split>.npz, in runs/<run_id>/predict/ "
               "of the checkpoint's run.",
}
PRINTS = (f" Add {PRINT_CONFIG} to print the configuration this command would run with (run id, run folder, W&B mode "
          "and checkpoint folder filled in) and exit.")
class LVAEHelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, with a type's list of known subclasses cut short: for a network argument it lists every
    torch.nn.Module subclass that is imported, hundreds of them."""

    @override
    def _get_help_string(self, action: Any) -> str:
        text = super()._get_help_string(action)
        head, found, rest = text.partition(", known subclasses: ")
        if found:
            names = rest.rstrip(")").split(", ")
            if len(names) > 8:
                text = f"{head}{found}{', '.join(names[:8])}, ... ({len(names) - 8} more))"
        return text


CONFIGS = importlib.resources.files("lvae.configs")  # installed with lvae: `--config mnist` names configs/mnist.yaml
# With no --config every command has configs/mnist.yaml's callbacks: every picture is on.
DEFAULT_CALLBACKS = CONFIGS / "mnist.yaml"
PARSER_KWARGS = {"prog": "lvae", "description": DESCRIPTION, "print_config": None,
                 **{name: {"description": text + PRINTS, "print_config": None, "formatter_class": LVAEHelpFormatter}
                    for name, text in SUBCOMMANDS.items()}}


def packaged_config(name: str) -> str:
    """`--config NAME`: a file, or else the config of that name installed with lvae (mnist, mnist_z2, ...). A file is
    checked to be text before the parser reads it."""
    if Path(name).is_file():
        check_config_file(Path(name))
        return name
    known = sorted(p.name[:-5] for p in CONFIGS.iterdir() if p.name.endswith(".yaml"))
    stem = Path(name).name.removesuffix(".yaml")
    if Path(name).exists() or "/" in name:
        hint = f"; lvae comes with a config of that name: --config {stem}" if stem in known else ""
        raise ConfigError(f"--config {name}: no such file{hint}")
    packaged = CONFIGS / f"{stem}.yaml"
    if not packaged.is_file():
        raise ConfigError(f"--config {name}: no such file, and no config of that name comes with lvae (it has "
                          f"{', '.join(known)}, in {CONFIGS})")
    return str(packaged)


MAX_CONFIG_BYTES = 1 << 20


def check_config_file(path: Path) -> None:
    """Refuse a config that is not UTF-8 text, naming it, before the parser meets it."""
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"--config {path} holds {path.stat().st_size:,} bytes, which is no config (lvae reads at "
                          f"most {MAX_CONFIG_BYTES:,}). Give the path of a .yaml config.")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path} is not a YAML file: byte {err.start} is not UTF-8 text "
                          f"({err.object[err.start:err.start + 1]!r}). Give the path of a .yaml config.") from None
    check_yaml_aliases(f"--config {path}", text)  # a small file whose aliases expand without end


LOGGER_FLAGS = ("--trainer.logger", "--trainer.logger+")
RUN_FOLDER = "."  # a logger's save_dir that lvae replaces with the run folder


def logger_with_save_dir(value: str) -> str:
    """A logger named on the command line (a class path, a name, JSON of one or a list) with `save_dir` filled in
    where its class requires one (TensorBoardLogger, CSVLogger), so that the parser accepts it: lvae puts every
    logger's files in the run folder, which does not exist yet when the command line is parsed."""
    try:
        spec = json.loads(value) if value.lstrip().startswith(("{", "[")) else value
    except ValueError:
        return value  # the parser names what is wrong with it
    specs = spec if isinstance(spec, list) else [spec]
    filled, added = [], False
    for one in specs:
        one = {"class_path": one} if isinstance(one, str) else one
        if not isinstance(one, dict) or not isinstance(one.get("class_path"), str):
            return value
        path = one["class_path"] if "." in one["class_path"] else f"lightning.pytorch.loggers.{one['class_path']}"
        try:
            required = inspect.signature(import_class(path)).parameters["save_dir"].default is inspect.Parameter.empty
        except (ImportError, AttributeError, KeyError, TypeError, ValueError):
            required = False  # not a logger lvae knows to fill in: the parser says what is wrong, if anything
        init_args = dict(one.get("init_args") or {})
        if required and "save_dir" not in init_args:
            init_args["save_dir"], added = RUN_FOLDER, True
        filled.append({**one, "init_args": init_args} if init_args else one)
    if not added:
        return value  # false, null, a logger that needs nothing: as given
    return json.dumps(filled if isinstance(spec, list) else filled[0])


PARSER_KEY = re.compile(r'Parser key "([^"]+)":')
# The parts of jsonargparse's nested message for a class argument that say nothing about what went wrong.
STRUCTURE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
             "Expected a <class 'NoneType'>", "Not a valid subclass", "Subclass types expect", "- a class path",
             "- a dict", "Problem with given class_path")
OLD_CALLBACKS = re.compile(r"(?<![\w.])callbacks\.([A-Z]\w*)")


def condense(message: str) -> list[str]:
    """jsonargparse's message, cut to what went wrong. For a class argument (--model, --data, a network, a callback)
    it nests the real error inside one per alternative type: say the full key and the innermost reason instead,
    with the fix where lvae knows it (a module not on PYTHONPATH, a class path from before lvae.callbacks)."""
    lines = message.strip().splitlines()
    if "Problem with given class_path" not in message and "expects a function or a callable class" not in message:
        return lines
    keys = [found.group(1) for line in lines if (found := PARSER_KEY.search(line))]
    reasons = [line for line in lines if line.strip() and not PARSER_KEY.search(line)
               and not any(part in line for part in STRUCTURE)]
    deepest = max(reasons, key=lambda line: len(line) - len(line.lstrip())) if reasons else lines[0]
    reason, _, got = deepest.strip().lstrip("- ").partition(". Got value: ")
    reason = re.sub(r"^Expected a typing\.Literal\[(.*)\]$", r"expected one of \1", reason)
    if got:  # the value given, named as the parser's own messages do for other keys
        reason += f"; got {got if len(got) <= 60 else got[:57] + '...'}"
    reason = re.sub(r"^Type .* expects a function or a callable class: ", "", reason)
    said = [f'Parser key "{".".join(keys)}": {reason}']
    old = OLD_CALLBACKS.search(message)
    missing = re.search(r"No module named '([^']+)'", reason)
    if old:
        said.append(f"callbacks.{old.group(1)} is now lvae.callbacks.{old.group(1)}: in your config, write "
                    "`class_path: lvae.callbacks.` where it says `class_path: callbacks.`")
    elif missing:
        # A class path named in a config is quoted after class_path; one given on the command line is the value.
        paths = re.findall(r"class_path[=:]? ?'([^']+)'", message) + re.findall(r"Given value: (\S+)$", message, re.M)
        module = missing.group(1)
        class_path = next((path for path in paths if path.startswith(f"{module}.")), module)
        said.append(f"class_path {class_path} cannot be imported: is its module on PYTHONPATH? Run lvae from the "
                    "folder that holds it, or add that folder to PYTHONPATH.")
    return said


class LVAEArgumentParser(LightningArgumentParser):
    """Parser errors in a few lines: the message, then where the accepted options are listed (jsonargparse prints
    the whole usage first, some 80 lines)."""

    @override
    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:  # a parser jsonargparse uses inside, whose caller handles the error
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        lines = condense(message)
        if len(lines) > ERROR_LINES:
            lines = [*lines[:ERROR_LINES - 1], "  ..."]
        sys.stderr.write(f"{prog}: error: " + "\n".join(lines) + f"\nSee '{prog} --help' for the accepted options.\n")
        self.exit(2)


    @override
    def format_help(self) -> str:
        """A subcommand's help, followed by the arguments of the default model and data module: in subclass mode
        jsonargparse would list only `--model` and `--data` themselves, not `--model.latent_dim` and the rest."""
        text = super().format_help()
        if not {"model", "data"} <= {action.dest for action in self._actions}:
            return text
        for key, class_path in DEFAULT_CLASSES.items():
            own = ArgumentParser(formatter_class=LVAEHelpFormatter, prog=self.prog)
            own.add_class_arguments(import_class(class_path), key, fail_untyped=False)
            # Its arguments as jsonargparse lists them, after its usage and its "--model CONFIG" line.
            _, _, arguments = own.format_help().partition(f"  --{key} CONFIG")
            text += (f"\nArguments of the default {key}, {class_path} (another class: --{key} CLASS_PATH, and "
                     f"--{key}.help CLASS_PATH for its arguments):\n" + arguments.partition("\n")[2])
        return text


class RunConfig(SaveConfigCallback):
    """Stores the resolved config in the run folder, next to any earlier one (a resumed run adds config-2.yaml),
    and in the loggers' hyperparameters (W&B's run config). Says that the run exists (`announce`) as it writes the
    config: after the data module's setup, which may still refuse the command, and before W&B starts."""

    def __init__(self, parser: LightningArgumentParser, config: Namespace, run_dir: str,
                 announce: Optional[str] = None, **kwargs: Any):
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)
        self.run_dir = Path(run_dir)
        self.announce = announce

    @override
    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if self.announce:
            say(self.announce)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path, n = self.run_dir / "config.yaml", 2
        while path.exists():
            path, n = self.run_dir / f"config-{n}.yaml", n + 1
        self.parser.save(self.config, path, skip_none=False)
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": resolved})


DEFAULT_IMAGE_SHAPE = (1, 28, 28)  # VAE's own default
DEFAULT_CLASSES = {"model": "lvae.VAE", "data": "lvae.MNISTDataModule"}


def import_class(class_path: str) -> Any:
    """The class a config names (the parser has already imported it, so this cannot fail or run anything new)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def own_defaults(spec: Namespace) -> dict[str, Any]:
    """`spec` ({class_path, init_args}) with every argument its class has a default for set to that default; those
    without one (a folder's root) keep the value given."""
    cls = import_class(spec.class_path)
    required = {name for name, param in inspect.signature(cls).parameters.items()
                if param.default is inspect.Parameter.empty}
    own = LightningArgumentParser()
    own.add_class_arguments(cls, "init_args", fail_untyped=False)
    init_args = {key: value for key, value in own.get_defaults().init_args.items() if key not in required}
    given = spec.get("init_args") or Namespace()
    init_args.update({key: given[key] for key in required if key in given})
    return {"class_path": spec.class_path, "init_args": init_args}


def plain_numbers(config: Namespace) -> None:
    """Values parsed as jsonargparse's PositiveInt & co become plain numbers. When --model or --data names another
    class than the default, jsonargparse carries the default's values over as those types, which its own YAML dump
    (the run's config.yaml, the hyperparameters) cannot write."""
    for key, value in config.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or type(value) in (int, float):
            continue
        config[key] = int(value) if isinstance(value, int) else float(value)


def new_run_id() -> str:
    """Sortable by start time and unique: 20261124-224636-3fa9."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


class ResumableProgressBar(TQDMProgressBar):
    """Lightning's progress bar, also for an epoch resumed from its middle: Lightning skips that epoch's
    `on_train_epoch_start`, where the bar learns the epoch's length and number, so it would read "Training: 23/?"."""

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self.on_train_epoch_start(trainer, pl_module)

    @override
    def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, Any]:
        # Lightning shows the logger's version, here the last 4 characters of the run id ("v_num=e211"): lvae's run
        # line names the whole run.
        metrics = super().get_metrics(trainer, pl_module)
        metrics.pop("v_num", None)
        return metrics


def wandb_reachable() -> tuple[bool, str]:
    """Whether the W&B server answers HTTP within a few seconds (any status counts as an answer)."""
    url = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")
    try:
        urllib.request.urlopen(url, timeout=WANDB_PROBE_SECONDS)
    except urllib.error.HTTPError:
        return True, url
    except Exception as err:  # refused, DNS failure, timeout: W&B cannot be reached from here
        return False, f"{url}: {getattr(err, 'reason', err)}"
    return True, url


def wandb_has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_offline(requested: bool, probe: bool = True) -> tuple[bool, Optional[str]]:
    """Offline unless online is asked for (WANDB_MODE=online, or a configured API key) and W&B answers (without
    `probe`, W&B is taken to answer).

    Returns (offline, why) where `why` explains a fall-back to offline."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if requested or mode in ("offline", "dryrun"):
        return True, None
    if mode == "online" and not wandb_has_api_key():
        raise ConfigError("WANDB_MODE=online asks W&B to log online, and W&B has no API key here. Run `wandb login`, "
                          "set WANDB_API_KEY, or unset WANDB_MODE to log offline (lvae then says how to upload).")
    if mode != "online" and not wandb_has_api_key():
        return True, None
    if not probe:
        return False, None
    reachable, detail = wandb_reachable()
    return (False, None) if reachable else (True, detail)


class LVAECLI(LightningCLI):
    """LightningCLI with one folder per run, offline W&B by default, runs that are found and never overwritten,
    and clean errors for bad values."""

    def __init__(self, args: Any = None, run: bool = True, run_folder: Optional[RunFolder] = None,
                 ddp_watch: Optional[DDPWatch] = None):
        self._print_config = False
        self.ddp_watch = ddp_watch  # told the trainer and run once built: its message names them (main holds it)
        self._checkpoint_run: Optional[str] = None  # the run under the runs folder whose checkpoint this command reads
        # Claimed or held by fit; the caller that passes it releases it (main does, however the command ends).
        self.run_folder = run_folder if run_folder is not None else RunFolder()
        # Subclass mode over any LightningModule and LightningDataModule: --model and --data take a class of your
        # own; lvae's VAE and MNISTDataModule are the defaults.
        super().__init__(L.LightningModule, L.LightningDataModule, save_config_callback=RunConfig, args=args, run=run,
                         seed_everything_default=0, parser_class=LVAEArgumentParser, parser_kwargs=PARSER_KWARGS,
                         subclass_mode_model=True, subclass_mode_data=True)

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={L.__version__}"])
        parser = self.parser_class(**kwargs)
        packaged = ", ".join(sorted(p.name[:-5] for p in CONFIGS.iterdir() if p.name.endswith(".yaml")))
        parser.add_argument("-c", "--config", action=ActionConfigFile,
                            help=f"A YAML config file, or the name of one installed with lvae ({packaged}); may be "
                                 "given several times, later ones override earlier ones.")
        return parser

    @override
    def setup_parser(self, add_subcommands: bool, main_kwargs: dict[str, Any],
                     subparser_kwargs: dict[str, Any]) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        if add_subcommands:
            # `lvae --help` lists each subcommand with Lightning's Trainer docstring; say what lvae does instead
            # (argparse keeps those lines in its private _choices_actions).
            for choice in self.parser._subcommands_action._choices_actions:
                choice.help = SUBCOMMANDS[choice.dest]

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_id", type=Optional[str], default=None,
                            help="Run folder name under trainer.default_root_dir and W&B run id. A new id starts a "
                                 "run; an existing one is continued with --ckpt_path last, and is otherwise refused.")
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.filename": "best-epoch{epoch:03d}",
            "checkpoint.auto_insert_metric_name": False,
            # One last.ckpt per run folder, overwritten: a resumed run must not write last-v1.ckpt beside it,
            # or the next --ckpt_path last would find the older file.
            "checkpoint.enable_version_counter": False,
            "trainer.default_root_dir": "runs",
            "trainer.max_epochs": 10,
            "model": {"class_path": DEFAULT_CLASSES["model"]},
            "data": {"class_path": DEFAULT_CLASSES["data"]},
            "trainer.callbacks": yaml.safe_load(DEFAULT_CALLBACKS.read_text())["trainer"]["callbacks"],
        })

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
        else:
            self._parse_command_line(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        if config.get("run_id") is not None:  # a name, before it is used as a path
            check_run_id(config.run_id)
        if subcommand == "fit" and config.trainer.max_epochs == 0:  # before the seed is set and said
            self._parser(subcommand).error('Parser key "trainer.max_epochs": 0 trains nothing; give at least 1 (or '
                                           '-1 for no limit)')
        # Completed once, before the checkpoint is compared with it and before the classes are built.
        for key in ("model", "data"):
            plain_numbers(config[key])
        self._take_image_shape_from_data(config)

    def _parse_command_line(self, parser: LightningArgumentParser, args: Any) -> None:
        # Answered once lvae has filled in the run's id, folders and W&B mode: jsonargparse's own --print_config
        # prints before that, with placeholders (save_dir: ., dirpath: null) the run never uses.
        given = list(sys.argv[1:] if args is None else args)
        for i, arg in enumerate(given):
            if arg == "--config" and i + 1 < len(given):
                given[i + 1] = packaged_config(given[i + 1])
            elif arg.startswith("--config="):
                given[i] = "--config=" + packaged_config(arg.split("=", 1)[1])
        given = [logger_with_save_dir(arg) if i and given[i - 1] in LOGGER_FLAGS else
                 next((f"{flag}={logger_with_save_dir(arg[len(flag) + 1:])}" for flag in LOGGER_FLAGS
                       if arg.startswith(f"{flag}=")), arg)
                 for i, arg in enumerate(given)]
        kept = [arg for arg in given if arg != PRINT_CONFIG]  # `--print_config=...` is jsonargparse's to answer
        self._print_config = read_command_line(given).print_config
        self.config = parser.parse_args(kept)
        # `--data lvae.ImageFolderDataModule` would otherwise keep every MNISTDataModule default the new class also
        # takes (jsonargparse carries a replaced class's arguments over, defaults included): predict_split=test
        # instead of the folder's val. Parsed again with the chosen classes as the defaults, only the values a user
        # gave are carried over.
        subcommand = self.config.get("subcommand")
        target = self._parser(subcommand) if subcommand else parser
        config = self.config[subcommand] if subcommand else self.config
        chosen = {key: own_defaults(config[key]) for key in ("model", "data")
                  if config.get(key) and config[key].class_path != DEFAULT_CLASSES[key]}
        if chosen:
            target.set_defaults(chosen)
            self.config = parser.parse_args(kept)

    @override
    def _parse_ckpt_path(self) -> None:
        """Find the checkpoint that `--ckpt_path` means and check it against this command.

        Lightning's version of this step overwrites the model config with the checkpoint's hyperparameters,
        silently discarding values the user gave. Here the config stays what the user asked for; a checkpoint of
        another architecture is refused with both values named, and so is continuing a run with other values for
        the keys that define it (RUN_KEYS)."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        if config is None or not config.get("ckpt_path"):
            return
        root = Path(config.trainer.default_root_dir or "runs")
        run_id = config.run_id or os.environ.get(RUN_ID_ENV)
        given = config.ckpt_path
        if given == "last":
            if subcommand == "fit" and run_id and not (root / run_id / "checkpoints" / "last.ckpt").is_file():
                self._start_named_run(root / run_id, config)
                return
            path, self._checkpoint_run = find_last_checkpoint(root, run_id)
            config.ckpt_path = str(path)
        else:
            folder = Path(given).resolve().parent
            # A checkpoint of a run under root belongs to that run, unless fit is told to start another from it.
            if folder.name == "checkpoints" and folder.parent.parent == root.resolve() and \
                    (subcommand != "fit" or run_id in (None, folder.parent.name)):
                self._checkpoint_run = folder.parent.name
        if self._checkpoint_run:
            check_run_id(self._checkpoint_run, "folder")
        if subcommand == "fit" and self._checkpoint_run:
            checkpoint = check_continues(Path(config.ckpt_path), given, config, root)
            position = saved_train_position(checkpoint)
            if position:
                check_same_batches(position, section_values(config, "data").get("batch_size"), None)
        else:
            check_checkpoint(config.ckpt_path, config)

    def _start_named_run(self, run_dir: Path, config: Namespace) -> None:
        """`--run_id X --ckpt_path last` before run X has a checkpoint: start it, so that one command starts or
        continues a run (a SLURM job that is requeued, a preemptible one)."""
        if run_dir.exists() and first_start():
            holder = RunFolder.holder(run_dir)
            if holder:
                raise CheckpointError(f"--ckpt_path last: run {run_dir.name} is being trained by {holder} right now; "
                                      "a run is continued by one process at a time (it has no checkpoint yet). Wait "
                                      "for it to end (or stop it), then continue the run; or start another run.")
            others = sorted((run_dir / "checkpoints").glob("*.ckpt"))
            if others:
                raise CheckpointError(
                    f"--ckpt_path last: run {run_dir.name} has no checkpoints/last.ckpt, but has "
                    f"{', '.join(p.name for p in others)}. Continue it from one of those: "
                    f"{shell('--run_id', run_dir.name, '--ckpt_path', others[-1])}")
            raise CheckpointError(f"--ckpt_path last: run {run_dir.name} has no checkpoint to continue ({run_dir} "
                                  "holds no checkpoints/: it stopped before its first one). Start it again "
                                  f"under another --run_id, or remove {run_dir} to reuse the id.")
        say(f"lvae: run {run_dir.name} has no checkpoint yet; starting it from the beginning (the same "
            "command continues it once it has one)")
        config.ckpt_path = None

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if config.trainer.logger in (None, True):
            default = self._parser(self.subcommand).parse_object({"trainer": {"logger": DEFAULT_LOGGER}})
            config.trainer.logger = default.trainer.logger
        root = Path(config.trainer.default_root_dir or "runs")
        if self.subcommand == "fit":
            run_id = (config.run_id or os.environ.get(RUN_ID_ENV) or self._checkpoint_run or launcher_run_id()
                      or new_run_id())
            # A new run's folder is claimed by the one process that starts the job (claimed before it is written,
            # after --print_config, which writes nothing); torchrun's and SLURM's processes share theirs by design.
            claim = not self._checkpoint_run and first_start() and run_id != launcher_run_id()
            run_dir, wandb_id = root / run_id, run_id
        else:
            # An evaluation stays with its run, in a folder of its own: fit's pictures are never overwritten.
            run_id = (self._checkpoint_run or config.run_id or os.environ.get(RUN_ID_ENV) or launcher_run_id()
                      or new_run_id())
            run_dir, wandb_id = root / run_id / self.subcommand, f"{run_id}-{self.subcommand}-{secrets.token_hex(2)}"
        if config.checkpoint.dirpath is None:  # an evaluation writes none, but names the run's folder as its own
            config.checkpoint.dirpath = str(root / run_id / "checkpoints")
        os.environ[RUN_ID_ENV] = run_id
        config.run_id = run_id
        self._configure_loggers(config, run_dir, run_id, wandb_id)
        self.save_config_kwargs["run_dir"] = str(run_dir)
        self.run_dir = run_dir
        if self._print_config:
            sys.stdout.write(self._parser(self.subcommand).dump(config, skip_none=False))
            sys.exit(0)
        if self.subcommand == "fit" and global_zero():
            if claim:
                self.run_folder.claim(run_dir)
            else:
                self.run_folder.hold(run_dir)

    @staticmethod
    def _take_image_shape_from_data(config: Namespace) -> None:
        """lvae's VAE takes its image shape (C, H, W) from the data module, so the user never types it twice; a model
        of your own is left as it is, and need not take an `image_shape`."""
        model_class, data_class = (import_class(config[key].class_path) for key in ("model", "data"))
        if not (isinstance(model_class, type) and issubclass(model_class, VAE)):
            return
        shape = getattr(data_class, "image_shape", None)
        if shape is None:  # known only once the module is built from its arguments (e.g. an image folder's size)
            shape = getattr(data_class(**config.data.init_args.as_dict()), "image_shape", None)
        if shape is None:
            return
        given = list(config.model.init_args.get("image_shape") or DEFAULT_IMAGE_SHAPE)
        if given not in (list(DEFAULT_IMAGE_SHAPE), list(shape)):
            raise ConfigError(f"model.image_shape={given} differs from the data's image shape {list(shape)}; leave "
                              "model.image_shape out: lvae takes it from the data module")
        config.model.init_args.image_shape = tuple(shape)

    def _configure_loggers(self, config: Namespace, run_dir: Path, run_id: str, wandb_id: str) -> None:
        loggers = config.trainer.logger
        for logger in loggers if isinstance(loggers, list) else [loggers]:
            if not isinstance(logger, Namespace) or "class_path" not in logger:
                continue
            args = logger.init_args
            name = logger.class_path.rsplit(".", 1)[-1]
            if args.get("save_dir") in (None, ".", "") or name in ("CSVLogger", "TensorBoardLogger") and \
                    args.get("save_dir") == "lightning_logs":
                args.save_dir = str(run_dir)
            if name in ("CSVLogger", "TensorBoardLogger"):
                # Straight into the run folder instead of lightning_logs/version_N below it.
                args.name, args.version = "", ""
            if name == "WandbLogger":
                args.id = args.get("id") or wandb_id
                args.name = args.get("name") or wandb_id
                # Evaluations are W&B runs of their own, grouped with the training run, whose history only fit
                # appends to, in order.
                args.group = args.get("group") or run_id
                args.job_type = args.get("job_type") or self.subcommand
                offline, why = wandb_offline(bool(args.get("offline")), probe=not self._print_config)
                args.offline = offline
                if offline and args.get("settings") is None:
                    # lvae's own line says where the offline run is and how to upload it; W&B's eight say it again.
                    args.settings = {"silent": True}
                sync = f"wandb sync {shell(run_dir)}/wandb/offline-run-*"  # the glob stays the shell's
                if why:
                    notice(f"W&B is not reachable ({why}); logging offline instead. Upload later with: {sync}")
                if self._print_config:
                    continue
                if self.subcommand != "fit":
                    what = f"{self.subcommand} of run {run_id}"
                else:
                    what = f"{'resumed ' if config.get('ckpt_path') else ''}run {run_id}"
                mode = f"offline: {sync} uploads it" if offline else "online"
                self.save_config_kwargs["announce"] = f"lvae: {what} in {run_dir} (W&B {mode})"

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except Exception as err:
            # jsonargparse wraps a constructor's error in its own 40-line one; ours already names key and fix.
            cause: Optional[BaseException] = err
            while cause is not None and not isinstance(cause, LVAEError):
                cause = cause.__cause__ or cause.__context__
            if cause is None:
                raise
            raise cause from None

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Any:
        extra = [self._get(self.config_init, key) for key in self._parser(self.subcommand).callback_keys]
        config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        if config.get("enable_checkpointing") is False:
            # Asked for no checkpoints: drop ours too, or Lightning refuses the combination.
            extra = [cb for cb in extra if not isinstance(cb, ModelCheckpoint)]
        # In every subcommand: an evaluation of a fit's checkpoint would otherwise be told by Lightning to add them.
        extra += [RandomState(), WandbHistory()]
        given = config.get("callbacks") or []
        if config.get("enable_progress_bar") is not False and \
                not any(isinstance(cb, ProgressBar) for cb in [*(given if isinstance(given, list) else [given])]):
            extra.append(ResumableProgressBar())
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        # What Lightning writes beside no logger's folder (pictures without a logger, a SLURM requeue checkpoint)
        # goes into the run folder too; trainer.default_root_dir stays the folder that holds the runs.
        config["default_root_dir"] = str(self.run_dir)
        trainer = self._instantiate_trainer(config, extra)
        subcommand = self.config[self.subcommand]
        noise.quiet_trainer(trainer, resuming=self.subcommand == "fit" and subcommand.get("ckpt_path") is not None)
        if trainer.is_global_zero:
            # An evaluation's folder, and W&B's (which warns "git root <dir> does not exist" when it is not there
            # yet); removed again when the command is refused.
            self.run_folder.make(self.run_dir)
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger) and logger.save_dir:
                    self.run_folder.make(Path(logger.save_dir), logger=type(logger).__name__)
                    # W&B's service, which a process's runs share, reads a relative folder from the folder it was
                    # started in: a notebook's next command, run elsewhere, would write into the first one's.
                    logger._wandb_init["dir"] = os.path.abspath(logger.save_dir)
        if self.ddp_watch is not None:
            self.ddp_watch.track(trainer, subcommand.get("run_id"))
        return trainer

    def after_fit(self) -> None:
        self._stop_if_terminated()

    def after_validate(self) -> None:
        self._stop_if_terminated()

    def after_test(self) -> None:
        self._stop_if_terminated()

    def after_predict(self) -> None:
        self._stop_if_terminated()

    def _stop_if_terminated(self) -> None:
        """A SIGTERM that Lightning took note of where it no longer looks (after an evaluation's last batch, while
        its pictures were drawn) still ends the command as one."""
        if self.trainer.received_sigterm:
            raise SIGTERMException(SIGTERM_EXIT)

    def fit(self, **kwargs: Any) -> None:
        """`trainer.fit`, whose divergence message says how to continue this run, when it can be continued."""
        try:
            self.trainer.fit(**kwargs)
        except DivergenceError as err:
            run_id = self._get(self.config, "run_id")
            last = Path(self._get(self.config, "checkpoint").dirpath) / "last.ckpt"
            how = (f"Run {run_id} can continue from last.ckpt, its last finite state: {continue_flags(last)}."
                   if last.is_file() else f"Run {run_id} wrote no checkpoint: start it again instead of resuming.")
            raise DivergenceError(f"{err} {how}") from None


def _wandb_run() -> Any:
    """The open W&B run of this process, if W&B was imported and one is open."""
    wandb = sys.modules.get("wandb")
    return None if wandb is None else wandb.run


def main(args: Any = None) -> None:
    """Entry point of the `lvae` console script and of `python -m lvae`."""
    given = list(sys.argv[1:] if args is None else args)
    if read_command_line(given).subcommand == "explore":  # a page written again from a run's kept files: no trainer
        from lvae.explore import main as explore_main

        sys.exit(explore_main(given[1:]))
    previous = os.environ.get(RUN_ID_ENV)
    run_folder = RunFolder()
    found_run = _wandb_run()  # a run of the caller's own, open before this command: theirs to finish
    finished = False
    # Your modules in the working folder (my_networks.py, named by a class_path) import as they do under
    # `python -m lvae`; searched after the installed packages, so a yaml.py or torch.py there shadows nothing.
    here = os.getcwd()
    searched = here not in {os.path.abspath(entry or os.curdir) for entry in sys.path}
    if searched:
        sys.path.append(here)
    try:
        # SIGTERM is lvae's wherever Lightning's handler is not; a DDP process that stops ends the job with one message.
        with EntrySignals(), noise.quiet(), DDPWatch() as ddp_watch:
            LVAECLI(args=args, run_folder=run_folder, ddp_watch=ddp_watch)
        finished = True
    except LVAEError as err:
        if err.exit_code == 2:  # refused before any work: nothing of the run stays on disk
            run = _wandb_run()
            if run is not None and run is not found_run:
                run.finish(exit_code=2)  # its files are closed before they are removed; the caller's own stays open
            run_folder.release(refused=True)
        print(f"lvae: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except SIGTERMException:
        # Lightning (or EntrySignals) turned SIGTERM into this after the callbacks saved state.
        print(STOPPED, file=sys.stderr)
        sys.exit(SIGTERM_EXIT)
    except KeyboardInterrupt:  # outside training (while starting up): nothing to save
        print("lvae: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(SIGINT_EXIT)
    except SystemExit as err:
        # Lightning ends a fit stopped by Ctrl-C with sys.exit(1), once last.ckpt is saved; the convention is 128 + 2.
        if isinstance(err.__context__, KeyboardInterrupt):
            if getattr(err.__context__, "lvae_after_training", False):  # while fit waited for its last pictures
                print("lvae: stopped by Ctrl-C", file=sys.stderr)
            sys.exit(SIGINT_EXIT)
        raise
    finally:
        run = _wandb_run()
        if run is not None and run is not found_run:
            # A process's exit would close it; in a notebook or a test the next command must not log into it.
            run.finish(exit_code=0 if finished else 1)
        run_folder.release()  # a requeued job, or the caller's next command, may continue the run
        if searched and here in sys.path:
            sys.path.remove(here)
        # An in-process caller (a notebook, a test) starts its next run with a fresh id.
        if previous is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = previous
