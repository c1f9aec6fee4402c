"""The maths of a latent space with the prior N(0, I) and posteriors q(z|x) = N(mu, diag(exp(logvar))), each formula
written once: the KL to the prior, the reparameterised draw, the seeded prior draws, and the 2-D views of the
means and posteriors that the pictures draw."""

from typing import Optional

import numpy as np
import torch
from torch import Tensor


def kl_to_prior_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu_d, exp(logvar_d)) || N(0, 1)) of each input and dimension, (N, Z) -> (N, Z), in nats."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def kl_to_prior(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per input, (N, Z) -> (N,), in nats: the one formula lvae uses."""
    return kl_to_prior_per_dim(mu, logvar).sum(-1)


def reparameterise(mu: Tensor, logvar: Tensor, eps: Tensor) -> Tensor:
    """The draw z = mu + sigma * eps from N(mu, exp(logvar)) for standard-normal `eps`, (..., Z) broadcast against
    mu and logvar (B, Z): differentiable in mu and logvar."""
    return mu + eps * torch.exp(0.5 * logvar)


def prior_draws(n: int, latent_dim: int, seed: int) -> Tensor:
    """n draws z ~ N(0, I), (n, Z), from a generator of their own: the same z for the same seed, whatever the
    training RNG did."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


def pca_2d(mu: Tensor, reference: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, tuple[int, int]]:
    """The means on two principal axes, (N, Z) -> (N, 2); the share of variance each axis explains (2,); the axes
    (2, Z); and which principal components they are (0: PC1).

    `reference` holds the axes (2, Z) of the last drawn epoch: this epoch's two main axes are matched to them by
    order (PC1 and PC2 may swap places when their variances cross) and by sign, so that successive pictures
    neither mirror nor turn. Without one (the first epoch), PC1 is the x axis and each axis is signed so that its
    largest loading is positive, as scikit-learn's ``svd_flip`` does.
    """
    centred = mu.double() - mu.double().mean(dim=0)  # (N, Z)
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)  # vh: (Z, Z), rows are principal axes
    explained = s.pow(2) / s.pow(2).sum().clamp_min(1e-12)  # (Z,)
    order = (0, 1)
    if reference is None:
        axes = vh[:2]  # (2, Z)
        signs = torch.sign(axes.gather(1, axes.abs().argmax(dim=1, keepdim=True)))  # (2, 1)
    else:
        cosines = vh[:2] @ reference.double().T  # (2, 2): PC i against last epoch's axis j
        if cosines[1, 0].abs() + cosines[0, 1].abs() > cosines[0, 0].abs() + cosines[1, 1].abs():
            order = (1, 0)
        axes = vh[list(order)]
        signs = torch.sign((axes * reference.double()).sum(dim=1, keepdim=True))  # (2, 1)
    axes = axes * torch.where(signs == 0, 1.0, signs).to(axes.dtype)
    return (centred @ axes.T).float(), explained[list(order)].float(), axes, order


def ellipses(logvar: Tensor, axes: Tensor) -> np.ndarray:
    """The 1-sigma ellipses of the posteriors N(mu, diag(exp(logvar))) (N, Z) seen along `axes` (2, Z): each
    posterior's covariance projected onto the two axes, as (N, 3) full width, full height and angle in degrees
    of its principal axes (EllipseCollection's terms)."""
    variance = logvar.double().exp()  # (N, Z)
    axes = axes.double()
    xx, yy, xy = variance @ axes[0].pow(2), variance @ axes[1].pow(2), variance @ (axes[0] * axes[1])  # (N,) each
    half = (xx - yy) / 2
    root = torch.sqrt(half.pow(2) + xy.pow(2))
    major, minor = (xx + yy) / 2 + root, ((xx + yy) / 2 - root).clamp_min(0)
    angle = torch.rad2deg(0.5 * torch.atan2(2 * xy, xx - yy))
    return torch.stack([2 * major.sqrt(), 2 * minor.sqrt(), angle], dim=1).numpy()
