"""Supervised cross-entropy of one domain's head (docs/method.md, "Supervised loss")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from raymh.conventions import IGNORE_INDEX

__all__ = ["cross_entropy"]


def cross_entropy(
    logits: Tensor, labels: Tensor, *, ignore_index: int = IGNORE_INDEX, normalizer: float | None = None
) -> Tensor:
    """Mean pixel cross-entropy over non-ignored labels, logits upsampled bilinearly to the label size, in fp32.

    normalizer: divide the summed pixel losses by this instead of this batch's count of non-ignored pixels
    (a rank holding a slice of the batch passes the count of all ranks; `raymh.losses.world`).

    logits: (B, C, h, w) float; labels: (B, H, W) integer train ids in [0, C) or ignore_index.
    Returns 0 (with a graph and a zero gradient) when every pixel is ignored. fp16/bf16 logits are upcast to
    fp32; fp64 logits stay fp64.
    """
    if not isinstance(logits, Tensor) or logits.dim() != 4 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float tensor of shape (B, C, h, w), got {_describe(logits)}")
    if not isinstance(labels, Tensor) or labels.dim() != 3:
        raise ValueError(f"labels must be an integer tensor of shape (B, H, W), got {_describe(labels)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer train ids (e.g. uint8 or int64), got dtype {labels.dtype}")
    if labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels batch size {labels.shape[0]} (shape {tuple(labels.shape)}) must match logits batch size "
            f"{logits.shape[0]} (shape {tuple(logits.shape)})"
        )
    if labels.device != logits.device:
        raise ValueError(
            f"labels are on {labels.device} but logits on {logits.device}; move them to one device"
        )
    num_classes = logits.shape[1]
    labels = labels.long()
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= num_classes))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(
            f"label value {value} is out of range for C={num_classes} classes (valid: 0..{num_classes - 1} "
            f"or ignore_index={ignore_index}); check the domain's label map or its head's class count"
        )
    logits = logits if logits.dtype == torch.float64 else logits.float()  # fp32 at least (fp64 stays fp64)
    if logits.shape[-2:] != labels.shape[-2:]:
        logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    if not bool((labels != ignore_index).any()):
        return logits.sum() * 0.0
    if normalizer is None:
        return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="mean")
    return F.cross_entropy(logits, labels, ignore_index=ignore_index, reduction="sum") / max(float(normalizer), 1.0)


def _describe(x) -> str:
    """Shape and dtype of a tensor, or the type of anything else, for error messages."""
    return f"shape {tuple(x.shape)} dtype {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
