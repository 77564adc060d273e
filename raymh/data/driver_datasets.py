"""Driver side: each domain's labeled / unlabeled train sets and its val files, built from its prepared Parquet shards.

Runs in the driver process (`raymh train`, `raymh eval`, the benchmarks), before the TorchTrainer starts.
Each domain's sets are read from the prepared Parquet shards; train batches are decoded and augmented in
`map_batches` CPU tasks and split across Ray Train workers by `DataConfig(datasets_to_split=...)`, i.e.
`streaming_split(world_size, equal=True)`; or, with `data.transforms_on: worker`, the train sets are the
encoded rows put in the object store (`raymh.data.row_blocks.RowBlocks`), which every worker reads in a
seeded per-epoch order and decodes and augments itself. Val sets are not Ray Datasets: each evaluating rank
reads the val split's Parquet files itself and decodes only the rows whose id hashes to it
(`raymh.data.val_rows.ValRows`, `raymh.data.worker_batches.val_batches`).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from raymh.data import site_reads, site_store, splits
from raymh.data.batch_transforms import PART_FUNCTIONS, part_kwargs
from raymh.data.row_blocks import RowBlocks, put_rows
from raymh.data.sets import dataset_name
from raymh.data.site_store import SiteRows
from raymh.data.val_rows import ValRows
from raymh.errors import InputError

logger = logging.getLogger(__name__)
TRAIN_PARTS = ("labeled", "unlabeled")


@dataclass
class DomainData:
    """One domain's prepared data: its manifest, split ids and its three sets (Ray Datasets; with
    transforms_on="worker" the labeled and unlabeled sets are `RowBlocks`)."""

    name: str
    manifest: dict[str, Any]
    num_classes: int
    labeled_ids: list[str]
    unlabeled_ids: list[str]
    labeled: Any  # ray.data.Dataset or RowBlocks
    unlabeled: Any
    val: ValRows  # read by each evaluating rank itself, never through Ray
    val_ids: list[str] = field(default_factory=list)

    def datasets(self) -> dict[str, Any]:
        """{dataset_name(domain, part): Ray Dataset} for TorchTrainer(datasets=...) (RowBlocks left out)."""
        return {dataset_name(self.name, p): s for p in TRAIN_PARTS if not isinstance(s := getattr(self, p), ROWS)}

    def set_records(self) -> list[dict[str, Any]]:
        """What the run trains and scores on, per set (labeled, unlabeled, val): {name, context, digest, source,
        rows}; the digest hashes the prepared data's content hash, the set and its sorted ids, so two runs
        with equal digests read the same rows (MLflow dataset inputs, `TrackedRun.log_datasets`)."""
        out = []
        for part, ids in (("labeled", self.labeled_ids), ("unlabeled", self.unlabeled_ids), ("val", self.val_ids)):
            h = hashlib.sha256(f"{self.manifest.get('content_hash', '')}\0{part}\0".encode())
            h.update("\n".join(sorted(ids)).encode())
            out.append({
                "name": dataset_name(self.name, part), "context": part, "digest": h.hexdigest()[:16],
                "source": str(self.manifest.get("source_root") or self.name), "rows": len(ids),
            })  # fmt: skip
        return out

    def row_blocks(self) -> dict[str, RowBlocks | SiteRows]:
        """{dataset_name(domain, part): RowBlocks, or a placed domain's SiteRows}: the sets the workers read
        from the object store."""
        return {dataset_name(self.name, p): s for p in TRAIN_PARTS if isinstance(s := getattr(self, p), ROWS)}


ROWS = (RowBlocks, SiteRows)  # train sets the workers read themselves (not Ray Datasets)


def _repeat_rows(table: pa.Table, *, repeat: int) -> pa.Table:
    """Every row `repeat` times (small sets fill every shard; UniMatch repeats its labeled list)."""
    return pa.concat_tables([table] * repeat)


# ------------------------------------------------------------------------------------------------ building
def _cached_rows(
    files: list[str], ids: list[str], *, columns: list[str], repeat: int, name: str, shuffle: bool, store=None,
    selector=None,
):
    """The rows of `ids` from the Parquet files, put in the object store one file at a time, as RowBlocks
    (repeating costs no memory). No Ray Data execution: a few Parquet reads here instead of a
    read/filter/materialize run per set (seconds each on 2 cores). store: a placed domain's (SiteStore actor,
    its name), selector: its label selector; the rows are then read and owned by that actor on the domain's nodes, and this process gets a
    `SiteRows` (counts and the store, no reference to a row; `raymh.data.site_store`)."""
    if store is None:
        return put_rows(name, site_reads.read_tables(files, ids, columns), repeat=repeat, shuffle=shuffle)
    actor, store_name = store
    domain = name.split(".")[0]
    return site_store.read_on_site(actor, store_name, name, files, ids, columns, repeat=repeat, shuffle=shuffle,
                                   selector=selector, domain=domain)  # fmt: skip


def _train_set(
    files, ids, *, columns, fn, fn_kwargs, min_rows, shuffle, map_batch_size, num_cpus, cache_encoded, what,
    transforms_on="ray_data", site=None, store=None,
):
    """read -> keep ids (repeated up to min_rows) [-> cache] -> shuffle -> small blocks -> decode + augment.

    transforms_on="worker": stop after the encoded rows; cached, they are RowBlocks, which each train worker
    reads in a seeded per-epoch permutation and decodes and augments itself
    (`raymh.data.worker_batches.StepBatches(transforms=...)`), so an epoch is a read of object-store blocks
    with no Ray tasks at all.
    """
    import ray.data

    repeat = max(1, math.ceil(min_rows / len(ids)))
    if repeat > 1:
        logger.info(
            "%s: %d rows repeated %d times to reach %d rows per epoch", what, len(ids), repeat, min_rows
        )
    if transforms_on == "tasks" and not cache_encoded:
        raise ValueError(f"{what}: transforms_on='tasks' decodes cached rows; it needs cache_encoded=True")
    if transforms_on in ("worker", "tasks") and cache_encoded:
        return _cached_rows(
            files, ids, columns=columns, repeat=repeat, name=what, shuffle=shuffle, store=store, selector=site
        )
    if site is not None:
        raise ValueError(
            f"{what}: a placed domain's rows are read on its site by a store actor, which needs "
            "transforms_on='worker' or 'tasks' with cache_encoded=True (Ray Data would read in the driver)"
        )
    ds = ray.data.read_parquet(files)
    ds = ds.select_columns(columns).map_batches(
        site_reads.select_rows, batch_format="pyarrow", batch_size=None, fn_kwargs={"ids": ids}
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
    min_rows: int = 1,
    num_cpus_per_task: float = 1,
    shuffle: bool = True,
    map_batch_size: int = 16,
    match_unlabeled: bool = True,
    cache_encoded: bool = True,
    transforms_on: str = "ray_data",
    site: dict[str, str] | None = None,
    unlabeled_labels: bool = True,
) -> DomainData:
    """One domain's labeled / unlabeled train sets and val files from a prepared dir (docs/data.md).

    min_rows: the smallest row count of a train set (pass batch_size * num_workers); smaller sets repeat
    their rows so every worker's shard yields at least one full batch. match_unlabeled: also repeat the
    labeled rows up to the unlabeled count (UniMatch), so a labeled epoch is about as long as an unlabeled
    one; each new epoch restarts the Ray Data pipeline (seconds), so short epochs stall training.
    shuffle: a new random row order every epoch (`random_shuffle`; worker mode: a seeded permutation of the
    rows per epoch, `RowBlocks`); map_batch_size: rows per decode task.
    cache_encoded: read the train split's encoded rows once into the object store (now, at build time),
    so epoch restarts skip listing and reading files (here 1.7 s vs 7.5 s to a first step); costs object
    store memory of the encoded train split, once (Ray spills it to disk when short).
    transforms_on: "ray_data" (train sets yield decoded, augmented batches from Ray Data CPU tasks),
    "worker" (train sets are RowBlocks of encoded rows when cached; the train worker decodes and augments
    them with `batch_transforms.train_transforms`: no Ray Data tasks while training) or "tasks" (the same
    RowBlocks, decoded by plain Ray tasks each worker keeps running, `raymh.data.task_decode`).
    The val set is `ValRows`, the val split's Parquet files: nothing is read, decoded or put in the
    object store here; each evaluating rank streams the files and decodes its own rows only (`val_batches`).
    site: the domain's node-label selector under placement by domain: every read of its files runs on its
    nodes (`raymh.data.site_reads`; Ray Data tasks carry the selector), never in this process.
    unlabeled_labels: read the labels of unlabeled rows that have them (for the pseudo-label accuracy
    diagnostic only); False: the unlabeled set holds no label column (`ExperimentConfig.reads_unlabeled_labels`).
    """
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
    prepared = Path(prepared_dir).expanduser()
    if site is None:
        found = site_reads.scan(str(prepared))
    else:
        found = site_reads.on_site(site_reads.scan, site, str(prepared), domain=domain)
    manifest, train_files, val_files = found["manifest"], found["train_files"], found["val_files"]
    fn_kwargs = part_kwargs(
        crop_size=crop_size, unlabeled_crop_size=unlabeled_crop_size, scale_range=scale_range,
        unlabeled_scale_range=unlabeled_scale_range,
    )  # fmt: skip
    if min_rows < 1:
        raise ValueError(f"min_rows must be >= 1 (batch_size * num_workers), got {min_rows}")
    if transforms_on not in ("ray_data", "worker", "tasks"):
        raise ValueError(f"transforms_on must be 'ray_data', 'worker' or 'tasks', got {transforms_on!r}")

    train_ids, with_label, val_ids = found["train_ids"], found["with_label"], found["val_ids"]
    if not with_label:
        raise InputError(f"{prepared / 'train'}: no train row has a label; a labeled set needs some")
    labeled = splits.choose_labeled(
        with_label, fraction=labeled_fraction, seed=seed, split_file=split_file, kind=manifest.get("kind")
    )["labeled"]
    chosen_set = set(labeled)
    unlabeled = sorted(i for i in train_ids if i not in chosen_set)
    if not unlabeled:
        logger.warning(
            "%s: every train row is labeled (fraction 1.0); using all train rows as unlabeled", domain
        )
        unlabeled = sorted(train_ids)
    if not val_ids:
        raise InputError(f"{prepared / 'val'}: the val split has no rows")

    common = {
        "cache_encoded": cache_encoded,
        "shuffle": shuffle,
        "map_batch_size": map_batch_size,
        "num_cpus": num_cpus_per_task,
        "transforms_on": transforms_on,
        "site": site,
        "store": site_store.open_store(domain, site) if site is not None else None,  # reads and owns the rows there
    }
    labeled_ds = _train_set(
        train_files, labeled, columns=["id", "image", "label"], fn=PART_FUNCTIONS["labeled"],
        fn_kwargs=fn_kwargs["labeled"], what=f"{domain}.labeled",
        min_rows=max(min_rows, len(unlabeled) if match_unlabeled else 0), **common,
    )  # fmt: skip
    unlabeled_ds = _train_set(
        # labels (where rows have them) travel for the pseudo-label diagnostic only, when it may read them
        train_files, unlabeled, columns=["id", "image", *(["label"] if unlabeled_labels else [])],
        fn=PART_FUNCTIONS["unlabeled"],
        fn_kwargs=fn_kwargs["unlabeled"],
        what=f"{domain}.unlabeled", min_rows=min_rows, **common,
    )  # fmt: skip
    val = ValRows(domain, tuple(val_files), len(val_ids))  # one row per val id
    return DomainData(
        name=domain,
        manifest=manifest,
        num_classes=int(manifest["num_classes"]),
        labeled_ids=labeled,
        unlabeled_ids=unlabeled,
        labeled=labeled_ds,
        unlabeled=unlabeled_ds,
        val=val,
        val_ids=sorted(val_ids),
    )


def write_split_lists(run_dir: str | Path, domain_data: DomainData) -> dict[str, Path]:
    """Record the domain's split as `<run_dir>/<domain>/labeled.txt` and `unlabeled.txt`."""
    return splits.write_split_lists(
        Path(run_dir) / domain_data.name, domain_data.labeled_ids, domain_data.unlabeled_ids
    )


def ingest_options(label_selector: dict[str, str] | None = None):
    """Ray Data's execution options for the sets handed to Ray Train (`DataConfig(execution_options=...)`).

    The same options Train's default (`DataConfig.default_ingest_options`, Ray 2.60) makes from the current
    `DataContext`, without passing the deprecated `exclude_resources` (zero unless set; raymh never sets
    it), whose use makes Ray warn in every run. Train 2.60 adds no exclusion of its own either way.
    label_selector: a placed domain's, for every task of its sets (else the context's).
    """
    from ray.data import DataContext, ExecutionOptions

    current = DataContext.get_current().execution_options
    return ExecutionOptions(
        resource_limits=current.resource_limits,
        preserve_order=current.preserve_order,
        verbose_progress=current.verbose_progress,
        label_selector=dict(label_selector) if label_selector else current.label_selector,
    )
