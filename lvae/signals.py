"""lvae's one owner of SIGTERM, from the first line of its entry point to its last.

Lightning handles SIGTERM only while a trainer runs its loops: it installs its handler when `fit`, `validate`, `test`
or `predict` starts (calling the one it found as well), looks at the signal between batches, and restores the
handler it found before `on_fit_end`. Outside that (while Lightning imports, while the command is set up, while fit
waits for its last pictures, after an evaluation's last batch) a SIGTERM would end the process at once, with no
message, no last pictures and no closed W&B run; or, after an evaluation's last batch, not at all. `EntrySignals`
covers those gaps and gives back the handler it found when the command ends. This module imports nothing heavy: it
is in force before Lightning is imported.
"""

import os
import signal
import sys
import threading
import time
from types import FrameType, TracebackType
from typing import Any, Optional

SIGTERM_EXIT = 128 + signal.SIGTERM  # the shell's convention: 143
SIGINT_EXIT = 128 + signal.SIGINT  # 130
STOPPED = "lvae: stopped by SIGTERM"


def sigterm_exception() -> BaseException:
    """Lightning's SIGTERMException once Lightning is loaded (its loops and callbacks know it: last.ckpt is saved,
    the pictures being drawn are finished), else SystemExit with the shell's code."""
    exceptions = sys.modules.get("lightning.pytorch.utilities.exceptions")
    if exceptions is not None:
        return exceptions.SIGTERMException(SIGTERM_EXIT)
    print(STOPPED, file=sys.stderr, flush=True)
    return SystemExit(SIGTERM_EXIT)


class EntrySignals:
    """Holds SIGTERM for one lvae command (re-entrant: an inner command leaves the outer one's handler in place).
    While Lightning's own handler is installed, it calls this one too, which then leaves the signal to Lightning."""

    def __init__(self) -> None:
        self._found: Any = None
        self._installed = False

    def __enter__(self) -> "EntrySignals":
        current = signal.getsignal(signal.SIGTERM)
        if threading.current_thread() is threading.main_thread() and not isinstance(
                getattr(current, "__self__", None), EntrySignals):
            self._found = signal.signal(signal.SIGTERM, self._on_sigterm)
            self._installed = True
        return self

    def _on_sigterm(self, signum: int, frame: Optional[FrameType]) -> None:
        if signal.getsignal(signal.SIGTERM) != self._on_sigterm:
            return  # called by Lightning's handler, which raises SIGTERMException at its next check
        raise sigterm_exception()

    def __exit__(self, kind: Optional[type], value: Optional[BaseException], trace: Optional[TracebackType]) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._found)
            self._installed = False


class HeldSigterm:
    """SIGTERM held while a trainer's pictures finish at the end of fit, in any Trainer (Lightning has restored the
    handler it found by then, so SIGTERM would end the process at once, losing the last pictures, the evolution
    GIFs and the end of the W&B run). A SIGTERM that arrives is noted, the waits for pictures stop at `grace` seconds
    from it, and `release` gives the handler it found back and hands it the signal."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.deadline: Optional[float] = None  # set when SIGTERM arrives: the waits end then
        self._found: Any = None
        self._held = False

    def hold(self) -> None:
        if threading.current_thread() is threading.main_thread() and not self._held:
            found = signal.signal(signal.SIGTERM, self._note)
            # None: a handler not set from Python; SIG_DFL is what it does and what can be set back.
            self._found = signal.SIG_DFL if found is None else found
            self._held = True

    def _note(self, signum: int, frame: Optional[FrameType]) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + self.grace

    def release(self, deliver: bool = True) -> None:
        """Give back the handler found; with `deliver`, hand it a SIGTERM that arrived meanwhile (without: the
        command already ends, e.g. interrupted)."""
        if not self._held:
            return
        signal.signal(signal.SIGTERM, self._found)
        self._held = False
        received, self.deadline = self.deadline is not None, None
        if not (received and deliver):
            return
        if callable(self._found):  # lvae's own (EntrySignals) ends the command with its line, as any handler would
            self._found(signal.SIGTERM, None)
        elif self._found == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGTERM)  # what SIGTERM would have done, now that the pictures are done
