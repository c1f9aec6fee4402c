"""The drawing processes: separate, low-priority processes that run the picture jobs of one trainer, each picture's
jobs in one of them, in order (`DrawingPool`; one process, unless training leaves cores free).

A picture callback does its model work in the training process and sends a `Job` here: the name of a function in
one of the `lvae.figures` modules and its arguments (NumPy arrays and plain values). The training process never
imports the drawing stack (matplotlib, openTSNE, scikit-learn); the drawing process imports it on first use.
This module imports neither Lightning, nor torch, nor the drawing stack at its top: the drawing process starts by
importing it, and needs none of them to draw: their import and exit would take CPU from training.

The drawing process is `python -c` running `serve` with the training process's sys.path; jobs and results go over
two pipes as length-prefixed pickles. It imports lvae's modules and those a job names, never the user's
`__main__`, so a script needs no `if __name__ == "__main__":` guard, and `python - < train.py`, `python -c` and
notebooks get their pictures too.
"""

import importlib
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
import time
import warnings
from collections import deque
from concurrent.futures import Future, InvalidStateError
from contextvars import ContextVar, Token
from dataclasses import dataclass, field
from queue import SimpleQueue
from types import TracebackType
from typing import IO, Any, Callable, Optional

from lvae.command_line import CommandLine
from lvae.errors import ConfigError, LVAEError
from lvae.runs import global_zero

# The drawing process runs at this niceness: it takes the CPU time training leaves (see bench/README.md).
DRAWING_NICENESS = 10
PARENT_CHECK_SECONDS = 0.5  # how often the drawing process checks that the training process is still there


@dataclass
class Drawn:
    """What a drawing job hands back to the training process: the PNGs it wrote as (name, path, caption), the
    numbers it measured, state for the callback (a t-SNE map), warnings, and the evolution GIFs it made as
    (name, path), with `animated` when it was asked to make them (a fit's last picture); all picklable."""

    pictures: list[tuple[str, str, str]] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    state: Any = None
    warnings: list[str] = field(default_factory=list)
    animations: list[tuple[str, str]] = field(default_factory=list)
    animated: bool = False


@dataclass(frozen=True)
class Job:
    """A drawing job: `target` ("lvae.figures.scatter:draw") called with `kwargs`. Named by its import path, so the
    training process that builds it never imports the drawing stack, and it pickles as plain data."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Drawn:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)(**self.kwargs)


class DrawingStopped(LVAEError):
    """The drawing process could not be started, or ended before a job's result came back; the message says why."""


class MainModuleJob(LVAEError):
    """A drawing job that needs something defined in the user's `__main__`, which the drawing process never runs."""


# The warnings a drawing job hands back: those about the picture (matplotlib's, numpy's about the data drawn). Not
# ResourceWarning, DeprecationWarning and the like, which are about code, not the picture, and which the job's
# "always" would otherwise catch once per file the garbage collector happens to close while it runs.
PICTURE_WARNINGS = (UserWarning, RuntimeWarning)


def run_job(job: Callable[[], Drawn]) -> Drawn:
    """Run `job`, handing back the warnings about its picture it raised (every time, not once per place), to be
    raised where the user sees them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drawn = job()
    drawn.warnings.extend(str(w.message) for w in caught if issubclass(w.category, PICTURE_WARNINGS))
    return drawn


def import_modules(modules: tuple[str, ...]) -> Drawn:
    """A job that only imports, so the first picture of a run is not late by the drawing stack's import."""
    for module in modules:
        importlib.import_module(module)
    return Drawn()


def lower_priority(pid: int = 0) -> None:
    """Give process `pid` (0: this one) at least the drawing niceness. Absolute, so setting it twice does no
    harm; never raised back (a run started with `nice -n 15` keeps 15, which an unprivileged user could not
    undo); a process already gone or a system without priorities is left as it is."""
    if not hasattr(os, "setpriority"):
        return
    try:
        os.setpriority(os.PRIO_PROCESS, pid, max(os.getpriority(os.PRIO_PROCESS, pid), DRAWING_NICENESS))
    except OSError:
        pass


