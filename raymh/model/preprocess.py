"""Input normalisation for the ImageNet-pretrained trunk (docs/method.md: images go in ImageNet-normalised)."""

from __future__ import annotations

import torch

IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def normalize_uint8(x: torch.Tensor, *, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Map uint8 images (..., 3, H, W) in [0, 255] to ImageNet-normalised floats: (x / 255 - mean) / std."""
    if x.dtype != torch.uint8:
        raise TypeError(
            f"normalize_uint8 expects a uint8 tensor, got dtype {x.dtype}; pass the raw decoded images"
        )
    if x.ndim < 3 or x.shape[-3] != 3:
        raise ValueError(
            f"normalize_uint8 expects images shaped (..., 3, H, W) (channels first), got shape {tuple(x.shape)}"
        )
    mean = torch.tensor(IMAGENET_MEAN, dtype=dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=dtype, device=x.device).view(3, 1, 1)
    return (x.to(dtype) / 255.0 - mean) / std
