"""The evolution GIF is put together from the frames saved with each epoch's PNG, and from the PNGs themselves where
a frame is missing or older than its PNG; a picture that cannot be written says which file."""

import gc
import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_gif_shows_each_epoch
from PIL import Image

from lvae.drawing import Drawn, run_job
from lvae.figures.animation import animate, draw_then_animate, frame_path
from lvae.figures.canvas import save_png


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    pixels = np.repeat(np.repeat(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), 10, axis=0), 10, axis=1)
    return Image.fromarray(pixels)  # 160 x 120, blocks of few colours


def test_each_png_is_saved_with_its_frame_and_the_gif_shows_every_epoch(tmp_path: Path) -> None:
    for epoch in range(3):
        save_png(picture(epoch), str(tmp_path / f"epoch_{epoch:03d}.png"))
        assert frame_path(tmp_path / f"epoch_{epoch:03d}.png").is_file()
    drawn = animate({"scatter": str(tmp_path)})
    assert drawn.animations == [("scatter", str(tmp_path / "evolution.gif"))]
    assert_gif_shows_each_epoch(tmp_path, 3)


def draw_epoch_2(folder: str) -> Drawn:
    """A fit's last picture: epoch 2's PNG (and frame) in `folder`."""
    path = save_png(picture(2), str(Path(folder) / "epoch_002.png"))
    return Drawn(pictures=[("scatter", path, "epoch 2")], scalars={"drawn": 1.0})


def test_a_fits_last_picture_then_its_gif_in_one_job(tmp_path: Path) -> None:
    for epoch in range(2):
        save_png(picture(epoch), str(tmp_path / f"epoch_{epoch:03d}.png"))
    drawn = draw_then_animate(partial(draw_epoch_2, str(tmp_path)), {"scatter": str(tmp_path)})
    assert drawn.pictures == [("scatter", str(tmp_path / "epoch_002.png"), "epoch 2")] and drawn.scalars == {"drawn": 1}
    assert drawn.animated and drawn.animations == [("scatter", str(tmp_path / "evolution.gif"))]
    assert_gif_shows_each_epoch(tmp_path, 3)  # the picture drawn first: the GIF ends with it
    # A GIF that cannot be written is a warning: the picture drawn is still handed back, to be logged.
    (tmp_path / "evolution.gif").unlink()
    (tmp_path / "evolution.gif").mkdir()
    drawn = draw_then_animate(partial(draw_epoch_2, str(tmp_path)), {"scatter": str(tmp_path)})
    assert drawn.pictures and drawn.animated and drawn.animations == []
    (warning,) = drawn.warnings
    assert warning.startswith("no evolution GIF (IsADirectoryError") and "evolution.gif" in warning


def test_a_missing_or_stale_frame_is_made_from_its_png(tmp_path: Path) -> None:
    for epoch in range(3):
        save_png(picture(epoch), str(tmp_path / f"epoch_{epoch:03d}.png"))
    frame_path(tmp_path / "epoch_000.png").unlink()  # a run folder from before frames were kept
    # Epoch 2 redrawn by a version that wrote no frame: its frame is older than its PNG.
    picture(7).save(tmp_path / "epoch_002.png")
    animate({"scatter": str(tmp_path)})
    assert_gif_shows_each_epoch(tmp_path, 3)


def test_a_picture_whose_size_changed_is_drawn_whole_on_white(tmp_path: Path) -> None:
    save_png(picture(0), str(tmp_path / "epoch_000.png"))
    save_png(picture(1).crop((0, 0, 160, 60)), str(tmp_path / "epoch_001.png"))  # fewer rows
    save_png(picture(2).crop((0, 0, 100, 120)), str(tmp_path / "epoch_002.png"))
    animate({"traversals": str(tmp_path)})
    with Image.open(tmp_path / "evolution.gif") as gif:
        assert gif.size == (160, 120)
    assert_gif_shows_each_epoch(tmp_path, 3)


def test_one_epoch_makes_no_gif(tmp_path: Path) -> None:
    save_png(picture(0), str(tmp_path / "epoch_000.png"))
    assert animate({"scatter": str(tmp_path)}).animations == []
    assert not (tmp_path / "evolution.gif").exists()


def test_putting_the_gif_together_leaves_no_file_open(tmp_path: Path) -> None:
    # Each epoch's GIF frame was opened and left to the garbage collector: an "unclosed file" warning per frame at
    # the end of every fit, raised as the picture's own.
    save_png(picture(0), str(tmp_path / "epoch_000.png"))
    save_png(picture(1).crop((0, 0, 160, 60)), str(tmp_path / "epoch_001.png"))  # drawn on a canvas
    save_png(picture(2), str(tmp_path / "epoch_002.png"))
    picture(3).save(tmp_path / "epoch_003.png")  # no fresh frame: quantized from the PNG
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        animate({"scatter": str(tmp_path)})
        gc.collect()
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)], [str(w.message) for w in caught]


def warn_of_everything() -> Drawn:
    warnings.warn("No artists with labels found to put in legend.", UserWarning)
    warnings.warn("invalid value encountered in divide", RuntimeWarning)
    warnings.warn("unclosed file <_io.BufferedReader name='epoch_000.gif'>", ResourceWarning)
    warnings.warn("this function is deprecated", DeprecationWarning)
    return Drawn()


def test_a_drawing_job_hands_back_only_the_warnings_about_its_picture() -> None:
    assert run_job(warn_of_everything).warnings == ["No artists with labels found to put in legend.",
                                                    "invalid value encountered in divide"]


def test_a_full_disk_names_the_picture_it_could_not_write_and_leaves_no_part_of_it(small_disk: Path) -> None:
    (small_disk / "fill").write_bytes(bytes(2 * 1024 * 1024 - 8192))  # two pages left
    target = small_disk / "latents" / "scatter" / "epoch_003.png"
    noise = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    with pytest.raises(OSError, match=f"No space left on device: '{target}'"):
        save_png(Image.fromarray(noise), str(target))
    assert not [p.name for p in target.parent.iterdir()]  # no half-written PNG or frame