def exit_status(returncode: int) -> str:
    """How a child process ended, from its `Popen.returncode`: "exit code 1", "killed by SIGKILL"."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"exit code {returncode}"


class _JobPickler(pickle.Pickler):
    """Pickles a job, refusing at once what only the user's `__main__` defines: the drawing process would fail to
    find it, with a message about attribute lookups."""

    def reducer_override(self, obj: Any) -> Any:
        module = obj.target.partition(":")[0] if isinstance(obj, Job) else getattr(obj, "__module__", None)
        if module != "__main__":
            return NotImplemented
        name = obj.target.partition(":")[2] if isinstance(obj, Job) else \
            getattr(obj, "__qualname__", type(obj).__qualname__)  # a function or class; else an instance's class
        raise MainModuleJob(f"the drawing needs {name}, which is defined in __main__ (the script, notebook or "
                            f"`python -c` code being run), and the drawing process does not run __main__: move {name} "
                            "into a module it can import (a .py file on sys.path), or draw in the training loop with "
                            "background=False")


def _import_path() -> list[str]:
    """This process's sys.path, as the import system reads it (str entries only)."""
    return [entry for entry in sys.path if isinstance(entry, str)]


def _pickle_job(job: Callable[[], Drawn]) -> bytes:
    """`job`, after this process's sys.path as it is now (a notebook may have added to it since the drawing process
    started): the drawing process takes that path before it unpickles the job, so the job's modules import there as
    they would here."""
    buffer = io.BytesIO()
    pickle.dump(_import_path(), buffer, protocol=pickle.HIGHEST_PROTOCOL)
    _JobPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(job)
    return buffer.getvalue()


def _unpickle_job(data: bytes) -> Callable[[], Drawn]:
    stream = io.BytesIO(data)
    sys.path[:] = pickle.load(stream)
    return pickle.load(stream)


# A frame is its length, then a job (sys.path and the job, two pickles) or a result; an empty one asks the drawing
# process to end.
_FRAME = struct.Struct("!Q")


def _write_frame(stream: IO[bytes], data: bytes) -> None:
    stream.write(_FRAME.pack(len(data)))
    stream.write(data)
    stream.flush()


def _read_frame(stream: IO[bytes]) -> bytes:
    """The next frame; b"" for the empty frame, or once the other side has closed the pipe (or died mid-frame)."""
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        return b""
    (size,) = _FRAME.unpack(header)
    data = stream.read(size)
    return data if len(data) == size else b""


def _pickle_outcome(done: bool, value: Any) -> bytes:
    """A job's result (`done`) or error, pickled; an error, in its words, where that cannot be pickled."""
    try:
        return pickle.dumps((done, value), protocol=pickle.HIGHEST_PROTOCOL)
    except Exception as err:
        failed = err if done else value
        return pickle.dumps((False, RuntimeError(f"{type(failed).__name__}: {failed}")),
                            protocol=pickle.HIGHEST_PROTOCOL)


def _exit_when_orphaned(parent: int) -> None:
    # A training process killed outright (SIGKILL, the out-of-memory killer) cannot stop its drawing process.
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _exit_at_once() -> None:
    # Tearing down matplotlib, SciPy and scikit-learn keeps the user waiting at the end of fit, for nothing: each
    # job's files are written whole and closed before its result is sent.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)


def serve(parent: int, jobs: int, results: int) -> None:
    """The drawing process's loop: runs the jobs that arrive on pipe `jobs` one at a time, and sends each one's
    result or error on pipe `results`, until the training process `parent` says stop or is gone (checked every
    `PARENT_CHECK_SECONDS`, also while a job is drawn)."""
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="lvae-parent-watch").start()
    with open(jobs, "rb") as inbox, open(results, "wb") as outbox:
        while frame := _read_frame(inbox):
            try:
                outcome = (True, run_job(_unpickle_job(frame)))
            except Exception as err:  # the job failed, or names a module this process cannot import
                outcome = (False, err)
            _write_frame(outbox, _pickle_outcome(*outcome))
    _exit_at_once()


# The drawing process's whole main module: deaf to Ctrl-C before anything else (the training process handles it and
# saves last.ckpt), then the training process's sys.path, where lvae may only be found through an entry a notebook
# added.
_CHILD_MAIN = ("import json, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
               "sys.path[:] = json.loads(sys.argv[1]); from lvae.drawing import serve; serve(*map(int, sys.argv[2:]))")

