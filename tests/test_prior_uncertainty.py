"""PriorSamples and LatentUncertainty as a user meets them: fit with them, then read back the PNGs, the CSV and
W&B rows, the prior draws across epochs and a resume; and their numbers on latents made by hand."""

import csv
import math
import re
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from conftest import assert_gif_shows_each_epoch, notices
import torch
import wandb
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from PIL import Image
from wandb_run import read_run

from lvae.callbacks.latent_uncertainty import LatentUncertainty
from lvae.callbacks.prior_samples import PriorSamples
from lvae import VAE, ConfigError, Latents, MNISTDataModule
from lvae.figures.canvas import PNG_DPI
from lvae.sink import PictureSink

SCALARS = ["uncertainty/mean", "uncertainty/active_units", "uncertainty/spearman_disagreement",
           "uncertainty/spearman_recon", "uncertainty/spearman_ink", "uncertainty/neg_elbo_spearman_disagreement"]


class PriorLog(Callback):
    """Copies the prior draws a PriorSamples holds after each validation epoch."""

    def __init__(self, prior: PriorSamples):
        self.prior, self.seen = prior, []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.seen.append(self.prior.z.clone())


def fit(model: VAE, data_dir, callbacks: list, logger, max_epochs: int = 2, ckpt_path=None) -> L.Trainer:
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=logger, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, MNISTDataModule(data_dir=str(data_dir), batch_size=64), ckpt_path=ckpt_path)
    return trainer


def seeded_prior(n: int, latent_dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def z2_run(mnist_root, tmp_path_factory):
    """Two epochs of a Z=2 VAE with both callbacks, a CSVLogger and a last.ckpt."""
    root = tmp_path_factory.mktemp("z2")
    prior, uncertainty = PriorSamples(), LatentUncertainty()
    log = PriorLog(prior)
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)
    trainer = fit(VAE(latent_dim=2), mnist_root, [prior, uncertainty, log, checkpoints], CSVLogger(root))
    return trainer, prior, log, root / "checkpoints" / "last.ckpt"


def test_csv_run_has_every_picture_and_the_numbers(z2_run):
    trainer, _, _, _ = z2_run
    latents = trainer.log_dir + "/latents"
    for callback in (PriorSamples, LatentUncertainty):
        for name in callback.names:  # Z=2: the manifold and the positions too
            width, height = callback.figsizes[name]
            for epoch in (0, 1):
                with Image.open(f"{latents}/{name}/epoch_{epoch:03d}.png") as png:
                    assert png.format == "PNG"
                    assert png.size == (round(width * PNG_DPI), round(height * PNG_DPI))
                    assert len(set(png.convert("L").getdata())) > 10, f"{name} is blank"
            assert_gif_shows_each_epoch(Path(latents) / name, 2)
    with open(trainer.log_dir + "/metrics.csv") as f:
        rows = [row for row in csv.DictReader(f) if row.get("uncertainty/mean")]
    assert [int(float(row["epoch"])) for row in rows] == [0, 1]
    for row in rows:
        for key in SCALARS:
            assert key in row
        assert 0 < float(row["uncertainty/mean"]) < 10
        assert [k for k in row if k.startswith("uncertainty/class_") and row[k]], "no per-class means"


def test_prior_draws_are_the_same_every_epoch_and_in_the_checkpoint(z2_run):
    _, prior, log, last = z2_run
    assert len(log.seen) == 2
    assert torch.equal(log.seen[0], log.seen[1])
    assert torch.equal(prior.z, seeded_prior(64, 2))
    saved = torch.load(last, weights_only=True)["callbacks"][prior.state_key]
    assert torch.equal(saved["z"], prior.z)


