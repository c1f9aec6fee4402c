"""MNIST and its same-format siblings, held in memory and served as whole batches.

A whole split of 28x28 uint8 images is under 50 MB, so it is read once through torchvision and kept as one
tensor; a batch is then one index operation instead of decoding a PIL image per item (measured: the data path,
not the model, decides the speed of this small VAE).
"""

import contextlib
import functools
import gzip
import math
import shutil
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator, Literal, Optional

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveInt
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset
from torchvision import datasets
from typing_extensions import override

from lvae.errors import ConfigError, DataFilesError, at_least
from lvae.say import say

DATASETS = {"mnist": datasets.MNIST, "fashion_mnist": datasets.FashionMNIST, "kmnist": datasets.KMNIST}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049  # IDX headers: 0x0803 (uint8, 3 dims), 0x0801 (uint8, 1 dim)
IDX_MAGIC = {3: IMAGES_MAGIC, 1: LABELS_MAGIC}  # dims -> magic number
Batch = tuple[Tensor, Tensor, Tensor]  # images (B, 28, 28) uint8 until transfer, labels (B,), dataset index (B,)


def idx_files(split: str) -> tuple[str, str]:
    """The uncompressed IDX file names torchvision reads for a split ("train" or "t10k")."""
    return f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"


def idx_shape(path: Path, head: bytes, dims: int, size: str) -> list[int]:
    """The dimensions an IDX header declares, read from `head`: the file's first 4 + 4 * dims bytes, or all of it
    when it is shorter (`size` says how long, in the message). Refuses a short header, a magic number that is not
    uint8 values in `dims` dimensions, and images that are not 28x28."""
    head_len, magic = 4 + 4 * dims, IDX_MAGIC[dims]
    if len(head) < head_len:
        raise DataFilesError(f"{path} is truncated: {size}, shorter than its {head_len}-byte IDX header")
    found = int.from_bytes(head[:4], "big")
    if found != magic:
        raise DataFilesError(f"{path} is not an IDX {'image' if dims == 3 else 'label'} file: magic number "
                             f"{found}, expected {magic}. Replace it with the original file.")
    shape = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    if dims == 3 and shape[1:] != [28, 28]:
        raise DataFilesError(f"{path} holds {shape[1]}x{shape[2]} images; lvae reads 28x28 (MNIST, Fashion-MNIST, "
                             "KMNIST)")
    return shape


def idx_size(shape: list[int]) -> int:
    """The bytes of an IDX file of uint8 values with these dimensions: its header, then the values."""
    return 4 + 4 * len(shape) + math.prod(shape)


def check_idx_size(path: Path, shape: list[int], size: int, packed: bool = False) -> None:
    """Refuse a file whose size is not what its header declares. A `packed` (.gz) file is measured by what it
    unpacks to, counted no further than one byte past the declared size."""
    expected = idx_size(shape)
    if size == expected:
        return
    what = "truncated" if size < expected else "longer than its header says"
    found = (f"{size} bytes" if not packed else f"it unpacks to {size} bytes" if size < expected else
             f"it unpacks to more than {expected} bytes")
    raise DataFilesError(f"{path} is {what}: {found}, its header ({'x'.join(map(str, shape))}) needs {expected}. "
                         "Download or copy the file again.")


def copy_at_most(src: BinaryIO, limit: int, dst: Optional[BinaryIO] = None) -> int:
    """Copy up to `limit` bytes from `src` to `dst` (None: only count them) in 1 MiB reads; returns how many there
    were. One read of `limit` bytes would first set aside all of them, however few the file holds."""
    done = 0
    while done < limit:
        chunk = src.read(min(2**20, limit - done))
        if not chunk:
            break
        if dst is not None:
            dst.write(chunk)
        done += len(chunk)
    return done


@contextlib.contextmanager
def unpacking(packed: Path) -> Iterator[None]:
    """Name a .gz that cannot be unpacked: not gzip, or its stream cut short or damaged."""
    try:
        yield
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise DataFilesError(f"{packed} cannot be unpacked ({type(err).__name__}: {err}). Download or copy the file "
                             "again.") from None