# The drawing process runs one thread of native code: OpenMP threads per core would wait on the core training holds.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _settle(future: Future, done: bool, value: Any) -> None:
    try:
        if done:
            future.set_result(value)
        else:
            future.set_exception(value)
    except InvalidStateError:  # cancelled meanwhile (`DrawingProcess.stop`)
        pass


class _Child:
    """One started drawing process. A thread writes it the jobs in the order sent, another reads their outcomes back
    into their futures, and a third passes on what it prints to stderr, keeping the last line to say why it stopped."""

    def __init__(self) -> None:
        jobs_read, jobs_write = os.pipe()
        results_read, results_write = os.pipe()
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-c", _CHILD_MAIN, json.dumps(_import_path()), str(os.getpid()), str(jobs_read),
                 str(results_write)],
                pass_fds=(jobs_read, results_write), stdin=subprocess.DEVNULL, stderr=subprocess.PIPE,
                env={**os.environ, **ONE_THREAD})
        except OSError as err:
            os.close(jobs_write)
            os.close(results_read)
            raise DrawingStopped(f"the drawing process could not be started ({err})") from err
        finally:
            os.close(jobs_read)
            os.close(results_write)
        lower_priority(self.process.pid)  # at once: its imports would otherwise compete with training
        self._stopped: Optional[DrawingStopped] = None  # why it ended, once it has
        self._futures: deque[Future] = deque()  # of the jobs sent and not answered yet, in order
        self._lock = threading.Lock()
        self._outbox: SimpleQueue[Optional[bytes]] = SimpleQueue()
        self._last_line = ""
        # Imported here, on the thread that made the process, not on the stderr thread: an import there would run
        # beside the main thread's (the `lvae` command imports Lightning meanwhile), and two threads importing
        # modules that import each other can end in Python's "deadlock detected" ImportError. In the training
        # process only: the drawing process stays light.
        from lvae.say import own_line

        self._stderr = threading.Thread(target=self._pass_on_stderr, args=(own_line,), daemon=True,
                                        name="lvae-drawing-stderr")
        self._receiver = threading.Thread(target=self._receive, args=(results_read,), daemon=True,
                                          name="lvae-drawing-results")
        self._stderr.start()
        self._receiver.start()
        threading.Thread(target=self._send, args=(jobs_write,), daemon=True, name="lvae-drawing-jobs").start()

    @property
    def ended(self) -> bool:
        # Also once the process has exited and `_receive` has yet to say why: a job sent now would be lost with it.
        return self._stopped is not None or self.process.poll() is not None

    def send(self, job: bytes) -> Future:
        future: Future = Future()
        with self._lock:
            if self._stopped is not None:  # ended since the caller looked at `ended`
                future.set_exception(self._stopped)
            else:
                self._futures.append(future)
                self._outbox.put(job)
        return future

    def stop(self) -> None:
        """End the process at once: the job being drawn is abandoned, the queued ones are cancelled."""
        with self._lock:
            for future in self._futures:
                future.cancel()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self._outbox.put(None)

    def close(self) -> None:
        """Let the jobs sent finish, then end the process."""
        self._outbox.put(None)
        self._receiver.join()

    def _send(self, fd: int) -> None:
        # A thread: a job larger than the pipe's buffer would otherwise hold training until the one before it is drawn.
        try:
            with open(fd, "wb") as pipe:
                while (job := self._outbox.get()) is not None:
                    _write_frame(pipe, job)
                _write_frame(pipe, b"")  # stop, once the jobs before it are done
        except OSError:  # the process has ended: `_receive` says why
            pass

    def _receive(self, fd: int) -> None:
        with open(fd, "rb") as pipe:
            while frame := _read_frame(pipe):
                future = self._futures.popleft()
                try:
                    done, value = pickle.loads(frame)
                except Exception as err:  # e.g. an error whose class cannot be made again here
                    done, value = False, err
                _settle(future, done, value)
        why = exit_status(self.process.wait())  # the pipe closed: the process has ended
        self._stderr.join(timeout=1.0)  # a process a job started may still hold stderr open
        if self._last_line:
            why = f"{why}: {self._last_line}"
        with self._lock:
            self._stopped = DrawingStopped(f"the drawing process stopped ({why}); the next picture starts a new one")
            left, self._futures = list(self._futures), deque()
        for future in left:
            _settle(future, False, self._stopped)

    def _pass_on_stderr(self, own_line: Callable[[str], None]) -> None:
        with self.process.stderr as stream:
            for line in stream:
                text = line.decode(errors="replace")
                own_line(text)  # above the progress bar, never glued to it
                if text.strip():
                    self._last_line = text.strip()


