"""The drawing process: one separate, low-priority process that runs the picture jobs of one trainer, in order.

A picture callback does its model work in the training process and sends a `Job` here: the name of a function in
one of the `lvae.figures` modules and its arguments (NumPy arrays and plain values). The training process never
imports the drawing stack (matplotlib, openTSNE, scikit-learn); the drawing process imports it on first use.
This module imports neither Lightning, nor torch, nor the drawing stack at its top: the drawing process starts by
importing it, and needs none of them to draw. Lightning takes about 6 s of CPU to import on 2 cores, torch 2 s and
another 0.5 s to exit; on 2 cores that time is taken from training.
"""

import atexit
import importlib
import multiprocessing
import sys
import os
import signal
import threading
import time
import warnings
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from typing import Any, Optional

# The drawing process runs at this niceness: it takes the CPU time training leaves (see bench/README.md).
DRAWING_NICENESS = 10
PARENT_CHECK_SECONDS = 0.5  # how often the drawing process checks that the training process is still there


@dataclass
class Drawn:
    """What a drawing job hands back to the training process: the PNGs it wrote as (name, path, caption), the
    numbers it measured, state for the callback (a t-SNE map), warnings, and the evolution GIFs it made as
    (name, path); all picklable."""

    pictures: list[tuple[str, str, str]] = field(default_factory=list)
    scalars: dict[str, float] = field(default_factory=dict)
    state: Any = None
    warnings: list[str] = field(default_factory=list)
    animations: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Job:
    """A drawing job: `target` ("lvae.figures.scatter:draw") called with `kwargs`. Named by its import path, so the
    training process that builds it never imports the drawing stack, and it pickles as plain data."""

    target: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __call__(self) -> Drawn:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)(**self.kwargs)


