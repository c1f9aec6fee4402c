"""The pictures read right and compare across epochs: the PCA view keeps its orientation on real digits, thumbnails
and decoded draws never cover one another, nothing is dropped silently, the manifold covers the means, the
posterior ellipses are the posteriors, legends carry the dataset's class names, and a resume continues all of it."""

import csv
import math
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from conftest import toy_digits
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import EllipseCollection
from matplotlib.figure import Figure
from matplotlib.legend import Legend
from matplotlib.transforms import Bbox

from lvae import VAE, Latents, MNISTDataModule
from lvae.callbacks import LatentScatter, PriorSamples, TSNEEmbedding
from lvae.data import write_idx
from lvae.drawing import Job
from lvae.figures import prior, scatter, tsne
from lvae.sink import PictureSink
from lvae.tsne import TSNESteps

REAL_EPOCHS = 5


class KeepFrames(Callback):
    """After each validation epoch: the epoch's latents and the positions the scatter drew (its state)."""

    def __init__(self, scatter: LatentScatter):
        self.scatter, self.latents, self.drawn = scatter, [], []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: VAE) -> None:
        if not trainer.sanity_checking:
            self.latents.append(pl_module.validation_latents())
            state = self.scatter.state_dict()
            self.drawn.append((state["index"].clone(), state["points"].clone()))


