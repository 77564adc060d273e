"""Reads of a placed domain's prepared data that run on its own nodes (`domains[].placement`, docs/placement.md).

Under `scaling.placement: by_domain` the driver never opens a domain's Parquet files: a Ray task with the
domain's label selector scans them (`scan`: the manifest, the file lists, the ids and which have a label:
small metadata that travels to the driver), and the domain's `SiteStore` actor reads the encoded train rows
there (`read_tables`) and keeps them (`raymh.data.site_store`): not a task the driver submits, whose small
results Ray would hand back inline to the driver. Without placement the same functions run in the driver.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from raymh.errors import InputError


def parquet_files(prepared: Path, split: str) -> list[str]:
    files = sorted(str(p.resolve()) for p in (prepared / split).glob("part-*.parquet"))
    if not files:
        raise FileNotFoundError(
            f"no Parquet shards {prepared / split / 'part-*.parquet'}; run `raymh data prepare` for this domain"
        )
    return files


def read_manifest(prepared: Path) -> dict[str, Any]:
    import json

    path = prepared / "manifest.json"
    if not path.is_file():
        raise FileNotFoundError(f"no manifest {path}; is {prepared} a `raymh data prepare` output dir?")
    manifest = json.loads(path.read_text())
    if "num_classes" not in manifest:
        raise InputError(f"manifest {path} has no 'num_classes'; re-run `raymh data prepare`")
    return manifest


def scan_ids(files: Sequence[str]) -> tuple[list[str], list[str]]:
    """(all ids, ids with a label) of a split, reading only the id and label columns."""
    table = pq.read_table(list(files), columns=["id", "label"])
    ids = table["id"].to_pylist()
    has_label = pc.is_valid(table["label"]).to_pylist()
    return ids, [i for i, ok in zip(ids, has_label, strict=True) if ok]


def scan(prepared_dir: str) -> dict[str, Any]:
    """What the driver needs to know of a prepared domain: manifest, files, ids (no pixels)."""
    prepared = Path(prepared_dir).expanduser()
    manifest = read_manifest(prepared)
    train_files, val_files = parquet_files(prepared, "train"), parquet_files(prepared, "val")
    train_ids, with_label = scan_ids(train_files)
    return {
        "manifest": manifest, "train_files": train_files, "val_files": val_files,
        "train_ids": train_ids, "with_label": with_label, "val_ids": scan_ids(val_files)[0],
    }  # fmt: skip


def select_rows(table: pa.Table, *, ids: list[str]) -> pa.Table:
    """Keep the rows whose id is in ids."""
    return table.filter(pc.is_in(table["id"], value_set=pa.array(ids, type=pa.string())))


def read_tables(files: Sequence[str], ids: list[str], columns: list[str]) -> list[pa.Table]:
    """One table per file of the rows of `ids`."""
    return [select_rows(pq.read_table(path, columns=columns), ids=ids) for path in files]


def on_site(fn, selector: Mapping[str, str], *args, domain: str):
    """fn(*args), run as a Ray task on a node `selector` matches (for metadata only: its result returns here).
    A failure there is an InputError naming the domain and the node's error."""
    import ray

    task = ray.remote(fn).options(
        label_selector=dict(selector), num_cpus=1, name=f"raymh-{fn.__name__}:{domain}"
    )  # the name shows in Ray's state API (`ray list tasks`) with the node that ran it
    return site_get(task.remote(*args), selector, domain=domain)


def site_get(ref, selector: Mapping[str, str], *, domain: str):
    """ray.get of a site task's result; its failure as an InputError naming the domain and the cause."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = err.cause if getattr(err, "cause", None) is not None else err
        raise InputError(
            f"domain {domain!r}: reading its data on a node of its placement {dict(selector)} failed: "
            f"{type(cause).__name__}: {cause}"
        ) from None
