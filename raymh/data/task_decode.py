"""Decode + augment in Ray tasks beside the train worker (`data.transforms_on: tasks`).

The train sets are the same encoded rows in the object store as in `worker` mode (`RowBlocks`), dealt to
the ranks in the same seeded per-epoch order (`RowShard.next_epoch`). Instead of decoding its batches
itself, a rank hands each batch's row positions to a Ray task (`decode_rows`) and keeps `in_flight` of them
running per set, across epoch ends, so decoding runs on other cores while the rank trains, as a DataLoader's
worker processes do, with no Ray Data execution to start or restart (on a few cores the streaming
executor's start-up and its all-to-all shuffles cost seconds per epoch, docs/data.md).

The n-th batch of a domain's set on a rank (counted over epochs) is augmented from its own streams
(`batch_transforms.augment_part`), exactly as the worker mode augments it: a run's augmentations depend on
its seed, rank count and rank, never on which task finished first. The tasks carry a placed domain's label selector, so its rows are decoded on its own nodes.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from raymh.data.batch_transforms import PART_FUNCTIONS, augment_part, part_kwargs
from raymh.data.row_blocks import RowBlocks, RowShard

logger = logging.getLogger(__name__)
SLOW_TASK_S = 120  # a batch takes well under a second; this long means the task is not scheduled


def decode_rows(
    rows: RowBlocks, positions: np.ndarray, part: str, kwargs: Mapping[str, Any], *, seed: int, domain: str,
    rank: int, index: int,
):
    """One batch: the encoded rows at `positions`, decoded and augmented as the index-th batch of `domain`'s
    `part` on `rank` (`augment_part`)."""
    return augment_part(part, rows.take(positions), seed=seed, domain=domain, rank=rank, index=index, **kwargs)


class TaskShard:
    """One rank's batches of one set, decoded by Ray tasks; `iter_epoch` as `RowShard`'s, but decoded.

    part: "labeled" or "unlabeled"; kwargs: its function's crop_size and scale_range; seed: train.seed;
    domain, rank: whose batches (the streams' keys); in_flight: decode tasks kept running for this set; num_cpus: each task's CPUs;
    label_selector: where the tasks may run (a placed domain's nodes), None: anywhere.
    """

    def __init__(
        self,
        shard: RowShard,
        *,
        part: str,
        kwargs: Mapping[str, Any],
        seed: int,
        domain: str,
        rank: int,
        in_flight: int = 2,
        num_cpus: float = 1.0,
        label_selector: Mapping[str, str] | None = None,
    ) -> None:
        if part not in PART_FUNCTIONS:
            raise ValueError(f"part must be one of {sorted(PART_FUNCTIONS)}, got {part!r}")
        if in_flight < 1:
            raise ValueError(f"in_flight must be >= 1, got {in_flight}")
        self.shard, self.part, self.kwargs, self.seed, self.in_flight = shard, part, dict(kwargs), seed, in_flight
        self.domain, self.rank = domain, rank
        self._options = {"num_cpus": num_cpus, "name": f"raymh-decode:{shard.rows.name}"}
        if label_selector:
            self._options["label_selector"] = dict(label_selector)
        self._planned: collections.deque[tuple[int, int, np.ndarray]] = collections.deque()  # (epoch, b, positions)
        self._running: collections.deque[tuple[int, Any]] = collections.deque()  # (epoch, ObjectRef)
        self._batch_size: int | None = None
        self._task = None

    def _submit_more(self) -> None:
        import ray

        if self._task is None:
            self._task = ray.remote(decode_rows).options(**self._options)
        while len(self._running) < self.in_flight:
            if not self._planned:
                epoch, first, batches = self.shard.next_epoch(batch_size=self._batch_size)
                start = epoch * (first + len(batches)) + first  # batches per epoch x epoch + skipped
                self._planned.extend((epoch, start + i, pos) for i, pos in enumerate(batches))
            epoch, n, positions = self._planned.popleft()
            ref = self._task.remote(
                self.shard.rows, positions, self.part, self.kwargs, seed=self.seed, domain=self.domain, rank=self.rank,
                index=n,
            )  # fmt: skip
            self._running.append((epoch, ref))

    def iter_epoch(self, *, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """The next epoch's decoded batches; the next epoch's first tasks start before this one's last ends."""
        import ray

        if self._batch_size not in (None, batch_size):
            raise ValueError(f"{self.shard.rows.name}: batch size changed from {self._batch_size} to {batch_size}")
        self._batch_size = batch_size
        self._submit_more()
        epoch = self._running[0][0]
        while self._running and self._running[0][0] == epoch:
            _, ref = self._running.popleft()
            self._submit_more()  # keep the cores busy while this batch is handed over
            waited = 0
            while not ray.wait([ref], timeout=SLOW_TASK_S)[0]:
                waited += SLOW_TASK_S
                logger.warning(
                    "%s: a decode task has not finished after %d s; it needs %s CPU free beside the train workers "
                    "(scaling.data_cpus): add CPUs, or decode in the worker (data.transforms_on=worker)",
                    self.shard.rows.name, waited, self._options["num_cpus"],
                )
            yield ray.get(ref)


def task_shards(
    *,
    crop_size,
    scale_range,
    unlabeled_scale_range,
    seed: int,
    rank: int,
    in_flight: int = 2,
    num_cpus: float = 1.0,
    selectors: Mapping[str, Mapping[str, str]] | None = None,
):
    """`train_shards`' wrap for data.transforms_on: tasks: (set name, RowShard) -> TaskShard.
    selectors: {domain: node-label selector} of placed domains, whose tasks run on their own nodes."""
    kwargs = part_kwargs(crop_size=crop_size, scale_range=scale_range, unlabeled_scale_range=unlabeled_scale_range)

    def wrap(name: str, shard: RowShard) -> TaskShard:
        domain, part = name.rsplit(".", 1)
        return TaskShard(
            shard, part=part, kwargs=kwargs[part], seed=seed, domain=domain, rank=rank, in_flight=in_flight,
            num_cpus=num_cpus,
            label_selector=(selectors or {}).get(domain),
        )  # fmt: skip

    return wrap
