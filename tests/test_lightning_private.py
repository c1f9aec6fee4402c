"""The private parts of Lightning, jsonargparse and argparse that lvae still uses, each named here with the reason
it stays, so that an upgrade that changes one fails this file instead of a user's run."""

import inspect
import os
import sys

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.overrides.distributed import _IndexBatchSamplerWrapper
from lightning.pytorch.strategies.launchers import subprocess_script
from torch.utils.data import BatchSampler, SequentialSampler

from lvae.checkpoints import RunCheckpoint
from lvae.cli import LVAECLI


class Parsed(Exception):
    """Stops a CLI once it has built its classes, before it runs anything."""


class ProbeCLI(LightningCLI):
    """A LightningCLI that replaces `_parse_ckpt_path` as lvae's does, and stops before the subcommand runs."""

    ckpt_paths: list = []

    def _parse_ckpt_path(self) -> None:
        ProbeCLI.ckpt_paths.append(self.config["fit"]["ckpt_path"])

    def after_instantiate_classes(self) -> None:
        raise Parsed(self)


def test_the_cli_hooks_lvae_overrides_or_calls_do_what_lvae_needs(tmp_path, monkeypatch) -> None:
    # _parse_ckpt_path: lvae replaces the step that overwrites the model config with a checkpoint's values. It is
    # called with the parsed config, and Lightning's own (which would read the missing file) no longer runs.
    assert LVAECLI._parse_ckpt_path is not LightningCLI._parse_ckpt_path
    ProbeCLI.ckpt_paths = []
    monkeypatch.setattr(sys, "argv", ["lvae"])  # the arguments come from `args` alone
    with pytest.raises(Parsed) as parsed:
        ProbeCLI(BoringModel, args=["fit", "--ckpt_path", str(tmp_path / "missing.ckpt"), "--trainer.max_epochs", "3",
                                    "--trainer.logger", "false", f"--trainer.default_root_dir={tmp_path}"],
                 save_config_callback=None, seed_everything_default=False)
    cli = parsed.value.args[0]
    assert ProbeCLI.ckpt_paths == [str(tmp_path / "missing.ckpt")]
    # _get(config, key, default): a key of the running subcommand's section, or the default.
    assert cli._get(cli.config, "trainer")["max_epochs"] == 3
    assert cli._get(cli.config, "no_such_key", default="default") == "default"
    # _parser(subcommand): the subcommand's own parser, which dumps that section and lists its callback keys.
    assert "max_epochs: 3" in cli._parser("fit").dump(cli.config["fit"])
    assert cli._parser("fit") is not cli.parser and hasattr(cli._parser("fit"), "callback_keys")
    # _instantiate_trainer(config, callbacks): the trainer is built from the config with the extra callbacks in it.
    extra = Callback()
    trainer = cli._instantiate_trainer({"max_epochs": 2, "logger": False, "callbacks": [],
                                        "default_root_dir": str(tmp_path)}, [extra])
    assert trainer.max_epochs == 2 and extra in trainer.callbacks


def test_lvae_help_replaces_the_subcommand_lines_argparse_keeps_privately() -> None:
    # `lvae --help` says what each subcommand does instead of repeating Lightning's Trainer docstrings.
    parser = ArgumentParser()
    subcommands = parser.add_subcommands()
    subcommands.add_subcommand("fit", ArgumentParser(), help="x")
    choices = parser._subcommands_action._choices_actions
    assert [choice.dest for choice in choices] == ["fit"]
    choices[0].help = "train a VAE"  # what lvae writes there is what --help prints
    assert "train a VAE" in parser.format_help()


def quick_trainer(tmp_path, **kwargs) -> pl.Trainer:
    return pl.Trainer(**{"max_epochs": 1, "limit_train_batches": 2, "limit_val_batches": 0, "logger": False,
                         "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False,
                         "default_root_dir": tmp_path, **kwargs})


