"""Beyond 28x28 grey: folders of the user's own pictures, colour and grey, of any size, through the CLI, with a
Gaussian likelihood, every picture drawn, in one process and in two; and real digits written as an image folder."""

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import lvae, run_dirs, run_lvae, working_in
from PIL import Image
from test_faults import MESSAGES

from lvae import VAE
from lvae.tsne import knn_label_agreement

PICTURES = {"scatter", "tsne", "prior_samples", "uncertainty", "traversals", "interpolations", "reconstructions"}


def write_folder(root: Path, size: int, mode: str, per_class: int = 80, labelled: bool = True) -> Path:
    """Three classes of generated pictures a VAE can tell apart: a bright square in a class-specific corner. Not
    `labelled`: the same pictures directly in `root`, one unlabelled set."""
    rng = np.random.default_rng(size)
    for label, name in enumerate(("circle", "square", "star")):
        folder = root / name if labelled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, size=(size, size, 3))
            corner = slice(label * size // 3, label * size // 3 + size // 3)
            pixels[corner, corner] = rng.integers(160, 256, size=3)  # a coloured patch
            Image.fromarray(pixels.astype(np.uint8)).convert(mode).save(folder / f"{name}{i:03d}.png")
    return root


def folder_fit(root: Path, size: int, channels: int, *extra: str) -> list[str]:
    return ["fit", "--data", "lvae.ImageFolderDataModule", "--data.root", str(root), "--data.image_size", str(size),
            "--data.channels", str(channels), "--data.val_fraction", "0.5", "--data.batch_size", "40",
            "--data.num_workers", "0", "--model.architecture", "conv", "--model.latent_dim", "4",
            "--trainer.max_epochs", "2", "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
            *extra]


def pictures_of(run: Path) -> dict[str, list[str]]:
    return {folder.name: sorted(p.name for p in folder.glob("epoch_*.png")) for folder in (run / "latents").iterdir()}


@pytest.mark.parametrize(("size", "mode", "labelled", "extra"), [
    (16, "L", False, ()),
    (32, "RGB", True, ("--model.likelihood", "gaussian")),
    (32, "RGB", True, ("--model.likelihood", "gaussian", "--trainer.devices", "2", "--trainer.strategy", "ddp")),
], ids=["16px-grey-unlabelled", "32px-colour", "32px-colour-2-processes"])
def test_an_image_folder_trains_and_draws_every_picture(workdir: Path, capfd: pytest.CaptureFixture,
                                                        caplog: pytest.LogCaptureFixture, size: int, mode: str,
                                                        labelled: bool, extra: tuple) -> None:
    root = write_folder(workdir / "pictures", size, mode, labelled=labelled)
    channels = 1 if mode == "L" else 3
    if "ddp" in extra:  # two processes: only the command starts them
        proc = run_lvae(folder_fit(root, size, channels, *extra), workdir, timeout=300)
        said = proc.stderr + proc.stdout
    else:
        assert lvae(*folder_fit(root, size, channels, *extra)) == 0
        printed = capfd.readouterr()
        said = "\n".join([printed.err, printed.out, *caplog.messages])
    assert ("unlabelled, train 120, val 120" in said) is not labelled
    (run,) = run_dirs(workdir / "runs")
    drawn = pictures_of(run)
    assert drawn.keys() >= PICTURES
    assert all(drawn[name] == ["epoch_000.png", "epoch_001.png"] for name in PICTURES), drawn
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["hyper_parameters"]["image_shape"] == [channels, size, size]  # taken from the data module
    with Image.open(run / "latents" / "prior_samples" / "epoch_001.png") as png:
        assert png.mode in ("RGB", "RGBA")


@pytest.mark.parametrize("case", ["bad image file", "empty folder", "conv size"])
def test_bad_pictures_and_sizes_are_one_message_before_training(workdir: Path, capfd: pytest.CaptureFixture,
                                                                 case: str) -> None:
    said = MESSAGES[case]  # as the README's table quotes it
    root = workdir / "pictures"
    size = 18 if case == "conv size" else 16
    if case == "empty folder":
        root.mkdir()
    else:
        write_folder(root, 16, "L", per_class=4)
        if case == "bad image file":
            (root / "star" / "broken.png").write_bytes(b"\x89PNG not really")
    code = lvae(*folder_fit(root, size, 1, "--data.val_fraction", "0.25"))
    err = capfd.readouterr().err
    assert code == 2 and "Traceback" not in err, err[-3000:]
    assert said in err, err[-3000:]
    if case == "bad image file":
        assert str(root / "star" / "broken.png") in err
    assert not (workdir / "runs").exists()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn's 1,797 real 8x8 handwritten digits, written as an image folder (one sub-folder per digit) and
    trained through `--data lvae.ImageFolderDataModule`, then their validation means exported."""
    from sklearn.datasets import load_digits

    cwd = tmp_path_factory.mktemp("digits")
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        folder = cwd / "digits" / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(folder / f"{i:04d}.png")
    common = ["--data", "lvae.ImageFolderDataModule", "--data.root", str(cwd / "digits"), "--data.image_size", "8",
              "--data.channels", "1", "--data.num_workers", "0", "--data.batch_size", "32",
              "--trainer.accelerator", "cpu"]
    common += ["--model.latent_dim", "8", "--model.hidden_dim", "128"]
    with working_in(cwd):
        assert lvae("fit", *common, "--trainer.max_epochs", "8", "--trainer.callbacks", "[]",
                    "--trainer.enable_progress_bar", "false", "--run_id", "digits") == 0
        # The image shape (1, 8, 8) comes from the data module, for the checkpoint's check too.
        assert lvae("predict", *common, "--data.predict_split", "val", "--trainer.callbacks", "[]",
                    "--trainer.callbacks+=lvae.callbacks.LatentExport",
                    "--ckpt_path", str(cwd / "runs" / "digits" / "checkpoints" / "last.ckpt")) == 0
    return cwd / "runs" / "digits"


def test_real_digits_as_an_image_folder_learn_means_whose_neighbours_share_their_label(digits_run: Path) -> None:
    exported = np.load(digits_run / "predict" / "latents_val.npz")
    assert len(exported["index"]) == 180  # 10% of 1,797 held out
    agreement = knn_label_agreement(exported["mu"].astype(np.float64), exported["label"], k=10)
    assert agreement > 0.6, agreement  # most of each mean's 10 nearest neighbours are the same digit


def test_a_gaussian_likelihood_gives_nats_per_image_and_a_tighter_importance_weighted_bound() -> None:
    torch.manual_seed(0)
    model = VAE(latent_dim=4, image_shape=(3, 8, 8), likelihood="gaussian").eval()
    x = torch.rand(6, 3, 8, 8)
    with torch.inference_mode():
        assert model.decode(torch.zeros(2, 4)).shape == (2, 3, 8, 8)
        assert 0 <= float(model.decode(torch.randn(5, 4)).min()) and float(model.decode(torch.randn(5, 4)).max()) <= 1
        elbo = torch.stack([sum(model._loss_parts(x)[2:]) for _ in range(300)]).mean(0)  # recon + kl, (B,)
        nll_1 = torch.stack([model.iwae_nll(x, k=1) for _ in range(300)]).mean(0)
        nll_100 = model.iwae_nll(x, k=100)
    torch.testing.assert_close(nll_1, elbo, rtol=0.02, atol=0.5)  # k=1 is the ELBO, in nats per image
    assert (nll_100 < nll_1).all()
    # With a unit scale a pixel's NLL is 0.5 ln(2 pi) + (x - mean)^2 / 2: 192 pixel values at about 0.96 nats each.
    assert 150 < float(elbo.mean()) < 250
