"""lvae's built-in encoder and decoder pairs, and the contract a network of your own follows.

An encoder is built as ``encoder(latent_dim, image_shape, **init_args)`` and maps images ``(B, C, H, W)`` in [0, 1]
to ``(mu, logvar)``, each ``(B, Z)``. A decoder is built as ``decoder(latent_dim, image_shape, **init_args)`` and
maps ``z (B, Z)`` to logits ``(B, C, H, W)`` (the likelihood turns them into the image's mean). `image_shape` is
``(C, H, W)``, taken from the data. In a config they are named by ``class_path`` with ``init_args``, the way
LightningCLI takes optimizers.
"""

import functools
import importlib
import math
from typing import Any, Callable, Optional, Union

from torch import Tensor, nn

from lvae.errors import ConfigError

ImageShape = tuple[int, int, int]  # (C, H, W)
# A network is built as factory(latent_dim, image_shape, **init_args): in a config, a class_path and its init_args.
NetworkFactory = Callable[[int, tuple[int, int, int]], nn.Module]


def describe_network(factory: Union[None, dict, NetworkFactory]) -> Optional[dict[str, Any]]:
    """A network factory as plain values, ``{"class_path": ..., "init_args": {...}}``, as a config names it: what
    a checkpoint's hyperparameters hold (they load as tensors and plain values only)."""
    if factory is None or isinstance(factory, dict):
        return factory
    init_args: dict[str, Any] = {}
    if isinstance(factory, functools.partial):  # a class with its init_args, as jsonargparse or the user binds it
        init_args = dict(factory.keywords)
        factory = next((f for f in (factory.func, *factory.args) if isinstance(f, type)), factory.func)
    return {"class_path": f"{factory.__module__}.{factory.__qualname__}", "init_args": init_args}


def network_factory(described: Union[dict, NetworkFactory]) -> NetworkFactory:
    """The factory a description (`describe_network`) names; a factory is taken as it is."""
    if not isinstance(described, dict):
        return described
    module, _, name = described["class_path"].rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"class_path {described['class_path']!r} cannot be imported ({err}); make sure its module "
                          "is on PYTHONPATH") from None
    return functools.partial(cls, **described.get("init_args", {}))


class MLPEncoder(nn.Module):
    """pixels-hidden-(mu, logvar): 784-400-Z on MNIST, as in the classic PyTorch VAE example."""

    def __init__(self, latent_dim: int, image_shape: ImageShape, hidden_dim: int = 400):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(image_shape), hidden_dim), nn.ReLU())
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)  # (B, hidden)
        return self.mu(h), self.logvar(h)  # (B, Z) each


class MLPDecoder(nn.Module):
    """latent-hidden-pixels logits, shaped as the images."""

    def __init__(self, latent_dim: int, image_shape: ImageShape, hidden_dim: int = 400):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
                                 nn.Linear(hidden_dim, math.prod(image_shape)), nn.Unflatten(1, tuple(image_shape)))

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (B, C, H, W) logits


def _quarter(image_shape: ImageShape, network: str) -> tuple[int, int]:
    """The feature map's size after two stride-2 convolutions; refuses sizes they cannot halve twice."""
    _, height, width = image_shape
    if height % 4 or width % 4:
        raise ConfigError(f"{network} takes images whose height and width are divisible by 4 (two stride-2 "
                          f"convolutions), not {height}x{width}: resize them (e.g. --data.image_size "
                          f"{4 * max(1, round(height / 4))}) or use --model.architecture mlp")
    return height // 4, width // 4


class ConvEncoder(nn.Module):
    """Two stride-2 convolutions (H -> H/2 -> H/4, e.g. 28 -> 14 -> 7) then a hidden layer and the two heads. Takes
    any image whose height and width are divisible by 4."""

    def __init__(self, latent_dim: int, image_shape: ImageShape, hidden_dim: int = 400):
        super().__init__()
        h, w = _quarter(image_shape, "ConvEncoder")
        self.body = nn.Sequential(
            nn.Conv2d(image_shape[0], 32, 4, stride=2, padding=1), nn.ReLU(),  # (B, 32, H/2, W/2)
            nn.Conv2d(32, 64, 4, stride=2, padding=1), nn.ReLU(),  # (B, 64, H/4, W/4)
            nn.Flatten(), nn.Linear(64 * h * w, hidden_dim), nn.ReLU(),
        )
        self.mu = nn.Linear(hidden_dim, latent_dim)
        self.logvar = nn.Linear(hidden_dim, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h)


class ConvDecoder(nn.Module):
    """The mirror of ConvEncoder with transposed convolutions (H/4 -> H/2 -> H)."""

    def __init__(self, latent_dim: int, image_shape: ImageShape, hidden_dim: int = 400):
        super().__init__()
        h, w = _quarter(image_shape, "ConvDecoder")
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, 64 * h * w), nn.ReLU(),
            nn.Unflatten(1, (64, h, w)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1), nn.ReLU(),  # (B, 32, H/2, W/2)
            nn.ConvTranspose2d(32, image_shape[0], 4, stride=2, padding=1),  # (B, C, H, W)
        )

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z)  # (B, C, H, W) logits


ARCHITECTURES = {"mlp": (MLPEncoder, MLPDecoder), "conv": (ConvEncoder, ConvDecoder)}