def test_the_checkpoint_methods_run_checkpoint_reuses_write_last_ckpt_as_modelcheckpoint_would(tmp_path) -> None:
    # RunCheckpoint saves last.ckpt on its own schedule (before an interrupted run exits) with the checks and the
    # monitored values ModelCheckpoint would use.
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, save_top_k=0)
    assert RunCheckpoint(dirpath="unused", save_last=True)._every_n_epochs == 1  # every epoch, by default
    trainer = quick_trainer(tmp_path, enable_checkpointing=True, callbacks=[checkpoint])
    trainer.fit(BoringModel())
    last = tmp_path / "ckpt" / "last.ckpt"
    # Without validation, ModelCheckpoint saves at the end of the training epoch; it has saved at this step, so a
    # second save at the same step is skipped.
    assert checkpoint._should_save_on_train_epoch_end(trainer) is True
    assert checkpoint._should_skip_saving_checkpoint(trainer) is True
    candidates = checkpoint._monitor_candidates(trainer)
    assert (int(candidates["epoch"]), int(candidates["step"])) == (trainer.current_epoch, trainer.global_step) == (1, 2)
    last.unlink()
    checkpoint._save_last_checkpoint(trainer, candidates)
    assert torch.load(last, weights_only=True)["global_step"] == 2


class Counter(Callback):
    """A callback whose state is keyed by its setting, as two LatentScatters are by their dims."""

    def __init__(self, dims: int) -> None:
        self.dims, self.batches = dims, 0

    @property
    def state_key(self) -> str:
        return self._generate_state_key(dims=self.dims)

    def on_train_batch_end(self, *args) -> None:
        self.batches += self.dims

    def state_dict(self) -> dict:
        return {"batches": self.batches}


def test_the_picture_callbacks_keep_their_state_under_lightnings_key(tmp_path) -> None:
    # _generate_state_key: two callbacks of one class (two scatters) keep separate states in a checkpoint.
    trainer = quick_trainer(tmp_path, callbacks=[Counter(1), Counter(10)])
    trainer.fit(BoringModel())
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    saved = torch.load(tmp_path / "x.ckpt", weights_only=True)["callbacks"]
    assert saved == {"Counter{'dims': 1}": {"batches": 2}, "Counter{'dims': 10}": {"batches": 20}}
    # _legacy_state_key: where Lightning looks when state_key is not found; a picture names its class there, under
    # which checkpoints written before it had a state_key of its own hold its state.
    loading = inspect.getsource(pl.trainer.call._call_callbacks_load_state_dict)
    assert "callback_states.get(callback.state_key, callback_states.get(callback._legacy_state_key))" in loading


def test_the_process_observer_lvae_replaces_is_what_the_launcher_calls(monkeypatch) -> None:
    # lvae's DDPWatch swaps Lightning's watch of the processes it launched for one that prints the message: the
    # launcher must look the module-level name up when it launches, and hand it the processes it started.
    # Set as it is, so the launcher changes no thread count of this process.
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads())))
    launcher = subprocess_script._SubprocessScriptLauncher(LightningEnvironment(), num_processes=1, num_nodes=1)
    monkeypatch.setattr(launcher, "_call_children_scripts", lambda: None)  # start no process
    watched = []
    monkeypatch.setattr(subprocess_script, "_launch_process_observer", watched.append)
    assert launcher.launch(lambda: "ran") == "ran"
    assert watched == [launcher.procs]


def test_predict_batches_say_which_dataset_indices_they_hold() -> None:
    # LatentExport reads the indices of a foreign module's predict batches from Lightning's wrapper.
    wrapper = _IndexBatchSamplerWrapper(BatchSampler(SequentialSampler(range(5)), batch_size=2, drop_last=False))
    assert list(wrapper) == [[0, 1], [2, 3], [4]]
    assert wrapper.seen_batch_indices == [[0, 1], [2, 3], [4]]


