"""Ray Data input pipeline: per-domain labeled / unlabeled / val datasets and the worker-side step iterator.

DESIGN.md section 2 (Ray Data): each domain's sets are read from the prepared Parquet shards, decoded and
augmented in `map_batches` CPU tasks, and (train sets only) split across Ray Train workers by
`DataConfig(datasets_to_split=...)`, i.e. `streaming_split(world_size, equal=True)`. Every worker cycles its
shard of every domain (`StepBatches`), so every step sees one labeled and one unlabeled batch per domain.
Validation is not split: every rank reads it all and keeps the ids that hash to it (`val_batches`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import queue
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymh.data import splits
from raymh.data.transforms import (
    BOX_STRIDE,
    decode_image,
    decode_label,
    overlap_crop_pair,
    scale_crop_flip,
    val_resize,
)

logger = logging.getLogger(__name__)

PARTS = ("labeled", "unlabeled", "val")


def dataset_name(domain: str, part: str) -> str:
    """The name a domain's set is passed under to `TorchTrainer(datasets=...)`: f"{domain}.{part}"."""
    if part not in PARTS:
        raise ValueError(f"part must be one of {PARTS}, got {part!r}")
    return f"{domain}.{part}"


def datasets_to_split(domains: Sequence[str]) -> list[str]:
    """The names for `DataConfig(datasets_to_split=...)`: every labeled and unlabeled set (val is not split)."""
    return [dataset_name(d, p) for d in domains for p in ("labeled", "unlabeled")]


def shard_of(sample_id: str, *, world_size: int) -> int:
    """The rank that evaluates a val id: a stable hash (sha256) of the id modulo world_size."""
    return int.from_bytes(hashlib.sha256(sample_id.encode()).digest()[:8], "big") % world_size


@dataclass
class DomainData:
    """One domain's prepared data: its manifest, split ids and the three Ray Datasets."""

    name: str
    manifest: dict[str, Any]
    num_classes: int
    labeled_ids: list[str]
    unlabeled_ids: list[str]
    labeled: Any  # ray.data.Dataset
    unlabeled: Any
    val: Any
    val_ids: list[str] = field(default_factory=list)

    def datasets(self) -> dict[str, Any]:
        """{dataset_name(domain, part): dataset} for TorchTrainer(datasets=...)."""
        return {dataset_name(self.name, p): getattr(self, p) for p in PARTS}


# ------------------------------------------------------------------------------------ map_batches functions
def _rng() -> np.random.Generator:
    return np.random.default_rng()  # fresh OS entropy per task batch: independent across tasks and epochs


def _ids(batch: dict[str, np.ndarray]) -> list[str]:
    return [str(i) for i in batch["id"]]


def _decode_pair(sample_id: str, image: bytes, label: bytes | None) -> tuple[np.ndarray, np.ndarray]:
    if label is None:
        raise ValueError(f"sample {sample_id!r} has no label but is in a labeled or val set; re-run prepare")
    img, lab = decode_image(image), decode_label(label)
    if img.shape[:2] != lab.shape:
        raise ValueError(f"sample {sample_id!r}: image {img.shape[:2]} and label {lab.shape} sizes differ")
    return img, lab


def _labeled_batch(batch: dict[str, np.ndarray], *, crop_size, scale_range, rng=None) -> dict[str, np.ndarray]:
    """Decode and scale/crop/flip a batch of labeled rows -> image (B,3,h,w), label (B,h,w) uint8."""
    rng, images, labels = rng or _rng(), [], []
    for sid, image, label in zip(_ids(batch), batch["image"], batch["label"], strict=True):
        img, lab = _decode_pair(sid, image, label)
        img, lab = scale_crop_flip(img, lab, rng=rng, crop_size=crop_size, scale_range=scale_range)
        images.append(img)
        labels.append(lab)
    return {
        "id": np.asarray(_ids(batch), dtype=object),
        "image": np.ascontiguousarray(np.stack(images).transpose(0, 3, 1, 2)),
        "label": np.stack(labels),
    }


