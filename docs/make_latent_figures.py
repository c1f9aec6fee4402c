"""Make the pictures of the README's "What is plotted" section with the `lvae` command itself.

    .venv/bin/python docs/make_latent_figures.py

Runs `lvae fit --config configs/mnist.yaml` (Z=20) and `--config configs/mnist_z2.yaml` (Z=2) for 10 epochs on
real MNIST digits (../shared/data/mnist-t10k split 8,000 / 2,000, as docs/make_uncertainty_figures.py does) and
copies the README's PNGs into docs/ as `<run>_<picture>_epoch<NN>.png`: the Z=20 scatter and t-SNE map of the first
and the last epoch, the Z=2 scatter, manifold and prior positions of the last; epochs counted from 0 as Lightning,
the run folder and the titles count them (epoch00 and epoch09). A few minutes on 2 CPU cores.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from make_uncertainty_figures import real_digits

DOCS = Path(__file__).resolve().parent
REPO = DOCS.parent
EPOCHS = 10
FIRST, LAST = 0, EPOCHS - 1
RUNS = {"z20": ("mnist.yaml", {"scatter": (FIRST, LAST), "tsne": (FIRST, LAST)}),
        "z2": ("mnist_z2.yaml", {"scatter": (LAST,), "manifold": (LAST,), "prior_positions": (LAST,)})}


def main() -> None:
    work = Path(tempfile.mkdtemp(prefix="lvae-figures-"))
    data = real_digits(work / "data")
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    for tag, (config, pictures) in RUNS.items():
        root = work / tag
        subprocess.run([sys.executable, "-m", "lvae", "fit", "--config", str(REPO / "configs" / config),
                        "--data.data_dir", str(data), "--trainer.max_epochs", str(EPOCHS),
                        "--trainer.accelerator", "cpu", "--trainer.default_root_dir", str(root),
                        "--trainer.enable_progress_bar", "false"], check=True, env=env, cwd=work)
        (run,) = [p for p in root.iterdir() if p.is_dir()]
        for name, epochs in pictures.items():
            for epoch in epochs:
                shutil.copyfile(run / "latents" / name / f"epoch_{epoch:03d}.png",
                                DOCS / f"{tag}_{name}_epoch{epoch:02d}.png")
        print(f"{tag}: every picture of every epoch is in {run / 'latents'}")


if __name__ == "__main__":
    main()
