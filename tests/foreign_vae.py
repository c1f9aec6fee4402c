"""A VAE that lvae did not write: a plain LightningModule with `encode` and `decode` (flattened, as the classic
PyTorch example's), trained by a plain `Trainer` on a plain DataLoader of `(x, y)` batches, with every lvae picture.

    python tests/foreign_vae.py OUT DEVICES

Writes the pictures under OUT (its CSVLogger folder), per validation epoch the dataset indices of the inputs the
pictures followed (`followed_<epoch>.pt`), and the state of the pictures that show fixed inputs (`shown.pt`: the
inputs of the traversals, interpolations and reconstructions). With DEVICES 2 it runs as 2 gloo processes
(Lightning's launcher runs this script again for rank 1).
"""

import sys
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from conftest import toy_digits
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lvae.callbacks import (LatentExport, LatentInterpolation, LatentScatter, LatentTraversal, LatentUncertainty,
                            PriorSamples, Reconstructions, TSNEEmbedding)
from lvae.picture_callback import PictureCallback


class ClassicVAE(L.LightningModule):
    """784-64-Z, nothing of lvae's: only `encode` and `decode` are what the pictures ask for."""

    def __init__(self, latent_dim: int = 3):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 2 * latent_dim))
        self.head = nn.Sequential(nn.Linear(latent_dim, 64), nn.ReLU(), nn.Linear(64, 784))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.body(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.head(z))  # (B, 784), flattened

    def predict_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> tuple[Tensor, Tensor]:
        return self.encode(batch[0])

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, _ = batch
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.binary_cross_entropy(self.decode(z), x.flatten(1), reduction="sum") / len(x)
        return recon + 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val_mu", self.encode(batch[0])[0].abs().mean(), sync_dist=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


class Followed(PictureCallback):
    """Saves, per epoch, which inputs the pictures followed (through the same shared collection)."""

    def __init__(self, out: Path):
        super().__init__(background=False)
        self.out = out

    def prepare(self, trainer, pl_module, latents, epoch):
        torch.save({"index": latents.index, "mu": latents.mu}, self.out / f"followed_{epoch}.pt")
        return None


def loader(images, labels) -> DataLoader:
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)  # (N, 1, 28, 28) in [0, 1]
    return DataLoader(TensorDataset(x, torch.from_numpy(labels).long()), batch_size=32)


class ToyDigits(L.LightningDataModule):
    """A data module of the user's own: plain DataLoaders of (x, y) batches, nothing of lvae's."""

    def __init__(self, train: int = 256, val: int = 45):
        super().__init__()
        self.train, self.val = train, val

    def train_dataloader(self) -> DataLoader:
        return loader(*toy_digits(self.train, seed=0))

    def val_dataloader(self) -> DataLoader:
        return loader(*toy_digits(self.val, seed=1))


def main(out: Path, devices: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    L.seed_everything(0)
    train, val = loader(*toy_digits(256, seed=0)), loader(*toy_digits(45, seed=1))
    shown = [LatentTraversal(), LatentInterpolation(), Reconstructions()]
    pictures = [LatentScatter(), TSNEEmbedding(perplexity=5.0, n_prior=8), PriorSamples(n_samples=16),
                LatentUncertainty(n_show=4, nrow=4, k_neighbours=5), *shown, Followed(out)]
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        logger=CSVLogger(out, name="", version=""), callbacks=pictures, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    model = ClassicVAE()
    trainer.fit(model, train, val)
    if trainer.is_global_zero:
        torch.save({type(c).__name__: c.state_dict() for c in shown}, out / "shown.pt")
    export = LatentExport(path=str(out / "latents.npz"))
    predictor = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", logger=False,
                          callbacks=[export], enable_progress_bar=False, enable_model_summary=False)
    predictor.predict(model, val)
    if predictor.is_global_zero:  # what the export must hold: the trained encoder on every validation input, in order
        with torch.inference_mode():
            mu, _ = model.cpu().encode(val.dataset.tensors[0])
        torch.save(mu, out / "direct_mu.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
