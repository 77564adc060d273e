"""`raymh predict`: label maps for a folder, glob or prepared Parquet dir, as Ray Data batch inference.

Read and decode run in Ray Data tasks, the model in an actor pool (`map_batches` with a callable class, one
model per actor, bf16 where the training loop would use it, a GPU per actor where the cluster has them),
encoding and writing in tasks; the driver only counts what comes back and shows progress. Outputs mirror
the inputs' relative paths under `out`; existing outputs are skipped unless `overwrite`. An input that
cannot be decoded is named with its reason; the others are still written.
"""

from __future__ import annotations

import glob
import io
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from raymh.data.adapters import IMAGE_EXTENSIONS
from raymh.infer.formats import get_format
from raymh.infer.loading import load_bundle

GLOB_CHARS = set("*?[")


@dataclass
class PredictSummary:
    out: Path
    format: str
    total: int = 0  # inputs found
    written: int = 0
    skipped_existing: int = 0
    bad: list[tuple[str, str]] = field(default_factory=list)  # (input, reason)
    seconds: float = 0.0  # the pipeline's run, from its start to its last output
    first_output_s: float | None = None  # from the call (model load, Ray Data start-up and actor start included)
    last_output_s: float | None = None

    @property
    def images_per_s(self) -> float:
        return self.written / self.seconds if self.seconds > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """Throughput once outputs flow: (written - 1) / (last output - first output)."""
        span = (self.last_output_s or 0.0) - (self.first_output_s or 0.0)
        return (self.written - 1) / span if self.written > 1 and span > 0 else 0.0


