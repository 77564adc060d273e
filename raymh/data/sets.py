"""The names of a domain's Ray Datasets and the val shard rule, shared by the driver and the workers.

The driver passes each domain's sets to `TorchTrainer(datasets=...)` (worker-mode train sets, `RowBlocks`,
in the train loop's config) under `dataset_name(domain, part)` (`raymh.data.driver_datasets`); each worker
asks for its shard under the same name (`raymh.data.worker_batches`).
"""

from __future__ import annotations

import hashlib

PARTS = ("labeled", "unlabeled", "val")


def dataset_name(domain: str, part: str) -> str:
    """The name a domain's set is passed under to `TorchTrainer(datasets=...)`: f"{domain}.{part}"."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    return f"{domain}.{part}"


def shard_of(sample_id: str, *, world_size: int) -> int:
    """The rank that evaluates a val id: a stable hash (sha256) of the id modulo world_size."""
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") % world_size
