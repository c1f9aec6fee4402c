"""The private parts of Lightning, jsonargparse and argparse that lvae still uses, each named here with the reason
it stays, so that an upgrade that changes one fails this file instead of a user's run."""

import inspect

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ArgumentParser
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.demos.boring_classes import BoringModel
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.overrides.distributed import _IndexBatchSamplerWrapper
from lightning.pytorch.strategies.launchers import subprocess_script
from torch.utils.data import BatchSampler, SequentialSampler

from lvae.checkpoints import RunCheckpoint
from lvae.cli import LVAECLI


def parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_the_cli_hooks_lvae_overrides_or_calls_are_still_there() -> None:
    # _parse_ckpt_path: lvae replaces the step that overwrites the model config with a checkpoint's values.
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__)
    assert LVAECLI._parse_ckpt_path is not LightningCLI._parse_ckpt_path
    # _instantiate_trainer(config, callbacks): the one place the trainer is built from the parsed config.
    assert parameters(LightningCLI._instantiate_trainer) == ["self", "config", "callbacks"]
    # _get(config, key, default) and _parser(subcommand): reading the config of the running subcommand.
    assert parameters(LightningCLI._get)[:3] == ["self", "config", "key"]
    assert parameters(LightningCLI._parser) == ["self", "subcommand"]


def test_lvae_help_replaces_the_subcommand_lines_argparse_keeps_privately() -> None:
    # `lvae --help` says what each subcommand does instead of repeating Lightning's Trainer docstrings.
    parser = ArgumentParser()
    subcommands = parser.add_subcommands()
    subcommands.add_subcommand("fit", ArgumentParser(), help="x")
    assert [choice.dest for choice in parser._subcommands_action._choices_actions] == ["fit"]


def test_the_checkpoint_methods_run_checkpoint_reuses_are_still_there() -> None:
    # RunCheckpoint saves last.ckpt on its own schedule (before an interrupted run exits) with the checks and the
    # monitored values ModelCheckpoint would use.
    checkpoint = RunCheckpoint(dirpath="unused", save_last=True)
    assert isinstance(checkpoint, ModelCheckpoint) and checkpoint._every_n_epochs == 1
    assert parameters(ModelCheckpoint._save_last_checkpoint) == ["self", "trainer", "monitor_candidates"]
    assert parameters(ModelCheckpoint._monitor_candidates) == ["self", "trainer"]
    assert parameters(ModelCheckpoint._should_save_on_train_epoch_end) == ["self", "trainer"]
    assert parameters(ModelCheckpoint._should_skip_saving_checkpoint) == ["self", "trainer"]


def test_the_picture_callbacks_keep_their_state_under_lightnings_key() -> None:
    # _generate_state_key: two callbacks of one class (two scatters) keep separate states in a checkpoint.
    assert parameters(Callback._generate_state_key) == ["self", "kwargs"]
    # _legacy_state_key: where Lightning looks when state_key is not found; a picture names its class there, under
    # which checkpoints written before it had a state_key of its own hold its state.
    loading = inspect.getsource(pl.trainer.call._call_callbacks_load_state_dict)
    assert "callback_states.get(callback.state_key, callback_states.get(callback._legacy_state_key))" in loading


def test_the_process_observer_lvae_replaces_is_still_there() -> None:
    # lvae's DDPWatch swaps Lightning's watch of the processes it launched for one that prints the message.
    assert parameters(subprocess_script._launch_process_observer) == ["child_processes"]
    assert "_launch_process_observer(" in inspect.getsource(subprocess_script._SubprocessScriptLauncher)


def test_predict_batches_say_which_dataset_indices_they_hold() -> None:
    # LatentExport reads the indices of a foreign module's predict batches from Lightning's wrapper.
    wrapper = _IndexBatchSamplerWrapper(BatchSampler(SequentialSampler(range(5)), batch_size=2, drop_last=False))
    assert list(wrapper) == [[0, 1], [2, 3], [4]]
    assert wrapper.seen_batch_indices == [[0, 1], [2, 3], [4]]


def test_the_wandb_init_arguments_lvae_trims_are_still_kept_privately() -> None:
    logger = WandbLogger(offline=True, save_dir="unused")
    assert isinstance(logger._wandb_init, dict) and "anonymous" in logger._wandb_init


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