def checked_shape(path: Path, dims: int) -> list[int]:
    """The dimensions an IDX file's header declares, once the file is known to hold exactly what they need.

    A plain file is measured by its size. A .gz may inflate to a thousand times its size (2 MB to 2 GiB), so it is
    inflated without keeping anything, and no further than one byte past the size its header declares.
    """
    head_len = 4 + 4 * dims
    if not path.name.endswith(".gz"):
        size = path.stat().st_size
        with open(path, "rb") as f:
            shape = idx_shape(path, f.read(head_len), dims, f"{size} bytes")
        check_idx_size(path, shape, size)
        return shape
    with unpacking(path), gzip.open(path, "rb") as src:
        head = src.read(head_len)
        shape = idx_shape(path, head, dims, f"it unpacks to {len(head)} bytes")
        check_idx_size(path, shape, head_len + copy_at_most(src, idx_size(shape) - head_len + 1), packed=True)
    return shape


def check_idx_pair(images: Path, labels: Path) -> int:
    """Check an images/labels IDX pair by what can be checked (magic numbers, shapes, sizes, counts).

    Returns the number of images; raises DataFilesError naming the file and what is wrong.
    """
    n_images, _, _ = checked_shape(images, 3)
    (n_labels,) = checked_shape(labels, 1)
    if n_images != n_labels:
        raise DataFilesError(f"{images} holds {n_images} images but {labels} holds {n_labels} labels; the pair "
                             "must come from the same split")
    with open(labels, "rb") as f:
        f.seek(8)
        top = max(f.read(), default=0)
    if top > 9:
        raise DataFilesError(f"{labels} has label {top}; MNIST-format datasets have labels 0-9")
    return n_images


def unpack_idx(packed: Path, target: Path, dims: int) -> None:
    """Unpack an IDX ``.gz`` to `target`, only once it is known to unpack to the size its header declares
    (`checked_shape`): a refused file leaves nothing behind. A kill leaves only `<target>.part`, replaced next time."""
    shape = checked_shape(packed, dims)
    part = target.with_name(f"{target.name}.part")
    try:
        with unpacking(packed), gzip.open(packed, "rb") as src, open(part, "wb") as dst:
            copy_at_most(src, idx_size(shape), dst)  # bounded again: the file may have changed since
        part.rename(target)
    finally:
        part.unlink(missing_ok=True)


def read_idx_pair(images: Path, labels: Path) -> tuple[np.ndarray, np.ndarray]:
    """An IDX images/labels pair, plain or .gz, as arrays (N, 28, 28) and (N,) of uint8; each file is checked
    first (`checked_shape`), so no more is read than its header declares."""
    def values(path: Path, dims: int) -> np.ndarray:
        shape = checked_shape(path, dims)
        with unpacking(path), (gzip.open(path) if path.name.endswith(".gz") else open(path, "rb")) as f:
            data = f.read(idx_size(shape))
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)

    return values(Path(images), 3), values(Path(labels), 1)


def write_idx(raw: Path, prefix: str, images: np.ndarray, labels: np.ndarray) -> None:
    """Write an images/labels pair (N, 28, 28) / (N,) as the IDX files torchvision reads, e.g. `train` and
    `t10k` in `<data_dir>/MNIST/raw/`: a way to train lvae on digits of your own."""
    raw = Path(raw)
    raw.mkdir(parents=True, exist_ok=True)
    (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
        np.array([IMAGES_MAGIC, len(images), 28, 28], dtype=">u4").tobytes() + images.astype(np.uint8).tobytes())
    (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
        np.array([LABELS_MAGIC, len(labels)], dtype=">u4").tobytes() + labels.astype(np.uint8).tobytes())


class EpochOrder:
    """The order of one epoch: a fresh seeded permutation per epoch when shuffling, else 0..n-1.

    Lightning calls `set_epoch` on a loader's `sampler` at the start of every epoch, as for DistributedSampler.
    """

    def __init__(self, n: int, shuffle: bool, seed: int):
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def order(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.n)
        # Same seed on every rank, so ranks agree on the permutation and take disjoint shares of it.
        return torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + self.epoch))


