"""lvae's pictures on a VAE that lvae did not write: a plain LightningModule with only `encode` and `decode`, a plain
`Trainer` and a plain DataLoader of `(x, y)` batches, in one process and in two (gloo)."""

import subprocess
import sys
import warnings
from pathlib import Path

import foreign_vae
import numpy as np
import pytest
import torch
from conftest import REPO, LvaeLines, cli_env

PICTURES = ("scatter", "tsne", "prior_samples", "uncertainty", "traversals", "interpolations", "reconstructions")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """foreign_vae's fit and predict in two processes (gloo), started as a script, and meanwhile in this one."""
    out = {devices: tmp_path_factory.mktemp(f"foreign{devices}") for devices in (1, 2)}
    two = subprocess.Popen([sys.executable, str(REPO / "tests" / "foreign_vae.py"), str(out[2]), "2"], cwd=out[2],
                           env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        with pytest.MonkeyPatch.context() as env, LvaeLines() as lines, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            env.chdir(out[1])
            foreign_vae.main(out[1], 1)
        said = [*lines, *(str(w.message) for w in caught)]  # what a terminal would show of this process
        assert not any("was skipped" in line for line in said), said
    finally:
        try:
            stderr = two.communicate(timeout=300)[1]
        except subprocess.TimeoutExpired:
            two.kill()  # no gloo job outlives the test
            raise
    assert two.returncode == 0, stderr[-4000:]
    assert "was skipped" not in stderr, stderr[-4000:]
    return out


@pytest.mark.parametrize("devices", [1, 2])
def test_every_picture_is_drawn_each_epoch_for_a_module_lvae_did_not_write(runs: dict[int, Path], devices: int):
    latents = runs[devices] / "latents"
    for name in PICTURES:
        assert sorted(p.name for p in (latents / name).glob("epoch_*.png")) == ["epoch_000.png", "epoch_001.png"], name


def test_the_followed_inputs_are_the_same_in_one_and_two_processes(runs: dict[int, Path]) -> None:
    for epoch in (0, 1):
        one, two = (torch.load(runs[d] / f"followed_{epoch}.pt") for d in (1, 2))
        assert one["index"].tolist() == list(range(45))  # every validation input once, in order
        assert torch.equal(one["index"], two["index"])
    assert one["mu"].shape == (45, 3)  # Z read from the means: the module has no hparams.latent_dim


def test_the_shown_inputs_are_the_same_in_one_and_two_processes(runs: dict[int, Path]) -> None:
    one, two = (torch.load(runs[d] / "shown.pt") for d in (1, 2))
    assert one.keys() == {"LatentTraversal", "LatentInterpolation", "Reconstructions"}
    for name, state in one.items():
        assert len(state["inputs"]["index"]) == state["inputs"]["n"], name  # 45 inputs: every one found
        assert torch.equal(state["inputs"]["index"], two[name]["inputs"]["index"]), name
    assert torch.equal(one["Reconstructions"]["eps"], two["Reconstructions"]["eps"])  # the same seeded draw


@pytest.mark.parametrize("devices", [1, 2])
def test_predict_exports_a_foreign_modules_latents_in_order(runs: dict[int, Path], devices: int) -> None:
    exported = np.load(runs[devices] / "latents.npz")
    assert exported["index"].tolist() == list(range(45))  # complete and ordered, also from 2 uneven shares
    direct = torch.load(runs[devices] / "direct_mu.pt").numpy()
    np.testing.assert_allclose(exported["mu"], direct, rtol=1e-5, atol=1e-5)


def test_the_readmes_example_vae_gets_every_picture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's complete Python example, as a user copies it, on toy digits instead of downloaded MNIST."""
    import importlib

    import lightning as L
    from foreign_vae import loader, toy_digits
    from lightning.pytorch.loggers import CSVLogger

    readme = (REPO / "README.md").read_text()
    example = readme.split("lvae's pictures on any VAE", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "readme_example.py").write_text(example)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("readme_example")  # not __main__: the MNIST download is not run
    from lvae import callbacks

    pictures = [getattr(callbacks, name)() for name in module.__dict__ if name in callbacks.__all__]
    assert len(pictures) == 7  # the example imports every picture callback
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=CSVLogger(tmp_path, name="", version=""),
                        callbacks=pictures, enable_progress_bar=False, enable_checkpointing=False)
    trainer.fit(module.ClassicVAE(latent_dim=4), loader(*toy_digits(256, seed=0)), loader(*toy_digits(120, seed=1)))
    drawn = {p.parent.name for p in (tmp_path / "latents").glob("*/epoch_001.png")}
    assert drawn == set(PICTURES)
