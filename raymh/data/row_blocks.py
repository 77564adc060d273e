"""Encoded train rows held in the object store, dealt to the train workers in a seeded order every epoch.

Used when `data.transforms_on: worker`: the driver reads a set's rows (`id`, `image`, `label`, still
encoded) from its Parquet files once and puts them in the object store, one Arrow table per file
(`RowBlocks`); each worker reads its share of every epoch straight from those tables (`RowShard`, zero-copy
on the node that holds them) and decodes and augments its rows itself (`raymh.data.worker_batches`).

Epoch `e` of a set is a permutation of all its rows (a labeled set repeated r times: of its r copies),
drawn from the stream (seed, row_order, the set's name, e) (`raymh.streams`); rank k of W reads positions k, k + W, k + 2W, ... of it, the first
floor(M / W) of them, so the shares of an epoch are disjoint, equally long and cover the set but for fewer
than W rows, and depend only on the seed, the rank count, the rank and the epoch (not on timing).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from raymh import streams

COLUMNS = ("id", "image", "label")


@dataclass(eq=False)
class RowBlocks:
    """One set's encoded rows: Arrow tables (or ObjectRefs of them) with their row counts, repeated `repeat`
    times. Pickles small (ObjectRefs), so it travels to the workers in the train loop's config."""

    name: str
    blocks: Sequence[Any]  # pa.Table or ray.ObjectRef of one
    counts: Sequence[int]
    repeat: int = 1
    shuffle: bool = True  # False: every epoch in stored order (tests)
    _tables: dict[int, pa.Table] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.blocks) != len(self.counts) or not self.blocks:
            raise ValueError(f"{self.name}: {len(self.blocks)} blocks with {len(self.counts)} row counts")
        if self.repeat < 1:
            raise ValueError(f"{self.name}: repeat must be >= 1, got {self.repeat}")
        self._starts = np.concatenate([[0], np.cumsum(self.counts)])

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_tables"] = {}  # fetched again where it lands
        return state

    @property
    def num_rows(self) -> int:
        """Rows per epoch (stored rows x repeat)."""
        return int(self._starts[-1]) * self.repeat

    def epoch_share(self, epoch: int, *, seed: int, rank: int, world_size: int) -> np.ndarray:
        """The row positions rank `rank` of `world_size` reads in `epoch`, in reading order."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        m = self.num_rows
        order = (
            streams.generator(seed, "row_order", domain=self.name, index=epoch).permutation(m)
            if self.shuffle
            else np.arange(m)
        )
        return order[rank::world_size][: m // world_size]

    def _table(self, i: int) -> pa.Table:
        if i not in self._tables:
            block = self.blocks[i]
            if not isinstance(block, pa.Table):
                import ray

                block = ray.get(block)  # zero-copy from the node's object store
            self._tables[i] = block
        return self._tables[i]

    def take(self, positions: Sequence[int]) -> dict[str, np.ndarray]:
        """The rows at these positions as a numpy batch {"id", "image", "label"} (bytes objects, None where
        a row has no label or the set was read without labels), the form `raymh.data.batch_transforms` reads."""
        stored = np.asarray(positions, dtype=np.int64) % int(self._starts[-1])
        block = np.searchsorted(self._starts, stored, side="right") - 1
        rows = [self._table(int(b)).slice(int(s - self._starts[b]), 1) for b, s in zip(block, stored, strict=True)]
        table = pa.concat_tables(rows, promote_options="default")
        n = table.num_rows  # a set read without labels (unlabeled rows, label diagnostics off): None labels
        return {c: np.asarray(table[c].to_pylist() if c in table.column_names else [None] * n, dtype=object) for c in COLUMNS}

    def shard(self, *, seed: int, rank: int, world_size: int, consumed_batches: int = 0) -> RowShard:
        """This rank's reader; consumed_batches: batches it already took (a resumed run continues there)."""
        return RowShard(self, seed=seed, rank=rank, world_size=world_size, consumed_batches=consumed_batches)


class RowShard:
    """One rank's view of a `RowBlocks`: `iter_epoch(batch_size)` yields the next epoch's batches each call."""

    def __init__(self, rows: RowBlocks, *, seed: int, rank: int, world_size: int, consumed_batches: int = 0):
        self.rows, self.seed, self.rank, self.world_size = rows, seed, rank, world_size
        self._consumed = consumed_batches
        self._epoch: int | None = None

    def next_epoch(self, *, batch_size: int) -> tuple[int, int, list[np.ndarray]]:
        """(epoch, first, batches): the next epoch's number and the row positions of its full batches
        (drop_last) in this rank's share from batch `first` on (0 but for the first call after a resume,
        which skips the batches already consumed)."""
        share_rows = self.rows.num_rows // self.world_size
        per_epoch = share_rows // batch_size
        if per_epoch == 0:
            raise RuntimeError(
                f"the {self.rows.name} share of rank {self.rank}/{self.world_size} holds {share_rows} rows, less "
                f"than a batch of {batch_size}; build it with min_rows >= batch_size * num_workers"
            )
        skip = 0
        if self._epoch is None:  # first call: continue where `consumed_batches` left off
            self._epoch, skip = divmod(self._consumed, per_epoch)
        epoch, self._epoch = self._epoch, self._epoch + 1
        share = self.rows.epoch_share(epoch, seed=self.seed, rank=self.rank, world_size=self.world_size)
        return epoch, skip, [share[b * batch_size : (b + 1) * batch_size] for b in range(skip, per_epoch)]

    def iter_epoch(self, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """The next epoch's full batches (drop_last) of this rank's share, encoded."""
        _, _, batches = self.next_epoch(batch_size=batch_size)
        for positions in batches:
            yield self.rows.take(positions)


def put_rows(name: str, tables: Sequence[pa.Table], *, repeat: int = 1, shuffle: bool = True) -> RowBlocks:
    """RowBlocks of these tables, each put in the object store once (a repeated set lists them once)."""
    import ray

    kept = [t for t in tables if t.num_rows]
    if not kept:
        raise ValueError(f"{name}: no rows to put")
    return RowBlocks(
        name, [ray.put(t) for t in kept], [t.num_rows for t in kept], repeat=repeat, shuffle=shuffle
    )
