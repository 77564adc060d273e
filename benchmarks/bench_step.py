"""Ray Train overhead: the Mix Loss training step run through TorchTrainer (1 worker) vs a plain loop.

Both sides run the identical step (`raymh.train.step.mix_loss_step` + the config's optimizer, with the
worker loop's precision) on the same config and the same Ray Data pipeline (per-domain labeled and
crop-pair batches, decoded where `data.transforms_on` says), with the same torch thread count, in one
run. Timed: wall time of each step (next batch, forward, backward, optimizer), after warmup.
Last line: `step: ray_overhead=<percent>`.

    python benchmarks/bench_step.py [--steps 30] [--warmup 5] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from raymh.config import ExperimentConfig, load_config

DEFAULT_SET = [
    "data.synthetic={images: 16, val_images: 4, size: [128, 256], seed: 0}",
    "loss.dc_start_iter=0",
]


def timed_steps(cfg: ExperimentConfig, num_classes: dict[str, int], batches, *, steps: int, warmup: int,
                prepare=None) -> list[float]:  # fmt: skip
    """Build model + SGD, run warmup + steps training steps, return the timed steps' seconds."""
    from raymh.model import MultiHeadDeepLab
    from raymh.train.checkpoint import unwrap
    from raymh.train.optim import build_optimizer, poly_scheduler
    from raymh.train.step import dc_weight_at, mix_loss_step
    from raymh.train.worker import precision_settings

    torch.manual_seed(0)
    model = MultiHeadDeepLab(num_classes, backbone=cfg.model.backbone, output_stride=cfg.model.output_stride,
                             head_depth=cfg.model.head_depth, proj_dim=cfg.model.proj_dim)  # fmt: skip
    if prepare is not None:
        model = prepare(model)
    opt = build_optimizer(unwrap(model), cfg.optim)
    sched = poly_scheduler(opt, total_iters=warmup + steps, power=cfg.optim.poly_power)
    model.train()
    autocast_dtype, channels_last = precision_settings(cfg, torch.device("cpu"))  # as the worker loop does
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        out = mix_loss_step(model, next(batches), cfg, step=i, dc_weight=dc_weight_at(i, cfg.loss), autocast_dtype=autocast_dtype, channels_last=channels_last)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def _ray_loop(config: dict) -> None:
    import ray.train
    import ray.train.torch

    from raymh.config import config_from_dict
    from raymh.data.worker_batches import StepBatches, train_shards
    from raymh.train.worker import worker_transforms

    cfg = config_from_dict(config["experiment"])
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    batches = StepBatches(list(config["num_classes"]), labeled_batch_size=cfg.data.labeled_batch_size,
                          unlabeled_batch_size=cfg.data.unlabeled_batch_size,
                          get_shard=train_shards(config["row_blocks"], seed=0, rank=0, world_size=1),
                          transforms=worker_transforms(cfg, rank=0))  # fmt: skip
    times = timed_steps(cfg, config["num_classes"], batches, steps=config["steps"], warmup=config["warmup"],
                        prepare=ray.train.torch.prepare_model)  # fmt: skip
    batches.close()
    with tempfile.TemporaryDirectory() as tmp:  # Train V2 returns only metrics reported with a checkpoint
        (Path(tmp) / "times.json").write_text(json.dumps(times))
        ray.train.report({"mean_step_s": statistics.mean(times)}, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="quickstart")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--set", dest="overrides", action="append", default=[])
    args = p.parse_args(argv)
    cfg = load_config(args.config, DEFAULT_SET + args.overrides + ["scaling.num_workers=1"])

    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    from raymh.data.sets import dataset_name
    from raymh.data.worker_batches import StepBatches, train_shards
    from raymh.platform.cluster import init_ray
    from raymh.run.driver import domain_sets
    from raymh.train.worker import worker_transforms

    init_ray(cfg)
    data = domain_sets(cfg)
    num_classes = {name: dd.num_classes for name, dd in data.items()}
    sets = {dataset_name(n, part): getattr(dd, part) for n, dd in data.items() for part in ("labeled", "unlabeled")}
    row_blocks = {n: s for dd in data.values() for n, s in dd.row_blocks().items()}  # data.transforms_on: worker
    datasets = {n: s for n, s in sets.items() if n not in row_blocks}

    # Plain single-process PyTorch loop on the same Ray Data pipeline.
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    batches = StepBatches(list(num_classes), labeled_batch_size=cfg.data.labeled_batch_size,
                          unlabeled_batch_size=cfg.data.unlabeled_batch_size,
                          get_shard=train_shards(row_blocks, seed=0, rank=0, world_size=1, get_shard=sets.__getitem__),
                          transforms=worker_transforms(cfg, rank=0))  # fmt: skip
    plain = timed_steps(cfg, num_classes, batches, steps=args.steps, warmup=args.warmup)
    batches.close()

    with tempfile.TemporaryDirectory() as storage:
        trainer = TorchTrainer(
            _ray_loop,
            train_loop_config={"experiment": cfg.model_dump(mode="json"), "num_classes": num_classes,
                               "steps": args.steps, "warmup": args.warmup, "row_blocks": row_blocks},  # fmt: skip
            scaling_config=ray.train.ScalingConfig(num_workers=1, resources_per_worker={"CPU": cfg.scaling.cpus_per_worker}),
            datasets=datasets,
            # as raymh.run.driver.build_trainer: one worker reads the sets whole (no split coordinators)
            dataset_config=ray.train.DataConfig(datasets_to_split=[]),
            run_config=ray.train.RunConfig(name="bench_step", storage_path=storage),
        )
        result = trainer.fit()
        with result.checkpoint.as_directory() as d:
            on_ray = json.loads((Path(d) / "times.json").read_text())

    plain_mean, ray_mean = statistics.mean(plain), statistics.mean(on_ray)
    overhead = ray_mean / plain_mean - 1
    print(f"config {args.config}: {cfg.model.backbone}, crops {list(cfg.data.crop_size)}, "
          f"{len(num_classes)} domains, {args.steps} timed steps after {args.warmup} warmup, "
          f"{cfg.scaling.cpus_per_worker} threads")  # fmt: skip
    print(f"plain loop: mean {plain_mean * 1e3:.1f} ms/step (median {statistics.median(plain) * 1e3:.1f})")
    print(f"TorchTrainer 1 worker: mean {ray_mean * 1e3:.1f} ms/step (median {statistics.median(on_ray) * 1e3:.1f})")
    print(f"step: ray_overhead={overhead * 100:.1f}%")
    ray.shutdown()
    return {"plain_s": plain_mean, "ray_s": ray_mean, "overhead": overhead}


if __name__ == "__main__":
    main()
