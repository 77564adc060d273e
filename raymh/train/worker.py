"""The Ray Train worker loop: counted steps of the Mix Loss, evaluation, checkpoints, rank-0 logging.

Every rank runs the same number of steps and calls `ray.train.report` at the same steps (each evaluation),
rank 0 passing the checkpoint. A restarted worker group resumes from `ray.train.get_checkpoint()`.
"""

from __future__ import annotations

import json
import logging
import math
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from raymh import streams
from raymh.config import config_from_dict, to_yaml
from raymh.data.batch_transforms import train_transforms
from raymh.data.task_decode import task_shards
from raymh.data.worker_batches import StepBatches, step_images, train_shards, val_batches
from raymh.losses.world import World
from raymh.model import build_model, normalize_uint8
from raymh.model.precision import native_bf16
from raymh.model.sync_bn import convert_world_batchnorm, sync_bn_enabled
from raymh.platform.tracking import TrackedRun
from raymh.train import artifacts
from raymh.train.checkpoint import inference_record, load_state, save_state, unwrap
from raymh.train.digest import LabeledDigest
from raymh.train.domain_ranks import (
    DomainRanks,
    attach_groups,
    buffer_sources,
    everywhere,
    serving,
    sync_buffers,
)
from raymh.train.evaluate import evaluate_domains, miou_metrics
from raymh.train.optim import build_optimizer, poly_scheduler
from raymh.train.progress import Eta
from raymh.train.step import dc_weight_at, mix_loss_step
from raymh.train.stop_flag import WorkerStopCheck


class NonFiniteLossError(RuntimeError):
    """The Mix Loss became NaN or infinite; the message names the step and the domain terms."""


def precision_settings(cfg, device: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None, channels_last): under 'auto', bf16 + channels_last where bf16 is native, else fp32."""
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and native_bf16(device))
    channels_last = cfg.train.channels_last if cfg.train.channels_last is not None else bf16
    return (torch.bfloat16 if bf16 else None), channels_last


def seed_rank_generators(cfg, rank: int, step: int) -> None:
    """Seed this rank's global generators (torch: dropout; numpy, Python) from its own stream at `step`:
    distinct per (seed, rank, step), fresh but reproducible after a resume (`raymh.streams`)."""
    seed = streams.int_seed(cfg.train.seed, "rank_torch", rank=rank, index=step)
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def decode_task_wrap(cfg, *, rank: int):
    """train_shards' wrap when data.transforms_on is 'tasks' (each set's batches decoded by Ray tasks), else None.
    The n-th batch of a set is augmented from its own streams (train.seed, domain, rank, n), so a resumed
    run decodes exactly the batches an uninterrupted one would have."""
    if cfg.data.transforms_on != "tasks":
        return None
    placed = cfg.scaling.placement == "by_domain"
    return task_shards(
        crop_size=cfg.data.crop_size, scale_range=cfg.data.scale_range,
        unlabeled_scale_range=cfg.data.unlabeled_scale_range, seed=cfg.train.seed, rank=rank,
        in_flight=cfg.data.tasks_in_flight, num_cpus=cfg.scaling.data_cpus or 1,
        selectors={d.name: d.placement for d in cfg.domains} if placed else None,
    )  # fmt: skip


def worker_transforms(cfg, *, rank: int):
    """The decode + augment functions StepBatches applies when data.transforms_on is 'worker', else None."""
    if cfg.data.transforms_on != "worker":
        return None
    return train_transforms(
        crop_size=cfg.data.crop_size,
        scale_range=cfg.data.scale_range,
        unlabeled_scale_range=cfg.data.unlabeled_scale_range,
        seed=cfg.train.seed,
        rank=rank,
    )


def consumed_batches(cfg, start: int) -> dict[str, int]:
    """The batches of each part a rank took before step `start`: one labeled batch per step, one unlabeled
    batch per step that forwarded crop pairs (lambda > 0)."""
    return {"labeled": start, "unlabeled": sum(dc_weight_at(s, cfg.loss) > 0 for s in range(start))}


@dataclass
class Replica:
    """One rank's training state: the (DDP-wrapped) model, its optimizer and schedule, where it starts."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    start: int = 0
    best: float = -math.inf