# Drawing runs in separate processes, at a lower priority than training; where training keeps every core busy it
# lends one while they draw: a drawing thread would hold the GIL that each of training's small torch calls needs back
# (bench/README.md has the measurements).
class DrawingProcess:
    """One drawing process, started on its first job (and again after it died); its jobs run one at a time in the
    order they were sent. A `python -c` process of lvae's own, not multiprocessing's: "spawn" and "forkserver" run
    the user's `__main__` again (a script without a main guard trains a second time there, or fails; stdin cannot be
    read twice), and "fork" would copy the training process's threads (W&B, the data path) and possibly CUDA."""

    def __init__(self) -> None:
        self._child: Optional[_Child] = None

    @property
    def pid(self) -> Optional[int]:
        return self._child.process.pid if self._child is not None else None

    def submit(self, job: Callable[[], Drawn]) -> Future:
        """Send `job`, a `Job` or a picklable callable (refused here, with `MainModuleJob`, where it needs the user's
        `__main__`)."""
        data = _pickle_job(job)
        if self._child is None or self._child.ended:  # not started yet, or it died (killed, out of memory, a crash)
            self._child = _Child()
        return self._child.send(data)

    def stop(self) -> None:
        """Stop at once: queued jobs are dropped and the one being drawn is abandoned (each PNG is written whole or
        not at all)."""
        child, self._child = self._child, None
        if child is not None:
            child.stop()

    def close(self) -> None:
        """Finish: wait for the jobs sent, then end the process."""
        child, self._child = self._child, None
        if child is not None:
            child.close()


PROCESSES_VARIABLE = "LVAE_DRAWING_PROCESSES"  # how many drawing processes a trainer runs, where set


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (a SLURM or container share), not the whole machine."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def drawing_processes(cores: int, training_cores: int) -> int:
    """How many drawing processes a trainer runs on `cores`, of which training keeps `training_cores` busy: one per
    core left free, and at least one (on a machine training keeps busy, it draws on the core torch lends it)."""
    return max(1, cores - training_cores)


def process_count(training_cores: int) -> int:
    """`LVAE_DRAWING_PROCESSES` where it is set, else `drawing_processes` on this process's cores."""
    value = os.environ.get(PROCESSES_VARIABLE, "").strip()
    if not value:
        return drawing_processes(usable_cores(), training_cores)
    if not value.isdigit() or int(value) < 1:
        raise ConfigError(f"{PROCESSES_VARIABLE}={value!r} must be a number of drawing processes, 1 or more (unset, "
                          "lvae runs one per core that training leaves free)")
    return int(value)


