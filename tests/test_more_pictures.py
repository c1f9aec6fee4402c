"""LatentTraversal, LatentInterpolation and Reconstructions as a user meets them: fit with them, then read back the
PNGs, the offline W&B run, TensorBoard and the checkpoint; resume; colour images of another size; and how the fixed
inputs are chosen."""

import hashlib
import io
import re
from dataclasses import replace
from pathlib import Path

import lightning as L
import numpy as np
import pytest
from conftest import assert_gif_shows_each_epoch, notices
import torch
import wandb
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from PIL import Image
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset
from wandb_run import read_run

from lvae import VAE, ConfigError, Latents, MNISTDataModule
from lvae.callbacks import LatentInterpolation, LatentTraversal, Reconstructions
from lvae.fixed_inputs import FixedInputs
from lvae.metrics import active_dims, kl_per_dim
from lvae.picture_callback import PictureCallback

NAMES = ("traversals", "interpolations", "reconstructions")


class Probe(PictureCallback):
    """Keeps each epoch's latents, the very object every picture of the epoch was made from."""

    def __init__(self):
        super().__init__(background=False)
        self.seen: list[Latents] = []

    def prepare(self, trainer, pl_module, latents, epoch):
        self.seen.append(latents)
        return None


def pictures() -> list[PictureCallback]:
    return [LatentTraversal(), LatentInterpolation(), Reconstructions()]


def fit(model: L.LightningModule, callbacks: list, logger, max_epochs: int = 2, ckpt_path=None, **data) -> L.Trainer:
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=max_epochs, accelerator="cpu", logger=logger, callbacks=callbacks,
                        enable_progress_bar=False, enable_model_summary=False,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))
    trainer.fit(model, ckpt_path=ckpt_path, **data)
    return trainer


