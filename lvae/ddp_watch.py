"""When a process of a DDP job stops (killed, out of memory, a crash on one rank), the job ends within a bounded
time with one message: which process stopped, what the checkpoints on disk hold and how to continue.

Lightning's launcher starts ranks 1.. from rank zero and watches them with a thread (`_ChildProcessObserver`, started
by the private `_launch_process_observer`) that SIGKILLs every process, rank zero included, within 5 s of one
exiting with an error: too soon for rank zero to close its W&B run, stop its drawing process or say anything.
While a `DDPWatch` is open, that watch is lvae's instead: rank zero is given `GRACE_SECONDS` to end by itself, which with
gloo it does at its next collective (the dead peer's connection resets within milliseconds), and is ended only if
it has not.
"""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Callable, Optional

import lightning as L
import torch.distributed
from lightning.fabric.plugins.environments import LightningEnvironment
from lightning.pytorch.strategies.launchers import subprocess_script

from lvae.checkpoints import load_checkpoint
from lvae.drawing import exit_status
from lvae.errors import LVAEError
from lvae.runs import continue_flags

GRACE_SECONDS = 10.0  # from a rank stopping to rank zero leaving the watch, with room for busy cores
POLL_SECONDS = 0.2
WANDB_CLOSE_SECONDS = 5.0  # room to close an offline run; a hung one must not stop the job ending
PARENT_SECONDS = 1.0  # a child may see its connections reset a moment before it sees its parent (rank zero) gone


class ProcessStopped(LVAEError):
    """A process of the DDP job stopped, so the job ended."""

    exit_code = 1


def lost_connection(err: Optional[BaseException]) -> Optional[BaseException]:
    """The error in `err`'s chain with which torch.distributed said a process of the job is gone: gloo's transport
    errors (plain RuntimeErrors naming gloo's source file) or a `torch.distributed.DistError` (NCCL, the store)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, torch.distributed.DistError) or \
                isinstance(err, RuntimeError) and "gloo/transport" in str(err):
            return err
        err = err.__cause__ or err.__context__
    return None


def first_sentence(err: BaseException) -> str:
    """'Connection reset by peer' rather than gloo's source path, address and advice."""
    text = str(err).split("\n")[0]
    if text.startswith("[") and "] " in text:
        text = text.split("] ", 1)[1]
    return text.split(". ")[0].rstrip(".")