def setup_replica(
    cfg, domains: dict[str, dict], *, rank: int, world: int, channels_last: bool = False, checkpoint=None,
    prepare=None, domain_ranks: DomainRanks | None = None,
) -> Replica:
    """Build this rank's model (the same initial weights on every rank; BatchNorm over all ranks when
    model.sync_bn), wrap it for DDP (`prepare`, default Ray Train's prepare_model), restore a checkpoint,
    then seed this rank's global generators for the step it starts at (`seed_rank_generators`).

    Inside a training step dropout draws each image's masks from that image's own stream (step, domain,
    part, index in the global batch: `raymh.model.dropout.SampleDropout`) and augmentation has streams of
    its own (`raymh.data.batch_transforms.augment_part`); the rank's global generators serve what draws
    outside those (dropout in a forward outside a step). They are seeded after everything else, in fresh and
    resumed runs alike, from (seed, rank, step).
    domain_ranks: placement by domain (`raymh.train.domain_ranks.by_domain`): BatchNorm groups per head,
    and no DDP buffer broadcast (rank 0's running statistics of other domains' heads are stale)."""
    torch.manual_seed(streams.int_seed(cfg.train.seed, "init"))  # the same initial weights on every rank
    model = build_model(cfg.model, {d: info["num_classes"] for d, info in domains.items()}, load_pretrained=True)
    placed = domain_ranks is not None and domain_ranks.roles is not None
    if sync_bn_enabled(cfg.model.sync_bn, world):
        model = convert_world_batchnorm(model)
        if placed:
            attach_groups(model, domain_ranks)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if prepare is None:
        prepare = ray.train.torch.prepare_model
    # Heads and the projection may sit out a step (DCLoss before dc_start_iter; under placement, every other
    # domain's head): DDP must allow it.
    ddp = {"find_unused_parameters": True, **({"broadcast_buffers": False} if placed else {})}
    model = prepare(model, parallel_strategy_kwargs=ddp)
    optimizer = build_optimizer(unwrap(model), cfg.optim)
    scheduler = poly_scheduler(optimizer, total_iters=cfg.train.iters, power=cfg.optim.poly_power)
    replica = Replica(model, optimizer, scheduler)
    if checkpoint is not None:
        with checkpoint.as_directory() as ckpt_dir:
            restored = load_state(ckpt_dir, model=model, optimizer=optimizer, scheduler=scheduler)
        replica.start, replica.best = restored["step"], restored["best_score"]
    seed_rank_generators(cfg, rank, replica.start)  # per rank; fresh but reproducible after a resume
    return replica


def _any_rank(flag: bool, world: int) -> bool:
    """True on every rank when `flag` is True on any rank (one all-reduce of one number)."""
    value = torch.tensor([1.0 if flag else 0.0])
    if world > 1:
        if dist.get_backend() == "nccl":
            value = value.cuda()
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return value.item() > 0.0


def _all_ranks_finite(value: torch.Tensor, world: int) -> bool:
    return not _any_rank(not torch.isfinite(value).item(), world)


_SAY = {"label": None}  # this worker process's train loop's console label (a Tune trial's name), set once


def say(message: str) -> None:
    """A progress line for the driver's console, printed once; a Tune trial's lines start with its name.

    Train V2 patches `print` in workers to log through the root logger and, when something has wrapped
    sys.stdout, to print as well; both reach the driver, so every line showed twice. Writing to the real
    stdout bypasses the patch; Ray forwards it to the driver once."""
    label = f"{_SAY['label']}: " if _SAY["label"] else ""
    print(f"[raymh] {label}{message}", file=sys.__stdout__, flush=True)


