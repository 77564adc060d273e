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
import secrets
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from raymh import console
from raymh.config import (
    ConfigError,
    ExperimentConfig,
    TrackingConfig,
    config_from_dict,
    flatten,
    load_config_dict,
    to_yaml,
)
from raymh.platform import records
from raymh.platform.cluster import init_ray
from raymh.platform.tracking import (
    TrackedRun,
    fluent_tracking_uri,
    resolve_tracking_uri,
    run_description,
    run_tags,
)
from raymh.run.interrupt import create_stop_flag, exit_now, run_interruptible, stop_flag_name

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
    return records.resolve_local(cfg.tracking.storage_path)


def fresh_run_name(cfg: ExperimentConfig) -> str:
    return f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def domain_sets(cfg: ExperimentConfig) -> dict[str, Any]:
    """Prepared dirs -> per-domain Ray Datasets (labeled, unlabeled, val) and their split lists. Under
    placement by domain, every read of a domain's files runs on its own nodes."""
    from raymh.data.cache import prepared_dirs
    from raymh.data.driver_datasets import build_domain_data as build_one

    prepared = prepared_dirs(cfg)
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its per-dataset INFO lines drown raymh's own
    placed = cfg.scaling.placement == "by_domain"
    readers = cfg.scaling.workers_per_domain if placed else cfg.train_workers  # ranks sharing a domain's sets
    # rows one step takes from a set over all its readers; elastic: the batch sizes are that already
    min_rows = (1 if cfg.scaling.elastic else readers) * max(cfg.data.labeled_batch_size, cfg.data.unlabeled_batch_size)

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
            min_rows=min_rows,
            num_cpus_per_task=cfg.scaling.data_cpus or 1,
            transforms_on=cfg.data.transforms_on,
            site=d.placement if placed else None,  # placed: every read of its files on its own nodes
            unlabeled_labels=cfg.reads_unlabeled_labels(d),
        )

    # Domains build side by side: each one waits on Ray work that is mostly scheduling latency (caching the
    # train sets' encoded rows in the ray_data mode, a placed domain's site tasks), so threads overlap it.
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
    stop_flag: str | None = None,
    console_label: str | None = None,
):
    """The TorchTrainer of one experiment (Train V2); stop_flag: the name of the run's StopFlag actor;
    console_label: what the workers' progress lines start with (a Tune trial's short name)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from raymh.data.driver_datasets import ingest_options
    from raymh.data.sets import dataset_name
    from raymh.run.placement import worker_selectors
    from raymh.train.worker import train_loop_per_worker

    datasets, to_split, row_blocks = {}, [], {}
    for name, dd in domain_data.items():
        datasets.update(dd.datasets())  # Ray Datasets; worker-mode train sets are RowBlocks, read by the workers
        row_blocks.update(dd.row_blocks())
        to_split += [n for n in (dataset_name(name, "labeled"), dataset_name(name, "unlabeled")) if n in datasets]
    s = cfg.scaling
    placed = s.placement == "by_domain"
    if cfg.train_workers == 1 or placed:  # an elastic range counts by its max: split even while a group has 1
        # One worker reads everything: no streaming_split, so no split-coordinator actor per dataset (six
        # of them cost over a core here); the worker runs the Ray Data executors itself. Placed: a domain's
        # sets are read by its own worker only (workers_per_domain 1 with Ray Data sets, see config).
        to_split = []
    sites = {d.name: d.placement for d in cfg.domains} if placed else {}
    options = ingest_options()
    if placed:  # each domain's Ray Data tasks (decode, augment, shuffle) on its own nodes
        options = {n: ingest_options(label_selector=sites[n.rsplit(".", 1)[0]]) for n in datasets}
    resources = {"CPU": s.cpus_per_worker, **({"GPU": s.gpus_per_worker} if s.use_gpu else {})}
    run_dir = Path(storage_root(cfg)) / run_name if "://" not in storage_root(cfg) else None
    loop_config = {
        "experiment": cfg.model_dump(mode="json"),
        "domains": {
            name: {"num_classes": dd.num_classes, "classes": list(dd.manifest["classes"]),
                   "palette": dd.manifest["palette"], "label_format": label_format(dd.manifest)}
            for name, dd in domain_data.items()
        },
        "row_blocks": row_blocks,
        "val_rows": {name: dd.val for name, dd in domain_data.items()},
        "mlflow": mlflow,
        "stop_flag": stop_flag,
        "console_label": console_label,
        "run_dir": str(run_dir) if run_dir else f"{storage_root(cfg)}/{run_name}",
    }
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config,
        scaling_config=ray.train.ScalingConfig(
            num_workers=s.worker_range if s.elastic else cfg.train_workers, use_gpu=s.use_gpu,
            resources_per_worker=resources,
            label_selector=worker_selectors(list(sites.items()), s.workers_per_domain) if placed else None,
        ),  # placed: one label selector per worker, each domain's for its workers_per_domain workers
        datasets=datasets,
        dataset_config=ray.train.DataConfig(datasets_to_split=to_split, execution_options=options),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=storage_root(cfg),
            checkpoint_config=ray.train.CheckpointConfig(
                num_to_keep=cfg.train.num_to_keep,
                checkpoint_score_attribute="val/miou_mean",
                checkpoint_score_order="max",
            ),
            failure_config=ray.train.FailureConfig(max_failures=cfg.train.max_failures),
            logging_config=ray.train.LoggingConfig(log_level=console.train_log_level()),
            callbacks=callbacks or None,
        ),
    )


def check_placement(cfg: ExperimentConfig) -> None:
    """Under placement by_domain: every domain's selector matches alive nodes with room for its workers (and
    its Ray Data tasks), else a PlacementError naming the domain and listing every node's labels."""
    if cfg.scaling.placement != "by_domain":
        return
    from raymh.run import placement

    s = cfg.scaling
    placement.check_placement(
        [(d.name, d.placement) for d in cfg.domains], placement.live_nodes(),
        workers_per_domain=s.workers_per_domain, cpus_per_worker=s.cpus_per_worker,
        gpus_per_worker=s.gpus_per_worker if s.use_gpu else 0.0,
        data_cpus=(s.data_cpus or 1) if cfg.data.transforms_on in ("ray_data", "tasks") else 0.0,
    )  # fmt: skip


