"""Diagnostics of the unsupervised branch: why DCLoss helps or does not (logged, never trained on).

- `pseudo_label_accuracy`: how often the stride-8 pseudo-labels of an unlabeled crop equal its true
  labels (when the data has them: the built-in domains label every image), over all labelled cells and
  over the confident ones (max softmax > gamma, the cells that can be a direction target).
- `similarity_stats`: mean positive similarity <a1_i, a2_i> of the aligned overlap anchors and the mean,
  over anchors, of the hardest negative similarity max_{j: yb_j != y_i} <a_i, b_j>, where the negatives
  are the loss's own (gathered over the ranks when it gathers them) less the anchor's own cell and its
  partner's. Positives far above the hardest negatives mean the projection separates classes; both near 1
  mean the features collapsed.

In a training step every diagnostic is a ratio of sums added over all ranks (`raymh.train.step`), so W
ranks with b pairs each log what one rank with W x b pairs logs.
"""

from __future__ import annotations

import torch
from torch import Tensor

from raymh.conventions import FEATURE_STRIDE as STRIDE
from raymh.conventions import IGNORE_INDEX

__all__ = [
    "anchor_pick", "cell_labels", "pseudo_label_accuracy", "similarity_means", "similarity_stats", "similarity_sums",
]


def cell_labels(labels: Tensor) -> Tensor:
    """(B, H, W) pixel train ids -> (B, H/8, W/8): the label at the centre pixel of each stride-8 cell
    (the same sampling as the crops' valid masks)."""
    return labels[:, STRIDE // 2 :: STRIDE, STRIDE // 2 :: STRIDE]


@torch.no_grad()
def pseudo_label_accuracy(logits8: Tensor, labels: Tensor, *, gamma: float) -> dict[str, float]:
    """Accuracy of argmax(logits8) against the crop's true labels, in the frame the crop was fed.

    logits8: (B, C, h, w) stride-8 logits; labels: (B, H, W) train ids with H, W = 8h, 8w (255 = ignore or
    padding, not counted). Returns {"acc", "acc_confident", "cells", "confident"}; accuracies are NaN when
    no cell counts; "right" and "right_confident" count the right cells (sums to add over ranks)."""
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
        "right": int(right[counted].sum()),
        "right_confident": int(right[confident].sum()),
        "acc": float(right[counted].float().mean()) if n else float("nan"),
        "acc_confident": float(right[confident].float().mean()) if k else float("nan"),
        "cells": n,
        "confident": k,
    }


def anchor_pick(total: int, max_anchors: int, *, offset: int = 0, count: int | None = None, device=None) -> Tensor:
    """The anchors whose hardest negative is measured: at most max_anchors of all `total` anchors of the
    world, evenly spaced over their global order; returned as indices into this rank's `count` anchors,
    which are the global anchors offset .. offset + count - 1. Every rank picks from the same global
    spacing, so W ranks together pick exactly the anchors one rank holding the whole batch picks."""
    count = total if count is None else count
    if total == 0 or count == 0 or max_anchors < 1:
        return torch.zeros(0, dtype=torch.long, device=device)
    spots = torch.linspace(0, total - 1, min(total, max_anchors), dtype=torch.float64, device=device).round().long()
    mine = spots[(spots >= offset) & (spots < offset + count)]
    return mine - offset


@torch.no_grad()
def similarity_sums(
    a1: Tensor, a2: Tensor, y1: Tensor, neg: Tensor, neg_labels: Tensor, *, pick: Tensor | None = None,
    exclude: Tensor | None = None,
) -> Tensor:
    """The sums behind `similarity_stats`, to be added over ranks: (4,) float64 tensor [sum_i <a1_i, a2_i>,
    n, sum over the picked anchors of their hardest-negative similarity, how many picked anchors have a
    negative]. pick: indices of the anchors whose hardest negative is measured (default all); exclude:
    (n, k) rows of neg never counted as anchor i's negatives (its own cell, its partner's), whatever their
    pseudo-labels."""
    n = a1.shape[0]
    out = torch.zeros(4, dtype=torch.float64, device=a1.device)
    if n == 0:
        return out
    out[0], out[1] = (a1.double() * a2.double()).sum(), n
    if pick is None:
        pick = torch.arange(n, device=a1.device)
    if pick.numel() == 0 or neg.shape[0] == 0:
        return out
    dtype = torch.float64 if a1.dtype == torch.float64 else torch.float32
    sims = a1[pick].to(dtype) @ neg.to(dtype).T
    sims.masked_fill_(y1[pick, None] == neg_labels[None, :], float("-inf"))
    if exclude is not None:
        sims.scatter_(1, exclude[pick].long(), float("-inf"))
    hardest = sims.max(1).values
    hardest = hardest[torch.isfinite(hardest)]
    out[2], out[3] = hardest.double().sum(), hardest.numel()
    return out


def similarity_means(sums: Tensor) -> dict[str, float]:
    """{"pos_sim", "hard_neg_sim"} from `similarity_sums` (summed over ranks); NaN where nothing counted."""
    pos, n, hard, k = (float(v) for v in sums)
    return {"pos_sim": pos / n if n else float("nan"), "hard_neg_sim": hard / k if k else float("nan")}


@torch.no_grad()
def similarity_stats(
    a1: Tensor, a2: Tensor, y1: Tensor, neg: Tensor, neg_labels: Tensor, *, max_anchors: int = 512,
    exclude: Tensor | None = None,
) -> dict[str, float]:
    """Mean positive similarity and mean hardest-negative similarity (crop 1's anchors against all negatives
    of another pseudo-label, never against the rows in `exclude`, e.g. the anchor's own cell and its
    partner's, `overlap_anchors`' i1 and i2; at most max_anchors anchors, evenly spaced, so the cost stays
    small), on one rank."""
    pick = anchor_pick(a1.shape[0], max_anchors, device=a1.device)
    return similarity_means(similarity_sums(a1, a2, y1, neg, neg_labels, pick=pick, exclude=exclude))
