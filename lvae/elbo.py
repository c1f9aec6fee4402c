"""The per-input negative ELBO that the uncertainty pictures read, computed for the followed inputs only."""

from typing import Any

import torch
from torch import Tensor


def add_neg_elbo(model: Any, rows: dict[str, Tensor], chunk: int = 1024) -> dict[str, Tensor]:
    """`rows` of the followed inputs (CPU) with their negative ELBO added, by `model`'s `neg_elbo` (lvae's `VAE`).

    Computed for the followed subset only, rather than for every validation input in `validation_step`: its
    `elbo_samples` extra decodes per input cost more than the rest of validation together. Draws 1..S of each
    input's `eval_noise` (draw 0 gave val/loss), so the number depends only on the weights and the input, on any
    number of processes."""
    parts = []
    with torch.inference_mode():
        for start in range(0, len(rows["index"]), chunk):
            index = rows["index"][start:start + chunk].to(model.device)
            x = rows["image"][start:start + chunk].to(model.device).float().div(255)  # (B, C, H, W)
            mu = rows["mu"][start:start + chunk].to(model.device)
            logvar = rows["logvar"][start:start + chunk].to(model.device)
            eps = model.eval_noise(index, "val", 1 + model.hparams.elbo_samples)[1:]  # (S, B, Z)
            parts.append(model.neg_elbo(x, mu, logvar, eps).cpu())
    return {**rows, "neg_elbo": torch.cat(parts) if parts else rows["mu"].new_zeros(0)}
