"""Memory held and decode time of `ImageFolderDataModule.setup` on a folder of 32x32 RGB PNGs (CIFAR-10's size).

    .venv/bin/python bench/image_folder.py                    # 50,000 images, 10 class folders
    .venv/bin/python bench/image_folder.py --images 5000 --workers 0,2,4

Writes the folder once under `--folder` (default `bench/data/folder-<N>`: smooth colour fields plus noise, so PNG
sizes are photo-like, about 4 KB each), then runs `setup("fit")` in a fresh process for each number of decoding
workers, held in memory and streamed (`memory_budget=0`). Prints the images' uint8 size, the growth of the
process's resident memory across `setup`, and seconds per 1,000 images. Times scale with the machine's load,
which is printed.
"""

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

MEASURE = """
import gc, sys, time
from lvae.image_folder import ImageFolderDataModule
def rss():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmRSS")) / 1024
dm = ImageFolderDataModule(sys.argv[1], image_size=32, num_workers=int(sys.argv[2]), memory_budget=int(sys.argv[3]))
gc.collect(); before = rss()
start = time.perf_counter(); dm.setup("fit"); seconds = time.perf_counter() - start
gc.collect()
n = sum(len(v[0]) if isinstance(v, tuple) else len(v) for v in dm.splits.values())
held = sum(v[0].nbytes for v in dm.splits.values() if isinstance(v, tuple)) / 2**20
print(f"{n} images, workers {sys.argv[2]}, {'in memory' if held else 'streamed'}: uint8 {held:.1f} MiB, "
      f"RSS growth {rss() - before:.1f} MiB, {1000 * seconds / n:.2f} s per 1,000 images")
"""


def write_folder(root: Path, n: int) -> None:
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        small = Image.fromarray(rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8))
        pixels = np.asarray(small.resize((32, 32), Image.Resampling.BICUBIC)) + rng.integers(-12, 13, (32, 32, 3))
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{i:05d}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--workers", default="0,2", help="comma-separated numbers of decoding workers")
    parser.add_argument("--folder", type=Path, default=None)
    args = parser.parse_args()
    folder = args.folder or REPO / "bench" / "data" / f"folder-{args.images}"
    if not folder.is_dir():
        print(f"writing {args.images} PNGs to {folder} ...", flush=True)
        write_folder(folder, args.images)
    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    for workers in args.workers.split(","):
        for budget in ("2048", "0"):
            subprocess.run([sys.executable, "-c", MEASURE, str(folder), workers, budget], check=True, cwd=REPO)


if __name__ == "__main__":
    main()