def label_format(manifest: dict[str, Any]) -> str:
    """The label format of a prepared domain: its adapter kind's own (what its label files encode)."""
    from raymh.data.adapters import ADAPTERS

    kind = manifest.get("kind")
    return ADAPTERS[kind].label_format if kind in ADAPTERS else "trainid"


def _run_files(cfg: ExperimentConfig, run_name: str) -> Path:
    root = storage_root(cfg)
    base = Path(root) if "://" not in root else records.records_base().path / "ray_results_local"
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
    tags: dict[str, str] | None = None,
    console_label: str | None = None,
) -> FitOutcome:
    """Train one experiment end to end; prints progress and a results table; never loses the run record.
    console_label: the workers' progress lines start with it (Tune trials: which trial a line is of)."""
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
        f"{workers_text(cfg)} worker(s) x {cfg.scaling.cpus_per_worker} CPU{' + GPU' if cfg.scaling.use_gpu else ''}"
        f"{' placed by domain' if cfg.scaling.placement == 'by_domain' else ''}")
    uri = record["tracking_uri"] if record else resolve_tracking_uri(cfg)  # a resumed run stays in its store
    if where := records.announce(storage_root(cfg), uri):
        say(where)
    init_ray(cfg, address)
    check_placement(cfg)  # placed domains: nodes with their labels and room, before anything starts
    records.check_shared(storage_root(cfg), uri)  # on 2+ nodes: every node must see the records' paths
    domain_data = domain_sets(cfg)
    files.mkdir(parents=True, exist_ok=True)
    console.attach_log(files / "console.log", announce=not quiet)
    spool = files / "mlflow_unsent.jsonl"
    if record is None:
        tracked = TrackedRun.create(
            uri, experiment=cfg.tracking.experiment, run_name=run_name, spool=spool,
            parent_run_id=parent_run_id, tags={**run_tags(cfg), **(tags or {})},
        )  # fmt: skip
        (files / "config.yaml").write_text(to_yaml(cfg))
        record = {"run_name": run_name, "mlflow_run_id": tracked.run_id, "tracking_uri": uri}
        (files / "run.json").write_text(json.dumps(record, indent=1))
        tracked.log_params(flatten(cfg))
        if sampled:  # a Tune trial: its sampled values, also under their own names
            tracked.log_params({f"sampled.{k}": v for k, v in sampled.items()})
        from raymh.data.driver_datasets import write_split_lists

        for dd in domain_data.values():
            write_split_lists(files / "splits", dd)
        tracked.log_artifact(files / "config.yaml", "config")
        tracked.log_artifact(files / "splits", "splits")
        tracked.log_datasets([r for dd in domain_data.values() for r in dd.set_records()])
    else:
        tracked = TrackedRun(record["tracking_uri"], record["mlflow_run_id"], spool=spool)
        tracked.reopen()  # a KILLED or FAILED record goes back to RUNNING, the same run continues
        tracked.set_tags({"resumed": "true"})
    say(f"[raymh] MLflow: {uri} run {tracked.run_id or '(offline)'}; run files: {files}")

    mlflow_info = {"uri": uri, "run_id": tracked.run_id, "spool": str(spool), "offline_reason": tracked.offline_reason}
    interactive = threading.current_thread() is threading.main_thread()  # not under Tune: signals are ours
    flag = create_stop_flag(run_name) if interactive else None
    trainer = build_trainer(
        cfg, domain_data, run_name=run_name, mlflow=mlflow_info, callbacks=callbacks,
        stop_flag=stop_flag_name(run_name) if flag is not None else None, console_label=console_label,
    )  # fmt: skip
    from ray.train import TrainingFailedError

    resume_cmd = resume_command(cfg, run_name)

    def first_signal(name: str) -> None:
        print(f"\n[raymh] {name}: finishing the current step, saving a checkpoint and stopping "
              "(press Ctrl-C again to stop at once, keeping the last checkpoint)", file=sys.stderr, flush=True)

    def second_signal(name: str) -> None:
        step = _last_checkpoint_step(files.parent)
        tracked.set_tags({"raymh.stopped_by": f"{name} x2", "raymh.checkpoint_step": str(step)})
        tracked.end("KILLED")
        print(f"[raymh] {name} again: stopped at once. Last checkpoint: step {step} under {files.parent}\n"
              f"[raymh] continue with: {resume_cmd}", file=sys.stderr, flush=True)
        exit_now(130)

    try:
        if flag is None:
            result, stopped_by = trainer.fit(), None
        else:
            result, stopped_by = run_interruptible(trainer.fit, flag=flag, on_first=first_signal, on_second=second_signal)
    except TrainingFailedError as e:
        tracked.end("FAILED")
        msg = _failure_message(e)
        print(f"[raymh] training failed: {msg}\n[raymh] checkpoints and run files are kept under {files.parent}; "
              f"continue with: {resume_cmd}", file=sys.stderr, flush=True)
        return FitOutcome(False, run_name, files.parent, mlflow_run_id=tracked.run_id, error=msg)
    finally:
        if flag is not None:
            ray.kill(flag)

    step_reached = int((result.metrics or {}).get("step", 0))
    if stopped_by is not None and step_reached < cfg.train.iters:
        tracked.set_tags({"raymh.stopped_by": stopped_by, "raymh.stopped_at_step": str(step_reached),
                          "raymh.checkpoint_step": str(step_reached)})  # fmt: skip
        tracked.end("KILLED")
        print(f"[raymh] run {run_name} stopped at step {step_reached}/{cfg.train.iters} ({stopped_by}); checkpoint at "
              f"step {step_reached}: {result.checkpoint.path if result.checkpoint else '-'}\n"
              f"[raymh] MLflow run {tracked.run_id} marked KILLED\n[raymh] continue with: {resume_cmd}", flush=True)
        return FitOutcome(False, run_name, files.parent, metrics=dict(result.metrics or {}),
                          checkpoint=result.checkpoint.path if result.checkpoint else None,
                          mlflow_run_id=tracked.run_id, error=f"stopped by {stopped_by}")  # fmt: skip

    best = _best_checkpoint(result)
    outcome = FitOutcome(
        True, run_name, files.parent, metrics=dict(result.metrics or {}),
        checkpoint=result.checkpoint.path if result.checkpoint else None,
        best_checkpoint=best, mlflow_run_id=tracked.run_id,
    )  # fmt: skip
    if cfg.tracking.log_model and result.checkpoint is not None and tracked.online:
        _log_model(tracked, best or result.checkpoint.path, cfg)  # the best by val mIoU, as `predict RUN` picks
    tracked.set_tags({"mlflow.note.content": run_description(run_name, dict(result.metrics or {}), cfg)})  # the run page's description
    tracked.end("FINISHED")
    if not quiet:
        print(results_table(outcome, cfg, uri), flush=True)
    return outcome


