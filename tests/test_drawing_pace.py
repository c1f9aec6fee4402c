"""The drawing keeps pace with training: training never waits for a picture of an earlier epoch (the drawing skips
epochs while it is busy, always drawing the first and the last, the same epochs for every picture), and the pictures
are drawn by one process per core that training leaves free, each picture's jobs in one of them, in order."""

import csv
import os
import time
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import LvaeLines, assert_gif_shows_each_epoch
from foreign_vae import ClassicVAE, loader, toy_digits
from interrupts import StopsMidEpoch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from PIL import Image

from lvae import VAE, MNISTDataModule
from lvae.callbacks import LatentScatter, TSNEEmbedding
from lvae.drawing import Drawn, Job, drawing_processes, process_count, usable_cores
from lvae.errors import ConfigError
from lvae.picture_callback import PictureCallback, epoch_list

SMALL_TSNE = {"perplexity": 5.0, "n_prior": 8}  # 45 validation inputs: t-SNE needs more than 3 x perplexity


def fit(root: Path, callbacks: list, max_epochs: int = 2, ckpt_path=None, module: "L.LightningModule | None" = None,
        **trainer) -> L.Trainer:
    """A plain Trainer on a module lvae did not write: 2 steps an epoch, 45 validation inputs."""
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", devices=1, default_root_dir=root,
                        callbacks=callbacks, enable_progress_bar=False, enable_model_summary=False,
                        **{"logger": False, "enable_checkpointing": False, **trainer})
    trainer.fit(module or ClassicVAE(), loader(*toy_digits(64, seed=0)), loader(*toy_digits(45, seed=1)),
                ckpt_path=ckpt_path)
    return trainer


class Gated(PictureCallback):
    """Picture `name`, drawn once the file `hold` is gone (`Holder` keeps it), after `seconds`. Records, for each
    picture logged, its epoch and the epoch training was in when it was logged."""

    def __init__(self, name: str, hold: Path, seconds: float = 0.0, every_n_epochs: int = 1,
                 skip_when_busy: bool = True):
        super().__init__(every_n_epochs=every_n_epochs, skip_when_busy=skip_when_busy)
        self.names, self.hold, self.seconds = (name,), hold, seconds
        self.logged: list[tuple[int, int]] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(names=self.names)

    def prepare(self, trainer, pl_module, latents, epoch):
        return Job("drawing_probe:draw_when_open", {"name": self.names[0], "hold": str(self.hold),
                                                    "path": str(self.sink.png_path(self.names[0], epoch)),
                                                    "seconds": self.seconds})

    def _log(self, drawn: Drawn, epoch: int) -> None:
        self.logged.append((epoch, self.sink.trainer.current_epoch))
        super()._log(drawn, epoch)


class Holder(L.Callback):
    """Keeps the drawing busy: holds `hold` from the start of fit to its end (or an interrupt), letting go only at
    the start of epoch `release_at`, until `picture`'s pictures being drawn are done."""

    def __init__(self, hold: Path, release_at: "int | tuple[int, ...]" = -1, picture: "PictureCallback | None" = None):
        self.hold, self.picture = hold, picture
        self.release_at = release_at if isinstance(release_at, tuple) else (release_at,)

    def on_fit_start(self, trainer, pl_module):
        self.hold.touch()

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch in self.release_at:
            self.hold.unlink()
            self.picture.join()
            self.hold.touch()

    def on_fit_end(self, trainer, pl_module):
        self.hold.unlink(missing_ok=True)

    def on_exception(self, trainer, pl_module, exception):
        self.hold.unlink(missing_ok=True)


def drawn(root: Path, name: str) -> list[int]:
    return sorted(int(png.stem.split("_")[1]) for png in (root / "latents" / name).glob("epoch_*.png"))


