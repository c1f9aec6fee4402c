"""Drawing jobs for tests (``drawing_probe:heavy_modules``, ``drawing_probe:native_threads``,
``drawing_probe:settings``, ``drawing_probe:pid``, ``drawing_probe:pid_png``): what the drawing process holds and
which process drew; ``drawing_probe:die``, a drawing process that crashes; and ``drawing_probe:draw_when_open``, a
picture a test keeps the drawing process busy with."""

import os
import signal
import sys

from lvae.drawing import Drawn


def heavy_modules() -> Drawn:
    """Which of the training process's heavy imports the drawing process holds."""
    return Drawn(scalars={name: 1.0 for name in ("torch", "lightning", "lightning.pytorch") if name in sys.modules})


def native_threads() -> Drawn:
    """The thread count of each native thread pool (OpenMP, BLAS) loaded once scikit-learn's neighbour search ran."""
    import numpy as np
    from sklearn.neighbors import NearestNeighbors
    from threadpoolctl import threadpool_info

    points = np.random.default_rng(0).normal(size=(200, 2))
    NearestNeighbors(n_neighbors=5).fit(points).kneighbors(points)
    return Drawn(scalars={f"{pool['internal_api']}:{pool['filepath']}": float(pool["num_threads"])
                          for pool in threadpool_info()})


def settings() -> Drawn:
    """The drawing process's niceness, whether it ignores Ctrl-C, and whether its main module is a file."""
    return Drawn(scalars={"niceness": float(os.getpriority(os.PRIO_PROCESS, 0)),
                          "sigint_ignored": float(signal.getsignal(signal.SIGINT) is signal.SIG_IGN),
                          "main_is_a_file": float(hasattr(sys.modules["__main__"], "__file__"))})


def die(words: str, code: int) -> Drawn:
    """Ends the drawing process as a crash would, its last words on stderr."""
    print(words, file=sys.stderr, flush=True)
    os._exit(code)


def pid(seconds: float = 0.0, interrupt_in: int = 0) -> Drawn:
    """Which process drew, after `seconds`; Ctrl-C, as the terminal sends it, when that is process `interrupt_in`."""
    import time

    if os.getpid() == interrupt_in:
        raise KeyboardInterrupt
    time.sleep(seconds)
    return Drawn(scalars={"pid": float(os.getpid())})


def pid_png(path: str, shade: int, seconds: float = 0.0, fail: bool = False) -> Drawn:
    """A picture of grey `shade` as the PNG `path` (with its GIF frame), after `seconds`, and which process drew it;
    with `fail`, a picture that fails."""
    import time
    from pathlib import Path

    from PIL import Image

    from lvae.figures.canvas import save_png

    if fail:
        raise RuntimeError("this picture fails")
    time.sleep(seconds)
    png = save_png(Image.new("RGB", (40, 30), (shade, shade, shade)), path)
    return Drawn(pictures=[(Path(path).parent.name, png, "")], scalars={"pid": float(os.getpid())})


def draw_when_open(name: str, path: str, hold: str, seconds: float = 0.0) -> Drawn:
    """Picture `name`, drawn after `seconds` once the file `hold` is gone (at most 2 minutes): a test keeps the
    drawing process busy for as long as it likes."""
    import time
    from pathlib import Path

    from PIL import Image

    from lvae.figures.canvas import save_png

    time.sleep(seconds)
    deadline = time.monotonic() + 120
    while Path(hold).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return Drawn(pictures=[(name, save_png(Image.new("RGB", (40, 30), "white"), path), "drawn when let")])
