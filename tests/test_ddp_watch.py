"""The processes of a job: a DDP process that dies ends the job at once with one message and whole checkpoints,
two torchrun "nodes" make one run that resumes, and a healthy run prints nothing a user cannot act on."""

import inspect
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, cli_env, every_epoch_config, run_dirs, small_fit_args
from test_faults import MESSAGES
from wandb_run import read_run, records, wait_until_written

from lvae.checkpoints import load_checkpoint
from lvae.ddp_watch import DDPWatch

CONFIGS = ["--config", str(REPO / "configs" / "mnist.yaml"), "--config", str(REPO / "configs" / "ddp.yaml")]
PICTURES = ("scatter", "tsne", "prior_samples", "uncertainty")  # what configs/mnist.yaml draws for Z=20


def fit_args(mnist_root: Path, *extra: str) -> list[str]:
    """configs/mnist.yaml and configs/ddp.yaml as a user stacks them, then the short run on the fixture."""
    return ["fit", *CONFIGS, *small_fit_args(mnist_root, pictures=True)[1:], *extra]


def marker(out: Path, step: int, hold: int) -> str:
    return "--trainer.callbacks+=" + json.dumps({"class_path": "step_marker.StepMarker",
                                                 "init_args": {"out": str(out), "step": step, "hold": hold}})


def wait_for_file(path: Path, procs: list[subprocess.Popen], timeout: float = 180, content: bool = True) -> int:
    """The number `path` holds (a pid), once it is written."""
    deadline = time.monotonic() + timeout
    while not path.is_file() or content and not path.read_text():
        if any(proc.poll() is not None for proc in procs) or time.monotonic() > deadline:
            for proc in procs:
                proc.kill()
            raise AssertionError(f"no {path}: the job ended early or hangs")
        time.sleep(0.02)
    return int(path.read_text()) if content else 0


def processes_under(cwd: Path) -> list[str]:
    """Processes working in `cwd`: every one a job started there (ranks, the drawing process, W&B's service)."""
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if Path(os.readlink(proc / "cwd")).is_relative_to(cwd):
                found.append((proc / "cmdline").read_text().replace("\0", " ")[:120])
        except OSError:  # ended meanwhile, or not ours to read
            pass
    return found


