"""Files from elsewhere are untrusted input: reading one costs no more memory or disk than its content justifies,
and a file that asks for more is refused by name before it is paid for (issue 20.5). Every bad file here is made
by the test, small on disk."""

import gzip
import io
import logging
import os
import shutil
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from lvae import CheckpointError, ConfigError, DataFilesError, ImageFolderDataModule, LVAEError, MNISTDataModule
from lvae.bounded import ALIAS_VALUES, check_checkpoint_archive, check_yaml_aliases
from lvae.data import IMAGES_MAGIC, read_idx_pair
from lvae.image_folder import scan

MiB = 2**20


def peak_memory(call: Callable[[], object], refused: type[Exception]) -> tuple[int, Exception]:
    """The peak of Python's allocations (numpy's included) while `call` runs, and the error it must raise."""
    tracemalloc.start()
    try:
        with pytest.raises(refused) as err:
            call()
        return tracemalloc.get_traced_memory()[1], err.value
    finally:
        tracemalloc.stop()


def refused_by_lvae(error: Exception) -> None:
    """What the CLI makes of it: lvae's message alone, exit code 2."""
    assert isinstance(error, LVAEError) and error.exit_code == 2


def sizes(folder: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in folder.iterdir()}


# MNIST-format files: a .gz is unpacked no further than its header says.

def gzip_bomb(path: Path, header: list[int], zeros: int) -> None:
    """An IDX .gz whose header declares `header` and which inflates to `zeros` bytes after it (~1/1000 on disk)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    with open(path, "wb") as f:
        f.write(packer.compress(np.array(header, dtype=">u4").tobytes()))
        for _ in range(zeros // MiB):
            f.write(packer.compress(bytes(MiB)))
        f.write(packer.flush())


def packed_copy(mnist_root: Path, tmp_path: Path) -> Path:
    """A copy of the fixture's MNIST/raw/ whose training images come as a .gz, for the module to unpack."""
    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(mnist_root / "MNIST" / "raw", raw)
    images = raw / "train-images-idx3-ubyte"
    with gzip.open(f"{images}.gz", "wb") as f:
        f.write(images.read_bytes())
    images.unlink()
    return raw


def test_a_packed_idx_file_is_unpacked_and_read_as_the_plain_one(mnist_root: Path, tmp_path: Path) -> None:
    raw = packed_copy(mnist_root, tmp_path)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False)
    dm.prepare_data()
    dm.setup("fit")
    plain = mnist_root / "MNIST" / "raw" / "train-images-idx3-ubyte"
    assert (raw / "train-images-idx3-ubyte").read_bytes() == plain.read_bytes()
    assert not list(raw.glob("*.part"))
    images, labels = read_idx_pair(raw / "train-images-idx3-ubyte.gz", raw / "train-labels-idx1-ubyte")
    assert images.shape == (360, 28, 28) and labels.shape == (360,)


@pytest.mark.parametrize(("header", "zeros", "expected"), [
    # 360 images declared (282,256 bytes), 64 MiB inflated: the classic bomb.
    ([IMAGES_MAGIC, 360, 28, 28], 64 * MiB,
     "train-images-idx3-ubyte.gz is longer than its header says: it unpacks to more than 282256 bytes, its header "
     "(360x28x28) needs 282256"),
    # 2^31 images declared (1.6 TB) and 16 MiB inflated: counted to its end, nothing set aside for the declared size.
    ([IMAGES_MAGIC, 2**31, 28, 28], 16 * MiB,
     f"train-images-idx3-ubyte.gz is truncated: it unpacks to {16 + 16 * MiB} bytes, its header (2147483648x28x28) "
     f"needs {16 + 2**31 * 784}"),
], ids=["longer", "truncated"])
def test_a_packed_file_that_unpacks_to_another_size_than_declared_writes_nothing(
        mnist_root: Path, tmp_path: Path, header: list[int], zeros: int, expected: str) -> None:
    raw = packed_copy(mnist_root, tmp_path)
    gzip_bomb(raw / "train-images-idx3-ubyte.gz", header, zeros)
    before = sizes(raw)
    assert before["train-images-idx3-ubyte.gz"] < 100_000
    peak, error = peak_memory(MNISTDataModule(data_dir=str(tmp_path), download=False).prepare_data, DataFilesError)
    assert str(raw / expected) in str(error) and "Download or copy the file again" in str(error)
    refused_by_lvae(error)
    assert sizes(raw) == before  # no unpacked file, no .part
    assert peak < 8 * MiB
    peak, error = peak_memory(lambda: read_idx_pair(raw / "train-images-idx3-ubyte.gz",
                                                    raw / "train-labels-idx1-ubyte"), DataFilesError)
    assert expected in str(error) and peak < 8 * MiB


