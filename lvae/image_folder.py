"""Colour or grey images of any size: folders of your own pictures, and what every image data module shares.

Images are found in torchvision's ImageFolder layout and order, each file once (`FolderWalk`), and decoded once
(PIL), their centred square resized to `image_size` and converted to `channels`. When all of them fit `memory_budget` they are held as one uint8 tensor and served as
whole batches (`InMemoryBatches`, as MNIST is); otherwise DataLoader workers decode each batch from the files again,
in the same order, rank shares and mid-epoch resume (`StreamedBatches`).
"""

import functools
import math
import os
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

import lightning as L
import numpy as np
import torch
from jsonargparse.typing import NonNegativeInt, OpenUnitInterval, PositiveInt
from PIL import Image, ImageOps
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension
from typing_extensions import override

from lvae.data import Batch, InMemoryBatches, trained_steps
from lvae.errors import ConfigError, DataFilesError
from lvae.runs import shell
from lvae.say import say

LAYOUT = ("Expected one sub-folder per class holding that class's images (root/cat/001.png, root/dog/002.jpg, ...), "
          "or, for unlabelled images, the images directly in the folder (root/001.png, ...). Image files end in "
          f"{', '.join(IMG_EXTENSIONS)}.")
MODES = {1: "L", 3: "RGB"}  # channels -> PIL mode
CHUNK = 256  # images one worker decodes per task while checking every file


def refuse_unless(ok: bool, arg: str, value: object, rule: str) -> None:
    """A bad value given from Python (the CLI's parser refuses typed arguments itself) as a ConfigError."""
    if not ok:
        raise ConfigError(f"data.{arg}={value!r} {rule}")


