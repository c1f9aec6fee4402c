"""Colour images of any size: a folder of the user's own pictures (held in memory or streamed) and CIFAR-10
through torchvision's real reader, each with its messages for bad input."""

import hashlib
import pickle
import re
import tarfile
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from jsonargparse import ArgumentError, ArgumentParser
from lightning.pytorch.callbacks import ModelCheckpoint
from PIL import Image
from torchvision import datasets

from lvae import CIFAR10DataModule, ConfigError, DataFilesError, ImageFolderDataModule, LVAEError
from lvae.data import InMemoryBatches
from lvae.image_folder import StreamedBatches

COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}  # sorted: labels 0, 1, 2


def write_image(path: Path, colour: tuple[int, ...], size: tuple[int, int], seed: int) -> None:
    """A picture of one colour with some noise; PIL picks the format from the file name."""
    rng = np.random.default_rng(seed)
    pixels = np.array(colour, dtype=np.int16) + rng.integers(-20, 21, size=(size[1], size[0], 3))
    Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(path)


@pytest.fixture(scope="module")
def colour_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three class folders of 14 pictures each, in several sizes (some not square) and formats: 42 images."""
    root = tmp_path_factory.mktemp("colours")
    for c, (name, colour) in enumerate(COLOURS.items()):
        (root / name).mkdir()
        for i in range(14):
            size, ext = [((32, 32), "png"), ((40, 24), "png"), ((48, 48), "jpg")][i % 3]
            write_image(root / name / f"{i:02d}.{ext}", colour, size, seed=100 * c + i)
    return root


@pytest.fixture(scope="module")
def grey_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30 unlabelled 16x16 grey pictures directly in the folder, picture i of brightness 8 * i."""
    root = tmp_path_factory.mktemp("grey")
    for i in range(30):
        Image.fromarray(np.full((16, 16), 8 * i, dtype=np.uint8)).save(root / f"{i:02d}.png")
    return root


def folder_module(root: Path, **kwargs) -> ImageFolderDataModule:
    args = {"image_size": 16, "batch_size": 8, "val_fraction": 0.25, "num_workers": 0} | kwargs
    dm = ImageFolderDataModule(str(root), **args)
    dm.setup("fit")
    return dm


def epoch(loader: "InMemoryBatches | StreamedBatches", n: int) -> list[tuple[torch.Tensor, ...]]:
    loader.sampler.set_epoch(n)
    return list(loader)


def test_folder_images_are_held_in_memory_as_uint8_labelled_by_their_folder(colour_folder: Path) -> None:
    dm = ImageFolderDataModule(str(colour_folder), image_size=16, batch_size=8, val_fraction=0.25, num_workers=2)
    assert dm.image_shape == (3, 16, 16)  # known from the arguments, before any file is read
    dm.setup("fit")
    assert dm.classes == ["blue", "green", "red"]
    images, labels = dm.splits["train"]
    assert images.dtype == torch.uint8 and images.shape == (32, 3, 16, 16)  # 42 images, round(10.5) held out
    assert len(dm.splits["val"][0]) == 10 and "test" not in dm.splits
    # Each picture's strongest channel is its folder's colour: labels, RGB order and (C, H, W) layout all hold.
    strongest = images.float().mean((2, 3)).argmax(1)
    assert torch.equal(strongest, torch.tensor([2, 1, 0])[labels])
    loader = dm.train_dataloader()
    assert isinstance(loader, InMemoryBatches)
    x, y, index = dm.on_after_batch_transfer(next(iter(loader)), 0)
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, images[index].float() / 255) and torch.equal(y, labels[index])


def test_a_folder_of_pictures_without_class_folders_is_one_unlabelled_set(grey_folder: Path) -> None:
    dm = folder_module(grey_folder, image_size=8, channels=1, val_fraction=0.2)
    assert dm.image_shape == (1, 8, 8) and dm.classes is None
    images, labels = dm.splits["train"]
    assert images.shape == (24, 1, 8, 8) and set(labels.tolist()) == {0}
    brightness = sorted(torch.cat([images, dm.splits["val"][0]]).float().mean((1, 2, 3)).tolist())
    assert brightness == [8.0 * i for i in range(30)]  # every picture once, resized without changing its value