@pytest.mark.parametrize(("content", "expected"), [
    (b"no gzip here", "train-images-idx3-ubyte.gz cannot be unpacked (BadGzipFile"),
    (gzip.compress(np.array([IMAGES_MAGIC, 10, 32, 32], dtype=">u4").tobytes()),
     "train-images-idx3-ubyte.gz holds 32x32 images; lvae reads 28x28"),
    (gzip.compress(bytes(100_000))[:5000], "train-images-idx3-ubyte.gz is not an IDX image file: magic number 0"),
], ids=["not_gzip", "other_size", "not_idx"])
def test_a_packed_file_that_is_not_an_idx_image_file_is_named_and_leaves_nothing(
        mnist_root: Path, tmp_path: Path, content: bytes, expected: str) -> None:
    raw = packed_copy(mnist_root, tmp_path)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(content)
    before = sizes(raw)
    with pytest.raises(DataFilesError) as error:
        MNISTDataModule(data_dir=str(tmp_path), download=False).prepare_data()
    assert str(raw / expected) in str(error.value)
    assert sizes(raw) == before


def test_a_packed_file_cut_short_inside_its_values_is_named_and_leaves_nothing(
        mnist_root: Path, tmp_path: Path) -> None:
    raw = packed_copy(mnist_root, tmp_path)
    packed = raw / "train-images-idx3-ubyte.gz"
    packed.write_bytes(packed.read_bytes()[:-5000])  # the gzip stream itself ends early
    before = sizes(raw)
    with pytest.raises(DataFilesError, match="cannot be unpacked") as error:
        MNISTDataModule(data_dir=str(tmp_path), download=False).prepare_data()
    assert str(packed) in str(error.value)
    assert sizes(raw) == before


# Image folders: every file once, by its real path; no link followed out of the folder.

def two_classes(root: Path, per_class: int = 20) -> None:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i:02d}.png")


def folder_module(root: Path, **kwargs) -> ImageFolderDataModule:
    dm = ImageFolderDataModule(str(root), **{"image_size": 8, "val_fraction": 0.1, "num_workers": 0} | kwargs)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("link", ["a/up", "a/deeper/loop", "b/root"], ids=["to_parent", "to_own_folder", "to_root"])
def test_a_link_back_into_the_folder_adds_no_image_twice(tmp_path: Path, link: str, caplog) -> None:
    root = tmp_path / "images"
    two_classes(root)
    (root / link).parent.mkdir(exist_ok=True)
    target = {"a/up": "..", "a/deeper/loop": "..", "b/root": root}[link]
    os.symlink(target, root / link)
    with caplog.at_level(logging.INFO):
        dm = folder_module(root)
    (train, _), (val, _) = dm.splits["train"], dm.splits["val"]
    assert (len(train), len(val)) == (36, 4)  # 40 images, as without the link (it read 1,640)
    shared = {bytes(x.numpy()) for x in train} & {bytes(x.numpy()) for x in val}
    assert not shared
    files, _, _ = scan(root, "root")
    assert sorted(files) == sorted(str(p.resolve()) for p in root.glob("[ab]/*.png"))
    assert "passed over 1 link(s) to folders or images already read; each image is read once" in caplog.text


def test_a_link_out_of_the_folder_is_refused_by_name(tmp_path: Path) -> None:
    root, elsewhere = tmp_path / "images", tmp_path / "elsewhere"
    two_classes(root)
    two_classes(elsewhere)
    os.symlink(elsewhere / "a", root / "b" / "more")
    with pytest.raises(DataFilesError) as error:
        folder_module(root)
    assert (f"data.root={root}: {root / 'b' / 'more'} is a link to {(elsewhere / 'a').resolve()}, outside the folder"
            in str(error.value))
    assert f"cp -rl {(elsewhere / 'a').resolve()} {root / 'b' / 'more'}" in str(error.value)  # the fix
    refused_by_lvae(error.value)


