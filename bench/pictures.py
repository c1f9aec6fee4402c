"""How much each picture's frames move from epoch to epoch, and how long each picture takes to draw, on real digits.

    .venv/bin/python bench/pictures.py                  # 10 epochs, 7 timing repeats
    .venv/bin/python bench/pictures.py --cache /tmp/lvae-pictures.pt   # reuse the fits of an earlier run

Trains the default VAE (MLP 784-400-20) and its Z=2 twin for --epochs on real digits (../shared/data/mnist-t10k split
8,000 / 2,000, as tests/conftest.py does; 667 validation digits), keeping each validation epoch's latents and
weights (in --cache, so that another version of the code is measured on the same inputs). Then it replays those
epochs through the picture callbacks as fit does: each callback's `prepare` and its drawing job, one epoch after
the other, here in one process. It prints:

- the frame-to-frame displacement of the followed points in the PCA scatter (Z=20) and the t-SNE map: the mean
  distance each point moves between consecutive frames as drawn, over the RMS distance of the previous frame's
  points from their centre; beside it, for the t-SNE map, what is left after the best rotation or reflection
  (orthogonal Procrustes), and for the scatter the correlation of each axis with the previous frame's (negative:
  the picture mirrored);
- the mean 1-sigma ellipse area per label of the Z=2 means, pi * exp(logvar_0 / 2) * exp(logvar_1 / 2);
- each drawing job's CPU time on the last epoch (one thread): the median of --repeats runs after one warm-up run;
  for the t-SNE job also the drawing alone, less the median CPU time of its t-SNE work (`TSNESteps.embed` and
  `place`). CPU time, not wall time: on a machine shared with other processes it measures the work, not the wait.
"""

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from lvae.callbacks import LatentScatter, LatentUncertainty, PriorSamples, TSNEEmbedding
from lvae.data import MNISTDataModule, read_idx_pair, write_idx
from lvae.latents import Latents
from lvae.model import VAE
from lvae.sink import PictureSink

REPO = Path(__file__).resolve().parents[1]
SHARED_MNIST = REPO.parent / "shared" / "data" / "mnist-t10k"
TSNE = {"max_points": 1000, "perplexity": 30.0, "n_iter": 125, "n_prior": 64}  # as configs/mnist.yaml


class KeepEpochs(Callback):
    """Keeps each validation epoch's latents and the weights that made them."""

    def __init__(self) -> None:
        self.epochs: list[tuple[dict, dict]] = []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: VAE) -> None:
        if not trainer.sanity_checking:
            latents = pl_module.validation_latents()
            self.epochs.append(({k: getattr(latents, k) for k in latents.__dataclass_fields__},
                                {k: v.detach().clone() for k, v in pl_module.state_dict().items()}))


def fit(latent_dim: int, epochs: int, data_dir: Path) -> list[tuple[dict, dict]]:
    L.seed_everything(0, verbose=False)
    keep = KeepEpochs()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[keep])
    trainer.fit(VAE(latent_dim=latent_dim), MNISTDataModule(data_dir=str(data_dir), batch_size=128))
    return keep.epochs