def logged(root: Path, key: str) -> list[int]:
    with open(root / "metrics.csv") as f:
        return [int(float(row["epoch"])) for row in csv.DictReader(f) if row.get(key)]


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Ten epochs of the scatter, the t-SNE map and a picture whose drawing of epoch 0 lasts until epoch 3 starts
    and whose drawing of epoch 3 lasts until fit ends, all in one drawing process. (With six, epoch 3 would not be
    drawn: at epoch 0's pace its drawing would still run when the last epoch's validation ends.)"""
    root = tmp_path_factory.mktemp("busy")
    hold = root / "hold"
    gated = Gated("gated", hold)
    scatter, tsne = LatentScatter(table_rows=0), TSNEEmbedding(**SMALL_TSNE)
    with pytest.MonkeyPatch.context() as env, warnings.catch_warnings(record=True) as caught, \
            LvaeLines() as lines:
        env.setenv("LVAE_DRAWING_PROCESSES", "1")
        warnings.simplefilter("always")
        fit(root, [Holder(hold, release_at=3, picture=gated), scatter, tsne, gated], max_epochs=10,
            logger=CSVLogger(root, name="", version=""))
    return dict(root=root, scatter=scatter, tsne=tsne, gated=gated, warnings=[str(w.message) for w in caught],
                lines=lines)


def test_training_does_not_wait_for_a_busy_drawing(busy: dict) -> None:
    # Epoch 0's picture was logged as epoch 3 began: epochs 1 and 2 trained while it was drawn.
    assert busy["gated"].logged[0] == (0, 3)
    # Skipped, not queued: 3 jobs for 10 epochs. The first and the last epoch, and the newest when the drawing was free.
    for name in ("gated", "scatter", "tsne"):
        assert drawn(busy["root"], name) == [0, 3, 9], name
    for picture in (busy["gated"], busy["scatter"], busy["tsne"]):
        state = picture.state_dict()
        assert (state["drawn_epochs"], state["skipped_epochs"]) == ([0, 3, 9], [1, 2, 4, 5, 6, 7, 8])


def test_the_pictures_read_side_by_side_draw_the_same_epochs_and_log_only_those(busy: dict) -> None:
    # The scatter and the t-SNE map were free to draw epochs 1, 2, 4-8: they skipped them with the picture that was not.
    for key in ("scatter/outside", "scatter/displacement", "tsne/knn_agreement", "tsne/displacement"):
        assert logged(busy["root"], key) == ([0, 3, 9] if "displacement" not in key else [3, 9]), key
    tsne = busy["tsne"].state_dict()
    assert (tsne["embedding_epoch"], tsne["init_epoch"]) == (9, 3)  # the last map started from the last drawn one
    with Image.open(busy["root"] / "latents" / "tsne" / "evolution.gif") as gif:
        assert gif.n_frames == 3  # one frame per drawn epoch


def test_one_line_says_which_epochs_were_skipped_and_one_what_fit_waits_for(busy: dict) -> None:
    lines = [line for line in busy["lines"] if line.startswith("lvae:")]
    assert lines == [
        "lvae: LatentScatter, TSNEEmbedding and Gated drew 3 of 10 epochs (0, 3, 9), skipping 1, 2, 4-8 while the "
        "drawing of an earlier epoch was not done or would have held up the last: training does not wait for it "
        "(skip_when_busy: false draws every epoch, training waiting)",
        "lvae: drawing the last epoch's 3 pictures and 3 evolution GIFs..."], busy["lines"]


def test_no_warning_but_the_pictures_own(busy: dict) -> None:
    # lvae speaks in lines of its own ("lvae: ..."), never in Python warnings; nothing about unclosed files
    assert not [w for w in busy["warnings"] if "unclosed" in w or "picture" in w], busy["warnings"]
    assert not [line for line in busy["lines"] if "unclosed" in line or "was skipped" in line], busy["lines"]


def test_epochs_are_written_as_a_person_writes_them() -> None:
    assert epoch_list([0, 1, 2, 3, 5, 7, 8, 10, 11, 12]) == "0-3, 5, 7, 8, 10-12"
    assert epoch_list([]) == ""


def test_every_epoch_is_drawn_when_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "1")
    slow = Gated("slow", tmp_path / "never", seconds=0.3, skip_when_busy=False)
    scatter = LatentScatter(table_rows=0, skip_when_busy=False)
    fit(tmp_path, [scatter, slow], max_epochs=4)
    assert drawn(tmp_path, "slow") == drawn(tmp_path, "scatter") == [0, 1, 2, 3]
    assert [epoch for epoch, _ in slow.logged] == [0, 1, 2, 3]
    assert slow.state_dict()["skipped_epochs"] == []


def test_a_resumed_run_keeps_its_drawn_and_skipped_epochs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "1")
    hold = tmp_path / "hold"

    def run(max_epochs: int, ckpt_path=None) -> tuple[Gated, Gated]:
        every, second = Gated("every", hold), Gated("second", hold, every_n_epochs=2)
        checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
        fit(tmp_path, [Holder(hold), every, second, checkpoints], max_epochs=max_epochs, ckpt_path=ckpt_path,
            enable_checkpointing=True)
        return every, second

    every, second = run(2)
    # Epoch 1 is the first of the picture drawn every second epoch: drawn, though epoch 0's picture held the drawing.
    assert drawn(tmp_path, "every") == [0, 1] and drawn(tmp_path, "second") == [1]
    every, second = run(6, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    # Resumed at epoch 2, which is drawn (nothing else was being drawn). Epoch 3 is not the second picture's first:
    # the checkpoint says it drew epoch 1. Epoch 5, the last, is drawn at the end of fit.
    assert drawn(tmp_path, "every") == [0, 1, 2, 5] and drawn(tmp_path, "second") == [1, 5]
    assert (every.state_dict()["drawn_epochs"], every.state_dict()["skipped_epochs"]) == ([0, 1, 2, 5], [3, 4])
    assert (second.state_dict()["drawn_epochs"], second.state_dict()["skipped_epochs"]) == ([1, 5], [3])


class Interrupt(L.Callback):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise SIGTERMException  # as Lightning's handler of a scheduler's SIGTERM does


def test_an_interrupt_draws_the_last_validated_epoch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "1")
    hold = tmp_path / "hold"
    gated = Gated("gated", hold)
    with pytest.raises(SIGTERMException):
        fit(tmp_path, [Holder(hold), gated, Interrupt(epoch=3)], max_epochs=10)
    # Epochs 1 and 2 were skipped while epoch 0's picture was held; epoch 2's, kept, is drawn at the interrupt.
    assert drawn(tmp_path, "gated") == [0, 2]
    assert [epoch for epoch, _ in gated.logged] == [0, 2]


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

    def __init__(self, name: str, seconds: float = 0.0, interrupt_in: int = 0) -> None:
        super().__init__(skip_when_busy=False)  # every epoch, whatever the machine's pace
        self.name, self.seconds, self.interrupt_in = name, seconds, interrupt_in
        self.pids: list[int] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(name=self.name)  # the epochs it drew: one state per picture

    def prepare(self, trainer, pl_module, latents, epoch):
        return Job("drawing_probe:pid", {"seconds": self.seconds, "interrupt_in": self.interrupt_in})

    def _log(self, drawn: Drawn, epoch: int) -> None:
        self.pids.append(int(drawn.scalars["pid"]))


def test_pictures_are_drawn_side_by_side_each_one_by_one_process(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "2")
    pictures = [DrawnWhere("a"), DrawnWhere("b"), DrawnWhere("c")]
    fit(tmp_path, pictures, max_epochs=3)
    for picture in pictures:
        assert len(picture.pids) == 3 and len(set(picture.pids)) == 1, picture.pids  # its jobs, in one process
    first, second, third = (picture.pids[0] for picture in pictures)
    assert first != second and third == first  # two processes, the pictures taken in turn


class DrawnHereAtTheEnd(DrawnWhere):
    last_drawn_here = True  # as lvae's pictures that need matplotlib only


def test_at_the_end_of_fit_the_training_process_draws_light_pictures_beside_the_drawing_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # One drawing process (training left no core free), busy with the t-SNE-like picture's last epoch when fit ends:
    # the light pictures' last epoch is drawn by the training process meanwhile, which has nothing left to train.
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "1")
    slow, light, lighter = DrawnWhere("slow", seconds=1.0), DrawnHereAtTheEnd("light"), DrawnHereAtTheEnd("lighter")
    fit(tmp_path, [slow, light, lighter], max_epochs=3)
    drawing = slow.pids[0]
    assert drawing != os.getpid() and slow.pids == [drawing] * 3
    assert light.pids == lighter.pids == [drawing, drawing, os.getpid()]
    # Without a known last epoch (max_time may end fit at any one), every picture is drawn by the drawing process.
    slow, light = DrawnWhere("slow", seconds=1.0), DrawnHereAtTheEnd("light")
    fit(tmp_path / "unknown", [slow, light], max_epochs=-1, max_steps=6)
    assert light.pids == slow.pids and os.getpid() not in light.pids


class GifWhere(PictureCallback):
    """A picture with an evolution GIF: which process drew each epoch and whether the GIF came back with it, and
    each GIF that reached the loggers."""

    def __init__(self, name: str, seconds: float = 0.0, fail_at: int = -1) -> None:
        super().__init__(skip_when_busy=False)  # every epoch, whatever the machine's pace
        self.names, self.seconds, self.fail_at = (name,), seconds, fail_at
        self.drawn: list[tuple[int, bool]] = []
        self.gifs_logged: list[str] = []

    @property
    def state_key(self) -> str:
        return self._generate_state_key(names=self.names)

    def setup(self, trainer, pl_module, stage):
        super().setup(trainer, pl_module, stage)
        log_animation = self.sink.log_animation

        def logged(name: str, path: Path) -> None:
            self.gifs_logged.append(name)
            log_animation(name, path)

        self.sink.log_animation = logged

    def prepare(self, trainer, pl_module, latents, epoch):
        return Job("drawing_probe:pid_png", {"path": str(self.sink.png_path(self.names[0], epoch)),
                                             "shade": 60 * epoch, "seconds": self.seconds,
                                             "fail": epoch == self.fail_at})

    def _log(self, drawn: Drawn, epoch: int) -> None:
        self.drawn.append((int(drawn.scalars["pid"]), bool(drawn.animations)))
        super()._log(drawn, epoch)


class GifHereAtTheEnd(GifWhere):
    last_drawn_here = True


def test_each_evolution_gif_is_made_with_its_pictures_last_epoch_in_the_process_that_draws_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # At the end of fit the GIFs are put together beside the last pictures being drawn, not one after another in the
    # training process once every picture is done: each right after its picture's last epoch, where that is drawn.
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "1")
    slow, light = GifWhere("slow", seconds=1.0), GifHereAtTheEnd("light")
    fit(tmp_path, [slow, light], max_epochs=3)
    drawing = slow.drawn[0][0]
    assert drawing != os.getpid()
    assert slow.drawn == [(drawing, False), (drawing, False), (drawing, True)]
    assert light.drawn == [(drawing, False), (drawing, False), (os.getpid(), True)]
    for picture in (slow, light):
        assert picture.gifs_logged == [picture.names[0]]  # logged once: not made again at the end
        assert_gif_shows_each_epoch(tmp_path / "latents" / picture.names[0], 3)  # ending with the last epoch
    # The last picture fails: the GIF of the epochs drawn is still made at the end of fit, once.
    failing = GifWhere("failing", fail_at=2)
    fit(tmp_path / "fails", [failing], max_epochs=3)
    assert [has_gif for _, has_gif in failing.drawn] == [False, False]
    assert failing.gifs_logged == ["failing"]
    assert_gif_shows_each_epoch(tmp_path / "fails" / "latents" / "failing", 2)


def test_ctrl_c_while_the_training_process_draws_at_the_end_of_fit_hands_the_rest_to_the_drawing_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C comes while the training process draws the first light picture's last epoch: that picture and the one
    # after it are still drawn, by the drawing process within the interrupt's grace, so the evolution ends where
    # fit did.
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "1")
    slow = DrawnWhere("slow", seconds=1.0)
    light = DrawnHereAtTheEnd("light", interrupt_in=os.getpid())
    lighter = DrawnHereAtTheEnd("lighter")
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        fit(tmp_path, [slow, light, lighter], max_epochs=3)
    drawing = slow.pids[0]
    assert light.pids == lighter.pids == [drawing] * 3


class ThreadsSeen(Callback):
    """torch's thread count right after each validation epoch's pictures went to be drawn (it follows them)."""

    def __init__(self) -> None:
        self.seen: list[int] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.seen.append(torch.get_num_threads())


class FailsInEpoch(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch == self.epoch:
            raise RuntimeError("the user's own error")


@pytest.mark.parametrize("ends", ["fit", "error"])
def test_a_fit_with_pictures_leaves_torchs_thread_count_as_it_found_it(tmp_path: Path, ends: str) -> None:
    # A user's script sets torch's threads; lvae lends one of them to the drawing while pictures are drawn (training
    # keeps every core busy here), and gives it back however fit ends.
    found = torch.get_num_threads()
    threads = max(2, usable_cores())
    torch.set_num_threads(threads)
    try:
        seen = ThreadsSeen()
        callbacks = [LatentScatter(), seen, *([FailsInEpoch(1)] if ends == "error" else [])]
        if ends == "error":
            with pytest.raises(RuntimeError, match="the user's own error"):
                fit(tmp_path, callbacks)
        else:
            fit(tmp_path, callbacks)
        assert seen.seen[0] == threads - 1  # lent while the first epoch's picture was drawn
        assert torch.get_num_threads() == threads
    finally:
        torch.set_num_threads(found)


def weight_sum(module: L.LightningModule) -> float:
    return float(sum(parameter.detach().double().sum() for parameter in module.parameters()))


class Prepared(PictureCallback):
    """Records, for each epoch it prepares, the sum of the weights it is prepared with and the negative ELBO of the
    latents it gets."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: dict[int, tuple[float, "torch.Tensor | None"]] = {}

    def prepare(self, trainer, pl_module, latents, epoch):
        self.seen[epoch] = (weight_sum(pl_module), latents.neg_elbo)
        return Job("drawing_probe:pid")

    def _log(self, drawn: Drawn, epoch: int) -> None:
        pass