class InMemoryBatches:
    """Whole batches indexed out of in-memory tensors, split across DDP ranks without repeats.

    Each step takes a global batch of `batch_size * world_size` inputs from the epoch's order and gives every
    rank its own slice (sizes differ by at most one), so every input is seen exactly once per epoch and every
    rank runs the same number of steps. A last global batch too small to give each rank an input is merged into
    the one before it. `trained` counts the steps of the current epoch that finished (the trainer's count); a
    checkpoint records it, so a resumed run continues the epoch after the last finished step.
    """

    def __init__(self, images: Tensor, labels: Tensor, batch_size: int, shuffle: bool, seed: int,
                 trained: Optional[Callable[[], int]] = None):
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.sampler = EpochOrder(len(images), shuffle, seed)
        self.batch_sampler = None  # Lightning inspects both attributes of anything with a sampler
        self.trained = trained
        self._skip: dict[int, int] = {}  # epoch -> batches to pass over once, after a mid-epoch resume

    @staticmethod
    def _rank_world() -> tuple[int, int]:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    def _global_batches(self, world: int) -> list[int]:
        n, step = len(self.images), self.batch_size * world
        if n < world:
            raise ConfigError(f"a split of {n} inputs cannot be shared by {world} processes; use fewer devices")
        bounds = list(range(0, n, step)) + [n]
        if len(bounds) > 2 and bounds[-1] - bounds[-2] < world:
            del bounds[-2]
        return bounds

    def __len__(self) -> int:
        return len(self._global_batches(self._rank_world()[1])) - 1

    def __iter__(self) -> Iterator[Batch]:
        rank, world = self._rank_world()
        bounds = self._global_batches(world)
        order = self.sampler.order().to(self.images.device)
        # Skip only within the epoch the resumed checkpoint was saved in.
        skip = self._skip.get(self.sampler.epoch, 0)
        self._skip = {}
        for start, stop in list(zip(bounds[:-1], bounds[1:]))[skip:]:
            index = torch.tensor_split(order[start:stop], world)[rank]  # (B,)
            yield self.images[index], self.labels[index], index

    # Lightning saves this with every checkpoint of fit, so a run resumed mid-epoch continues that epoch's order
    # after its last finished step instead of starting the epoch again. Finished steps, not batches handed out:
    # a signal can land between handing out a batch and finishing its step, and that batch must be trained.
    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_done": self.trained() if self.trained else 0,
                "batches": len(self), "batch_size": self.batch_size, "world_size": self._rank_world()[1]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        check_same_batches(state, self.batch_size, self._rank_world()[1])
        self.sampler.set_epoch(state["epoch"])
        self._skip = {state["epoch"]: state["batches_done"]}


def trained_steps(trainer: "L.Trainer") -> int:
    """Lightning's count of the current epoch's steps whose optimizer step is done: the count its own loop resumes
    after, what a training loader's state records (a private loop API; tests/test_runs.py fails when it changes)."""
    return trainer.fit_loop.epoch_loop.batch_progress.current.processed


def saved_train_position(checkpoint: dict[str, Any]) -> Optional[dict[str, int]]:
    """The training loader's `InMemoryBatches.state_dict` in a checkpoint of fit, if it holds one (Lightning keeps
    the states of the fit loop's loaders under loops/fit_loop/state_dict/combined_loader)."""
    states = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {}).get("combined_loader") or [None]
    return states[0]


def check_same_batches(state: dict[str, int], batch_size: int, world_size: Optional[int]) -> None:
    """Refuse to continue a half-finished epoch with other batches than it started with (`world_size` None: not
    known yet). The trainer counts the epoch in steps, so the rest of it must be cut into the same batches."""
    done, total = state["batches_done"], state.get("batches", 0)
    if not 0 < done < total or batch_size is None:
        return  # saved at an epoch's end: the next epoch may use any batches (or not lvae's loader)
    saved_size, saved_world = state.get("batch_size", batch_size), state.get("world_size", world_size)
    if saved_size == batch_size and world_size in (None, saved_world):
        return
    now = f"{batch_size}" + ("" if world_size is None else f" on {world_size}")
    raise ConfigError(
        f"the checkpoint stopped in the middle of epoch {state['epoch']} ({done} of {total} steps); the rest of that "
        f"epoch needs the batches it started with: --data.batch_size {saved_size} on {saved_world} process(es) "
        f"(now {now}). To change them, first finish that epoch with the batches it started with (the same command "
        f"with --data.batch_size {saved_size} --trainer.max_epochs {state['epoch'] + 1}), then continue with the new "
        "values.")