def _unlabeled_batch(batch: dict[str, np.ndarray], *, crop_size, scale_range, rng=None) -> dict[str, np.ndarray]:
    """Decode and cut an overlapping crop pair per row (DESIGN.md section 1 item 1).

    When every row of the batch carries its true label (the built-in domains label every image), the
    label is cut with the crops as label1/label2, for the pseudo-label accuracy diagnostic only."""
    rng = rng or _rng()
    labels = batch.get("label")
    with_labels = labels is not None and all(lab is not None for lab in labels)
    pairs = [
        overlap_crop_pair(
            decode_image(image), rng=rng, crop_size=crop_size, scale_range=scale_range,
            label=decode_label(labels[i]) if with_labels else None,
        )
        for i, image in enumerate(batch["image"])
    ]  # fmt: skip
    out: dict[str, np.ndarray] = {"id": np.asarray(_ids(batch), dtype=object)}
    for key in ("image1", "image2"):
        out[key] = np.ascontiguousarray(np.stack([p[key] for p in pairs]).transpose(0, 3, 1, 2))
    for key in ("box1", "box2", "valid1", "valid2", *(("label1", "label2") if with_labels else ())):
        out[key] = np.stack([p[key] for p in pairs])
    for key in ("flip1", "flip2"):
        out[key] = np.array([p[key] for p in pairs], dtype=bool)
    return out


def _val_batch(batch: dict[str, np.ndarray], *, size) -> dict[str, Any]:
    """Decode val rows, optionally resized: image (3,H,W), label (H,W) per row (sizes may differ)."""
    images, labels = [], []
    for sid, image, label in zip(_ids(batch), batch["image"], batch["label"], strict=True):
        img, lab = val_resize(*_decode_pair(sid, image, label), size=size)
        images.append(np.ascontiguousarray(img.transpose(2, 0, 1)))
        labels.append(lab)
    return {"id": np.asarray(_ids(batch), dtype=object), "image": images, "label": labels}


def _select_rows(table: pa.Table, *, ids: list[str]) -> pa.Table:
    """Keep the rows whose id is in ids."""
    return table.filter(pc.is_in(table["id"], value_set=pa.array(ids, type=pa.string())))


def _repeat_rows(table: pa.Table, *, repeat: int) -> pa.Table:
    """Every row `repeat` times (small sets fill every shard; UniMatch repeats its labeled list)."""
    return pa.concat_tables([table] * repeat)


# ------------------------------------------------------------------------------------------------ building
def _parquet_files(prepared: Path, split: str) -> list[str]:
    files = sorted(str(p) for p in (prepared / split).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no Parquet shards {prepared / split / 'part-*.parquet'}; run `raymh data prepare` for this domain"
        )
    return files


def _read_manifest(prepared: Path) -> dict[str, Any]:
    path = prepared / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest {path}; is {prepared} a `raymh data prepare` output dir?")
    manifest = json.loads(path.read_text())
    if "num_classes" not in manifest:
        raise ValueError(f"manifest {path} has no 'num_classes'; re-run `raymh data prepare`")
    return manifest


def _scan_ids(files: list[str]) -> tuple[list[str], list[str]]:
    """(all ids, ids with a label) of a split, reading only the id and label columns."""
    table = pq.read_table(files, columns=["id", "label"])
    ids = table["id"].to_pylist()
    has_label = pc.is_valid(table["label"]).to_pylist()
    return ids, [i for i, ok in zip(ids, has_label, strict=True) if ok]


def _check_crop(size: Sequence[int], name: str) -> tuple[int, int]:
    if len(size) != 2 or any(int(s) != s or s <= 0 or s % BOX_STRIDE for s in size):
        raise ValueError(f"{name} must be two positive multiples of {BOX_STRIDE} (h, w), got {size!r}")
    return int(size[0]), int(size[1])


def _cached_rows(files: list[str], ids: list[str], *, columns: list[str], repeat: int):
    """The rows of `ids` from the Parquet files, put in the object store one file at a time, as a Dataset
    whose block list names every block `repeat` times (repeating costs no memory). No Ray Data execution:
    a few Parquet reads here instead of a read/filter/materialize run per set (seconds each on 2 cores)."""
    import ray
    import ray.data

    refs = []
    for path in files:
        table = _select_rows(pq.read_table(path, columns=columns), ids=ids)
        if table.num_rows:
            refs.append(ray.put(table))
    return ray.data.from_arrow_refs(refs * repeat)


