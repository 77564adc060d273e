"""The ranks a loss is normalised over: global counts and gathered rows, so a step does not depend on the
worker count (docs/method.md, "One method on any number of workers").

With W workers each holding a slice of the global batch, the Mix Loss of the global batch is the sum over
ranks of each rank's *partial* loss: its own terms divided by the global normaliser (labeled pixels, masked
anchors), with the DCLoss negatives of every rank. DDP averages gradients over ranks, so a rank back-
propagates W times its partial loss (`World.backward_scale`).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["LOCAL", "World"]


class World:
    """Collectives of one training step over `size` ranks (identities for a world of one)."""

    def __init__(self, size: int = 1, group=None):
        if size < 1:
            raise ValueError(f"a world has at least one rank, got size={size}")
        self.size, self.group = size, group

    @property
    def rank(self) -> int:
        """This rank's place in the world (its rank in `group`; rank order is the order of `gather_rows`)."""
        return dist.get_rank(self.group) if self.size > 1 else 0

    @property
    def backward_scale(self) -> float:
        """What a rank multiplies its partial loss by before backward: DDP divides the summed gradient by W."""
        return float(self.size)

    def sum(self, values: Tensor) -> Tensor:
        """The element-wise sum of `values` over ranks (detached; every rank calls it in the same order)."""
        out = values.detach().clone()
        if self.size > 1:
            dist.all_reduce(out, op=dist.ReduceOp.SUM, group=self.group)
        return out

    def gather_rows(self, rows: Tensor) -> Tensor:
        """Every rank's `rows` (n_r, ...) concatenated in rank order (detached); ranks may hold different n_r."""
        rows = rows.detach()
        if self.size == 1:
            return rows
        count = torch.tensor([rows.shape[0]], dtype=torch.int64, device=rows.device)
        counts = [torch.zeros_like(count) for _ in range(self.size)]
        dist.all_gather(counts, count, group=self.group)
        sizes = [int(c) for c in counts]
        padded = rows.new_zeros((max(sizes), *rows.shape[1:]))
        padded[: rows.shape[0]] = rows
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded.contiguous(), group=self.group)
        return torch.cat([part[:n] for part, n in zip(parts, sizes, strict=True)])

    def offsets(self, counts: Tensor) -> tuple[Tensor, Tensor]:
        """(what the ranks before this one hold, what all ranks hold) of each count in `counts` (1-D): where
        this rank's rows start in `gather_rows`' output, and its length. One all-gather (none for one rank)."""
        counts = counts.detach().reshape(1, -1)
        every = self.gather_rows(counts)  # (size, k) in rank order
        return every[: self.rank].sum(0), every.sum(0)


LOCAL = World()