class DDPWatch:
    """The watch over this process's part in a DDP job, held open by `lvae.cli.main` around the whole command: on
    entering, it takes the place of Lightning's watch of the ranks its launcher starts, and on leaving it puts back the
    one it found, so importing lvae changes nothing in Lightning.

    On leaving it with an error that says a process of the job stopped (or while one of the ranks this process
    started has stopped), the error becomes a `ProcessStopped` with the one message for the job. Who says it:
    under Lightning's launcher rank zero, for the job (the ranks it started exit quietly, unless rank zero is the
    one that stopped); under torchrun or SLURM every surviving process, each in one line."""

    def __init__(self) -> None:
        self.trainer: Optional[L.Trainer] = None
        self.run_id: Optional[str] = None
        self.children: list[subprocess.Popen] = []  # the ranks this process started (Lightning's launcher)
        self._parent = os.getppid()
        self._ending = threading.Event()  # set once the main thread leaves the watch: it stands down
        self._lightning_watch: Optional[Callable[[list[subprocess.Popen]], None]] = None  # put back on leaving

    def __enter__(self) -> "DDPWatch":
        self._lightning_watch = subprocess_script._launch_process_observer
        subprocess_script._launch_process_observer = self._watch
        return self

    def __exit__(self, kind: Optional[type], err: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self._ending.set()
        subprocess_script._launch_process_observer = self._lightning_watch
        ended = self._explain(err)
        if err is not None or ended is not None:
            self._end_children()  # none outlives rank zero's error, as after Lightning's Ctrl-C
        if ended is not None:
            raise ended from None

    def track(self, trainer: "L.Trainer", run_id: Optional[str]) -> None:
        """The trainer and the run this watch is about (the CLI tells it once it has built the trainer): the message
        names both."""
        self.trainer, self.run_id = trainer, run_id

    def _explain(self, err: Optional[BaseException]) -> Optional[BaseException]:
        """The `ProcessStopped` to leave with, a quiet exit, or None to let `err` (or success) through."""
        if err is not None and (not isinstance(err, Exception) or isinstance(err, LVAEError)):
            return None  # Ctrl-C, SIGTERM, or an error that already says what went wrong
        lost = lost_connection(err)
        stopped = self._stopped_child(wait=PARENT_SECONDS if lost is not None else 0.0)
        if stopped is None and lost is None:
            return None
        if self._started_by_rank_zero():
            if not self._parent_gone(wait=PARENT_SECONDS):
                return SystemExit(ProcessStopped.exit_code)  # rank zero is alive and speaks for the job
            who = "rank 0"
        elif stopped is not None:
            who = stopped
        else:
            rank = f"rank {self.trainer.global_rank}" if self.trainer is not None else "this process"
            who = f"{rank} lost its connection to it: {first_sentence(lost)}" if lost is not None else rank
        return ProcessStopped(self.describe(who))

    def describe(self, who: str) -> str:
        """The message: who stopped, when, what the checkpoints on disk hold and how to continue."""
        if self.trainer is None:  # stopped before training was set up
            return f"a process of the job stopped ({who}), so the job was ended. Run the command again."
        return (f"a process of the job stopped ({who}) during epoch {self.trainer.current_epoch}, step "
                f"{self.trainer.global_step}, so the job was ended. {self._checkpoints(self.trainer)}")

    def _checkpoints(self, trainer: "L.Trainer") -> str:
        callback = trainer.checkpoint_callback
        if trainer.state.fn != "fit" or callback is None or getattr(callback, "dirpath", None) is None:
            return "Run the command again."
        last = Path(callback.dirpath) / f"{callback.CHECKPOINT_NAME_LAST}{callback.FILE_EXTENSION}"
        if not last.is_file():
            return f"No checkpoint was written yet ({last} does not exist); start the run again."
        try:
            checkpoint = load_checkpoint(last)
            epoch, step = checkpoint["epoch"], checkpoint["global_step"]
        except Exception as err:
            return f"{last} cannot be read ({type(err).__name__}: {first_sentence(err)}); start the run again."
        return (f"The checkpoints on disk are whole: {last} holds epoch {epoch}, step {step}. Continue with "
                f"{continue_flags(last)}")

    def _watch(self, children: list[subprocess.Popen]) -> None:
        """Stands in for Lightning's `_launch_process_observer(self.procs)`."""
        self.children = children
        threading.Thread(target=self._watch_children, daemon=True, name="lvae-child-watch").start()

    def _watch_children(self) -> None:
        stopped = None
        while stopped is None:
            if self._ending.wait(POLL_SECONDS) or all(child.poll() == 0 for child in self.children):
                return
            stopped = self._stopped_child()
        if self._ending.wait(GRACE_SECONDS):
            return
        # Rank zero is stuck where no error reaches it (with NCCL, a collective waits for its timeout): end every
        # process as Lightning's watch would, after closing the W&B run and saying so from here. The drawing process
        # ends by itself within a second of this one.
        message = self.describe(stopped)
        self._end_children(wait=0.0)
        wandb = sys.modules.get("wandb")
        if wandb is not None and wandb.run is not None:
            closing = threading.Thread(target=wandb.run.finish, kwargs={"exit_code": 1}, daemon=True)
            closing.start()
            closing.join(timeout=WANDB_CLOSE_SECONDS)
        print(f"lvae: error: {message}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

    def _stopped_child(self, wait: float = 0.0) -> Optional[str]:
        """'rank N, killed by SIGKILL' for a rank this process started that ended with an error; a rank killed by a
        signal before one that exited (the latter may only have lost its connection to the former)."""
        deadline = time.monotonic() + wait
        first = int(os.environ.get("NODE_RANK", 0)) * (len(self.children) + 1) + 1  # the global rank of children[0]
        while True:
            failed = [(child.returncode, first + i) for i, child in enumerate(self.children)
                      if child.poll() not in (None, 0)]
            if failed:
                returncode, rank = min(failed)
                return f"rank {rank}, {exit_status(returncode)}"
            if not self.children or time.monotonic() >= deadline:
                return None
            time.sleep(POLL_SECONDS / 4)

    def _started_by_rank_zero(self) -> bool:
        environment = self.trainer.strategy.cluster_environment if self.trainer is not None else None
        return isinstance(environment, LightningEnvironment) and environment.local_rank() > 0

    def _parent_gone(self, wait: float) -> bool:
        deadline = time.monotonic() + wait
        while os.getppid() == self._parent:
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_SECONDS / 4)
        return True

    def _end_children(self, wait: float = 5.0) -> None:
        """The surviving ranks end by themselves at their next collective; any still running after `wait` is killed,
        as Lightning's launcher does."""
        deadline = time.monotonic() + wait
        for child in self.children:
            try:
                child.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.kill()
