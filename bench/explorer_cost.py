"""What the latent explorer page costs: its size, the seconds the drawing process takes to write it each epoch, and
the seconds headless Chromium takes to draw it, for 2,000 followed inputs over 30 epochs.

Two runs: real digits (MNIST's test set from ../shared/data/mnist-t10k when present, else the tests' toy digits) and
a folder of 64x64 colour images (made here), shrunk to the page's 32 px thumbnails as `LatentExplorer` shrinks them.
Each epoch is kept and the page written by `lvae.figures.explorer.record`, the drawing job itself, with t-SNE map
files as `TSNEEmbedding` keeps them (64 prior draws placed in each). The places are made up (clusters by label that
tighten epoch by epoch): the page's size and drawing time depend on how many points, epochs and images it holds,
not on where the points are.

    .venv/bin/python bench/explorer_cost.py [--points 2000] [--epochs 30]

Needs chromium and chromedriver (Debian: apt-get install chromium chromium-driver) for the drawing time.
"""

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

from conftest import SHARED_MNIST, toy_digits  # noqa: E402

from lvae.callbacks.latent_explorer import thumbnails  # noqa: E402
from lvae.data import read_idx_pair  # noqa: E402
from lvae.figures.explorer import record  # noqa: E402

PRIOR = 64
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1500,1000")


def digit_images(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    if (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file():
        images, labels = read_idx_pair(SHARED_MNIST / "t10k-images-idx3-ubyte.gz",
                                       SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")
        return images[:n], labels[:n].astype(np.int64), "real MNIST digits"
    images, labels = toy_digits(n, seed=0)
    return images, labels.astype(np.int64), "toy digits (real MNIST not found)"


def colour_images(n: int) -> tuple[np.ndarray, np.ndarray, str]:
    """64x64 colour pictures with the detail of small photos: a lit gradient, a shape of the class's colour, grain."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, n)
    yy, xx = np.mgrid[0:64, 0:64] / 63.0
    images = np.empty((n, 64, 64, 3), np.uint8)
    for i, label in enumerate(labels):
        light = rng.uniform(0.2, 0.8, 3)[None, None] + 0.3 * (xx[..., None] - rng.uniform()) * rng.normal(size=3)
        cy, cx, r = rng.uniform(0.25, 0.75, 2).tolist() + [rng.uniform(0.12, 0.3)]
        shape = ((yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2)[..., None]
        colour = np.array([(label * 37 % 255), (label * 91 % 255), (label * 151 % 255)]) / 255.0
        picture = np.where(shape, colour, light) + rng.normal(0, 0.05, (64, 64, 3))
        images[i] = (picture.clip(0, 1) * 255).round()
    small = thumbnails(torch.from_numpy(images).permute(0, 3, 1, 2), 32)  # as the callback shrinks them
    return small, labels, "64x64 colour images, shown at 32 px"


def write_run(root: Path, images: np.ndarray, labels: np.ndarray, epochs: int) -> list[float]:
    """Keep `epochs` epochs and write the page after each, as the drawing process does; the seconds of each."""
    latents = root / "latents"
    (latents / "tsne").mkdir(parents=True)
    n, rng = len(images), np.random.default_rng(1)
    index = np.arange(n)
    centres = rng.normal(size=(10, 2)) * 4
    seconds = []
    for epoch in range(epochs):
        spread = 3.0 / (1 + epoch)
        pca = (centres[labels] * (epoch + 1) / epochs + rng.normal(size=(n, 2)) * spread).astype(np.float32)
        tsne = centres[labels] * 6 + rng.normal(size=(n, 2)) * spread * 3
        np.savez(latents / "tsne" / f"map_{epoch:03d}.npz", embedding=tsne, index=index, epoch=epoch,
                 init_epoch=epoch - 1, prior=rng.normal(size=(PRIOR, 2)) * 15)
        prior = images[rng.integers(0, n, PRIOR)]  # decoded draws look like inputs
        began = time.perf_counter()
        record(str(latents / "explorer"), epoch, index, pca, ("PC1, 21% of variance", "PC2, 14% of variance"),
               "PCA of Z=20 to 2-D (35% of variance)", rng.random(n).astype(np.float32),
               (100 + 50 * rng.random(n)).astype(np.float32), f"tsne/map_{epoch:03d}.npz", prior,
               dict(index=index, label=labels, images=images, names=[], labelled=True) if epoch == 0 else None)
        seconds.append(time.perf_counter() - began)
    return seconds


def draw_seconds(page: Path, loads: int) -> list[float]:
    """Seconds from opening `page` from disk to Bokeh's document drawn, in headless Chromium with a fresh profile:
    the first load (cold) and the next ones."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    profile = tempfile.mkdtemp(prefix="lvae-bench-")
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
        seconds = []
        for _ in range(loads):
            driver.get("about:blank")
            driver.get(page.as_uri())
            seconds.append(driver.execute_async_script("""const done = arguments[arguments.length - 1]
                const wait = () => { const doc = window.Bokeh && Bokeh.documents[0]
                    if (doc && doc.is_idle) done(performance.now() / 1000); else setTimeout(wait, 5) }
                wait()"""))
        return seconds
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--loads", type=int, default=5, help="page loads in Chromium (the first is cold)")
    args = parser.parse_args()
    browser = shutil.which("chromium") and shutil.which("chromedriver")
    for make in (digit_images, colour_images):
        images, labels, what = make(args.points)
        with tempfile.TemporaryDirectory() as folder:
            writes = write_run(Path(folder), images, labels, args.epochs)
            page = Path(folder) / "latents" / "explorer.html"
            print(f"{what}: {args.points} inputs, {args.epochs} epochs, {PRIOR} prior draws each")
            print(f"  page: {page.stat().st_size / 1e6:.2f} MB; kept data: "
                  f"{sum(p.stat().st_size for p in page.with_suffix('').iterdir()) / 1e6:.2f} MB")
            print(f"  written by the drawing process: {writes[0]:.2f} s at epoch 0, {writes[len(writes) // 2]:.2f} s at "
                  f"epoch {len(writes) // 2}, {writes[-1]:.2f} s at epoch {len(writes) - 1}")
            if browser:
                seconds = draw_seconds(page, args.loads)
                print(f"  drawn in Chromium: {seconds[0]:.2f} s cold, median {statistics.median(seconds[1:]):.2f} s "
                      f"after (from opening the file to Bokeh's document idle)")
            else:
                print("  drawing time not measured: chromium and chromedriver not found")


if __name__ == "__main__":
    main()
