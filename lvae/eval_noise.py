"""Evaluation's common random numbers: standard-normal draws that depend only on an input's dataset index and the
stage, so that `val/loss` moves only when the model does, and N processes, whatever batches they form, compute
exactly what one process computes."""

import torch
from torch import Tensor

EVAL_NOISE_BLOCK = 4096
EVAL_NOISE_SEEDS = {"val": 1, "test": 2}


class EvalNoise:
    """Draws (draws, B, Z) for a batch's dataset indices, from seeded tables of EVAL_NOISE_BLOCK indices, each made
    once and cached on the device. Each index has `width` draws: one scores the loss, the rest the negative ELBO."""

    def __init__(self, latent_dim: int, width: int):
        self.latent_dim, self.width = latent_dim, width
        self._tables: dict[tuple[str, int], Tensor] = {}

    def __call__(self, index: Tensor, stage: str, draws: int = 1) -> Tensor:
        blocks = (index // EVAL_NOISE_BLOCK).unique().tolist()  # usually one block per split
        for block in blocks:
            if (stage, block) not in self._tables:
                seed = EVAL_NOISE_SEEDS[stage] * 1_000_003 + block
                noise = torch.randn(EVAL_NOISE_BLOCK, self.width, self.latent_dim,
                                    generator=torch.Generator().manual_seed(seed))
                self._tables[(stage, block)] = noise.to(index.device)
        tables = [self._tables[(stage, b)] for b in blocks]
        table = tables[0] if len(tables) == 1 else torch.cat(tables)  # (blocks * BLOCK, width, Z)
        position = torch.searchsorted(torch.tensor(blocks, device=index.device), index // EVAL_NOISE_BLOCK)
        rows = table[position * EVAL_NOISE_BLOCK + index % EVAL_NOISE_BLOCK]  # (B, width, Z)
        return rows[:, :draws].transpose(0, 1)