def test_resume_takes_the_prior_draws_from_the_checkpoint(z2_run, mnist_root, tmp_path):
    _, _, _, last = z2_run
    # A checkpoint whose draws differ from what seed 0 gives here (as if drawn by another torch's RNG): a
    # resumed run must show the checkpoint's draws, not fresh ones.
    checkpoint = torch.load(last, weights_only=True)
    key = PriorSamples().state_key
    elsewhere = seeded_prior(64, 2, seed=123)
    checkpoint["callbacks"][key]["z"] = elsewhere
    torch.save(checkpoint, tmp_path / "elsewhere.ckpt")

    prior = PriorSamples()
    log = PriorLog(prior)
    trainer = fit(VAE(latent_dim=2), mnist_root, [prior, log], CSVLogger(tmp_path), max_epochs=3,
                  ckpt_path=tmp_path / "elsewhere.ckpt")
    assert len(log.seen) == 1  # epochs 0 and 1 came from the checkpoint
    assert torch.equal(log.seen[0], elsewhere)
    assert (Path(trainer.log_dir) / "latents" / "prior_samples" / "epoch_002.png").is_file()


def test_prior_draws_of_another_latent_size_are_redrawn_with_a_warning(z2_run, mnist_root, tmp_path):
    _, _, _, last = z2_run
    prior = PriorSamples()
    prior.load_state_dict(torch.load(last, weights_only=True)["callbacks"][prior.state_key])  # (64, 2) draws
    with notices(r"prior draws have shape \(64, 2\).*\(64, 20\)"):
        fit(VAE(latent_dim=20), mnist_root, [prior], CSVLogger(tmp_path), max_epochs=1)
    assert torch.equal(prior.z, seeded_prior(64, 20))


def test_wandb_run_holds_pictures_and_numbers_on_the_epoch_axis(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="t")
    fit(VAE(latent_dim=20), mnist_root, [PriorSamples(), LatentUncertainty()], logger)
    wandb.finish()
    (run,) = read_run(tmp_path)
    for name in ("prior_samples", *LatentUncertainty.names):
        rows = run.rows_with(f"latents/{name}/_type")  # a logged image is stored as its fields
        assert [(row["epoch"], row[f"latents/{name}/_type"]) for row in rows] == [(0, "image-file"),
                                                                                   (1, "image-file")], name
        assert run.step_metrics[f"latents/{name}"] == "epoch"
    for epoch, caption in enumerate(run.values("latents/uncertainty/caption")):
        assert caption.startswith(f"Epoch {epoch}: ") and "active" in caption and "Spearman of -ELBO" in caption
        for grid, score in (("lowest u(x)", "u(x)"), ("highest u(x)", "u(x)"), ("highest negative ELBO", "-ELBO")):
            # the 16 labels and scores of each grid, as the picture shows them
            assert re.search(rf"The 16 {re.escape(grid)} of \d+: labels( \d){{16}}; {re.escape(score)}( \S+){{16}}\.",
                             caption), caption
    for key in SCALARS:
        assert [row["epoch"] for row in run.rows_with(key)] == [0, 1], key
        assert run.step_metrics[key] == "epoch"
    for name in ("manifold", "prior_positions"):  # Z=20 has no 2-D manifold
        assert not run.rows_with(f"latents/{name}/_type")
        assert not (tmp_path / "latents" / name).exists()


def handmade_latents(labels: list[int]) -> Latents:
    """12 inputs, Z=3: u(x) = (i + 1) / 20, ink 12 - i, one active dimension."""
    n = len(labels)
    u = (torch.arange(n) + 1) / 20  # (N,)
    variance = torch.stack([0.5 * u, 1.5 * u, u], dim=1)  # (N, 3), each row's mean is u
    label = torch.tensor(labels)
    offset = torch.linspace(-1, 1, n)
    mu = torch.stack([label * 5.0 + offset, 0.05 * offset, torch.zeros(n)], dim=1)  # var 25.4, 0.0009, 0
    image = torch.zeros(n, 1, 28, 28, dtype=torch.uint8)  # (N, C, H, W)
    for i in range(n):
        image[i, 0, 0, : n - i] = 255  # 12 - i pixels of ink
    return Latents(epoch=0, index=torch.arange(n), label=label, mu=mu, logvar=variance.log(), recon=100 * u,
                   kl=torch.ones(n), neg_elbo=100 * u + 1, image=image)


