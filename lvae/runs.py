"""Run ids and run folders: an id is a name, a folder is claimed by one command, and a run is trained by one process.

A new run's folder is made with an exclusive create, so of two commands that start one id at once, one gets it and
the other is refused. The process that trains a run holds a lock on a file in its folder until it ends, however it
ends (the kernel releases it after a SIGKILL too), so a second `--ckpt_path last` is refused while the run is live,
and a requeued job gets the run once the first is gone.
"""

import fcntl
import os
import re
import shlex
import shutil
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Optional

from lvae.errors import ConfigError

# W&B's run ids allow these characters; 64 leaves room for an evaluation's own id, "<id>-validate-1a2b".
RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
RUN_ID_RULE = ("a run id is a name of at most 64 ASCII letters, digits, '-', '_' and '.', starting with a letter or "
               "a digit")
HOLD_FILE = ".lock"  # in the run folder: holds the pid and host of the process training the run
# The variables that tell a process its rank: torchrun, Lightning's launcher, SLURM.
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "SLURM_PROCID")
RESTART_VARIABLES = ("TORCHELASTIC_RESTART_COUNT", "SLURM_RESTART_COUNT")


def global_zero() -> bool:
    """Whether this process is the job's global rank zero (also in a restarted or requeued job)."""
    return all(os.environ.get(var, "0") in ("", "0") for var in RANK_VARIABLES)


def first_start() -> bool:
    """Whether this process starts its job: global rank zero, and not a restart. Ranks that Lightning's launcher
    starts, torchrun's other processes and nodes, elastic restarts and SLURM requeues share a run id by design."""
    return global_zero() and all(os.environ.get(var, "0") in ("", "0") for var in RESTART_VARIABLES)


def launcher_run_id() -> Optional[str]:
    """The id every process of one multi-node job shares, when a launcher started them all.

    Lightning's own DDP launcher starts ranks from rank zero (they inherit the id); torchrun and SLURM start every
    process independently, so each would otherwise make up its own id and its own run folder."""
    if os.environ.get("TORCHELASTIC_RUN_ID", "none") != "none":
        return check_run_id(os.environ["TORCHELASTIC_RUN_ID"], "torchrun's --rdzv-id")
    if os.environ.get("SLURM_JOB_ID") and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return check_run_id(f"slurm-{os.environ['SLURM_JOB_ID']}", "SLURM_JOB_ID")
    return None


def shell(*words: object) -> str:
    """A command or flags as a user pastes them into a shell: each word quoted where it needs it."""
    return " ".join(shlex.quote(str(word)) for word in words)


def continue_flags(last: Path) -> str:
    """The flags that continue the run whose last checkpoint is `last`: the run named when it is a run folder's."""
    if last.parent.name == "checkpoints" and last.name == "last.ckpt":
        return shell("--run_id", last.parent.parent.name, "--ckpt_path", "last")
    return shell("--ckpt_path", last)


def check_run_id(run_id: str, source: str = "--run_id") -> str:
    """`run_id` when it is a name lvae can use for a folder and a W&B run; refused otherwise, saying the rule."""
    if RUN_ID.fullmatch(run_id):
        return run_id
    shown = run_id if len(run_id) <= 80 else f"{run_id[:77]}..."
    if source == "--run_id":
        fix = "Give another --run_id."
    elif source == "folder":
        fix = ("It names a run started before lvae had this rule: rename its folder to such a name, then give "
               "that name as --run_id.")
    else:
        fix = f"Set {source} to such a name, or give the run's name with --run_id."
    raise ConfigError(f"run id {shown!r} (from {source}) is refused: {RUN_ID_RULE}, so that it can be a folder name "
                      f"and a W&B run id and be pasted into a shell. {fix}")


@contextmanager
def unwritable(root: Path, what: str = "runs go into", setting: str = "--trainer.default_root_dir") -> Iterator[None]:
    """An OS error while making a run folder under `root` as lvae's refusal: a file in the way, no permission, a full
    or read-only disk. `what` goes before `root` and `setting` is what to change, where the folder is not the runs'
    (a logger's own `save_dir`)."""
    try:
        yield
    except OSError as err:
        if isinstance(err, FileExistsError) and Path(err.filename or "").is_dir():
            raise
        where = f"{err.filename}: " if err.filename else ""
        why = "a file, not a folder" if isinstance(err, (FileExistsError, NotADirectoryError)) else err.strerror
        raise ConfigError(f"{what} {root}, and lvae cannot write there ({where}{why or err}). Set {setting} to a "
                          "folder you can write, or make room.") from None


