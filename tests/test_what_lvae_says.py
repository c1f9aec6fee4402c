"""What lvae says: its lines and notices start with "lvae:" on a line of their own (never glued to the progress bar,
never a Python warning with a source line), and every command it suggests works when pasted, for every data module
and model lvae ships."""

import io
import logging
import re
import shlex
import warnings
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import lvae

from lvae import VAE, MNISTDataModule
from lvae.callbacks import TSNEEmbedding


def test_lvae_lines_start_on_a_line_of_their_own_above_the_progress_bar(mnist_root: Path, tmp_path: Path) -> None:
    # 5 followed inputs are too few for perplexity 5: a notice at the end of each validation, while the epoch's
    # progress bar is on the screen. Bars and lines share one stream, as in a terminal.
    shown = io.StringIO()
    root = logging.getLogger()
    handlers = root.handlers[:]
    root.handlers.clear()  # as in a plain `python train.py`: no logging configured (pytest configures its own)
    try:
        with redirect_stdout(shown), redirect_stderr(shown), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer = L.Trainer(max_epochs=2, limit_train_batches=3, accelerator="cpu", logger=False,
                                enable_checkpointing=False, enable_model_summary=False, default_root_dir=tmp_path,
                                callbacks=[TSNEEmbedding(perplexity=5.0, n_prior=4, background=False)])
            trainer.fit(VAE(latent_points=5), MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
    finally:
        root.handlers[:] = handlers
    # What a terminal shows of each line: the text after its last carriage return, cursor moves (tqdm's, to clear
    # the bars above) aside.
    lines = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", line.split("\r")[-1]) for line in shown.getvalue().split("\n")]
    said = [line for line in lines if "lvae:" in line or "TSNEEmbedding" in line]
    assert len([line for line in said if "too few for TSNEEmbedding.perplexity=5" in line]) == 2, said
    assert all(line.startswith("lvae: ") for line in said), said
    assert "Epoch 1" in shown.getvalue()  # there was a bar to be glued to
    assert not [str(w.message) for w in caught if "TSNEEmbedding" in str(w.message)]  # not a Python warning


# The checkpoint of a run of each data module and model lvae ships, and a command that differs from it: the refusal's
# advice, pasted after that command, must parse, and give the checkpoint's values.
SHIPPED = {
    "fashion-mnist": ({"_class_path": "lvae.data.MNISTDataModule", "dataset": "fashion_mnist", "val_fraction": 0.1,
                       "split_seed": 0}, {}),
    "cifar10": ({"_class_path": "lvae.cifar.CIFAR10DataModule", "val_fraction": 0.2, "split_seed": 3},
                {"image_shape": [3, 32, 32]}),
    "conv pair": ({"_class_path": "lvae.data.MNISTDataModule", "dataset": "mnist", "val_fraction": 0.1,
                   "split_seed": 0}, {"architecture": "conv", "latent_dim": 8}),
    "lvae's networks by class_path": (
        {"_class_path": "lvae.data.MNISTDataModule", "dataset": "kmnist", "val_fraction": 0.1, "split_seed": 0},
        {"encoder": {"class_path": "lvae.networks.ConvEncoder", "init_args": {"hidden_dim": 32}},  # as a run saves it
         "decoder": {"class_path": "lvae.networks.ConvDecoder", "init_args": {"hidden_dim": 32}}}),
}


@pytest.mark.parametrize("shipped", SHIPPED)
def test_the_advice_to_continue_a_run_parses_as_pasted_for_every_shipped_module(
        workdir: Path, mnist_root: Path, capsys: pytest.CaptureFixture, shipped: str) -> None:
    data, model = SHIPPED[shipped]
    hparams = {**dict(VAE(latent_dim=4, hidden_dim=16, latent_points=0).hparams), **model}
    run = workdir / "runs" / "theirs"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": {}, "hyper_parameters": hparams, "pytorch-lightning_version": "2.6.0",
                "datamodule_hyper_parameters": {**data, "data_dir": str(mnist_root)}}, run / "checkpoints" / "last.ckpt")
    command = ["fit", "--run_id", "theirs", "--ckpt_path", "last", "--data.data_dir", str(mnist_root),
               "--model.latent_dim", "2", "--model.hidden_dim", "16", "--model.latent_points", "0"]
    assert lvae(*command) == 2  # the MNIST MLP of the default config: another run
    said = capsys.readouterr().err
    advice = said.split("Continue it with its own values (")[1].split(")")[0]
    assert advice.startswith("--"), said
    assert lvae(*command, *shlex.split(advice), "--print_config") == 0, capsys.readouterr().err
    config = yaml.safe_load(capsys.readouterr().out)
    data_class = config["data"]["class_path"]
    assert data_class.rsplit(".", 1)[1] == data["_class_path"].rsplit(".", 1)[1], config["data"]
    for key, value in data.items():
        if not key.startswith("_"):
            assert config["data"]["init_args"][key] == value, (key, config["data"])
    for key, value in model.items():
        if key == "image_shape":
            continue  # lvae takes it from the data module
        given = config["model"]["init_args"][key] if "init_args" in config["model"] else config["model"][key]
        if isinstance(value, dict):
            assert given["class_path"] == value["class_path"] and given["init_args"] == value["init_args"], (key, given)
        else:
            assert given == value, (key, given)


def test_the_pasted_advice_continues_the_run_end_to_end(workdir: Path, mnist_root: Path,
                                                        capsys: pytest.CaptureFixture) -> None:
    common = ["--data.data_dir", str(mnist_root), "--trainer.accelerator", "cpu", "--trainer.callbacks", "[]",
              "--trainer.enable_progress_bar", "false", "--model.latent_points", "0", "--trainer.logger", "false"]
    assert lvae("fit", "--run_id", "conv", "--model.architecture", "conv", "--model.latent_dim", "8",
                "--trainer.max_epochs", "1", *common) == 0
    capsys.readouterr()
    again = ["fit", "--run_id", "conv", "--ckpt_path", "last", "--trainer.max_epochs", "2", *common]
    assert lvae(*again) == 2  # the default MLP with 2 latent dimensions: another run
    advice = capsys.readouterr().err.split("Continue it with its own values (")[1].split(")")[0]
    assert lvae(*again, *shlex.split(advice)) == 0, capsys.readouterr().err
    last = torch.load(workdir / "runs" / "conv" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["hyper_parameters"]["architecture"] == "conv"  # continued, not restarted
    assert last["hyper_parameters"]["latent_dim"] == 8
