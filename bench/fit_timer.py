"""A callback the benches append on the command line to time `fit` from inside the process (imports excluded).

It is last in the callback list, so its on_fit_end runs after the picture callbacks have joined their drawing
threads and written their GIFs: the time covers everything a user waits for."""

import json
import time

import lightning as L


class FitTimer(L.Callback):
    def __init__(self, out: str):
        self.out = out

    def on_fit_start(self, trainer, pl_module):
        self.start = time.perf_counter()

    def on_fit_end(self, trainer, pl_module):
        seconds = time.perf_counter() - self.start
        with open(self.out, "w") as f:
            json.dump({"seconds": seconds, "epochs": trainer.current_epoch}, f)