def _train_set(
    files, ids, *, columns, fn, fn_kwargs, min_rows, shuffle, map_batch_size, num_cpus, cache_encoded, what,
    transforms_on="ray_data",
):
    """read -> keep ids (repeated up to min_rows) [-> cache] -> shuffle -> small blocks -> decode + augment.

    transforms_on="worker": stop after the (cached, repeated) encoded rows; the train worker decodes and
    augments them itself (`StepBatches(transforms=...)`) and shuffles with a local buffer, so an epoch is a
    read of object-store blocks with no Ray tasks at all.
    """
    import ray.data

    repeat = max(1, math.ceil(min_rows / len(ids)))
    if repeat > 1:
        logger.info(
            "%s: %d rows repeated %d times to reach %d rows per epoch", what, len(ids), repeat, min_rows
        )
    if transforms_on == "worker" and cache_encoded:
        return _cached_rows(files, ids, columns=columns, repeat=repeat)
    ds = (
        ray.data.read_parquet(files)
        .select_columns(columns)
        .map_batches(_select_rows, batch_format="pyarrow", batch_size=None, fn_kwargs={"ids": ids})
    )
    if transforms_on == "worker":
        if repeat > 1:
            ds = ds.map_batches(
                _repeat_rows, batch_format="pyarrow", batch_size=None, fn_kwargs={"repeat": repeat}
            )
        return ds
    if cache_encoded:
        ds = ds.materialize()  # encoded rows held in the object store: epochs skip listing and reading files
    if repeat > 1:
        ds = ds.map_batches(
            _repeat_rows, batch_format="pyarrow", batch_size=None, fn_kwargs={"repeat": repeat}
        )
    if shuffle:
        ds = ds.random_shuffle()  # a new order every epoch (seed None)
    ds = ds.repartition(target_num_rows_per_block=map_batch_size)  # parallel decode even from one file
    return ds.map_batches(fn, batch_size=map_batch_size, fn_kwargs=fn_kwargs, num_cpus=num_cpus)


def train_transforms(
    *,
    crop_size: Sequence[int],
    unlabeled_crop_size: Sequence[int] | None = None,
    scale_range: Sequence[float],
    unlabeled_scale_range: Sequence[float],
    seed: int | None = None,
) -> dict[str, Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]]:
    """{"labeled": fn, "unlabeled": fn}: the decode + augment functions of `build_domain_data`'s train sets,
    for `StepBatches(transforms=...)` when they run in the train worker (data.transforms_on: worker).
    One seeded generator drives both, so a worker's augmentation stream is reproducible from `seed`."""
    crop = _check_crop(crop_size, "crop_size")
    crop_u = _check_crop(unlabeled_crop_size or crop, "unlabeled_crop_size")
    rng = np.random.default_rng(seed)
    return {
        "labeled": functools.partial(_labeled_batch, crop_size=crop, scale_range=tuple(scale_range), rng=rng),
        "unlabeled": functools.partial(
            _unlabeled_batch, crop_size=crop_u, scale_range=tuple(unlabeled_scale_range), rng=rng
        ),
    }


