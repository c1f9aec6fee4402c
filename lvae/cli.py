"""The `lvae` command: a LightningCLI over `VAE` and `MNISTDataModule` with the defaults users expect.

Every run lives in one folder, ``<trainer.default_root_dir>/<run_id>/``: the resolved config, ``checkpoints/``,
the W&B run (offline unless a W&B API key is configured) and ``latents/`` with every picture as PNG; `validate`,
`test` and `predict` of a run's checkpoint write into ``<run folder>/<subcommand>/``. Lightning's own defaults
scatter these (a WandbLogger ignores default_root_dir), make ``--ckpt_path last`` silently start over or continue
an unrelated run, and refuse to run twice in one folder; this module is where those are put right.
"""

import netrc
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, NoReturn, Optional

import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, TQDMProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lvae import noise, processes
from lvae.checkpoints import (AtomicCheckpointIO, RandomState, RunCheckpoint,
                              check_checkpoint, check_continues, continue_flags, find_last_checkpoint)
from lvae.data import MNISTDataModule, check_same_batches, saved_train_position
from lvae.errors import CheckpointError, ConfigError, DivergenceError, LVAEError
from lvae.model import VAE

RUN_ID_ENV = "LVAE_RUN_ID"  # how DDP ranks started by Lightning learn the run id that rank zero chose
WANDB_PROBE_SECONDS = 5.0
# Filled in after parsing, not as the parser's default: resolving WandbLogger's signature imports wandb, a second
# that `lvae --help` and a mistyped value would otherwise wait for.
DEFAULT_LOGGER = {"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"project": "lvae"}}
ERROR_LINES = 4  # of a parser's message: with the line pointing at --help, a bad value costs at most 5 lines
PRINT_CONFIG = "--print_config"
DESCRIPTION = ("Train a VAE on MNIST-format digits and watch its latent space learn. Each run lives in "
               "runs/<run_id>/: its config, checkpoints, W&B run and pictures.")
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
PARSER_KWARGS = {"prog": "lvae", "description": DESCRIPTION, "print_config": None,
                 **{name: {"description": text + PRINTS, "print_config": None} for name, text in SUBCOMMANDS.items()}}


class LVAEArgumentParser(LightningArgumentParser):
    """Parser errors in a few lines: the message, then where the accepted options are listed (jsonargparse prints
    the whole usage first, some 80 lines)."""

    @override
    def error(self, message: str, ex: Optional[Exception] = None) -> NoReturn:
        if not self.exit_on_error:  # a parser jsonargparse uses inside, whose caller handles the error
            super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        lines = message.strip().splitlines()
        if len(lines) > ERROR_LINES:
            lines = [*lines[:ERROR_LINES - 1], "  ..."]
        sys.stderr.write(f"{prog}: error: " + "\n".join(lines) + f"\nSee '{prog} --help' for the accepted options.\n")
        self.exit(2)


class RunConfig(SaveConfigCallback):
    """Stores the resolved config in the run folder, next to any earlier one (a resumed run adds config-2.yaml),
    and in the loggers' hyperparameters (W&B's run config)."""

    def __init__(self, parser: LightningArgumentParser, config: Namespace, run_dir: str, **kwargs: Any):
        super().__init__(parser, config, save_to_log_dir=False, **kwargs)
        self.run_dir = Path(run_dir)

    @override
    def save_config(self, trainer: Any, pl_module: Any, stage: str) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        path, n = self.run_dir / "config.yaml", 2
        while path.exists():
            path, n = self.run_dir / f"config-{n}.yaml", n + 1
        self.parser.save(self.config, path, skip_none=False)
        resolved = yaml.safe_load(self.parser.dump(self.config, skip_none=False))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": resolved})


def new_run_id() -> str:
    """Sortable by start time and unique: 20261124-224636-3fa9."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def launcher_run_id() -> Optional[str]:
    """The id every process of one multi-node job shares, when a launcher started them all.

    Lightning's own DDP launcher starts ranks from rank zero (they inherit LVAE_RUN_ID); torchrun and SLURM
    start every process independently, so each would otherwise make up its own id and its own run folder."""
    if os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return f"torchrun-{os.environ['TORCHELASTIC_RUN_ID']}"
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return f"slurm-{os.environ['SLURM_JOB_ID']}"
    return None


def first_start() -> bool:
    """Whether this process starts its job: global rank zero, and not a restart. Ranks that Lightning's launcher
    starts, torchrun's other processes and nodes, elastic restarts and SLURM requeues share a run id by design."""
    others = ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT", "RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK",
              "SLURM_PROCID")
    return all(os.environ.get(var, "0") in ("", "0") for var in others)


class ResumableProgressBar(TQDMProgressBar):
    """Lightning's progress bar, also for an epoch resumed from its middle: Lightning skips that epoch's
    `on_train_epoch_start`, where the bar learns the epoch's length and number, so it would read "Training: 23/?"."""

    @override
    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        super().on_train_start(trainer, pl_module)
        self.on_train_epoch_start(trainer, pl_module)


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
    if mode != "online" and not wandb_has_api_key():
        return True, None
    if not probe:
        return False, None
    reachable, detail = wandb_reachable()
    return (False, None) if reachable else (True, detail)


