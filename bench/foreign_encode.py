"""The extra cost of lvae's pictures on a VAE lvae did not write: lvae encodes the followed validation inputs itself,
once per validation epoch (`lvae.followed_inputs.FollowedInputs`), because such a module does not collect its latents.

Trains the README's example module (the classic PyTorch VAE, 784-400-20, in Lightning) with a plain `Trainer` on
real digits (../shared/data/mnist-t10k: the first 8,000 to train, the last 2,000 to validate, batch 128), with and
without a picture callback that only asks for the followed inputs' latents (2,000 inputs, every one of the
validation split), so the difference is the encoding alone, not any drawing. The two variants take turns; prints
each run, the medians, the seconds the encoding itself took per epoch and the ratio of fit times.

    .venv/bin/python bench/foreign_encode.py [--epochs 5] [--repeats 3]
"""

import argparse
import gzip
import statistics
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lvae.picture_callback import PictureCallback

REPO = Path(__file__).resolve().parent.parent
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist-t10k"


class ClassicVAE(L.LightningModule):
    """The classic PyTorch example in Lightning, as the README's example writes it."""

    def __init__(self, latent_dim: int = 20):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, latent_dim), nn.Linear(400, latent_dim)
        self.fc3, self.fc4 = nn.Linear(latent_dim, 400), nn.Linear(400, 784)

    def encode(self, x):
        h = F.relu(self.fc1(x.view(-1, 784)))
        return self.fc21(h), self.fc22(h)

    def decode(self, z):
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))

    def training_step(self, batch, batch_idx):
        x, _ = batch
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        bce = F.binary_cross_entropy(self.decode(z), x.view(-1, 784), reduction="sum")
        return (bce - 0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())) / len(x)

    def validation_step(self, batch, batch_idx):
        pass

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Follow(PictureCallback):
    """A picture that draws nothing: it asks for the epoch's latents (the encoding timed here) and stops there."""

    def __init__(self) -> None:
        super().__init__(background=False)
        self.seconds: list[float] = []

    def latents(self, trainer, pl_module):
        began = time.perf_counter()
        latents = super().latents(trainer, pl_module)
        self.seconds.append(time.perf_counter() - began)
        assert latents is not None and len(latents) == 2000
        return latents

    def prepare(self, trainer, pl_module, latents, epoch):
        return None


def read_idx(path: Path, offset: int) -> np.ndarray:
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), dtype=np.uint8, offset=offset)


def loaders() -> tuple[DataLoader, DataLoader]:
    images = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 1, 28, 28)
    labels = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz", 8)
    x, y = torch.from_numpy(images.copy()).float().div(255), torch.from_numpy(labels.copy()).long()
    train = DataLoader(TensorDataset(x[:8000], y[:8000]), batch_size=128, shuffle=True,
                       generator=torch.Generator().manual_seed(0))
    return train, DataLoader(TensorDataset(x[8000:], y[8000:]), batch_size=500)


def fit(follow: bool, epochs: int) -> tuple[float, list[float]]:
    L.seed_everything(0, verbose=False)
    train, val = loaders()
    callbacks = [Follow()] if follow else []
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks)
    began = time.perf_counter()
    trainer.fit(ClassicVAE(), train, val)
    return time.perf_counter() - began, callbacks[0].seconds if follow else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not SHARED_MNIST.is_dir():
        sys.exit(f"bench: the real digits are not in {SHARED_MNIST}")
    times: dict[bool, list[float]] = {False: [], True: []}
    encode: list[float] = []
    for n in range(args.repeats):
        for follow in (False, True):
            seconds, spent = fit(follow, args.epochs)
            times[follow].append(seconds)
            encode += spent[1:]  # the first epoch also reads the inputs from the dataset once
            print(f"run {n} {'followed' if follow else 'none'}: {seconds:.2f} s"
                  + (f", encoding per epoch {', '.join(f'{s:.3f}' for s in spent)} s" if follow else ""))
    off, on = statistics.median(times[False]), statistics.median(times[True])
    print(f"torch {torch.__version__}, lightning {L.__version__}, {torch.get_num_threads()} threads, "
          f"{args.epochs} epochs of 8,000 real digits, 2,000 followed")
    print(f"median fit: none {off:.2f} s, followed {on:.2f} s, ratio {on / off:.3f}; "
          f"encoding the followed inputs: median {statistics.median(encode) * 1000:.1f} ms an epoch "
          f"({statistics.median(encode) / (off / args.epochs):.1%} of an epoch's time without it)")


if __name__ == "__main__":
    main()