class MNISTDataModule(L.LightningDataModule):
    """MNIST, Fashion-MNIST or KMNIST (torchvision's readers and downloads), held in memory.

    Args:
        dataset: which dataset.
        data_dir: the root torchvision reads, e.g. ``data`` holds ``data/MNIST/raw/``.
        batch_size: inputs per step and per process.
        val_fraction: share of the training set held out for validation (fixed by ``split_seed``).
        split_seed: seed of the train/validation split and of the shuffling.
        num_workers: 0 serves whole batches from memory (fast); above 0 uses the classic per-item
            ``DataLoader`` with that many worker processes.
        download: let torchvision download missing files (needs a network).
        predict_split: which split ``lvae predict`` encodes.
    """

    def __init__(
        self,
        dataset: Literal["mnist", "fashion_mnist", "kmnist"] = "mnist",
        data_dir: str = "data",
        batch_size: PositiveInt = 128,
        val_fraction: OpenUnitInterval = 1 / 12,
        split_seed: int = 0,
        num_workers: NonNegativeInt = 0,
        download: bool = True,
        predict_split: Literal["train", "val", "test"] = "test",
    ):
        super().__init__()
        # Plain types in the hyperparameters (see VAE.__init__): checkpoints must load with weights_only=True.
        dataset, data_dir, predict_split = str(dataset), str(data_dir), str(predict_split)
        batch_size, split_seed, num_workers = int(batch_size), int(split_seed), int(num_workers)
        val_fraction, download = float(val_fraction), bool(download)
        if dataset not in DATASETS:
            raise ConfigError(f"data.dataset={dataset!r} is not one of {sorted(DATASETS)}")
        if batch_size < 1:
            raise ConfigError(f"data.batch_size={batch_size} must be a positive integer")
        if not 0 < val_fraction < 1:
            raise ConfigError(f"data.val_fraction={val_fraction} must lie strictly between 0 and 1")
        at_least("data.num_workers", num_workers, 0)
        if predict_split not in ("train", "val", "test"):
            raise ConfigError(f"data.predict_split={predict_split!r} is not one of ['test', 'train', 'val']")
        self.save_hyperparameters()
        self.dataset_class = DATASETS[dataset]
        self.splits: dict[str, tuple[Tensor, Tensor]] = {}

    image_shape = (1, 28, 28)  # (C, H, W) of every MNIST-format image

    @property
    def classes(self) -> list[str]:
        """The class names in label order, as torchvision's dataset names them (for legends)."""
        return list(self.dataset_class.classes)

    @property
    def raw_folder(self) -> Path:
        return Path(self.hparams.data_dir) / self.dataset_class.__name__ / "raw"

    def _expected_files(self) -> list[str]:
        return [*idx_files("train"), *idx_files("t10k")]

    def _missing(self) -> list[str]:
        return [name for name in self._expected_files() if not (self.raw_folder / name).is_file()]

    @override
    def prepare_data(self) -> None:
        """Make the four IDX files present (unpack local .gz copies, else let torchvision download) and check them.

        Lightning calls this before it sets up loggers and callbacks, so bad or missing files are refused before a
        run folder or a W&B run exists."""
        for name in self._missing():
            packed = self.raw_folder / f"{name}.gz"
            if packed.is_file():
                unpack_idx(packed, self.raw_folder / name, dims=3 if "-idx3-" in name else 1)
        if self._missing():
            self._download()
        for split in ("train", "t10k"):
            check_idx_pair(*(self.raw_folder / name for name in idx_files(split)))

    def _download(self) -> None:
        reason = "download=false"
        if self.hparams.download:
            before = set(self.raw_folder.rglob("*")) if self.raw_folder.exists() else set()
            # The outermost folder the download attempt will create, if any: removed again on failure.
            created = next((p for p in reversed([self.raw_folder, *self.raw_folder.parents]) if not p.exists()), None)
            try:
                self.dataset_class(self.hparams.data_dir, train=True, download=True)
                self.dataset_class(self.hparams.data_dir, train=False, download=True)
                return
            except Exception as err:  # torchvision raises RuntimeError or URLError; both mean "no files"
                reason = f"download failed: {str(err).strip().splitlines()[-1]}"
                # Leave nothing half-written behind: only what the failed attempt created goes.
                for path in sorted(set(self.raw_folder.rglob("*")) - before, reverse=True):
                    path.unlink() if path.is_file() else path.rmdir()
                if created is not None:
                    shutil.rmtree(created, ignore_errors=True)
        files = "\n  ".join(self._expected_files())
        raise DataFilesError(
            f"{self.hparams.dataset} files not found in {self.raw_folder} ({reason}).\n"
            f"Expected these four files there (or the same names ending in .gz):\n  {files}\n"
            f"Copy them from a machine with a network (torchvision's {self.dataset_class.__name__}(root, "
            f"download=True) writes them), or point --data.data_dir at the folder that holds "
            f"{self.dataset_class.__name__}/raw/."
        )

    def _read(self, train: bool) -> tuple[Tensor, Tensor]:
        images, labels = idx_files("train" if train else "t10k")
        missing = [name for name in (images, labels) if not (self.raw_folder / name).is_file()]
        if missing:
            raise DataFilesError(f"{', '.join(missing)} missing from {self.raw_folder}; run prepare_data first "
                                 "or copy the files there")
        check_idx_pair(self.raw_folder / images, self.raw_folder / labels)
        ds = self.dataset_class(self.hparams.data_dir, train=train, download=False)
        return ds.data, ds.targets  # (N, 28, 28) uint8, (N,) int64

    @override
    def setup(self, stage: str) -> None:
        if self.splits:
            return
        images, labels = self._read(train=True)
        n_val = round(len(images) * self.hparams.val_fraction)
        if not 0 < n_val < len(images):
            raise ConfigError(f"data.val_fraction={self.hparams.val_fraction} leaves {n_val} of {len(images)} "
                              "training inputs for validation; choose a fraction that keeps both splits non-empty")
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.hparams.split_seed))
        val, train = order[:n_val].sort().values, order[n_val:].sort().values
        self.splits = {"train": (images[train], labels[train]), "val": (images[val], labels[val]),
                       "test": self._read(train=False)}
        say(f"{self.hparams.dataset}: " + ", ".join(f"{k} {len(v[0])}" for k, v in self.splits.items()))

    def _loader(self, split: str, shuffle: bool) -> "InMemoryBatches | DataLoader":
        images, labels = self.splits[split]
        if self.hparams.num_workers > 0:
            index = torch.arange(len(images))
            return DataLoader(TensorDataset(images, labels, index), batch_size=self.hparams.batch_size,
                              shuffle=shuffle, num_workers=self.hparams.num_workers, persistent_workers=True)
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if device.type == "cuda":
            # ~50 MB for all of MNIST: move it once, then every batch is indexed on the device.
            images, labels = images.to(device), labels.to(device)
            self.splits[split] = (images, labels)
        trained = functools.partial(trained_steps, self.trainer) if split == "train" else None
        return InMemoryBatches(images, labels, self.hparams.batch_size, shuffle, self.hparams.split_seed, trained)

    @override
    def train_dataloader(self) -> "InMemoryBatches | DataLoader":
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> "InMemoryBatches | DataLoader":
        return self._loader("val", shuffle=False)

    @override
    def test_dataloader(self) -> "InMemoryBatches | DataLoader":
        return self._loader("test", shuffle=False)

    @override
    def predict_dataloader(self) -> "InMemoryBatches | DataLoader":
        return self._loader(self.hparams.predict_split, shuffle=False)

    @override
    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images, labels, index = batch
        # uint8 travels (4x less to move); the model sees floats in [0, 1], (B, 1, 28, 28).
        return images.unsqueeze(1).float().div_(255), labels, index
