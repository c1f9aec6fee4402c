"""Numbers about a latent space: posterior variance as uncertainty, active units, neighbourhoods, rank correlation."""

import math

import torch
from torch import Tensor
from torchmetrics.functional import spearman_corrcoef

from lvae.latent_maths import kl_to_prior_per_dim


def uncertainty(logvar: Tensor) -> Tensor:
    """u(x): the posterior variance averaged over latent dimensions, (N, Z) -> (N,)."""
    return logvar.exp().mean(dim=1)


ACTIVE_THRESHOLD = 0.01  # Burda et al., 2016: a dimension is active when its mean varies by more than this


def active_dims(mu: Tensor, threshold: float = ACTIVE_THRESHOLD) -> Tensor:
    """Which dimensions are active: their mean varies across inputs by more than `threshold`, (N, Z) -> (Z,)."""
    return mu.var(dim=0) > threshold


def active_units(mu: Tensor, threshold: float = ACTIVE_THRESHOLD) -> int:
    """How many dimensions are active (Burda et al., 2016)."""
    return int(active_dims(mu, threshold).sum())


def kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(q(z_d|x) || N(0, 1)) averaged over inputs, per dimension: (N, Z) -> (Z,), nats."""
    return kl_to_prior_per_dim(mu, logvar).mean(dim=0)


def pixel_mass(images: Tensor) -> Tensor:
    """How much ink each input has: the sum of its pixel intensities in [0, 1], (N, 28, 28) uint8 -> (N,)."""
    return images.flatten(1).float().sum(dim=1) / 255.0


def nearest_neighbours(points: Tensor, k: int, chunk: int = 1024) -> Tensor:
    """Indices (N, k) of each point's k nearest other points (Euclidean), with torch: this runs in the training
    process, which never imports the drawing stack (scikit-learn's search, `lvae.neighbours`, serves the drawing
    process)."""
    if len(points) <= k:
        raise ValueError(f"{len(points)} points have fewer than k={k} neighbours each")
    points = points.float()
    out = []
    for start in range(0, len(points), chunk):  # chunks bound the (chunk, N) distance matrix
        d = torch.cdist(points[start:start + chunk], points)  # (c, N)
        d[torch.arange(len(d)), torch.arange(start, start + len(d))] = float("inf")  # not its own neighbour
        out.append(d.topk(k, dim=1, largest=False).indices)
    return torch.cat(out)


def neighbour_disagreement(points: Tensor, labels: Tensor, k: int = 10) -> Tensor:
    """Per point, the share of its k nearest neighbours whose label differs from its own, (N,) in [0, 1]."""
    return (labels[nearest_neighbours(points, k)] != labels[:, None]).float().mean(dim=1)


def spearman(a: Tensor, b: Tensor) -> float:
    """Spearman rank correlation of two (N,) vectors; NaN where either is constant (undefined, not 0)."""
    if bool((a == a[0]).all()) or bool((b == b[0]).all()):
        return math.nan
    return float(spearman_corrcoef(a.double(), b.double()))


def per_class_mean(values: Tensor, labels: Tensor) -> dict[int, float]:
    """Mean of `values` for each label present."""
    return {int(c): float(values[labels == c].mean()) for c in labels.unique()}
