"""What Lightning, torch and W&B print on every healthy run that a user can do nothing about, kept off the console.

lvae's own messages, and other libraries' warnings that a user can act on (e.g. Lightning's `log_every_n_steps`
hint), still come through; a test runs a healthy fit and fails on any other warning.
"""

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import lightning as L
from lightning.pytorch.loggers import WandbLogger
from lightning_utilities.core import rank_zero

# Python warnings raised inside the libraries, not by anything lvae or its user calls.
WARNINGS = (
    # torch 2.14 deprecates a class that Lightning 2.6's own pytree helpers still use, once per process
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    # Lightning's all_gather (lvae gathers the validation latents with it under DDP) calls a deprecated torch function
    r"torch\.distributed\.nn\.functional\.all_gather is deprecated",
)
LIGHTNING_TIP = "💡 Tip:"  # Lightning's advert for its LitLogger, logged on every run without one


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(LIGHTNING_TIP)


@contextmanager
def quiet() -> Iterator[None]:
    """Keep the libraries' noise off the console while lvae runs; an in-process caller gets its settings back."""
    no_tips = _NoTips()
    log = rank_zero.log  # the logger all of Lightning's rank_zero_info calls go through
    log.addFilter(no_tips)
    try:
        with warnings.catch_warnings():
            for message in WARNINGS:
                warnings.filterwarnings("ignore", message=message, category=FutureWarning)
            yield
    finally:
        log.removeFilter(no_tips)


def quiet_trainer(trainer: "L.Trainer", resuming: bool) -> None:
    """Settle, before the run starts, what would make W&B warn on every run and Lightning on every resume."""
    if resuming:
        # A resumed fit continues in its own checkpoint folder on purpose; Lightning's hint is for a new run.
        warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            # Lightning 2.6 always passes anonymous=None, which wandb 0.31 warns "has no effect" about.
            if logger._wandb_init.get("anonymous") is None:
                logger._wandb_init.pop("anonymous", None)

