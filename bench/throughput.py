"""Training samples/s of lvae's `fit` against the classic PyTorch VAE example and a hand-written in-memory loop.

Every variant trains lvae's MLP 784-400-20 with batch 128 and Adam 1e-3 on the same inputs (lvae's training split
of Fashion-MNIST, 55,000 images) for the same epochs from the same seed, then is scored on the same test tensor
by one function (bench/common.py `test_loss`). The variants:

    classic          the classic example: torchvision FashionMNIST + ToTensor + DataLoader(shuffle=True)
    hand             the same loop over batches sliced from one in-memory tensor, in lvae's shuffle order
    lvae             VAE() + MNISTDataModule through lightning.Trainer, progress bar on, as users run it
    lvae-nobar       the same with enable_progress_bar=False
    lvae-barebones   the same with Trainer(barebones=True) (self.log made a no-op, which barebones refuses)

(classic and hand live in bench/classic.py.) Timing counts training only: the seconds from the start to the end
of each training epoch (the loader's iteration, every step and the per-epoch bookkeeping; for lvae, from
Lightning's on_train_epoch_start to on_train_epoch_end; no validation, `limit_val_batches=0`). Data loading, model
building, Trainer start-up and the test pass are outside it; lvae's whole `Trainer.fit` time is printed beside it.
Each run is a fresh process, and the variants take turns within every repeat, so the ratios compare runs that saw
the same machine load.

    python bench/throughput.py                       # 3 epochs x 3 repeats of classic, hand, lvae on the CPU
    python bench/throughput.py --quick               # 1 epoch on 10,000 inputs, once: a smoke run
    python bench/throughput.py --threads 1           # steadier where other processes share a small CPU
    python bench/throughput.py --device cuda --variants classic,hand,lvae,lvae-nobar
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

import classic
from common import DATA_DIR, SEED, ensure_data, header, load, lvae_datamodule, sync, test_images, test_loss
from lvae.model import VAE

VARIANTS = ("classic", "hand", "lvae", "lvae-nobar", "lvae-barebones")
BASELINE = "classic"
QUICK_LIMIT = 10_000
RESULT = "RESULT "  # prefix of the worker's one line of JSON on stdout


class EpochTimer(Callback):
    """Wall and CPU seconds from each training epoch's start hook to its end hook (device work done at both)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu_seconds: list[float] = []

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(pl_module.device)
        self.start, self.cpu_start = time.perf_counter(), time.process_time()

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        sync(pl_module.device)
        self.seconds.append(time.perf_counter() - self.start)
        self.cpu_seconds.append(time.process_time() - self.cpu_start)


class UnloggedVAE(VAE):
    """The same model minus `self.log`, which Trainer(barebones=True) refuses; the metrics still update."""

    @override
    def log(self, *args, **kwargs) -> None:
        pass


def run_lvae(data_dir: str, epochs: int, device: str, limit: int | None, progress_bar: bool = True,
             barebones: bool = False) -> dict:
    """lvae's fit as a Python user writes it; per-epoch seconds from a callback, then the shared test loss."""
    dm = lvae_datamodule(data_dir, limit)
    L.seed_everything(SEED)
    model = UnloggedVAE() if barebones else VAE()
    timer = EpochTimer()
    if barebones:
        trainer = L.Trainer(barebones=True, max_epochs=epochs, accelerator=device, devices=1, limit_val_batches=0,
                            callbacks=[timer])
    else:
        trainer = L.Trainer(max_epochs=epochs, accelerator=device, devices=1, logger=False, enable_checkpointing=False,
                            enable_progress_bar=progress_bar, limit_val_batches=0, callbacks=[timer])
    start = time.perf_counter()
    trainer.fit(model, datamodule=dm)
    fit_seconds = time.perf_counter() - start
    model.to(torch.device(device))  # Lightning hands the model back on the CPU; test where the baselines test
    n = len(dm.splits["train"][0])
    return {"n_train": n, "epochs": epochs, "epoch_seconds": timer.seconds, "train_seconds": sum(timer.seconds),
            "epoch_cpu_seconds": timer.cpu_seconds,
            "samples_per_s": n * epochs / sum(timer.seconds), "fit_seconds": fit_seconds,
            "test_loss": test_loss(model.encoder, model.decoder, test_images(data_dir)),
            "threads": torch.get_num_threads()}


def worker(variant: str, data_dir: str, epochs: int, device: str, limit: int | None) -> dict:
    if variant in ("classic", "hand"):
        return classic.run("classic" if variant == "classic" else "memory", data_dir, epochs, device, limit)
    return run_lvae(data_dir, epochs, device, limit, progress_bar=variant != "lvae-nobar",
                    barebones=variant == "lvae-barebones")


def spawn(variant: str, args: argparse.Namespace, limit: int | None) -> dict:
    """One variant in a fresh interpreter; its output goes to a log that is shown only if it fails.

    The progress bar writes to that log file, not a terminal, so a terminal's drawing cost is not counted.
    """
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", variant, "--epochs", str(args.epochs),
               "--device", args.device, "--data_dir", args.data_dir]
    if limit is not None:
        command += ["--limit", str(limit)]
    if args.threads:
        command += ["--threads", str(args.threads)]
    with tempfile.TemporaryFile("w+") as log:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=log, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT)]
        if done.returncode != 0 or not lines:
            log.seek(0)
            sys.exit(f"bench: {variant} failed (exit {done.returncode}):\n{done.stdout[-3000:]}{log.read()[-3000:]}")
    return json.loads(lines[-1][len(RESULT):])


