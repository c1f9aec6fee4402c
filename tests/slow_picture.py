"""A picture callback tests add on the command line (``--trainer.callbacks+=slow_picture.SlowPicture``, with
``PYTHONPATH=tests``) whose drawing takes a while, so that a signal or a kill lands while it is being drawn."""

from pathlib import Path

from lvae.drawing import Drawn, Job
from lvae.picture_callback import PictureCallback


def draw_slowly(path: str, seconds: float, started: str) -> Drawn:
    import time

    from matplotlib.figure import Figure

    from lvae.figures.canvas import save_figure

    Path(started).write_text(str(__import__("os").getpid()))  # the drawing process's pid: the job has begun
    time.sleep(seconds)
    figure = Figure(figsize=(1, 1))
    figure.text(0.5, 0.5, Path(path).stem)
    return Drawn(pictures=[("slow", save_figure(figure, path), "drawn slowly")])


class SlowPicture(PictureCallback):
    """Draws picture `slow` each epoch, taking `seconds`; writes `<out>/started_<epoch>` when a drawing begins."""

    names = ("slow",)

    def __init__(self, out: str, seconds: float = 4.0, skip_when_busy: bool = True):
        super().__init__(skip_when_busy=skip_when_busy)
        self.out, self.seconds = Path(out), seconds

    def prepare(self, trainer, pl_module, latents, epoch):
        self.out.mkdir(parents=True, exist_ok=True)
        return Job("slow_picture:draw_slowly", {"path": str(self.sink.png_path("slow", epoch)),
                                                "seconds": self.seconds,
                                                "started": str(self.out / f"started_{epoch}")})
