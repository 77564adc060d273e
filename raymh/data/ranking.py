"""The seeded hash order of sample ids: one rule behind the labeled subset (`raymh.data.splits`) and the
val split of datasets without an official one (`raymh.data.adapters.synscapes`).

It depends on nothing else in raymh, so both the adapters and the split rules import it without a cycle.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def rank_key(sample_id: str, *, seed: int) -> str:
    """The sort key of one id under a seed: sha256(f"{seed}:{id}") in hex."""
    return hashlib.sha256(f"{seed}:{sample_id}".encode()).hexdigest()


def rank_ids(ids: Iterable[str], *, seed: int) -> list[str]:
    """Ids in their seeded hash order (ties, which need a sha256 collision, by id)."""
    return sorted(ids, key=lambda i: (rank_key(i, seed=seed), i))
