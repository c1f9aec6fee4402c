"""Wall time of `lvae fit` with every latent picture on versus off: same data, epochs and config, at two epoch lengths.

Runs the real command (`lvae fit --config configs/fashion_mnist.yaml`) on full-size Fashion-MNIST, each run a
fresh process, the variants interleaved, at two epoch lengths: long (the whole training split, `--epochs`, 3-4 s an
epoch on 2 cores) and short (`--trainer.limit_train_batches` `--short_batches`, `--short_epochs`, about 0.2 s an
epoch), where a picture takes longer to draw than an epoch to train. "off" is the same command with
`--trainer.callbacks []` (no picture callbacks); "on" is the config as shipped. `fit` is timed from inside
(bench/fit_timer.py, the last pictures, GIFs and table included); the whole command's wall time (what the user waits
for, start-up and exit included) is the number to compare. For each "on" run, the epochs each picture drew (its PNGs)
are counted: the drawing skips epochs while it is busy, and always draws the first and the last.

    .venv/bin/python bench/visual_overhead.py [--epochs 5] [--short_epochs 15] [--short_batches 10] [--repeats 2]
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

from common import DATA_DIR, _cores, ensure_data, load  # noqa: E402


def timer(out: Path) -> str:
    return json.dumps({"class_path": "fit_timer.FitTimer", "init_args": {"out": str(out)}})


def run(variant: str, length: str, args: argparse.Namespace, workdir: Path, n: int) -> dict:
    """Seconds of `fit` and of the whole command; for "on", the epochs each picture drew."""
    name = f"{length}-{variant}-{n}"
    out, root = workdir / f"{name}.json", workdir / name
    epochs = args.epochs if length == "long" else args.short_epochs
    command = [sys.executable, "-m", "lvae", "fit", "--config", str(REPO / "configs" / "fashion_mnist.yaml"),
               "--data.data_dir", args.data_dir, "--trainer.max_epochs", str(epochs),
               "--trainer.accelerator", args.accelerator, "--trainer.default_root_dir", str(root),
               "--trainer.enable_progress_bar", "false"]
    if length == "short":
        command += ["--trainer.limit_train_batches", str(args.short_batches)]
    if variant == "off":
        command += ["--trainer.callbacks", f"[{timer(out)}]"]  # the timer alone: `--trainer.callbacks []` and the clock
    else:
        command += [f"--trainer.callbacks+={timer(out)}"]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true",
           "PYTHONPATH": os.pathsep.join([str(BENCH), os.environ.get("PYTHONPATH", "")])}
    start = time.perf_counter()
    done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    command_seconds = time.perf_counter() - start
    if done.returncode != 0 or not out.is_file():
        sys.exit(f"bench: {name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
    drawn = {folder.name: sorted(int(png.stem.split("_")[1]) for png in folder.glob("epoch_*.png"))
             for folder in sorted(root.glob("*/latents/*")) if folder.is_dir()}
    return {"fit": json.loads(out.read_text())["seconds"], "command": command_seconds,
            "drawn": {k: v for k, v in drawn.items() if v}, "epochs": epochs}


def drawn_summary(drawn: dict[str, list[int]], epochs: int) -> str:
    """How many epochs each picture drew, e.g. "scatter 5/15", and whether every one drew the first and the last."""
    ends = all(v and v[0] == 0 and v[-1] == epochs - 1 for v in drawn.values())
    counts = ", ".join(f"{name} {len(v)}/{epochs}" for name, v in drawn.items())
    return f"{counts}; first and last drawn by every picture: {'yes' if ends else 'NO'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the long runs (the whole training split)")
    parser.add_argument("--short_epochs", type=int, default=15)
    parser.add_argument("--short_batches", type=int, default=10, help="training batches an epoch of the short runs")
    parser.add_argument("--lengths", default="long,short", help="which epoch lengths to run: long, short or both")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--data_dir", default=str(DATA_DIR))
    args = parser.parse_args()
    ensure_data(args.data_dir)
    lengths = args.lengths.split(",")
    print(f"lvae fit, configs/fashion_mnist.yaml, full Fashion-MNIST, {args.accelerator}, {_cores()} cores; long: "
          f"{args.epochs} epochs; short: {args.short_epochs} epochs of {args.short_batches} batches; {load()} at start")
    results: dict[tuple[str, str], list[dict]] = {(length, v): [] for length in lengths for v in ("off", "on")}
    with tempfile.TemporaryDirectory() as tmp:
        for n in range(args.repeats):
            for length in lengths:
                for variant in ("off", "on"):
                    result = run(variant, length, args, Path(tmp), n)
                    results[length, variant].append(result)
                    line = (f"  repeat {n}, {length:5s}: pictures {variant:3s} fit {result['fit']:6.1f} s "
                            f"({result['fit'] / result['epochs']:.2f} s/epoch), the whole command "
                            f"{result['command']:5.1f} s")
                    if variant == "on":
                        line += f"\n    drawn: {drawn_summary(result['drawn'], result['epochs'])}"
                    print(line, flush=True)
    for length in lengths:
        off, on = results[length, "off"], results[length, "on"]
        ratios = {key: statistics.median(b[key] / a[key] for a, b in zip(off, on)) for key in ("fit", "command")}
        print(f"{length}: the whole command off {statistics.median(r['command'] for r in off):.1f} s, on "
              f"{statistics.median(r['command'] for r in on):.1f} s, median ratio {ratios['command']:.2f} (goal <= "
              f"1.25); fit alone median ratio {ratios['fit']:.2f}; epochs drawn (median over runs): "
              + ", ".join(f"{name} {statistics.median(len(r['drawn'].get(name, [])) for r in on):g}/{on[0]['epochs']}"
                          for name in on[0]["drawn"]))
    print(f"{load()} at end")


if __name__ == "__main__":
    main()
