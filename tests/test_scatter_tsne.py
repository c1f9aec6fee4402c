"""LatentScatter and TSNEEmbedding as a user meets them: fit with them, then read back the PNGs, the GIFs, the
offline W&B run and the checkpoint; resume and see the map continue; and the refusals and warnings."""

import base64
import hashlib
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from conftest import assert_gif_shows_each_epoch, notices
import torch
import wandb
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from PIL import Image
from wandb_run import OfflineRun, read_run, records

from lvae.callbacks.latent_scatter import LatentScatter
from lvae.callbacks.tsne_embedding import TSNEEmbedding
from lvae import VAE, ConfigError, MNISTDataModule
from lvae.figures.canvas import PNG_DPI

# The fixture's validation split holds 30 inputs: t-SNE needs more than 3 x perplexity points.
SMALL_TSNE = {"perplexity": 5.0, "max_points": 200, "n_prior": 16}
PICTURES = {"scatter": LatentScatter, "tsne": TSNEEmbedding}


def fit(root: Path, data_dir: Path, callbacks: list, latent_dim: int, loggers: list, max_epochs: int = 2,
        checkpoint: bool = False, ckpt_path=None) -> L.Trainer:
    L.seed_everything(0)
    if checkpoint:
        callbacks = [*callbacks, ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)]
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=loggers, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=checkpoint)
    trainer.fit(VAE(latent_dim=latent_dim), MNISTDataModule(data_dir=str(data_dir), batch_size=64),
                ckpt_path=ckpt_path)
    return trainer


def finished_run(root: Path) -> OfflineRun:
    (run,) = read_run(root)
    return run


def fit_with_wandb(root: Path, data_dir: Path, callbacks: list, latent_dim: int, **kwargs) -> L.Trainer:
    """A fit logging to a CSVLogger (first: it owns the run folder, hence the PNGs) and an offline W&B run."""
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_SILENT", "true")
        loggers = [CSVLogger(root), WandbLogger(save_dir=str(root), offline=True, project="t")]
        try:
            trainer = fit(root, data_dir, callbacks, latent_dim, loggers, **kwargs)
        finally:
            wandb.finish()
    return trainer


@pytest.fixture(scope="module")
def z2_run(mnist_root, tmp_path_factory):
    """Two epochs of a Z=2 VAE, both pictures drawn in the drawing process (the default)."""
    root = tmp_path_factory.mktemp("z2")
    scatter, tsne = LatentScatter(), TSNEEmbedding(**SMALL_TSNE)
    trainer = fit_with_wandb(root, mnist_root, [scatter, tsne], latent_dim=2)
    run = finished_run(root)
    return trainer, scatter, tsne, run


@pytest.fixture(scope="module")
def z4_run(mnist_root, tmp_path_factory):
    """Two epochs of a Z=4 VAE, drawn in the training loop, with a last.ckpt; a second scatter shows two chosen
    dimensions with limits that widen."""
    root = tmp_path_factory.mktemp("z4")
    scatter, tsne = LatentScatter(background=False), TSNEEmbedding(**SMALL_TSNE, background=False)
    dims = LatentScatter(dims=(2, 3), auto_limits="grow", thumbnails=0, table_rows=0, background=False)
    trainer = fit_with_wandb(root, mnist_root, [scatter, dims, tsne], latent_dim=4, checkpoint=True)
    run = finished_run(root)
    return trainer, scatter, dims, tsne, run, root


def test_pngs_of_each_epoch_and_an_evolution_gif(z2_run):
    trainer, _, _, _ = z2_run
    for name, callback in PICTURES.items():
        width, height = callback.figsize
        folder = Path(trainer.log_dir) / "latents" / name
        for epoch in (0, 1):
            with Image.open(folder / f"epoch_{epoch:03d}.png") as png:
                assert png.format == "PNG"
                assert png.size == (round(width * PNG_DPI), round(height * PNG_DPI))
                assert len(set(png.convert("L").getdata())) > 10, f"{name} of epoch {epoch} is blank"
        assert_gif_shows_each_epoch(folder, 2)


