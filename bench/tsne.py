"""Seconds per epoch of the t-SNE picture, cold (PCA start, full iterations) against warm-started (the previous
epoch's map, warm iterations), with the map's quality, on real latents.

    .venv/bin/python bench/tsne.py

Trains the default VAE (MLP 784-400-20) for a few epochs on real digits (the official MNIST test set beside the
checkout, split 8,000 / 2,000 as in tests/conftest.py), encodes all 10,000 digits after each of the last two
epochs, and runs the `TSNEEmbedding` callback's t-SNE steps (`lvae.tsne.TSNESteps.embed` and `place`, with the
callback's default `settings`) on 2k, 5k and 10k of those means. Quality is the share of each point's 10 nearest
neighbours that share its label (`lvae.tsne.knn_label_agreement`), in the map and, for reference, in the 20-D
means themselves.
Takes 2-3 minutes on an idle 2-core machine; more when other processes share the cores (the load average is
printed: absolute times scale with it, the warm/cold ratio much less).
"""

import os
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lvae.callbacks.tsne_embedding import TSNEEmbedding
from lvae.data import MNISTDataModule, read_idx_pair, write_idx
from lvae.model import VAE
from lvae.tsne import knn_label_agreement

REPO = Path(__file__).resolve().parents[1]

SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist-t10k"
EPOCHS = 3  # the means of epochs 1 and 2 are the two consecutive maps
SIZES = (2000, 5000, 10000)


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    return read_idx_pair(SHARED_MNIST / "t10k-images-idx3-ubyte.gz", SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")


class EncodeAll(Callback):
    """Encodes every digit after each training epoch: mu (10000, 20) per epoch."""

    def __init__(self, images: torch.Tensor):
        self.x = images.float().div(255).unsqueeze(1)  # (N, 1, 28, 28)
        self.mu: dict[int, torch.Tensor] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        with torch.inference_mode():
            self.mu[trainer.current_epoch] = torch.cat([pl_module.encode(b)[0] for b in self.x.split(1000)]).cpu()


def train(images: np.ndarray, labels: np.ndarray, data_dir: Path) -> tuple[torch.Tensor, torch.Tensor]:
    write_idx(data_dir / "MNIST" / "raw", "train", images[:8000], labels[:8000])
    write_idx(data_dir / "MNIST" / "raw", "t10k", images[8000:], labels[8000:])
    L.seed_everything(0, verbose=False)
    encode = EncodeAll(torch.from_numpy(images.copy()))
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[encode])
    trainer.fit(VAE(latent_points=0), MNISTDataModule(data_dir=str(data_dir), batch_size=128))
    return encode.mu[EPOCHS - 2], encode.mu[EPOCHS - 1]


def quality(embedding: np.ndarray, labels: torch.Tensor) -> float:
    return knn_label_agreement(np.asarray(embedding, dtype=np.float64), labels.numpy(), k=10)


def main() -> None:
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"skipped: real MNIST digits not found at {SHARED_MNIST} (only present beside the lvae checkout)")
        return
    images, labels = read_digits()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        mu_before, mu_after = train(images, labels, Path(tmp))
    print(f"trained MLP 784-400-20 for {EPOCHS} epochs on 8,000 digits in {time.perf_counter() - start:.0f} s; "
          f"means of epochs {EPOCHS - 2} and {EPOCHS - 1}")
    settings = TSNEEmbedding()
    print(f"TSNEEmbedding defaults: perplexity {settings.perplexity:g}, {settings.negative_gradient_method}, "
          f"n_jobs {settings.n_jobs}; cold {settings.early_exaggeration_iter}+{settings.n_iter} iterations, warm "
          f"{settings.warm_early_exaggeration_iter}+{settings.warm_n_iter}; torch threads {torch.get_num_threads()}")
    # The 2,000 held-out digits first, then the 8,000 the model trained on: 10k is all of them.
    order = torch.cat([torch.arange(8000, 10000), torch.arange(8000)])
    all_labels = torch.from_numpy(labels.astype(np.int64))
    z = TSNEEmbedding().prior_z(mu_after.shape[1])
    header = (f"{'points':>6} | {'cold s':>6} | {'warm s':>6} | {'warm/cold':>9} | {'kNN cold':>8} | "
              f"{'kNN warm':>8} | {'kNN 20-D':>8} | {'place 64 prior s':>16}")
    print(header)
    print("-" * len(header))
    for n in SIZES:
        index = order[:n].sort().values  # (n,) rows of the dataset, sorted as Latents are
        before, after, y = mu_before[index], mu_after[index], all_labels[index]

        steps = TSNEEmbedding(max_points=n).settings
        t = time.perf_counter()
        cold_map = steps.embed(after.double().numpy(), start=None)  # from a PCA, full iterations
        cold_s = time.perf_counter() - t

        first = np.array(steps.embed(before.double().numpy(), start=None))  # the previous epoch's map
        t = time.perf_counter()
        warm_map = steps.embed(after.double().numpy(), start=first)  # started from it, warm iterations
        warm_s = time.perf_counter() - t
        warm_q = quality(warm_map, y)  # before `place`, which centres the map (distances are unchanged)

        t = time.perf_counter()
        steps.place(warm_map, z.double().numpy())
        place_s = time.perf_counter() - t
        print(f"{n:>6} | {cold_s:>6.1f} | {warm_s:>6.1f} | {warm_s / cold_s:>9.2f} | {quality(cold_map, y):>8.3f} | "
              f"{warm_q:>8.3f} | {knn_label_agreement(after.numpy(), y.numpy(), k=10):>8.3f} | {place_s:>16.2f}",
              flush=True)
    # Other processes share the cores: timings scale with the load, the warm/cold ratio much less.
    print(f"total {time.perf_counter() - start:.0f} s; load average at the end "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