def run_job(job: Job) -> Drawn:
    """Run `job`, handing back the warnings it raised, to be raised where the user sees them."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        drawn = job()
    drawn.warnings.extend(str(w.message) for w in caught)
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


def _exit_when_orphaned(parent: int) -> None:
    # A training process killed outright (SIGKILL, the out-of-memory killer) cannot stop its drawing process.
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK_SECONDS)
    os._exit(0)


def _exit_at_once() -> None:
    # "spawn" ends its process with sys.exit, and tearing down an interpreter that holds matplotlib, SciPy and
    # scikit-learn took 0.2 s at the end of every fit, with the user waiting (DrawingProcess.close). The drawing
    # process has nothing to finalise: each job's files are written whole and closed before its result is sent.
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(0)


# The drawing process runs one thread of native code. scikit-learn's neighbour search (the t-SNE affinities, the
# k-NN agreement) otherwise starts an OpenMP thread per core, and while training holds the other core those threads
# wait on one another: 0.13 s a search instead of 0.02 s, half of a warm t-SNE epoch (bench/README.md).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def start_drawing_process(parent: int) -> None:
    """Initializer of the drawing process: low priority, one thread of native code (set before NumPy loads its
    libraries), deaf to Ctrl-C (the training process handles it and saves last.ckpt), quick to exit, and gone within
    a second of its training process, however that ends."""
    os.environ.update(ONE_THREAD)
    lower_priority()
    atexit.register(_exit_at_once)  # after the handlers of the modules the jobs import, which run first
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="lvae-parent-watch").start()


# Drawing runs in a separate process, at a lower priority than training, and while it draws training leaves it a
# core: a drawing thread would hold the GIL that each of training's small torch calls needs back
# (bench/README.md has the measurements).
class DrawingProcess:
    """The drawing process of one trainer, shared by its picture callbacks; started on first use, jobs run one at a
    time in the order they were sent. "spawn" rather than fork: the training process holds threads (W&B, the data
    path) and possibly CUDA, which a forked child must not inherit. While jobs are pending, torch in the training
    process uses one thread less; `settle`, on the training thread, gives it back."""

    def __init__(self) -> None:
        self._executor: Optional[ProcessPoolExecutor] = None
        self._pid: Optional[int] = None
        self._pending: set[Future] = set()
        self._threads: Optional[int] = None  # torch's thread count to give back when no job is pending

    @property
    def pid(self) -> Optional[int]:
        return self._pid

    def submit(self, job: Job, lend_core: bool = True) -> Future:
        """Send `job`; with `lend_core`, torch in this process uses one thread less until `settle` finds no job
        pending."""
        for _ in range(2):
            before = None
            if self._executor is None:
                before = {p.pid for p in multiprocessing.active_children()}
                self._executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                     initializer=start_drawing_process, initargs=(os.getpid(),))
            try:
                future = self._executor.submit(run_job, job)
            except BrokenProcessPool:  # the process died (killed, out of memory): start a new one, once
                self._executor.shutdown(wait=False)
                self._executor = None
                continue
            if before is not None:  # the first submit started the process
                self._pid = next((p.pid for p in multiprocessing.active_children() if p.pid not in before), None)
                if self._pid is not None:
                    lower_priority(self._pid)  # at once: its imports would otherwise compete with training
            if not lend_core:
                return future
            self._pending.add(future)
            import torch  # the training process's: already imported there

            if self._threads is None and torch.get_num_threads() > 1:
                self._threads = torch.get_num_threads()
                torch.set_num_threads(self._threads - 1)  # a core for the drawing
            return future
        raise RuntimeError("the drawing process could not be started")

    def settle(self) -> None:
        """Give torch its threads back once no job is pending. On the training thread: torch's thread count is the
        calling thread's own OpenMP setting."""
        self._pending = {future for future in self._pending if not future.done()}
        if not self._pending and self._threads is not None:
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
        """Stop at once: queued jobs are dropped and the one being drawn is abandoned (each PNG is written whole or
        not at all)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            for process in multiprocessing.active_children():
                if process.pid == self._pid:
                    process.terminate()
                    process.join(timeout=10)
        self._executor, self._pid = None, None
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        self.settle()

    def close(self) -> None:
        """Finish: wait for what is pending, then end the process."""
        if self._executor is not None:
            self._executor.shutdown(wait=True)
        self._executor, self._pid = None, None
        self._pending.clear()
        self.settle()


# What the drawing jobs import: every figure module and, for the t-SNE map, openTSNE and scikit-learn (about 2 s of
# CPU in all, 1 s of it openTSNE's import of scikit-learn and SciPy).
DRAWING_STACK = ("lvae.figures.scatter", "lvae.figures.tsne", "lvae.figures.prior", "lvae.figures.uncertainty",
                 "lvae.figures.traversal", "lvae.figures.interpolation", "lvae.figures.reconstructions",
                 "lvae.figures.animation", "openTSNE", "sklearn.neighbors")
RANK_VARIABLES = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")  # set by torchrun, Lightning's launcher, SLURM
_early: Optional[DrawingProcess] = None


def start_early(argv: list[str]) -> None:
    """Start the drawing process and its imports before the `lvae` command imports Lightning: Lightning's import
    takes one core for about 6 s and leaves the other idle, which the drawing stack's import then uses instead of
    the first epochs' training. Only for `fit` and `validate` (the commands that draw), not for `--help` or
    `--print_config`, and only in the process of global rank zero (the one that draws). The first trainer's picture
    callbacks take it over (`take_early`); unused, it ends with the command."""
    global _early
    if not argv or argv[0] not in ("fit", "validate") or _early is not None:
        return
    if any(arg in ("-h", "--help") or arg.startswith("--print_config") for arg in argv):
        return
    if any(os.environ.get(name, "0") != "0" for name in RANK_VARIABLES):
        return
    _early = DrawingProcess()
    _early.submit(Job("lvae.drawing:import_modules", {"modules": DRAWING_STACK}), lend_core=False)


def take_early() -> DrawingProcess:
    """The drawing process `start_early` started, the first time it is asked for; a new one (started on first use)
    after that, or when none was started."""
    global _early
    drawing, _early = _early, None
    return drawing if drawing is not None else DrawingProcess()
