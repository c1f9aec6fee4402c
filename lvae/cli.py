"""The `lvae` command: a LightningCLI over `VAE` and `MNISTDataModule` with the defaults users expect.

Every run lives in one folder, ``<trainer.default_root_dir>/<run_id>/``: the resolved config, ``checkpoints/``,
the W&B run (offline unless a W&B API key is configured) and ``latents/`` with every picture as PNG. Lightning's
own defaults scatter these (a WandbLogger ignores default_root_dir), make ``--ckpt_path last`` silently start
over, and refuse to run twice in one folder; this module is where those are put right.
"""

import netrc
import os
import secrets
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional

import yaml
from jsonargparse import Namespace
from lightning.fabric.plugins import CheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException
from typing_extensions import override

from lvae import noise, processes
from lvae.checkpoints import AtomicCheckpointIO, RunCheckpoint, check_checkpoint, find_last_checkpoint
from lvae.data import MNISTDataModule
from lvae.errors import ConfigError, LVAEError
from lvae.model import VAE

RUN_ID_ENV = "LVAE_RUN_ID"  # how DDP ranks started by Lightning learn the run id that rank zero chose
WANDB_PROBE_SECONDS = 5.0


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


def wandb_offline(requested: bool) -> tuple[bool, Optional[str]]:
    """Offline unless online is asked for (WANDB_MODE=online, or a configured API key) and W&B answers.

    Returns (offline, why) where `why` explains a fall-back to offline."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if requested or mode in ("offline", "dryrun"):
        return True, None
    if mode != "online" and not wandb_has_api_key():
        return True, None
    reachable, detail = wandb_reachable()
    return (False, None) if reachable else (True, detail)


class LVAECLI(LightningCLI):
    """LightningCLI with one folder per run, offline W&B by default and clean errors for bad values."""

    def __init__(self, args: Any = None, run: bool = True):
        super().__init__(VAE, MNISTDataModule, save_config_callback=RunConfig, args=args, run=run,
                         seed_everything_default=0, parser_kwargs={"prog": "lvae"})

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--run_id", type=Optional[str], default=None,
                            help="Run folder name under trainer.default_root_dir and W&B run id; an existing id "
                                 "continues that run (with --ckpt_path last).")
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
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.WandbLogger",
                               "init_args": {"project": "lvae"}},
        })

    @override
    def _parse_ckpt_path(self) -> None:
        """Find `--ckpt_path last` and check the checkpoint against the configured model.

        Lightning's version of this step overwrites the model config with the checkpoint's hyperparameters,
        silently discarding values the user gave; here the config stays what the user asked for, and a
        checkpoint of another architecture is refused with both values named."""
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else None
        self._resumed_run = None
        if config is None or not config.get("ckpt_path"):
            return
        root = Path(config.trainer.default_root_dir or "runs")
        run_id = config.run_id or os.environ.get(RUN_ID_ENV)
        if config.ckpt_path == "last":
            path, last_run = find_last_checkpoint(root, run_id)
            config.ckpt_path = str(path)
            self._resumed_run = run_id or (last_run if subcommand == "fit" else None)
        elif subcommand == "fit" and not run_id:
            # Training on from a checkpoint of a run under root continues that run.
            parent = Path(config.ckpt_path).resolve().parent
            if parent.name == "checkpoints" and parent.parent.parent == root.resolve():
                self._resumed_run = parent.parent.name
        check_checkpoint(config.ckpt_path, config.model)

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand]
        if self.subcommand == "fit" and config.trainer.max_epochs == 0:
            raise ConfigError("trainer.max_epochs=0 trains nothing; give at least 1 (or -1 for no limit)")
        root = Path(config.trainer.default_root_dir or "runs")
        ckpt_path = config.get("ckpt_path")
        run_id = (config.run_id or os.environ.get(RUN_ID_ENV) or self._resumed_run or launcher_run_id()
                  or new_run_id())
        os.environ[RUN_ID_ENV] = run_id
        config.run_id = run_id
        run_dir = root / run_id
        resumed = ckpt_path is not None and self.subcommand == "fit"
        self._configure_loggers(config, run_dir, run_id, resumed)
        if config.checkpoint.dirpath is None:
            config.checkpoint.dirpath = str(run_dir / "checkpoints")
        self.save_config_kwargs["run_dir"] = str(run_dir)
        self.run_dir = run_dir

    def _configure_loggers(self, config: Namespace, run_dir: Path, run_id: str, resumed: bool) -> None:
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
                args.id = args.get("id") or run_id
                args.name = args.get("name") or run_id
                offline, why = wandb_offline(bool(args.get("offline")))
                args.offline = offline
                sync = f"wandb sync {run_dir}/wandb/offline-run-*"
                if why:
                    rank_zero_warn(f"W&B is not reachable ({why}); logging offline instead. Upload later with: {sync}")
                rank_zero_info(f"lvae: run {run_id} in {run_dir} ({'resumed, ' if resumed else ''}W&B "
                               f"{'offline: ' + sync + ' uploads it' if offline else 'online'})")

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
        plugins = config.get("plugins") or []
        plugins = plugins if isinstance(plugins, list) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            config["plugins"] = [*plugins, AtomicCheckpointIO()]
        trainer = self._instantiate_trainer(config, extra)
        subcommand = self.config[self.subcommand]
        noise.quiet_trainer(trainer, resuming=self.subcommand == "fit" and subcommand.get("ckpt_path") is not None)
        processes.track(trainer, subcommand.get("run_id"))
        return trainer


def main(args: Any = None) -> None:
    """Entry point of the `lvae` console script and of `python -m lvae`."""
    previous = os.environ.get(RUN_ID_ENV)
    try:
        with noise.quiet(), processes.Job():  # a DDP process that stops ends the job with one message
            LVAECLI(args=args)
    except LVAEError as err:
        print(f"lvae: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except SIGTERMException:
        # Lightning turned SIGTERM into this after the callbacks saved state; the shell convention is 128 + 15.
        print("lvae: stopped by SIGTERM; resume with --ckpt_path last", file=sys.stderr)
        sys.exit(143)
    finally:
        # An in-process caller (a notebook, a test) starts its next run with a fresh id.
        if previous is None:
            os.environ.pop(RUN_ID_ENV, None)
        else:
            os.environ[RUN_ID_ENV] = previous
