"""Images as the pictures draw them: decoded from latent codes, [0, 1] floats turned into uint8 pixels, and laid out
as the arrays matplotlib and PIL draw."""

from typing import Optional

import lightning as L
import numpy as np
import torch
from torch import Tensor


def to_uint8(images: Tensor) -> Tensor:
    """Images in [0, 1] as uint8 pixels 0-255, the same shape: what is kept and drawn of an input or a decoding."""
    return (images.clamp(0, 1) * 255).round().to(torch.uint8)


def as_pictures(images: Tensor) -> np.ndarray:
    """Images (N, C, H, W) as the arrays matplotlib and PIL draw: (N, H, W) when grey, (N, H, W, 3) in colour."""
    images = images.permute(0, 2, 3, 1)  # (N, H, W, C)
    return (images[..., 0] if images.shape[-1] == 1 else images).numpy()


def pixels(images: Tensor) -> np.ndarray:
    """Images (N, C, H, W) in [0, 1] (decoded) or uint8 (inputs) as uint8 pictures (N, H, W[, 3]) to draw."""
    return as_pictures(images if images.dtype == torch.uint8 else to_uint8(images))


def grid_picture(grid: Tensor, channels: int) -> np.ndarray:
    """A `torchvision.utils.make_grid` result (3, H, W) as one picture: (H, W) for grey inputs (make_grid repeats
    a single channel three times), (H, W, 3) for colour."""
    return grid[0].numpy() if channels == 1 else grid.permute(1, 2, 0).numpy()


def decode_images(pl_module: "L.LightningModule", z: Tensor, image_shape: Optional[tuple[int, ...]]) -> Tensor:
    """`pl_module.decode(z)` for latent codes (B, Z), as images (B, C, H, W) in [0, 1] on the CPU. A decoder may
    return them flattened, (B, C*H*W), as the classic PyTorch example's does; `image_shape` (C, H, W), the inputs'
    shape, restores them."""
    with torch.inference_mode():
        images = pl_module.decode(z.to(device=pl_module.device, dtype=pl_module.dtype)).float().cpu()
    if image_shape is not None:
        return images.reshape(len(z), *image_shape)
    if images.dim() != 4:
        raise ValueError(f"decode returned shape {tuple(images.shape)}, and no validation input was collected to "
                         "give the images' (C, H, W)")
    return images
