"""What the bench scripts share: Fashion-MNIST in place, the training split lvae trains on, one test loss, a header.

Every variant trains on the same inputs (lvae's training split: the 55,000 of the 60,000 training images that
`MNISTDataModule` does not hold out for validation) and is scored by the same `test_loss` on the same test tensor,
so the speed comparison and the loss comparison are both like for like.
"""

import os
import platform
import shutil
import sys
from pathlib import Path
from typing import Optional

import lightning
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.datasets import FashionMNIST

from lvae.data import MNISTDataModule

DATA_DIR = Path(__file__).resolve().parent / "data"  # bench/data, wherever the bench is started from
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
GZ_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
BATCH_SIZE = 128  # the classic example's
SEED = 0  # weights, z draws and (in lvae and the hand loop) the shuffling
TEST_SEED = 1234  # the z draws of the test loss, the same for every variant


def ensure_data(data_dir: str) -> None:
    """Copy Debian's four .gz files into <data_dir>/FashionMNIST/raw/ when missing, and unpack them there.

    lvae's data module unpacks .gz copies itself; torchvision's FashionMNIST(root) reads only the unpacked files,
    so the classic baseline needs them unpacked before it starts. Exits 1 with directions when there is no data.
    """
    raw = Path(data_dir) / "FashionMNIST" / "raw"
    missing = [name for name in GZ_FILES if not (raw / name).is_file() and not (raw / name[:-3]).is_file()]
    if missing:
        if not all((DEBIAN_DIR / name).is_file() for name in missing):
            print(f"bench: Fashion-MNIST is not in {raw} and not in {DEBIAN_DIR}. Get it with\n"
                  f"  sudo apt-get update && sudo apt-get install -y dataset-fashion-mnist\n"
                  f"or copy the four files ({', '.join(GZ_FILES)}) into {raw}/", file=sys.stderr)
            sys.exit(1)
        raw.mkdir(parents=True, exist_ok=True)
        for name in missing:
            shutil.copyfile(DEBIAN_DIR / name, raw / name)
    MNISTDataModule(dataset="fashion_mnist", data_dir=data_dir, download=False).prepare_data()


def lvae_datamodule(data_dir: str, limit: Optional[int] = None) -> MNISTDataModule:
    """lvae's data module as a user builds it, set up, its training split cut to the first `limit` inputs."""
    dm = MNISTDataModule(dataset="fashion_mnist", data_dir=data_dir, batch_size=BATCH_SIZE, download=False)
    dm.setup("fit")  # the trainer's own setup call then finds the splits and keeps them
    if limit is not None:
        images, labels = dm.splits["train"]
        dm.splits["train"] = (images[:limit], labels[:limit])
    return dm


def train_indices(data_dir: str, limit: Optional[int] = None) -> Tensor:
    """Positions in torchvision's training set of lvae's training split (sorted), first `limit` of them.

    Recomputes `MNISTDataModule.setup`'s split and checks it against the data module's own tensors, so a change
    there fails here instead of silently comparing different data.
    """
    dm = lvae_datamodule(data_dir)
    full = FashionMNIST(data_dir, train=True).data  # (60000, 28, 28) uint8
    n_val = round(len(full) * dm.hparams.val_fraction)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(dm.hparams.split_seed))
    index = order[n_val:].sort().values
    if not torch.equal(full[index], dm.splits["train"][0]):
        raise RuntimeError("bench: lvae's training split is no longer the one common.train_indices recomputes; "
                           "update train_indices to match MNISTDataModule.setup")
    return index[:limit]


def test_images(data_dir: str) -> Tensor:
    """The 10,000 test images, (N, 28, 28) uint8, the same tensor for every variant."""
    return FashionMNIST(data_dir, train=False).data


@torch.inference_mode()
def test_loss(encoder: nn.Module, decoder: nn.Module, images: Tensor, batch_size: int = 1000) -> float:
    """Mean over `images` of the per-image negative ELBO (recon + KL) in nats, one z draw per image.

    The same quantity as lvae's test/loss; the z draws come from a generator seeded with TEST_SEED, so every
    variant is scored with the same noise.
    """
    device = next(encoder.parameters()).device
    generator = torch.Generator(device=device).manual_seed(TEST_SEED)
    total = torch.zeros((), device=device, dtype=torch.float64)
    for chunk in images.split(batch_size):
        x = chunk.to(device).unsqueeze(1).float().div_(255)  # (B, 1, 28, 28) in [0, 1]
        mu, logvar = encoder(x)  # (B, Z) each
        z = mu + torch.randn(mu.shape, generator=generator, device=device) * torch.exp(0.5 * logvar)
        recon = F.binary_cross_entropy_with_logits(decoder(z).flatten(1), x.flatten(1), reduction="none").sum(1)  # (B,)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(1)  # (B,)
        total += (recon + kl).sum(dtype=torch.float64)
    return total.item() / len(images)


def sync(device: torch.device) -> None:
    """Wait for queued GPU work, so a clock read after it covers the work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def header(device: str) -> str:
    """Versions, device and threads: what a reader needs to compare two printed runs."""
    if device == "cuda" and torch.cuda.is_available():
        where = f"cuda ({torch.cuda.get_device_name()})"
    else:
        where = f"cpu ({_cpu_name()})"
    return (f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}, "
            f"lightning {lightning.__version__}\n"
            f"device {where}, torch threads {torch.get_num_threads()}, CPU cores {_cores()}, {load()}")


def load() -> str:
    """The 1-minute load average: above the core count, other processes are taking CPU time from the runs."""
    return f"load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else "load average unknown"


def _cores() -> int:
    # The cores this process may run on (a container's share), where the OS can say so.
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _cpu_name() -> str:
    try:  # Linux names the model; platform.processor() often gives only the architecture
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()
