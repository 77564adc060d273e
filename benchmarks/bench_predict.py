"""`raymh predict`'s Ray Data path against a plain PyTorch loop: same images, same model, same threads.

The plain loop decodes, predicts (batches of --batch-size) and writes trainid PNGs in one process with
--threads torch threads. The Ray path is `run_predict`: decode tasks, one model actor with --threads
threads, write tasks, on a local Ray started beforehand. The model is the quickstart's architecture with
fresh weights (speed does not depend on training). images/s on both sides is the steady throughput, once
outputs flow: (images - 1) / (last output - first output); the Ray path's start-up (model load, Ray Data
plan, actor start) is `first_output_s`, from the call to its first written file.

    python benchmarks/bench_predict.py [--images 48] [--size 128 256] [--threads N] [--batch-size 4]

Last line: `predict: ray_vs_plain=<images/s ratio> images_s=<Ray path> first_output_s=<s>`.
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def make_checkpoint(directory: Path) -> None:
    import torch

    from raymh.config import load_config, to_yaml
    from raymh.data.labels import CITYSCAPES_CLASSES, CITYSCAPES_PALETTE
    from raymh.model import MultiHeadDeepLab
    from raymh.train.checkpoint import inference_record, save_state
    from raymh.train.optim import build_optimizer, poly_scheduler

    cfg = load_config("quickstart")
    torch.manual_seed(0)
    model = MultiHeadDeepLab({"cityscapes": 19}, backbone=cfg.model.backbone, output_stride=cfg.model.output_stride,
                             head_depth=cfg.model.head_depth, proj_dim=cfg.model.proj_dim)  # fmt: skip
    opt = build_optimizer(model, cfg.optim)
    domains = {"cityscapes": {"classes": CITYSCAPES_CLASSES, "palette": CITYSCAPES_PALETTE, "label_format": "trainid"}}
    save_state(
        directory, model=model, optimizer=opt, scheduler=poly_scheduler(opt, total_iters=1, power=0.9), step=0,
        best_score=0.0, config_yaml=to_yaml(cfg),
        inference=inference_record(cfg.model.model_dump(mode="json"), domains, precision=cfg.train.precision),
    )  # fmt: skip


def make_images(folder: Path, n: int, size: tuple[int, int]) -> None:
    from PIL import Image

    from raymh.data.synth.render import render_sample

    folder.mkdir(parents=True)
    for i in range(n):
        image = render_sample("cityscapes", index=i, split="val", size=size)["image"]
        Image.fromarray(image).save(folder / f"img_{i:04d}.png", compress_level=1)


def plain_loop(ckpt: Path, images: Path, out: Path, *, threads: int, batch_size: int) -> float:
    """Images/s of decode -> predict -> encode + write, in one process, once outputs flow."""
    import torch
    from PIL import Image

    from raymh.infer.formats import get_format
    from raymh.infer.loading import load_bundle
    from raymh.infer.segmenter import Segmenter

    torch.set_num_threads(threads)
    bundle = load_bundle(str(ckpt))
    seg = Segmenter(bundle)
    fmt, info = get_format("trainid"), bundle.domain("cityscapes")
    paths = sorted(images.glob("*.png"))
    out.mkdir(parents=True, exist_ok=True)
    stamps = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        decoded = [np.asarray(Image.open(io.BytesIO(p.read_bytes())).convert("RGB")) for p in chunk]
        for p, img, pred in zip(chunk, decoded, seg.predict(decoded, "cityscapes"), strict=True):
            (out / fmt.relpath(p.name)).write_bytes(fmt.encode(pred, img, info))
            stamps.append(time.perf_counter())
    return (len(stamps) - 1) / (stamps[-1] - stamps[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 256))
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--batch-size", type=int, default=4)
    args = parser.parse_args()

    import ray

    from raymh.infer.predict import run_predict
    from raymh.platform.cluster import init_ray

    with tempfile.TemporaryDirectory(prefix="raymh-bench-predict-") as tmp:
        tmp = Path(tmp)
        make_checkpoint(tmp / "ckpt")
        make_images(tmp / "images", args.images, tuple(args.size))
        print(f"[raymh] {args.images} images {args.size[0]}x{args.size[1]}, quickstart model, "
              f"{args.threads} torch thread(s), batch {args.batch_size}, {os.cpu_count()} CPUs", flush=True)  # fmt: skip
        plain_ips = plain_loop(tmp / "ckpt", tmp / "images", tmp / "plain", threads=args.threads,
                               batch_size=args.batch_size)  # fmt: skip
        print(f"[raymh] plain loop: {plain_ips:.2f} img/s", flush=True)
        init_ray(None, "local")  # raymh's own start: a dead head's record is never retried
        try:
            s = run_predict(str(tmp / "ckpt"), domain="cityscapes", input=str(tmp / "images"), out=tmp / "ray",
                            fmt="trainid", batch_size=args.batch_size, cpus_per_worker=args.threads, quiet=True)  # fmt: skip
        finally:
            ray.shutdown()
        assert s.written == args.images, s
        plain = sorted((tmp / "plain").glob("*.png"))
        same = sum((tmp / "ray" / p.name).read_bytes() == p.read_bytes() for p in plain)
        print(f"[raymh] identical label maps both ways: {same}/{len(plain)}", flush=True)
        print(f"[raymh] ray data path: {s.steady_images_per_s:.2f} img/s once outputs flow ({s.images_per_s:.2f} "
              f"over the whole {s.seconds:.1f}s run); first output after {s.first_output_s:.2f}s", flush=True)  # fmt: skip
        print(f"predict: ray_vs_plain={s.steady_images_per_s / plain_ips:.3f} images_s={s.steady_images_per_s:.2f} "
              f"first_output_s={s.first_output_s:.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