def split_off(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Positions (train, val) of n inputs, round(n * fraction) held out by a seeded permutation; each sorted."""
    n_val = round(n * fraction)
    if not 0 < n_val < n:
        raise ConfigError(f"data.val_fraction={fraction} leaves {n_val} of {n} training inputs for validation; "
                          "choose a fraction that keeps both splits non-empty")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:].sort().values, order[:n_val].sort().values


def deep_white(img: Image.Image) -> Optional[float]:
    """The value of white in an image of one of PIL's deep modes, by the range of its type; None for 8-bit modes.

    Never the image's own brightest pixel: that would make a dark picture as bright as a light one. PIL reads 16-bit
    PNG and TIFF as "I;16"; 16-bit PGM/PPM as "I", holding 0-65535 whatever their maxval; 32-bit TIFF integers as
    "I" too; floats as "F", taken as [0, 1] as float images are.
    """
    if img.mode.startswith("I;16"):
        return 2**16 - 1
    if img.mode == "I":
        return 2**16 - 1 if img.format in ("PNG", "PPM") else 2**31 - 1
    if img.mode == "F":
        return 1.0
    return None


def decode(path: str, size: int, channels: int) -> Tensor:
    """One image file as uint8 (C, size, size): converted to grey or RGB, its centred square resized."""
    mode = MODES[channels]
    with Image.open(path) as img:
        img.draft(mode, (size, size))  # JPEG only: decode at the smallest scale still >= size, far faster for photos
        white = deep_white(img)
        if white is not None:  # PIL's own conversion clips at 255: a 16-bit mid-grey (32768) would come out white
            grey = np.asarray(img, dtype=np.float32) * np.float32(255 / white)  # (H, W)
            img = Image.fromarray(np.rint(grey).clip(0, 255).astype(np.uint8))
        img = ImageOps.fit(img.convert(mode), (size, size), Image.Resampling.BILINEAR)
    return torch.from_numpy(np.array(img)).reshape(size, size, channels).permute(2, 0, 1)  # (C, S, S)


class FolderWalk:
    """The image files under a folder of images, each found once by its real path, with no link leading out of it.

    torchvision's walk follows every link: a link to its own parent folder made a folder of 40 images read as 1,640,
    each one in both train and val, and a link to / walks the whole disk. Here links are followed within `root` only,
    and a folder or file reached again adds nothing. A link leading out of `root` is refused by name: lvae reads the
    folder it is given, not what a link in it points at (a folder from elsewhere could otherwise make it read, and
    show in its pictures, your own files). A folder or file reached from two class folders would be one image with
    two labels, and is refused too. `arg` is the argument named in messages. Paths are strings: pathlib objects
    would make the walk far slower than torchvision's.
    """

    def __init__(self, root: Path, arg: str):
        self.root, self.arg, self.top = root, arg, os.path.realpath(root)
        self.seen: dict[str, tuple[Optional[int], str]] = {self.top: (None, str(root))}  # real -> (label, path)
        self.repeats = 0  # links to folders or files already read

    def real(self, entry: "os.DirEntry[str]", parent: str) -> tuple[str, bool]:
        """An entry's real path, given its folder's, and whether it is a folder."""
        if not entry.is_symlink():
            return os.path.join(parent, entry.name), entry.is_dir(follow_symlinks=False)
        target = os.path.realpath(entry.path)  # a link that leads back to itself stays itself: named as unreadable
        if os.path.commonpath([target, self.top]) != self.top:
            raise DataFilesError(
                f"data.{self.arg}={self.root}: {entry.path} is a link to {target}, outside the folder. lvae reads only "
                f"the files inside data.{self.arg}, so that a folder from elsewhere cannot make it read others. Put "
                f"the files themselves there ({shell('rm', entry.path)} && {shell('cp', '-rl', target, entry.path)}: "
                f"hard links, on the same filesystem), or give their folder as data.{self.arg}.")
        return target, os.path.isdir(target)

    def first_time(self, path: str, real: str, label: Optional[int]) -> bool:
        """Whether `real` is reached for the first time (through `path`, under class `label`)."""
        if real not in self.seen:
            self.seen[real] = (label, path)
            return True
        other_label, other = self.seen[real]
        if other_label is not None and other_label != label:
            raise DataFilesError(
                f"data.{self.arg}={self.root}: {other} and {path} are the same "
                f"{'folder' if os.path.isdir(real) else 'file'} ({real}), in two class folders: one image would have "
                "two labels. Keep it in one of them.")
        self.repeats += 1
        return False

    def entries(self, folder: str, real: str, label: Optional[int]) -> tuple[list[str], list[tuple[str, str]]]:
        """A folder's image files (real paths, by name) and the sub-folders first reached here (path, real path)."""
        files, folders = [], []
        with os.scandir(folder) as found:
            for entry in sorted(found, key=lambda e: e.name):
                target, is_dir = self.real(entry, real)
                if is_dir:
                    if self.first_time(entry.path, target, label):
                        folders.append((entry.path, target))
                elif has_file_allowed_extension(entry.name, IMG_EXTENSIONS) and self.first_time(entry.path, target,
                                                                                                 label):
                    files.append(target)
        return files, folders

    def images(self, folder: str, real: str, label: int) -> list[str]:
        """The image files under a class folder, in torchvision's order: folders by the path they are reached
        through, files by name within each."""
        found: list[tuple[str, list[str]]] = []
        todo = [(folder, real)]  # a stack, not recursion: a folder may be nested deeper than Python's frames
        while todo:
            path, target = todo.pop()
            files, folders = self.entries(path, target, label)
            found.append((path, files))
            todo += folders
        return [file for _, files in sorted(found, key=lambda item: item[0]) for file in files]

    def report(self) -> None:
        """Say how many links were passed over, if any."""
        if self.repeats:
            say(f"data.{self.arg}={self.root}: passed over {self.repeats} link(s) to folders or images "
                "already read; each image is read once")


def scan(root: Path, arg: str) -> tuple[list[str], list[int], Optional[list[str]]]:
    """The image files under `root` (their real paths), their labels and the class names, in torchvision's
    ImageFolder layout and order, each file once and no link followed out of `root` (see `FolderWalk`).

    Images directly in `root`, without class folders, are one unlabelled set: classes None, every label 0.
    Anything else raises DataFilesError saying what was found; `arg` is the argument named in messages.
    """
    if not root.is_dir():
        raise DataFilesError(f"data.{arg}={root}: no such folder. {LAYOUT}")
    walk = FolderWalk(root, arg)
    with os.scandir(root) as found:
        entries = sorted(found, key=lambda e: e.name)
    resolved = [(e.path, *walk.real(e, walk.top)) for e in entries]  # (path, real path, is a folder)
    folders = [(path, real) for path, real, is_dir in resolved if is_dir]
    loose = [(path, real) for path, real, is_dir in resolved
             if not is_dir and has_file_allowed_extension(path, IMG_EXTENSIONS)]
    if not folders:
        if not loose:
            names = [e.name for e in entries]
            what = f"holds no image files (found {', '.join(names[:5])}{', ...' if len(names) > 5 else ''})" \
                if names else "is empty"
            raise DataFilesError(f"data.{arg}={root} {what}. {LAYOUT}")
        files = [real for path, real in loose if walk.first_time(path, real, 0)]
        walk.report()
        return files, [0] * len(files), None
    classes = [os.path.basename(path) for path, _ in folders]
    if loose:
        raise DataFilesError(f"data.{arg}={root} holds both class folders ({', '.join(classes)}) and images outside "
                             f"them ({len(loose)}, e.g. {loose[0][0]}); put every image into its class folder, or all "
                             f"of them directly in {root} for an unlabelled set. {LAYOUT}")
    samples = [(file, label) for label, (path, real) in enumerate(folders) if walk.first_time(path, real, label)
               for file in walk.images(path, real, label)]
    walk.report()
    counts = np.bincount([label for _, label in samples], minlength=len(classes))
    empty = [str(root / name) for name, count in zip(classes, counts) if count == 0]
    if empty:
        raise DataFilesError(f"data.{arg}={root}: these class folders hold no image files: {', '.join(empty)}. "
                             f"Remove them or add their images. {LAYOUT}")
    if len(classes) == 1:
        raise DataFilesError(f"data.{arg}={root} holds a single class folder ({classes[0]}, {counts[0]} images), so "
                             f"every label would be the same. Put unlabelled images directly in {root} (they are "
                             f"drawn without label colours), or add a folder per class. {LAYOUT}")
    return [path for path, _ in samples], [label for _, label in samples], classes


class ImageFiles(Dataset):
    """Image files decoded one at a time: item i is (image uint8 (C, S, S), label, i)."""

    def __init__(self, files: list[str], labels: Tensor, size: int, channels: int):
        self.files, self.labels, self.size, self.channels = files, labels, size, channels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, int]:
        try:
            image = decode(self.files[i], self.size, self.channels)
        except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, zlib.error, ... for a bad file
            raise DataFilesError(f"{self.files[i]} cannot be read as an image ({type(err).__name__}: {err})") from err
        return image, self.labels[i], i

    def slice(self, start: int, stop: int) -> "ImageFiles":
        return ImageFiles(self.files[start:stop], self.labels[start:stop], self.size, self.channels)


