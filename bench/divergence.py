"""What healthy runs reach, against the limits of the divergence rule (`lvae.divergence`), on real digits.

    .venv/bin/python bench/divergence.py                # 3 epochs of each setting, about 5 min on 2 cores
    .venv/bin/python bench/divergence.py --epochs 30 --settings beta=0 latent_dim=2,beta=0
    .venv/bin/python bench/divergence.py --no-stop --settings lr=100  # how far a diverged run goes unchecked

Trains each setting on the official MNIST test set beside the checkout, split 8,000 / 2,000 as in
tests/conftest.py (batch 128, seed 0), and prints the largest values the rule reads: the training loss of each
step, the val/loss of each epoch, |mu| and logvar over every training batch and validation epoch, and the
smallest logvar (which the rule ignores). A setting that diverges prints lvae's message where it stopped
(with --no-stop it trains on, as lvae did before it had the rule).
"""

import argparse
import math
import sys
import tempfile
import warnings
from pathlib import Path

import lightning as L
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from lvae import DivergenceError, MNISTDataModule  # noqa: E402
from lvae.data import read_idx_pair, write_idx  # noqa: E402
from lvae.divergence import LOGVAR_LIMIT, LOSS_FACTOR, MU_LIMIT, DivergenceGuard, untrained_loss  # noqa: E402

LOSS_LIMIT = LOSS_FACTOR * untrained_loss(28 * 28)
from lvae.model import VAE  # noqa: E402

SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist-t10k"
SETTINGS = ("", "beta=0", "beta=100", "beta=1000", "latent_dim=2", "latent_dim=2,beta=0", "latent_dim=64",
            "latent_dim=64,beta=0", "latent_dim=64,beta=1000", "architecture=conv", "architecture=conv,beta=0",
            "architecture=conv,latent_dim=64,beta=100", "likelihood=gaussian", "likelihood=gaussian,beta=0",
            "likelihood=gaussian,architecture=conv", "lr=100")


class Watching(DivergenceGuard):
    """The divergence guard that reads everything and stops nothing."""

    def stop_if(self, *args, **kwargs) -> None:
        pass


class Extremes(VAE):
    """The VAE, keeping the largest values that its divergence checks read (the lagged per-step vitals and the
    validation epoch's synced means and extremes); with `stop` False it never stops."""

    stop = True

    def on_fit_start(self) -> None:
        if not self.stop:
            self.divergence = Watching(self._pixels)
        self.seen = {"loss": -math.inf, "val/loss": -math.inf, "mu": 0.0, "logvar": -math.inf, "min logvar": math.inf}

    def training_step(self, batch, batch_idx):
        loss = super().training_step(batch, batch_idx)
        x = batch[0]
        with torch.no_grad():
            _, logvar = self.encode(x)
        loss_, _, _, mu_max, logvar_max = self.divergence.pending[0].tolist()  # what the rule reads a step later
        self._keep(loss=loss_, mu=mu_max, logvar=logvar_max)
        self.seen["min logvar"] = min(self.seen["min logvar"], float(logvar.min()))
        return loss

    def on_validation_epoch_end(self) -> None:
        if not self.trainer.sanity_checking:
            self._keep(**{"val/loss": self.metrics["val_loss"].compute().item(),
                          "mu": self.val_extremes["mu"].compute().item(),
                          "logvar": self.val_extremes["logvar"].compute().item()})
        super().on_validation_epoch_end()

    def _keep(self, **values: float) -> None:
        for key, value in values.items():
            self.seen[key] = max(self.seen[key], value)


def parse(setting: str) -> dict:
    pairs = [item.split("=") for item in setting.split(",") if item]
    return {k: (v if k in ("architecture", "likelihood") else int(v) if k == "latent_dim" else float(v))
            for k, v in pairs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--settings", nargs="*", default=list(SETTINGS))
    parser.add_argument("--no-stop", action="store_true", help="train on when the rule says diverged")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    images, labels = read_idx_pair(SHARED_MNIST / "t10k-images-idx3-ubyte.gz",
                                   SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    print(f"limits: loss {LOSS_LIMIT:,.0f} nats per image, |mu| {MU_LIMIT:g}, logvar {LOGVAR_LIMIT:g}; "
          f"{args.epochs} epochs on 8,000 real digits")
    print(f"{'setting':<40} {'max loss':>10} {'max val/loss':>12} {'max |mu|':>9} {'max logvar':>10} "
          f"{'min logvar':>10}  stopped")
    with tempfile.TemporaryDirectory() as tmp:
        write_idx(Path(tmp) / "MNIST" / "raw", "train", images[:8000], labels[:8000])
        write_idx(Path(tmp) / "MNIST" / "raw", "t10k", images[8000:], labels[8000:])
        for setting in args.settings:
            L.seed_everything(0, verbose=False)
            model = Extremes(latent_points=0, **parse(setting))
            model.stop = not args.no_stop
            trainer = L.Trainer(max_epochs=args.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False)
            stopped = ""
            try:
                trainer.fit(model, MNISTDataModule(data_dir=tmp, batch_size=128))
            except DivergenceError as err:
                stopped = str(err).split(". No checkpoint")[0]
            s = model.seen
            print(f"{setting or 'defaults':<40} {s['loss']:>10.4g} {s['val/loss']:>12.4g} {s['mu']:>9.4g} "
                  f"{s['logvar']:>10.4g} {s['min logvar']:>10.4g}  {stopped or 'no'}", flush=True)


if __name__ == "__main__":
    main()
