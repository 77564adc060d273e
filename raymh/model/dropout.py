"""Dropout whose masks belong to the samples, not to the worker (docs/method.md, "One method on any number
of workers").

`nn.Dropout` draws its masks from the rank's torch stream, so 2 workers with b images each drop other units
than 1 worker with all 2b images. `SampleDropout` is an `nn.Dropout` that, while a training step has set
one key per sample (`sample_keys`), draws each sample's mask from a generator seeded by that sample's key
(`raymh.streams.sample_seed`: the step, the domain, the part of the batch and the sample's index in the
domain's global batch). Whatever worker holds a sample, at whatever place in its batch, the sample gets the
same mask. With no keys set (evaluation, inference, any other caller) it is exactly `nn.Dropout`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["SampleDropout", "sample_keys"]


class SampleDropout(nn.Dropout):
    """nn.Dropout; under `sample_keys`, row i of the k-th row of its inputs gets the mask of keys[k]."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__(p)
        self._keys: list[int] | None = None
        self._used = 0
        self._generators: dict[torch.device, torch.Generator] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._keys is None or not self.training or self.p == 0:
            return super().forward(x)
        keys = self._keys[self._used : self._used + x.shape[0]]
        if len(keys) != x.shape[0]:
            raise RuntimeError(
                f"SampleDropout got {self._used + x.shape[0]} rows so far but {len(self._keys)} sample keys were set"
            )
        self._used += x.shape[0]
        if self.p == 1:
            return x * 0
        gen = self._generators.get(x.device)
        if gen is None:
            gen = self._generators[x.device] = torch.Generator(device=x.device)
        keep = torch.empty(x.shape, dtype=torch.float32, device=x.device)
        for row, key in enumerate(keys):  # fp32 draws whatever x's dtype: fp32 and fp64 models share masks
            gen.manual_seed(key)
            torch.rand(x.shape[1:], generator=gen, device=x.device, out=keep[row])
        return x * (keep >= self.p).to(x.dtype) * (1.0 / (1.0 - self.p))


@contextmanager
def sample_keys(model: nn.Module, keys: Sequence[int]) -> Iterator[None]:
    """Within the block, every SampleDropout of `model` draws the masks of the samples `keys` names, one key
    per row of the images forwarded, in the order the model's forward meets them (all rows of one forward,
    or of several forwards in turn). Refuses a forward that did not use exactly the keys given."""
    layers = [m for m in model.modules() if isinstance(m, SampleDropout)]
    for m in layers:
        m._keys, m._used = [int(k) for k in keys], 0
    try:
        yield
        for m in layers:
            if m.training and m.p > 0 and m._used != len(keys):
                raise RuntimeError(f"SampleDropout used {m._used} of the {len(keys)} sample keys set")
    finally:
        for m in layers:
            m._keys, m._used = None, 0