class _DecodedChunks(Dataset):
    """Chunk k of some ImageFiles decoded: (images uint8 (m, C, S, S), messages naming its unreadable files).

    A bad file becomes a message instead of an exception, so one pass names every bad file, not just the first.
    """

    def __init__(self, files: ImageFiles):
        self.files = files

    def __len__(self) -> int:
        return math.ceil(len(self.files) / CHUNK)

    def __getitem__(self, k: int) -> tuple[Tensor, list[str]]:
        span = range(k * CHUNK, min((k + 1) * CHUNK, len(self.files)))
        images = torch.zeros((len(span), self.files.channels, self.files.size, self.files.size), dtype=torch.uint8)
        errors = []
        for j, i in enumerate(span):
            try:
                images[j] = self.files[i][0]
            except DataFilesError as err:
                errors.append(str(err))
        return images, errors


def decode_all(files: ImageFiles, workers: int, keep: bool) -> Optional[Tensor]:
    """Decode every file once in `workers` processes; return the images (N, C, S, S) uint8 if `keep`.

    Raises one DataFilesError naming every unreadable file.
    """
    out = torch.empty((len(files), files.channels, files.size, files.size), dtype=torch.uint8) if keep else None
    errors: list[str] = []
    # batch_size=None: a task is a whole decoded chunk, which comes back from a worker through shared memory.
    for k, (images, bad) in enumerate(DataLoader(_DecodedChunks(files), batch_size=None, num_workers=workers)):
        if out is not None:
            out[k * CHUNK: k * CHUNK + len(images)] = images
        errors += bad
    if errors:
        raise DataFilesError(f"{len(errors)} of {len(files)} image files cannot be read; fix or remove them:\n  "
                             + "\n  ".join(errors))
    return out


