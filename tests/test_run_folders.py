"""What someone else can cause, answered in-process: a run id is a name and never a path, a run folder goes to one of
two commands that start it at once, a live run is continued by one process at a time, and a checkpoint names no
class that lvae would import or build unless lvae defines it."""

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch
import yaml
from conftest import lvae
from test_faults import MESSAGES  # what the README's table quotes

from lvae import CheckpointError, ConfigError
from lvae.ckpt_path import check_checkpoint, flags
from lvae.runs import RunFolder, launcher_run_id

RULE = MESSAGES["run id rule"]


def fit_args(data_dir: Path, *extra: str) -> list[str]:
    return ["fit", "--data.data_dir", str(data_dir), "--trainer.max_epochs", "1", "--trainer.accelerator", "cpu",
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]", *extra]


@pytest.mark.parametrize("run_id", ["../escape2", "/tmp/abs-run", "a b", "x" * 65, "-flag", ".hidden", "", "é"])
@pytest.mark.parametrize("logger", ["false", "default W&B"])
def test_a_run_id_that_is_not_a_name_is_refused_before_anything_exists(
        workdir: Path, mnist_root: Path, capsys: pytest.CaptureFixture, run_id: str, logger: str) -> None:
    loggers = ["--trainer.logger", "false"] if logger == "false" else []
    assert lvae(*fit_args(mnist_root, f"--run_id={run_id}", *loggers)) == 2
    said = capsys.readouterr().err
    assert RULE in said and "Give another --run_id." in said and "Traceback" not in said, said
    assert said.count("\n") <= 2, said
    assert list(workdir.parent.iterdir()) == [workdir] and not list(workdir.iterdir())  # no folder, no W&B run
    assert not Path("/tmp/abs-run").exists()


def test_a_name_of_64_characters_is_a_run_id(workdir: Path, mnist_root: Path, capsys: pytest.CaptureFixture):
    run_id = "Run-1_a." + "7" * 56
    assert lvae(*fit_args(mnist_root, "--run_id", run_id, "--print_config")) == 0
    assert f"run_id: {run_id}\n" in capsys.readouterr().out
    assert not list(workdir.iterdir())  # --print_config writes nothing


def test_a_launchers_id_obeys_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_JOB_ID", raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "my job")
    with pytest.raises(ConfigError, match=r"'my job' \(from torchrun's --rdzv-id\) is refused: a run id is a "
                                          r".* Set torchrun's --rdzv-id to such a name, or give the run's name with "
                                          r"--run_id\."):
        launcher_run_id()