@pytest.fixture(scope="module")
def real_z20(real_mnist_root, tmp_path_factory):
    """A few epochs of the default VAE (Z=20) on real digits, the scatter drawn in the loop, scalars in a CSV."""
    root = tmp_path_factory.mktemp("real_z20")
    L.seed_everything(0)
    scatter = LatentScatter(table_rows=0, background=False)
    keep = KeepFrames(scatter)
    trainer = L.Trainer(max_epochs=REAL_EPOCHS, accelerator="cpu", logger=CSVLogger(root), callbacks=[scatter, keep],
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on 2 cores shared with other processes, 2 threads made this fit 8 times slower
    try:
        trainer.fit(VAE(latent_dim=20), MNISTDataModule(data_dir=str(real_mnist_root), batch_size=128))
    finally:
        torch.set_num_threads(threads)
    with open(Path(trainer.log_dir) / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    return trainer, scatter, keep, rows


def logged(rows: list[dict], key: str) -> dict[int, float]:
    return {int(float(row["epoch"])): float(row[key]) for row in rows if row.get(key)}


def test_the_pca_view_keeps_its_orientation_on_real_digits(real_z20):
    _, _, keep, rows = real_z20
    for epoch in range(1, REAL_EPOCHS):
        (index, now), (before_index, before) = keep.drawn[epoch], keep.drawn[epoch - 1]
        assert torch.equal(index, before_index)  # the same followed inputs
        for axis, name in enumerate("xy"):
            corr = float(np.corrcoef(now[:, axis], before[:, axis])[0, 1])
            assert corr > 0, f"the {name} axis mirrored from epoch {epoch - 1} to {epoch} (correlation {corr:+.2f})"
    # How far the followed points moved since the epoch before, and how many fell outside the limits: logged.
    assert sorted(logged(rows, "scatter/displacement")) == list(range(1, REAL_EPOCHS))
    assert all(0 < value < math.inf for value in logged(rows, "scatter/displacement").values())
    assert logged(rows, "scatter/outside") == {epoch: 0.0 for epoch in range(REAL_EPOCHS)}


def axis_shares(text: str) -> int:
    return int(text.split(", ")[1].split("%")[0])


def test_titles_agree_with_the_axes_and_thumbnails_are_one_or_two_per_label(real_z20, tmp_path):
    trainer, _, keep, _ = real_z20
    callback = with_sink(LatentScatter(table_rows=0), tmp_path)
    job = sent(callback, callback.prepare(trainer, None, keep.latents[0], epoch=0), epoch=0)
    x, y = job.kwargs["axis_labels"]
    assert x.startswith("PC1, ") and y.startswith("PC2, ")
    assert f"({axis_shares(x) + axis_shares(y)}% of variance)" in job.kwargs["title"]
    counts = np.bincount(job.kwargs["thumb_labels"], minlength=10)
    assert counts.min() >= 1 and counts.max() <= 2 and counts.sum() == 12
    later = callback.prepare(trainer, None, keep.latents[-1], epoch=REAL_EPOCHS - 1)  # the same inputs
    assert np.array_equal(later.kwargs["thumb_images"], job.kwargs["thumb_images"])
    assert_apart(thumbnail_boxes(figure_of(later)), len(later.kwargs["thumb_images"]))


def with_sink(callback, root: Path):
    callback.sink = PictureSink(L.Trainer(logger=False, enable_progress_bar=False), root)
    return callback


def sent(callback, job: Job, epoch: int) -> Job:
    """`job`, sent to be drawn as the picture callback sends it: the frame the next picture continues moves on."""
    return callback.commit(job, epoch)


def figure_of(job: Job) -> Figure:
    """The figure a scatter job draws, before it is written (and cleared)."""
    fig, _ = scatter.figure(**{k: v for k, v in job.kwargs.items() if k not in ("name", "path", "previous")})
    return fig


def thumbnail_boxes(fig: Figure) -> list[Bbox]:
    """The pixel boxes of the thumbnails in `fig`, as drawn: the opaque patches of the one figure image that holds
    them all (thumbnails that touched would be one patch)."""
    from scipy import ndimage

    FigureCanvasAgg(fig).draw()
    boxes = []
    for image in fig.images:
        x0, x1, y0, y1 = image.get_extent()
        patches, _ = ndimage.label(np.asarray(image.get_array())[..., 3] > 0)
        for rows, cols in ndimage.find_objects(patches):  # the array's first row is the image's top
            boxes.append(Bbox.from_extents(x0 + cols.start, y1 - rows.stop, x0 + cols.stop, y1 - rows.start))
    return boxes


def assert_apart(boxes: list, expected: int) -> None:
    assert len(boxes) == expected
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            overlap = min(a.x1, b.x1) - max(a.x0, b.x0), min(a.y1, b.y1) - max(a.y0, b.y0)
            assert min(overlap) <= 0, f"thumbnails at {a.bounds} and {b.bounds} overlap"


def latents(mu: torch.Tensor, logvar: torch.Tensor = None, labels: torch.Tensor = None,
            shape: tuple[int, int, int] = (1, 28, 28)) -> Latents:
    n = len(mu)
    labels = torch.arange(n) % 10 if labels is None else labels
    logvar = torch.zeros_like(mu) if logvar is None else logvar
    image = torch.zeros(n, *shape, dtype=torch.uint8)  # (N, C, H, W)
    image[:, 0, 4:-4, 10:18] = 255
    return Latents(epoch=0, index=torch.arange(n), label=labels, mu=mu, logvar=logvar,
                   kl=torch.zeros(n), image=image)


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 20, 32)], ids=["grey", "colour_wide"])
def test_thumbnails_of_inputs_at_one_spot_are_placed_apart_clear_of_the_points(tmp_path, shape):
    mu = torch.randn(200, 2, generator=torch.Generator().manual_seed(0))
    mu[:12] = 0.0  # every input drawn as a thumbnail sits at the same spot
    callback = with_sink(LatentScatter(thumbnails=12), tmp_path)
    job = callback.prepare(L.Trainer(logger=False), None, latents(mu, labels=torch.arange(200) % 6, shape=shape),
                           epoch=0)
    fig = figure_of(job)
    boxes = thumbnail_boxes(fig)
    assert_apart(boxes, 12)
    anchor = fig.axes[0].transData.transform((0.0, 0.0))
    assert not any(box.contains(*anchor) for box in boxes)  # the point itself stays visible
    assert sorted(np.bincount(job.kwargs["thumb_labels"])) == [2] * 6  # two per label


