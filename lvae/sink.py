"""The one way a picture leaves lvae: a PNG under the run folder, a W&B image on the ``epoch`` axis and a
TensorBoard image, for whichever of those loggers the trainer has."""

from pathlib import Path
from typing import Any, Optional

import lightning as L
import numpy as np
from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger
from PIL import Image


class PictureSink:
    """Sends drawn pictures and per-epoch scalars to the trainer's loggers; `png_path` says where a picture's PNG
    goes (``latents/<name>/epoch_<NNN>.png`` under `root`). Only rank zero's training loop uses it."""

    def __init__(self, trainer: "L.Trainer", root: Path):
        self.trainer = trainer
        self.root = Path(root)
        self._declared: set[str] = set()

    def _wandb(self) -> list[Any]:
        return [lg.experiment for lg in self.trainer.loggers if isinstance(lg, WandbLogger)]

    def _declare(self, run: Any, key: str) -> None:
        # Pictures and their scalars go on an `epoch` axis, so W&B's slider replays the evolution epoch by epoch
        # and never sees a step that goes backwards.
        if key not in self._declared:
            run.define_metric("epoch")
            run.define_metric(key, step_metric="epoch")
            self._declared.add(key)

    def png_path(self, name: str, epoch: int) -> Path:
        return self.root / "latents" / name / f"epoch_{epoch:03d}.png"

    def page_path(self, name: str) -> Path:
        """Where a page of the whole run goes: ``latents/<name>.html`` under `root`."""
        return self.root / "latents" / f"{name}.html"

    def kept_path(self, name: str) -> Path:
        """Where the data a page of the whole run is written from is kept: ``latents/<name>/`` under `root`."""
        return self.root / "latents" / name

    def log_picture(self, name: str, path: Path, epoch: int, caption: Optional[str] = None) -> None:
        """Log the PNG `path` of `name` for `epoch` to every picture-taking logger."""
        for run in self._wandb():
            import wandb

            self._declare(run, f"latents/{name}")
            run.log({f"latents/{name}": wandb.Image(str(path), caption=caption), "epoch": epoch})
        for logger in self.trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                with Image.open(path) as png:
                    pixels = np.asarray(png.convert("RGB"))
                logger.experiment.add_image(f"latents/{name}", pixels, global_step=epoch, dataformats="HWC")

    def log_scalars(self, values: dict[str, float], epoch: int) -> None:
        """Per-epoch numbers: on W&B's epoch axis, and as ordinary metrics (with `epoch`) for other loggers."""
        for run in self._wandb():
            for key in values:
                self._declare(run, key)
            run.log({**values, "epoch": epoch})
        for logger in self.trainer.loggers:
            if not isinstance(logger, WandbLogger):
                logger.log_metrics({**values, "epoch": epoch}, step=self.trainer.global_step)

    def has_tables(self) -> bool:
        return bool(self._wandb())

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]], epoch: int) -> None:
        """A W&B table (W&B's embedding projector reads tables of vectors); other loggers have no tables."""
        for run in self._wandb():
            import wandb

            self._declare(run, key)
            # Every cell holds a value: without W&B's check for missing ones, 500 rows take 0.1-0.2 s less.
            run.log({key: wandb.Table(columns=columns, data=rows, optional=False), "epoch": epoch})

    def log_page(self, name: str, path: Path) -> None:
        """Log the self-contained HTML page `path` of `name` to W&B, as an HTML panel, unchanged: W&B's default adds
        a stylesheet from its server, and the page needs none (other loggers have no place for a page)."""
        for run in self._wandb():
            import wandb

            run.log({f"latents/{name}": wandb.Html(str(path), inject=False)})

    def log_animation(self, name: str, path: Path) -> None:
        """Log the evolution GIF `path` of `name` to W&B (other loggers keep the per-epoch images)."""
        for run in self._wandb():
            import wandb

            run.log({f"latents/{name}/evolution": wandb.Video(str(path), format="gif")})
