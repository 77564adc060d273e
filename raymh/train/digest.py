"""The labeled digest: a short hash of the labeled crops and labels rank 0 trained on in a run's first steps.

Runs of one seed that differ only in what they do with unlabeled images (a supervised and a semi-supervised
cell of `raymh reproduce`) draw their labeled batches from the same streams (`raymh.streams`), so their
digests are equal; `raymh report` pairs two runs only when they are. A run resumed before DIGEST_STEPS
records none (it did not see the first batches in this process).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np

LABELED_DIGEST_TAG = "raymh.labeled_digest"
DIGEST_STEPS = 20  # steps hashed: enough to tell runs apart, a few MB of bytes in all


class LabeledDigest:
    """Feed it every step's batch from step 0 on; `add` says when the digest is complete."""

    def __init__(self, steps: int = DIGEST_STEPS) -> None:
        self.steps, self._seen, self.done = steps, 0, False
        self._hashes: dict[str, Any] = {}

    def add(self, step: int, batch: Mapping[str, Mapping[str, Mapping[str, Any]]], *, final: bool = False) -> bool:
        """Hash step `step`'s labeled images and labels of every domain (in name order); True once, when the
        digest is complete (after `steps` steps, or at the run's final step if that comes first)."""
        if self.done:
            return False
        if step != self._seen:
            raise ValueError(f"the labeled digest needs every step from 0 in order; got step {step}, expected {self._seen}")
        for domain in sorted(batch):
            labeled = batch[domain]["labeled"]
            h = self._hashes.setdefault(domain, hashlib.blake2b(domain.encode(), digest_size=8))
            h.update(_bytes(labeled["image"], np.uint8))
            h.update(_bytes(labeled["label"], np.uint8))  # train ids and 255 fit a byte
        self._seen += 1
        self.done = self._seen >= self.steps or final
        return self.done

    def hexdigest(self) -> str:
        """Of every domain's batches together."""
        whole = hashlib.blake2b(digest_size=8)
        for domain in sorted(self._hashes):
            whole.update(domain.encode() + b"\0" + self._hashes[domain].digest())
        return whole.hexdigest()

    def tags(self) -> dict[str, str]:
        """{LABELED_DIGEST_TAG: all domains, f"{LABELED_DIGEST_TAG}.<domain>": each}: a single-domain run
        pairs with a multi-domain run of the same seed on its domain's digest."""
        return {LABELED_DIGEST_TAG: self.hexdigest(), **{f"{LABELED_DIGEST_TAG}.{d}": h.hexdigest() for d, h in self._hashes.items()}}


def _bytes(tensor: Any, dtype) -> bytes:
    array = tensor.detach().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor)
    return np.ascontiguousarray(array.astype(dtype, copy=False)).tobytes()
