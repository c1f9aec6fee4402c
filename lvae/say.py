"""lvae's lines on the console: each starts with "lvae:" and sits on a line of its own, above the progress bar, never
glued to it; under DDP only rank zero speaks.

They go through the `lvae` logger of Python's `logging`: where the user (or pytest) has configured logging, they
reach the user's handlers in the user's format; otherwise lvae's own handler writes them to stderr with `tqdm.write`,
which lifts the progress bars Lightning draws (to stdout or stderr), writes the line and draws the bars again below.
"""

import logging
import sys

from lightning_utilities.core.rank_zero import rank_zero_only
from tqdm import tqdm

PREFIX = "lvae: "


def own_line(text: str) -> None:
    """Write `text` to stderr on a line of its own, above any progress bar."""
    tqdm.write(text.rstrip("\n"), file=sys.stderr)


class _OwnLine(logging.Handler):
    """Writes a record with `own_line`, unless the root logger has handlers of its own: those then show it (the
    record propagates to them), once and in their format."""

    def emit(self, record: logging.LogRecord) -> None:
        if logging.getLogger().hasHandlers():
            return
        try:
            own_line(self.format(record))
        except Exception:  # a closed stderr must not end training
            self.handleError(record)


log = logging.getLogger("lvae")
log.setLevel(logging.INFO)
if not any(isinstance(handler, _OwnLine) for handler in log.handlers):
    log.addHandler(_OwnLine())


def _rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0  # set by Lightning's strategies once the ranks are known


def say(text: str) -> None:
    """One line of lvae's (a run starting, a file written, what fit waits for), on rank zero."""
    if _rank_zero():
        log.info(text if text.startswith(PREFIX) else PREFIX + text)


def notice(text: str) -> None:
    """Something the user may want to act on (a picture skipped, a checkpoint's inputs not found), on rank zero: a
    sentence that starts with "lvae:", not a Python warning with a source line."""
    if _rank_zero():
        log.warning(text if text.startswith(PREFIX) else PREFIX + text)