def workers_text(cfg: ExperimentConfig) -> str:
    """The worker count as the console says it: `2`, or `1-2 (elastic)`."""
    lo, hi = cfg.scaling.worker_range
    return f"{lo}-{hi} (elastic)" if cfg.scaling.elastic else str(cfg.train_workers)


def resume_command(cfg: ExperimentConfig, run_name: str) -> str:
    """The exact command that continues a run (with its storage path when it is not the default)."""
    cmd = f"raymh train --resume {run_name}"
    default = TrackingConfig.model_fields["storage_path"].default
    if cfg.tracking.storage_path != default:
        cmd += f" --set tracking.storage_path={storage_root(cfg)}"
    return cmd


def _last_checkpoint_step(run_dir: Path) -> int | None:
    """The step of a run directory's newest complete checkpoint (by its metrics.json), or None."""
    steps = []
    for metrics in run_dir.glob("checkpoint_*/metrics.json"):
        try:
            steps.append(int(json.loads(metrics.read_text())["step"]))
        except (OSError, ValueError, KeyError):
            continue
    return max(steps) if steps else None


def _failure_message(e: Exception) -> str:
    failures = getattr(e, "worker_failures", None)
    if failures:
        first = next(iter(failures.values()))
        return f"{type(first).__name__}: {first}".splitlines()[0] if str(first) else repr(first)
    return str(e).splitlines()[-1] if str(e) else repr(e)


def _best_checkpoint(result) -> str | None:
    scored = [
        (m["val/miou_mean"], c.path) for c, m in (result.best_checkpoints or [])
        if m.get("checkpoint/kind", "eval") == "eval" and "val/miou_mean" in m
    ]  # checkpoints between evaluations carry no score
    return max(scored)[1] if scored else None


def _log_model(tracked: TrackedRun, checkpoint_path: str, cfg: ExperimentConfig) -> None:
    """Log the model of `checkpoint_path` as a pickle-free pyfunc (models-from-code; weights as a state dict
    and the inference record as artifacts); register it when `tracking.register_model` names a model."""
    import mlflow

    from raymh.infer.loading import bundle_from_checkpoint
    from raymh.infer.mlflow_model import log_pyfunc

    try:
        bundle = bundle_from_checkpoint(checkpoint_path)
        with fluent_tracking_uri(tracked.uri), mlflow.start_run(run_id=tracked.run_id):
            log_pyfunc(bundle, registered_model_name=cfg.tracking.register_model)
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