class DrawingPool:
    """The drawing processes of one trainer, shared by its picture callbacks: `size` of them, each started on its
    first job, the first being the one the `lvae` command started early (`EarlyDrawing.take`). Each callback sends all its
    jobs to one process, its `slot`, so they are drawn in order (a t-SNE map starts from the last one); the pictures
    of other slots are drawn beside them. With `lend_core` (training leaves no core free), torch in the training
    process uses one thread less while any job is pending; `settle`, on the training thread, gives it back, and
    `close` and `stop` (the end of fit, teardown, an exception) give back the count the pool found in any case."""

    def __init__(self, size: int, lend_core: bool) -> None:
        self.processes = [EarlyDrawing.take(), *(DrawingProcess() for _ in range(size - 1))]
        self.lend_core = lend_core
        self._slots = 0  # slots handed out
        self._pending: set[Future] = set()
        self._threads: Optional[int] = None  # torch's thread count to give back when no job is pending

    @property
    def pids(self) -> list[int]:
        """The processes started so far."""
        return [process.pid for process in self.processes if process.pid is not None]

    def slot(self) -> int:
        """A slot for the next picture callback, in turn: pictures spread over the processes."""
        slot, self._slots = self._slots % len(self.processes), self._slots + 1
        return slot

    def submit(self, slot: int, job: Callable[[], Drawn]) -> Future:
        """Send `job` to the process of `slot` (`DrawingProcess.submit`)."""
        future = self.processes[slot].submit(job)
        self._pending.add(future)
        if self.lend_core and self._threads is None:
            import torch  # the training process's: already imported there

            if torch.get_num_threads() > 1:
                self._threads = torch.get_num_threads()  # as found: what `settle` gives back
                torch.set_num_threads(self._threads - 1)  # a core for the drawing
        return future

    def busy(self) -> bool:
        """Whether a job sent is still being drawn, or waits to be."""
        return any(not future.done() for future in self._pending)

    def settle(self) -> None:
        """Give torch its threads back once no job is pending. On the training thread: torch's thread count is the
        calling thread's own OpenMP setting."""
        self._pending = {future for future in self._pending if not future.done()}
        if not self._pending:
            self._give_back_core()

    def _give_back_core(self) -> None:
        """torch's thread count as the pool found it before lending a core, if it lent one."""
        if self._threads is not None:
            import torch

            torch.set_num_threads(self._threads)
            self._threads = None

    def wait(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for every pending job; whether they all finished."""
        deadline = time.monotonic() + timeout
        for future in list(self._pending):
            try:
                future.exception(timeout=max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return False
            except Exception:  # cancelled, or the process died: nothing more to wait for
                pass
        return True

    def stop(self) -> None:
        """Stop every process at once (`DrawingProcess.stop`); torch gets back the threads it had."""
        try:
            for process in self.processes:
                process.stop()
            for future in self._pending:
                future.cancel()
        finally:
            self._pending.clear()
            self._give_back_core()

    def close(self) -> None:
        """Finish: wait for the jobs sent, then end the processes; torch gets back the threads it had, also when
        the wait is interrupted."""
        try:
            for process in self.processes:
                process.close()
        finally:
            self._pending.clear()
            self._give_back_core()


class EarlyDrawing:
    """The drawing process the `lvae` command starts before it imports Lightning, and its owner. Lightning's import
    keeps one core busy and leaves the other idle, which the drawing stack's import then uses instead of the first
    epochs' training.

    The entry point holds it in a `with` around the whole command. On entering, it starts the process for `fit` and
    `validate` (the commands that draw), not for `--help` or `--print_config`, and only in the process of global rank
    zero (the one that draws). The first trainer's pictures take it over (`take`, by their `DrawingPool`), which then
    closes it with the fit; on leaving, a process nobody took is stopped."""

    def __init__(self, command: CommandLine, modules: tuple[str, ...]) -> None:
        self.command = command
        self.modules = modules  # what the process imports while Lightning loads (`lvae.figures.DRAWING_STACK`)
        self.process: Optional[DrawingProcess] = None
        self._token: Optional[Token] = None

    def __enter__(self) -> "EarlyDrawing":
        if self.command.draws and global_zero():
            self.process = DrawingProcess()
            self.process.submit(Job("lvae.drawing:import_modules", {"modules": self.modules}))
        self._token = _EARLY.set(self)
        return self

    def __exit__(self, kind: Optional[type], err: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        _EARLY.reset(self._token)
        process, self.process = self.process, None
        if process is not None:
            process.stop()  # no trainer drew with it: its imports are of no more use

    @staticmethod
    def take() -> DrawingProcess:
        """The process of the `EarlyDrawing` held open here, the first time it is asked for; a new one (started on
        first use) after that, or where none is held (a script's own Trainer)."""
        early = _EARLY.get()
        process = early.process if early is not None else None
        if early is not None:
            early.process = None
        return process if process is not None else DrawingProcess()


# The EarlyDrawing open around this command, set and reset by its `with`: the DrawingPool built deep inside
# Lightning's setup finds it here.
_EARLY: ContextVar[Optional[EarlyDrawing]] = ContextVar("lvae_early_drawing", default=None)
