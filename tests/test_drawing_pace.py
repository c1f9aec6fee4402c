"""The drawing keeps pace with training: one drawing process per core that training leaves free, each picture's jobs
in one of them, in order."""

from pathlib import Path

import lightning as L
import pytest
from foreign_vae import ClassicVAE, loader, toy_digits

from lvae.drawing import Drawn, Job, drawing_processes, process_count
from lvae.errors import ConfigError
from lvae.picture_callback import PictureCallback


def fit(root: Path, callbacks: list, max_epochs: int = 2, **trainer) -> L.Trainer:
    """A plain Trainer on a module lvae did not write: 2 steps an epoch, 45 validation inputs."""
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, default_root_dir=root, logger=False,
                        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=False, **trainer)
    trainer.fit(ClassicVAE(), loader(*toy_digits(64, seed=0)), loader(*toy_digits(45, seed=1)))
    return trainer


def test_one_drawing_process_per_core_that_training_leaves_free() -> None:
    assert drawing_processes(cores=2, training_cores=2) == 1  # 2 CPU cores, torch's 2 threads: one, as before
    assert drawing_processes(cores=16, training_cores=1) == 15  # one GPU process on a 16-core machine
    assert drawing_processes(cores=16, training_cores=2 * 4) == 8  # 2 CPU processes of 4 threads each
    assert drawing_processes(cores=4, training_cores=8) == 1  # more threads than cores: still one


def test_the_count_can_be_set_for_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "3")
    assert process_count(training_cores=2) == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("LVAE_DRAWING_PROCESSES", bad)
        with pytest.raises(ConfigError, match=rf"LVAE_DRAWING_PROCESSES='{bad}' must be a number of drawing processes"):
            process_count(training_cores=2)
    monkeypatch.delenv("LVAE_DRAWING_PROCESSES")
    assert process_count(training_cores=10_000) == 1


class DrawnWhere(PictureCallback):
    """Records which process drew each of its pictures."""

    def __init__(self) -> None:
        super().__init__()
        self.pids: list[int] = []

    def prepare(self, trainer, pl_module, latents, epoch):
        return Job("drawing_probe:pid")

    def _log(self, drawn: Drawn, epoch: int) -> None:
        self.pids.append(int(drawn.scalars["pid"]))


def test_pictures_are_drawn_side_by_side_each_one_by_one_process(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "2")
    pictures = [DrawnWhere(), DrawnWhere(), DrawnWhere()]
    fit(tmp_path, pictures, max_epochs=3)
    for picture in pictures:
        assert len(picture.pids) == 3 and len(set(picture.pids)) == 1, picture.pids  # its jobs, in one process
    first, second, third = (picture.pids[0] for picture in pictures)
    assert first != second and third == first  # two processes, the pictures taken in turn
