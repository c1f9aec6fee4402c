"""Two pictures of one class in one trainer, each with its own arguments, keep their own state in the checkpoint and
each gets its own back on resume; a checkpoint written before the pictures had keys of their own (the state under
the class name) still resumes with it; and the callbacks a trainer can hold only once are refused twice."""

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from foreign_vae import ClassicVAE, loader, toy_digits
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from torch import Tensor

from lvae.callbacks import (LatentExplorer, LatentInterpolation, LatentScatter, LatentTraversal, LatentUncertainty,
                            PriorSamples, Reconstructions, TSNEEmbedding)
from lvae.resume import RandomState, WandbHistory

EVERY_EPOCH = {"background": False, "skip_when_busy": False}  # in the training loop: every epoch drawn, quickly


def pairs() -> list[Callback]:
    """Two of each picture whose state depends on its arguments, told apart by them."""
    return [PriorSamples(n_samples=4, seed=0, **EVERY_EPOCH), PriorSamples(n_samples=4, seed=1, **EVERY_EPOCH),
            Reconstructions(n_inputs=4, seed=0, **EVERY_EPOCH), Reconstructions(n_inputs=6, seed=1, **EVERY_EPOCH),
            LatentInterpolation(n_pairs=2, steps=3, seed=0, **EVERY_EPOCH),
            LatentInterpolation(n_pairs=3, steps=3, seed=1, **EVERY_EPOCH),
            LatentTraversal(n_inputs=1, steps=3, max_dims=2, seed=0, **EVERY_EPOCH),
            LatentTraversal(n_inputs=2, steps=3, max_dims=2, seed=1, **EVERY_EPOCH),
            LatentScatter(thumbnails=0, table_rows=0, **EVERY_EPOCH),
            LatentScatter(dims=(0, 1), thumbnails=0, table_rows=0, **EVERY_EPOCH),
            TSNEEmbedding(perplexity=3.0, n_prior=4, **EVERY_EPOCH),
            TSNEEmbedding(perplexity=5.0, n_prior=4, **EVERY_EPOCH)]


class StateAtFitStart(Callback):
    """What each other callback holds when fit starts, after Lightning restored the checkpoint: its `state_dict`."""

    def __init__(self) -> None:
        self.states: dict[str, dict[str, Any]] = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.states = {c.state_key: c.state_dict() for c in trainer.callbacks if c is not self}


def fit(callbacks: list[Callback], root: Path, max_epochs: int, ckpt_path: Path | None = None) -> L.Trainer:
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=max_epochs, limit_train_batches=2, accelerator="cpu",
                        logger=CSVLogger(root, name="", version=""), callbacks=callbacks, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False)
    trainer.fit(ClassicVAE(), loader(*toy_digits(64, seed=0)), loader(*toy_digits(45, seed=1)), ckpt_path=ckpt_path)
    return trainer


def same(a: Any, b: Any) -> bool:
    """Whether two callback states hold the same values (tensors, arrays, dicts, lists and plain values)."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(map(same, a, b))
    if isinstance(a, Tensor):
        return isinstance(b, Tensor) and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and np.array_equal(a, b)
    return a == b


@pytest.fixture(scope="module")
def first(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Epochs 0 and 1 with two of each picture, and the checkpoint written at their end."""
    root = tmp_path_factory.mktemp("pairs")
    callbacks = pairs()
    trainer = fit(callbacks, root, max_epochs=2)
    trainer.save_checkpoint(root / "end.ckpt", weights_only=False)
    return {"callbacks": callbacks, "checkpoint": torch.load(root / "end.ckpt", weights_only=True),
            "path": root / "end.ckpt"}


def test_the_checkpoint_holds_one_state_per_picture(first: dict[str, Any]) -> None:
    keys = [c.state_key for c in first["callbacks"]]
    assert len(set(keys)) == len(keys) == 12
    saved = first["checkpoint"]["callbacks"]
    assert set(keys) <= saved.keys()
    assert "PriorSamples{'n_samples': 4, 'seed': 1}" in saved  # the class and the arguments that tell two apart
    for a, b in zip(first["callbacks"][0::2], first["callbacks"][1::2]):  # each pair holds two different states
        assert not same(saved[a.state_key], saved[b.state_key]), type(a).__name__
    prior_0, prior_1 = (saved[c.state_key]["z"] for c in first["callbacks"][:2])
    assert not torch.equal(prior_0, prior_1)  # each keeps the draws of its own seed
    for callback in first["callbacks"][2:8]:  # the inputs each picture showed, as many as it asked for
        assert torch.equal(saved[callback.state_key]["inputs"]["index"], callback.inputs.index)
        assert len(callback.inputs.index) == callback.inputs.n


