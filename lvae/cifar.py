"""CIFAR-10 through torchvision's reader and download, held in memory: 60,000 RGB images of 32x32, 150 MB of uint8."""

import shutil
from pathlib import Path
from typing import Literal

import torch
from jsonargparse.typing import OpenUnitInterval, PositiveInt
from torch import Tensor
from torchvision import datasets
from torchvision.datasets.utils import calculate_md5
from typing_extensions import override

from lvae.errors import DataFilesError
from lvae.image_folder import ImageDataModule, refuse_unless, split_off
from lvae.say import say


def cifar10_files() -> list[tuple[str, str]]:
    """(file name, md5) of every file torchvision reads from `cifar-10-batches-py/`: five training batches, the test
    batch and `batches.meta`."""
    meta = datasets.CIFAR10.meta
    return [*map(tuple, datasets.CIFAR10.train_list + datasets.CIFAR10.test_list), (meta["filename"], meta["md5"])]


class CIFAR10DataModule(ImageDataModule):
    """CIFAR-10 (torchvision's reader and download): 50,000 training and 10,000 test images, ten classes.

    The batch files are pickles, and unpickling a file can run code that it holds. torchvision reads one only after
    its md5 matches the original's, and lvae never bypasses that check: a changed file is refused by name.

    Args:
        data_dir: the root torchvision reads: ``data`` holds ``data/cifar-10-batches-py/``.
        batch_size: inputs per step and per process.
        val_fraction: share of the training set held out for validation (fixed by ``split_seed``).
        split_seed: seed of the train/validation split and of the shuffling.
        download: let torchvision download missing files (needs a network, unless the archive
            ``cifar-10-python.tar.gz`` has been placed in ``data_dir``).
        predict_split: which split ``lvae predict`` encodes.
    """

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: PositiveInt = 128,
        val_fraction: OpenUnitInterval = 0.1,
        split_seed: int = 0,
        download: bool = True,
        predict_split: Literal["train", "val", "test"] = "test",
    ):
        super().__init__()
        # Plain types in the hyperparameters: checkpoints must load with weights_only=True.
        data_dir, predict_split, download = str(data_dir), str(predict_split), bool(download)
        batch_size, split_seed, val_fraction = int(batch_size), int(split_seed), float(val_fraction)
        refuse_unless(batch_size >= 1, "batch_size", batch_size, "must be a positive integer")
        refuse_unless(0 < val_fraction < 1, "val_fraction", val_fraction, "must lie strictly between 0 and 1")
        refuse_unless(predict_split in ("train", "val", "test"), "predict_split", predict_split,
                      "is not one of ['test', 'train', 'val']")
        self.save_hyperparameters()
        self.image_shape = (3, 32, 32)

    @property
    def folder(self) -> Path:
        return Path(self.hparams.data_dir) / datasets.CIFAR10.base_folder

    def _missing(self) -> list[str]:
        return [name for name, _ in cifar10_files() if not (self.folder / name).is_file()]

    @override
    def prepare_data(self) -> None:
        """Make the files present: torchvision unpacks a placed archive or downloads it. Checksums are checked in
        `setup`, where the files are read."""
        if not self._missing():
            return
        reason = "download=false"
        if self.hparams.download:
            data_dir = Path(self.hparams.data_dir)
            # What a failed attempt may leave half-written (the outermost new folder, the archive, the unpacked
            # folder): removed again unless it was there before.
            new_root = next((p for p in reversed([data_dir, *data_dir.parents]) if not p.exists()), data_dir)
            created = [p for p in (new_root, data_dir / datasets.CIFAR10.filename, self.folder) if not p.exists()]
            try:
                datasets.CIFAR10(self.hparams.data_dir, train=True, download=True)
                return
            except Exception as err:  # torchvision raises RuntimeError or URLError; both mean "no files"
                reason = f"download failed: {str(err).strip().splitlines()[-1]}"
                for path in created:
                    path.unlink() if path.is_file() else shutil.rmtree(path, ignore_errors=True)
        files = "\n  ".join(name for name, _ in cifar10_files())
        raise DataFilesError(
            f"cifar10 files not found in {self.folder} ({reason}).\n"
            f"Expected these files there:\n  {files}\n"
            f"Copy them from a machine with a network (torchvision's CIFAR10(root, download=True) writes them), "
            f"place the archive {datasets.CIFAR10.filename} in {self.hparams.data_dir} (it is unpacked there), or "
            f"point --data.data_dir at the folder that holds {datasets.CIFAR10.base_folder}/."
        )

    def _refusal(self) -> DataFilesError:
        """Why torchvision refused the files: the missing ones, or the first whose md5 is not the original's."""
        missing = self._missing()
        if missing:
            return DataFilesError(f"{', '.join(missing)} missing from {self.folder}; run prepare_data first or copy "
                                  "the files there")
        for name, md5 in cifar10_files():
            found = calculate_md5(self.folder / name)
            if found != md5:
                return DataFilesError(
                    f"{self.folder / name} is not the original CIFAR-10 file: its md5 is {found}, the original's "
                    f"{md5}. It is refused because the batch files are pickles, which can run code when read. "
                    "Delete it and run again to download it, or copy the original.")
        return DataFilesError(f"torchvision cannot read the CIFAR-10 files in {self.folder}")

    def _read(self, train: bool) -> tuple[Tensor, Tensor, list[str]]:
        try:
            # torchvision checks every file's md5 before unpickling any; never skip that check.
            ds = datasets.CIFAR10(self.hparams.data_dir, train=train, download=False)
        except RuntimeError as err:  # "Dataset not found or corrupted"
            raise self._refusal() from err
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
        return images, torch.tensor(ds.targets), ds.classes

    @override
    def setup(self, stage: str) -> None:
        if self.splits:
            return
        images, labels, self._classes = self._read(train=True)
        train, val = split_off(len(images), self.hparams.val_fraction, self.hparams.split_seed)
        self.splits = {"train": (images[train], labels[train]), "val": (images[val], labels[val]),
                       "test": self._read(train=False)[:2]}
        say("cifar10: " + ", ".join(f"{k} {len(v[0])}" for k, v in self.splits.items()))