def no_processes_left(cwd: Path, timeout: float = 30) -> list[str]:
    deadline = time.monotonic() + timeout
    while (left := processes_under(cwd)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def wandb_closed(run: Path) -> bool:
    wait_until_written(run, timeout=30)
    files = list(run.glob("wandb/offline-run-*/*.wandb"))
    return bool(files) and all(any(r.WhichOneof("record_type") == "exit" for r in records(f)) for f in files)


def test_killing_one_of_two_gloo_processes_mid_epoch_ends_the_job_with_one_message(mnist_root: Path,
                                                                                     tmp_path: Path) -> None:
    # 2 ranks of 165 inputs in batches of 32: 6 steps an epoch. Step 15 is the middle of epoch 2, after last.ckpt of
    # epoch 1 (step 12) is on disk; rank 1 waits there to be killed, rank 0 for rank 1 in its next collective.
    env = {**cli_env(), "PYTHONPATH": str(REPO / "tests")}
    args = fit_args(mnist_root, "--data.batch_size", "32", "--trainer.max_epochs", "50",
                    marker(tmp_path / "marks", step=15, hold=1))
    job = subprocess.Popen([sys.executable, "-m", "lvae", *args], cwd=tmp_path, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    os.kill(wait_for_file(tmp_path / "marks" / "rank1.pid", [job]), signal.SIGKILL)
    stderr = job.communicate(timeout=60)[1]  # the bound: rank zero is ended 15 s after at the latest

    assert job.returncode == 1 and "Traceback" not in stderr, stderr[-3000:]
    found = re.search(rf"lvae: error: {MESSAGES['dead process']} \(rank 1, killed by SIGKILL\) during epoch 2, "
                      r"step 15, so the job was ended\. The checkpoints on disk are whole: (\S+last\.ckpt) holds "
                      r"epoch (\d+), step (\d+)\. Continue with --run_id (\S+) --ckpt_path last$", stderr, re.M)
    assert found, stderr[-3000:]
    assert stderr.count("lvae: error:") == 1  # rank zero speaks for the job
    (run,) = run_dirs(tmp_path / "runs")
    last = load_checkpoint(found.group(1))  # tensors and plain values, as every lvae load
    assert Path(found.group(1)) == (run / "checkpoints" / "last.ckpt").resolve()
    assert (last["epoch"], last["global_step"]) == (int(found.group(2)), int(found.group(3))) == (1, 12)
    assert all(load_checkpoint(p)["state_dict"] for p in (run / "checkpoints").glob("*.ckpt"))
    assert found.group(4) == run.name
    assert wandb_closed(run)
    assert not no_processes_left(tmp_path)  # the drawing process and the other rank are gone too
    # That the advised command continues the run is checked once, on torchrun's two nodes (below).


def test_a_rank_zero_that_no_error_reaches_is_ended_with_the_message(tmp_path: Path) -> None:
    # Lightning's launcher hands its ranks to `_launch_process_observer(self.procs)` in its `launch`; lvae's DDPWatch
    # puts its own watch there. Here rank zero sleeps, as it would inside an NCCL collective that waits for its timeout.
    from lightning.pytorch.strategies.launchers import subprocess_script

    launch = inspect.getsource(subprocess_script._SubprocessScriptLauncher.launch)
    assert "_launch_process_observer(self.procs)" in launch
    # The grace rank zero is given to end by itself is shortened: what is checked is what happens after it.
    script = ("import subprocess, sys, time\n"
              "from lightning.pytorch.strategies.launchers import subprocess_script\n"
              "import lvae.ddp_watch\n"
              "from lvae.ddp_watch import DDPWatch\n"
              "lvae.ddp_watch.GRACE_SECONDS = 1.0\n"
              "with DDPWatch():\n"
              "    subprocess_script._launch_process_observer([subprocess.Popen([sys.executable, '-c', 'exit(3)'])])\n"
              "    time.sleep(120)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                          timeout=100)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert f"lvae: error: {MESSAGES['dead process']} (rank 1, exit code 3), so the job was ended." in proc.stderr


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun_two_nodes(cwd: Path, rdzv_id: str, *args: str, kill: str = "", drawn: tuple[str, ...] = ()
                       ) -> list[tuple[int, str]]:
    """The README's torchrun command, started twice on this machine as two "nodes" of one CPU process each; `kill`
    names a pid file whose process is killed with SIGKILL once it and the pictures `drawn` are on disk. Returns each
    node's exit code and what it printed."""
    port = free_port()
    command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
               "--rdzv_id", rdzv_id, "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
               "-m", "lvae", *args, "--trainer.devices", "1", "--trainer.num_nodes", "2"]
    # W&B's warnings are part of what is checked; step_marker is importable from tests/.
    env = {**{k: v for k, v in cli_env().items() if k != "WANDB_SILENT"}, "PYTHONPATH": str(REPO / "tests")}
    logs = [cwd / f"node{n}-{time.monotonic_ns()}.txt" for n in range(2)]
    nodes = []
    for log in logs:
        with log.open("w") as out:
            nodes.append(subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT))
    if kill:
        pid = wait_for_file(cwd / kill, nodes)
        for picture in drawn:
            wait_for_file(cwd / picture, nodes, content=False)
        os.kill(pid, signal.SIGKILL)
    for node in nodes:
        node.wait(timeout=240)
    return [(node.returncode, log.read_text()) for node, log in zip(nodes, logs)]


@pytest.fixture(scope="module")
def torchrun_job(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two torchrun nodes: a fit whose rank 1 is killed in the middle of epoch 2, then the resume its message
    advises, to the end of epoch 2. 108 validation inputs (enough for t-SNE) and 2 steps an epoch on each rank."""
    cwd = tmp_path_factory.mktemp("torchrun")
    # log_every_n_steps 1: Lightning's hint about epochs shorter than its logging interval is one a user acts on.
    # Every epoch drawn: the kill waits for epoch 1's pictures, which a busy drawing would skip.
    args = fit_args(mnist_root, "--config", str(every_epoch_config(cwd)), "--data.val_fraction", "0.3",
                    "--trainer.log_every_n_steps", "1")
    # A picture still being drawn when a process dies is lost (the drawing process is stopped at once), and the
    # resumed fit starts after its epoch: the kill waits for epoch 1's pictures.
    killed = torchrun_two_nodes(cwd, "twonodes", *args, "--trainer.max_epochs", "50",
                                marker(cwd / "marks", step=5, hold=1), kill="marks/rank1.pid",
                                drawn=tuple(f"runs/twonodes/latents/{n}/epoch_001.png" for n in PICTURES))
    wandb_runs = list((cwd / "runs").glob("*/wandb/offline-run-*"))
    advice = re.search(r"Continue with (--run_id \S+ --ckpt_path last)$", "".join(out for _, out in killed), re.M)
    resumed = torchrun_two_nodes(cwd, "twonodes", *args, "--trainer.max_epochs", "3",
                                 *(advice.group(1).split() if advice else []))
    return {"cwd": cwd, "killed": killed, "wandb_runs_before_resume": wandb_runs, "resumed": resumed}


def test_a_dead_torchrun_process_ends_the_job_with_one_message_from_the_survivor(torchrun_job: dict) -> None:
    killed = torchrun_job["killed"]
    printed = "".join(out for _, out in killed)
    assert all(code != 0 for code, _ in killed), printed[-3000:]
    # Rank 0 says it; torchrun's own summary of the failure (its agents' output) is torchrun's.
    (message,) = re.findall(r"^lvae: error: .*$", printed, re.M)
    assert message.startswith(f"lvae: error: {MESSAGES['dead process']} (rank 0 lost its connection to it: "), message
    run = torchrun_job["cwd"] / "runs" / "twonodes"
    assert message.endswith(f"during epoch 2, step 5, so the job was ended. The checkpoints on disk are whole: "
                            f"{(run / 'checkpoints' / 'last.ckpt').resolve()} holds epoch 1, step 4. Continue with "
                            f"--run_id twonodes --ckpt_path last"), message
    # No traceback through lvae's own source. torchrun's traceback of its child's failure is torchrun's, and its
    # files may sit under a folder named lvae (a clone's .venv): only lvae's own package folders count.
    own = [f'File "{REPO / folder}/' for folder in ("lvae", "callbacks")]
    assert "[rank0]:" not in printed and not any(frame in printed for frame in own), printed[-3000:]
    (wandb_run,) = torchrun_job["wandb_runs_before_resume"]
    assert wandb_closed(wandb_run.parent.parent)


def test_two_torchrun_nodes_make_one_run_that_resumes(torchrun_job: dict) -> None:
    cwd = torchrun_job["cwd"]
    assert all(code == 0 for code, _ in torchrun_job["resumed"]), torchrun_job["resumed"][0][1][-3000:]
    assert [p.name for p in run_dirs(cwd / "runs")] == ["twonodes"]
    run = cwd / "runs" / "twonodes"
    assert len(torchrun_job["wandb_runs_before_resume"]) == 1  # one W&B run, logged by rank zero
    wandb_runs = read_run(run)
    assert {r.run_id for r in wandb_runs} == {"twonodes"}  # the resumed fit continues it
    for name in PICTURES:
        assert sorted(p.name for p in (run / "latents" / name).glob("epoch_*.png")) == \
               ["epoch_000.png", "epoch_001.png", "epoch_002.png"], name
        logged = {row["epoch"] for r in wandb_runs for row in r.rows_with(f"latents/{name}/_type")}
        assert logged == {0, 1, 2}, name
    for path in (run / "checkpoints").glob("*.ckpt"):
        state = load_checkpoint(path)["state_dict"]
        assert state and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path
    last = load_checkpoint(run / "checkpoints" / "last.ckpt")
    assert (last["epoch"], last["global_step"]) == (2, 6)  # 2 steps an epoch on each rank, none repeated
    assert (run / "config-2.yaml").is_file()


# A warning's first line: Python's and Lightning's "<file>.py:<line>: ...", W&B's "wandb: WARNING ...", or a tip.
WARNING_LINE = re.compile(r"^(?P<file>\S+\.py):\d+: |^wandb: WARNING|deprecat|tip:", re.I)


def test_a_healthy_run_prints_nothing_a_user_cannot_act_on(torchrun_job: dict) -> None:
    # Both ranks of the resumed two-node fit, W&B's terminal output included: no library's warning, deprecation or
    # tip, only lvae's own (from lvae/ or callbacks/).
    printed = [out for _, out in torchrun_job["resumed"]]
    ours = (str(REPO / "lvae"), str(REPO / "callbacks"))
    noise = [line for text in printed for line in text.splitlines()
             if (found := WARNING_LINE.search(line)) and not (found.group("file") or "").startswith(ours)]
    assert not noise, "\n".join(noise)
    assert "run twonodes in runs/twonodes" in "".join(printed)  # lvae's own line still comes


def test_wandb_logger_still_hands_wandb_the_anonymous_setting_it_warns_about() -> None:
    # noise.quiet_trainer removes it from Lightning's private `_wandb_init`; once Lightning stops passing it, drop that.
    from lightning.pytorch.loggers import WandbLogger

    assert "anonymous" in WandbLogger(project="lvae")._wandb_init


def test_lightnings_watch_is_replaced_only_while_the_ddp_watch_is_open() -> None:
    # Importing lvae changes nothing in Lightning: a user's own Trainer keeps Lightning's watch of its ranks.
    from lightning.pytorch.strategies.launchers import subprocess_script

    import lvae.cli  # noqa: F401  (holds the DDPWatch around the command)

    lightnings = subprocess_script._launch_process_observer
    assert lightnings.__module__.startswith("lightning.")  # Lightning's own function, not a watch of lvae's
    with DDPWatch():
        assert subprocess_script._launch_process_observer is not lightnings
    assert subprocess_script._launch_process_observer is lightnings