def fits(epochs: int, cache: Path) -> dict[int, list[tuple[dict, dict]]]:
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    images, labels = read_idx_pair(SHARED_MNIST / "t10k-images-idx3-ubyte.gz",
                                   SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
    with tempfile.TemporaryDirectory() as tmp:
        write_idx(Path(tmp) / "MNIST" / "raw", "train", images[:8000], labels[:8000])
        write_idx(Path(tmp) / "MNIST" / "raw", "t10k", images[8000:], labels[8000:])
        result = {z: fit(z, epochs, Path(tmp)) for z in (20, 2)}
    torch.save(result, cache)
    return result


def spread(points: np.ndarray) -> float:
    return float(np.sqrt(((points - points.mean(0)) ** 2).sum(1).mean()))


def displacement(now: np.ndarray, before: np.ndarray) -> float:
    return float(np.linalg.norm(now - before, axis=1).mean()) / spread(before)


def procrustes_residual(now: np.ndarray, before: np.ndarray) -> float:
    """The displacement left after the best rotation or reflection of the centred `now` onto `before`."""
    a, b = now - now.mean(0), before - before.mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    return displacement(a @ (u @ vt) + before.mean(0), before)


def replay(callback, epochs: list[tuple[dict, dict]], latent_dim: int, out: Path, trainer: L.Trainer):
    """Yield (epoch, latents, job, drawn) as fit would draw them, one epoch after the other."""
    callback.sink = PictureSink(trainer, out)
    module = VAE(latent_dim=latent_dim)
    for epoch, (fields, weights) in enumerate(epochs):
        module.load_state_dict(weights)
        latents = Latents(**fields)
        job = callback.commit(callback.prepare(trainer, module, latents, epoch), epoch)  # drawn, as fit's would be
        drawn = job()
        if drawn.state is not None:
            callback.apply(drawn.state)
        yield epoch, latents, job, drawn


def median_cpu_seconds(work, repeats: int) -> float:
    """The median CPU time of `work()` over `repeats` runs after a warm-up: the work done, whatever share of the
    cores other processes leave it (this process runs one thread)."""
    work()
    times = []
    for _ in range(repeats):
        start = time.process_time()
        work()
        times.append(time.process_time() - start)
    return statistics.median(times)


def tsne_work(job):
    """The t-SNE part of a t-SNE job (the same code before and after the pictures changed): map, place the draws."""
    kwargs = job.kwargs

    def work() -> None:
        kwargs["steps"].place(kwargs["steps"].embed(kwargs["mu"], kwargs["start"]), kwargs["z"])

    return work


def make(cls, **kwargs):
    try:
        return cls(**kwargs)
    except Exception as err:  # an option this version of the code lacks
        print(f"  {cls.__name__}({kwargs}): {type(err).__name__}: {err}")
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lvae-bench-pictures.pt")
    args = parser.parse_args()
    if not (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        print(f"skipped: real MNIST digits not found at {SHARED_MNIST}")
        return
    torch.set_num_threads(1)  # as in the drawing process beside training
    runs = fits(args.epochs, args.cache)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, accelerator="cpu")
    out = Path(tempfile.mkdtemp(prefix="lvae-bench-pictures-"))
    print(f"{len(runs[20])} epochs of Z=20 and Z=2 on 8,000 real digits (cache {args.cache}); PNGs in {out}")

    print("\nframe-to-frame displacement (mean move / RMS spread of the previous frame), Z=20")
    print("epoch | scatter | corr x | corr y | t-SNE | t-SNE after Procrustes")
    frames = {}
    for name, callback in (("scatter", LatentScatter(table_rows=0)), ("tsne", TSNEEmbedding(**TSNE))):
        for epoch, latents, job, drawn in replay(callback, runs[20], 20, out / name, trainer):
            points = job.kwargs["points"] if name == "scatter" else drawn.state["embedding"]
            index = latents.index.numpy()[:len(points)]
            frames.setdefault(epoch, {})[name] = (np.asarray(points, dtype=np.float64), index)
    rows = {"scatter": [], "tsne": [], "tsne_p": []}
    for epoch in sorted(frames)[1:]:
        (s, si), (s0, s0i) = frames[epoch]["scatter"], frames[epoch - 1]["scatter"]
        (t, ti), (t0, t0i) = frames[epoch]["tsne"], frames[epoch - 1]["tsne"]
        assert np.array_equal(si, s0i) and np.array_equal(ti, t0i)
        corr = [float(np.corrcoef(s[:, k], s0[:, k])[0, 1]) for k in (0, 1)]
        rows["scatter"].append(displacement(s, s0))
        rows["tsne"].append(displacement(t, t0))
        rows["tsne_p"].append(procrustes_residual(t, t0))
        print(f"{epoch - 1}->{epoch} | {rows['scatter'][-1]:.3f} | {corr[0]:+.2f} | {corr[1]:+.2f} | "
              f"{rows['tsne'][-1]:.3f} | {rows['tsne_p'][-1]:.3f}")
    print("mean  | " + " | ".join(f"{np.mean(rows[k]):.3f}" for k in ("scatter",)) + " |  |  | "
          + " | ".join(f"{np.mean(rows[k]):.3f}" for k in ("tsne", "tsne_p")))

    fields, _ = runs[2][-1]
    sigma = fields["logvar"].double().mul(0.5).exp()  # (N, 2)
    area = np.pi * (sigma[:, 0] * sigma[:, 1]).numpy()
    labels = fields["label"].numpy()
    print(f"\nZ=2, epoch {len(runs[2]) - 1}: mean 1-sigma ellipse area per label, largest first")
    print(", ".join(f"{c}: {area[labels == c].mean():.4f}" for c in sorted(np.unique(labels),
                                                                             key=lambda c: -area[labels == c].mean())))

    print(f"\nCPU seconds of each drawing job on the last epoch, median of {args.repeats}")
    cases = [("scatter, Z=20 PCA", 20, LatentScatter, {"table_rows": 0}),
             ("scatter, Z=2", 2, LatentScatter, {"table_rows": 0}),
             ("scatter, Z=2, ellipses", 2, LatentScatter, {"table_rows": 0, "uncertainty": "ellipse"}),
             ("scatter, Z=20 PCA, ellipses", 20, LatentScatter, {"table_rows": 0, "uncertainty": "ellipse"}),
             ("t-SNE, Z=20", 20, TSNEEmbedding, TSNE),
             ("prior samples, Z=20", 20, PriorSamples, {}),
             ("prior samples + manifold + positions, Z=2", 2, PriorSamples, {}),
             ("uncertainty, Z=20", 20, LatentUncertainty, {})]
    for title, z, cls, kwargs in cases:
        callback = make(cls, **kwargs)
        if callback is None:
            continue
        *_, (epoch, latents, job, drawn) = replay(callback, runs[z], z, out / title.replace(" ", "_"), trainer)
        seconds = median_cpu_seconds(job, args.repeats)
        extra = ""
        if "tsne/seconds" in drawn.scalars:
            extra = f" (drawing alone {seconds - median_cpu_seconds(tsne_work(job), args.repeats):.3f})"
        print(f"{title}: {seconds:.3f}{extra}", flush=True)
    print(f"load average {', '.join(f'{v:.1f}' for v in os.getloadavg())} on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