def test_numbers_match_a_hand_calculation():
    latents = handmade_latents([0] * 6 + [1] * 6)
    values = LatentUncertainty(k_neighbours=3).measure(latents)
    assert values["uncertainty/mean"] == pytest.approx(6.5 / 20)  # mean of 1..12, over 20
    assert values["uncertainty/class_0"] == pytest.approx(3.5 / 20)  # mean of 1..6
    assert values["uncertainty/class_1"] == pytest.approx(9.5 / 20)  # mean of 7..12
    assert values["uncertainty/active_units"] == 1  # dim 0 varies, dim 1 only by 0.0009, dim 2 not at all
    assert values["uncertainty/spearman_recon"] == pytest.approx(1.0, abs=1e-6)  # recon = 100 u
    assert values["uncertainty/spearman_ink"] == pytest.approx(-1.0, abs=1e-6)  # ink falls as u rises
    # Classes lie 5 apart in mu, so every neighbour shares the label: no disagreement to rank, no correlation.
    assert math.isnan(values["uncertainty/spearman_disagreement"])


def test_the_picture_and_its_caption_name_each_grids_labels(tmp_path):
    latents = handmade_latents([0] * 6 + [1] * 6)  # u(x) rises with the index
    # the highest negative ELBO: inputs 5, 6 and 4, labelled 0, 1 and 0
    latents = replace(latents, neg_elbo=torch.tensor([0.0, 1, 2, 3, 9, 11, 10, 4, 5, 6, 7, 8]))
    callback = LatentUncertainty(n_show=3, nrow=2, k_neighbours=3)
    callback.sink = PictureSink(L.Trainer(logger=False, enable_progress_bar=False), tmp_path)
    job = callback.prepare(None, None, latents, epoch=4)
    ((name, path, caption),) = job().pictures
    assert name == "uncertainty" and path == str(tmp_path / "latents" / "uncertainty" / "epoch_004.png")
    width, height = LatentUncertainty.figsizes["uncertainty"]
    with Image.open(path) as png:
        assert png.size == (round(width * PNG_DPI), round(height * PNG_DPI))
        assert len(set(png.convert("L").getdata())) > 10, "blank"
    assert caption.startswith("Epoch 4: 12 inputs, mean u(x) 0.325, 1 of 3 latent dimensions active")
    assert "The 3 lowest u(x) of 12: labels 0 0 0; u(x) 0.05 0.1 0.15." in caption
    assert "The 3 highest u(x) of 12: labels 1 1 1; u(x) 0.6 0.55 0.5." in caption
    assert "The 3 highest negative ELBO of 12: labels 0 1 0; -ELBO 11 10 9." in caption


def overlap(a: tuple, b: tuple) -> bool:
    """Whether two pixel boxes (left, top, right, bottom) share any area."""
    return min(a[2], b[2]) > max(a[0], b[0]) and min(a[3], b[3]) > max(a[1], b[1])


