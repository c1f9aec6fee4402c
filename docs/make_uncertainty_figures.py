"""Measure what the posterior variance u(x) tracks on real digits, and make the figures of docs/uncertainty.md.

    .venv/bin/python docs/make_uncertainty_figures.py

Trains the default VAE (MLP 784-400-20) for 10 epochs on real MNIST digits: the official test set from
../shared/data/mnist-t10k, split 8,000 (as the training file) / 2,000 (as the test file), the recipe of
tests/conftest.py. The data module holds out 1/12 of the 8,000 for validation (667 digits); that is where
PriorSamples and LatentUncertainty measure and draw. Writes the last epoch's pictures (epoch 9: epochs count from
0, as Lightning does) and uncertainty_numbers.csv into docs/, prints the numbers as a markdown table, and leaves the
whole run (every picture of every epoch) in a temporary folder whose path it prints. Under a minute on 2 CPU cores.
"""

import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import CSVLogger

from lvae.callbacks.latent_uncertainty import LatentUncertainty
from lvae.callbacks.prior_samples import PriorSamples
from lvae import VAE, MNISTDataModule
from lvae.data import read_idx_pair, write_idx

DOCS = Path(__file__).resolve().parent
MNIST_T10K = DOCS.parent.parent / "shared" / "data" / "mnist-t10k"  # beside the checkout, as in tests/conftest.py
N_TRAIN = 8000  # the rest of the 10,000 becomes the test file
EPOCHS = 10
SEED = 0
REPORT_EPOCHS = (0, 4, 9)  # counted from 0, as Lightning, the file names, the titles and W&B count them
PICTURES = ("uncertainty", "prior_samples")
COLUMNS = {"uncertainty/mean": "mean u(x)", "uncertainty/active_units": "active units",
           "uncertainty/spearman_disagreement": "rho(u, neighbour disagreement)",
           "uncertainty/spearman_recon": "rho(u, recon error)", "uncertainty/spearman_ink": "rho(u, ink)",
           "uncertainty/neg_elbo_spearman_disagreement": "rho(-ELBO, neighbour disagreement)"}


def real_digits(root: Path) -> Path:
    if not (MNIST_T10K / "t10k-images-idx3-ubyte.gz").is_file():
        sys.exit(f"real MNIST digits not found at {MNIST_T10K}")
    images, labels = read_idx_pair(MNIST_T10K / "t10k-images-idx3-ubyte.gz", MNIST_T10K / "t10k-labels-idx1-ubyte.gz")
    write_idx(root / "MNIST" / "raw", "train", images[:N_TRAIN], labels[:N_TRAIN])
    write_idx(root / "MNIST" / "raw", "t10k", images[N_TRAIN:], labels[N_TRAIN:])
    return root


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="lvae-uncertainty-"))
    L.seed_everything(SEED)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=CSVLogger(work / "run"),
                        callbacks=[PriorSamples(), LatentUncertainty()], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    start = time.perf_counter()
    trainer.fit(VAE(), MNISTDataModule(data_dir=str(real_digits(work / "data"))))
    seconds = time.perf_counter() - start

    with open(Path(trainer.log_dir) / "metrics.csv") as f:
        rows = {int(float(r["epoch"])): r for r in csv.DictReader(f) if r.get("uncertainty/mean")}
        f.seek(0)
        val_loss = {int(float(r["epoch"])): r["val/loss"] for r in csv.DictReader(f) if r.get("val/loss")}
    last = EPOCHS - 1
    classes = sorted(k for k in rows[last] if k.startswith("uncertainty/class_"))
    with open(DOCS / "uncertainty_numbers.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["epoch", "val/loss", *COLUMNS, *classes])
        for epoch in REPORT_EPOCHS:
            writer.writerow([epoch, val_loss[epoch], *(rows[epoch][k] for k in COLUMNS),
                             *(rows[epoch][k] for k in classes)])
    for name in PICTURES:
        shutil.copyfile(Path(trainer.log_dir) / "latents" / name / f"epoch_{last:03d}.png", DOCS / f"{name}.png")

    print(f"\n{EPOCHS} epochs in {seconds:.0f} s; the whole run is in {trainer.log_dir}\n")
    print("| epoch | val/loss | " + " | ".join(COLUMNS.values()) + " |")
    print("|---" * (len(COLUMNS) + 2) + "|")
    for epoch in REPORT_EPOCHS:
        print(f"| {epoch} | {float(val_loss[epoch]):.1f} | "
              + " | ".join(f"{float(rows[epoch][k]):+.2f}" if "spearman" in k else f"{float(rows[epoch][k]):.3g}"
                           for k in COLUMNS) + " |")
    print(f"\nmean u(x) per class at epoch {last}: "
          + ", ".join(f"{k.rsplit('_', 1)[1]}: {float(rows[last][k]):.4f}" for k in classes))


if __name__ == "__main__":
    main()
