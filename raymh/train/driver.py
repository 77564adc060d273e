"""The driver side of `raymh train` and `raymh eval`: data, MLflow run, TorchTrainer, results table.

Run layout under `tracking.storage_path` (absolute): `<run_name>/` is Ray Train's run directory (its
`checkpoint_*` folders); `<run_name>/raymh/` holds `run.json` (MLflow run id and URI), the resolved
`config.yaml`, the labeled/unlabeled split lists and `mlflow_unsent.jsonl` if tracking was unreachable.
Fresh runs get unique names; a reused name is refused (Ray would silently resume it): `--resume RUN` is
the explicit way to continue one.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import secrets
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raymh.config import (
    ConfigError,
    ExperimentConfig,
    config_from_dict,
    flatten,
    load_config,
    load_config_dict,
    to_yaml,
)
from raymh.train import places
from raymh.train.cluster import init_ray
from raymh.train.tracking import TrackedRun, resolve_tracking_uri

RUN_FILES = "raymh"


@dataclass
class FitOutcome:
    ok: bool
    run_name: str
    run_dir: Path
    metrics: dict[str, Any] = field(default_factory=dict)
    checkpoint: str | None = None
    best_checkpoint: str | None = None
    mlflow_run_id: str | None = None
    error: str | None = None


def storage_root(cfg: ExperimentConfig) -> str:
    """Absolute storage path (local paths resolved, in a Ray job against a stable home; URIs such as s3:// kept)."""
    return places.resolve_local(cfg.tracking.storage_path)


def fresh_run_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, cwd=Path(__file__).parent
        )
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def run_tags(cfg: ExperimentConfig) -> dict[str, str]:
    import ray
    import torch

    from raymh import __version__

    tags = {
        "raymh.version": __version__,
        "torch.version": torch.__version__,
        "ray.version": ray.__version__,
        "python.version": platform.python_version(),
        "domains": ",".join(d.name for d in cfg.domains),
        "label_ratio": ",".join(f"{d.name}={cfg.labeled_fraction(d)}" for d in cfg.domains),
        "preset": cfg.name,
    }
    commit = _git_commit()
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def build_domain_data(cfg: ExperimentConfig) -> dict[str, Any]:
    """Prepared dirs -> per-domain Ray Datasets (labeled, unlabeled, val) and their split lists."""
    from raymh.data.cache import prepared_dirs
    from raymh.data.pipeline import build_domain_data as build_one

    prepared = prepared_dirs(cfg)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines drown raymh's own
    min_rows = cfg.scaling.num_workers * max(cfg.data.labeled_batch_size, cfg.data.unlabeled_batch_size)

    def build(d):
        return build_one(
            prepared[d.name],
            domain=d.name,
            labeled_fraction=cfg.labeled_fraction(d),
            split_file=d.split_file,
            seed=cfg.data.split_seed,
            crop_size=tuple(cfg.data.crop_size),
            scale_range=tuple(cfg.data.scale_range),
            unlabeled_scale_range=tuple(cfg.data.unlabeled_scale_range),
            val_size=tuple(cfg.data.val_size) if cfg.data.val_size else None,
            min_rows=min_rows,
            num_cpus_per_task=cfg.scaling.data_cpus or 1,
            transforms_on=cfg.data.transforms_on,
        )

    # Domains build side by side: each one waits on Ray Data executions (materializing val, and the train
    # sets in the ray_data mode) that are mostly scheduling latency, so threads overlap them.
    with ThreadPoolExecutor(max_workers=len(cfg.domains), thread_name_prefix="raymh-build") as pool:
        built = list(pool.map(build, cfg.domains))
    return {d.name: dd for d, dd in zip(cfg.domains, built, strict=True)}


