"""Seconds per epoch of each picture of configs/fashion_mnist.yaml, part by part: its model work in the training loop
(`prepare`), its drawing (the job the drawing process runs), logging the PNG (W&B offline) and its share of the
evolution GIFs at the end of fit.

Trains lvae's VAE (the config's model) on full-size Fashion-MNIST with every picture callback of the config, drawn in
the training loop (`background=False`) so that each part can be timed on its own; medians over the epochs after the
first (the first pays for imports and the cold t-SNE map).

    .venv/bin/python bench/picture_cost.py [--epochs 4] [--accelerator cpu]
"""

import argparse
import importlib
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

import lightning as L
import yaml
from lightning.pytorch.loggers import WandbLogger

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from common import DATA_DIR, ensure_data, load  # noqa: E402

from lvae import VAE, MNISTDataModule  # noqa: E402
from lvae.drawing import Drawn, Job  # noqa: E402
from lvae.picture_callback import ANIMATION, PictureCallback  # noqa: E402

CONFIG = REPO / "configs" / "fashion_mnist.yaml"
Seconds = dict[tuple[str, str], list[float]]  # (callback, part) -> one value per epoch


class TimedJob:
    """A drawing job that records how long it ran."""

    def __init__(self, job: Callable[[], Drawn], record: Callable[[float], None]):
        self.job, self.record = job, record

    def __call__(self) -> Drawn:
        start = time.perf_counter()
        drawn = self.job()
        self.record(time.perf_counter() - start)
        return drawn


def timed(callback: PictureCallback, seconds: Seconds) -> PictureCallback:
    """`callback` with its prepare, its job and its logging timed."""
    name = type(callback).__name__
    prepare, log = callback.prepare, callback._log

    def timed_prepare(*args: Any) -> Any:
        start = time.perf_counter()
        job = prepare(*args)
        seconds[name, "prepare"].append(time.perf_counter() - start)
        return None if job is None else TimedJob(job, seconds[name, "draw"].append)

    def timed_log(*args: Any) -> None:
        start = time.perf_counter()
        log(*args)
        seconds[name, "log"].append(time.perf_counter() - start)

    callback.prepare, callback._log = timed_prepare, timed_log
    return callback


def config_pictures() -> list[PictureCallback]:
    """The config's picture callbacks, as it configures them, drawing in the training loop."""
    callbacks = []
    for entry in yaml.safe_load(CONFIG.read_text())["trainer"]["callbacks"]:
        module, _, name = entry["class_path"].rpartition(".")
        cls = getattr(importlib.import_module(module), name)
        if issubclass(cls, PictureCallback):
            callbacks.append(cls(**{**entry.get("init_args", {}), "background": False}))
    return callbacks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data_dir", default=str(DATA_DIR))
    args = parser.parse_args()
    ensure_data(args.data_dir)
    config = yaml.safe_load(CONFIG.read_text())
    print(f"pictures of configs/fashion_mnist.yaml, {args.epochs} epochs, full Fashion-MNIST, {args.accelerator}; "
          f"{load()} at start")
    seconds: Seconds = defaultdict(list)
    pictures = [timed(callback, seconds) for callback in config_pictures()]
    with tempfile.TemporaryDirectory() as tmp:
        L.seed_everything(0)
        logger = WandbLogger(save_dir=tmp, offline=True, project="bench")
        trainer = L.Trainer(max_epochs=args.epochs, accelerator=args.accelerator, devices=1, logger=logger,
                            callbacks=pictures, enable_progress_bar=False, enable_checkpointing=False,
                            enable_model_summary=False, default_root_dir=tmp)
        data = config["data"]
        trainer.fit(VAE(**config["model"]), MNISTDataModule(dataset=data["dataset"], data_dir=args.data_dir,
                                                            batch_size=data["batch_size"]))
        gif = {}
        for callback in pictures:  # the GIFs were made at fit end; made again here, one picture at a time
            folders = {name: str(callback.sink.png_path(name, 0).parent) for name in callback.names}
            start = time.perf_counter()
            Job(ANIMATION, {"folders": folders})()
            gif[type(callback).__name__] = (time.perf_counter() - start) / args.epochs
        logger.experiment.finish()

    print(f"\nmedian seconds per epoch over epochs 1-{args.epochs - 1}; GIF: putting it together at fit end, per frame")
    print(f"{'picture':22s} {'prepare':>8s} {'draw':>8s} {'log':>8s} {'GIF':>8s}")
    for callback in pictures:
        name = type(callback).__name__
        parts = [statistics.median(seconds[name, part][1:]) if seconds[name, part][1:] else float("nan")
                 for part in ("prepare", "draw", "log")]
        print(f"{name:22s} " + " ".join(f"{value:8.3f}" for value in (*parts, gif[name])))
    print(f"prepare and log run in the training loop, draw in the drawing process (timed here in the loop), the GIF "
          f"at the end of fit from the frames each draw saved; {load()} at end")


if __name__ == "__main__":
    main()