class Validated(Callback):
    """The sum of the weights and the negative ELBO (`VAE.validation_latents()`) at each validation epoch's end."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[float, torch.Tensor]] = {}

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: VAE) -> None:
        if not trainer.sanity_checking:
            self.seen[trainer.current_epoch] = (weight_sum(pl_module), pl_module.validation_latents().neg_elbo)


@pytest.mark.parametrize("ends", ["max_epochs", "mid-epoch"])
def test_a_skipped_epoch_costs_no_model_work_and_the_last_is_drawn_with_its_weights(
        ends: str, mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "1")
    hold = tmp_path / "hold"
    prepared, validated, stop = Prepared(), Validated(), StopsMidEpoch(epoch=3)
    model = VAE(latent_dim=4, latent_points=40)
    callbacks = [Holder(hold), Gated("gated", hold), prepared, validated, *([stop] if ends == "mid-epoch" else [])]
    trainer = L.Trainer(max_epochs=4 if ends == "max_epochs" else 10, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path, callbacks=callbacks)
    data = MNISTDataModule(data_dir=str(mnist_root), batch_size=64)
    if ends == "max_epochs":
        trainer.fit(model, data)
        last = 3  # epochs 1 and 2 were skipped while epoch 0's picture was held, and 3 is drawn at the end of fit
    else:
        with pytest.raises(SIGTERMException):
            trainer.fit(model, data)
        last = 2  # skipped too, kept, and drawn at the interrupt, while training had gone on into epoch 3
    # No model work for the skipped epochs: neither `prepare` nor the negative ELBO.
    assert sorted(prepared.seen) == [0, last]
    assert drawn(tmp_path, "gated") == [0, last]
    for epoch in (0, last):
        weights, neg_elbo = prepared.seen[epoch]
        assert weights == validated.seen[epoch][0], epoch  # the weights the epoch was validated with
        torch.testing.assert_close(neg_elbo, validated.seen[epoch][1], rtol=0, atol=0)  # what it had, as drawn
    if ends == "mid-epoch":
        assert stop.weights and weight_sum(model) != validated.seen[last][0]  # training did go on
        for key, value in model.state_dict().items():  # and the weights it reached are back in place
            assert torch.equal(value, stop.weights[key]), key


class Paced(Callback):
    """Each training epoch takes at least `seconds`: epochs long against the scheduler's noise."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_epoch_end(self, trainer, pl_module):
        time.sleep(self.seconds)


