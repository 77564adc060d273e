"""Worker side: the train worker's step batches (`StepBatches`) and its share of each val set (`val_batches`).

Runs inside each Ray Train worker, on the shards `ray.train.get_dataset_shard` hands out for the sets the
driver built (`raymh.data.driver_datasets`), or, for `data.transforms_on: worker`, on its share of the
encoded rows the driver put in the object store (`raymh.data.row_blocks`, through `train_shards`). Every
worker cycles its shard of every domain, so every step sees one labeled batch per domain, and one unlabeled
batch per domain on the steps that forward them (DCLoss on). Validation does not go through Ray: every
rank streams the val split's Parquet files (`raymh.data.val_rows.ValRows`), keeps the ids that hash to it
and decodes only those. (`raymh eval` reads val sets through `val_batches` on the driver, as a world of
one.)
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from raymh.data.batch_transforms import val_batch
from raymh.data.row_blocks import RowBlocks, RowShard
from raymh.data.sets import dataset_name
from raymh.data.val_rows import ValRows


def _default_get_shard() -> Callable[[str], Any]:
    import ray.train

    return ray.train.get_dataset_shard


def _iter_numpy(
    shard: Any, *, batch_size: int, drop_last: bool, prefetch_batches: int, shuffle_buffer: int | None = None
) -> Iterator[dict]:
    """Batches of a RowShard (one epoch), a DataIterator / Dataset (or anything with iter_batches /
    iter_torch_batches)."""
    if hasattr(shard, "iter_epoch"):
        return shard.iter_epoch(batch_size=batch_size)
    if hasattr(shard, "iter_batches"):
        return iter(
            shard.iter_batches(
                batch_size=batch_size,
                batch_format="numpy",
                drop_last=drop_last,
                prefetch_batches=prefetch_batches,
                **({"local_shuffle_buffer_size": shuffle_buffer} if shuffle_buffer else {}),
            )
        )
    if hasattr(shard, "iter_torch_batches"):
        return iter(shard.iter_torch_batches(batch_size=batch_size, drop_last=drop_last))
    raise TypeError(f"a dataset shard needs iter_batches or iter_torch_batches, got {type(shard).__name__}")


def _to_torch(batch: dict[str, Any], *, device, keep_ids: bool) -> dict[str, Any]:
    """numpy -> torch on device; labels as int64; ids (strings) kept as a list only when asked."""
    import torch

    out: dict[str, Any] = {}
    for key, value in batch.items():
        if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
            if keep_ids:
                out[key] = [str(v) for v in value]
            continue
        if isinstance(value, list):  # already a list of str (iter_torch_batches)
            if keep_ids:
                out[key] = value
            continue
        if isinstance(value, np.ndarray) and not value.flags.writeable:
            value = value.copy()  # Ray hands out read-only views; the training step may write in place
        tensor = torch.as_tensor(value)
        if key == "label":
            tensor = tensor.long()
        out[key] = tensor if device is None else tensor.to(device, non_blocking=True)
    return out


class _ShardFeeder:
    """A daemon thread cycling one shard forever into a bounded queue (epochs restart in the background).

    Streaming-split shards start a new epoch only when every rank's shard does; a feeder reaches the end of
    an epoch once its rank has taken all of that epoch's batches, which DDP's lockstep guarantees on every
    rank before any rank can wait on the next epoch, so the barrier cannot deadlock.
    """

    def __init__(
        self,
        shard: Any,
        *,
        name: str,
        batch_size: int,
        depth: int,
        keep_ids: bool,
        raw: bool = False,
        shuffle_buffer: int | None = None,
    ) -> None:
        self.name, self.epochs = name, 0
        self._shard, self._batch_size, self._keep_ids = shard, batch_size, keep_ids
        self._raw, self._shuffle_buffer = raw, shuffle_buffer  # raw: hand numpy batches over as they come
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"raymh-feed-{name}", daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                n = 0
                batches = _iter_numpy(
                    self._shard,
                    batch_size=self._batch_size,
                    drop_last=True,
                    prefetch_batches=1,
                    shuffle_buffer=self._shuffle_buffer,
                )
                try:
                    for batch in batches:
                        n += 1
                        item = batch if self._raw else _to_torch(batch, device=None, keep_ids=self._keep_ids)
                        if not self._put(item):
                            return
                finally:
                    close = getattr(batches, "close", None)
                    if close is not None:
                        close()
                if n == 0:
                    raise RuntimeError(
                        f"the {self.name} shard yields no full batch of {self._batch_size}; build it with "
                        "min_rows >= batch_size * num_workers (build_domain_data) so every shard has a batch"
                    )
                self.epochs += 1
        except BaseException as err:  # handed to the consumer, raised there
            self._put(err)

    def get(self) -> dict[str, Any]:
        while True:
            try:
                item = self._queue.get(timeout=1.0)
                break
            except queue.Empty:
                if not self._thread.is_alive():
                    raise RuntimeError(f"the {self.name} feeder thread stopped") from None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class StepBatches:
    """Worker-side iterator: each step gives {domain: {"labeled": {...}, "unlabeled": {...}}} of torch tensors.

    `next_batch(unlabeled=False)` leaves "unlabeled" out: a step that forwards no crop pair (DCLoss not on
    yet, or lambda 0) reads, decodes and augments none. Every domain's labeled and unlabeled shard is cycled
    forever by a background feeder thread (a new epoch when one is exhausted; drop_last, so shapes are
    fixed), started at the first step that asks for that part, so pipeline start-ups and epoch restarts of
    all sets overlap each other and the training step. Every rank asks for the same parts at the same steps
    (the choice is a function of the step), so with `streaming_split(equal=True)` (what DataConfig uses)
    the ranks start and roll over each set's epochs together, without deadlock (see `_ShardFeeder`); an
    unlabeled set nobody asks for starts no Ray Data execution at all. Labels come as int64.

    transforms: {"labeled": fn, "unlabeled": fn} (`batch_transforms.train_transforms`) when the shards hold
    encoded rows (data.transforms_on: worker): the feeders then only fetch rows and next_batch() decodes
    and augments them here, in the caller's thread, so the work never competes with the training step's
    threads; the n-th batch of a domain's set is augmented as fn(batch, domain=d, index=n), counting from
    first_batches[part] (a resumed run: the batches of each part it took before). Worker-mode shards are `RowShard`s (a seeded
    permutation per epoch, `train_shards`); a plain Dataset shard of encoded rows is shuffled through a
    local buffer of shuffle_buffer rows instead (0 or None: in the set's order).
    """

    def __init__(
        self,
        domains: Sequence[str],
        *,
        labeled_batch_size: int,
        unlabeled_batch_size: int,
        get_shard: Callable[[str], Any] | None = None,
        device: Any = "cpu",
        prefetch_batches: int = 2,
        keep_ids: bool = False,
        transforms: Mapping[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]] | None = None,
        shuffle_buffer: int | None = 64,
        first_batches: Mapping[str, int] | None = None,
    ) -> None:
        if not domains:
            raise ValueError("StepBatches needs at least one domain")
        sizes = {"labeled": labeled_batch_size, "unlabeled": unlabeled_batch_size}
        for part, size in sizes.items():
            if size < 1:
                raise ValueError(f"{part}_batch_size must be >= 1, got {size}")
        self.domains = list(domains)
        self.batch_sizes = sizes
        self._get_shard = get_shard or _default_get_shard()
        self._device = device
        self._depth = prefetch_batches
        self._keep_ids = keep_ids
        if transforms is not None and set(transforms) != {"labeled", "unlabeled"}:
            raise ValueError(f"transforms needs 'labeled' and 'unlabeled' functions, got {sorted(transforms)}")
        self._transforms = transforms
        self._shuffle_buffer = shuffle_buffer
        self._feeders: dict[tuple[str, str], _ShardFeeder] = {}
        first = dict(first_batches or {})
        self._taken = {(d, p): int(first.get(p, 0)) for d in self.domains for p in sizes}  # batch numbers

    def __iter__(self) -> StepBatches:
        return self

    @property
    def epochs(self) -> dict[tuple[str, str], int]:
        """Completed epochs per started (domain, part) (counted by the feeders, which may run ahead)."""
        return {key: feeder.epochs for key, feeder in self._feeders.items()}

    def _feeder(self, domain: str, part: str) -> _ShardFeeder:
        if (domain, part) not in self._feeders:
            name = dataset_name(domain, part)
            shard = self._get_shard(name)
            if shard is None:
                raise KeyError(f"no dataset {name!r} was passed to the trainer (TorchTrainer(datasets=...))")
            self._feeders[(domain, part)] = _ShardFeeder(
                shard,
                name=name,
                batch_size=self.batch_sizes[part],
                depth=self._depth,
                keep_ids=self._keep_ids,
                raw=self._transforms is not None,
                shuffle_buffer=(self._shuffle_buffer or None) if self._transforms is not None else None,
            )
        return self._feeders[(domain, part)]

    def next_batch(self, *, unlabeled: bool = True) -> dict[str, dict[str, dict[str, Any]]]:
        """The next step's batches of every domain; unlabeled=False: labeled batches only."""
        parts = ("labeled", "unlabeled") if unlabeled else ("labeled",)
        for domain in self.domains:  # start every needed feeder before waiting on any
            for part in parts:
                self._feeder(domain, part)
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for domain in self.domains:
            out[domain] = {}
            for part in parts:
                batch = self._feeders[(domain, part)].get()
                if self._transforms is not None:
                    index = self._taken[(domain, part)]
                    batch = self._transforms[part](batch, domain=domain, index=index)
                    batch = _to_torch(batch, device=None, keep_ids=self._keep_ids)
                self._taken[(domain, part)] += 1
                out[domain][part] = {
                    k: v.to(self._device, non_blocking=True) if hasattr(v, "to") else v
                    for k, v in batch.items()
                }
        return out

    def __next__(self) -> dict[str, dict[str, dict[str, Any]]]:
        return self.next_batch()

    def close(self) -> None:
        """Stop the feeder threads (and their shard iterators) before Ray shuts down."""
        for feeder in self._feeders.values():
            feeder.close()
        self._feeders.clear()

    def __del__(self) -> None:
        if getattr(self, "_feeders", None):
            self.close()


def step_images(batch: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> int:
    """Images a step forwards: every labeled image and both crops of every unlabeled pair it holds."""
    return sum(
        parts["labeled"]["image"].shape[0] + (2 * parts["unlabeled"]["image1"].shape[0] if "unlabeled" in parts else 0)
        for parts in batch.values()
    )


def train_shards(
    row_blocks: Mapping[str, RowBlocks] | None,
    *,
    seed: int,
    rank: int,
    world_size: int,
    consumed_batches: Mapping[str, int] | None = None,
    get_shard: Callable[[str], Any] | None = None,
    wrap: Callable[[str, RowShard], Any] | None = None,
) -> Callable[[str], Any]:
    """StepBatches' get_shard in a train worker: this rank's `RowShard` of a set the driver put in the object
    store (data.transforms_on: worker or tasks), else Ray Train's shard of the Dataset. wrap: (set name,
    RowShard) -> the shard StepBatches reads (tasks: a `raymh.data.task_decode.TaskShard`).

    consumed_batches: {"labeled": n, "unlabeled": m}, the batches of each part this rank took before (a
    resumed run at step s: s labeled, and as many unlabeled as steps before s forwarded crop pairs), so a
    resumed run reads the rows an uninterrupted one would have."""
    blocks, consumed = dict(row_blocks or {}), dict(consumed_batches or {})

    def get(name: str) -> Any:
        if name in blocks:
            part = name.rsplit(".", 1)[-1]
            if hasattr(blocks[name], "resolve"):  # a placed domain's SiteRows: its references, from its store
                blocks[name] = blocks[name].resolve()
            shard = blocks[name].shard(
                seed=seed, rank=rank, world_size=world_size, consumed_batches=consumed.get(part, 0)
            )
            return wrap(name, shard) if wrap is not None else shard
        return (get_shard or _default_get_shard())(name)

    return get


def _rows(batch: dict[str, Any]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for sid, image, label in zip(batch["id"], batch["image"], batch["label"], strict=True):
        yield str(sid), np.asarray(image), np.asarray(label)


def val_batches(
    rows: ValRows,
    *,
    rank: int,
    world_size: int,
    batch_size: int = 1,
    device: Any = "cpu",
    size: Sequence[int] | None = None,
    read_rows: int = 16,
) -> Iterator[dict[str, Any]]:
    """This rank's val batches: rows whose shard_of(id) == rank (disjoint and covering over ranks, no padding).

    The rows stream from the val split's Parquet files (`ValRows`), read_rows at a time, and only this rank's
    rows are decoded (here, resized to `size` (H, W) when given), so a rank holds at most one read batch of
    encoded rows and one batch of decoded ones, whatever the val set's size. Yields
    {"id": list[str], "image": (B,3,H,W) uint8, "label": (B,H,W) int64}; a batch holds consecutive
    same-size rows, up to batch_size (the last one may be smaller).
    """
    import torch

    pending: list[tuple[str, np.ndarray, np.ndarray]] = []

    def flush() -> dict[str, Any]:
        ids, images, labels = zip(*pending, strict=True)
        pending.clear()
        return {
            "id": list(ids),
            "image": torch.from_numpy(np.stack(images)).to(device),
            "label": torch.from_numpy(np.stack(labels)).long().to(device),
        }

    for encoded in rows.iter_encoded(rank=rank, world_size=world_size, read_rows=read_rows):
        for row in _rows(val_batch(encoded, size=None if size is None else tuple(size))):
            if pending and (row[1].shape != pending[0][1].shape or len(pending) == batch_size):
                yield flush()
            pending.append(row)
    if pending:
        yield flush()