# ------------------------------------------------------------------------------------------ listing inputs
def list_inputs(spec: str) -> tuple[str, list[dict[str, str]]]:
    """("files", [{"rel", "path"}]) for a folder (recursive), a glob or one file; ("parquet", [{"path"}])
    for a prepared dir (`manifest.json` + `<split>/part-*.parquet`)."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "manifest.json").is_file():
        files = sorted(str(p) for p in path.glob("*/part-*.parquet"))
        if not files:
            raise FileNotFoundError(f"{spec}: a prepared dir without <split>/part-*.parquet shards")
        return "parquet", [{"path": f} for f in files]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        items = [{"rel": p.relative_to(path).as_posix(), "path": str(p)} for p in found]
    elif path.is_file():
        items = [{"rel": path.name, "path": str(path)}]
    elif GLOB_CHARS & set(spec):
        parts = Path(spec).parts
        static = Path(*parts[: next(i for i, p in enumerate(parts) if GLOB_CHARS & set(p))] or ["."])
        found = sorted(Path(p) for p in glob.glob(spec, recursive=True) if Path(p).is_file())
        items = [{"rel": os.path.relpath(p, static).replace(os.sep, "/"), "path": str(p)} for p in found]
    else:
        raise FileNotFoundError(f"--input {spec}: no such file, folder or glob match")
    if not items:
        raise FileNotFoundError(f"--input {spec}: no images ({', '.join(IMAGE_EXTENSIONS)}) found")
    return "files", items


# ------------------------------------------------------------------------------------------ Ray Data stages
def _parquet_rows(batch: dict[str, Any], *, done: frozenset[str]) -> dict[str, Any]:
    """Prepared rows -> {"rel": "<split>/<id>", "data": bytes}, without those whose output exists."""
    rel = [f"{Path(p).parent.name}/{i}" for p, i in zip(batch["path"], batch["id"], strict=True)]
    keep = [k for k, r in enumerate(rel) if r not in done]
    return {"rel": np.array([rel[k] for k in keep], dtype=object),
            "data": np.array([batch["image"][k] for k in keep], dtype=object)}  # fmt: skip


def decode_images(batch: dict[str, Any]) -> dict[str, Any]:
    """Read (when given paths) and decode each image to HxWx3 uint8; failures keep their reason in "error"."""
    from PIL import Image

    images, errors = [], []
    paths = batch.get("path")
    for k in range(len(batch["rel"])):
        try:
            data = Path(paths[k]).read_bytes() if paths is not None else batch["data"][k]
            with Image.open(io.BytesIO(data)) as im:
                images.append(np.asarray(im.convert("RGB")))
            errors.append("")
        except Exception as e:  # noqa: BLE001 - any unreadable input is reported by name, never fatal here
            images.append(np.zeros((1, 1, 3), np.uint8))
            errors.append(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)
    return {"rel": np.asarray(batch["rel"], dtype=object), "image": _objects(images),
            "error": np.asarray(errors, dtype=object)}  # fmt: skip


class SegmentBatch:
    """The model in a Ray Data actor: decoded images -> label maps (one model load per actor)."""

    def __init__(self, *, bundle, domain: str, mode, window, precision, threads: int, device: str, keep_image: bool):
        import ray
        import torch

        from raymh.infer.segmenter import Segmenter

        torch.set_num_threads(threads)
        bundle = ray.get(bundle) if isinstance(bundle, ray.ObjectRef) else bundle
        self.segmenter = Segmenter(bundle, mode=mode, window=window, precision=precision, device=device)
        self.domain, self.keep_image = domain, keep_image

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        good = [k for k, e in enumerate(batch["error"]) if not e]
        preds = self.segmenter.predict([np.asarray(batch["image"][k]) for k in good], self.domain)
        out = [np.zeros((1, 1), np.uint8)] * len(batch["rel"])
        for k, p in zip(good, preds, strict=True):
            out[k] = p
        result = {"rel": batch["rel"], "pred": _objects(out), "error": batch["error"]}
        if self.keep_image:
            result["image"] = batch["image"]
        return result


def write_outputs(batch: dict[str, Any], *, out: str, fmt: str, info: dict[str, Any]) -> dict[str, Any]:
    """Encode and write each label map under `out`; returns {"rel", "error"} per input."""
    f = get_format(fmt)
    errors = list(batch["error"])
    for k, rel in enumerate(batch["rel"]):
        if errors[k]:
            continue
        try:
            target = Path(out) / f.relpath(rel)
            target.parent.mkdir(parents=True, exist_ok=True)
            image = np.asarray(batch["image"][k]) if "image" in batch else None
            tmp = target.with_name(f".{target.name}.tmp")
            tmp.write_bytes(f.encode(np.asarray(batch["pred"][k]), image, info))
            tmp.replace(target)  # a file that exists is always whole: re-runs may skip it
        except OSError as e:
            errors[k] = f"cannot write {f.relpath(rel)}: {e}"
    return {"rel": batch["rel"], "error": np.asarray(errors, dtype=object)}


def _objects(arrays: list[np.ndarray]) -> np.ndarray:
    """A 1-D object array of arrays (Ray Data keeps variable-shaped images as such a column)."""
    col = np.empty(len(arrays), dtype=object)
    col[:] = arrays
    return col


# ------------------------------------------------------------------------------------------ the driver
def run_predict(
    model: str,
    *,
    domain: str,
    input: str,
    out: str | Path,
    fmt: str | None = None,
    mode: str | None = None,
    window: tuple[int, int] | None = None,
    precision: str | None = None,
    batch_size: int = 4,
    workers: int = 1,
    cpus_per_worker: int | None = None,
    overwrite: bool = False,
    address: str | None = None,
    tracking_uri: str | None = None,
    quiet: bool = False,
) -> PredictSummary:
    """Predict every input of `input` with `model` for `domain` and write them under `out` in `fmt`."""
    import ray

    t0 = time.perf_counter()
    bundle = load_bundle(model, tracking_uri=tracking_uri)
    info = bundle.domain(domain)
    f = get_format(fmt or info.get("label_format", "trainid"))
    f.check(domain, info)
    kind, items = list_inputs(input)
    out = Path(out).expanduser().resolve()
    summary = PredictSummary(out=out, format=f.name)

    if not ray.is_initialized():
        from raymh.platform.cluster import init_ray

        init_ray(None, address, train=False)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan/progress INFO lines drown raymh's own
    cpus = int(ray.available_resources().get("CPU", os.cpu_count() or 1))
    threads = cpus_per_worker or max(1, (cpus - 1) // max(workers, 1))
    gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
    if kind == "files":
        summary.total = len(items)
        if not overwrite:
            items = [it for it in items if not (out / f.relpath(it["rel"])).exists()]
        summary.skipped_existing = summary.total - len(items)
        ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), math.ceil(len(items) / batch_size))))
    else:
        import pyarrow.parquet as pq

        ids = [(Path(it["path"]).parent.name, i) for it in items for i in pq.read_table(it["path"], columns=["id"])["id"].to_pylist()]
        summary.total = len(ids)
        done = frozenset() if overwrite else frozenset(
            r for r in (f"{s}/{i}" for s, i in ids) if (out / f.relpath(r)).exists()
        )  # fmt: skip
        summary.skipped_existing = len(done)
        ds = ray.data.read_parquet([it["path"] for it in items], columns=["id", "image"], include_paths=True)
        ds = ds.map_batches(_parquet_rows, fn_kwargs={"done": done}, batch_size=batch_size)
    todo = summary.total - summary.skipped_existing
    say = (lambda m: None) if quiet else (lambda m: print(f"[raymh] {m}", flush=True))
    say(f"predict {domain} with {bundle.source}: {summary.total} input(s), {summary.skipped_existing} already "
        f"written, {todo} to do -> {out} ({f.name}); {workers} model actor(s) x {threads} thread(s)"
        f"{' + GPU' if gpus else ''}, batch {batch_size}")  # fmt: skip
    if todo == 0:
        summary.seconds = time.perf_counter() - t0
        return summary

    # Half a CPU each for decode and write tasks: they run beside the model actor on the CPUs it leaves, and
    # resources unlike the actor's keep Ray Data from fusing decoding into the actor (serialising it there).
    ds = ds.map_batches(decode_images, batch_size=batch_size, num_cpus=0.5)
    ds = ds.map_batches(
        SegmentBatch,
        fn_constructor_kwargs={
            "bundle": ray.put(bundle), "domain": domain, "mode": mode, "window": window, "precision": precision,
            "threads": threads, "device": "cuda" if gpus else "cpu", "keep_image": f.name == "overlay",
        },
        batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=0 if gpus else threads,
        num_gpus=gpus,
    )  # fmt: skip
    ds = ds.map_batches(write_outputs, fn_kwargs={"out": str(out), "fmt": f.name, "info": info},
                        batch_size=batch_size, num_cpus=0.5)  # fmt: skip
    progress = _Progress(todo, say, quiet)
    t_run = time.perf_counter()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for rel, err in zip(batch["rel"], batch["error"], strict=True):
            if err:
                summary.bad.append((str(rel), str(err)))
                print(f"[raymh] cannot read {rel}: {err}", file=sys.stderr, flush=True)
            else:
                summary.written += 1
                summary.last_output_s = time.perf_counter() - t0
                if summary.first_output_s is None:
                    summary.first_output_s = summary.last_output_s
        progress.update(summary.written + len(summary.bad))
    summary.seconds = time.perf_counter() - t_run
    progress.close()
    return summary


class _Progress:
    """`[raymh] predict [#####.....] 40/100 3.1 img/s eta 19s`: in place on a terminal, else every 5 s."""

    def __init__(self, total: int, say, quiet: bool = False) -> None:
        self.total, self.say, self.t0, self.last, self.done = total, say, time.perf_counter(), 0.0, 0
        self.tty = sys.stdout.isatty() and not quiet

    def line(self) -> str:
        elapsed = time.perf_counter() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else math.inf
        filled = int(20 * self.done / max(self.total, 1))
        eta_s = f"{eta:.0f}s" if math.isfinite(eta) else "?"
        return f"predict [{'#' * filled}{'.' * (20 - filled)}] {self.done}/{self.total} {rate:.1f} img/s eta {eta_s}"

    def update(self, done: int) -> None:
        self.done = done
        now = time.perf_counter()
        if self.tty:
            print(f"\r[raymh] {self.line()}", end="", flush=True)
        elif now - self.last >= 5.0 or done == self.total:
            self.say(self.line())
            self.last = now

    def close(self) -> None:
        if self.tty:
            print(flush=True)
