"""A callback the benches append on the command line to time `fit` from inside the process (imports excluded).

It is last in the callback list, so its teardown runs after the picture callbacks have logged their last pictures,
GIFs and table (on_fit_end) and collected what the drawing process was still doing (teardown): the time covers
everything a user waits for before the loggers close."""

import json
import time

import lightning as L


class FitTimer(L.Callback):
    def __init__(self, out: str):
        self.out = out

    def on_fit_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def teardown(self, trainer, pl_module, stage):
        if stage != "fit":
            return
        seconds = time.perf_counter() - self.start
        with open(self.out, "w") as f:
            json.dump({"seconds": seconds, "epochs": trainer.current_epoch}, f)