def test_decoded_prior_draws_at_one_spot_do_not_cover_one_another():
    steps = TSNESteps(perplexity=5.0, early_exaggeration_iter=0, n_iter=1, warm_early_exaggeration_iter=0,
                      warm_n_iter=1, negative_gradient_method="bh", affinity_method="exact", n_jobs=1, seed=0,
                      prior_n_iter=1, knn_k=10, figsize=TSNEEmbedding.figsize, axes_rect=TSNEEmbedding.axes_rect)
    points = np.random.default_rng(0).normal(size=(300, 2))
    draws = np.zeros((64, 2))  # 64 prior draws placed at one spot
    images = np.full((64, 28, 28), 200, dtype=np.uint8)
    fig, caption = tsne.figure(steps, points, np.arange(300) % 10, None, draws, images, 0.5, None, 0)
    boxes = thumbnail_boxes(fig)
    assert 1 <= len(boxes) < 64
    assert_apart(boxes, len(boxes))
    assert f"64 prior draws z ~ N(0, I) placed in the map, {len(boxes)} shown decoded" in caption


def inside_the_figure(fig: Figure, text) -> bool:
    """Whether the drawn text lies wholly inside the PNG."""
    box = text.get_window_extent(FigureCanvasAgg(fig).get_renderer())
    return 0 <= box.x0 and box.x1 <= fig.bbox.width and 0 <= box.y0 and box.y1 <= fig.bbox.height


def crowd(n: int, seed: int) -> torch.Tensor:
    """n means (n, 2) in ten overlapping clusters, as a VAE's are: dense in the middle."""
    generator = torch.Generator().manual_seed(seed)
    centres = 1.5 * torch.randn(10, 2, generator=generator)
    return centres[torch.arange(n) % 10] + torch.randn(n, 2, generator=generator)


def test_the_z2_title_stays_inside_the_picture_when_the_limits_widen(tmp_path):
    mu, logvar = crowd(2000, 0), torch.full((2000, 2), -3.0)
    callback = with_sink(LatentScatter(uncertainty="ellipse"), tmp_path)
    job = callback.prepare(L.Trainer(logger=False), None, latents(mu, logvar), epoch=12)
    widened = dict(job.kwargs, detail=job.kwargs["detail"] + "; limits widened")  # as a later epoch's says
    fig = figure_of(Job(job.target, widened))
    title = fig.axes[0].title
    assert "limits widened" in title.get_text() and "0 of 2000 outside the limits" in title.get_text()
    assert inside_the_figure(fig, title), title.get_window_extent(FigureCanvasAgg(fig).get_renderer()).bounds


@pytest.mark.parametrize("uncertainty", ["size", "ellipse"])
def test_thumbnails_cover_no_point_where_the_points_crowd(tmp_path, uncertainty):
    callback = with_sink(LatentScatter(uncertainty=uncertainty), tmp_path)
    logvar = torch.randn(2000, 2, generator=torch.Generator().manual_seed(1)) - 2  # dots of every size
    job = callback.prepare(L.Trainer(logger=False), None, latents(crowd(2000, 1), logvar), epoch=0)
    fig = figure_of(job)
    boxes = thumbnail_boxes(fig)  # as drawn in the PNG
    assert_apart(boxes, 12)
    assert "thumbnails left out" not in fig.axes[0].title.get_text()
    centres = fig.axes[0].transData.transform(job.kwargs["points"])  # (N, 2) pixels
    radius = np.sqrt(job.kwargs["sizes"]) / 2 * fig.dpi / 72  # (N,) each dot's radius in pixels
    for box in boxes:
        gap_x = np.maximum(box.x0 - centres[:, 0], centres[:, 0] - box.x1)
        gap_y = np.maximum(box.y0 - centres[:, 1], centres[:, 1] - box.y1)
        assert (np.maximum(gap_x, gap_y) > radius).all(), f"the thumbnail at {box.bounds} covers a point"


def test_thumbnails_without_room_clear_of_the_points_are_left_out_and_counted(tmp_path):
    grid = torch.stack(torch.meshgrid(torch.linspace(-1, 1, 60), torch.linspace(-1, 1, 60), indexing="ij"), -1)
    callback = with_sink(LatentScatter(limits=(-1.0, 1.0, -1.0, 1.0)), tmp_path)  # points everywhere in the axes
    job = callback.prepare(L.Trainer(logger=False), None, latents(grid.reshape(-1, 2)), epoch=0)
    fig = figure_of(job)
    assert thumbnail_boxes(fig) == []
    assert "12 of 12 thumbnails left out (12 without room clear of the points)" in fig.axes[0].title.get_text()