def build_domain_data(
    prepared_dir: str | Path,
    *,
    domain: str,
    labeled_fraction: float = 0.125,
    split_file: str | Path | None = None,
    seed: int = 0,
    crop_size: Sequence[int] = (720, 720),
    unlabeled_crop_size: Sequence[int] | None = None,
    scale_range: Sequence[float] = (0.5, 2.0),
    unlabeled_scale_range: Sequence[float] = (0.8, 2.0),
    val_size: Sequence[int] | None = None,
    min_rows: int = 1,
    num_cpus_per_task: float = 1,
    shuffle: bool = True,
    map_batch_size: int = 16,
    match_unlabeled: bool = True,
    cache_encoded: bool = True,
    materialize_val: bool = True,
    transforms_on: str = "ray_data",
) -> DomainData:
    """One domain's labeled / unlabeled / val Ray Datasets from a prepared dir (DESIGN.md section 2).

    min_rows: the smallest row count of a train set (pass batch_size * num_workers); smaller sets repeat
    their rows so every worker's shard yields at least one full batch. match_unlabeled: also repeat the
    labeled rows up to the unlabeled count (UniMatch), so a labeled epoch is about as long as an unlabeled
    one; each new epoch restarts the Ray Data pipeline (seconds), so short epochs stall training.
    shuffle: a new random row order every epoch (`random_shuffle`); map_batch_size: rows per decode task.
    cache_encoded: read the train split's encoded rows once into the object store (now, at build time),
    so epoch restarts skip listing and reading files (here 1.7 s vs 7.5 s to a first step); costs object
    store memory of the encoded train split, once (Ray spills it to disk when short).
    materialize_val: decode the val split once into the object store (object-store memory of the decoded
    val images; pass val_size or False for very large val sets).
    transforms_on: "ray_data" (train sets yield decoded, augmented batches from Ray Data CPU tasks) or
    "worker" (train sets yield encoded rows, cached after repeating; the train worker decodes and augments
    them with `train_transforms`: no Ray Data tasks while training, the fastest choice on a few cores).
    """
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    prepared = Path(prepared_dir).expanduser()
    manifest = _read_manifest(prepared)
    train_files, val_files = _parquet_files(prepared, "train"), _parquet_files(prepared, "val")
    crop = _check_crop(crop_size, "crop_size")
    crop_u = _check_crop(unlabeled_crop_size or crop, "unlabeled_crop_size")
    if min_rows < 1:
        raise ValueError(f"min_rows must be >= 1 (batch_size * num_workers), got {min_rows}")
    if transforms_on not in ("ray_data", "worker"):
        raise ValueError(f"transforms_on must be 'ray_data' or 'worker', got {transforms_on!r}")

    train_ids, with_label = _scan_ids(train_files)
    val_ids, _ = _scan_ids(val_files)
    if not with_label:
        raise ValueError(f"{prepared / 'train'}: no train row has a label; a labeled set needs some")
    if split_file is not None:
        chosen = splits.read_split_file(split_file, kind=manifest.get("kind"), known_ids=with_label)
        labeled = sorted(set(chosen))
    else:
        labeled = splits.labeled_ids(with_label, fraction=labeled_fraction, seed=seed)
    chosen_set = set(labeled)
    unlabeled = sorted(i for i in train_ids if i not in chosen_set)
    if not unlabeled:
        logger.warning(
            "%s: every train row is labeled (fraction 1.0); using all train rows as unlabeled", domain
        )
        unlabeled = sorted(train_ids)
    if not val_ids:
        raise ValueError(f"{prepared / 'val'}: the val split has no rows")

    common = {
        "cache_encoded": cache_encoded,
        "shuffle": shuffle,
        "map_batch_size": map_batch_size,
        "num_cpus": num_cpus_per_task,
        "transforms_on": transforms_on,
    }
    labeled_ds = _train_set(
        train_files, labeled, columns=["id", "image", "label"], fn=_labeled_batch,
        fn_kwargs={"crop_size": crop, "scale_range": tuple(scale_range)}, what=f"{domain}.labeled",
        min_rows=max(min_rows, len(unlabeled) if match_unlabeled else 0), **common,
    )  # fmt: skip
    unlabeled_ds = _train_set(
        # labels (where rows have them) travel for the pseudo-label diagnostic only
        train_files, unlabeled, columns=["id", "image", "label"], fn=_unlabeled_batch,
        fn_kwargs={"crop_size": crop_u, "scale_range": tuple(unlabeled_scale_range)},
        what=f"{domain}.unlabeled", min_rows=min_rows, **common,
    )  # fmt: skip
    val_ds = (
        ray.data.read_parquet(val_files)
        .select_columns(["id", "image", "label"])
        .repartition(target_num_rows_per_block=map_batch_size)
        .map_batches(
            _val_batch, batch_size=map_batch_size, num_cpus=num_cpus_per_task,
            fn_kwargs={"size": None if val_size is None else tuple(val_size)},
        )
    )  # fmt: skip
    if materialize_val:
        # Decode val once, now: each evaluation then reads blocks from the object store instead of
        # restarting a Ray Data execution per domain (seconds each; most of a short run's eval time).
        val_ds = val_ds.materialize()
    return DomainData(
        name=domain,
        manifest=manifest,
        num_classes=int(manifest["num_classes"]),
        labeled_ids=labeled,
        unlabeled_ids=unlabeled,
        labeled=labeled_ds,
        unlabeled=unlabeled_ds,
        val=val_ds,
        val_ids=sorted(val_ids),
    )


def write_split_lists(run_dir: str | Path, domain_data: DomainData) -> dict[str, Path]:
    """Record the domain's split as `<run_dir>/<domain>/labeled.txt` and `unlabeled.txt`."""
    return splits.write_split_lists(
        Path(run_dir) / domain_data.name, domain_data.labeled_ids, domain_data.unlabeled_ids
    )


# ------------------------------------------------------------------------------------------- worker side
def _default_get_shard() -> Callable[[str], Any]:
    import ray.train

    return ray.train.get_dataset_shard