def summarize(runs: dict[str, list[dict]], variants: list[str]) -> None:
    """Medians over repeats; ratios are taken within each repeat, then their median.

    Beside wall-clock samples/s: the best (shortest) epoch of each run, which transient load from other processes
    disturbs least, and the process's CPU seconds per epoch, the work it did whatever share of the CPU it got
    (with several torch threads this includes their spin-waiting).
    """
    base = runs.get(BASELINE)
    base_loss = statistics.median(r["test_loss"] for r in base) if base else None
    print(f"\n{'variant':<15} {'samples/s':>10} {'x ' + BASELINE:>10} {'s/epoch':>8} {'best':>7} {'x best':>7} "
          f"{'cpu s/ep':>9} {'x cpu':>6} {'test loss':>10} {'vs ' + BASELINE:>11}")

    def ratio(rs: list[dict], speed) -> str:
        return f"{statistics.median(speed(b) / speed(r) for r, b in zip(rs, base)):.2f}x" if base else "-"

    for v in variants:
        rs = runs[v]
        loss = statistics.median(r["test_loss"] for r in rs)
        print(f"{v:<15} {statistics.median(r['samples_per_s'] for r in rs):>10.0f} "
              f"{ratio(rs, lambda r: r['train_seconds'] / r['n_train']):>10} "
              f"{statistics.median(r['train_seconds'] / r['epochs'] for r in rs):>8.2f} "
              f"{statistics.median(min(r['epoch_seconds']) for r in rs):>7.2f} "
              f"{ratio(rs, lambda r: min(r['epoch_seconds']) / r['n_train']):>7} "
              f"{statistics.median(sum(r['epoch_cpu_seconds']) / r['epochs'] for r in rs):>9.2f} "
              f"{ratio(rs, lambda r: sum(r['epoch_cpu_seconds']) / r['n_train']):>6} "
              f"{loss:>10.3f} {f'{100 * (loss - base_loss) / base_loss:+.2f}%' if base else '-':>11}")
    print(f"(medians over {len(runs[variants[0]])} repeat(s); x: speed-up over {BASELINE} within each repeat)")
    for v in variants:
        if "fit_seconds" in runs[v][0]:
            fit = statistics.median(r["fit_seconds"] for r in runs[v])
            train = statistics.median(r["train_seconds"] for r in runs[v])
            print(f"{v}: Trainer.fit {fit:.2f} s in all, {train:.2f} s of it in training epochs")
    if "hand" in runs and "lvae" in runs:
        same = runs["hand"][0]["test_loss"] == runs["lvae"][0]["test_loss"]
        print(f"hand and lvae test loss {'bit-identical' if same else 'differ'} "
              f"({runs['hand'][0]['test_loss']!r} vs {runs['lvae'][0]['test_loss']!r})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=None, help="default 3 (1 with --quick)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--data_dir", default=str(DATA_DIR), help="holds FashionMNIST/raw/ (default bench/data)")
    parser.add_argument("--variants", default="classic,hand,lvae",
                        help=f"comma-separated, run in this order in every repeat; from {', '.join(VARIANTS)}")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help=f"1 epoch on the first {QUICK_LIMIT} inputs, 1 repeat")
    parser.add_argument("--worker", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(RESULT + json.dumps(worker(args.worker, args.data_dir, args.epochs, args.device, args.limit)))
        return

    if args.epochs < 1 or (args.repeats is not None and args.repeats < 1):
        parser.error("--epochs and --repeats must be at least 1")
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device here")
    limit = QUICK_LIMIT if args.quick else None
    if args.quick:
        args.epochs = 1
    repeats = args.repeats or (1 if args.quick else 3)
    ensure_data(args.data_dir)
    print(header(args.device))
    if args.device == "cpu" and torch.get_num_threads() > 1 and hasattr(os, "getloadavg") \
            and os.getloadavg()[0] > 0.5:
        # One torch thread descheduled by another process stalls the rest at every parallel op.
        print(f"note: other processes are using the CPU; {torch.get_num_threads()} torch threads then wait on each "
              "other and runs can be many times slower at random. --threads 1 gives steadier ratios.")
    print(f"{', '.join(variants)}: {args.epochs} epoch(s) x {repeats} repeat(s), batch 128, "
          f"{'first ' + str(limit) if limit else 'all'} inputs of lvae's training split, a fresh process per run; "
          f"timed: training epochs only (no validation)")
    runs: dict[str, list[dict]] = {v: [] for v in variants}
    started = time.perf_counter()
    for repeat in range(repeats):
        for v in variants:
            r = spawn(v, args, limit)
            runs[v].append(r)
            wall, cpu = (" ".join(f"{s:.2f}" for s in r[key]) for key in ("epoch_seconds", "epoch_cpu_seconds"))
            print(f"repeat {repeat + 1}/{repeats} {v:<15} {r['n_train']} x {r['epochs']} epochs [{wall}] s "
                  f"(cpu [{cpu}] s) {r['samples_per_s']:7.0f} samples/s  test loss {r['test_loss']:.3f}", flush=True)
    summarize(runs, variants)
    print(f"bench took {time.perf_counter() - started:.0f} s; {load()} at the end")


if __name__ == "__main__":
    main()