def test_of_commands_that_start_one_run_at_once_one_gets_it(tmp_path: Path) -> None:
    folder, start = tmp_path / "runs" / "race3", threading.Barrier(8)
    outcomes: list[str] = []

    def start_run() -> None:
        run = RunFolder()
        start.wait()
        try:
            run.claim(folder)
            outcomes.append("claimed")
        except ConfigError as err:
            outcomes.append(str(err))

    threads = [threading.Thread(target=start_run) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("claimed") == 1 and len(outcomes) == 8, outcomes
    assert all(o.startswith("run race3 already exists") for o in outcomes if o != "claimed"), outcomes


def test_a_refused_command_removes_the_folder_it_claimed_and_nothing_else(tmp_path: Path) -> None:
    mine, other = RunFolder(), RunFolder()
    mine.claim(tmp_path / "runs" / "a")
    (tmp_path / "runs" / "a" / "config.yaml").write_text("written before the refusal")
    other.hold(tmp_path / "runs" / "b")  # a continued run: held, not claimed
    mine.release(refused=True)
    other.release(refused=True)
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["b"]
    first = RunFolder()
    first.claim(tmp_path / "new" / "runs" / "a")  # makes new/ and runs/ too
    first.release(refused=True)
    assert not (tmp_path / "new").exists()


def test_a_live_run_is_not_continued_by_a_second_process(workdir: Path, mnist_root: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    # Another process trains run live: it holds the run's folder. (Here a `python -c` that holds it and waits.)
    run = workdir / "runs" / "live"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from lvae.runs import RunFolder; run = RunFolder(); run.hold(Path(sys.argv[1])); "
                               "print('held', flush=True); time.sleep(120)", str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        (run / "checkpoints").mkdir()
        torch.save({"state_dict": {}}, run / "checkpoints" / "last.ckpt")
        for args in (["--run_id", "live", "--ckpt_path", "last"], ["--ckpt_path", "last"]):
            assert lvae(*fit_args(mnist_root, *args)) == 2
            said = capsys.readouterr().err
            assert f"run live is being trained by process {holder.pid} on " in said, said
            assert MESSAGES["live run"] in said
        (run / "checkpoints" / "last.ckpt").unlink()  # the first epoch: no checkpoint yet
        assert lvae(*fit_args(mnist_root, "--run_id", "live", "--ckpt_path", "last")) == 2
        assert f"run live is being trained by process {holder.pid} on " in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    RunFolder().hold(run)  # however the holder ended, SIGKILL included, a requeued job gets the run


def test_a_run_without_last_ckpt_is_advised_its_other_checkpoint(workdir: Path, mnist_root: Path,
                                                                 capsys: pytest.CaptureFixture) -> None:
    (workdir / "runs" / "r5" / "checkpoints").mkdir(parents=True)
    (workdir / "runs" / "r5" / "checkpoints" / "best-epoch000.ckpt").write_bytes(b"")
    assert lvae(*fit_args(mnist_root, "--run_id", "r5", "--ckpt_path", "last")) == 2
    said = capsys.readouterr().err
    assert f"run r5 {MESSAGES['no last.ckpt']} best-epoch000.ckpt. Continue it from one of those: " \
           "--run_id r5 --ckpt_path runs/r5/checkpoints/best-epoch000.ckpt" in said, said
    assert "remove" not in said  # the advice keeps the checkpoint


# ----- checkpoints import nothing that lvae did not write -----

EVIL = "evil_mod_lvae_test"


@pytest.fixture
def evil_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A module on sys.path whose import writes a marker file: what a checkpoint must never make lvae import."""
    marker = tmp_path / "imported.txt"
    (tmp_path / f"{EVIL}.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                         "import torch\nclass Encoder(torch.nn.Module):\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


@pytest.fixture(scope="module")
def own_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An lvae VAE's checkpoint, as `torch.save` of what Lightning writes: weights and hyperparameters."""
    from lvae import VAE

    model = VAE(latent_dim=4, hidden_dim=16, latent_points=0)
    return {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
            "pytorch-lightning_version": "2.6.0"}


LIGHTNING = {"_instantiator": "lightning.pytorch.cli.instantiate_module"}


@pytest.mark.parametrize(("hparams", "named"), [
    ({"encoder": f"{EVIL}.Encoder"}, f"encoder names the class '{EVIL}.Encoder'"),
    ({**LIGHTNING, "encoder": f"{EVIL}.Encoder"}, f"encoder names the class '{EVIL}.Encoder'"),
    ({"encoder": {"class_path": f"{EVIL}.Encoder"}}, "encoder.class_path names the class"),
    ({"decoder": {"class_path": "lvae.networks.MLPDecoder", "init_args": {"net": {"class_path": f"{EVIL}.X"}}}},
     "decoder.init_args.net.class_path names the class"),
    ({"decoder": {"class_path": "lvae.networks.MLPDecoder", "init_args": {"act": f"{EVIL}.act"}}},
     f"decoder.init_args.act names the class '{EVIL}.act'"),
    ({**LIGHTNING, "_class_path": f"{EVIL}.Model"}, f"_class_path names the class '{EVIL}.Model'"),
    # Classes that lvae's modules merely import are not lvae's, whatever path reaches them.
    ({"encoder": {"class_path": "lvae.model.Normal"}}, "encoder.class_path names the class 'lvae.model.Normal'"),
    ({"encoder": {"class_path": "lvae.model.nn.Linear"}}, "encoder.class_path names the class 'lvae.model.nn.Linear'"),
    ({**LIGHTNING, "encoder": "lvae.model.nn.Linear"}, "encoder names the class 'lvae.model.nn.Linear'"),
])
def test_a_checkpoint_naming_a_class_lvae_did_not_write_is_refused_before_it_is_imported(
        tmp_path: Path, evil_module: Path, own_checkpoint: dict, hparams: dict, named: str) -> None:
    from lvae import VAE

    path = tmp_path / "shared.ckpt"
    torch.save({**own_checkpoint, "hyper_parameters": {**own_checkpoint["hyper_parameters"], **hparams}}, path)
    with pytest.raises(CheckpointError, match=f"is refused: its hyperparameter {named}") as refused:
        VAE.load_from_checkpoint(path)
    assert MESSAGES["foreign class"] in str(refused.value)
    assert not evil_module.exists() and EVIL not in sys.modules


@pytest.mark.parametrize("hparams", [{}, LIGHTNING, {**LIGHTNING, "_class_path": "lvae.model.VAE"},
                                     {"encoder": {"class_path": "lvae.networks.MLPEncoder",
                                                  "init_args": {"hidden_dim": 8}}}])
def test_lvaes_own_classes_load_in_every_form(tmp_path: Path, own_checkpoint: dict, hparams: dict) -> None:
    from lvae import VAE

    path = tmp_path / "own.ckpt"
    saved = {**own_checkpoint["hyper_parameters"], **hparams}
    state = own_checkpoint["state_dict"]
    if "encoder" in hparams:
        state = {k: v for k, v in state.items() if not k.startswith("encoder.")}
    torch.save({**own_checkpoint, "hyper_parameters": saved, "state_dict": state}, path)
    model = VAE.load_from_checkpoint(path, strict="encoder" not in hparams)
    assert model.hparams.latent_dim == 4


def test_advice_never_offers_a_value_lvae_would_refuse(tmp_path: Path, evil_module: Path,
                                                       own_checkpoint: dict) -> None:
    from jsonargparse import Namespace

    hparams = {**own_checkpoint["hyper_parameters"], "latent_dim": 3,
               "encoder": {"class_path": f"{EVIL}.Encoder", "init_args": {}}}
    path = tmp_path / "other.ckpt"
    torch.save({**own_checkpoint, "hyper_parameters": hparams}, path)
    config = Namespace(model=Namespace(class_path="lvae.VAE", init_args=Namespace(latent_dim=4, encoder=None)))
    with pytest.raises(CheckpointError) as refused:
        check_checkpoint(str(path), config)
    advice = str(refused.value).split("Use the checkpoint's values (")[1]
    assert advice.startswith("--model.latent_dim 3)") and EVIL not in advice, str(refused.value)
    assert not evil_module.exists()
    # What is offered can be pasted: lists and networks as JSON, one shell word each.
    assert flags([("model.widths", [3, 64, 64]), ("model.encoder", {"class_path": "lvae.networks.ConvEncoder"}),
                  ("data.root", "my images"), ("model.image_shape", [1, 28, 28])]) == \
        "--data.root 'my images' --model.widths '[3, 64, 64]' " \
        "--model.encoder '{\"class_path\": \"lvae.networks.ConvEncoder\"}'"  # image_shape: lvae takes it from the data


# ----- refusals that name the file and the fix, and print no run that never exists -----

def test_a_config_that_is_not_text_is_refused_naming_it(workdir: Path, mnist_root: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    (workdir / "garbage.yaml").write_bytes(bytes(range(256)) * 2)
    assert lvae(*fit_args(mnist_root, "--config", "garbage.yaml")) == 2
    said = capsys.readouterr().err
    assert MESSAGES["not text"] in said and said == "lvae: error: --config garbage.yaml is not a YAML file: byte 128 is not UTF-8 text (b'\\x80'). " \
                   "Give the path of a .yaml config.\n", said
    assert lvae("fit", "--config", "configs/mnist_z2.yaml") == 2  # the README's path, typed by a pip user
    assert "no such file; lvae comes with a config of that name: --config mnist_z2" in capsys.readouterr().err
    assert sorted(p.name for p in workdir.iterdir()) == ["garbage.yaml"]


def test_a_runs_folder_that_cannot_be_written_is_named_with_the_fix(workdir: Path, mnist_root: Path,
                                                                     capsys: pytest.CaptureFixture,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (workdir / "afile").write_text("")
    assert lvae(*fit_args(mnist_root, "--trainer.default_root_dir", "afile")) == 2
    said = capsys.readouterr().err
    assert MESSAGES["unwritable runs"] in said and "lvae: error: runs go into afile, and lvae cannot write there (afile: a file, not a folder). Set " \
           "--trainer.default_root_dir to a folder you can write, or make room." in said, said
    assert "lvae: run " not in said and "Traceback" not in said  # no run was announced
    # A read-only or full disk (root ignores permissions, so the kernel's answer is played here).
    def refuse(path: Path, *args, **kwargs) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(Path, "mkdir", refuse)
    assert lvae(*fit_args(mnist_root, "--trainer.default_root_dir", "shared/runs")) == 2
    assert "runs go into shared/runs, and lvae cannot write there (shared/runs: Permission denied)" in \
        capsys.readouterr().err
    assert sorted(p.name for p in workdir.iterdir()) == ["afile"]


def test_a_loggers_own_folder_that_cannot_be_made_names_that_logger_not_the_runs_folder(
        workdir: Path, mnist_root: Path, capsys: pytest.CaptureFixture) -> None:
    (workdir / "afile").write_text("")
    wandb = '{"class_path": "lightning.pytorch.loggers.WandbLogger", "init_args": {"save_dir": "afile/wandb"}}'
    assert lvae(*fit_args(mnist_root, "--trainer.logger", wandb)) == 2
    said = capsys.readouterr().err
    assert "lvae: error: WandbLogger writes into afile/wandb, and lvae cannot write there (afile/wandb: a file, " \
           "not a folder). Set that logger's save_dir (--trainer.logger.init_args.save_dir) to a folder you can " \
           "write, or make room." in said and "default_root_dir" not in said, said
    assert sorted(p.name for p in workdir.iterdir()) == ["afile"]  # the run folder made for it is removed again


def test_a_refused_data_file_announces_no_run(workdir: Path, mnist_root: Path, capfd: pytest.CaptureFixture):
    raw = workdir / "data" / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for f in (mnist_root / "MNIST" / "raw").iterdir():
        (raw / f.name).write_bytes(f.read_bytes()[:-100] if f.name.startswith("t10k-images") else f.read_bytes())
    assert lvae(*fit_args(workdir / "data")) == 2  # with the default W&B logger
    captured = capfd.readouterr()  # W&B writes to the file descriptors
    assert "is truncated" in captured.err
    assert "lvae: run" not in captured.out + captured.err and "wandb:" not in captured.out + captured.err
    assert sorted(p.name for p in workdir.iterdir()) == ["data"]


def test_an_offline_run_is_announced_once_it_exists_in_lvaes_line_only(
        workdir: Path, mnist_root: Path, capfd: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    assert lvae(*fit_args(mnist_root, "--run_id", "quiet")) == 0
    printed = capfd.readouterr()
    assert "wandb" not in (printed.out + printed.err).lower(), printed  # W&B's own lines, written to the terminal
    lines = caplog.messages  # Lightning's and lvae's, through Python's logging
    (announced,) = [i for i, line in enumerate(lines) if line.startswith("lvae: run quiet in runs/quiet")]
    assert lines[announced].endswith("(W&B offline: wandb sync runs/quiet/wandb/offline-run-* uploads it)")
    assert announced > lines.index("lvae: mnist: train 330, val 30, test 100")  # after the data module's checks
    assert list((workdir / "runs" / "quiet" / "wandb").glob("offline-run-*"))


def damaged(checkpoint: dict, part: str) -> dict:
    """`checkpoint` with one part damaged as a careless tool or an attacker would."""
    state = dict(checkpoint["state_dict"])
    if part == "NaN weights":
        state["encoder.mu.weight"] = torch.full_like(state["encoder.mu.weight"], float("nan"))
    elif part == "a weight of another shape":
        state["decoder.net.0.weight"] = torch.zeros(3, 3)
    elif part == "a weight that is a string":
        state["decoder.net.0.bias"] = "zeros"
    elif part == "a state_dict that is a list":
        return {**checkpoint, "state_dict": list(state.values())}
    elif part == "an epoch that is text":
        return {**checkpoint, "epoch": "three"}
    return {**checkpoint, "state_dict": state}


@pytest.mark.parametrize(("part", "said"), [
    ("NaN weights", "is not a Lightning checkpoint: its weight encoder.mu.weight holds 64 NaN or infinite values: it "
                    "is the state of a diverged run"),
    ("a weight of another shape", "the checkpoint's weight decoder.net.0.weight has shape (3, 3), and this model's "
                                  "has (16, 4): the checkpoint was not written for this model"),
    ("a weight that is a string", "is not a Lightning checkpoint: its weight decoder.net.0.bias is a str, not a "
                                  "tensor"),
    ("a state_dict that is a list", "is not a Lightning checkpoint: its state_dict is a list, not a dict"),
    ("an epoch that is text", "is not a Lightning checkpoint: its epoch is a str, not a int"),
])
@pytest.mark.parametrize("subcommand", ["test", "validate"])
def test_a_damaged_checkpoint_is_one_sentence(workdir: Path, mnist_root: Path, own_checkpoint: dict,
                                              capfd: pytest.CaptureFixture, subcommand: str, part: str, said: str):
    path = workdir / "damaged.ckpt"
    torch.save(damaged(own_checkpoint, part), path)
    assert lvae(subcommand, "--data.data_dir", str(mnist_root), "--trainer.accelerator", "cpu",
                "--model.latent_dim", "4", "--model.hidden_dim", "16", "--model.latent_points", "0",
                "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
                "--ckpt_path", str(path)) == 2
    printed = capfd.readouterr().err
    assert said in printed and "Traceback" not in printed, printed[-3000:]
    assert MESSAGES["damaged checkpoint"] in printed or "this model's has" in printed
    assert sorted(p.name for p in workdir.iterdir()) == ["damaged.ckpt"]  # no evaluation folder, no W&B run


def test_online_wandb_without_an_api_key_is_refused_before_any_folder(
        workdir: Path, mnist_root: Path, capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(workdir.parent))  # and no login in ~/.netrc
    assert lvae(*fit_args(mnist_root, "--run_id", "online")) == 2
    said = capfd.readouterr().err
    assert MESSAGES["online without a key"] in said and "WANDB_MODE=online asks W&B to log online, and W&B has no API key here. Run `wandb login`, set " \
           "WANDB_API_KEY, or unset WANDB_MODE" in said, said
    assert not list(workdir.iterdir())  # the id is not blocked by an empty folder


LAUGHS = "a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n" + "".join(
    f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 9))


def test_small_files_that_would_take_memory_without_end_are_refused_through_lvae(
        workdir: Path, mnist_root: Path, own_checkpoint: dict, capfd: pytest.CaptureFixture) -> None:
    import zipfile

    (workdir / "laughs.yaml").write_text(LAUGHS)
    assert lvae(*fit_args(mnist_root, "--config", "laughs.yaml")) == 2
    assert f"--config laughs.yaml is refused: {MESSAGES['billion laughs']}" in capfd.readouterr().err
    # The same checkpoint, its records deflated: small on disk, its full size once read.
    torch.save(own_checkpoint, workdir / "own.ckpt")
    with zipfile.ZipFile(workdir / "own.ckpt") as plain, \
            zipfile.ZipFile(workdir / "packed.ckpt", "w", zipfile.ZIP_DEFLATED) as packed:
        for record in plain.infolist():
            packed.writestr(record.filename, plain.read(record))
    assert lvae("test", "--data.data_dir", str(mnist_root), "--model.latent_dim", "4", "--model.hidden_dim", "16",
                "--trainer.logger", "false", "--ckpt_path", "packed.ckpt") == 2
    assert "--ckpt_path packed.ckpt is refused: " in capfd.readouterr().err
    with pytest.raises(CheckpointError, match=MESSAGES["compressed checkpoint"]):
        from lvae import VAE

        VAE.load_from_checkpoint(workdir / "packed.ckpt")
    assert sorted(p.name for p in workdir.iterdir()) == ["laughs.yaml", "own.ckpt", "packed.ckpt"]


def test_the_advice_to_continue_a_run_of_another_data_module_parses_as_pasted(
        workdir: Path, mnist_root: Path, own_checkpoint: dict, capsys: pytest.CaptureFixture) -> None:
    import shlex

    import numpy as np
    from PIL import Image

    folder = workdir / "my images"  # a space: the advice quotes it
    for name in ("cats", "dogs"):
        (folder / name).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(np.full((16, 16, 3), 40 * i, dtype=np.uint8)).save(folder / name / f"{i}.png")
    run = workdir / "runs" / "pets"
    (run / "checkpoints").mkdir(parents=True)
    torch.save({**own_checkpoint, "hyper_parameters": {**own_checkpoint["hyper_parameters"], "image_shape": [3, 16, 16]},
                "datamodule_hyper_parameters": {"_class_path": "lvae.image_folder.ImageFolderDataModule",
                                                "root": str(folder), "image_size": 16, "channels": 3,
                                                "val_fraction": 0.25, "split_seed": 0}},
               run / "checkpoints" / "last.ckpt")
    common = ["--model.latent_dim", "4", "--model.hidden_dim", "16", "--model.latent_points", "0"]
    assert lvae("fit", "--run_id", "pets", "--ckpt_path", "last", *common) == 2  # the MNIST default: refused
    said = capsys.readouterr().err
    advice = said.split("Continue it with its own values (")[1].split(")")[0]
    assert advice.startswith("--data lvae.image_folder.ImageFolderDataModule --data.") and "--data.root '" in advice and \
        "image_shape" not in advice, advice
    assert lvae("fit", "--run_id", "pets", "--ckpt_path", "last", *common, *shlex.split(advice), "--print_config") == 0
    data = yaml.safe_load(capsys.readouterr().out)["data"]  # (YAML folds a long path with a space onto two lines)
    assert data["class_path"] == "lvae.image_folder.ImageFolderDataModule" and data["init_args"]["root"] == str(folder)


def test_tensorboard_and_csv_loggers_named_on_the_command_line_write_into_the_run_folder(
        workdir: Path, mnist_root: Path) -> None:
    for loggers in ("lightning.pytorch.loggers.TensorBoardLogger", '["CSVLogger", {"class_path": "TensorBoardLogger"}]'):
        run_id = "tb" if loggers.startswith("lightning") else "both"
        assert lvae(*fit_args(mnist_root, "--run_id", run_id, "--trainer.logger", loggers)) == 0
        run = workdir / "runs" / run_id
        assert list(run.glob("events.out.tfevents.*")), sorted(p.name for p in run.iterdir())
        assert (run / "metrics.csv").is_file() == (run_id == "both")
    assert sorted(p.name for p in workdir.iterdir()) == ["runs"]  # no lightning_logs/ beside it
    from lvae.cli import logger_with_save_dir

    for as_given in ("false", "null", "WandbLogger", '{"class_path": "CSVLogger", "init_args": {"save_dir": "logs"}}'):
        assert logger_with_save_dir(as_given) == as_given


def test_a_full_disk_says_so_and_names_the_checkpoint_it_could_not_write(
        workdir: Path, mnist_root: Path, small_disk: Path, capfd: pytest.CaptureFixture) -> None:
    # The run's config fits; its first checkpoint (about 8 MB) does not.
    assert lvae(*fit_args(mnist_root, "--run_id", "full", "--trainer.logger", "false",
                          "--trainer.default_root_dir", str(small_disk))) == 1
    said = capfd.readouterr().err
    checkpoint = small_disk / "full" / "checkpoints" / "best-epoch000.ckpt"
    assert f"lvae: error: {checkpoint} could not be written (No space left on device; " in said, said[-3000:]
    assert "The checkpoints on disk are whole" in said and "Traceback" not in said, said[-3000:]
    assert not list(small_disk.rglob("*.partial"))  # nothing half-written is left to fill the disk


def test_help_names_the_packaged_configs_and_the_bar_no_scrap_of_the_run_id(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    import lightning as L
    from lightning.pytorch.loggers import CSVLogger

    from lvae.cli import ResumableProgressBar

    assert lvae("fit", "--help") == 0
    assert "or the name of one installed with lvae (cifar10, ddp, fashion_mnist, image_folder, mnist, mnist_z2)" in \
        " ".join(capsys.readouterr().out.split())
    trainer = L.Trainer(logger=CSVLogger(tmp_path, version="20261206-201114-6fdc"), accelerator="cpu")
    assert "v_num" not in ResumableProgressBar().get_metrics(trainer, L.LightningModule())


def test_lvae_explore_is_a_subcommand_listed_in_help(workdir: Path, capsys: pytest.CaptureFixture) -> None:
    assert lvae("--help") == 0
    assert "`lvae explore runs/<run_id>` writes a run's latent explorer page" in " ".join(capsys.readouterr().out.split())
    (workdir / "runs" / "old").mkdir(parents=True)  # a run from before the explorer
    assert lvae("explore", "runs/old") == 2
    said = capsys.readouterr().err
    assert said.startswith("lvae: error: runs/old kept no epochs for the explorer") and "nothing to replay" in said


def test_an_in_process_command_closes_the_wandb_run_it_started(workdir: Path, mnist_root: Path) -> None:
    # A process's exit closes W&B's run; a notebook's (or a test's) next command must find it closed and whole.
    import wandb
    from wandb_run import read_run, records

    assert lvae(*fit_args(mnist_root, "--run_id", "closed")) == 0
    assert wandb.run is None
    (run,) = read_run(workdir / "runs" / "closed", timeout=10)
    kinds = {record.WhichOneof("record_type") for record in records(next(run.folder.glob("*.wandb")))}
    assert "exit" in kinds and run.run_id == "closed" and set(run.values("epoch")) == {0}, run.history
    assert lvae(*fit_args(mnist_root, "--run_id", "next")) == 0  # its own run, in its own folder
    (after,) = read_run(workdir / "runs" / "closed", timeout=10)  # the closed run took nothing of the next one's
    assert (after.run_id, after.history) == (run.run_id, run.history)
    assert [r.run_id for r in read_run(workdir / "runs" / "next", timeout=10)] == ["next"]


def test_a_second_in_process_command_in_another_folder_writes_its_wandb_run_there(
        workdir: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from wandb_run import read_run

    assert lvae(*fit_args(mnist_root, "--run_id", "here")) == 0  # W&B's service starts in this folder
    elsewhere = workdir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # as a notebook's os.chdir between two commands
    assert lvae(*fit_args(mnist_root, "--run_id", "there")) == 0
    assert [run.run_id for run in read_run(elsewhere / "runs" / "there", timeout=10)] == ["there"]
    assert sorted(p.name for p in (workdir / "runs").iterdir()) == ["here"]


def test_a_refused_command_leaves_a_wandb_run_of_the_callers_own_open(workdir: Path, mnist_root: Path) -> None:
    import wandb

    mine = wandb.init(mode="offline", dir=str(workdir.parent), project="mine")  # a notebook's own run, open before
    try:
        assert lvae(*fit_args(mnist_root, "--run_id", "../elsewhere")) == 2
        assert lvae(*fit_args(mnist_root, "--ckpt_path", "nosuch.ckpt")) == 2
        assert wandb.run is mine
    finally:
        mine.finish()


def test_a_run_refused_after_it_wrote_a_checkpoint_keeps_its_folder(tmp_path: Path) -> None:
    # A refusal (exit 2) removes what the command made; not a run that has trained (e.g. an image that went bad in
    # the middle of fit, read as the epochs stream it).
    kept, gone = RunFolder(), RunFolder()
    kept.claim(tmp_path / "runs" / "trained")
    (tmp_path / "runs" / "trained" / "checkpoints").mkdir()
    (tmp_path / "runs" / "trained" / "checkpoints" / "last.ckpt").write_bytes(b"weights")
    gone.claim(tmp_path / "runs" / "refused")
    kept.release(refused=True)
    gone.release(refused=True)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["trained"]
    assert (tmp_path / "runs" / "trained" / "checkpoints" / "last.ckpt").read_bytes() == b"weights"