def quiet_ray_logs() -> None:
    """Keep the driver's console to raymh's progress: Ray Data logs every epoch restart of every set and Ray
    Train every report with all its metrics (both at INFO, forwarded to the driver); warnings still show."""
    names = ["ray.data", "ray.train"]
    try:  # Train V2's report line comes from a logger named by its module's file path (Ray 2.60)
        from ray.train.v2._internal.execution import context as train_context

        names.append(train_context.__file__)
    except ImportError:  # a private module: other Ray versions may move it; the line then just shows
        pass
    for name in names:
        logging.getLogger(name).setLevel(logging.WARNING)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    quiet_ray_logs()
    _SAY["label"] = config.get("console_label")
    cfg = config_from_dict(config["experiment"])
    domains: dict[str, dict] = config["domains"]  # name -> {"num_classes", "classes", "palette"}
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(cfg.scaling.cpus_per_worker)  # Ray sets OMP_NUM_THREADS=1 otherwise
    device = ray.train.torch.get_device()
    autocast_dtype, channels_last = precision_settings(cfg, device)
    ranks = serving(cfg, list(domains), world, node_labels=ray.get_runtime_context().get_node_labels)
    replica = setup_replica(
        cfg, domains, rank=rank, world=world, channels_last=channels_last, checkpoint=ray.train.get_checkpoint(),
        domain_ranks=ranks,
    )  # fmt: skip
    model, optimizer, scheduler, start, best = (
        replica.model, replica.optimizer, replica.scheduler, replica.start, replica.best
    )
    if rank == 0 and start:
        say(f"resumed from checkpoint at step {start}/{cfg.train.iters} on {world} worker(s)")
    if ranks.roles is not None:
        role = ranks.roles[rank]
        say(f"rank {rank} on node {ray.get_runtime_context().get_node_id()[:8]} serves domain {role.domain} "
            f"({role.index + 1}/{len(role.ranks)})")
    loss_world = World(world)
    shard_rank, shard_world = ranks.shard(rank, world)

    tracked = None
    if rank == 0 and config.get("mlflow"):
        m = config["mlflow"]
        tracked = TrackedRun(m["uri"], m["run_id"], spool=Path(m["spool"]), offline_reason=m.get("offline_reason"))

    stop = WorkerStopCheck(config.get("stop_flag") if rank == 0 else None)
    consumed = consumed_batches(cfg, start)
    batches = StepBatches(
        ranks.served,
        labeled_batch_size=cfg.batch_per_worker("labeled", shard_world),  # elastic: global / this world
        unlabeled_batch_size=cfg.batch_per_worker("unlabeled", shard_world),
        device=device,
        transforms=worker_transforms(cfg, rank=rank),
        first_batches=consumed,
        get_shard=train_shards(
            config.get("row_blocks"), seed=cfg.train.seed, rank=shard_rank, world_size=shard_world,
            consumed_batches=consumed, wrap=decode_task_wrap(cfg, rank=rank),  # per batch: a resume reads the same
        ),  # fmt: skip
    )
    digest = LabeledDigest() if rank == 0 and start == 0 else None  # what the run trained on (report pairs by it)
    model.train()
    t_log, images_since = time.perf_counter(), 0
    eta = Eta(cfg.train.iters, restart_at=[cfg.loss.dc_start_iter])  # DCLoss steps cost about twice as much
    for step in range(start, cfg.train.iters):
        eta.step_starts(step)
        lam = dc_weight_at(step, cfg.loss)  # lambda_t: the one value of this step, passed down
        batch = batches.next_batch(unlabeled=lam > 0)  # no unlabeled work before DCLoss
        if digest is not None and digest.add(step, batch, final=step + 1 == cfg.train.iters) and tracked:
            tracked.set_tags(digest.tags())
        # the same on every rank: the diagnostics of a logging step are collectives (rank 0 logs them)
        logging_step = (step + 1) % cfg.train.log_every == 0 or step + 1 == cfg.train.iters
        out = mix_loss_step(
            model, batch, cfg, step=step, dc_weight=lam, device=device, autocast_dtype=autocast_dtype,
            channels_last=channels_last, diagnostics=logging_step, world=loss_world, domain_worlds=ranks.worlds,
        )  # fmt: skip
        if not _all_ranks_finite(out.loss.detach().cpu(), world):
            bad = {k: v for k, v in out.parts.items() if not math.isfinite(v)}
            raise NonFiniteLossError(
                f"non-finite Mix Loss at step {step} (rank {rank}): {bad or 'on another rank'}; "
                f"training stopped, checkpoints so far are kept under {config.get('run_dir', 'the run dir')}. "
                "Lower optim.lr or check the data of the named domain."
            )
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        scheduler.step()
        images_since += step_images(batch)  # forwarded images only

        done = step + 1
        if logging_step and rank == 0:
            now = time.perf_counter()
            ips = images_since * world / max(now - t_log, 1e-9)
            metrics = {f"train/{k}": v for k, v in {**out.parts, **out.stats}.items()}
            metrics.update({"train/lr": scheduler.get_last_lr()[0], "train/images_per_s": ips, "train/world_size": world})
            if tracked:
                tracked.log_metrics(metrics, step=done)
            terms = " ".join(f"{k}={v:.3f}" for k, v in out.parts.items() if k != "dc_weight")
            say(f"step {done}/{cfg.train.iters} eta {eta.seconds(done) / 60:.1f}m {terms} {ips:.1f} img/s")
            t_log, images_since = now, 0

        saved = False
        if done % cfg.train.eval_every == 0 or done == cfg.train.iters:
            metrics = _evaluate(model, cfg, domains, device, autocast_dtype, channels_last, rank, world, done, tracked,
                                val_rows=config["val_rows"], domain_ranks=ranks)
            best = max(best, metrics["val/miou_mean"])
            metrics.update({"step": done, "best/miou_mean": best, "checkpoint/kind": "eval"})
            _report(metrics, model, optimizer, scheduler, done, best, cfg, rank, config, ranks)
            saved = True
        elif done % cfg.train.checkpoint_every == 0:
            _report(_step_metrics(done, best, "step"), model, optimizer, scheduler, done, best, cfg, rank, config, ranks)
            saved = True
        if done < cfg.train.iters and _any_rank(rank == 0 and stop.requested(), world):
            if not saved:
                _report(_step_metrics(done, best, "interrupt"), model, optimizer, scheduler, done, best, cfg, rank, config, ranks)
            if rank == 0:
                say(f"stopped at step {done}/{cfg.train.iters} on request; checkpoint saved at step {done}")
            return


