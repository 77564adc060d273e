"""`raymh tune`: a Ray Tune sweep whose trials each build and fit a TorchTrainer (the Train V2 pattern).

The sweep is one MLflow parent run (space, scheduler, trials table, best trial); each trial is a child run
with its sampled values as params and its metrics. Trials that ASHA stops early are closed as FINISHED
(tagged `raymh.stopped_early`), never left RUNNING.
"""

from __future__ import annotations

import csv
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from raymh import console
from raymh.config import config_from_dict, load_config_dict, to_yaml
from raymh.platform.tracking import TrackedRun, resolve_tracking_uri, run_tags
from raymh.run.interrupt import run_interruptible, stop_sweep_at_once
from raymh.tune.space import (
    apply_base,
    load_space,
    to_tune_param_space,
    trial_config,
    trial_resources,
    tune_config_kwargs,
    with_overrides,
)


def _trial(
    sample: dict[str, Any], *, base: dict[str, Any], sweep_name: str, parent_run_id: str | None
) -> None:
    """One trial: merge the sample, re-validate, fit a TorchTrainer reporting to Tune through the callback."""
    import ray.tune

    from raymh.run.driver import fit
    from raymh.tune.callbacks import EvalReportCallback

    cfg = trial_config(base, sample)
    trial_id = ray.tune.get_context().get_trial_id()
    cfg.tracking.run_name = f"{sweep_name}-{trial_id}"
    outcome = fit(
        cfg, parent_run_id=parent_run_id, callbacks=[EvalReportCallback()], quiet=True, sampled=sample,
        console_label=f"trial {trial_id}",
    )
    if not outcome.ok:
        raise RuntimeError(f"trial {trial_id} failed: {outcome.error}")


def absolute_locations(base: dict[str, Any]) -> dict[str, Any]:
    """Trials run in other directories: make storage, cache and tracking locations absolute."""
    cfg = config_from_dict(base)
    tracking = dict(base.get("tracking") or {})
    from raymh.run.driver import storage_root

    tracking["storage_path"] = storage_root(cfg)
    tracking["tracking_uri"] = resolve_tracking_uri(cfg)
    data = dict(base.get("data") or {})
    data["cache_dir"] = str(Path(cfg.data.cache_dir).expanduser().resolve())
    return {**base, "tracking": tracking, "data": data}


