"""Directional Contrastive Loss, streamed over the negatives (docs/method.md, DCLoss item 5).

For an anchor a_i with positive p_i = sg(partner_i) and label y_i, against negatives b_j with labels yb_j:

    l_i = -log( e^{<a_i,p_i>/T} / ( e^{<a_i,p_i>/T} + sum_{j: yb_j != y_i} e^{<a_i,b_j>/T} ) )

The n x N similarity matrix is never held: a custom autograd Function streams over chunks of negatives with
an online log-sum-exp (flash-attention style). Per anchor it keeps the running max (shift), the running sum
of e^{s - shift} and, when a gradient is wanted, the running sum of e^{s - shift} b_j (D numbers): with the
log-sum-exp known at the end, the latter divided by the sum IS sum_j W_ij b_j, the softmax-weighted part of
the gradient. So the backward is O(n D) and never recomputes a block: one matmul per block for the logits,
one for the weighted sum, instead of the recompute design's three. Memory O(n x chunk + n D).
Anchors whose direction mask is off are never computed.

Speed tricks (each keeps the result exact):
- anchors and negatives are sorted by label, so the same-label entries of every block are a few
  rectangles zeroed in place instead of a full mask pass;
- one preallocated block buffer, written by `torch.mm(out=)` and exponentiated in place; a ones column
  appended to the negatives makes the sum of the weights fall out of the same GEMM (no reduction pass);
- when the logits are provably bounded (|s_ij| <= |a_i| max |b| / T, small enough that no exponential over-
  or underflows: always true for unit vectors and T >= ~0.015 in fp32), the shift stays 0 for the whole
  stream, so blocks need no shift or max pass; otherwise a true online max re-scales the rows chunk by chunk.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["directional_contrastive_loss", "direction_masks"]

# Block size (anchors x chunk x itemsize) when chunk_size is None. benchmarks/bench_dcloss.py --sweep-chunks at
# the Cityscapes size: on 2 CPU threads chunks of 1k-8k negatives were within 12% (1k best); on an H100 4k-32k
# within 5% (2k 40% slower).
_DEFAULT_BLOCK_BYTES = {"cpu": 16 * 2**20, "cuda": 64 * 2**20}
_EPS = 1e-12


def direction_masks(c1: Tensor, c2: Tensor, *, gamma: float) -> dict[str, Tensor]:
    """Direction masks M1 = (c2 > gamma) & (c1 < c2) and M2 = (c1 > gamma) & (c2 < c1) (docs/method.md, DCLoss item 5)."""
    return {"m1": (c2 > gamma) & (c1 < c2), "m2": (c1 > gamma) & (c2 < c1)}


def directional_contrastive_loss(
    a1: Tensor,
    a2: Tensor,
    y1: Tensor,
    y2: Tensor,
    c1: Tensor,
    c2: Tensor,
    neg: Tensor,
    neg_labels: Tensor,
    *,
    temperature: float = 0.1,
    gamma: float = 0.75,
    chunk_size: int | None = None,
    normalizers: tuple[float, float] | None = None,
) -> Tensor:
    """L_dc = loss1 + loss2, loss_k = sum(M_k l_k) / max(sum M_k, eps) (docs/method.md, DCLoss item 5).

    a1, a2: (n, D) aligned L2-normalised anchors (gradients flow into both); y1, y2: (n,) integer
    pseudo-labels; c1, c2: (n,) confidences; neg: (N, D) negatives (detached here); neg_labels: (N,).
    normalizers: the divisors of loss1 and loss2 (default: this call's sum M1, sum M2); a rank holding a
    slice of the batch passes the counts of all ranks, so the sum of the ranks' results is the batch's loss.
    Computed in fp32 (fp64 if an anchor input is fp64); returns a scalar of that dtype.
    """
    _check_inputs(
        a1=a1, a2=a2, y1=y1, y2=y2, c1=c1, c2=c2, neg=neg, neg_labels=neg_labels, temperature=temperature
    )
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) < 1):
        raise ValueError(f"chunk_size must be a positive int or None, got {chunk_size!r}")
    dtype = torch.float64 if torch.float64 in (a1.dtype, a2.dtype) else torch.float32
    masks = direction_masks(c1.detach(), c2.detach(), gamma=gamma)
    i1 = masks["m1"].nonzero().squeeze(1)
    i2 = masks["m2"].nonzero().squeeze(1)
    m1, m2 = i1.numel(), i2.numel()
    if m1 + m2 == 0:
        # No directional term is on: 0 with a graph whose gradient is exactly zero (never NaN).
        return a1[:0].to(dtype).sum() + a2[:0].to(dtype).sum()
    anchors = torch.cat([a1.to(dtype)[i1], a2.to(dtype)[i2]])
    partners = torch.cat([a2.detach()[i1], a1.detach()[i2]]).to(dtype)
    labels = torch.cat([y1[i1], y2[i2]]).long()
    per_anchor = _StreamedContrastive.apply(
        anchors, partners, labels, neg.detach(), neg_labels.long(), float(temperature), chunk_size
    )
    n1, n2 = (m1, m2) if normalizers is None else (float(normalizers[0]), float(normalizers[1]))
    weights = torch.cat(
        [
            per_anchor.new_full((m1,), 1.0 / max(n1, _EPS)),
            per_anchor.new_full((m2,), 1.0 / max(n2, _EPS)),
        ]
    )
    return (per_anchor * weights).sum()


class _StreamedContrastive(torch.autograd.Function):
    """Per-anchor l_i = lse_i - <a_i,p_i>/T, streamed over label-sorted chunks of negatives."""

    @staticmethod
    def forward(ctx, a, p, y, neg, neg_labels, temperature, chunk_size):  # noqa: D102
        m, dim = a.shape
        want_grad = bool(ctx.needs_input_grad[0])
        order = torch.argsort(y, stable=True)
        a_s = a.detach()[order].mul_(1.0 / temperature)  # rows of s = a_s @ b^T are the logits
        p_s = p[order]
        pos = (a_s * p_s).sum(1)
        neg_order = torch.argsort(neg_labels, stable=True)
        spans = _same_label_spans(y[order], neg_labels[neg_order])
        chunk = _resolve_chunk(chunk_size, m=m, n_neg=neg.shape[0], dtype=a.dtype, device=a.device)
        static = _exp_is_safe(a_s, p_s, neg)
        stream = _ChunkStream(neg, neg_order, spans, m=m, chunk=chunk, dtype=a.dtype)
        # Running state per anchor: the max (shift) and acc = [sum_j e^{s_ij - shift} b_j, sum_j e^{s_ij - shift}]
        # over the positive and the other-label negatives seen so far (the sum is the GEMM's ones column).
        shift = torch.zeros_like(pos) if static else pos.clone()
        e_pos = torch.exp(pos - shift)
        acc = torch.cat([p_s * e_pos[:, None], e_pos[:, None]], 1)
        for blk, nb in stream.blocks(a_s):
            if static:  # logits provably bounded: e^{s} neither overflows nor underflows, shift 0 throughout
                blk.exp_()
                stream.zero_same_label(blk)
            else:  # online max, rows of acc re-scaled when it grows
                stream.fill_same_label(blk, -math.inf)
                new_shift = torch.maximum(shift, blk.amax(1))
                acc.mul_(torch.exp(shift - new_shift)[:, None])
                blk.sub_(new_shift[:, None]).exp_()
                shift = new_shift
            if want_grad:
                acc.addmm_(blk, nb)
            else:
                acc[:, dim] += blk.sum(1)
        total = acc[:, dim]
        lse = shift + total.log()
        # dl_i/da_i = (sum_j W_ij b_j + w_pos p_i - p_i) / T with W the softmax weights: exact, O(n D) to keep.
        ctx.save_for_backward(acc[:, :dim].div_(total[:, None]).sub_(p_s), order)
        ctx.temperature = temperature
        loss = torch.empty_like(pos)
        loss[order] = lse - pos
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_loss):  # noqa: D102
        direction, order = ctx.saved_tensors
        grad_sorted = direction * (grad_loss[order] / ctx.temperature)[:, None]
        grad_a = torch.empty_like(grad_sorted)
        grad_a[order] = grad_sorted
        return grad_a, None, None, None, None, None, None


class _ChunkStream:
    """Yields anchors x chunk logit blocks (one reused buffer) over label-sorted chunks of negatives."""

    def __init__(
        self, neg: Tensor, neg_order: Tensor, spans: list[tuple[int, int, int, int]], *, m, chunk, dtype
    ):
        self.neg, self.neg_order, self.spans, self.chunk = neg, neg_order, spans, chunk
        width = max(1, min(chunk, neg.shape[0]))
        self.buf = torch.empty(m * width, dtype=dtype, device=neg.device)
        # Negatives with a ones column appended: blk @ [b, 1] gives sum_j w_ij b_j and sum_j w_ij in one GEMM.
        self.nbuf = torch.ones(width, neg.shape[1] + 1, dtype=dtype, device=neg.device)
        self.gather = torch.empty(width, neg.shape[1], dtype=neg.dtype, device=neg.device)
        self.c0 = 0

    def blocks(self, a_s: Tensor):
        """Yield (block = a_s @ b_chunk^T, [b_chunk, 1]) for consecutive chunks of sorted negatives."""
        m, (n_neg, dim) = a_s.shape[0], self.neg.shape
        for c0 in range(0, n_neg, self.chunk):
            idx = self.neg_order[c0 : c0 + self.chunk]
            k = idx.numel()
            nb = self.nbuf[:k]
            nb[:, :dim].copy_(torch.index_select(self.neg, 0, idx, out=self.gather[:k]))
            blk = self.buf[: m * k].view(m, k)
            torch.mm(a_s, nb[:, :dim].T, out=blk)
            self.c0 = c0
            yield blk, nb

    def same_label_views(self, blk: Tensor):
        """Yield the views of blk whose negative has the anchor's label (rectangles after sorting)."""
        c0, c1 = self.c0, self.c0 + blk.shape[1]
        for r0, r1, j0, j1 in self.spans:
            lo, hi = max(j0, c0), min(j1, c1)
            if lo < hi:
                yield blk[r0:r1, lo - c0 : hi - c0]

    def fill_same_label(self, blk: Tensor, value: float) -> None:
        """Set the same-label entries of blk to value."""
        for view in self.same_label_views(blk):
            view.fill_(value)

    def zero_same_label(self, blk: Tensor) -> None:
        """Drop same-label negatives from an exponentiated block (the j: yb_j != y_i rule)."""
        for view in self.same_label_views(blk):
            view.zero_()


def _same_label_spans(y_sorted: Tensor, neg_labels_sorted: Tensor) -> list[tuple[int, int, int, int]]:
    """Row range of each anchor label and column range of the same label among sorted negatives."""
    values, counts = torch.unique_consecutive(y_sorted, return_counts=True)
    row_end = counts.cumsum(0)
    col_start = torch.searchsorted(neg_labels_sorted, values, side="left")
    col_end = torch.searchsorted(neg_labels_sorted, values, side="right")
    rows = torch.stack([row_end - counts, row_end, col_start, col_end], 1).tolist()
    return [tuple(r) for r in rows if r[3] > r[2]]


def _exp_is_safe(a_s: Tensor, p_s: Tensor, neg: Tensor) -> bool:
    """Whether |s_ij| <= |a_i| max(|b_j|, |p_i|) / T is small enough that no e^{s} (nor a sum of N+1 of them,
    times |b|) over- or underflows in the compute dtype; then the stream needs no running max."""
    max_exp = 88.0 if a_s.dtype == torch.float32 else 709.0
    b_norm = p_s.norm(dim=1).max()
    if neg.shape[0]:
        b_norm = torch.maximum(b_norm, neg.detach().norm(dim=1).max().to(a_s.dtype))
    bound = float(a_s.norm(dim=1).max() * b_norm)
    return bound + math.log(neg.shape[0] + 1.0) + math.log(max(float(b_norm), 1.0)) <= max_exp - 2.0


def _resolve_chunk(chunk_size: int | None, *, m: int, n_neg: int, dtype: torch.dtype, device) -> int:
    """The chunk of negatives per block: given, or sized so the block is about the default bytes."""
    if chunk_size is not None:
        return max(1, int(chunk_size))
    target = _DEFAULT_BLOCK_BYTES["cuda" if torch.device(device).type == "cuda" else "cpu"]
    itemsize = torch.empty((), dtype=dtype).element_size()
    chunk = max(64, target // max(1, m * itemsize)) // 64 * 64
    return max(1, min(chunk, n_neg))


def _check_inputs(*, a1, a2, y1, y2, c1, c2, neg, neg_labels, temperature) -> None:
    """Raise ValueError/TypeError naming the argument, the expected shape/dtype and what was given."""
    tensors = {
        "a1": a1,
        "a2": a2,
        "y1": y1,
        "y2": y2,
        "c1": c1,
        "c2": c2,
        "neg": neg,
        "neg_labels": neg_labels,
    }
    for name, t in tensors.items():
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if a1.dim() != 2:
        raise ValueError(f"a1 must have shape (n, D), got {tuple(a1.shape)}")
    n, dim = a1.shape
    expected = {
        "a2": (n, dim),
        "y1": (n,),
        "y2": (n,),
        "c1": (n,),
        "c2": (n,),
    }
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} (n={n}, D={dim} from a1), got {tuple(tensors[name].shape)}"
            )
    if neg.dim() != 2 or neg.shape[1] != dim:
        raise ValueError(f"neg must have shape (N, D={dim}) matching a1's D, got {tuple(neg.shape)}")
    if tuple(neg_labels.shape) != (neg.shape[0],):
        raise ValueError(
            f"neg_labels must have shape (N,) = ({neg.shape[0]},) like neg, got {tuple(neg_labels.shape)}"
        )
    for name in ("a1", "a2", "c1", "c2", "neg"):
        if not tensors[name].is_floating_point():
            raise TypeError(
                f"{name} must be a floating tensor (float32/float64/bf16/fp16), got {tensors[name].dtype}"
            )
    for name in ("y1", "y2", "neg_labels"):
        t = tensors[name]
        if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
            raise TypeError(f"{name} must be an integer label tensor (e.g. torch.int64), got {t.dtype}")
    devices = {name: t.device for name, t in tensors.items()}
    if len(set(devices.values())) > 1:
        raise ValueError(
            f"all inputs must be on one device, got {', '.join(f'{k}={v}' for k, v in devices.items())}"
        )
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
