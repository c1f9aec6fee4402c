"""Errors a user can act on. The CLI prints their message alone (no traceback) and exits with `exit_code`."""


class LVAEError(Exception):
    """A failure whose message names what is wrong and how to fix it."""

    exit_code = 1


class ConfigError(LVAEError, ValueError):
    """A bad configuration value; refused before any work starts, like a parser error."""

    exit_code = 2


class DataFilesError(LVAEError):
    """Dataset files that are missing, truncated or inconsistent."""

    exit_code = 2


class CheckpointError(LVAEError):
    """A checkpoint that does not exist, is not a checkpoint, or does not fit the configured model."""

    exit_code = 2


class CheckpointWriteError(LVAEError):
    """A checkpoint that could not be written (a full disk); the ones already on disk are whole."""

    exit_code = 1


class DivergenceError(LVAEError, FloatingPointError):
    """The run diverged: a loss, mean or log-variance that `lvae.divergence` calls absurd, or NaN."""

    exit_code = 1


def at_least(name: str, value: float, minimum: float, why: str = "") -> None:
    """Refuse an argument below its least value, in the words every argument check uses: "Class.arg=value must be
    >= minimum (why)"."""
    if value < minimum:
        raise ConfigError(f"{name}={value} must be >= {minimum}" + (f" ({why})" if why else ""))
