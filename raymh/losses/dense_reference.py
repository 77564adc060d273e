"""The DCLoss spec: the formula of docs/method.md (DCLoss item 5) written straight, dense.

It holds the full n x N similarity matrix, so it serves small cases only: the streamed
`directional_contrastive_loss` is tested against it (value and gradients) and benchmarked beside it.
Training never calls it.
"""

from __future__ import annotations

import torch
from torch import Tensor


def dense_side(
    a: Tensor, partner: Tensor, y: Tensor, mask: Tensor, neg: Tensor, neg_labels: Tensor, t: float
):
    """sum(M l) / max(sum M, eps) for one side, l_i = -log(e^{pos}/(e^{pos} + sum_{yb_j != y_i} e^{neg_ij}))."""
    pos = (a * partner.detach()).sum(1) / t  # (n,)
    sim = a @ neg.detach().T / t  # (n, N)
    other = neg_labels[None, :] != y[:, None]
    sim = sim.masked_fill(~other, float("-inf"))
    lse = torch.logsumexp(torch.cat([pos[:, None], sim], 1), dim=1)
    per_anchor = lse - pos
    m = mask.to(a.dtype)
    return (m * per_anchor).sum() / torch.clamp(m.sum(), min=1e-12)


def dense_dcloss(a1, a2, y1, y2, c1, c2, neg, neg_labels, *, temperature=0.1, gamma=0.75) -> Tensor:
    """L_dc = loss1 + loss2 with M1 = (c2 > gamma) & (c1 < c2) and its mirror, all dense."""
    m1 = (c2 > gamma) & (c1 < c2)
    m2 = (c1 > gamma) & (c2 < c1)
    return dense_side(a1, a2, y1, m1, neg, neg_labels, temperature) + dense_side(
        a2, a1, y2, m2, neg, neg_labels, temperature
    )