@pytest.mark.parametrize("variance", [1.0, 1e-3], ids=["short_scores", "long_scores"])
def test_labels_and_scores_sit_under_their_images_readable_at_the_saved_size(tmp_path, variance):
    from lvae.figures.uncertainty import Grid, grid_layouts

    latents = handmade_latents([0] * 6 + [1] * 6)
    latents = replace(latents, logvar=latents.logvar + math.log(variance))  # 1e-3: scores like 0.00015
    callback = LatentUncertainty(k_neighbours=3)
    callback.sink = PictureSink(L.Trainer(logger=False, enable_progress_bar=False), tmp_path)
    job = callback.prepare(None, None, latents, epoch=0)
    grids = [Grid(**grid) for grid in job.kwargs["grids"]]
    layouts = grid_layouts(job.kwargs["figsize"], grids, job.kwargs["nrow"])
    ((_, path, _),) = job().pictures
    with Image.open(path) as png:
        pixels = np.asarray(png.convert("RGB"))  # (H, W, 3)
    tiles = [tile for layout in layouts for tile in layout.tiles]
    for grid, layout in zip(grids, layouts):
        assert [t.text for t in layout.texts if t.bold] == [str(label) for label in grid.labels]
        assert [t.text for t in layout.texts if not t.bold] == [f"{value:.3g}" for value in grid.values]
        for text in layout.texts:
            assert text.pixels >= 8 * PNG_DPI / 72, f"{text.text!r} is smaller than 8 pt in the PNG"
            assert not [tile for tile in tiles if overlap(text.box, tile)], f"{text.text!r} covers an image"
            left, top, right, bottom = text.box
            assert 0 <= left and right <= pixels.shape[1] and 0 <= top and bottom <= pixels.shape[0]
            assert pixels[top:bottom, left:right].min() < 100, f"{text.text!r} is not drawn where its box says"
        scores = [t for t in layout.texts if not t.bold]
        for i, (tile, score) in enumerate(zip(layout.tiles, scores)):
            # under its own image: below it, within its column
            assert tile[3] <= score.box[1] < tile[3] + 20 and min(tile[2], score.box[2]) > max(tile[0], score.box[0])
            # the image drawn at its box is the input: make_grid's cell i, scaled
            x, y = 2 + 30 * (i % 8), 2 + 30 * (i // 8)
            cell = Image.fromarray(grid.pixels[y:y + 28, x:x + 28]).convert("RGB")
            drawn = pixels[tile[1]:tile[3], tile[0]:tile[2]].astype(int)
            expected = np.asarray(cell.resize((tile[2] - tile[0], tile[3] - tile[1]), Image.Resampling.NEAREST))
            assert np.abs(drawn - expected).mean() < 20, f"image {i} is not drawn at its box"


def test_unlabelled_inputs_get_an_uncertainty_picture_without_the_label_numbers():
    callback = LatentUncertainty(k_neighbours=3)
    values = callback.measure(handmade_latents([0] * 12))  # an image folder without class folders: every label 0
    assert "uncertainty/mean" in values and "uncertainty/spearman_ink" in values
    assert not [key for key in values if "disagreement" in key or "class_" in key]  # drawn: test_images
    from lvae.labels import label_texts

    unlabelled, labelled = handmade_latents([0] * 12), handmade_latents([0] * 6 + [1] * 6)
    assert (unlabelled.labelled, labelled.labelled) == (False, True)
    # the pictures of fixed inputs write no "0" under every unlabelled input
    assert label_texts(unlabelled.label[:2], None, unlabelled.labelled) == ["", ""]
    assert label_texts(labelled.label[5:7], ["zero", "one"], labelled.labelled) == ["zero", "one"]


def test_unusable_latents_skip_the_pictures_with_a_warning():
    latents = handmade_latents([0] * 6 + [1] * 6)
    latents.mu[4, 0] = float("nan")
    with notices(r"latents.mu holds NaN"):
        assert LatentUncertainty(k_neighbours=3).prepare(None, None, latents, epoch=0) is None
    with notices("too few"):
        assert LatentUncertainty(k_neighbours=12).prepare(None, None, latents, epoch=0) is None


@pytest.mark.parametrize("build, message", [
    (lambda: PriorSamples(n_samples=0), "PriorSamples.n_samples=0"),
    (lambda: PriorSamples(manifold_steps=1), "PriorSamples.manifold_steps=1"),
    (lambda: PriorSamples(every_n_epochs=0), "PriorSamples.every_n_epochs=0"),
    (lambda: LatentUncertainty(n_show=0), "LatentUncertainty.n_show=0"),
    (lambda: LatentUncertainty(k_neighbours=0), "LatentUncertainty.k_neighbours=0"),
])
def test_bad_config_is_refused_on_the_spot(build, message):
    with pytest.raises(ConfigError, match=message):
        build()