def _iter_numpy(
    shard: Any, *, batch_size: int, drop_last: bool, prefetch_batches: int, shuffle_buffer: int | None = None
) -> Iterator[dict]:
    """Batches of a DataIterator / Dataset (or anything with iter_batches / iter_torch_batches)."""
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
    """Worker-side iterator: each next() gives {domain: {"labeled": {...}, "unlabeled": {...}}} of torch tensors.

    Every domain's labeled and unlabeled shard is cycled forever by a background feeder thread (a new
    epoch when one is exhausted; drop_last, so shapes are fixed), so pipeline start-ups and epoch restarts
    of all sets overlap each other and the training step. With `streaming_split(equal=True)` (what
    DataConfig uses) every rank's shard has the same row count, hence the same batches per epoch, and the
    ranks' epochs roll over together without deadlock (see `_ShardFeeder`). Labels come as int64.

    transforms: {"labeled": fn, "unlabeled": fn} (`train_transforms`) when the shards hold encoded rows
    (data.transforms_on: worker): the feeders then only fetch rows (shuffled through a local buffer of
    shuffle_buffer rows; 0 or None: in the set's order) and next() decodes and augments them here, in the
    caller's thread, so the work never competes with the training step's threads and follows the
    transforms' seeded generator.
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

    def __iter__(self) -> StepBatches:
        return self

    @property
    def epochs(self) -> dict[tuple[str, str], int]:
        """Completed epochs per (domain, part) (counted by the feeders, which may run ahead)."""
        return {key: feeder.epochs for key, feeder in self._feeders.items()}

    def _start(self) -> None:
        for domain in self.domains:
            for part in ("labeled", "unlabeled"):
                name = dataset_name(domain, part)
                shard = self._get_shard(name)
                if shard is None:
                    raise KeyError(
                        f"no dataset {name!r} was passed to the trainer (TorchTrainer(datasets=...))"
                    )
                self._feeders[(domain, part)] = _ShardFeeder(
                    shard,
                    name=name,
                    batch_size=self.batch_sizes[part],
                    depth=self._depth,
                    keep_ids=self._keep_ids,
                    raw=self._transforms is not None,
                    shuffle_buffer=(self._shuffle_buffer or None) if self._transforms is not None else None,
                )

    def __next__(self) -> dict[str, dict[str, dict[str, Any]]]:
        if not self._feeders:
            self._start()
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for domain in self.domains:
            out[domain] = {}
            for part in ("labeled", "unlabeled"):
                batch = self._feeders[(domain, part)].get()
                if self._transforms is not None:
                    batch = _to_torch(self._transforms[part](batch), device=None, keep_ids=self._keep_ids)
                out[domain][part] = {
                    k: v.to(self._device, non_blocking=True) if hasattr(v, "to") else v
                    for k, v in batch.items()
                }
        return out

    def close(self) -> None:
        """Stop the feeder threads (and their shard iterators) before Ray shuts down."""
        for feeder in self._feeders.values():
            feeder.close()
        self._feeders.clear()

    def __del__(self) -> None:
        if getattr(self, "_feeders", None):
            self.close()


def _rows(batch: dict[str, Any]) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    for sid, image, label in zip(batch["id"], batch["image"], batch["label"], strict=True):
        yield str(sid), np.asarray(image), np.asarray(label)


def val_batches(
    domain: str,
    *,
    rank: int,
    world_size: int,
    batch_size: int = 1,
    get_shard: Callable[[str], Any] | None = None,
    device: Any = "cpu",
) -> Iterator[dict[str, Any]]:
    """This rank's val batches: rows whose shard_of(id) == rank (disjoint and covering over ranks, no padding).

    Yields {"id": list[str], "image": (B,3,H,W) uint8, "label": (B,H,W) int64}; a batch holds consecutive
    same-size rows, up to batch_size (the last one may be smaller).
    """
    import torch

    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    shard = (get_shard or _default_get_shard())(dataset_name(domain, "val"))
    if shard is None:
        raise KeyError(f"no dataset {dataset_name(domain, 'val')!r} was passed to the trainer")
    pending: list[tuple[str, np.ndarray, np.ndarray]] = []

    def flush() -> dict[str, Any]:
        ids, images, labels = zip(*pending, strict=True)
        pending.clear()
        return {
            "id": list(ids),
            "image": torch.from_numpy(np.stack(images)).to(device),
            "label": torch.from_numpy(np.stack(labels)).long().to(device),
        }

    for batch in _iter_numpy(shard, batch_size=max(batch_size, 8), drop_last=False, prefetch_batches=1):
        for row in _rows(batch):
            if shard_of(row[0], world_size=world_size) != rank:
                continue
            if pending and (row[1].shape != pending[0][1].shape or len(pending) == batch_size):
                yield flush()
            pending.append(row)
    if pending:
        yield flush()
