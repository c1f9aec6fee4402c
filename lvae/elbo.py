"""The per-input negative ELBO that the uncertainty pictures read, computed for the followed inputs only."""

from dataclasses import replace
from typing import Any

import torch

from lvae.latents import Latents


def add_neg_elbo(model: Any, latents: Latents, chunk: int = 1024) -> Latents:
    """`latents` of the followed inputs (CPU) with their negative ELBO added, by `model`'s `neg_elbo` (lvae's `VAE`)
    with its weights now. Local work, no collective.

    Computed for the followed subset only, rather than for every validation input in `validation_step`: its
    `elbo_samples` extra decodes per input cost more than the rest of validation together. Draws 1..S of each
    input's `eval_noise` (draw 0 gave val/loss), so the number depends only on the weights and the input, on any
    number of processes."""
    parts = []
    with torch.inference_mode():
        for start in range(0, len(latents), chunk):
            index = latents.index[start:start + chunk].to(model.device)
            x = latents.image[start:start + chunk].to(model.device).float().div(255)  # (B, C, H, W)
            mu = latents.mu[start:start + chunk].to(model.device)
            logvar = latents.logvar[start:start + chunk].to(model.device)
            eps = model.eval_noise(index, "val", 1 + model.hparams.elbo_samples)[1:]  # (S, B, Z)
            parts.append(model.neg_elbo(x, mu, logvar, eps).cpu())
    return replace(latents, neg_elbo=torch.cat(parts) if parts else latents.mu.new_zeros(0))