def test_wandb_holds_pictures_and_scalars_on_the_epoch_axis_and_the_table_at_the_end(z2_run):
    _, _, _, run = z2_run
    for key in ("latents/scatter", "latents/tsne"):
        assert [row["epoch"] for row in run.rows_with(f"{key}/_type")] == [0, 1], key
        assert set(run.values(f"{key}/_type")) == {"image-file"}
    for key in ("latents/scatter", "latents/tsne", "tsne/knn_agreement", "tsne/seconds", "scatter/outside",
                "scatter/displacement", "tsne/displacement"):
        assert run.step_metrics[key] == "epoch"
    for key in ("tsne/knn_agreement", "tsne/seconds", "scatter/outside", "tsne/outside"):
        assert [row["epoch"] for row in run.rows_with(key)] == [0, 1], key
    for key in ("scatter/displacement", "tsne/displacement"):  # how far the points moved since the last epoch
        assert [row["epoch"] for row in run.rows_with(key)] == [1], key
        assert 0 < run.values(key)[0] < float("inf")
    assert run.values("scatter/outside") == [0, 0]  # the limits widen to take in every point
    assert all(0.0 <= value <= 1.0 for value in run.values("tsne/knn_agreement"))
    assert "Z=2" in run.values("latents/scatter/caption")[0]
    assert all("0 of 30 outside the limits" in caption for caption in run.values("latents/scatter/caption"))
    first, second = run.values("latents/tsne/caption")
    assert "started from PCA" in first and "started from the map of epoch 0" in second
    # Thumbnails make the table heavy: logged once, for the last epoch of fit.
    (table,) = run.rows_with(f"{LatentScatter.table_key}/_type")
    assert table["epoch"] == 1
    assert table[f"{LatentScatter.table_key}/_type"] == "table-file"
    assert table[f"{LatentScatter.table_key}/nrows"] == 30  # every followed input (fewer than table_rows)
    assert table[f"{LatentScatter.table_key}/ncols"] == 4 + 2  # index, label, uncertainty, image, mu_0, mu_1
    assert run.step_metrics[LatentScatter.table_key] == "epoch"
    # The evolution GIFs, made in the drawing process at the end of fit, reach W&B as videos.
    for key in ("latents/scatter/evolution", "latents/tsne/evolution"):
        assert run.values(f"{key}/_type") == ["video-file"], key


def test_the_tables_thumbnails_are_the_pngs_the_drawing_process_wrote(z2_run, mnist_root):
    # The drawing process writes the table rows' thumbnails at the first drawn epoch; the table logged at the end of
    # fit hands W&B those files, so the training process encodes none of them with the user waiting.
    trainer, _, _, run = z2_run
    pngs = sorted((Path(trainer.log_dir) / "latents" / "scatter" / ".table").glob("*.png"), key=lambda p: int(p.stem))
    assert len(pngs) == 30  # one per row, named by dataset index
    data = MNISTDataModule(data_dir=str(mnist_root))
    data.setup("fit")
    images = data.splits["val"][0].numpy()  # (30, 28, 28): what the dataset index of a validation input indexes
    for png in pngs:
        with Image.open(png) as thumbnail:
            assert np.array_equal(np.asarray(thumbnail), images[int(png.stem)]), png.name
    (table,) = [record.artifact for record in records(next(run.folder.glob("*.wandb")))
                if record.WhichOneof("record_type") == "artifact" and record.artifact.type == "run_table"]
    logged = {entry.digest for entry in table.manifest.contents if entry.path.startswith("media/images/")}
    assert logged == {base64.b64encode(hashlib.md5(png.read_bytes()).digest()).decode() for png in pngs}


def test_tsne_of_each_epoch_starts_from_the_last(z2_run):
    _, _, tsne, _ = z2_run
    state = tsne.state_dict()
    assert state["embedding_epoch"] == 1
    assert state["init_epoch"] == 0
    assert state["embedding"].shape == (30, 2)
    assert torch.equal(state["index"], state["index"].sort().values)

    copy = TSNEEmbedding(**SMALL_TSNE)
    copy.load_state_dict(state)
    again = copy.state_dict()
    assert torch.equal(again["embedding"], state["embedding"]) and torch.equal(again["index"], state["index"])
    assert (again["embedding_epoch"], again["init_epoch"]) == (1, 0)