class StreamedBatches:
    """Batches decoded from the files by DataLoader workers, for images that do not fit in memory.

    Each epoch is planned by InMemoryBatches over the positions themselves, so the order, the disjoint rank shares,
    the step count and the mid-epoch resume are those of the in-memory path.
    """

    def __init__(self, files: ImageFiles, batch_size: int, shuffle: bool, seed: int, num_workers: int,
                 pin_memory: bool, trained: Optional[Callable[[], int]] = None):
        positions = torch.arange(len(files))
        self.plan = InMemoryBatches(positions, positions, batch_size, shuffle, seed, trained)
        self.sampler = self.plan.sampler  # Lightning calls its set_epoch every epoch
        self.batch_sampler = None  # Lightning inspects both attributes of anything with a sampler
        self._batches: list[list[int]] = []  # this epoch's positions for this rank, batch by batch
        self.loader = DataLoader(files, batch_sampler=self._batches, num_workers=num_workers,
                                 persistent_workers=num_workers > 0, pin_memory=pin_memory)

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self) -> Iterator[Batch]:
        # The plan leaves out the batches a resumed checkpoint had already trained on.
        self._batches[:] = [index.tolist() for _, _, index in self.plan]
        yield from self.loader

    # The plan's position: the trainer's count of finished steps, however far ahead the workers decode.
    def state_dict(self) -> dict[str, int]:
        return self.plan.state_dict()

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.plan.load_state_dict(state)


class ImageDataModule(L.LightningDataModule):
    """What lvae's image data modules share: splits of uint8 images, served as batches `(x, y, index)`.

    x is uint8 (B, C, H, W) until the transfer to the device, then float in [0, 1]; y the labels (B,); index each
    input's position in its split (B,). A subclass sets `image_shape` (C, H, W) in `__init__`, from its arguments
    alone (the CLI hands it to the model before anything is read), and fills `splits` and `_classes` in `setup`.
    A split is held as (images (N, C, H, W) uint8, labels (N,)), or as ImageFiles to stream.
    Hyperparameters used here: batch_size, split_seed, predict_split, and num_workers when streaming.
    """

    image_shape: tuple[int, int, int]

    def __init__(self) -> None:
        super().__init__()
        self.splits: dict[str, "tuple[Tensor, Tensor] | ImageFiles"] = {}
        self._classes: Optional[list[str]] = None

    @property
    def classes(self) -> Optional[list[str]]:
        """The class names in label order, for legends; None for unlabelled images. Known after `setup`."""
        if not self.splits:
            raise RuntimeError(f"{type(self).__name__}.classes is known after setup()")
        return self._classes

    def _loader(self, split: str, shuffle: bool) -> "InMemoryBatches | StreamedBatches":
        if split not in self.splits:
            raise ConfigError(f"{type(self).__name__} has no {split} split; see data.test_root")
        data, hp = self.splits[split], self.hparams
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        trained = functools.partial(trained_steps, self.trainer) if split == "train" else None
        if isinstance(data, ImageFiles):
            return StreamedBatches(data, hp.batch_size, shuffle, hp.split_seed, hp.num_workers,
                                   pin_memory=device.type == "cuda", trained=trained)
        images, labels = data
        if device.type == "cuda":
            # Moved once, then every batch is indexed on the device.
            images, labels = images.to(device), labels.to(device)
            self.splits[split] = (images, labels)
        return InMemoryBatches(images, labels, hp.batch_size, shuffle, hp.split_seed, trained)

    @override
    def train_dataloader(self) -> "InMemoryBatches | StreamedBatches":
        return self._loader("train", shuffle=True)

    @override
    def val_dataloader(self) -> "InMemoryBatches | StreamedBatches":
        return self._loader("val", shuffle=False)

    @override
    def test_dataloader(self) -> "InMemoryBatches | StreamedBatches":
        return self._loader("test", shuffle=False)

    @override
    def predict_dataloader(self) -> "InMemoryBatches | StreamedBatches":
        return self._loader(self.hparams.predict_split, shuffle=False)

    @override
    def on_after_batch_transfer(self, batch: Batch, dataloader_idx: int) -> Batch:
        images, labels, index = batch
        # uint8 travels (4x less to move); the model sees floats in [0, 1], (B, C, H, W).
        return images.float().div_(255), labels, index