@pytest.fixture(scope="module")
def run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two epochs of a Z=8 VAE with the three pictures, logged to TensorBoard and an offline W&B run."""
    root = tmp_path_factory.mktemp("more")
    probe, shown = Probe(), pictures()
    checkpoints = ModelCheckpoint(dirpath=root / "checkpoints", save_last=True)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("WANDB_SILENT", "true")
        loggers = [TensorBoardLogger(root, name="", version=""), WandbLogger(save_dir=str(root), offline=True,
                                                                             project="t")]
        try:
            L.seed_everything(0)
            model = VAE(latent_dim=8, beta=0.1)  # beta < 1: some dimensions active within the 12 steps
            trainer = fit(model, [*shown, probe, checkpoints], loggers,
                          datamodule=MNISTDataModule(data_dir=str(mnist_root), batch_size=64))
        finally:
            wandb.finish()
    (wandb_run,) = read_run(root)
    return dict(root=root, trainer=trainer, model=model, probe=probe, shown=shown, wandb=wandb_run,
                last=root / "checkpoints" / "last.ckpt")


def test_each_picture_is_drawn_every_epoch_and_the_same_png_reaches_wandb_and_tensorboard(run: dict) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run["root"]), size_guidance={"images": 0})
    events.Reload()
    for name in NAMES:
        folder = run["root"] / "latents" / name
        pngs = [folder / f"epoch_{epoch:03d}.png" for epoch in (0, 1)]
        rows = run["wandb"].rows_with(f"latents/{name}/_type")
        assert [row["epoch"] for row in rows] == [0, 1], name
        assert run["wandb"].step_metrics[f"latents/{name}"] == "epoch"
        # W&B keeps the file as it is: its hash is the PNG's
        assert [row[f"latents/{name}/sha256"] for row in rows] == \
               [hashlib.sha256(png.read_bytes()).hexdigest() for png in pngs], name
        images = events.Images(f"latents/{name}")
        assert [image.step for image in images] == [0, 1], name
        for png, image in zip(pngs, images):
            with Image.open(png) as drawn:
                pixels = np.asarray(drawn.convert("RGB"))
                assert len(set(drawn.convert("L").getdata())) > 10, f"{png} is blank"
            logged = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
            np.testing.assert_array_equal(logged, pixels)  # TensorBoard shows the same pixels
        assert_gif_shows_each_epoch(folder, 2)


def test_traversal_rows_are_the_active_dimensions_by_the_kl_logged(run: dict) -> None:
    history, probe, ordered = run["wandb"], run["probe"], 0
    for epoch, caption in enumerate(history.values("latents/traversals/caption")):
        latents = probe.seen[epoch]
        row = next(r for r in history.rows_with("traversals/kl_0") if r["epoch"] == epoch)
        logged = torch.tensor([row[f"traversals/kl_{d}"] for d in range(8)])
        torch.testing.assert_close(logged, kl_per_dim(latents.mu, latents.logvar), rtol=1e-6, atol=1e-7)
        rows = [int(d) for d in re.findall(r"z_(\d+) [-\d.e+]+[;.]", caption.split("Inputs:")[0])]
        active = active_dims(latents.mu)
        assert rows == sorted((d for d in range(8) if active[d]), key=lambda d: -logged[d]), caption
        if len(rows) < 8:
            assert f"Left out: {8 - len(rows)} inactive dimension" in caption, caption
        ordered += len(rows) > 1
    assert ordered, "no epoch with two active dimensions to order"


@pytest.mark.parametrize("position, hollow", [(3.1, True), (-2.6, True), (1.0, False)])
def test_the_traversal_caption_explains_its_orange_marks(tmp_path: Path, position: float, hollow: bool) -> None:
    from lvae.figures import traversal

    n, dims, values = 2, [3, 0], np.linspace(-2.5, 2.5, 5)
    images = np.zeros((n, 8, 8), dtype=np.uint8)
    positions = np.array([[0.4, -0.2], [position, 0.0]])  # input 1's mean in z_3 is inside or beyond the span
    drawn = traversal.draw(str(tmp_path / "epoch_000.png"), 0, images, images, ["seven", "two"], [11, 12],
                           np.zeros((n, len(dims), len(values), 8, 8), dtype=np.uint8), values, dims,
                           np.array([0.5, 0.0, 0.0, 1.5]), positions, [1, 2], [])
    ((_, path, caption),) = drawn.pictures
    assert "a filled orange triangle marks where the input's own mean lies in that dimension" in caption, caption
    assert "a hollow one at the row's end, a mean outside -2.5 ... +2.5" in caption, caption
    assert (f"(index 12: z_3 = {position:+.2f})" in caption) == hollow, caption
    assert ("(none here)" in caption) == (not hollow), caption
    assert Path(path).is_file()


def test_interpolation_ends_are_the_reconstructions_of_the_two_inputs(run: dict) -> None:
    interpolation, reconstructions = run["shown"][1], run["shown"][2]
    # Means far apart and a decoder that tells them apart (a fresh one: 12 steps teach the fixture's little), so
    # that a swapped or shifted end would show.
    latents = run["probe"].seen[-1]
    latents = replace(latents, mu=3 * torch.randn(latents.mu.shape, generator=torch.Generator().manual_seed(0)))
    torch.manual_seed(0)
    model, trainer = VAE(latent_dim=8), run["trainer"]
    line = interpolation.prepare(trainer, model, latents, epoch=1).kwargs
    recon = reconstructions.prepare(trainer, model, latents, epoch=1).kwargs
    means = dict(zip(recon["index"], recon["means"]))  # each input's reconstruction from its mean
    images = dict(zip(latents.index.tolist(), latents.image))
    assert len(line["index"]) == 5
    for p, (a, b) in enumerate(line["index"]):
        assert images[a].ne(0).any() and not torch.equal(images[a], images[b])
        np.testing.assert_array_equal(line["ends"][p], np.stack([images[a][0].numpy(), images[b][0].numpy()]))
        for end, index in ((0, a), (-1, b)):
            # the same decoder on batches of another size: equal up to the rounding of the last pixel value
            assert np.abs(line["lines"][p, end].astype(int) - means[index].astype(int)).max() <= 1, (p, end)
        assert np.abs(line["lines"][p, 0].astype(int) - line["lines"][p, -1].astype(int)).max() > 50
    labels = dict(zip(latents.index.tolist(), latents.label.tolist()))
    assert all(labels[a] != labels[b] for a, b in line["index"])  # pairs of different labels


def test_reconstructions_show_the_nll_validation_scored_for_the_draw_shown(run: dict) -> None:
    reconstructions, latents, trainer = run["shown"][2], run["probe"].seen[-1], run["trainer"]
    drawn = reconstructions.prepare(trainer, run["model"], latents, epoch=1)
    recon = dict(zip(latents.index.tolist(), latents.recon.tolist()))
    assert drawn.kwargs["nll"] == [recon[i] for i in drawn.kwargs["index"]]
    caption = run["wandb"].values("latents/reconstructions/caption")[-1]
    assert "the draw val/recon scores" in caption
    for i in drawn.kwargs["index"]:
        assert f"(index {i}, NLL {recon[i]:.1f})" in caption
    # 20 inputs, evenly over the labels, in label order one turn after the other: first one of each label, then a
    # second of each that has two, then the rest
    labels = dict(zip(latents.index.tolist(), latents.label.tolist()))
    shown, count = [labels[i] for i in drawn.kwargs["index"]], torch.bincount(latents.label).tolist()
    twice = [c for c in range(10) if count[c] >= 2]
    assert shown[:10] == list(range(10)) and shown[10:10 + len(twice)] == twice, (shown, count)
    assert shown[10 + len(twice):] == sorted(shown[10 + len(twice):])


def test_resume_keeps_the_inputs_and_pairs_of_the_checkpoint(run: dict, mnist_root: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(run["last"], weights_only=True)
    for callback in run["shown"]:  # what was drawn is what the checkpoint holds
        saved = checkpoint["callbacks"][callback.state_key]["inputs"]["index"]
        assert torch.equal(saved, callback.inputs.index)
    # Other inputs than seed 0 would choose (pairs swapped): the resumed run must keep the checkpoint's.
    elsewhere = {}
    for callback in run["shown"]:
        state = checkpoint["callbacks"][callback.state_key]["inputs"]
        state["index"] = elsewhere[callback.state_key] = state["index"].flip(0)
    torch.save(checkpoint, tmp_path / "elsewhere.ckpt")
    probe, shown = Probe(), pictures()
    trainer = fit(VAE(latent_dim=8), [*shown, probe], CSVLogger(tmp_path), max_epochs=3,
                  ckpt_path=tmp_path / "elsewhere.ckpt", datamodule=MNISTDataModule(data_dir=str(mnist_root),
                                                                                     batch_size=64))
    assert len(probe.seen) == 1  # epoch 2 only
    for callback in shown:
        assert torch.equal(callback.inputs.index, elsewhere[callback.state_key]), type(callback).__name__
        assert (Path(trainer.log_dir) / "latents" / callback.names[0] / "epoch_002.png").is_file()


HEIGHT, WIDTH = 20, 36  # colour, neither square nor MNIST's size


class ColourVAE(L.LightningModule):
    """A module lvae did not write, on colour images: `encode` and `decode` only."""

    def __init__(self, latent_dim: int = 4):
        super().__init__()
        pixels = 3 * HEIGHT * WIDTH
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(pixels, 64), nn.ReLU(), nn.Linear(64, 2 * latent_dim))
        self.head = nn.Sequential(nn.Linear(latent_dim, 64), nn.ReLU(), nn.Linear(64, pixels))

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.body(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.head(z)).view(-1, 3, HEIGHT, WIDTH)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        mu, logvar = self.encode(batch[0])
        x_hat = self.decode(mu + torch.randn_like(mu) * torch.exp(0.5 * logvar))
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        return ((x_hat - batch[0]).pow(2).sum((1, 2, 3)) * 20 + kl).mean()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=3e-3)


def colour_images(n: int, seed: int) -> TensorDataset:
    """Ten classes, each a background colour of its own with a white block somewhere on it."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 10
    colours = torch.rand(10, 3, generator=torch.Generator().manual_seed(0))  # (10, 3)
    x = colours[labels][:, :, None, None].repeat(1, 1, HEIGHT, WIDTH)  # (n, 3, H, W)
    for i in range(n):
        top, left = torch.randint(0, HEIGHT - 8, (2,), generator=generator).tolist()
        x[i, :, top:top + 8, left:left + 8] = 1.0
    return TensorDataset(x, labels)