class LVAECLI(LightningCLI):
    """LightningCLI with one folder per run, offline W&B by default, runs that are found and never overwritten,
    and clean errors for bad values."""

    def __init__(self, args: Any = None, run: bool = True):
        self._print_config = False
        self._checkpoint_run: Optional[str] = None  # the run under the runs folder whose checkpoint this command reads
        super().__init__(VAE, MNISTDataModule, save_config_callback=RunConfig, args=args, run=run,
                         seed_everything_default=0, parser_class=LVAEArgumentParser, parser_kwargs=PARSER_KWARGS)

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
        })

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if isinstance(args, (dict, Namespace)):
            super().parse_arguments(parser, args)
            return
        # Answered once lvae has filled in the run's id, folders and W&B mode: jsonargparse's own --print_config
        # prints before that, with placeholders (save_dir: ., dirpath: null) the run never uses.
        given = list(sys.argv[1:] if args is None else args)
        kept = [arg for arg in given if arg != PRINT_CONFIG]
        self._print_config = len(kept) < len(given)
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
        if subcommand == "fit" and self._checkpoint_run:
            checkpoint = check_continues(Path(config.ckpt_path), given, config, root)
            position = saved_train_position(checkpoint)
            if position:
                check_same_batches(position, config.data.batch_size, None)
        else:
            check_checkpoint(config.ckpt_path, config.model)

    def _start_named_run(self, run_dir: Path, config: Namespace) -> None:
        """`--run_id X --ckpt_path last` before run X has a checkpoint: start it, so that one command starts or
        continues a run (a SLURM job that is requeued, a preemptible one)."""
        if run_dir.exists() and first_start():
            raise CheckpointError(f"--ckpt_path last: run {run_dir.name} has no checkpoint to continue ({run_dir} "
                                  "holds no checkpoints/last.ckpt: it stopped before its first one). Start it again "
                                  f"under another --run_id, or remove {run_dir} to reuse the id.")
        rank_zero_info(f"lvae: run {run_dir.name} has no checkpoint yet; starting it from the beginning (the same "
                       "command continues it once it has one)")
        config.ckpt_path = None

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if self.subcommand == "fit" and config.trainer.max_epochs == 0:
            raise ConfigError("trainer.max_epochs=0 trains nothing; give at least 1 (or -1 for no limit)")
        if config.trainer.logger in (None, True):
            default = self._parser(self.subcommand).parse_object({"trainer": {"logger": DEFAULT_LOGGER}})
            config.trainer.logger = default.trainer.logger
        root = Path(config.trainer.default_root_dir or "runs")
        if self.subcommand == "fit":
            run_id = (config.run_id or os.environ.get(RUN_ID_ENV) or self._checkpoint_run or launcher_run_id()
                      or new_run_id())
            if config.ckpt_path is None and config.run_id and (root / run_id).exists() and first_start():
                raise ConfigError(f"run {run_id} already exists ({root / run_id}); a run id is never reused for "
                                  f"another run. Continue it with --run_id {run_id} --ckpt_path last, or give another "
                                  "--run_id (or none, and lvae picks a new one).")
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
                sync = f"wandb sync {run_dir}/wandb/offline-run-*"
                if why:
                    rank_zero_warn(f"W&B is not reachable ({why}); logging offline instead. Upload later with: {sync}")
                if self._print_config:
                    continue
                if self.subcommand != "fit":
                    what = f"{self.subcommand} of run {run_id}"
                else:
                    what = f"{'resumed ' if config.get('ckpt_path') else ''}run {run_id}"
                mode = f"offline: {sync} uploads it" if offline else "online"
                rank_zero_info(f"lvae: {what} in {run_dir} (W&B {mode})")

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
        if self.subcommand == "fit":
            extra.append(RandomState())
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
        processes.track(trainer, subcommand.get("run_id"))
        return trainer

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


def main(args: Any = None) -> None:
    """Entry point of the `lvae` console script and of `python -m lvae`."""
    previous = os.environ.get(RUN_ID_ENV)
    try:
        with noise.quiet(), processes.Job():  # a DDP process that stops ends the job with one message
            LVAECLI(args=args)
    except LVAEError as err:
        if err.exit_code == 2:  # refused before any work: nothing of the run stays on disk
            noise.unmake_dirs()
        print(f"lvae: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except SIGTERMException:
        # Lightning turned SIGTERM into this after the callbacks saved state; the shell convention is 128 + 15.
        print("lvae: stopped by SIGTERM", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:  # outside training (while starting up): nothing to save
        print("lvae: stopped by Ctrl-C", file=sys.stderr)
        sys.exit(130)
    except SystemExit as err:
        # Lightning ends a fit stopped by Ctrl-C with sys.exit(1), once last.ckpt is saved; the convention is 128 + 2.
        if isinstance(err.__context__, KeyboardInterrupt):
            sys.exit(130)
        raise
    finally:
        # An in-process caller (a notebook, a test) starts its next run with a fresh id.
        if previous is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = previous
