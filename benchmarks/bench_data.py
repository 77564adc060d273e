"""Training input at a real dataset's size: raymh's Ray Data path vs a torch DataLoader doing the same work.

Renders (the synthetic renderer draws at any size) or reuses images at a real dataset's size and encoding
(`cityscapes` 1024x2048 PNG, `bdd100k` 720x1280 JPEG, `synscapes` 720x1440 PNG), prepares them as
`raymh data prepare` does, then delivers raymh's training input for that domain with the paper preset's
recipe: per step one labeled batch (scale 0.5-2.0, 720x720 crop, flip) and one batch of overlapping
unlabeled crop pairs (scale 0.8-2.0, flips, photometric augmentation).

- ray, `--mode tasks` (default): `build_domain_data(transforms_on="tasks")` + `StepBatches`: the encoded
  rows cached in the object store, each batch decoded and augmented by a plain Ray task, two in flight per
  set (`raymh.data.task_decode`), on a local Ray of `--cpus` CPUs.
- ray, `--mode ray_data`: `transforms_on="ray_data"`, decode and augmentation in Ray Data `map_batches`
  tasks. `--mode both` measures both; the last line is the first mode's.
- torch: one DataLoader per set, `--cpus` worker processes in all, each item through the very same
  functions (`labeled_batch` / `unlabeled_batch` on one row).

Time to first batch is from nothing (ray: building the sets, i.e. reading and caching the encoded rows, then
starting the pipelines; torch: reading the rows, starting its workers); Ray's own start is left out of both.
Steady state: samples/s over `--steps` further steps (epochs roll over as in training). A sample is one
labeled image or one unlabeled crop pair. Nothing trains: this is the rate the input can be delivered at.

    python benchmarks/bench_data.py --size cityscapes [--mode tasks|ray_data|both] [--images 16] [--cpus 2]
        [--steps 8] [--repeats 1] [--work DIR]

Last line: `data: size=<s> ray_vs_torch=<r> first_batch_ratio=<q>` (r: Ray's steady samples/s over the
DataLoader's, target >= 1.0; q: Ray's first-batch seconds over the DataLoader's, target <= 2.0).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from raymh.data.batch_transforms import labeled_batch, unlabeled_batch
from raymh.data.driver_datasets import build_domain_data
from raymh.data.task_decode import task_shards
from raymh.data.worker_batches import StepBatches, train_shards

SIZES = {  # (H, W), encoding of the real dataset's images
    "cityscapes": ((1024, 2048), "PNG"),
    "bdd100k": ((720, 1280), "JPEG"),
    "synscapes": ((720, 1440), "PNG"),
}
CROP, SCALES, UNLABELED_SCALES = (720, 720), (0.5, 2.0), (0.8, 2.0)  # the paper preset's


def prepared_at_size(size: str, *, images: int, val_images: int, work: Path, shard_rows: int = 256) -> Path:
    """A prepared dir of `images` train + `val_images` val scenes at the real size of `size`, `shard_rows` rows
    per Parquet file (`raymh data prepare`'s default 256), reused when `work` already holds it."""
    from raymh.data.prepare import prepare_domain, read_manifest
    from raymh.data.synth import render_dataset

    out = work / (f"{size}-{images}-{val_images}" + ("" if shard_rows == 256 else f"-{shard_rows}")) / "prepared"
    if (out / "manifest.json").is_file():
        return out
    raw = out.parent / "raw"
    t0 = time.perf_counter()
    render_dataset(raw, images=images, val_images=val_images, size=SIZES[size][0], domains=[size], overwrite=True)
    # Synscapes ships no split: its adapter takes val out of all images (val_fraction)
    options = {"val_fraction": val_images / (images + val_images)} if size == "synscapes" else None
    prepare_domain(kind=size, root=raw / size, out=out, domain=size, options=options, overwrite=True, shard_rows=shard_rows)
    counts = read_manifest(out)["counts"]
    print(f"rendered and prepared {counts} {size} images at {SIZES[size][0]} in {time.perf_counter() - t0:.0f} s",
          flush=True)  # fmt: skip
    return out


# ---------------------------------------------------------------------------------------- torch baseline
class _Rows(torch.utils.data.Dataset):
    """Prepared rows, each decoded and augmented by raymh's own batch function on a batch of one."""

    def __init__(self, rows: dict[str, list], fn, **kwargs):
        self.rows, self.fn, self.kwargs = rows, fn, kwargs

    def __len__(self) -> int:
        return len(self.rows["id"])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        one = {k: np.asarray([v[i]], dtype=object) for k, v in self.rows.items()}
        out = self.fn(one, **self.kwargs)
        return {k: v[0] for k, v in out.items() if k != "id"}


def _cycle(loader):
    while True:
        yield from loader


def torch_steps(prepared: Path, dd, *, batch_size: int, cpus: int):
    table = pq.read_table(sorted(str(p) for p in (prepared / "train").glob("part-*.parquet")), columns=["id", "image", "label"])
    index = {i: k for k, i in enumerate(table["id"].to_pylist())}
    columns = {c: table[c].to_pylist() for c in ("id", "image", "label")}

    def rows(ids):
        return {c: [v[index[i]] for i in ids] for c, v in columns.items()}

    sets = {
        "labeled": _Rows(rows(dd.labeled_ids), labeled_batch, crop_size=CROP, scale_range=SCALES),
        "unlabeled": _Rows(rows(dd.unlabeled_ids), unlabeled_batch, crop_size=CROP, scale_range=UNLABELED_SCALES),
    }
    workers = {"labeled": max(1, cpus // 2), "unlabeled": max(1, cpus - cpus // 2)}  # `cpus` processes in all
    loaders = {
        k: _cycle(torch.utils.data.DataLoader(ds, batch_size=min(batch_size, len(ds)), shuffle=True, drop_last=True,
                                              num_workers=workers[k], persistent_workers=True))
        for k, ds in sets.items()
    }  # fmt: skip
    while True:
        yield {"bench": {k: next(it) for k, it in loaders.items()}}


# ------------------------------------------------------------------------------------------------ timing
def timed(make_steps, *, steps: int, batch_size: int) -> dict[str, float]:
    """Seconds from nothing to the first step's batches, then samples/s over `steps` more steps."""
    t0 = time.perf_counter()
    it = make_steps()
    first_batch = next(it)
    first = time.perf_counter() - t0
    assert first_batch["bench"]["unlabeled"]["image1"].shape[-2:] == CROP
    t1 = time.perf_counter()
    for _ in range(steps):
        next(it)
    steady = time.perf_counter() - t1
    close = getattr(it, "close", None)
    if close is not None:
        close()
    return {"first_s": first, "samples_s": 2 * batch_size * steps / steady}


def ray_steps_factory(prepared: Path, *, mode: str, batch_size: int, built: dict):
    """make_steps for `timed`: build the domain's sets in `mode` (timed: part of the first batch), then step."""

    def make():
        built["dd"] = dd = build_domain_data(
            prepared, domain="bench", crop_size=CROP, scale_range=SCALES, unlabeled_scale_range=UNLABELED_SCALES,
            min_rows=batch_size, transforms_on=mode,
        )  # fmt: skip
        if mode == "tasks":
            wrap = task_shards(crop_size=CROP, scale_range=SCALES, unlabeled_scale_range=UNLABELED_SCALES, seed=0,
                               rank=0)
            get_shard = train_shards(dd.row_blocks(), seed=0, rank=0, world_size=1, wrap=wrap)
        else:
            get_shard = {k: v for k, v in dd.datasets().items() if not k.endswith(".val")}.get
        return StepBatches(["bench"], labeled_batch_size=batch_size, unlabeled_batch_size=batch_size, get_shard=get_shard)

    return make


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), required=True, help="whose image size and encoding")
    p.add_argument("--mode", choices=("tasks", "ray_data", "both"), default="tasks", help="raymh's Ray input path")
    p.add_argument("--images", type=int, default=16, help="train images to render (reused under --work)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs for Ray tasks / DataLoader workers")
    p.add_argument("--steps", type=int, default=8, help="steps timed after the first")
    p.add_argument("--batch-size", type=int, default=2, help="labeled and unlabeled batch size (the paper's 2)")
    p.add_argument("--repeats", type=int, default=1, help="alternate ray and torch this many times; medians")
    p.add_argument("--work", type=Path, default=None, help="folder to render into and reuse (default: a temporary one)")
    args = p.parse_args()
    modes = ["tasks", "ray_data"] if args.mode == "both" else [args.mode]

    import ray

    from raymh.platform.cluster import init_ray

    init_ray(None, "local", num_cpus=args.cpus, log_to_driver=False)  # raymh's own start: never a stale head
    results: dict[str, list[dict[str, float]]] = {m: [] for m in [*modes, "torch"]}
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepared_at_size(args.size, images=args.images, val_images=2, work=args.work or Path(tmp))
        built: dict = {}
        for _ in range(args.repeats):  # interleaved, so a noisy machine slows every path alike
            for mode in modes:
                make = ray_steps_factory(prepared, mode=mode, batch_size=args.batch_size, built=built)
                results[mode].append(timed(make, steps=args.steps, batch_size=args.batch_size))
            dd = built["dd"]
            results["torch"].append(timed(lambda dd=dd: torch_steps(prepared, dd, batch_size=args.batch_size, cpus=args.cpus),
                                          steps=args.steps, batch_size=args.batch_size))  # fmt: skip
    ray.shutdown()
    med = {k: {m: float(np.median([r[m] for r in rs])) for m in ("first_s", "samples_s")} for k, rs in results.items()}
    (h, w), enc = SIZES[args.size]
    print(f"setup: {args.size} {h}x{w} {enc}, {len(dd.labeled_ids)} labeled + {len(dd.unlabeled_ids)} unlabeled images, "
          f"crop {CROP}, batch {args.batch_size} + {args.batch_size} pairs per step, cpus={args.cpus}, steps={args.steps}, "
          f"medians of {args.repeats}")  # fmt: skip
    for name, r in med.items():
        print(f"{name:>8}: first batch {r['first_s']:.2f} s, steady {r['samples_s']:.2f} samples/s", flush=True)
    for mode in reversed(modes):  # the last line is the first (default) mode's
        tag = "" if mode == modes[0] else f" mode={mode}"
        print(f"data: size={args.size}{tag} ray_vs_torch={med[mode]['samples_s'] / med['torch']['samples_s']:.3f} "
              f"first_batch_ratio={med[mode]['first_s'] / med['torch']['first_s']:.3f}")


if __name__ == "__main__":
    main()