def run_sweep(
    config: str,
    space_path: str,
    *,
    overrides: list[str] | None = None,
    num_samples: int | None = None,
    scheduler: str | None = None,
    max_concurrent: int | None = None,
    export_best: str | None = None,
    address: str | None = None,
) -> dict[str, Any]:
    """Validate the space against the config (before any trial), run the sweep, print and log the results."""
    from ray import tune

    from raymh.data.cache import prepared_dirs
    from raymh.platform import records
    from raymh.platform.cluster import init_ray
    from raymh.run.driver import storage_root

    base_raw = load_config_dict(config, overrides or [])
    space = with_overrides(load_space(space_path, base_raw), num_samples=num_samples, scheduler=scheduler)
    base = absolute_locations(apply_base(space, base_raw))
    base_cfg = config_from_dict(base)
    sweep_name = f"sweep-{base_cfg.name}-{Path(space_path).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    concurrent = max_concurrent or space.max_concurrent_trials
    print(
        f"[raymh] sweep {sweep_name}: {len(space.params)} params {sorted(space.params)}, {space.num_samples} samples, "
        f"scheduler {space.scheduler.type}, metric {space.metric} ({space.mode})",
        flush=True,
    )

    s = base_cfg.scaling
    per_trial = space.resources.cpu + base_cfg.train_workers * s.cpus_per_worker + 1
    uri = base["tracking"]["tracking_uri"]
    if where := records.announce(storage_root(base_cfg), uri):
        print(where, flush=True)
    init_ray(base_cfg, address, num_cpus=max(os.cpu_count() or 1, math.ceil((concurrent or 1) * per_trial) + 1))
    records.check_shared(storage_root(base_cfg), uri)  # on 2+ nodes: every node must see the records' paths
    prepared_dirs(base_cfg)  # render/prepare once, before trials race for it

    files = Path(storage_root(base_cfg)) / sweep_name
    parent = TrackedRun.create(
        uri, experiment=base_cfg.tracking.experiment, run_name=sweep_name, spool=files / "mlflow_unsent.jsonl",
        tags={**run_tags(base_cfg), "raymh.sweep": "true"},
    )  # fmt: skip
    parent.log_params({
        **{f"space.{k}": f"{d.kind}{list(d.args)}" for k, d in space.params.items()},
        "scheduler": space.scheduler.type, "num_samples": space.num_samples, "metric": space.metric,
        "mode": space.mode, "config": config,
    })  # fmt: skip

    trainable = tune.with_parameters(_trial, base=base, sweep_name=sweep_name, parent_run_id=parent.run_id)
    res = trial_resources(space)
    kwargs = tune_config_kwargs(space, config=base_cfg)
    if concurrent:
        kwargs["max_concurrent_trials"] = concurrent
    console.quiet_tune_output()  # no Tune box or TensorBoard hint on the console
    tuner = tune.Tuner(
        tune.with_resources(trainable, res),
        param_space=to_tune_param_space(space),
        tune_config=tune.TuneConfig(**kwargs),
        run_config=tune.RunConfig(name=sweep_name, storage_path=storage_root(base_cfg), verbose=0),
    )
    stop = stop_sweep_at_once(uri, parent, what=f"sweep {sweep_name}")
    grid, _ = run_interruptible(tuner.fit, flag=None, on_first=stop, on_second=stop)
    rows = _trials_table(grid, space, uri, base_cfg.tracking.experiment, parent.run_id)
    ok_rows = [r for r in rows if isinstance(r["metric"], float) and math.isfinite(r["metric"])]
    reverse = space.mode == "max"
    rows.sort(
        key=lambda r: r["metric"] if r in ok_rows else (-math.inf if reverse else math.inf), reverse=reverse
    )
    best = rows[0] if ok_rows else None

    with tempfile.TemporaryDirectory() as tmp:
        table = Path(tmp) / "trials.csv"
        with table.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ["trial"])
            writer.writeheader()
            writer.writerows(rows)
        parent.log_artifact(table, "results")
        if best:
            best_cfg = trial_config(base, best["sample"])
            (Path(tmp) / "best_config.yaml").write_text(to_yaml(best_cfg))
            parent.log_artifact(Path(tmp) / "best_config.yaml", "results")
            parent.log_metrics({f"best/{space.metric}": best["metric"]}, step=0)
            parent.set_tags({"best.trial": best["trial"], "best.child_run": str(best["mlflow_run_id"])})
    parent.end("FINISHED")

    print(format_table(rows, space.metric), flush=True)
    if best:
        text = to_yaml(trial_config(base, best["sample"]))
        print(
            f"\nbest trial {best['trial']} ({space.metric} = {best['metric']:.4f}); its config:\n{text}",
            flush=True,
        )
        if export_best:
            Path(export_best).write_text(text)
            print(f"[raymh] wrote the best config to {export_best}", flush=True)
    else:
        print("[raymh] no trial reported the metric; see the trial errors above", file=sys.stderr, flush=True)
    return {"rows": rows, "best": best, "parent_run_id": parent.run_id, "name": sweep_name}


def _trials_table(grid, space, uri: str, experiment: str, parent_run_id: str | None) -> list[dict[str, Any]]:
    """One row per trial: sampled values, final metric, status; child MLflow runs closed if left RUNNING."""
    from mlflow.tracking import MlflowClient

    children: dict[str, Any] = {}
    if parent_run_id:
        try:
            client = MlflowClient(uri)
            exp = client.get_experiment_by_name(experiment)
            for run in client.search_runs(
                [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'"
            ):
                children[run.info.run_name] = run
                if run.info.status == "RUNNING":  # ASHA stopped it: the trial ended, so must its run
                    client.set_tag(run.info.run_id, "raymh.stopped_early", "true")
                    client.set_terminated(run.info.run_id, "FINISHED")
        except Exception as e:  # noqa: BLE001
            print(f"[raymh] could not read the child runs from MLflow: {e}", file=sys.stderr)
    rows = []
    for result in grid:
        trial_id = Path(result.path).name if result.path else "?"
        sample = {k: v for k, v in (result.config or {}).items() if k in space.params}
        metrics = result.metrics or {}
        tid = metrics.get("trial_id", trial_id)
        child = next((r for name, r in children.items() if name.endswith(str(tid))), None)
        rows.append({
            "trial": str(tid),
            **{k: sample.get(k) for k in space.params},
            "metric": float(metrics.get(space.metric, math.nan)),
            "reports": metrics.get("training_iteration"),
            "status": "ERROR" if result.error else "TERMINATED",
            "mlflow_run_id": child.info.run_id if child else None,
            "sample": sample,
        })  # fmt: skip
    return rows


def format_table(rows: list[dict[str, Any]], metric: str) -> str:
    """The trials table, sorted by the metric, as aligned text."""
    if not rows:
        return "(no trials)"
    cols = [c for c in rows[0] if c not in ("sample", "mlflow_run_id")]

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return json.dumps(v) if isinstance(v, list | dict) else str(v)

    cells = [[cell(r[c]) for c in cols] for r in rows]
    header = [metric if c == "metric" else c for c in cols]
    widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(header)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
