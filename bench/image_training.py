"""Seconds per epoch, validation loss and the 10-NN label agreement of the means for lvae's VAE trained on image
folders: scikit-learn's 1,797 real 8x8 digits written as a folder, and a generated folder of 32x32 RGB pictures.

Each folder goes through `ImageFolderDataModule` (decoded once, held in memory) and lvae's `VAE` with its image
shape from the data module, trained by a plain `Trainer` without pictures; the epoch time is training and
validation, the first epoch left out (it pays for start-up). The RGB folder holds 3,000 pictures in 10 classes, each
class a colour patch at its own place over noise, so the 10-NN agreement has a meaning there too.

    .venv/bin/python bench/image_training.py [--epochs 10]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from sklearn.datasets import load_digits

from lvae import VAE, ImageFolderDataModule
from lvae.tsne import knn_label_agreement


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            self.seconds.append(time.perf_counter() - self.start)


def write_digits(root: Path) -> None:
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target)):
        (root / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).astype(np.uint8)).save(root / str(label) / f"{i:04d}.png")


def write_rgb(root: Path, per_class: int = 300, size: int = 32) -> None:
    rng = np.random.default_rng(0)
    for label in range(10):
        (root / f"class{label}").mkdir(parents=True)
        colour = rng.integers(120, 256, size=3)
        row, col = divmod(label, 4)
        for i in range(per_class):
            pixels = rng.integers(0, 90, size=(size, size, 3))
            top, left = 2 + 8 * row + rng.integers(0, 3), 2 + 7 * col + rng.integers(0, 3)
            pixels[top:top + 8, left:left + 8] = colour
            Image.fromarray(pixels.astype(np.uint8)).save(root / f"class{label}" / f"{i:03d}.png")


def train(root: Path, size: int, channels: int, epochs: int, **model: object) -> str:
    L.seed_everything(0, verbose=False)
    data = ImageFolderDataModule(str(root), image_size=size, channels=channels, batch_size=32 if size == 8 else 64,
                                 num_workers=0)
    vae = VAE(image_shape=data.image_shape, latent_points=0, **model)
    timer = EpochTimer()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[timer])
    trainer.fit(vae, data)
    images, labels = data.splits["val"]
    with torch.inference_mode():
        mu, _ = vae.encode(images.float().div(255))
    agreement = knn_label_agreement(mu.double().numpy(), labels.numpy(), k=10)
    return (f"{len(data.splits['train'][0])} train, {len(images)} val; {statistics.median(timer.seconds[1:]):.2f} s "
            f"an epoch (median of epochs 1-{epochs - 1}); val/loss {float(trainer.callback_metrics['val/loss']):.2f} "
            f"nats per image after {epochs} epochs; 10-NN label agreement of the val means {agreement:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        write_digits(Path(tmp) / "digits")
        write_rgb(Path(tmp) / "rgb")
        print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
        print("scikit-learn digits, 8x8 grey, MLP 64-400-20, Bernoulli:",
              train(Path(tmp) / "digits", 8, 1, args.epochs))
        print("generated RGB, 32x32, conv, Z=20, Gaussian:",
              train(Path(tmp) / "rgb", 32, 3, args.epochs, architecture="conv", likelihood="gaussian"))


if __name__ == "__main__":
    main()
