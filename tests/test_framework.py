"""lvae as a framework: your own encoder and decoder from YAML, your own LightningModule and data module through the
CLI, every picture by default, the configs installed with lvae, and no `callbacks` package to be shadowed."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO, lvae, lvae_said, run_dirs, run_lvae, working_in
from test_faults import MESSAGES
from wandb_run import read_run

from lvae import VAE, CheckpointError

NETWORKS = '''
import os
import torch
from torch import nn

with open(os.path.join(os.path.dirname(__file__), "top_level_ran.txt"), "a") as ran:  # once per importing process
    ran.write(f"{os.getpid()}\\n")


class TinyEncoder(nn.Module):
    def __init__(self, latent_dim, image_shape, width=32):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(torch.tensor(image_shape).prod()), width), nn.Tanh())
        self.heads = nn.Linear(width, 2 * latent_dim)

    def forward(self, x):
        return self.heads(self.body(x)).chunk(2, dim=1)


class TinyDecoder(nn.Module):
    def __init__(self, latent_dim, image_shape, width=32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.Tanh(),
                                 nn.Linear(width, int(torch.tensor(image_shape).prod())))

    def forward(self, z):
        return self.net(z)  # flattened logits: lvae shapes them as the images


class WrongEncoder(TinyEncoder):
    def forward(self, x):
        mu, logvar = super().forward(x)
        return mu, logvar[:, :1]  # one log-variance too few
'''

CONFIG = '''
model:
  latent_dim: 3
  encoder:
    class_path: my_networks.TinyEncoder
    init_args:
      width: 48
  decoder:
    class_path: my_networks.TinyDecoder
    init_args:
      width: 48
'''

PICTURES = {"scatter", "tsne", "prior_samples", "uncertainty"}


def fit_args(data: Path, *extra: str, config: str = "") -> list[str]:
    # 108 validation inputs: enough for the default t-SNE's perplexity of 30, so every picture is drawn. The config
    # comes first: what follows it on the command line overrides it.
    return ["fit", *(["--config", config] if config else []), "--data.data_dir", str(data), "--data.val_fraction",
            "0.3", "--data.batch_size", "64", "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", *extra]


def drawn(run: Path) -> dict[str, list[str]]:
    return {folder.name: sorted(p.name for p in folder.glob("epoch_*.png")) for folder in (run / "latents").iterdir()}


@pytest.fixture(scope="module")
def own_networks(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The installed `lvae` command, `lvae fit --config mine.yaml`, whose model names an encoder and decoder from a
    file in the working folder (not on PYTHONPATH), with every default picture, then continued; then predicted by
    `lvae` called in this process, as from a notebook started in that folder."""
    cwd = tmp_path_factory.mktemp("networks")
    (cwd / "my_networks.py").write_text(NETWORKS)
    (cwd / "mine.yaml").write_text(CONFIG)
    run_lvae(fit_args(mnist_root, "--run_id", "mine", config="mine.yaml"), cwd, script=True)
    run_lvae(fit_args(mnist_root, "--run_id", "mine", "--ckpt_path", "last", "--trainer.max_epochs", "3",
                      "--trainer.callbacks", "[]", config="mine.yaml"), cwd, script=True)
    try:
        with working_in(cwd):
            predicted = lvae_said("predict", "--config", "mine.yaml", "--data.data_dir", str(mnist_root),
                                  "--trainer.accelerator", "cpu", "--trainer.callbacks", "[]",
                                  "--trainer.callbacks+=lvae.callbacks.LatentExport",
                                  "--ckpt_path", str(cwd / "runs" / "mine" / "checkpoints" / "last.ckpt"))
    finally:
        sys.modules.pop("my_networks", None)  # this folder's module; another test's folder has its own
    assert predicted.returncode == 0, predicted.stderr[-3000:]
    return cwd


def test_your_own_encoder_and_decoder_train_resume_predict_and_draw(own_networks: Path) -> None:
    run = own_networks / "runs" / "mine"
    # Imported from the working folder by each of the three commands, and by nothing else (not the drawing process).
    ran = (own_networks / "top_level_ran.txt").read_text().split()
    assert len(ran) == len(set(ran)) == 3, ran
    assert drawn(run).keys() >= PICTURES and all(drawn(run)[name] == ["epoch_000.png", "epoch_001.png"]
                                                 for name in PICTURES)
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # plain values: the class as its path
    assert last["global_step"] == 3 * 4  # resumed: 3 epochs of 4 steps (252 inputs in batches of 64)
    assert last["hyper_parameters"]["encoder"] == {"class_path": "my_networks.TinyEncoder", "init_args": {"width": 48}}
    assert last["state_dict"]["encoder.heads.weight"].shape == (6, 48)
    exported = np.load(run / "predict" / "latents_test.npz")
    assert exported["mu"].shape == (100, 3) and exported["index"].tolist() == list(range(100))