def under(boxes: list[Bbox], centres: np.ndarray, margin: float) -> int:
    """How many points (N, 2 pixels) lie under the boxes grown by `margin` pixels on each side."""
    hit = np.zeros(len(centres), dtype=bool)
    for box in boxes:
        hit |= ((box.x0 - margin <= centres[:, 0]) & (centres[:, 0] <= box.x1 + margin)
                & (box.y0 - margin <= centres[:, 1]) & (centres[:, 1] <= box.y1 + margin))
    return int(hit.sum())


def test_decoded_prior_draws_say_how_many_means_they_cover():
    steps = TSNESteps(perplexity=5.0, early_exaggeration_iter=0, n_iter=1, warm_early_exaggeration_iter=0,
                      warm_n_iter=1, negative_gradient_method="bh", affinity_method="exact", n_jobs=1, seed=0,
                      prior_n_iter=1, knn_k=10, figsize=TSNEEmbedding.figsize, axes_rect=TSNEEmbedding.axes_rect)
    rng = np.random.default_rng(0)
    points, draws = rng.normal(size=(2000, 2)), rng.normal(size=(64, 2))
    fig, caption = tsne.figure(steps, points, np.arange(2000) % 10, None, draws,
                               np.full((64, 28, 28), 200, dtype=np.uint8), 0.5, None, 0)
    boxes = thumbnail_boxes(fig)
    centres = fig.axes[0].transData.transform(points)
    inner, outer = under(boxes, centres, -1), under(boxes, centres, 1)  # a pixel inside each edge, and outside
    covering = int(caption.split("covering ")[1].split(" of the 2000 means")[0])
    assert 0 < inner <= covering <= outer, (inner, covering, outer)
    assert inside_the_figure(fig, fig.axes[0].title)

    mu = rng.normal(size=(2000, 2))
    fig, caption = prior.positions_figure(draws, np.full((64, 28, 28), 200, dtype=np.uint8), mu, (-4, 4, -4, 4),
                                          PriorSamples.figsizes["prior_positions"], 3)
    assert re.search(r"shown decoded, on or beside their cross, covering \d+ of 2000 means", caption), caption
    assert inside_the_figure(fig, fig.axes[0].title)


def test_points_outside_fixed_limits_are_counted_in_the_title_and_logged(tmp_path):
    mu = torch.cat([torch.zeros(20, 2), torch.full((3, 2), 9.0)])  # 3 inputs beyond the limits
    callback = with_sink(LatentScatter(limits=(-1.0, 1.0, -1.0, 1.0)), tmp_path)
    drawn = callback.prepare(L.Trainer(logger=False), None, latents(mu), epoch=0)()
    ((_, path, caption),) = drawn.pictures
    assert Path(path).is_file()
    assert "3 of 23 outside the limits" in caption
    assert drawn.scalars["scatter/outside"] == 3


