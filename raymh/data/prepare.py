"""`raymh data prepare`: check every image/label pair once, write Parquet shards and a manifest (docs/data.md).

Output layout, written into a temporary directory beside `out` and renamed into place only when complete:
`out/<split>/part-00000.parquet ...` (columns id, image, label, height, width), `out/manifest.json`, and with
`skip_bad` `out/bad_files.json`.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from raymh.data.adapters import AdapterError, Sample, get_adapter
from raymh.data.labels import IGNORE_INDEX
from raymh.errors import InputError

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
BAD_FILES_FILE = "bad_files.json"
ROW_GROUP_ROWS = 16  # rows per Parquet row group: bounds memory at full-resolution images
SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("image", pa.binary(), nullable=False),
        pa.field("label", pa.binary(), nullable=True),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
    ]
)
MANIFEST_KEYS = (
    "domain", "kind", "classes", "palette", "num_classes", "ignore_index", "counts", "source_root",
    "content_hash", "format_version",
)  # fmt: skip
DOMAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")

Progress = Callable[[str, int, int], None]  # (split, samples checked, samples in the split)


class PrepareError(InputError):
    """A dataset that cannot be prepared; `bad` lists each bad file as {split, id, path, reason}."""

    def __init__(self, message: str, *, bad: Sequence[dict[str, str]] = ()) -> None:
        super().__init__(message)
        self.bad = list(bad)


@dataclass(frozen=True)
class CheckedSample:
    """One sample after the check: its Parquet row, or the bad path and why."""

    split: str
    sample: Sample
    reason: str | None = None
    bad_path: Path | None = None
    image: bytes = b""
    label_png: bytes | None = None
    label_pixels: bytes = b""  # train ids, row-major: what the content hash covers
    height: int = 0
    width: int = 0

    def report(self) -> dict[str, str]:
        return {
            "split": self.split,
            "id": self.sample.id,
            "path": str(self.bad_path),
            "reason": str(self.reason),
        }


def _why(e: Exception) -> str:
    if isinstance(e, UnidentifiedImageError):
        return "not a recognised image file"
    return str(e) or type(e).__name__


def _value_list(values: Iterable[int]) -> str:
    values = [int(v) for v in values]
    shown = ", ".join(map(str, values[:8])) + (", ..." if len(values) > 8 else "")
    return f"value {shown}" if len(values) == 1 else f"values {shown}"


def _ranges(table: np.ndarray) -> str:
    """A bool table as value ranges, e.g. '0..18, 255'."""
    values, spans = np.flatnonzero(table).tolist(), []
    for v in values:
        if spans and spans[-1][1] == v - 1:
            spans[-1][1] = v
        else:
            spans.append([v, v])
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in spans)


def check_sample(split: str, sample: Sample, *, lut: np.ndarray, valid: np.ndarray) -> CheckedSample:
    """Decode one image/label pair, check it, and map the label to train ids (PNG, mode L)."""

    def bad(path: Path, reason: str) -> CheckedSample:
        return CheckedSample(split, sample, reason=reason, bad_path=path)

    try:
        image_bytes = sample.image.read_bytes()
    except OSError as e:
        return bad(sample.image, f"unreadable image: {e.strerror or e}")
    try:
        with Image.open(io.BytesIO(image_bytes)) as im:
            im.load()
            width, height = im.size
    except Exception as e:  # Pillow raises many kinds on corrupt data
        return bad(sample.image, f"unreadable image: {_why(e)}")
    if sample.label is None:
        return CheckedSample(split, sample, image=image_bytes, height=height, width=width)
    if not sample.label.is_file():
        return bad(sample.image, f"missing label (expected {sample.label})")
    try:
        with Image.open(sample.label) as lab:
            lab.load()
            mode, raw = lab.mode, np.asarray(lab)
    except Exception as e:
        return bad(sample.label, f"unreadable label: {_why(e)}")
    if raw.ndim != 2 or raw.dtype.kind not in "biu":
        return bad(sample.label, f"label has mode {mode}; expected one channel (L or P) of raw label values")
    if raw.shape != (height, width):
        return bad(
            sample.label, f"size mismatch: image {width}x{height} vs label {raw.shape[1]}x{raw.shape[0]}"
        )
    values = np.unique(raw).astype(np.int64)
    outside = [v for v in values if not 0 <= v <= 255 or not valid[v]]
    if outside:
        return bad(sample.label, f"{_value_list(outside)} not in the label map (it holds {_ranges(valid)})")
    train_ids = lut[raw.astype(np.intp)]
    buf = io.BytesIO()
    Image.fromarray(train_ids, mode="L").save(buf, format="PNG")
    return CheckedSample(
        split, sample, image=image_bytes, label_png=buf.getvalue(), label_pixels=train_ids.tobytes(),
        height=height, width=width,
    )  # fmt: skip


class _SplitWriter:
    """Appends rows to `part-NNNNN.parquet` files of at most `shard_rows` rows each."""

    def __init__(self, folder: Path, shard_rows: int) -> None:
        self.folder, self.shard_rows = folder, shard_rows
        self.files: list[str] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0
        self._rows: list[dict[str, Any]] = []

    def add(self, row: dict[str, Any]) -> None:
        self._rows.append(row)
        if len(self._rows) >= ROW_GROUP_ROWS or self._in_file + len(self._rows) >= self.shard_rows:
            self._flush()

    def _flush(self) -> None:
        if not self._rows:
            return
        if self._writer is None:
            self.folder.mkdir(exist_ok=True)
            path = self.folder / f"part-{len(self.files):05d}.parquet"
            self.files.append(path.name)
            self._writer = pq.ParquetWriter(path, SCHEMA)
        self._writer.write_table(pa.Table.from_pylist(self._rows, schema=SCHEMA))
        self._in_file += len(self._rows)
        self._rows = []
        if self._in_file >= self.shard_rows:
            self.close()

    def close(self) -> None:
        self._flush()
        if self._writer is not None:
            self._writer.close()
            self._writer, self._in_file = None, 0


def _checked(
    samples: list[Sample], check: Callable[[Sample], CheckedSample], workers: int
) -> Iterator[CheckedSample]:
    """`check` over samples, in order, on `workers` threads (Pillow and zlib release the GIL)."""
    if workers <= 1:
        yield from map(check, samples)
        return
    with ThreadPoolExecutor(workers) as pool:
        step = 4 * workers
        for start in range(0, len(samples), step):
            yield from pool.map(check, samples[start : start + step])


def _hash_part(h: Any, part: bytes) -> None:
    h.update(len(part).to_bytes(8, "little"))
    h.update(part)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise PrepareError(f"output {out} exists and is not a directory; choose a new directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise PrepareError(
            f"output directory {out} is not empty; choose an empty or new one, or pass overwrite=True (--overwrite)"
        )


def _make_parents(path: Path) -> list[Path]:
    """Create the missing parents of `path`; returns those created, deepest first."""
    missing = [p for p in path.parents if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing


def _publish(tmp: Path, out: Path) -> None:
    """Put the finished `tmp` at `out`, replacing an empty or overwritable `out`."""
    if not out.exists():
        tmp.rename(out)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
    out.rename(aside / out.name)
    tmp.rename(out)
    shutil.rmtree(aside)


def _bad_message(kind: str, root: Path, bad: list[dict[str, str]]) -> str:
    lines = [f"{len(bad)} bad file(s) in the {kind} dataset at {root}:"]
    lines += [f"  {b['path']}: {b['reason']}" for b in bad]
    lines.append(
        "Fix or remove them, or pass skip_bad=True (--skip-bad) to leave them out (listed in bad_files.json)."
    )
    return "\n".join(lines)


def prepare_domain(
    *,
    kind: str,
    root: str | Path,
    out: str | Path,
    domain: str | None = None,
    skip_bad: bool = False,
    shard_rows: int = 256,
    overwrite: bool = False,
    workers: int | None = None,
    options: dict[str, Any] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Check every sample of a dataset once and write its Parquet shards and manifest; returns the manifest.

    `options` go to the adapter (e.g. synscapes' val_fraction, seed). Bad files raise a PrepareError that
    lists each one, and nothing is written; with `skip_bad` they are left out and listed in bad_files.json.
    """
    if shard_rows < 1:
        raise PrepareError(f"shard_rows must be >= 1, got {shard_rows}")
    root, out = Path(root).expanduser().resolve(), Path(out).expanduser().resolve()
    _check_out(out, overwrite)
    try:
        adapter = get_adapter(kind, **(options or {}))
        domain = domain or adapter.default_domain(root)
        if not DOMAIN_NAME.fullmatch(domain):
            raise PrepareError(
                f"domain name {domain!r} must use only letters, digits, '_' and '-' (it names a head and metrics); "
                "pass domain=... (--domain)"
            )
        samples = {split: adapter.samples(root, split) for split in adapter.splits(root)}
        classes, palette = adapter.classes(root), adapter.palette(root)
        lut, valid = adapter.label_lut(root), adapter.label_values(root)
    except AdapterError as e:
        raise PrepareError(str(e)) from e
    workers = workers or min(4, os.cpu_count() or 1)

    created = _make_parents(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        h, bad = hashlib.sha256(), []
        counts: dict[str, int] = {}
        shards: dict[str, list[str]] = {}
        for split, split_samples in samples.items():
            writer = _SplitWriter(tmp / split, shard_rows)
            counts[split] = 0
            try:
                check = partial(check_sample, split, lut=lut, valid=valid)
                for done, item in enumerate(_checked(split_samples, check, workers), start=1):
                    if progress is not None:
                        progress(split, done, len(split_samples))
                    if item.reason is not None:
                        bad.append(item.report())
                        continue
                    if bad and not skip_bad:
                        continue  # keep checking, to report every bad file; nothing will be kept
                    for part in (split.encode(), item.sample.id.encode(), item.image, item.label_pixels):
                        _hash_part(h, part)
                    writer.add({
                        "id": item.sample.id, "image": item.image, "label": item.label_png,
                        "height": item.height, "width": item.width,
                    })  # fmt: skip
                    counts[split] += 1
            finally:
                writer.close()
            shards[split] = writer.files
        if bad and not skip_bad:
            raise PrepareError(_bad_message(adapter.kind, root, bad), bad=bad)
        empty = [split for split, n in counts.items() if n == 0]
        if empty:
            message = f"no good samples left in split(s) {empty} of {root}.\n{_bad_message(adapter.kind, root, bad)}"
            raise PrepareError(message, bad=bad)
        manifest = {
            "format_version": FORMAT_VERSION,
            "domain": domain,
            "kind": adapter.kind,
            "classes": classes,
            "palette": [list(c) for c in palette],
            "num_classes": len(classes),
            "ignore_index": IGNORE_INDEX,
            "counts": counts,
            "shards": shards,
            "split_rule": adapter.split_info(root),
            "source_root": str(root),
            "content_hash": h.hexdigest(),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if skip_bad:
            manifest["bad_files"] = len(bad)
            (tmp / BAD_FILES_FILE).write_text(json.dumps(bad, indent=2) + "\n")
        (tmp / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in created:
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise
    return manifest


def read_manifest(prepared_dir: str | Path) -> dict[str, Any]:
    """The manifest of a prepared directory; errors say what is wrong and how to prepare it again."""
    prepared_dir = Path(prepared_dir)
    path = prepared_dir / MANIFEST_FILE
    again = f"run `raymh data prepare --kind KIND --root RAW_DIR --out {prepared_dir}`"
    if not path.is_file():
        raise PrepareError(f"{prepared_dir} is not a prepared dataset: {MANIFEST_FILE} not found; {again}")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise PrepareError(f"{path} is not readable JSON ({e}); {again} --overwrite") from e
    if not isinstance(manifest, dict):
        raise PrepareError(f"{path} must hold a JSON object; {again} --overwrite")
    missing = [k for k in MANIFEST_KEYS if k not in manifest]
    if missing:
        raise PrepareError(f"{path} lacks {missing}; {again} --overwrite")
    if manifest["format_version"] != FORMAT_VERSION:
        raise PrepareError(
            f"{path} has format_version {manifest['format_version']!r}; this raymh reads {FORMAT_VERSION}; "
            f"{again} --overwrite"
        )
    return manifest


def split_files(prepared_dir: str | Path, split: str) -> list[Path]:
    """The Parquet shards of one split of a prepared directory (`<split>/part-*.parquet`, in order)."""
    prepared_dir = Path(prepared_dir)
    counts = read_manifest(prepared_dir)["counts"]
    if split not in counts:
        raise PrepareError(f"{prepared_dir} has no split {split!r}; it has {sorted(counts)}")
    files = sorted((prepared_dir / split).glob("part-*.parquet"))
    if not files:
        raise PrepareError(
            f"{prepared_dir / split} holds no part-*.parquet shards; prepare it again with --overwrite"
        )
    return files


def label_histogram(
    prepared_dir: str | Path, *, split: str = "train", limit: int | None = None
) -> dict[str, Any]:
    """Pixel counts per train id (256 bins, 255 = ignore) over one split's labels: {"pixels", "images"}."""
    pixels, images = np.zeros(256, dtype=np.int64), 0
    for path in split_files(prepared_dir, split):
        for batch in pq.ParquetFile(path).iter_batches(columns=["label"], batch_size=ROW_GROUP_ROWS):
            for png in batch.column("label").to_pylist():
                if limit is not None and images >= limit:
                    return {"pixels": pixels, "images": images}
                if png is None:
                    continue
                with Image.open(io.BytesIO(png)) as im:
                    pixels += np.bincount(np.asarray(im).ravel(), minlength=256)
                images += 1
    return {"pixels": pixels, "images": images}