def _evaluate(
    model, cfg, domains, device, autocast_dtype, channels_last, rank, world, step, tracked, *, val_rows,
    domain_ranks: DomainRanks | None = None,
) -> dict:
    """Every rank scores its share of the val rows; under placement, of its own domain's only (another
    domain's val images are never read off its site), and panels are drawn only of the domains whose
    predictions may leave their site (`domains[].share_predictions`)."""
    ranks = domain_ranks or everywhere(list(domains))
    sync_buffers(model, world, buffer_sources(ranks))  # every rank scores with the model the checkpoint holds
    panels: dict[str, list] = {d: [] for d in domains}  # (id, image, label, pred) of this rank's first val rows
    shared = {d for d in domains if cfg.shares_predictions(d)}

    def keep_panel(domain, batch, pred):
        if domain not in shared:
            return
        for i in range(batch["image"].shape[0]):
            if len(panels[domain]) >= cfg.train.panels:
                return
            img = batch["image"][i].permute(1, 2, 0).cpu().numpy()
            panels[domain].append((batch["id"][i], img, batch["label"][i].cpu().numpy(), pred[i].cpu().numpy()))

    shares = {d: ranks.val_share(d, rank, world) for d in domains}
    val = {
        d: val_batches(val_rows[d], rank=share[0], world_size=share[1], size=cfg.data.val_size) if share else iter(())
        for d, share in shares.items()
    }  # a domain this rank does not serve: no rows, a zero confusion matrix in the sum
    cms = evaluate_domains(
        unwrap(model), val, {d: i["num_classes"] for d, i in domains.items()},
        normalize=normalize_uint8, device=device, mode=cfg.train.eval_mode,
        window=cfg.train.eval_crop or cfg.data.crop_size, autocast_dtype=autocast_dtype,
        channels_last=channels_last, on_batch=keep_panel,
    )  # fmt: skip
    metrics = miou_metrics(cms, {d: i["classes"] for d, i in domains.items()})
    if world > 1 and cfg.train.panels and shared:  # rank 0 may hold no val row of a domain: all ranks'
        gathered: list | None = [None] * world if rank == 0 else None
        dist.gather_object(panels, gathered, dst=0)  # to rank 0 only, which logs them
        if rank == 0:
            panels = {
                d: sorted((p for part in gathered for p in part[d]), key=lambda t: t[0])[: cfg.train.panels]
                for d in domains
            }
    if rank == 0:
        table = " ".join(f"{d}={metrics[f'val/miou/{d}']:.3f}" for d in domains)
        say(f"eval step {step}: mIoU {table} mean={metrics['val/miou_mean']:.3f}")
        if tracked:
            tracked.log_metrics(metrics, step=step)
            with tempfile.TemporaryDirectory() as tmp:
                for d, cm in cms.items():
                    artifacts.save_confusion(cm.mat.numpy(), domains[d]["classes"], Path(tmp) / "confusion", d)
                    if panels[d]:
                        rows = [artifacts.prediction_panel(*p[1:], domains[d]["palette"]) for p in panels[d]]
                        artifacts.save_panels(rows, Path(tmp) / "panels" / f"{d}.png")
                        if step == cfg.train.iters:  # the final model's raw predictions, for figures across runs
                            artifacts.save_predictions(panels[d], domains[d]["palette"], Path(tmp) / "predictions" / d)
                tracked.log_artifact(Path(tmp) / "confusion", f"eval/step_{step:06d}/confusion")
                if any(panels.values()):
                    tracked.log_artifact(Path(tmp) / "panels", f"eval/step_{step:06d}/panels")
                if (Path(tmp) / "predictions").is_dir():
                    tracked.log_artifact(Path(tmp) / "predictions", "eval/final/predictions")
    return metrics


