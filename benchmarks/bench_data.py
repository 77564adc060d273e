"""Augmented samples/s of the Ray Data pipeline vs a plain torch DataLoader doing the same work.

Both sides decode the same Parquet rows and run the same transforms (labeled scale/crop/flip, unlabeled
overlapping crop pairs with photometric augmentation) with the same number of CPUs (Ray: num_cpus; torch:
num_workers), and deliver one labeled and one unlabeled batch per step. A sample is one labeled image or one
unlabeled crop pair. Each repeat consumes one epoch of both sets as fast as possible (start-up included:
Ray Data restarts its pipeline every epoch); the median over repeats is reported, with the first-step
latency and the rate after the first step (which favours Ray: it decodes ahead during start-up).

    python benchmarks/bench_data.py [--prepared DIR] [--cpus 2] [--device cpu|cuda]

Last line: `data: ray_vs_torch=<ratio> ray_samples_s=<n>` (ratio > 1: Ray Data is faster).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from PIL import Image

from raymh.data.driver_datasets import build_domain_data
from raymh.data.sets import dataset_name
from raymh.data.transforms import decode_image, decode_label, overlap_crop_pair, scale_crop_flip
from raymh.data.worker_batches import StepBatches


def write_synthetic_prepared(
    root: Path, *, n_train: int, n_val: int, size: tuple[int, int], seed: int = 0
) -> Path:
    """A prepared dir of random smooth images (JPEG) and random label blocks (PNG), `raymh data prepare` format."""
    rng = np.random.default_rng(seed)
    h, w = size

    def row(split: str, i: int) -> dict:
        coarse = rng.integers(0, 256, size=(h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((w, h), Image.BILINEAR)
        label = Image.fromarray(rng.integers(0, 19, size=(h // 32 + 1, w // 32 + 1), dtype=np.uint8)).resize(
            (w, h), Image.NEAREST
        )
        img_buf, lab_buf = io.BytesIO(), io.BytesIO()
        image.save(img_buf, format="JPEG", quality=90)
        label.save(lab_buf, format="PNG")
        return {
            "id": f"{split}_{i:05d}",
            "image": img_buf.getvalue(),
            "label": lab_buf.getvalue(),
            "height": h,
            "width": w,
        }

    for split, n in (("train", n_train), ("val", n_val)):
        (root / split).mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.Table.from_pylist([row(split, i) for i in range(n)]), root / split / "part-00000.parquet"
        )
    manifest = {
        "domain": "bench",
        "kind": "folder",
        "classes": [str(i) for i in range(19)],
        "num_classes": 19,
    }
    manifest.update(
        {"palette": [[i, i, i] for i in range(19)], "ignore_index": 255, "counts": {"train": n_train}}
    )
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


# ---------------------------------------------------------------------------------------- torch baseline
class _Rows(torch.utils.data.Dataset):
    """Rows of encoded bytes, decoded and augmented per item (the torchvision-references way)."""

    def __init__(self, images: list[bytes], labels: list[bytes] | None, *, crop, scale_range):
        self.images, self.labels, self.crop, self.scale_range = images, labels, crop, scale_range

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng()
        image = decode_image(self.images[i])
        if self.labels is not None:
            img, lab = scale_crop_flip(
                image,
                decode_label(self.labels[i]),
                rng=rng,
                crop_size=self.crop,
                scale_range=self.scale_range,
            )
            return {"image": np.ascontiguousarray(img.transpose(2, 0, 1)), "label": lab.astype(np.int64)}
        pair = overlap_crop_pair(image, rng=rng, crop_size=self.crop, scale_range=self.scale_range)
        for k in ("image1", "image2"):
            pair[k] = np.ascontiguousarray(pair[k].transpose(2, 0, 1))
        return pair


def _cycle(loader):
    while True:
        yield from loader


def torch_steps(prepared: Path, dd, *, crop, batch_size: int, cpus: int, device: str):
    table = pq.read_table(sorted(str(p) for p in (prepared / "train").glob("part-*.parquet")))
    rows = {i: k for k, i in enumerate(table["id"].to_pylist())}
    images, labels = table["image"].to_pylist(), table["label"].to_pylist()
    lab_idx, unl_idx = [rows[i] for i in dd.labeled_ids], [rows[i] for i in dd.unlabeled_ids]
    sets = {
        "labeled": _Rows(
            [images[i] for i in lab_idx], [labels[i] for i in lab_idx], crop=crop, scale_range=(0.5, 2.0)
        ),
        "unlabeled": _Rows([images[i] for i in unl_idx], None, crop=crop, scale_range=(0.8, 2.0)),
    }
    # same CPUs as Ray: `cpus` worker processes in total, shared by the two loaders
    workers = {"labeled": max(1, cpus // 2), "unlabeled": max(1, cpus - cpus // 2)}
    loaders = {
        k: _cycle(
            torch.utils.data.DataLoader(
                ds,
                batch_size=batch_size,
                shuffle=True,
                drop_last=True,
                num_workers=workers[k],
                persistent_workers=True,
            )
        )
        for k, ds in sets.items()
    }
    while True:
        yield {"bench": {k: {n: t.to(device) for n, t in next(it).items()} for k, it in loaders.items()}}


# ------------------------------------------------------------------------------------------------ timing
def time_epoch(steps, *, n_steps: int, batch_size: int) -> dict[str, float]:
    """Consume n_steps (one epoch) as fast as possible: seconds to the first step and in total."""
    t0 = time.perf_counter()
    next(steps)
    first = time.perf_counter() - t0
    for _ in range(n_steps - 1):
        batch = next(steps)
        assert batch["bench"]["labeled"]["image"].shape[0] == batch_size
    total = time.perf_counter() - t0
    samples = 2 * batch_size  # one labeled image + one crop pair per row, both sets
    return {
        "first_s": first,
        "epoch_samples_s": samples * n_steps / total,
        "steady_samples_s": samples * (n_steps - 1) / max(total - first, 1e-9),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--prepared", type=Path, default=None, help="a prepared dir; default: make a synthetic one"
    )
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="CPUs for Ray / DataLoader workers")
    p.add_argument("--image-size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"))
    p.add_argument("--crop", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    p.add_argument("--images", type=int, default=256, help="synthetic train images")
    p.add_argument("--batch-size", type=int, default=4, help="labeled and unlabeled batch size")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--map-batch-size", type=int, default=16, help="rows per Ray Data decode task")
    p.add_argument("--no-shuffle", action="store_true", help="Ray side without random_shuffle")
    p.add_argument(
        "--no-cache", action="store_true", help="Ray side: re-read Parquet every epoch (cache_encoded=False)"
    )
    args = p.parse_args()

    import ray

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = args.prepared or write_synthetic_prepared(
            Path(tmp) / "prepared", n_train=args.images, n_val=2, size=tuple(args.image_size)
        )
        dd = build_domain_data(
            prepared,
            domain="bench",
            labeled_fraction=0.5,
            crop_size=tuple(args.crop),
            min_rows=args.batch_size,
            shuffle=not args.no_shuffle,
            map_batch_size=args.map_batch_size,
            cache_encoded=not args.no_cache,
        )
        shards = {dataset_name("bench", k): getattr(dd, k) for k in ("labeled", "unlabeled")}
        n_steps = min(len(dd.labeled_ids), len(dd.unlabeled_ids)) // args.batch_size  # one epoch of each
        if n_steps < 2:
            raise SystemExit(f"--images {args.images} gives fewer than 2 steps per epoch; use more images")
        results: dict[str, list[dict[str, float]]] = {"ray": [], "torch": []}
        for r in range(args.repeats):
            steps = StepBatches(
                ["bench"], labeled_batch_size=args.batch_size, unlabeled_batch_size=args.batch_size,
                get_shard=shards.get, device=args.device,
            )  # fmt: skip
            results["ray"].append(time_epoch(steps, n_steps=n_steps, batch_size=args.batch_size))
            steps.close()
            tsteps = torch_steps(
                prepared,
                dd,
                crop=tuple(args.crop),
                batch_size=args.batch_size,
                cpus=args.cpus,
                device=args.device,
            )
            results["torch"].append(time_epoch(tsteps, n_steps=n_steps, batch_size=args.batch_size))
            tsteps.close()
            print(
                f"repeat {r}: "
                + "  ".join(
                    f"{k} {v[-1]['epoch_samples_s']:.1f} samples/s (first step {v[-1]['first_s']:.2f} s, "
                    f"then {v[-1]['steady_samples_s']:.1f} samples/s)"
                    for k, v in results.items()
                ),
                flush=True,
            )
    ray.shutdown()
    med = {k: {m: statistics.median(r[m] for r in v) for m in v[0]} for k, v in results.items()}
    print(
        f"setup: cpus={args.cpus} device={args.device} image={tuple(args.image_size)} crop={tuple(args.crop)} "
        f"batch={args.batch_size} map_batch_size={args.map_batch_size} shuffle={not args.no_shuffle} "
        f"cache_encoded={not args.no_cache} steps_per_epoch={n_steps} repeats={args.repeats} "
        f"torch_samples_s={med['torch']['epoch_samples_s']:.1f} "
        f"first_step_s ray={med['ray']['first_s']:.2f} torch={med['torch']['first_s']:.2f} "
        f"after_first_step_samples_s ray={med['ray']['steady_samples_s']:.1f} "
        f"torch={med['torch']['steady_samples_s']:.1f}"
    )
    ratio = med["ray"]["epoch_samples_s"] / med["torch"]["epoch_samples_s"]
    print(f"data: ray_vs_torch={ratio:.3f} ray_samples_s={med['ray']['epoch_samples_s']:.1f}")


if __name__ == "__main__":
    main()