def test_scatter_keeps_its_limits_positions_and_thumbnails(z2_run):
    _, scatter, _, _ = z2_run
    state = scatter.state_dict()
    xmin, xmax, ymin, ymax = state["limits"]
    assert xmin < xmax and ymin < ymax
    assert state["view"] == "z" and state["basis"] is None  # Z=2 is drawn as it is
    assert state["index"].shape == (30,) and state["points"].shape == (30, 2)  # epoch 1, as drawn
    assert len(state["thumbnails"]) == 12 and len(set(state["thumbnails"].tolist())) == 12


def test_z_above_two_is_drawn_as_a_pca_and_saved_in_the_checkpoint(z4_run):
    trainer, scatter, _, tsne, run, root = z4_run
    captions = run.values("latents/scatter/caption")
    assert len(captions) == 2 and all("PCA of Z=4 to 2-D" in caption for caption in captions)
    assert (Path(trainer.log_dir) / "latents" / "tsne" / "epoch_001.png").is_file()
    # Drawn in the loop (background=False), so the last checkpoint already holds epoch 1's map.
    callbacks = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"]
    saved = callbacks[tsne.state_key]
    assert (saved["embedding_epoch"], saved["init_epoch"]) == (1, 0)
    assert torch.equal(saved["embedding"], tsne.state_dict()["embedding"])
    kept = callbacks[scatter.state_key]
    assert kept["view"] == "pca" and kept["limits"] == scatter.state_dict()["limits"]
    assert kept["basis"].shape == (2, 4) and torch.equal(kept["basis"], scatter.state_dict()["basis"])


def test_two_scatters_side_by_side_chosen_dimensions_with_growing_limits(z4_run):
    trainer, scatter, dims, _, run, root = z4_run
    assert dims.names == ("scatter_dims_2_3",) and dims.state_key != scatter.state_key
    for epoch in (0, 1):
        assert (Path(trainer.log_dir) / "latents" / "scatter_dims_2_3" / f"epoch_{epoch:03d}.png").is_file()
    captions = run.values("latents/scatter_dims_2_3/caption")
    assert len(captions) == 2
    assert all("dimensions 2 and 3 of Z=4" in caption and "0 of 30 outside" in caption for caption in captions)
    assert [row["epoch"] for row in run.rows_with("scatter_dims_2_3/displacement")] == [1]
    assert len(run.rows_with(f"{LatentScatter.table_key}/_type")) == 1  # table_rows=0: only the PCA scatter's
    saved = torch.load(root / "checkpoints" / "last.ckpt", weights_only=True)["callbacks"][dims.state_key]
    assert saved["limits"] == dims.state_dict()["limits"] and saved["view"] == "dims 2,3"
    assert saved["thumbnails"] is None  # thumbnails=0


def test_resume_continues_the_map_and_keeps_the_limits(z4_run, mnist_root):
    _, scatter, dims, _, _, root = z4_run
    resumed_scatter, resumed_tsne = LatentScatter(background=False), TSNEEmbedding(**SMALL_TSNE, background=False)
    resumed_dims = LatentScatter(dims=(2, 3), auto_limits="grow", thumbnails=0, table_rows=0, background=False)
    resumed_root = root / "resumed"
    fit(resumed_root, mnist_root, [resumed_scatter, resumed_dims, resumed_tsne], latent_dim=4,
        loggers=[CSVLogger(resumed_root)],
        max_epochs=3, checkpoint=True, ckpt_path=root / "checkpoints" / "last.ckpt")
    state = resumed_tsne.state_dict()
    assert (state["embedding_epoch"], state["init_epoch"]) == (2, 1)  # epoch 2 started from the saved map
    assert resumed_scatter.state_dict()["limits"] == scatter.state_dict()["limits"]
    assert torch.equal(resumed_scatter.state_dict()["thumbnails"], scatter.state_dict()["thumbnails"])
    (x0, x1, y0, y1), (u0, u1, v0, v1) = dims.state_dict()["limits"], resumed_dims.state_dict()["limits"]
    assert u0 <= x0 and x1 <= u1 and v0 <= y0 and y1 <= v1  # grown from the saved limits, never narrowed