def test_colour_images_of_any_size_from_a_module_lvae_did_not_write(tmp_path: Path) -> None:
    probe, shown = Probe(), [LatentTraversal(background=False), LatentInterpolation(background=False),
                             Reconstructions(background=False)]
    trainer = fit(ColourVAE(), [*shown, probe], CSVLogger(tmp_path), max_epochs=2,
                  train_dataloaders=DataLoader(colour_images(200, 0), batch_size=20, shuffle=True),
                  val_dataloaders=DataLoader(colour_images(40, 1), batch_size=20))
    for name in NAMES:
        for epoch in (0, 1):
            with Image.open(Path(trainer.log_dir) / "latents" / name / f"epoch_{epoch:03d}.png") as png:
                rgb = np.asarray(png.convert("RGB")).astype(int)
            coloured = (rgb.max(axis=2) - rgb.min(axis=2) > 60).sum()  # pixels far from grey
            assert coloured > 3 * HEIGHT * WIDTH, (name, epoch, coloured)
    drawn = shown[2].prepare(trainer, trainer.lightning_module, probe.seen[-1], epoch=1)
    assert drawn.kwargs["inputs"].shape == (20, HEIGHT, WIDTH, 3) and drawn.kwargs["means"].shape[1:] == \
        (HEIGHT, WIDTH, 3)
    assert drawn.kwargs["nll"] is None
    ((_, _, caption),) = drawn().pictures
    assert "No NLL: the module exposes no likelihood to lvae" in caption