class RunFolder:
    """The run folder of one command: claimed when the command starts a run, held while the process trains it, and
    removed again when the command that claimed it is refused before any work."""

    def __init__(self) -> None:
        self.path: Optional[Path] = None
        self._claimed = False
        self._parents: list[Path] = []  # folders above the run folder that claiming it made (`runs/`)
        self._made: list[tuple[Path, list[Path]]] = []  # each folder `make` made, and the folders above it it needed
        self._hold: Optional[IO[str]] = None

    def claim(self, path: Path) -> None:
        """Make `path` for a new run, or refuse the id when the folder exists (made by another command, even one
        that started a moment ago), then hold it."""
        self._parents = [parent for parent in path.parents if not parent.exists()]  # deepest first
        with unwritable(path.parent):
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                path.mkdir()
            except FileExistsError:
                raise ConfigError(f"run {path.name} already exists ({path}); a run id is never reused for another "
                                  f"run. Continue it with {shell('--run_id', path.name, '--ckpt_path', 'last')}, or "
                                  "give another --run_id (or none, and lvae picks a new one).") from None
        self.path, self._claimed = path, True
        self.hold(path)

    def make(self, path: Path, logger: Optional[str] = None) -> None:
        """Make `path` (an evaluation's folder, or the folder of the logger class `logger`) if missing: removed again,
        with the folders above it that it needed, when the command is refused."""
        if path.exists():
            return
        parents = [folder for folder in path.parents if not folder.exists()]  # deepest first
        where = unwritable(path.parent) if logger is None else \
            unwritable(path, f"{logger} writes into", "that logger's save_dir (--trainer.logger.init_args.save_dir)")
        with where:
            try:
                path.mkdir(parents=True)
            except FileExistsError:
                return  # another command made it meanwhile: it is that command's to remove, not this one's
        self._made.append((path, parents))

    def hold(self, path: Path) -> None:
        """Hold `path` for this process's training; refused, naming the holder, while another process trains it."""
        with unwritable(path.parent):
            path.mkdir(parents=True, exist_ok=True)
            hold = open(path / HOLD_FILE, "a+")
        try:
            fcntl.flock(hold, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            hold.seek(0)
            holder = hold.read().strip() or "another process"
            hold.close()
            raise ConfigError(f"run {path.name} is being trained by {holder} right now; a run is continued by one "
                              "process at a time. Wait for it to end (or stop it), then continue the run; or start "
                              "another run.") from None
        hold.truncate(0)
        hold.write(f"process {os.getpid()} on {socket.gethostname()}\n")
        hold.flush()
        self.path, self._hold = path, hold

    @staticmethod
    def holder(path: Path) -> Optional[str]:
        """Who holds `path` now ("process 123 on host"), or None when no process trains it."""
        try:
            with open(path / HOLD_FILE) as hold:
                try:
                    fcntl.flock(hold, fcntl.LOCK_SH | fcntl.LOCK_NB)
                except BlockingIOError:
                    return hold.read().strip() or "another process"
                return None
        except FileNotFoundError:
            return None

    def release(self, refused: bool = False) -> None:
        """Let go of the run; with `refused`, the folders this command claimed or made are removed with what it wrote
        in them (W&B's offline files, closed first): a refused command leaves nothing behind."""
        if self._hold is not None:
            self._hold.close()
            self._hold = None
        if refused:  # (a W&B run writing into them is closed first, by the command that started it)
            made = ([(self.path, self._parents)] if self._claimed and self.path is not None else []) + self._made
            for folder, parents in made:
                if any(folder.glob("**/*.ckpt")):
                    continue  # refused after training wrote a checkpoint (an image that went bad mid-fit): kept
                shutil.rmtree(folder, ignore_errors=True)
                for parent in parents:
                    try:
                        parent.rmdir()  # only while empty: another command may have started writing there
                    except OSError:
                        break
        self._claimed, self._parents, self._made = False, [], []
