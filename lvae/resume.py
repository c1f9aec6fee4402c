"""What a resumed fit carries over besides the weights: the random generators' state, the W&B history's step, and
a new learning rate given on resume."""

import random
from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import WandbLogger
from typing_extensions import override

from lvae.say import say


def apply_new_lr(trainer: "L.Trainer", trained: Optional[float], lr: float) -> None:
    """Train the restored optimisers with `lr` when the checkpoint was trained with another, `trained`.

    Lightning restores the optimiser with the lr it was saved with: a new --model.lr on resume, the fix the
    divergence message gives, would be ignored. A schedule keeps its shape, rescaled by new/old."""
    if trained is None or trained == lr:
        return
    for optimizer in trainer.optimizers:
        for group in optimizer.param_groups:
            group["lr"] *= lr / trained
            if "initial_lr" in group:
                group["initial_lr"] *= lr / trained
    for config in trainer.lr_scheduler_configs:
        if hasattr(config.scheduler, "base_lrs"):  # ReduceLROnPlateau has none: it scales the group's lr itself
            config.scheduler.base_lrs = [base * lr / trained for base in config.scheduler.base_lrs]
    say(f"lvae: model.lr {trained} -> {lr}: applied to the restored optimizer")


class RandomState(Callback):
    """Keeps the random generators' state (torch, CUDA, NumPy, Python) in every checkpoint and restores it when
    training resumes, so a resumed run draws the same training noise as a run that was never stopped (on one
    process; under DDP each rank continues from rank zero's state)."""

    def __init__(self) -> None:
        self._loaded: Optional[dict[str, Any]] = None

    # state_key stays the class name: the generators are the process's, so one RandomState per trainer keeps them.

    @override
    def state_dict(self) -> dict[str, Any]:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        return {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
                "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                          "has_gauss": has_gauss, "gauss": gauss},
                "python": random.getstate()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = state_dict

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        # Here rather than on load: the checkpoint's state belongs right before training goes on, after the
        # sanity check and everything else a resumed run does first.
        if self._loaded is None:
            return
        state, self._loaded = self._loaded, None
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        n = state["numpy"]
        np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
        random.setstate(state["python"])


class WandbHistory(Callback):
    """Keeps the W&B run's step in every checkpoint, and continues from it when training resumes.

    Each resumed fit of an offline run writes a new `wandb/offline-run-*` folder whose history would start again at
    step 0; `wandb sync` of them all into the one run would drop the resumed part, since W&B keeps only rows whose
    step increases. The step is kept in the checkpoint and, for the rows logged after it (an epoch's last metrics,
    the last pictures), in `wandb/lvae-step` beside the offline runs when the fit ends, however it ends short of a
    SIGKILL. Online, W&B continues the run's step itself, and this changes nothing."""

    MARK = "lvae-step"
    # state_key stays the class name: a trainer logs to one W&B run, whose step one WandbHistory keeps.

    def __init__(self) -> None:
        self._trainer: Optional["L.Trainer"] = None  # state_dict is called without it
        self._loaded: Optional[int] = None

    @staticmethod
    def _logger(trainer: Optional["L.Trainer"]) -> Optional[WandbLogger]:
        if trainer is None or not trainer.is_global_zero:
            return None
        return next((logger for logger in trainer.loggers if isinstance(logger, WandbLogger)), None)

    def _run(self, trainer: Optional["L.Trainer"]) -> Any:
        logger = self._logger(trainer)
        return logger.experiment if logger is not None else None

    def _mark(self, trainer: "L.Trainer") -> Optional[Path]:
        logger = self._logger(trainer)
        return Path(logger.save_dir) / "wandb" / self.MARK if logger is not None and logger.save_dir else None

    @override
    def setup(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        self._trainer = trainer

    @override
    def state_dict(self) -> dict[str, Any]:
        run = self._run(self._trainer)
        return {"step": int(run.step) if run is not None else 0}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._loaded = int(state_dict.get("step", 0))

    @override
    def on_train_start(self, trainer: "L.Trainer", pl_module: "L.LightningModule") -> None:
        loaded, self._loaded = self._loaded, None
        run, mark = self._run(trainer), self._mark(trainer)
        if loaded is None or run is None:
            return  # a new run, or no W&B
        if mark is not None and mark.is_file():
            try:
                loaded = max(loaded, int(mark.read_text()))
            except ValueError:
                pass  # not lvae's number: the checkpoint's step stands
        if run.step < loaded:
            run.log({}, step=loaded)  # moves the step on; writes no row

    def _keep_step(self, trainer: "L.Trainer") -> None:
        run, mark = self._run(trainer), self._mark(trainer)
        if run is not None and mark is not None and mark.parent.is_dir():
            mark.write_text(str(int(run.step)))

    @override
    def on_exception(self, trainer: "L.Trainer", pl_module: "L.LightningModule", exception: BaseException) -> None:
        self._keep_step(trainer)

    @override
    def teardown(self, trainer: "L.Trainer", pl_module: "L.LightningModule", stage: str) -> None:
        if stage == "fit":
            self._keep_step(trainer)
        self._trainer = None
