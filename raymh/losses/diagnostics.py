"""Diagnostics of the unsupervised branch: why DCLoss helps or does not (logged, never trained on).

- `pseudo_label_accuracy`: how often the stride-8 pseudo-labels of an unlabeled crop equal its true
  labels (when the data has them: the built-in domains label every image), over all labelled cells and
  over the confident ones (max softmax > gamma, the cells that can be a direction target).
- `similarity_stats`: mean positive similarity <a1_i, a2_i> of the aligned overlap anchors and the mean,
  over anchors, of the hardest negative similarity max_{j: yb_j != y_i} <a_i, b_j>. Positives far above the
  hardest negatives mean the projection separates classes; both near 1 mean the features collapsed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from raymh.conventions import FEATURE_STRIDE as STRIDE
from raymh.conventions import IGNORE_INDEX

__all__ = ["cell_labels", "pseudo_label_accuracy", "similarity_stats"]


def cell_labels(labels: Tensor) -> Tensor:
    """(B, H, W) pixel train ids -> (B, H/8, W/8): the label at the centre pixel of each stride-8 cell
    (the same sampling as the crops' valid masks)."""
    return labels[:, STRIDE // 2 :: STRIDE, STRIDE // 2 :: STRIDE]


@torch.no_grad()
def pseudo_label_accuracy(logits8: Tensor, labels: Tensor, *, gamma: float) -> dict[str, float]:
    """Accuracy of argmax(logits8) against the crop's true labels, in the frame the crop was fed.

    logits8: (B, C, h, w) stride-8 logits; labels: (B, H, W) train ids with H, W = 8h, 8w (255 = ignore or
    padding, not counted). Returns {"acc", "acc_confident", "cells", "confident"}; accuracies are NaN when
    no cell counts."""
    if logits8.dim() != 4 or labels.dim() != 3 or labels.shape[0] != logits8.shape[0]:
        raise ValueError(
            f"logits8 must be (B, C, h, w) and labels (B, H, W) with the same B; got {tuple(logits8.shape)} "
            f"and {tuple(labels.shape)}"
        )
    cells = cell_labels(labels).to(logits8.device).long()
    if cells.shape[-2:] != logits8.shape[-2:]:
        raise ValueError(
            f"labels {tuple(labels.shape)} do not give the logits' {tuple(logits8.shape[-2:])} stride-{STRIDE} "
            "cells; labels must be the crop's pixels (8x the logits' size)"
        )
    conf, pred = logits8.float().softmax(1).max(1)
    counted = cells != IGNORE_INDEX
    confident = counted & (conf > gamma)
    right = pred == cells
    n, k = int(counted.sum()), int(confident.sum())
    return {
        "acc": float(right[counted].float().mean()) if n else float("nan"),
        "acc_confident": float(right[confident].float().mean()) if k else float("nan"),
        "cells": n,
        "confident": k,
    }


@torch.no_grad()
def similarity_stats(
    a1: Tensor, a2: Tensor, y1: Tensor, neg: Tensor, neg_labels: Tensor, *, max_anchors: int = 512
) -> dict[str, float]:
    """Mean positive similarity and mean hardest-negative similarity (crop 1's anchors against all negatives
    of another pseudo-label; at most max_anchors anchors, evenly spaced, so the cost stays small)."""
    n = a1.shape[0]
    if n == 0:
        return {"pos_sim": float("nan"), "hard_neg_sim": float("nan")}
    pos = (a1.float() * a2.float()).sum(1).mean()
    pick = torch.linspace(0, n - 1, min(n, max_anchors), device=a1.device).round().long()
    sims = a1[pick].float() @ neg.float().T
    sims.masked_fill_(y1[pick, None] == neg_labels[None, :], float("-inf"))
    hardest = sims.max(1).values
    hardest = hardest[torch.isfinite(hardest)]
    return {
        "pos_sim": float(pos),
        "hard_neg_sim": float(hardest.mean()) if hardest.numel() else float("nan"),
    }