def test_load_from_checkpoint_takes_your_classes_only_when_you_pass_them(own_networks: Path) -> None:
    sys.path.insert(0, str(own_networks))
    try:
        import my_networks

        path = own_networks / "runs" / "mine" / "checkpoints" / "last.ckpt"
        with pytest.raises(CheckpointError, match=r"encoder.class_path names the class 'my_networks.TinyEncoder'"):
            VAE.load_from_checkpoint(path)
        model = VAE.load_from_checkpoint(path, encoder=my_networks.TinyEncoder, decoder=my_networks.TinyDecoder)
    finally:
        sys.path.remove(str(own_networks))
    assert isinstance(model.encoder, my_networks.TinyEncoder) and model.encoder.body[1].out_features == 48
    assert model.decode(torch.zeros(2, 3)).shape == (2, 1, 28, 28)


@pytest.mark.parametrize(("encoder", "said"), [
    ("nowhere.Encoder", ["nowhere.Encoder", MESSAGES["class path"]]),
    ("my_networks.WrongEncoder", ["model.encoder (my_networks.WrongEncoder) maps images (2, 1, 28, 28) to (2, 3), "
                                  "(2, 1); lvae needs (mu, logvar), each (2, 3)", MESSAGES["network shape"]]),
])
def test_a_network_that_cannot_be_used_is_refused_before_any_work(own_networks: Path, mnist_root: Path,
                                                                  workdir: Path, capfd: pytest.CaptureFixture,
                                                                  encoder: str, said: list[str]):
    (workdir / "my_networks.py").write_text(NETWORKS)
    spec = json.dumps({"class_path": encoder})
    try:
        code = lvae(*fit_args(mnist_root, f"--model.encoder={spec}", config=str(own_networks / "mine.yaml")))
    finally:
        sys.modules.pop("my_networks", None)  # this folder's module; another test's folder has its own
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert all(text in err for text in said), err[-3000:]
    assert not (workdir / "runs").exists()


def test_a_class_path_given_on_the_command_line_is_named_whole_when_it_cannot_be_imported(
        mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from lvae.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(fit_args(mnist_root, "--model.encoder", "nowhere.Encoder", "--print_config"))
    said = capsys.readouterr().err
    assert exit.value.code == 2 and f"class_path nowhere.Encoder {MESSAGES['class path']}" in said, said


def test_lvae_fit_with_no_config_draws_every_picture(mnist_root: Path, workdir: Path) -> None:
    assert lvae(*fit_args(mnist_root)) == 0
    (run,) = run_dirs(workdir / "runs")
    pictures = drawn(run)
    assert pictures.keys() >= PICTURES and all(pictures[name] == ["epoch_000.png", "epoch_001.png"]
                                               for name in PICTURES)


def test_a_callbacks_py_of_your_own_does_not_shadow_lvaes(mnist_root: Path, tmp_path: Path) -> None:
    (tmp_path / "callbacks.py").write_text("raise ImportError('the user\\'s own callbacks.py was imported')\n")
    proc = run_lvae(fit_args(mnist_root, "--trainer.max_epochs", "1", config=str(REPO / "configs" / "mnist.yaml")),
                    tmp_path)
    assert "was skipped" not in proc.stderr
    (run,) = run_dirs(tmp_path / "runs")
    assert drawn(run).keys() >= PICTURES


def test_the_configs_come_with_lvae_by_name(mnist_root: Path, workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert lvae("fit", "--config", "mnist_z2", "--data.data_dir", str(mnist_root), "--print_config") == 0
    assert "latent_dim: 2" in capsys.readouterr().out and not (workdir / "runs").exists()


def test_old_callbacks_class_paths_get_the_one_line_fix(mnist_root: Path, workdir: Path, capfd: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    # As from a user's folder: the checkout's own callbacks/ (on sys.path under `python -m pytest`) is not theirs.
    monkeypatch.setattr(sys, "path", [p for p in sys.path if Path(p or ".").resolve() != REPO])
    monkeypatch.delitem(sys.modules, "callbacks", raising=False)
    old = workdir / "old.yaml"
    old.write_text((REPO / "configs" / "mnist.yaml").read_text().replace("lvae.callbacks.", "callbacks."))
    code = lvae(*fit_args(mnist_root, config=str(old)))
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "callbacks.LatentScatter is now lvae.callbacks.LatentScatter" in err, err[-2000:]


def test_the_cli_takes_your_own_module_and_data_module(workdir: Path) -> None:
    # foreign_vae is importable from tests/, as a user's module is from their PYTHONPATH.
    own = ["fit", "--model", "foreign_vae.ClassicVAE", "--data", "foreign_vae.ToyDigits", "--trainer.accelerator",
           "cpu", "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]",
           "--trainer.callbacks+=lvae.callbacks.LatentScatter", "--trainer.callbacks+=lvae.callbacks.PriorSamples",
           "--checkpoint.monitor", "null", "--run_id", "own"]
    assert lvae(*own, "--trainer.max_epochs", "2") == 0
    assert lvae(*own, "--trainer.max_epochs", "3", "--ckpt_path", "last") == 0
    run = workdir / "runs" / "own"
    assert drawn(run)["scatter"] == [f"epoch_{e:03d}.png" for e in range(3)]  # drawn, and continued on resume
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    first, second = read_run(run)
    assert first.run_id == second.run_id == "own"