# The score Ray's CheckpointConfig sees for a checkpoint written between evaluations: below every mIoU, so
# it never counts among the num_to_keep best (Ray always keeps the latest). Finite on purpose: Ray's saved
# checkpoint-manager state turns NaN and inf into null, which breaks its ranking after a resume.
UNSCORED = -1.0


def _step_metrics(step: int, best: float, kind: str) -> dict:
    """What a checkpoint between evaluations reports (kind: "step" or "interrupt"); no val score."""
    return {"step": step, "best/miou_mean": best, "checkpoint/kind": kind}


def _report(metrics, model, optimizer, scheduler, step, best, cfg, rank, config, ranks: DomainRanks) -> None:
    """Every rank reports at the same steps; rank 0 attaches the checkpoint (under placement, with every
    head's BatchNorm statistics from a rank of its domain)."""
    if ranks.roles is not None:
        sync_buffers(model, dist.get_world_size(), buffer_sources(ranks))
    clean = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
    reported = {"val/miou_mean": UNSCORED, **clean}  # Ray ranks checkpoints by it
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = None
        if rank == 0:
            mlflow_run_id = (config.get("mlflow") or {}).get("run_id")
            save_state(
                tmp, model=model, optimizer=optimizer, scheduler=scheduler, step=step, best_score=best,
                config_yaml=to_yaml(cfg), mlflow_run_id=mlflow_run_id,
                inference=inference_record(
                    cfg.model.model_dump(mode="json"), config["domains"], mode=cfg.train.eval_mode,
                    window=cfg.train.eval_crop or cfg.data.crop_size, precision=cfg.train.precision,
                    channels_last=cfg.train.channels_last,
                ),
            )  # fmt: skip
            (Path(tmp) / "metrics.json").write_text(json.dumps(clean, indent=1))
            checkpoint = ray.train.Checkpoint.from_directory(tmp)
        ray.train.report(reported, checkpoint=checkpoint)