def test_the_wandb_init_arguments_lvae_trims_are_what_wandb_init_gets(tmp_path, monkeypatch) -> None:
    # lvae.noise.quiet_trainer pops `anonymous` from `_wandb_init`: what is left is what wandb.init is called with.
    import wandb

    from lvae.noise import quiet_trainer

    logger = WandbLogger(offline=True, save_dir=str(tmp_path))
    assert logger._wandb_init.get("anonymous", "absent") is None
    quiet_trainer(pl.Trainer(logger=logger, accelerator="cpu", enable_progress_bar=False,
                             enable_model_summary=False, default_root_dir=tmp_path), resuming=False)
    calls = []
    monkeypatch.setattr(wandb, "run", None)
    monkeypatch.setattr(wandb, "init", lambda **kwargs: calls.append(kwargs) or object())
    logger.experiment  # noqa: B018 (the property starts the run)
    assert calls == [logger._wandb_init] and "anonymous" not in calls[0] and calls[0]["dir"] == str(tmp_path)


class StatefulBatches:
    """Batches that can say where they are, as lvae's own loaders do."""

    def __init__(self) -> None:
        self.seen = 0

    def __iter__(self):
        for self.seen in range(1, 3):
            yield torch.randn(2, 32)

    def __len__(self) -> int:
        return 2

    def state_dict(self) -> dict:
        return {"seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.seen = state["seen"]


def test_a_mid_epoch_position_is_read_where_lightning_keeps_it(tmp_path) -> None:
    # lvae.data.trained_steps and saved_train_position read the fit loop's progress and its saved loader state.
    trainer = pl.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    trainer.fit(BoringModel(), train_dataloaders=StatefulBatches())
    assert trainer.fit_loop.epoch_loop.batch_progress.current.processed == 2
    trainer.save_checkpoint(tmp_path / "x.ckpt")
    saved = torch.load(tmp_path / "x.ckpt", weights_only=True)
    assert saved["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [{"seen": 2}]



def test_jsonargparse_help_strings_pass_through_the_one_method_lvae_overrides() -> None:
    # LVAEHelpFormatter._get_help_string cuts a network argument's list of known subclasses short; its result is
    # what --help prints.
    from lvae.cli import LVAEHelpFormatter

    parser = ArgumentParser(formatter_class=LVAEHelpFormatter)
    parser.add_argument("--net", type=torch.nn.Module, help="a network")
    text = " ".join(parser.format_help().split())
    assert "known subclasses: " in text and "more))" in text, text[-600:]


def test_lightning_rebuilds_a_cli_module_from_the_instantiator_and_class_path_keys(tmp_path) -> None:
    # lvae.trust checks these two keys before Lightning reads them: `_instantiator` is imported and called with the
    # hyperparameters, `_class_path` names the class it builds.
    from lvae import VAE

    model = VAE(latent_dim=2, hidden_dim=8, latent_points=0)
    hparams = {**model.hparams, "_instantiator": "lightning.pytorch.cli.instantiate_module",
               "_class_path": "lvae.model.VAE"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": hparams, "pytorch-lightning_version": "2.6"},
               tmp_path / "m.ckpt")
    calls = []
    original = pl.cli.instantiate_module
    try:
        pl.cli.instantiate_module = lambda cls, config: calls.append(cls) or original(cls, config)
        VAE.load_from_checkpoint(tmp_path / "m.ckpt")
    finally:
        pl.cli.instantiate_module = original
    assert calls == [VAE]
    # Lightning itself refuses a `_class_path` that is not the loading class or one of its subclasses.
    other = {**hparams, "_class_path": "lvae.networks.MLPEncoder"}
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": other,
                "pytorch-lightning_version": "2.6"}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="does not resolve to an already imported subclass of VAE"):
        VAE.load_from_checkpoint(tmp_path / "other.ckpt")


def test_lightnings_info_lines_go_through_the_logger_lvae_filters() -> None:
    # lvae.noise.quiet filters Lightning's tips on `rank_zero.log`, the logger every rank_zero_info goes through.
    import logging

    from lightning.pytorch.utilities import rank_zero_info
    from lightning_utilities.core import rank_zero

    seen = []

    class Keep(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            seen.append(record.getMessage())
            return False

    keep = Keep()
    rank_zero.log.addFilter(keep)
    try:
        rank_zero_info("through rank_zero.log")
    finally:
        rank_zero.log.removeFilter(keep)
    assert seen == ["through rank_zero.log"]