def test_one_file_linked_into_two_class_folders_is_refused_and_twice_in_one_is_read_once(tmp_path: Path) -> None:
    root = tmp_path / "images"
    two_classes(root)
    os.symlink(root / "a" / "00.png", root / "a" / "again.png")
    assert len(scan(root, "root")[0]) == 40
    os.symlink(root / "a" / "00.png", root / "b" / "same.png")
    with pytest.raises(DataFilesError, match="in two class folders: one image would have two labels") as error:
        scan(root, "root")
    assert f"{root / 'a' / '00.png'} and {root / 'b' / 'same.png'}" in str(error.value)


def test_a_link_to_itself_is_named_as_an_unreadable_image(tmp_path: Path) -> None:
    root = tmp_path / "images"
    two_classes(root)
    os.symlink(root / "a" / "y.png", root / "a" / "x.png")
    os.symlink(root / "a" / "x.png", root / "a" / "y.png")
    with pytest.raises(DataFilesError, match=f"{root / 'a' / 'x.png'} cannot be read as an image"):
        folder_module(root)


def test_folders_without_links_are_listed_in_torchvision_order(tmp_path: Path) -> None:
    """The order decides the seeded train/val split: a folder lvae read before is split as before."""
    root = tmp_path / "images"
    two_classes(root, per_class=3)
    for sub in ("a/x", "a/x-y", "a/x/z", "b/X"):
        (root / sub).mkdir()
        Image.new("RGB", (8, 8)).save(root / sub / "in.png")
    _, class_to_idx = find_classes(root)
    expected = make_dataset(root, class_to_idx, IMG_EXTENSIONS)
    assert scan(root, "root")[:2] == ([p for p, _ in expected], [label for _, label in expected])


# Deep images: scaled by their type's range.

@pytest.mark.parametrize(("name", "pixels", "expected"), [
    ("mid.png", np.full((8, 8), 32768, dtype=np.uint16), 128 / 255),
    ("dark.png", np.full((8, 8), 1000, dtype=np.uint16), 4 / 255),  # dark, not stretched to its own maximum
    ("mid.tif", np.full((8, 8), 32768, dtype=np.uint16), 128 / 255),
    ("mid.pgm", np.full((8, 8), 32768, dtype=np.uint16), 128 / 255),
    ("quarter.tif", np.full((8, 8), 0.25, dtype=np.float32), 64 / 255),
    ("mid32.tif", np.full((8, 8), 2**30, dtype=np.int32), 128 / 255),
], ids=["png16", "png16_dark", "tiff16", "pgm16", "float", "int32"])
@pytest.mark.parametrize("channels", [1, 3])
def test_deep_images_are_scaled_by_their_type_s_range(tmp_path: Path, name: str, pixels: np.ndarray, expected: float,
                                                        channels: int) -> None:
    for i in range(10):
        Image.fromarray(pixels).save(tmp_path / f"{i}{name}")
    dm = folder_module(tmp_path, channels=channels)
    images = dm.splits["train"][0].float() / 255  # (N, C, 8, 8) as the model sees them
    assert images.shape[1] == channels
    assert torch.allclose(images, torch.tensor(expected), atol=0.5 / 255)


# Checkpoints: the zip torch.save writes, its records stored, their sizes within the file's.

@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(MiB)}, "epoch": 3}, path)  # 4 MiB of zeros
    return path


def test_a_checkpoint_as_torch_save_writes_it_passes(checkpoint: Path) -> None:
    check_checkpoint_archive(checkpoint)
    check_checkpoint_archive(str(checkpoint))
    buffer = io.BytesIO(checkpoint.read_bytes())  # torch.load takes an open file too, read from where it stands
    check_checkpoint_archive(buffer)
    assert torch.load(buffer, weights_only=True)["epoch"] == 3


