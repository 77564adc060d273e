"""Evaluation memory at a real dataset's size: one domain's val set, sliding windows, 2 Ray Train workers.

Renders (or reuses, `--work`) `--images` val images at a real dataset's size and encoding (as
`bench_data.py`: `cityscapes` 1024x2048 PNG, `bdd100k` 720x1280 JPEG, `synscapes` 720x1440 PNG), builds
the domain's sets as `raymh train` does, and evaluates a fixed (seeded, untrained) model in the paper
preset's `slide` mode (720x720 windows) on `--workers` Ray Train workers, each through `val_batches` (its
own rows, by the id hash, decoded in the worker) and `evaluate_domains`, as the training loop's evaluation.
A poller samples the object store's bytes in use (Ray's raylet memory stats, a private API) every 0.1 s.

Printed: per worker its RSS before evaluating and its peak RSS (ru_maxrss, the process' lifetime peak),
rows and seconds; the object store's peak in use (and at rest before); and the val set's decoded size
(images + labels as uint8, H x W x 4 bytes per image, what a decoded val set held in the object store
costs). Target: peak object store < 25% of the decoded val size. The paper's ResNet-50 takes seconds per
window on a CPU: the default model here is ResNet-18 with one head block (`--backbone resnet50` for the
paper's); the data path and the memory it needs do not depend on it.

    python benchmarks/bench_eval.py --size synscapes --images 16 [--workers 2] [--cpus-per-worker 1]

Last line: `eval: size=<s> images=<n> decoded_mib=<d> peak_object_store_mib=<o> object_store_share=<o/d>
peak_rss_mib=<max over workers>`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_data import SIZES, prepared_at_size  # noqa: E402

MIB = 1024**2


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _eval_loop(config: dict) -> None:
    import resource

    import ray.train
    import torch
    import torch.distributed as dist

    from raymh.data.worker_batches import val_batches
    from raymh.model import MultiHeadDeepLab, normalize_uint8
    from raymh.train.evaluate import evaluate_domains

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(config["threads"])
    torch.manual_seed(0)
    domain, num_classes = config["domain"], config["num_classes"]
    model = MultiHeadDeepLab({domain: num_classes}, backbone=config["backbone"], head_depth=config["head_depth"])
    rss_before = _rss_bytes()
    rows, t0 = [], time.perf_counter()

    def count(_domain, batch, _pred):
        rows.extend(batch["id"])

    val = {domain: val_batches(config["val_rows"], rank=rank, world_size=world)}
    evaluate_domains(model, val, {domain: num_classes}, normalize=normalize_uint8, mode="slide",
                     window=tuple(config["window"]), on_batch=count)  # fmt: skip
    mine = {"rank": rank, "rss_before": rss_before, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "rows": len(rows), "seconds": time.perf_counter() - t0}  # fmt: skip
    gathered: list = [mine]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, mine)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "workers.json").write_text(json.dumps(gathered))
        ray.train.report({"done": 1}, checkpoint=ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None)


class StorePoller:
    """Samples the local cluster's object-store bytes in use until stopped; keeps the peak."""

    def __init__(self, interval: float = 0.1) -> None:
        import ray
        from ray._private.internal_api import get_memory_info_reply, get_state_from_address

        self._state = get_state_from_address(ray.get_runtime_context().gcs_address)
        self._reply = get_memory_info_reply
        self.peak = self.at_rest = self.used()
        self._stop, self._interval = threading.Event(), interval
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def used(self) -> int:
        return int(self._reply(self._state).store_stats.object_store_bytes_used)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.peak = max(self.peak, self.used())

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", choices=sorted(SIZES), default="synscapes")
    p.add_argument("--images", type=int, default=16, help="val images to render (reused under --work)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--cpus-per-worker", type=int, default=1)
    p.add_argument("--backbone", default="resnet18", help="resnet50: the paper's (slow on CPUs)")
    p.add_argument("--window", type=int, nargs=2, default=(720, 720), help="slide window (the paper's crop)")
    p.add_argument("--shard-rows", type=int, default=256, help="rows per Parquet file (prepare's default: 256)")
    p.add_argument("--work", type=Path, default=None, help="folder to render into and reuse (default: a temporary one)")
    args = p.parse_args()

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from raymh.data.driver_datasets import build_domain_data
    from raymh.platform.cluster import init_ray

    init_ray(None, "local", num_cpus=args.workers * args.cpus_per_worker + 1, log_to_driver=False)
    with tempfile.TemporaryDirectory() as tmp:
        prepared = prepared_at_size(args.size, images=2, val_images=args.images, work=args.work or Path(tmp),
                                    shard_rows=args.shard_rows)
        dd = build_domain_data(prepared, domain="bench", crop_size=args.window, transforms_on="worker")
        sizes = pq.read_table(sorted(str(f) for f in (prepared / "val").glob("part-*.parquet")), columns=["height", "width"])
        decoded = sum(4 * h * w for h, w in zip(sizes["height"].to_pylist(), sizes["width"].to_pylist(), strict=True))
        poller = StorePoller()
        t0 = time.perf_counter()
        trainer = TorchTrainer(
            _eval_loop,
            train_loop_config={"domain": "bench", "num_classes": dd.num_classes, "backbone": args.backbone,
                               "head_depth": 1 if args.backbone == "resnet18" else 2, "window": list(args.window),
                               "threads": args.cpus_per_worker, "val_rows": dd.val},  # fmt: skip
            scaling_config=ray.train.ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": args.cpus_per_worker}),
            run_config=ray.train.RunConfig(name="bench_eval", storage_path=str(Path(tmp) / "runs")),
        )
        result = trainer.fit()
        seconds = time.perf_counter() - t0
        peak = poller.stop()
        with result.checkpoint.as_directory() as d:
            workers = json.loads((Path(d) / "workers.json").read_text())
    ray.shutdown()
    (h, w), enc = SIZES[args.size]
    print(f"setup: {args.size} {h}x{w} {enc}, {len(dd.val_ids)} val images, {args.workers} workers x "
          f"{args.cpus_per_worker} CPU, {args.backbone}, slide {tuple(args.window)}, {args.shard_rows} rows per Parquet "
          f"file; fit {seconds:.0f} s")
    for r in sorted(workers, key=lambda r: r["rank"]):
        print(f"worker {r['rank']}: {r['rows']} rows in {r['seconds']:.1f} s, RSS before eval {r['rss_before'] / MIB:.0f} MiB, "
              f"peak RSS {r['peak_rss'] / MIB:.0f} MiB")  # fmt: skip
    assert sum(r["rows"] for r in workers) == len(dd.val_ids), "every val row evaluated exactly once"
    print(f"object store: {poller.at_rest / MIB:.1f} MiB at rest, peak {peak / MIB:.1f} MiB in use; "
          f"decoded val set {decoded / MIB:.1f} MiB (target: peak < 25% of it)")
    print(f"eval: size={args.size} images={len(dd.val_ids)} decoded_mib={decoded / MIB:.1f} "
          f"peak_object_store_mib={peak / MIB:.1f} object_store_share={peak / decoded:.3f} "
          f"peak_rss_mib={max(r['peak_rss'] for r in workers) / MIB:.0f}")


if __name__ == "__main__":
    main()