def test_two_of_each_picture_resume_each_with_its_own_state(first: dict[str, Any], tmp_path: Path) -> None:
    checkpoint = torch.load(first["path"], weights_only=True)
    # Draws and inputs of their own, not what the seeds would give again: each picture must show the checkpoint's.
    for i, callback in enumerate(first["callbacks"][:2]):
        state = checkpoint["callbacks"][callback.state_key]
        state["z"] = torch.full_like(state["z"], float(i + 10))
    for callback in first["callbacks"][2:8]:
        checkpoint["callbacks"][callback.state_key]["inputs"]["index"] = callback.inputs.index.flip(0)
    torch.save(checkpoint, tmp_path / "own.ckpt")

    probe, callbacks = StateAtFitStart(), pairs()
    trainer = fit([*callbacks, probe], tmp_path, max_epochs=3, ckpt_path=tmp_path / "own.ckpt")
    for callback in callbacks:  # restored: what each held at the start of the resumed fit is its own saved state
        assert same(probe.states[callback.state_key], checkpoint["callbacks"][callback.state_key]), \
            callback.state_key
    for i, prior in enumerate(callbacks[:2]):  # and kept through the resumed epoch
        assert torch.equal(prior.z, torch.full((4, 3), float(i + 10)))
    for callback, before in zip(callbacks[2:8], first["callbacks"][2:8]):
        assert torch.equal(callback.inputs.index, before.inputs.index.flip(0)), callback.state_key
    for callback in callbacks:  # the pictures continue: the resumed epoch follows the two drawn before
        assert callback.state_dict()["drawn_epochs"] == [0, 1, 2], callback.state_key
        picture = Path(trainer.log_dir) / "latents" / callback.names[0] / "epoch_002.png"
        assert picture.is_file(), callback.state_key


def test_a_checkpoint_from_before_the_keys_resumes_with_each_pictures_state(first: dict[str, Any],
                                                                            tmp_path: Path) -> None:
    # The old form: one picture of each class, its state under the class name.
    new = torch.load(first["path"], weights_only=True)
    old = {**new, "callbacks": {type(c).__qualname__: new["callbacks"][c.state_key] for c in first["callbacks"][0::2]}}
    torch.save(old, tmp_path / "old.ckpt")

    probe, callbacks = StateAtFitStart(), pairs()[0::2]
    fit([*callbacks, probe], tmp_path, max_epochs=3, ckpt_path=tmp_path / "old.ckpt")
    for callback in callbacks:
        assert same(probe.states[callback.state_key], old["callbacks"][type(callback).__qualname__]), \
            type(callback).__name__
        assert callback.state_dict()["drawn_epochs"] == [0, 1, 2], type(callback).__name__
    assert torch.equal(callbacks[0].z, old["callbacks"]["PriorSamples"]["z"])


@pytest.mark.parametrize("make", [LatentUncertainty, LatentExplorer, RandomState, WandbHistory])
def test_a_callback_a_trainer_holds_once_is_refused_twice(make: type[Callback]) -> None:
    # Each keeps its state under its class name: a second would overwrite the first's in the checkpoint.
    with pytest.raises(RuntimeError, match=f"more than one stateful callback of type `{make.__name__}`"):
        L.Trainer(callbacks=[make(), make()], logger=False)


def test_lvaes_model_hands_an_old_checkpoints_states_to_their_callbacks_without_lightnings_warning(
        mnist_root: Path, tmp_path: Path) -> None:
    import warnings

    from lvae import VAE, MNISTDataModule

    def run(callback: Callback, max_epochs: int, ckpt_path: Path | None = None) -> L.Trainer:
        trainer = L.Trainer(max_epochs=max_epochs, limit_train_batches=2, accelerator="cpu", logger=False,
                            callbacks=[callback], enable_progress_bar=False, enable_model_summary=False,
                            enable_checkpointing=False, default_root_dir=tmp_path)
        trainer.fit(VAE(latent_dim=4, hidden_dim=16), MNISTDataModule(data_dir=str(mnist_root), batch_size=64),
                    ckpt_path=ckpt_path)
        return trainer

    prior = PriorSamples(n_samples=4, seed=0, **EVERY_EPOCH)
    run(prior, 1).save_checkpoint(tmp_path / "new.ckpt")
    new = torch.load(tmp_path / "new.ckpt", weights_only=True)
    torch.save({**new, "callbacks": {"PriorSamples": new["callbacks"][prior.state_key]}}, tmp_path / "old.ckpt")
    resumed = PriorSamples(n_samples=4, seed=0, **EVERY_EPOCH)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run(resumed, 2, tmp_path / "old.ckpt")
    # Lightning would say "Please add the following callbacks: ['PriorSamples']" of the run's own picture.
    assert not [str(w.message) for w in caught if "Please add the following callbacks" in str(w.message)]
    assert torch.equal(resumed.z, prior.z) and resumed.state_dict()["drawn_epochs"] == [0, 1]
