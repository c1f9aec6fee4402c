"""The shared picture plumbing: a failing picture is a warning, never the end of training."""

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from lvae import VAE, MNISTDataModule
from lvae.pictures import PictureCallback


def explode(where: str) -> None:
    raise RuntimeError(f"{where} exploded")


class Broken(PictureCallback):
    """Fails in the training loop (`prepare`), in the drawing job, or hands over a job that cannot be sent to the
    drawing process, as a buggy picture would."""

    names = ("broken",)

    def __init__(self, where: str, background: bool):
        super().__init__(background=background)
        self.where = where

    def prepare(self, trainer, pl_module, latents, epoch):
        if self.where == "prepare":
            raise RuntimeError("prepare exploded")
        if self.where == "unpicklable":
            return lambda: explode("draw")  # a lambda cannot be pickled
        return functools.partial(explode, "draw")


@pytest.mark.parametrize(("where", "background", "message"), [
    ("prepare", True, r"RuntimeError: prepare exploded\)"),
    ("draw", True, r"RuntimeError: draw exploded\)"),
    ("draw", False, r"RuntimeError: draw exploded\)"),
    ("unpicklable", True, r"pickle.*prepare` must return a picklable job"),
])
def test_a_picture_that_raises_does_not_stop_fit(mnist_root: Path, tmp_path: Path, where: str, background: bool,
                                                 message: str):
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(tmp_path), enable_progress_bar=False,
                        callbacks=[Broken(where, background)], default_root_dir=tmp_path)
    with pytest.warns(UserWarning, match=rf"Broken: the picture of epoch \d was skipped \(.*{message}"):
        trainer.fit(VAE(latent_dim=4), MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
    assert trainer.current_epoch == 2 and torch.isfinite(trainer.callback_metrics["val/loss"])
    assert list(tmp_path.glob("**/checkpoints/*.ckpt"))  # the checkpoints were written as usual


def test_tensorboard_users_get_the_pictures_as_images(mnist_root: Path, tmp_path: Path) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from callbacks import PriorSamples

    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=logger, enable_progress_bar=False,
                        enable_checkpointing=False, callbacks=[PriorSamples(background=True)])
    trainer.fit(VAE(latent_dim=4), MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    images = events.Images("latents/prior_samples")
    assert [image.step for image in images] == [0, 1]  # one per epoch, on the epoch axis
    assert (images[0].width, images[0].height) == (400, 440)  # PriorSamples' 4.0 x 4.4 in figure at 100 dpi
    assert (tmp_path / "latents" / "prior_samples" / "epoch_001.png").is_file()  # and the PNG beside it