def test_colour_pictures_become_grey_by_luminance(colour_folder: Path) -> None:
    images, labels = folder_module(colour_folder, channels=1).splits["train"]
    assert images.shape[1] == 1
    mean = images.float().mean((1, 2, 3))
    # ITU-R 601 luma of pure blue, green, red: 29, 150, 76 (noise shifts the means by a little).
    for label, luma in enumerate([29, 150, 76]):
        assert (mean[labels == label] - luma).abs().max() < 6


def test_validation_split_is_fixed_by_its_seed(colour_folder: Path) -> None:
    val = [folder_module(colour_folder, split_seed=seed).splits["val"][0] for seed in (0, 0, 1)]
    assert torch.equal(val[0], val[1]) and not torch.equal(val[0], val[2])


@pytest.mark.parametrize("memory_budget", [2048, 0], ids=["in_memory", "streamed"])
def test_two_ranks_see_every_input_once_per_epoch(colour_folder: Path, monkeypatch, memory_budget: int) -> None:
    dm = folder_module(colour_folder, memory_budget=memory_budget, batch_size=5)
    orders = []
    for n in range(2):
        seen, steps = [], set()
        for rank in range(2):
            monkeypatch.setattr(InMemoryBatches, "_rank_world", staticmethod(lambda r=rank: (r, 2)))
            batches = epoch(dm.train_dataloader(), n)
            steps.add(len(batches))
            seen.extend(torch.cat([index for _, _, index in batches]).tolist())
        assert len(steps) == 1  # DDP needs every rank to run the same number of steps
        assert sorted(seen) == list(range(32))
        orders.append(seen)
    assert orders[0] != orders[1]  # a new order each epoch


@pytest.fixture(scope="module")
def both_paths(colour_folder: Path) -> tuple[ImageFolderDataModule, ImageFolderDataModule]:
    return folder_module(colour_folder), folder_module(colour_folder, memory_budget=0, num_workers=2)


def test_images_over_the_memory_budget_are_streamed_as_the_same_batches(both_paths) -> None:
    _, streamed = both_paths
    assert isinstance(streamed.splits["train"], torch.utils.data.Dataset)  # nothing decoded is kept
    for split in ("train", "val"):
        loaders = [dm.train_dataloader() if split == "train" else dm.val_dataloader() for dm in both_paths]
        assert isinstance(loaders[1], StreamedBatches) and len(loaders[0]) == len(loaders[1])
        for n in range(2):
            for a, b in zip(epoch(loaders[0], n), epoch(loaders[1], n), strict=True):
                assert all(torch.equal(u, v) for u, v in zip(a, b))  # images, labels, index


def test_streamed_loader_resumes_mid_epoch_with_exactly_the_remaining_inputs(both_paths) -> None:
    held, streamed = both_paths
    whole = [index for _, _, index in epoch(streamed.train_dataloader(), 1)]
    finished = 2  # the trainer's count of finished steps, which a loader's state records
    files = streamed.splits["train"]
    loader = StreamedBatches(files, 8, shuffle=True, seed=0, num_workers=2, pin_memory=False, trained=lambda: finished)
    loader.sampler.set_epoch(1)
    batches = iter(loader)
    taken = [next(batches)[2] for _ in range(finished + 1)]  # workers decode ahead; a third batch is handed out
    state = loader.state_dict()
    assert state["batches_done"] == finished  # not the 3 handed out: the third step did not finish
    resumed = StreamedBatches(files, 8, shuffle=True, seed=0, num_workers=2, pin_memory=False)
    resumed.load_state_dict(state)
    rest = [index for _, _, index in resumed]
    assert [t.tolist() for t in taken[:finished] + rest] == [t.tolist() for t in whole]
    assert len([index for _, _, index in epoch(resumed, 2)]) == len(whole)  # the next epoch is whole again


