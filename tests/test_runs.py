"""Runs keep the README's promises: `--ckpt_path last` finds the right run or says why not, a run id is never
overwritten, one command starts or continues a run, a run stopped by Ctrl-C mid-epoch continues as if never
stopped, evaluations stay with their run, a refused command writes nothing, and mistakes are answered quickly."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO, cli_env, lvae_said, run_dirs, run_lvae, small_fit_args, toy_digits, working_in, write_idx
from test_faults import MESSAGES  # what the README's table quotes
from wandb_run import read_run, records

from lvae import ConfigError
from lvae.ckpt_path import RUN_KEYS
from lvae.data import InMemoryBatches, saved_train_position


def fit(data: Path, *extra: str, check: bool = True):
    """A one-epoch `lvae fit` in this process, in the current folder."""
    return said(*small_fit_args(data, "--trainer.max_epochs", "1", *extra), check=check)


def said(*args: str, check: bool = True):
    proc = lvae_said(*args)
    if check and proc.returncode != 0:
        raise AssertionError(f"lvae {' '.join(args)} exited {proc.returncode}\n{proc.stderr[-6000:]}")
    return proc


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file below `folder` with its size and modification time: what a refused command must not change. A link
    is itself, not what it points at: W&B links each run's logs/debug-core.log to its service's log, outside the run
    folder, which grows with every W&B run of the machine."""
    return {str(p.relative_to(folder)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in folder.rglob("*")
            if p.is_file() or p.is_symlink()}


@pytest.fixture(scope="module")
def data(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data_dir with tiny MNIST and Fashion-MNIST sets."""
    root = tmp_path_factory.mktemp("two_datasets")
    (root / "MNIST").symlink_to(mnist_root / "MNIST")
    write_idx(root / "FashionMNIST" / "raw", "train", *toy_digits(360, seed=7))
    write_idx(root / "FashionMNIST" / "raw", "t10k", *toy_digits(100, seed=8))
    return root


@pytest.fixture(scope="module")
def two_runs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MNIST run `mnist-a`, then a Fashion-MNIST run: the most recent one."""
    with working_in(tmp_path_factory.mktemp("two_runs")) as cwd:
        fit(data, "--run_id", "mnist-a")
        fit(data, "--data.dataset", "fashion_mnist")
    return cwd


@pytest.fixture
def in_two_runs(two_runs: Path) -> Path:
    with working_in(two_runs):
        yield two_runs


def test_ckpt_path_last_refuses_a_run_of_other_data_and_names_the_run_that_agrees(data: Path, in_two_runs: Path):
    two_runs = in_two_runs
    (fashion,) = [r for r in run_dirs(two_runs / "runs") if r.name != "mnist-a"]
    before = snapshot(two_runs)
    proc = fit(data, "--ckpt_path", "last", check=False)  # MNIST, the most recent run Fashion-MNIST
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"would continue run {fashion.name}, {MESSAGES['other values']}" in proc.stderr
    assert "data.dataset: fashion_mnist (run) vs mnist (now)" in proc.stderr
    assert "--run_id mnist-a --ckpt_path last" in proc.stderr  # the newest run that agrees
    assert snapshot(two_runs) == before  # refused before anything was written


def test_run_id_with_ckpt_path_last_continues_that_run_with_the_new_lr(data: Path, in_two_runs: Path) -> None:
    run = in_two_runs / "runs" / "mnist-a"
    proc = fit(data, "--run_id", "mnist-a", "--ckpt_path", "last", "--trainer.max_epochs", "2",
               "--model.lr", "0.0004")
    assert "model.lr 0.001 -> 0.0004: applied to the restored optimizer" in proc.stderr
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 12 and last["datamodule_hyper_parameters"]["dataset"] == "mnist"
    # The optimizer stepped with the new value, and the checkpoint records it, as config-2.yaml does.
    assert [g["lr"] for g in last["optimizer_states"][0]["param_groups"]] == [0.0004]
    assert yaml.safe_load((run / "config-2.yaml").read_text())["model"]["init_args"]["lr"] == 0.0004


def test_an_existing_run_id_without_ckpt_path_is_refused_and_left_as_it_was(data: Path, in_two_runs: Path) -> None:
    run = in_two_runs / "runs" / "mnist-a"
    before = snapshot(run)
    proc = fit(data, "--run_id", "mnist-a", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"run mnist-a already exists (runs/mnist-a); {MESSAGES['run id taken']}" in proc.stderr
    assert "--run_id mnist-a --ckpt_path last" in proc.stderr and "another --run_id" in proc.stderr
    assert snapshot(run) == before


def test_other_ranks_and_requeues_share_an_existing_run_id(monkeypatch) -> None:
    from lvae.runs import first_start

    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID", "TORCHELASTIC_RESTART_COUNT",
                "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    assert first_start()  # the one process that checks
    for var, value in (("LOCAL_RANK", "1"), ("RANK", "3"), ("NODE_RANK", "1"), ("SLURM_PROCID", "5"),
                       ("TORCHELASTIC_RESTART_COUNT", "1"), ("SLURM_RESTART_COUNT", "2")):
        with monkeypatch.context() as env:
            env.setenv(var, value)
            assert not first_start(), var


def test_one_command_starts_a_run_then_continues_it(data: Path, workdir: Path) -> None:
    command = ["--run_id", "preemptible", "--ckpt_path", "last"]
    first = fit(data, *command)
    assert f"run preemptible {MESSAGES['named run started']}" in first.stderr
    run = workdir / "runs" / "preemptible"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 6
    again = fit(data, *command, "--trainer.max_epochs", "2")  # e.g. the requeued job
    assert "lvae: resumed run preemptible" in again.stderr and "starting it" not in again.stderr
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 12
    assert run_dirs(workdir / "runs") == [run]


@pytest.fixture(scope="module")
def evaluated(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, dict]:
    """One run, then `validate`, `test` and `predict` of its last checkpoint; fit's files before and after."""
    pictures = "--trainer.callbacks+=" + json.dumps({"class_path": "lvae.callbacks.PriorSamples"})
    with working_in(tmp_path_factory.mktemp("evaluated")) as cwd:
        fit(data, "--run_id", "r", pictures)
        run = cwd / "runs" / "r"
        before = snapshot(run)
        common = ["--data.data_dir", str(data), "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar",
                  "false", "--ckpt_path", str(run / "checkpoints" / "last.ckpt")]
        texts = [said("validate", *common).stderr,  # every picture, as lvae's default config has them
                 said("test", *common).stderr,
                 said("predict", *common).stderr]  # the default config's LatentExport writes the npz
    # Nothing a user cannot act on: Lightning asked to add lvae's own RandomState callback.
    assert not [text for text in texts if "Please add the following callbacks" in text], texts
    return run, before, snapshot(run)


def test_evaluations_write_into_their_runs_folder_and_leave_fits_files_alone(evaluated) -> None:
    run, before, after = evaluated
    assert run_dirs(run.parent) == [run]  # no new run folder
    assert {k: v for k, v in after.items() if k in before} == before  # fit's own files, pictures included
    assert sorted(p.name for p in (run / "validate" / "latents" / "prior_samples").glob("*.png")) == ["epoch_000.png"]
    assert (run / "predict" / "latents_test.npz").is_file()
    for sub in ("validate", "test", "predict"):
        assert (run / sub / "config.yaml").is_file()


def test_evaluations_are_wandb_runs_of_their_own_grouped_with_the_training_run(evaluated) -> None:
    run, _, _ = evaluated
    (fit_run,) = read_run(run / "wandb")
    assert [row["epoch"] for row in fit_run.rows_with("val/loss")] == [0]  # fit's history: fit's epochs only
    for sub in ("validate", "test"):
        (wandb_run,) = read_run(run / sub)
        assert wandb_run.run_id.startswith(f"r-{sub}-")
        (record,) = [r.run for r in records(next(wandb_run.folder.glob("*.wandb"))) if r.HasField("run")]
        assert (record.run_group, record.job_type) == ("r", sub)
    assert read_run(run / "test")[0].values("test/nll")


def test_a_run_that_diverged_before_its_first_checkpoint_is_not_advised_to_resume(data: Path, workdir: Path):
    proc = fit(data, "--model.lr", "100", "--trainer.max_epochs", "5", "--trainer.enable_checkpointing",
               "false", check=False)
    assert proc.returncode == 1 and "training diverged" in proc.stderr, proc.stderr[-3000:]
    (run,) = run_dirs(workdir / "runs")
    assert not (run / "checkpoints" / "last.ckpt").exists()
    assert f"Run {run.name} wrote no checkpoint: start it again instead of resuming." in proc.stderr


def test_a_bad_data_file_leaves_no_run_folder_and_no_wandb_run(mnist_root: Path, workdir: Path) -> None:
    raw = workdir / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_root / "MNIST" / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes()[:-100] if f.name.startswith("t10k-images") else f.read_bytes())
    proc = said(*small_fit_args(workdir / "data"), check=False)
    assert proc.returncode == 2 and "is truncated" in proc.stderr
    assert sorted(p.name for p in workdir.iterdir()) == ["data"]


def test_a_bad_value_is_one_short_message_pointing_at_help(tmp_path: Path) -> None:
    # `lvae fit --model.latent_dim 0`, reporting at exit which heavy modules the command's own process loaded
    held = "('openTSNE', 'sklearn', 'wandb')"
    code = ("import atexit, runpy, sys; atexit.register(lambda: print('HELD', [m for m in " + held + " if m in "
            "sys.modules], file=sys.stderr)); sys.argv = ['lvae', 'fit', '--model.latent_dim', '0']; "
            "runpy.run_module('lvae', run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          timeout=120)
    said = [line for line in proc.stderr.splitlines() if not line.startswith("HELD")]
    assert proc.returncode == 2 and len(said) <= 5, said
    assert said[0].startswith('lvae fit: error: Parser key "model.latent_dim": Not of type PositiveInt: 0')
    assert said[-1] == f"See 'lvae fit --help' {MESSAGES['bad value']}"
    # Neither W&B nor the drawing stack is loaded by the process the user waits for (the drawing process, started
    # early, imports the drawing stack on the other core)
    assert "HELD []" in proc.stderr.splitlines()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize(("args", "said"), [
    (["--data.dataset", "nosuch"], 'Parser key "data.dataset": expected one of \'mnist\', \'fashion_mnist\', '
                                   '\'kmnist\'; got nosuch'),
    (["--model.likelihood", "poisson"], 'Parser key "model.likelihood": expected one of \'bernoulli\', '
                                        '\'gaussian\'; got poisson'),
])
def test_a_bad_choice_is_named_with_the_value_given(tmp_path: Path, monkeypatch, capsys, args: list[str], said: str):
    from lvae.cli import main

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit:
        main(["fit", *args])
    printed = capsys.readouterr().err
    assert exit.value.code == 2 and printed.startswith(f"lvae fit: error: {said}\n"), printed
    assert not list(tmp_path.iterdir())


def test_help_describes_lvae(workdir: Path) -> None:
    proc = said("--help")
    assert "Train a VAE" in proc.stdout and "Lightning Trainer command line tool" not in proc.stdout
    assert "runs/<run_id>/validate/" in proc.stdout  # the subcommands say what lvae does, not Lightning's docstrings
    assert "Runs the full optimization routine" not in proc.stdout  # (argparse's private _choices_actions)


def test_fit_help_lists_the_default_models_and_data_modules_arguments(workdir: Path) -> None:
    proc = said("fit", "--help")
    model = proc.stdout.split("Arguments of the default model, lvae.VAE", 1)[1]
    assert "--model.latent_dim LATENT_DIM" in model and "default: 20" in model and "--model.likelihood" in model
    data = model.split("Arguments of the default data, lvae.MNISTDataModule", 1)[1]
    assert "--data.batch_size BATCH_SIZE" in data and "--data.dataset" in data
    assert "--model.help CLASS_PATH" in proc.stdout  # how to see another class's arguments


def test_print_config_shows_what_the_run_uses_and_writes_nothing(data: Path, workdir: Path) -> None:
    proc = fit(data, "--run_id", "shown", "--print_config")
    config = yaml.safe_load(proc.stdout)
    logger = config["trainer"]["logger"]
    assert logger["class_path"] == "lightning.pytorch.loggers.WandbLogger"
    assert (logger["init_args"]["save_dir"], logger["init_args"]["offline"]) == ("runs/shown", True)
    assert config["checkpoint"]["dirpath"] == "runs/shown/checkpoints"
    assert sorted(p.name for p in workdir.iterdir()) == []


def test_the_keys_that_define_a_run_are_published() -> None:
    readme = (REPO / "README.md").read_text()
    for key in RUN_KEYS:
        assert f"`{key}`" in readme, key


# ----- Ctrl-C in the middle of an epoch, then --ckpt_path last -----

PROBE_ENV = {**cli_env(), "PYTHONPATH": str(REPO / "tests")}
STOP_AT = 3  # global step: epoch 0 of 2, 6 steps each


def stepwise_args(data: Path, record: Path, *extra: str) -> list[str]:
    probe = {"class_path": "runs_probe.Record", "init_args": {"out": str(record)}}
    pictures = {"class_path": "lvae.callbacks.PriorSamples"}
    return small_fit_args(data, "--trainer.callbacks+=" + json.dumps(probe),
                          "--trainer.callbacks+=" + json.dumps(pictures), *extra)


def trained(record: Path) -> dict[int, list[int]]:
    """The inputs trained on in each epoch, in order."""
    epochs: dict[int, list[int]] = {}
    for line in record.read_text().splitlines():
        step = json.loads(line)
        epochs.setdefault(step["epoch"], []).extend(step["index"])
    return epochs


def outcome(run: Path, record: Path) -> dict:
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    history = [row for part in read_run(run) for row in part.history]
    return {"global_step": last["global_step"], "epoch": last["epoch"],
            "steps": [json.loads(line)["step"] for line in record.read_text().splitlines()],
            "trained": trained(record),
            "val/loss": {row["epoch"]: row["val/loss"] for row in history if "val/loss" in row},
            "val epochs": [row["epoch"] for row in history if "val/loss" in row],
            "train/loss": {row["epoch"]: row["train/loss"] for row in history if "train/loss" in row},
            "pictures": sorted(p.name for p in (run / "latents" / "prior_samples").glob("epoch_*.png")),
            "checkpoints": sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))}


@pytest.fixture(scope="module")
def straight(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    with working_in(tmp_path_factory.mktemp("straight")) as cwd:
        said(*stepwise_args(data, cwd / "record.jsonl"))
    (run,) = run_dirs(cwd / "runs")
    return outcome(run, cwd / "record.jsonl")


@pytest.fixture(scope="module", params=["on_train_batch_start", "on_after_backward"])
def interrupted(request, data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Ctrl-C at global step STOP_AT, with the batch handed out but not trained, or in the middle of its step;
    then the same command with --ckpt_path last. The Ctrl-C comes to a process of its own, as a user's does; the
    commands after it run in this process."""
    cwd = tmp_path_factory.mktemp(f"interrupted_{request.param}")
    record = cwd / "record.jsonl"
    ctrl_c = {"class_path": "runs_probe.CtrlC", "init_args": {"step": STOP_AT, "hook": request.param}}
    stopped = run_lvae(stepwise_args(data, record, "--trainer.callbacks+=" + json.dumps(ctrl_c)), cwd, env=PROBE_ENV,
                       check=False)
    (run,) = run_dirs(cwd / "runs")
    at_stop = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    before = snapshot(cwd)
    with working_in(cwd):
        refused = said(*stepwise_args(data, record, "--ckpt_path", "last", "--data.batch_size", "32"), check=False)
        refused_wrote = snapshot(cwd) != before
        resumed = said(*stepwise_args(data, record, "--ckpt_path", "last", "--trainer.enable_progress_bar", "true"))
    return {"stopped": stopped, "at_stop": at_stop, "run": run, "refused": refused, "refused_wrote": refused_wrote,
            "resumed": resumed, "hook": request.param, **outcome(run, record)}


def test_ctrl_c_mid_epoch_exits_130_naming_the_run(interrupted: dict) -> None:
    stopped, run = interrupted["stopped"], interrupted["run"]
    assert stopped.returncode == 130 and "Traceback" not in stopped.stderr, stopped.stderr[-3000:]
    # Stopped inside the step: the step is finished first, so the checkpoint holds whole steps only.
    step = STOP_AT + (interrupted["hook"] == "on_after_backward")
    assert f"interrupted at epoch 0, step {step}; saved" in stopped.stderr
    assert f"{MESSAGES['continue the run']} {run.name} --ckpt_path last." in stopped.stderr
    # Lightning keeps the loader's state under loops/fit_loop/state_dict/combined_loader: the finished steps of
    # its own batch progress (fit_loop.epoch_loop.batch_progress), not the batches the loader handed out.
    position = saved_train_position(interrupted["at_stop"])
    assert (position["epoch"], position["batches_done"], position["batches"]) == (0, step, 6)
    assert interrupted["at_stop"]["global_step"] == step


def test_resume_after_ctrl_c_mid_epoch_is_the_uninterrupted_run(interrupted: dict, straight: dict) -> None:
    for key in ("global_step", "epoch", "val epochs", "pictures", "checkpoints", "trained"):
        assert interrupted[key] == straight[key], key  # every input trained exactly once, in the same order
    assert interrupted["steps"] == list(range(1, 13))  # each step once, none lost or repeated
    # The random state is restored too: the same weights, so the same losses. Epoch 0's train/loss averages
    # only the steps after the resume (its running mean is not in the checkpoint).
    assert interrupted["val/loss"] == pytest.approx(straight["val/loss"], rel=1e-5)
    assert interrupted["train/loss"][1] == pytest.approx(straight["train/loss"][1], rel=1e-5)


def test_the_progress_bar_of_a_resumed_epoch_shows_its_length(interrupted: dict) -> None:
    bar = interrupted["resumed"].stdout
    assert re.search(r"Epoch 0: 100%[^\r\n]* 6/6 ", bar), bar[-2000:]
    assert not re.search(r"(Training|Epoch \d+):[^\r\n]* [1-9]\d*/\?", bar), bar[-2000:]  # "Training: 4/?"


def test_a_new_batch_size_in_the_middle_of_an_epoch_is_refused(interrupted: dict) -> None:
    refused = interrupted["refused"]
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.stderr[-3000:]
    assert f"{MESSAGES['mid-epoch batches']}: --data.batch_size 64 on 1 process(es) (now 32)" in refused.stderr
    assert "the same command with --data.batch_size 64 --trainer.max_epochs 1)" in refused.stderr
    assert not interrupted["refused_wrote"]


def test_a_half_finished_epoch_continues_only_with_the_batches_it_started_with(monkeypatch) -> None:
    images, labels = torch.zeros(100, 28, 28, dtype=torch.uint8), torch.arange(100)
    state = InMemoryBatches(images, labels, 10, shuffle=True, seed=0, trained=lambda: 4).state_dict()  # 4 of 10
    same = InMemoryBatches(images, labels, 10, shuffle=True, seed=0)
    same.load_state_dict(state)
    rest = torch.cat([index for _, _, index in same])
    assert torch.equal(rest, same.sampler.order()[40:])  # the epoch's order after its 4 finished steps
    monkeypatch.setattr(InMemoryBatches, "_rank_world", staticmethod(lambda: (0, 2)))  # now 2 processes
    with pytest.raises(ConfigError, match=re.escape("--data.batch_size 10 on 1 process(es) (now 10 on 2)")):
        InMemoryBatches(images, labels, 10, shuffle=True, seed=0).load_state_dict(state)


def test_without_a_logger_the_pictures_still_go_into_the_run_folder(data: Path, workdir: Path) -> None:
    fit(data, "--trainer.logger", "false",
        "--trainer.callbacks+=" + json.dumps({"class_path": "lvae.callbacks.PriorSamples"}))
    (run,) = run_dirs(workdir / "runs")
    assert (run / "latents" / "prior_samples" / "epoch_000.png").is_file()