def handmade(labels: list[int], first_index: int = 100) -> Latents:
    n = len(labels)
    return Latents(epoch=0, index=torch.arange(first_index, first_index + n), label=torch.tensor(labels),
                   mu=torch.zeros(n, 2), logvar=torch.zeros(n, 2), kl=torch.zeros(n),
                   image=torch.zeros(n, 1, 4, 4, dtype=torch.uint8))


def test_inputs_are_chosen_evenly_over_labels_and_checked_against_the_latents() -> None:
    latents = handmade([0, 1, 2] * 4 + [3])  # 13 inputs, labels 0-2 four times, label 3 once
    chosen = FixedInputs("Test", 8, seed=0)
    labels = latents.label[chosen.rows(latents)].tolist()
    assert sorted(labels.count(c) for c in range(4)) == [1, 2, 2, 3]  # in turns: 4 labels, then the 3 left
    assert all(a != b for a, b in zip(labels[0::2], labels[1::2]))  # consecutive inputs differ in label
    again = FixedInputs("Test", 8, seed=0)
    assert torch.equal(again.rows(latents), chosen.rows(latents))  # seeded
    assert not torch.equal(FixedInputs("Test", 8, seed=1).rows(latents), chosen.rows(latents))

    resumed = FixedInputs("Test", 8, seed=0)
    resumed.load_state_dict({**chosen.state_dict(), "index": chosen.index.flip(0)})
    assert torch.equal(latents.index[resumed.rows(latents)], chosen.index.flip(0))  # the checkpoint's, kept
    moved = handmade([0, 1, 2] * 4 + [3], first_index=0)  # other dataset indices: the old ones are gone
    with notices(r"Test: the inputs it showed \(dataset indices \[.*\]\) are not among"):
        rows = resumed.rows(moved)
    assert torch.equal(moved.index[rows], FixedInputs("Test", 8, seed=0).rows(moved))
    with notices("the checkpoint showed 8 inputs chosen with seed 0, this run asks for 4"):
        FixedInputs("Test", 4, seed=0).load_state_dict(chosen.state_dict())


@pytest.mark.parametrize("build, message", [
    (lambda: LatentTraversal(steps=2), "LatentTraversal.steps=2 must be >= 3"),
    (lambda: LatentTraversal(span=0), "LatentTraversal.span=0 must be > 0"),
    (lambda: LatentTraversal(n_inputs=0), "LatentTraversal.n_inputs=0 must be >= 1"),
    (lambda: LatentInterpolation(n_pairs=0), "LatentInterpolation.n_pairs=0 must be >= 1"),
    (lambda: LatentInterpolation(steps=1), "LatentInterpolation.steps=1 must be >= 2"),
    (lambda: Reconstructions(n_inputs=0), "Reconstructions.n_inputs=0 must be >= 1"),
    (lambda: Reconstructions(every_n_epochs=0), "Reconstructions.every_n_epochs=0 must be >= 1"),
])
def test_bad_config_is_refused_on_the_spot(build, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        build()