class IndexRecorder(L.LightningModule):
    """Trains nothing; records which inputs each training step received."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.seen: list[int] = []

    def training_step(self, batch: tuple[torch.Tensor, ...], batch_idx: int) -> torch.Tensor:
        x, _, index = batch
        self.seen += index.tolist()
        return self.weight * x.mean()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_saves_and_restores_the_streamed_position_in_a_checkpoint(colour_folder: Path,
                                                                            tmp_path: Path) -> None:
    def trainer(**kwargs) -> L.Trainer:
        return L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         limit_val_batches=0, default_root_dir=tmp_path, **kwargs)

    # Lightning saves and restores the position because the loader has state_dict/load_state_dict (its CombinedLoader
    # keeps the state of loaders matching lightning.fabric's _Stateful protocol): this test fails if that changes.
    stopped, resumed = IndexRecorder(), IndexRecorder()
    # A checkpoint written during the epoch, after step 2 of 7, as every_n_train_steps or an interruption writes it.
    saver = ModelCheckpoint(tmp_path, "mid", every_n_train_steps=2)
    trainer(max_steps=2, callbacks=[saver]).fit(stopped, folder_module(colour_folder, memory_budget=0, batch_size=5))
    trainer(max_epochs=1, enable_checkpointing=False).fit(
        resumed, folder_module(colour_folder, memory_budget=0, batch_size=5), ckpt_path=tmp_path / "mid.ckpt")
    assert len(stopped.seen) == 10
    assert sorted(stopped.seen + resumed.seen) == list(range(32))  # the epoch completed, nothing repeated


# Bad input: each is refused in setup, before any training, with a message naming what is wrong.

def bad_files(root: Path) -> None:
    for name in ("cat", "dog"):
        (root / name).mkdir()
        for i in range(4):
            write_image(root / name / f"{i}.png", (200, 100, 50), (20, 20), seed=i)
    whole = (root / "cat" / "0.png").read_bytes()
    (root / "cat" / "cut.png").write_bytes(whole[: len(whole) // 2])
    (root / "dog" / "notes.png").write_text("not a picture")


@pytest.mark.parametrize("memory_budget", [2048, 0], ids=["in_memory", "streamed"])
def test_every_unreadable_image_is_named_in_one_message(tmp_path: Path, memory_budget: int) -> None:
    bad_files(tmp_path)
    with pytest.raises(DataFilesError) as refused:
        folder_module(tmp_path, memory_budget=memory_budget, num_workers=2)
    message = str(refused.value)
    assert message.startswith("2 of 10 image files cannot be read")
    assert str(tmp_path / "cat" / "cut.png") in message and str(tmp_path / "dog" / "notes.png") in message
    assert "0.png" not in message


def class_folders(root: Path, **counts: int) -> None:
    for name, n in counts.items():
        (root / name).mkdir()
        for i in range(n):
            write_image(root / name / f"{i}.png", (9, 9, 9), (8, 8), seed=i)


@pytest.mark.parametrize(("make", "expected"), [
    (lambda root: None, "data.root={root} is empty."),
    (lambda root: (root / "readme.txt").write_text("hi"), "data.root={root} holds no image files (found readme.txt)"),
    (lambda root: class_folders(root, cats=5), "data.root={root} holds a single class folder (cats, 5 images)"),
    (lambda root: class_folders(root, cats=5, dogs=0),
     "data.root={root}: these class folders hold no image files: {root}/dogs."),
    (lambda root: (class_folders(root, cats=3, dogs=3), write_image(root / "x.png", (1, 2, 3), (8, 8), 0)),
     "data.root={root} holds both class folders (cats, dogs) and images outside them (1, e.g. {root}/x.png)"),
], ids=["empty", "no_images", "one_class", "empty_class", "loose_and_classes"])
def test_a_folder_of_the_wrong_layout_gets_a_message_saying_what_was_found(tmp_path: Path, make, expected: str) -> None:
    make(tmp_path)
    with pytest.raises(DataFilesError) as refused:
        folder_module(tmp_path)
    assert isinstance(refused.value, LVAEError)  # the CLI prints these without a traceback, exit code 2
    message = str(refused.value)
    assert expected.format(root=tmp_path) in message
    assert "one sub-folder per class" in message  # and the layout that is expected


def test_missing_folder_and_mismatched_test_folder_are_named(colour_folder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataFilesError, match=f"data.root={tmp_path / 'nowhere'}: no such folder"):
        folder_module(tmp_path / "nowhere")
    class_folders(tmp_path, blue=2, green=2)
    with pytest.raises(DataFilesError, match=r"data.test_root=.* has classes \['blue', 'green'\] but data.root="):
        folder_module(colour_folder, test_root=str(tmp_path))


def test_test_split_comes_from_test_root_and_is_refused_without_it(colour_folder: Path, grey_folder: Path) -> None:
    with pytest.raises(ConfigError, match="has no test split; see data.test_root"):
        folder_module(colour_folder).test_dataloader()
    with pytest.raises(ConfigError, match="data.predict_split='test' needs data.test_root"):
        ImageFolderDataModule(str(colour_folder), predict_split="test")
    dm = folder_module(grey_folder, test_root=str(grey_folder), predict_split="test")
    assert len(dm.splits["test"][0]) == 30 and len(list(dm.predict_dataloader())) == 4


@pytest.mark.parametrize(("key", "value"), [("channels", 2), ("image_size", 0), ("memory_budget", -1),
                                          ("predict_split", "all")])
def test_bad_values_are_refused_by_their_key(key: str, value: object) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(ImageFolderDataModule, "data")
    with pytest.raises(ArgumentError, match=f"data.{key}"):  # what the CLI's parser says, before building anything
        parser.parse_args(["--data.root", "pictures", f"--data.{key}", str(value)])
    with pytest.raises(ConfigError, match=f"data.{key}={value!r}"):  # the same value given from Python
        ImageFolderDataModule("pictures", **{key: value})


# CIFAR-10: a tiny fixture in torchvision's layout, read by torchvision's own code.

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar(folder: Path) -> None:
    """Five training batches of 8 images and a test batch of 10, pickled as the real files are. Image i of label
    c has red 10 * c, green 100 and blue 200, stored as CIFAR stores them: all red, then green, then blue."""
    folder.mkdir(parents=True)
    for name, n, first in [*((f"data_batch_{b}", 8, 8 * (b - 1)) for b in range(1, 6)), ("test_batch", 10, 0)]:
        labels = [(first + i) % 10 for i in range(n)]
        planes = [np.full((n, 1024), 10 * np.array(labels)[:, None]), np.full((n, 1024), 100), np.full((n, 1024), 200)]
        data = np.concatenate(planes, axis=1).astype(np.uint8)  # (n, 3072)
        (folder / name).write_bytes(pickle.dumps({"batch_label": name, "labels": labels, "data": data,
                                                  "filenames": [f"{i}.png" for i in range(n)]}))
    (folder / "batches.meta").write_bytes(pickle.dumps({"label_names": CIFAR_CLASSES, "num_vis": 3072}))


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    write_cifar(root / "cifar-10-batches-py")
    return root


@pytest.fixture
def fixture_checksums(cifar_dir: Path, monkeypatch) -> None:
    """Test only: torchvision's md5 list holds the fixture's checksums, so its check runs and accepts the fixture."""
    folder = cifar_dir / "cifar-10-batches-py"
    monkeypatch.setattr(datasets.CIFAR10, "train_list", [[f"data_batch_{b}", md5(folder / f"data_batch_{b}")]
                                                         for b in range(1, 6)])
    monkeypatch.setattr(datasets.CIFAR10, "test_list", [["test_batch", md5(folder / "test_batch")]])
    monkeypatch.setattr(datasets.CIFAR10, "meta", datasets.CIFAR10.meta | {"md5": md5(folder / "batches.meta")})


def test_cifar10_is_read_by_torchvision_and_held_in_memory(cifar_dir: Path, fixture_checksums) -> None:
    dm = CIFAR10DataModule(str(cifar_dir), batch_size=8, val_fraction=0.25, download=False)
    assert dm.image_shape == (3, 32, 32)
    dm.prepare_data()
    dm.setup("fit")
    assert dm.classes == CIFAR_CLASSES
    assert {split: len(images) for split, (images, _) in dm.splits.items()} == {"train": 30, "val": 10, "test": 10}
    images, labels = dm.splits["train"]
    assert images.dtype == torch.uint8 and images.shape == (30, 3, 32, 32)
    assert torch.equal(images[:, 0], (10 * labels)[:, None, None].expand(-1, 32, 32).to(torch.uint8))
    assert set(images[:, 1].unique().tolist()) == {100} and set(images[:, 2].unique().tolist()) == {200}
    x, _, index = dm.on_after_batch_transfer(next(iter(dm.test_dataloader())), 0)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32 and torch.equal(index, torch.arange(8))


def test_cifar10_refuses_a_changed_batch_file_by_name_before_unpickling_it(cifar_dir: Path, tmp_path: Path,
                                                                          fixture_checksums) -> None:
    data_dir = tmp_path / "data"
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for f in (cifar_dir / "cifar-10-batches-py").iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "code-ran"

    class Payload:  # unpickling this runs code, as a crafted batch file could
        def __reduce__(self):
            return exec, (f"open({str(marker)!r}, 'w').close()",)

    (folder / "data_batch_3").write_bytes(pickle.dumps(Payload()))
    with pytest.raises(DataFilesError, match=re.escape(f"{folder / 'data_batch_3'} is not the original CIFAR-10 file")):
        CIFAR10DataModule(str(data_dir), download=False).setup("fit")
    assert not marker.exists()


def test_cifar10_in_real_use_keeps_torchvision_checksums_and_refuses_other_files(cifar_dir: Path) -> None:
    # No fixture_checksums here: the fixture is not the original CIFAR-10, so its first batch file is refused.
    found = md5(cifar_dir / "cifar-10-batches-py" / "data_batch_1")
    with pytest.raises(DataFilesError, match=f"data_batch_1 is not the original CIFAR-10 file: its md5 is {found}, "
                                             "the original's c99cafc152244af753f735de768cd75f"):
        CIFAR10DataModule(str(cifar_dir), download=False).setup("fit")


def test_cifar10_missing_files_name_each_file_and_where_to_put_it(tmp_path: Path, monkeypatch) -> None:
    # An unreachable address stands in for a machine without a network.
    monkeypatch.setattr(datasets.CIFAR10, "url", (tmp_path / "no-network.tar.gz").as_uri())
    data_dir = tmp_path / "nodata"
    with pytest.raises(DataFilesError) as refused:
        CIFAR10DataModule(str(data_dir)).prepare_data()
    message = str(refused.value)
    assert message.startswith(f"cifar10 files not found in {data_dir / 'cifar-10-batches-py'} (download failed: ")
    for name in [*(f"data_batch_{b}" for b in range(1, 6)), "test_batch", "batches.meta", "cifar-10-python.tar.gz"]:
        assert name in message
    assert not data_dir.exists()  # nothing half-written left behind


def test_cifar10_archive_placed_by_hand_is_unpacked_without_a_network(cifar_dir: Path, tmp_path: Path,
                                                                      fixture_checksums, monkeypatch) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    archive = data_dir / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(cifar_dir / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(datasets.CIFAR10, "tgz_md5", md5(archive))
    monkeypatch.setattr(datasets.CIFAR10, "url", (tmp_path / "no-network.tar.gz").as_uri())
    dm = CIFAR10DataModule(str(data_dir))
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.splits["test"][0]) == 10