def test_too_few_points_warn_and_skip_the_tsne(mnist_root, tmp_path):
    # 5 followed inputs: too few for perplexity 5 even though max_points allows 2000. Not an error: a warning,
    # no t-SNE picture, and the scatter is still drawn.
    scatter, tsne = LatentScatter(background=False), TSNEEmbedding(perplexity=5.0, n_prior=4)
    trainer = L.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path), callbacks=[scatter, tsne],
                        enable_progress_bar=False, enable_model_summary=False)
    with notices(r"5 validation means .* too few for TSNEEmbedding.perplexity=5"):
        trainer.validate(VAE(latent_points=5), MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
    latents = Path(trainer.log_dir) / "latents"
    assert (latents / "scatter" / "epoch_000.png").is_file()
    assert not (latents / "tsne").exists()
    assert tsne.state_dict()["embedding"] is None


def test_bad_values_are_refused_naming_the_argument():
    with pytest.raises(ConfigError, match=r"TSNEEmbedding.perplexity=30.* TSNEEmbedding.max_points=90"):
        TSNEEmbedding(perplexity=30.0, max_points=90)
    with pytest.raises(ConfigError, match=r"TSNEEmbedding.negative_gradient_method='exact'"):
        TSNEEmbedding(negative_gradient_method="exact")
    with pytest.raises(ConfigError, match=r"LatentScatter.dims=\(3, 3\)"):
        LatentScatter(dims=(3, 3))
    with pytest.raises(ConfigError, match=r"LatentScatter.limits="):
        LatentScatter(limits=(1.0, -1.0, 0.0, 1.0))
    with pytest.raises(ConfigError, match=r"LatentScatter.uncertainty='colour'"):
        LatentScatter(uncertainty="colour")
    with pytest.raises(ConfigError, match=r"TSNEEmbedding.affinity_method='brute'.*'exact'"):
        TSNEEmbedding(affinity_method="brute")
    with pytest.raises(ConfigError, match=r"TSNEEmbedding.prior_n_iter=0 must be >= 1"):
        TSNEEmbedding(prior_n_iter=0)


def test_a_resumed_run_starts_from_the_last_drawn_map_even_if_the_checkpoint_predates_it(mnist_root, tmp_path):
    # Drawn in the drawing process: last.ckpt of epoch 1 is written while epoch 1's map is still being computed.
    def run(max_epochs: int, ckpt_path=None) -> TSNEEmbedding:
        tsne = TSNEEmbedding(**SMALL_TSNE)
        fit(tmp_path, mnist_root, [tsne], latent_dim=4, loggers=[CSVLogger(tmp_path, name="", version="")],
            max_epochs=max_epochs, checkpoint=True, ckpt_path=ckpt_path)
        return tsne

    run(2)
    assert (tmp_path / "latents" / "tsne" / "map_001.npz").is_file()  # written beside epoch_001.png
    resumed = run(3, ckpt_path=tmp_path / "checkpoints" / "last.ckpt")
    state = resumed.state_dict()
    assert (state["embedding_epoch"], state["init_epoch"]) == (2, 1)  # from epoch 1's map, whatever the checkpoint


def test_a_one_dimensional_latent_space_is_drawn_along_one_axis(mnist_root, tmp_path):
    scatter, tsne = LatentScatter(background=False), TSNEEmbedding(**SMALL_TSNE, background=False)
    with notices(r"TSNEEmbedding: no t-SNE for epoch 0: a 1-D latent space has nothing"):
        trainer = fit(tmp_path, mnist_root, [scatter, tsne], latent_dim=1, loggers=[CSVLogger(tmp_path)])
    latents = Path(trainer.log_dir) / "latents"
    assert sorted(p.name for p in (latents / "scatter").glob("*.png")) == ["epoch_000.png", "epoch_001.png"]
    assert not (latents / "tsne").exists()
    assert scatter.state_dict()["view"] == "z1"
