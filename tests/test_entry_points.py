"""lvae's pictures from any Python entry point: a training script without an `if __name__ == "__main__":` guard, run
as a file and from stdin, and a notebook whose module is defined in a cell, fitted twice in one kernel. The drawing
process never runs the user's `__main__` again (each one's top level runs exactly once), and imports a user's picture
module through the training process's sys.path."""

import ast
import inspect
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from conftest import REPO, cli_env
from foreign_vae import ClassicVAE
from nbclient import NotebookClient

from lvae.drawing import DrawingProcess, Job

TESTS = REPO / "tests"
EPOCHS = ["epoch_000.png", "epoch_001.png"]

# What a user writes: a module lvae did not write (foreign_vae's, defined here in __main__), two pictures, a plain
# Trainer, no main guard. The top level notes each time it runs.
SCRIPT = f'''\
import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foreign_vae import loader, toy_digits
from lvae.callbacks import LatentScatter, PriorSamples

with open("top_level_runs.txt", "a") as runs:
    runs.write("ran\\n")


{inspect.getsource(ClassicVAE)}

trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, default_root_dir="out",
                    callbacks=[LatentScatter(), PriorSamples(n_samples=4)], enable_progress_bar=False,
                    enable_checkpointing=False, enable_model_summary=False)
trainer.fit(ClassicVAE(), loader(*toy_digits(64, seed=0)), loader(*toy_digits(45, seed=1)))
'''


@pytest.fixture(scope="module")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """The script run as `python train.py` and as `python - < train.py`, each in a folder of its own, side by side
    (their imports take one core each)."""
    env = {**cli_env(), "PYTHONPATH": str(TESTS)}  # foreign_vae, as a user's own module beside the script
    started = {}
    for how in ("file", "stdin"):
        folder = tmp_path_factory.mktemp(how)
        (folder / "train.py").write_text(SCRIPT)
        command = [sys.executable, "train.py" if how == "file" else "-"]
        with (folder / "train.py").open() as script:
            started[how] = folder, subprocess.Popen(command, cwd=folder, env=env, stdin=script,
                                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    done = {}
    for how, (folder, proc) in started.items():
        stdout, stderr = proc.communicate(timeout=240)
        done[how] = folder, subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    return done


@pytest.mark.parametrize("how", ["file", "stdin"])
def test_a_script_without_a_main_guard_gets_every_picture_and_runs_once(scripts: dict, how: str) -> None:
    folder, proc = scripts[how]
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "was skipped" not in proc.stderr, proc.stderr[-4000:]
    for name in ("scatter", "prior_samples"):
        assert sorted(p.name for p in (folder / "out" / "latents" / name).glob("epoch_*.png")) == EPOCHS, name
    assert (folder / "top_level_runs.txt").read_text() == "ran\n"  # the drawing process did not run it again


# A notebook: the module and a picture function are defined in cells, a user's picture module is found through a
# sys.path entry added in a cell, and two fits run one after the other in one kernel.
CELLS = [
    f'''\
import logging
import sys

sys.path.insert(0, {str(TESTS)!r})  # foreign_vae's data and slow_picture: the user's own modules

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from foreign_vae import loader, toy_digits
from lvae.callbacks import LatentScatter, PriorSamples
from lvae.drawing import Drawn
from lvae.picture_callback import PictureCallback
from slow_picture import SlowPicture

with open("top_level_runs.txt", "a") as runs:
    runs.write("ran\\n")''',
    inspect.getsource(ClassicVAE),
    '''\
def draw_here():
    return Drawn()


class DrawnInTheNotebook(PictureCallback):
    """A picture whose drawing is a function of this notebook."""

    def prepare(self, trainer, pl_module, latents, epoch):
        return draw_here


class Said(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def fit(folder, pictures):
    """Fit for 2 epochs with `pictures`; print each notice that a picture was skipped."""
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, default_root_dir=folder, callbacks=pictures,
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    said = Said()
    logging.getLogger("lvae").addHandler(said)  # lvae's lines and notices
    try:
        trainer.fit(ClassicVAE(), loader(*toy_digits(64, seed=0)), loader(*toy_digits(45, seed=1)))
    finally:
        logging.getLogger("lvae").removeHandler(said)
    print([line for line in said.lines if "was skipped" in line])''',
    'fit("first", [LatentScatter(), SlowPicture(out="slow", seconds=0.0)])',
    'fit("second", [LatentScatter(), DrawnInTheNotebook()])',
]


@pytest.fixture(scope="module")
def notebook(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[list[str]]]:
    """The notebook run by a real IPython kernel of this Python; its folder, and each fit's skipped pictures."""
    folder = tmp_path_factory.mktemp("notebook")
    jupyter = folder / "jupyter"  # the kernelspec, connection files and IPython's profile: none in the home folder
    spec = jupyter / "kernels" / "lvae-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "lvae test", "language": "python"}))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell) for cell in CELLS])
    with pytest.MonkeyPatch.context() as env:
        env.setenv("JUPYTER_PATH", str(jupyter))
        env.setenv("JUPYTER_RUNTIME_DIR", str(jupyter / "runtime"))
        env.setenv("IPYTHONDIR", str(jupyter / "ipython"))
        client = NotebookClient(nb, timeout=240, kernel_name="lvae-test", resources={"metadata": {"path": str(folder)}})
        client.execute()
    printed = ["".join(out.text for out in cell.outputs if out.get("name") == "stdout") for cell in nb.cells[-2:]]
    return folder, [ast.literal_eval(text.strip().splitlines()[-1]) for text in printed]


def test_a_notebook_gets_every_picture_of_two_fits_in_one_kernel(notebook: tuple[Path, list[list[str]]]) -> None:
    folder, skipped = notebook
    assert skipped[0] == [], skipped[0]
    for fit, name in (("first", "scatter"), ("first", "slow"), ("second", "scatter")):
        assert sorted(p.name for p in (folder / fit / "latents" / name).glob("epoch_*.png")) == EPOCHS, (fit, name)
    assert (folder / "top_level_runs.txt").read_text() == "ran\n"


def test_a_drawing_defined_in_the_notebook_is_refused_with_what_to_do(notebook: tuple[Path, list[list[str]]]) -> None:
    _, skipped = notebook
    assert len(skipped[1]) == 2, skipped[1]  # the notebook's own picture, each epoch; the scatter was drawn
    for epoch, message in enumerate(skipped[1]):
        assert message == (f"lvae: DrawnInTheNotebook: the picture of epoch {epoch} was skipped (the drawing needs "
                           "draw_here, which is defined in __main__ (the script, notebook or `python -c` code being "
                           "run), and the drawing process does not run __main__: move draw_here into a module it can "
                           "import (a .py file on sys.path), or draw in the training loop with background=False); "
                           "training goes on")


def test_a_picture_module_on_a_path_added_after_the_drawing_process_started_is_found(tmp_path: Path,
                                                                                     monkeypatch: pytest.MonkeyPatch):
    # As in a notebook that adds its folder to sys.path once the drawing process runs: each job brings the path.
    drawing = DrawingProcess()
    try:
        drawing.submit(Job("lvae.drawing:import_modules", {"modules": ()})).result(timeout=60)
        (tmp_path / "my_pictures.py").write_text("from lvae.drawing import Drawn\n\n\n"
                                                 "def draw():\n    return Drawn(scalars={'drawn': 1.0})\n")
        monkeypatch.syspath_prepend(str(tmp_path))
        assert drawing.submit(Job("my_pictures:draw")).result(timeout=60).scalars == {"drawn": 1.0}
    finally:
        drawing.close()