def test_an_epoch_whose_drawing_would_delay_the_last_one_is_skipped(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Epoch 0's picture is drawn until epoch 1 starts (the first drawing's time is not the estimate: it pays for the
    # drawing's first use), epoch 1's until epoch 5 starts: about 3 epochs. Drawing epoch 5 would last into the end of
    # fit, which would wait for it and then draw epoch 6, the last: epoch 5 is skipped though the drawing is free.
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "1")
    hold = tmp_path / "hold"
    gated = Gated("gated", hold)
    with LvaeLines() as lines:
        fit(tmp_path, [Holder(hold, release_at=(1, 5), picture=gated), gated, Paced(0.3)], max_epochs=7)
    assert gated.logged[:2] == [(0, 1), (1, 5)]  # the drawing was free when epoch 5's validation ended
    assert drawn(tmp_path, "gated") == [0, 1, 6]
    assert (gated.state_dict()["drawn_epochs"], gated.state_dict()["skipped_epochs"]) == ([0, 1, 6], [2, 3, 4, 5])
    assert lines[0].startswith("lvae: Gated drew 3 of 7 epochs (0, 1, 6), skipping 2-5 while"), lines


class WithExtraState(ClassicVAE):
    """A module whose state holds more than tensors (`get_extra_state`), as some users' modules do."""

    def get_extra_state(self):
        return {"tokenizer": "kept by the module"}

    def set_extra_state(self, state):
        self.extra = state


def test_a_module_whose_state_holds_more_than_tensors_still_skips_and_draws_its_last_epoch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Its weights are not copied (a copy might not bring such state back whole): a skipped epoch is prepared when
    # skipped, as a large model's is, and training goes on.
    monkeypatch.setenv("LVAE_DRAWING_PROCESSES", "1")
    hold = tmp_path / "hold"
    gated = Gated("gated", hold)
    fit(tmp_path, [Holder(hold), gated], max_epochs=3, module=WithExtraState())
    assert drawn(tmp_path, "gated") == [0, 2]
    assert (gated.state_dict()["drawn_epochs"], gated.state_dict()["skipped_epochs"]) == ([0, 2], [1])