@pytest.mark.parametrize("z", [2, 3])
def test_ellipses_are_the_posteriors_one_sigma(tmp_path, z):
    generator = torch.Generator().manual_seed(1)
    mu = torch.randn(40, z, generator=generator) * torch.tensor([3.0, 2.0, 1.0][:z])
    logvar = torch.randn(40, z, generator=generator)
    callback = with_sink(LatentScatter(uncertainty="ellipse"), tmp_path)
    job = sent(callback, callback.prepare(L.Trainer(logger=False), None, latents(mu, logvar), epoch=0), epoch=0)
    (collection,) = [c for c in figure_of(job).axes[0].collections if isinstance(c, EllipseCollection)]
    semi = np.stack([collection.get_widths(), collection.get_heights()], 1) / 2  # (N, 2)
    if z == 2:
        assert np.allclose(semi, logvar.double().div(2).exp().numpy(), rtol=1e-6)
        assert np.allclose(collection.get_angles(), 0)
        assert "ellipses: q(z|x) at 1 sigma, semi-axes exp(logvar/2)" in job.kwargs["detail"]
    else:
        # The covariance the ellipse draws is the posterior's, diag(exp(logvar)), seen along the two PCA axes.
        axes = callback.state_dict()["basis"]  # (2, Z)
        turn = np.deg2rad(collection.get_angles())
        for k in range(len(mu)):
            r = np.array([[np.cos(turn[k]), -np.sin(turn[k])], [np.sin(turn[k]), np.cos(turn[k])]])
            drawn = r @ np.diag(semi[k] ** 2) @ r.T
            posterior = (axes @ torch.diag(logvar[k].double().exp()) @ axes.T).numpy()
            assert np.allclose(drawn, posterior, rtol=1e-6, atol=1e-9)
        assert "ellipses: q(z|x) at 1 sigma, projected on the two axes" in job.kwargs["detail"]


def test_configs_mnist_z2_draws_the_ellipses():
    config = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "mnist_z2.yaml").read_text())
    (scatter_args,) = [c["init_args"] for c in config["trainer"]["callbacks"]
                       if c["class_path"] == "lvae.callbacks.LatentScatter"]
    assert scatter_args["uncertainty"] == "ellipse"


def test_the_manifold_covers_the_means_widens_only_and_has_even_ticks(tmp_path):
    model = VAE(latent_dim=2)
    callback = with_sink(PriorSamples(), tmp_path)
    far = torch.tensor([[5.3, 0.4], [0.35, -1.0], [2.0, 3.0]])  # means well beyond N(0, 1)'s quantiles
    drawn = callback.prepare(L.Trainer(logger=False), model, latents(far), epoch=0)()
    extent = callback.state_dict()["extent"]
    assert extent[0] <= -2 and extent[1] >= 5.3 and extent[2] <= -2 and extent[3] >= 3.0
    assert drawn.scalars == {"manifold/outside": 0.0, "prior_positions/outside": 0.0}
    captions = {name: caption for name, _, caption in drawn.pictures}
    assert "0 of 3 validation means outside" in captions["manifold"]
    assert "0 of 3 means outside" in captions["prior_positions"]
    job = callback.prepare(L.Trainer(logger=False), model, latents(far * 0.1), epoch=1)  # the means draw in
    assert torch.equal(callback.state_dict()["extent"], extent)  # never narrows
    fig, _ = prior.manifold_figure(job.kwargs["manifold"], job.kwargs["steps"], job.kwargs["extent"],
                                   job.kwargs["mu"], PriorSamples.figsizes["manifold"], 1)
    ax = fig.axes[0]
    for ticks, (low, high) in ((ax.get_xticks(), ax.get_xlim()), (ax.get_yticks(), ax.get_ylim())):
        ticks = ticks[(ticks >= low) & (ticks <= high)]
        assert len(ticks) >= 4 and 0.0 in ticks
        assert np.allclose(np.diff(ticks), np.diff(ticks)[0])  # evenly spaced
        assert all(float(t) == round(float(t), 1) for t in ticks)  # round numbers
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z_0", "z_1")  # as the scatter names them