def test_a_checkpoint_of_compressed_records_is_refused_before_anything_is_inflated(checkpoint: Path) -> None:
    packed = checkpoint.with_name("packed.ckpt")
    with zipfile.ZipFile(checkpoint) as src, zipfile.ZipFile(packed, "w", zipfile.ZIP_DEFLATED) as dst:
        for name in src.namelist():
            dst.writestr(name, src.read(name))
        inflated = sum(r.file_size for r in src.infolist())
    assert packed.stat().st_size < 100_000
    peak, error = peak_memory(lambda: check_checkpoint_archive(packed), CheckpointError)
    assert str(error).startswith(f"{packed} is refused: ") and "records are compressed" in str(error)
    assert f"bytes that inflate to {inflated})" in str(error)  # 4 MiB of zeros and the rest
    refused_by_lvae(error)
    assert peak < MiB


def test_a_checkpoint_whose_records_declare_more_than_the_file_holds_is_refused(checkpoint: Path) -> None:
    with zipfile.ZipFile(checkpoint) as archive:
        records = archive.infolist()
    storage = next(r for r in records if r.filename.endswith("/data/0"))
    data = bytearray(checkpoint.read_bytes())
    entry = data.rindex(storage.filename.encode()) - 46  # its entry in the directory at the end, as torch reads it
    data[entry + 20: entry + 28] = (2**30).to_bytes(4, "little") * 2  # its compressed and stored sizes: 1 GiB
    checkpoint.write_bytes(data)
    declared = sum(r.file_size for r in records) - storage.file_size + 2**30
    with pytest.raises(CheckpointError, match=f"{checkpoint} is refused: its records declare {declared} bytes, more "
                                              f"than the file's {len(data)}"):
        check_checkpoint_archive(checkpoint)


@pytest.mark.parametrize(("write", "expected"), [
    (lambda path: torch.save({"w": torch.zeros(3)}, path, _use_new_zipfile_serialization=False),
     "is refused: it is in torch's legacy checkpoint format"),
    (lambda path: path.write_bytes(b"not a checkpoint at all"), "is not a checkpoint: it is not a whole zip archive"),
    (lambda path: (torch.save({"w": torch.zeros(3)}, path), path.write_bytes(path.read_bytes()[:-100])),
     "is not a checkpoint: it is not a whole zip archive"),
], ids=["legacy", "garbage", "cut_short"])
def test_a_file_that_is_not_the_zip_torch_save_writes_is_refused(tmp_path: Path, write, expected: str) -> None:
    path = tmp_path / "old.ckpt"
    write(path)
    with pytest.raises(CheckpointError) as error:
        check_checkpoint_archive(path)
    assert str(error.value).startswith(f"{path} {expected}")


# Configs: aliases may not stand for more than the document could hold.

LAUGHS = "\n".join(["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                   + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
                   + ["trainer:", "  callbacks: *a8", ""])


def test_a_billion_laughs_is_refused_without_building_it(tmp_path: Path) -> None:
    config = tmp_path / "laughs.yaml"
    config.write_text(LAUGHS)
    assert config.stat().st_size < 600
    peak, error = peak_memory(lambda: check_yaml_aliases(config), ConfigError)
    assert str(error).startswith(f"{config} is refused: its aliases would add more than {ALIAS_VALUES:,} values")
    assert "*a3 on line 5 alone stands for 11,111" in str(error) and "use fewer levels of aliases" in str(error)
    refused_by_lvae(error)
    assert peak < MiB
    with pytest.raises(ConfigError, match="given.yaml is refused"):
        check_yaml_aliases("given.yaml", LAUGHS)  # a config given as text, named as the caller says


def test_an_alias_inside_its_own_anchor_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"c.yaml is refused: the alias \*a \(line 2\) is inside its own anchor &a"):
        check_yaml_aliases("c.yaml", "model: &a\n  encoder: [1, *a]\n")


def test_configs_lvae_ships_and_ordinary_anchors_pass(tmp_path: Path) -> None:
    for config in (Path(__file__).parents[1] / "configs").glob("*.yaml"):
        check_yaml_aliases(config)
    shared = "base: &base {lr: 0.001, betas: [0.9, 0.999]}\nfirst: {<<: *base, lr: 0.01}\nsecond: *base\n"
    check_yaml_aliases("shared.yaml", shared)
    many = "a: &a [" + ", ".join(["1"] * 999) + "]\nb: [" + ", ".join(["*a"] * 99) + "]\n"  # 99,000 values added
    check_yaml_aliases("many.yaml", many)
    check_yaml_aliases("broken.yaml", "a: [unclosed\n")  # left to the parser's own message