class ImageFolderDataModule(ImageDataModule):
    """Your own images: one sub-folder per class (torchvision's ImageFolder layout), or all directly in `root`.

    Images directly in `root`, with no class folders, are one unlabelled set (`classes` None, every label 0), drawn
    without label colours. Every file is decoded once in `setup`, and all unreadable files are named before
    training. Non-square images are cropped to their centred square. Deep images (16-bit, 32-bit, float) are scaled
    by the range of their type (65535 is white in a 16-bit image), never by their own brightest pixel.

    Links inside `root` are followed, and each file is read once, by its real path: a link back to a folder already
    read adds nothing. A link that leads out of `root` is refused by name, before anything is read; put the files
    themselves in the folder (copies, or hard links: ``cp -rl``).

    Args:
        root: the folder of images, e.g. ``my_images`` with ``my_images/cat/*.jpg`` and ``my_images/dog/*.png``.
        image_size: side in pixels every image is resized to.
        channels: 1 converts to grey, 3 to RGB.
        batch_size: inputs per step and per process.
        val_fraction: share of ``root``'s images held out for validation (fixed by ``split_seed``).
        split_seed: seed of the train/validation split and of the shuffling.
        memory_budget: MiB the decoded uint8 images may take in memory; above it they are decoded again from the
            files every epoch by ``num_workers`` processes (0 always streams).
        num_workers: processes that decode the files in ``setup``, and every batch when streaming.
        test_root: a second folder, in the same layout with the same classes, for ``lvae test`` and
            ``predict_split=test``; without it there is no test split.
        predict_split: which split ``lvae predict`` encodes.
    """

    def __init__(
        self,
        root: str,
        image_size: PositiveInt = 32,
        channels: Literal[1, 3] = 3,
        batch_size: PositiveInt = 128,
        val_fraction: OpenUnitInterval = 0.1,
        split_seed: int = 0,
        memory_budget: NonNegativeInt = 2048,
        num_workers: NonNegativeInt = 2,
        test_root: Optional[str] = None,
        predict_split: Literal["train", "val", "test"] = "val",
    ):
        super().__init__()
        # Plain types in the hyperparameters: checkpoints must load with weights_only=True.
        root, test_root = str(root), None if test_root is None else str(test_root)
        image_size, channels, batch_size, split_seed = int(image_size), int(channels), int(batch_size), int(split_seed)
        memory_budget, num_workers, val_fraction = int(memory_budget), int(num_workers), float(val_fraction)
        predict_split = str(predict_split)
        refuse_unless(image_size >= 1, "image_size", image_size, "must be a positive integer")
        refuse_unless(channels in MODES, "channels", channels, "must be 1 (grey) or 3 (RGB)")
        refuse_unless(batch_size >= 1, "batch_size", batch_size, "must be a positive integer")
        refuse_unless(0 < val_fraction < 1, "val_fraction", val_fraction, "must lie strictly between 0 and 1")
        refuse_unless(memory_budget >= 0, "memory_budget", memory_budget, "must be >= 0 (MiB; 0 always streams)")
        refuse_unless(num_workers >= 0, "num_workers", num_workers, "must be >= 0")
        refuse_unless(predict_split in ("train", "val", "test"), "predict_split", predict_split,
                      "is not one of ['test', 'train', 'val']")
        refuse_unless(predict_split != "test" or test_root is not None, "predict_split", predict_split,
                      "needs data.test_root, a folder of test images; or choose train or val")
        self.save_hyperparameters()
        self.image_shape = (channels, image_size, image_size)

    @override
    def setup(self, stage: str) -> None:
        if self.splits:
            return
        hp = self.hparams
        files, labels, classes = scan(Path(hp.root), "root")
        train, val = split_off(len(files), hp.val_fraction, hp.split_seed)
        order = [*train.tolist(), *val.tolist()]
        parts = {"train": len(train), "val": len(val)}
        files, labels = [files[i] for i in order], [labels[i] for i in order]
        if hp.test_root is not None:
            test_files, test_labels, test_classes = scan(Path(hp.test_root), "test_root")
            if test_classes != classes:
                raise DataFilesError(f"data.test_root={hp.test_root} has classes {test_classes} but data.root="
                                     f"{hp.root} has {classes}; both need the same class folders")
            files, labels, parts["test"] = files + test_files, labels + test_labels, len(test_files)
        # Decoded in split order, so each split in memory is a slice of one tensor, not a copy.
        everything = ImageFiles(files, torch.tensor(labels), hp.image_size, hp.channels)
        size = len(files) * math.prod(self.image_shape)
        keep = size <= hp.memory_budget * 2**20
        images = decode_all(everything, hp.num_workers, keep)
        start = 0
        for name, n in parts.items():
            part = everything.slice(start, start + n)
            self.splits[name] = (images[start:start + n], part.labels) if images is not None else part
            start += n
        self._classes = classes
        held = (f"held in memory as uint8 ({size / 2**20:.1f} MiB)" if keep else
                f"streamed from the files by {hp.num_workers} workers ({size / 2**20:.1f} MiB exceeds "
                f"data.memory_budget={hp.memory_budget})")
        say(f"{hp.root}: {f'{len(classes)} classes' if classes else 'unlabelled'}, "
            + ", ".join(f"{k} {n}" for k, n in parts.items()) + f", {held}")