def test_a_resume_continues_the_axes_the_thumbnails_and_the_manifold(tmp_path):
    generator = torch.Generator().manual_seed(2)
    plane = torch.randn(300, 2, generator=generator) * torch.tensor([3.0, 2.0])  # (N, 2) where the inputs lie
    noise = 0.01 * torch.randn(300, 4, generator=generator)
    # Epoch 0's principal axes in Z=4, then epoch 1's, turned by 16 degrees: PC1's largest loading moves from
    # dimension 0 (+0.8) to dimension 1 (-0.8), and the second axis now holds more variance than the first.
    axes_before = torch.tensor([[0.8, -0.6, 0.0, 0.0], [0.6, 0.8, 0.0, 0.0]])
    axes_after = torch.tensor([[0.6, -0.8, 0.0, 0.0], [0.8, 0.6, 0.0, 0.0]])
    first = with_sink(LatentScatter(), tmp_path)
    before = sent(first, first.prepare(L.Trainer(logger=False), None, latents(plane @ axes_before + noise), epoch=0),
                  epoch=0)
    torch.save(first.state_dict(), tmp_path / "state.pt")
    resumed = with_sink(LatentScatter(), tmp_path)
    resumed.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=True))  # as a checkpoint is loaded

    moved = latents(plane * torch.tensor([1.0, 2.0]) @ axes_after + noise)
    fresh = with_sink(LatentScatter(), tmp_path).prepare(L.Trainer(logger=False), None, moved, epoch=1)
    after = resumed.prepare(L.Trainer(logger=False), None, moved, epoch=1)
    # Without the kept axes, the picture swaps its axes and mirrors: epoch 0's x is drawn as y, reversed.
    assert np.corrcoef(fresh.kwargs["points"][:, 1], before.kwargs["points"][:, 0])[0, 1] < -0.9
    assert [label.split(",")[0] for label in after.kwargs["axis_labels"]] == ["PC2", "PC1"]
    for axis in (0, 1):
        assert np.corrcoef(after.kwargs["points"][:, axis], before.kwargs["points"][:, axis])[0, 1] > 0.95
    assert np.array_equal(after.kwargs["thumb_images"], before.kwargs["thumb_images"])
    assert "scatter/displacement" in after().scalars  # measured from the positions the checkpoint kept

    prior_first = with_sink(PriorSamples(), tmp_path)
    prior_first.prepare(L.Trainer(logger=False), VAE(latent_dim=2), latents(torch.full((5, 2), 4.0)), epoch=0)
    torch.save(prior_first.state_dict(), tmp_path / "prior.pt")
    prior_resumed = PriorSamples()
    prior_resumed.load_state_dict(torch.load(tmp_path / "prior.pt", weights_only=True))
    assert torch.equal(prior_resumed.state_dict()["extent"], prior_first.state_dict()["extent"])


def label_legend(fig: Figure) -> list[str]:
    """The entries of the figure's legend titled "label"."""
    (legend,) = [child for child in fig.axes[0].get_children()
                 if isinstance(child, Legend) and child.get_title().get_text() == "label"]
    return [text.get_text() for text in legend.get_texts()]


def test_fashion_mnist_legends_name_the_classes(tmp_path):
    images, labels = toy_digits(240, seed=3)
    write_idx(tmp_path / "FashionMNIST" / "raw", "train", images, labels)
    write_idx(tmp_path / "FashionMNIST" / "raw", "t10k", images[:40], labels[:40])
    data = MNISTDataModule(dataset="fashion_mnist", data_dir=str(tmp_path), batch_size=64, download=False)
    model = VAE(latent_dim=3)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.validate(model, data)
    names = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
             "Ankle boot"]
    shown = model.validation_latents()
    present = [names[c] for c in shown.label.unique().tolist()]

    job = with_sink(LatentScatter(), tmp_path).prepare(trainer, model, shown, epoch=0)
    assert label_legend(figure_of(job)) == present

    tsne_job = with_sink(TSNEEmbedding(perplexity=3.0, max_points=100, n_prior=4), tmp_path).prepare(
        trainer, model, shown, epoch=0)
    assert tsne_job.kwargs["names"] == names
    steps = tsne_job.kwargs["steps"]
    points = np.random.default_rng(0).normal(size=(len(shown), 2))
    fig, _ = tsne.figure(steps, points, shown.label.numpy(), tsne_job.kwargs["names"], np.zeros((0, 2)),
                         np.zeros((0, 28, 28), dtype=np.uint8), 0.5, None, 0)
    assert label_legend(fig) == present


def test_a_label_outside_the_names_is_written_as_its_number_in_the_legend() -> None:
    # -1 marks an unlabelled input in some datasets' splits: not the last class's name.
    from lvae.figures.canvas import label_handles

    assert [h.get_label() for h in label_handles(np.array([-1, 0, 1, 2]), ["zero", "one"])] == ["-1", "zero", "one", "2"]
