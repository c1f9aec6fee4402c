"""Wall time of `lvae fit` with every latent picture on versus off: same data, epochs and config.

Runs the real command (`lvae fit --config configs/fashion_mnist.yaml`) on full-size Fashion-MNIST, each run a
fresh process, the two variants interleaved; `fit` is timed from inside (bench/fit_timer.py), so imports and
start-up are not counted; the whole command's wall time (what the user waits for, start-up and exit included) is
printed beside it. "off" removes the picture callbacks and the latent collection (--model.latent_points 0);
"on" is the config as shipped. Prints each run, the medians and the median ratios on/off.

    .venv/bin/python bench/visual_overhead.py [--epochs 5] [--repeats 2] [--accelerator cpu]
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

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(BENCH))

from common import DATA_DIR, ensure_data, load  # noqa: E402


def timer(out: Path) -> str:
    return json.dumps({"class_path": "fit_timer.FitTimer", "init_args": {"out": str(out)}})


def run(variant: str, args: argparse.Namespace, workdir: Path, n: int) -> tuple[float, float]:
    """Seconds of `fit` and of the whole command."""
    out = workdir / f"{variant}-{n}.json"
    command = [sys.executable, "-m", "lvae", "fit", "--config", str(REPO / "configs" / "fashion_mnist.yaml"),
               "--data.data_dir", args.data_dir, "--trainer.max_epochs", str(args.epochs),
               "--trainer.accelerator", args.accelerator, "--trainer.default_root_dir", str(workdir / "runs"),
               "--trainer.enable_progress_bar", "false"]
    if variant == "off":
        command += ["--trainer.callbacks", f"[{timer(out)}]", "--model.latent_points", "0"]
    else:
        command += [f"--trainer.callbacks+={timer(out)}"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    command_seconds = time.perf_counter() - start
    if done.returncode != 0 or not out.is_file():
        sys.exit(f"bench: {variant} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    return json.loads(out.read_text())["seconds"], command_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data_dir", default=str(DATA_DIR))
    args = parser.parse_args()
    ensure_data(args.data_dir)
    print(f"lvae fit, configs/fashion_mnist.yaml, {args.epochs} epochs, full Fashion-MNIST, {args.accelerator}; "
          f"{load()} at start")
    times: dict[str, list[float]] = {"off": [], "on": []}
    whole: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.repeats):
            for variant in ("off", "on"):
                seconds, command_seconds = run(variant, args, Path(tmp), n)
                times[variant].append(seconds)
                whole[variant].append(command_seconds)
                print(f"  repeat {n}: pictures {variant:3s} {seconds:6.1f} s  ({seconds / args.epochs:.2f} s/epoch; "
                      f"the whole command {command_seconds:.1f} s)", flush=True)
    ratios = [on / off for on, off in zip(times["on"], times["off"])]
    whole_ratios = [on / off for on, off in zip(whole["on"], whole["off"])]
    print(f"median fit time: off {statistics.median(times['off']):.1f} s, on {statistics.median(times['on']):.1f} s; "
          f"median ratio on/off {statistics.median(ratios):.2f} (goal <= 1.25); the whole command: off "
          f"{statistics.median(whole['off']):.1f} s, on {statistics.median(whole['on']):.1f} s, median ratio "
          f"{statistics.median(whole_ratios):.2f}; {load()} at end")


if __name__ == "__main__":
    main()