def build_trainer(
    cfg: ExperimentConfig,
    domain_data: dict[str, Any],
    *,
    run_name: str,
    mlflow: dict[str, Any] | None,
    callbacks: list | None = None,
):
    """The TorchTrainer of one experiment (Train V2)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from raymh.data.pipeline import dataset_name
    from raymh.train.worker import train_loop_per_worker

    datasets, to_split = {}, []
    for name, dd in domain_data.items():
        for part in ("labeled", "unlabeled", "val"):
            datasets[dataset_name(name, part)] = getattr(dd, part)
        to_split += [dataset_name(name, "labeled"), dataset_name(name, "unlabeled")]
    if cfg.scaling.num_workers == 1:
        # One worker reads everything: no streaming_split, so no split-coordinator actor per dataset (six
        # of them cost over a core here); the worker runs the Ray Data executors itself.
        to_split = []
    s = cfg.scaling
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    run_dir = Path(storage_root(cfg)) / run_name if "://" not in storage_root(cfg) else None
    loop_config = {
        "experiment": cfg.model_dump(mode="json"),
        "domains": {
            name: {"num_classes": dd.num_classes, "classes": list(dd.manifest["classes"]), "palette": dd.manifest["palette"]}
            for name, dd in domain_data.items()
        },
        "mlflow": mlflow,
        "run_dir": str(run_dir) if run_dir else f"{storage_root(cfg)}/{run_name}",
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.num_workers, use_gpu=s.use_gpu, resources_per_worker=resources
        ),
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=to_split),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_root(cfg),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.num_to_keep,
                checkpoint_score_attribute="val/miou_mean",
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            callbacks=callbacks or None,
        ),
    )


def _run_files(cfg: ExperimentConfig, run_name: str) -> Path:
    root = storage_root(cfg)
    base = Path(root) if "://" not in root else places.records_base().path / "ray_results_local"
    return base / run_name / RUN_FILES


def fit(
    cfg: ExperimentConfig,
    *,
    resume: str | None = None,
    address: str | None = None,
    parent_run_id: str | None = None,
    callbacks: list | None = None,
    quiet: bool = False,
    sampled: dict[str, Any] | None = None,
) -> FitOutcome:
    """Train one experiment end to end; prints progress and a results table; never loses the run record."""
    if resume:
        files = _run_files(cfg, resume)
        if not (files / "run.json").is_file():
            raise FileNotFoundError(
                f"--resume {resume}: no run record at {files}/run.json (runs live under tracking.storage_path="
                f"{storage_root(cfg)}; pass the same --set tracking.storage_path=... as the original run)"
            )
        run_name, record = resume, json.loads((files / "run.json").read_text())
        cfg = config_from_dict(
            load_config_dict(str(files / "config.yaml")), where=f"{files / 'config.yaml'}"
        )  # the run's own config: same schedule, same data
    else:
        run_name = cfg.tracking.run_name or fresh_run_name(cfg)
        files = _run_files(cfg, run_name)
        if files.parent.exists():
            raise ConfigError(
                f"run {run_name!r} already exists under {files.parent.parent}: Ray would silently resume it. "
                f"Use `--resume {run_name}` to continue it, or pick another tracking.run_name."
            )
        record = None

    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    say(f"[raymh] {'resuming' if resume else 'training'} {run_name}: domains {[d.name for d in cfg.domains]}, "
        f"{cfg.model.backbone} OS{cfg.model.output_stride}, {cfg.train.iters} steps, lambda {cfg.loss.dc_weight}, "
        f"{cfg.scaling.num_workers} worker(s) x {cfg.scaling.cpus_per_worker} CPU{' + GPU' if cfg.scaling.use_gpu else ''}")
    uri = record["tracking_uri"] if record else resolve_tracking_uri(cfg)  # a resumed run stays in its store
    if where := places.announce(storage_root(cfg), uri):
        say(where)
    init_ray(cfg, address)
    places.check_shared(storage_root(cfg), uri)  # on 2+ nodes: every node must see the records' paths
    domain_data = build_domain_data(cfg)
    files.mkdir(parents=True, exist_ok=True)
    spool = files / "mlflow_unsent.jsonl"
    if record is None:
        tracked = TrackedRun.create(
            uri, experiment=cfg.tracking.experiment, run_name=run_name, spool=spool,
            parent_run_id=parent_run_id, tags=run_tags(cfg),
        )  # fmt: skip
        (files / "config.yaml").write_text(to_yaml(cfg))
        record = {"run_name": run_name, "mlflow_run_id": tracked.run_id, "tracking_uri": uri}
        (files / "run.json").write_text(json.dumps(record, indent=1))
        tracked.log_params(flatten(cfg))
        if sampled:  # a Tune trial: its sampled values, also under their own names
            tracked.log_params({f"sampled.{k}": v for k, v in sampled.items()})
        from raymh.data.pipeline import write_split_lists

        for dd in domain_data.values():
            write_split_lists(files / "splits", dd)
        tracked.log_artifact(files / "config.yaml", "config")
        tracked.log_artifact(files / "splits", "splits")
    else:
        tracked = TrackedRun(record["tracking_uri"], record["mlflow_run_id"], spool=spool)
        tracked.set_tags({"resumed": "true"})
    say(f"[raymh] MLflow: {uri} run {tracked.run_id or '(offline)'}; run files: {files}")

    mlflow_info = {"uri": uri, "run_id": tracked.run_id, "spool": str(spool), "offline_reason": tracked.offline_reason}
    trainer = build_trainer(cfg, domain_data, run_name=run_name, mlflow=mlflow_info, callbacks=callbacks)
    from ray.train import TrainingFailedError

    try:
        result = trainer.fit()
    except TrainingFailedError as e:
        tracked.end("FAILED")
        msg = _failure_message(e)
        print(f"[raymh] training failed: {msg}\n[raymh] checkpoints and run files are kept under {files.parent}; "
              f"continue with `raymh train --resume {run_name}`", file=sys.stderr, flush=True)
        return FitOutcome(False, run_name, files.parent, mlflow_run_id=tracked.run_id, error=msg)

    best = _best_checkpoint(result)
    outcome = FitOutcome(
        True, run_name, files.parent, metrics=dict(result.metrics or {}),
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        best_checkpoint=best, mlflow_run_id=tracked.run_id,
    )  # fmt: skip
    if cfg.tracking.log_model and result.checkpoint is not None and tracked.online:
        _log_model(tracked, result.checkpoint.path, domain_data, cfg)
    tracked.end("FINISHED")
    if not quiet:
        print(results_table(outcome, cfg, uri), flush=True)
    return outcome


def _failure_message(e: Exception) -> str:
    failures = getattr(e, "worker_failures", None)
    if failures:
        first = next(iter(failures.values()))
        return f"{type(first).__name__}: {first}".splitlines()[0] if str(first) else repr(first)
    return str(e).splitlines()[-1] if str(e) else repr(e)


def _best_checkpoint(result) -> str | None:
    scored = [(m.get("val/miou_mean", -math.inf), c.path) for c, m in (result.best_checkpoints or [])]
    return max(scored)[1] if scored else None


def _log_model(tracked: TrackedRun, checkpoint_path: str, domain_data: dict, cfg: ExperimentConfig) -> None:
    """Log the final model with mlflow.pytorch.log_model (weights from the latest checkpoint)."""
    import mlflow
    import torch

    from raymh.train.checkpoint import model_from_checkpoint

    model = model_from_checkpoint(checkpoint_path, cfg.model, {n: dd.num_classes for n, dd in domain_data.items()})
    try:
        mlflow.set_tracking_uri(tracked.uri)
        with mlflow.start_run(run_id=tracked.run_id):
            # pickle: the model's forward takes (images, domain), which pt2 tracing from one example cannot cover
            mlflow.pytorch.log_model(
                model, name="model", serialization_format="pickle",
                pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"],
            )  # fmt: skip
    except Exception as e:  # noqa: BLE001 - tracking trouble never loses the run: the checkpoint has the weights
        print(f"[raymh] could not log the model to MLflow ({type(e).__name__}: {e}); weights are in {checkpoint_path}",
              file=sys.stderr, flush=True)


def results_table(outcome: FitOutcome, cfg: ExperimentConfig, uri: str) -> str:
    m = outcome.metrics
    rows = [("domain", "val mIoU"), *[(d.name, f"{m.get(f'val/miou/{d.name}', math.nan):.4f}") for d in cfg.domains]]
    rows.append(("mean", f"{m.get('val/miou_mean', math.nan):.4f}"))
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"\n{'=' * 40}", f"run {outcome.run_name}: finished at step {m.get('step', '?')}"]
    lines += [f"  {a:<{width}}{b}" for a, b in rows]
    lines += [
        f"best mean mIoU {m.get('best/miou_mean', math.nan):.4f}",
        f"checkpoints:  {outcome.run_dir} (latest {outcome.checkpoint}; best {outcome.best_checkpoint})",
        f"MLflow:       {uri} (experiment {cfg.tracking.experiment!r}, run {outcome.mlflow_run_id})",
        f"browse:       mlflow ui --backend-store-uri {uri} --host 127.0.0.1",
        "=" * 40,
    ]
    return "\n".join(lines)


def evaluate_checkpoint(
    checkpoint: str, *, config: str | None = None, overrides: list[str] | None = None, address: str | None = None
) -> dict[str, float]:
    """`raymh eval`: load a checkpoint (or a run's best one) and evaluate every domain's val split."""
    import torch

    from raymh.data.pipeline import dataset_name, val_batches
    from raymh.model import normalize_uint8
    from raymh.train.checkpoint import CONFIG_FILE, model_from_checkpoint
    from raymh.train.evaluate import evaluate_domains, miou_metrics

    ckpt = find_checkpoint(checkpoint)
    cfg = load_config(config or str(ckpt / CONFIG_FILE), overrides or [])
    print(f"[raymh] evaluating {ckpt} on {[d.name for d in cfg.domains]} ({cfg.train.eval_mode})", flush=True)
    init_ray(cfg, address, train=False)
    data = build_domain_data(cfg)
    model = model_from_checkpoint(ckpt, cfg.model, {n: dd.num_classes for n, dd in data.items()})
    sets = {dataset_name(n, "val"): dd.val for n, dd in data.items()}
    val = {n: val_batches(n, rank=0, world_size=1, get_shard=sets.__getitem__) for n in data}
    torch.set_num_threads(cfg.scaling.cpus_per_worker)
    cms = evaluate_domains(
        model, val, {n: dd.num_classes for n, dd in data.items()}, normalize=normalize_uint8,
        mode=cfg.train.eval_mode, window=cfg.train.eval_crop or cfg.data.crop_size,
    )  # fmt: skip
    metrics = miou_metrics(cms, {n: list(dd.manifest["classes"]) for n, dd in data.items()})
    for n in data:
        print(f"  {n:<14}{metrics[f'val/miou/{n}']:.4f}")
    print(f"  {'mean':<14}{metrics['val/miou_mean']:.4f}", flush=True)
    return metrics


def find_checkpoint(path_or_run: str, storage_path: str | None = None) -> Path:
    """A checkpoint dir as given, or the best-scoring checkpoint of a run directory / run name."""
    from raymh.train.checkpoint import STATE_FILE

    path = Path(path_or_run).expanduser()
    if not path.exists() and storage_path is None:
        path = Path(storage_root(load_config("quickstart"))) / path_or_run
    if (path / STATE_FILE).is_file():
        return path
    candidates = sorted(path.glob(f"checkpoint_*/{STATE_FILE}")) if path.is_dir() else []
    if not candidates:
        raise FileNotFoundError(f"{path_or_run}: neither a checkpoint dir (with {STATE_FILE}) nor a run dir with checkpoints")
    import torch

    def score(p: Path) -> float:
        metrics = p.parent / "metrics.json"
        if metrics.is_file():
            return json.loads(metrics.read_text()).get("val/miou_mean", -math.inf)
        return torch.load(p, map_location="cpu", weights_only=False)["step"]

    return max(candidates, key=score).parent
