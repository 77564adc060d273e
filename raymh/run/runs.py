"""`raymh runs`: the runs recorded in an MLflow store, and one run's config diff and evaluation table.

Everything is read back from MLflow (params, tags, metric histories, the `config/config.yaml` artifact),
so it works on any store a run logged to, local or remote, with or without the run's files.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from raymh.config import flatten, load_config, preset_names
from raymh.errors import InputError

MEAN = "val/miou_mean"
DOMAIN_PREFIX = "val/miou/"


@dataclass
class RunSummary:
    """One run as `raymh runs` lists it."""

    run_id: str
    name: str
    experiment: str
    status: str
    steps_done: int
    steps_total: int | None
    best: float | None
    best_step: int | None
    last: float | None
    per_domain: dict[str, float] = field(default_factory=dict)  # at the best evaluation
    storage_path: str | None = None
    is_sweep: bool = False

    def commands(self) -> list[str]:
        """How to evaluate the run's best checkpoint, and to resume it when it did not finish."""
        if self.is_sweep or not self.storage_path:
            return []
        run_dir = f"{self.storage_path.rstrip('/')}/{self.name}"
        out = [f"eval:   raymh eval --checkpoint {run_dir}"] if self.best is not None else []
        if self.status != "FINISHED":
            out.append(f"resume: raymh train --resume {self.name} --set tracking.storage_path={self.storage_path}")
        return out


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():  # MLflow would create an empty store here; say there is none instead
            raise InputError(f"no MLflow store at {path}; pass --tracking-uri (or set MLFLOW_TRACKING_URI)")
    return MlflowClient(tracking_uri=uri)


def _experiments(client, names: list[str] | None) -> list:
    if not names:
        return [e for e in client.search_experiments() if e.name != "Default" or _has_runs(client, e)]
    found = []
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            known = ", ".join(repr(e.name) for e in client.search_experiments()) or "none"
            raise InputError(f"no MLflow experiment {name!r} in this store; experiments: {known}")
        found.append(exp)
    return found


def _has_runs(client, exp) -> bool:
    return bool(client.search_runs([exp.experiment_id], max_results=1))


def _history(client, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def summarize(client, run, experiment: str) -> RunSummary:
    """Status, steps, best and last mean val mIoU and per-domain mIoU at the best evaluation of one run."""
    params, tags = run.data.params, run.data.tags
    domains = [d for d in tags.get("domains", "").split(",") if d]
    mean = _history(client, run.info.run_id, MEAN)
    steps = _history(client, run.info.run_id, "train/lr")
    best_step = max(mean, key=lambda s: (mean[s], s)) if mean else None
    per_domain = {}
    if best_step is not None:
        for d in domains:
            value = _history(client, run.info.run_id, DOMAIN_PREFIX + d).get(best_step)
            if value is not None:
                per_domain[d] = value
    total = params.get("train.iters")
    return RunSummary(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        experiment=experiment,
        status=run.info.status,
        steps_done=max([*steps, *mean], default=0),
        steps_total=int(total) if total and total.isdigit() else None,
        best=mean[best_step] if best_step is not None else None,
        best_step=best_step,
        last=mean[max(mean)] if mean else None,
        per_domain=per_domain,
        storage_path=params.get("tracking.storage_path"),
        is_sweep=tags.get("raymh.sweep") == "true",
    )


def list_runs(uri: str, experiments: list[str] | None = None, limit: int = 50) -> list[RunSummary]:
    """The newest `limit` runs of each experiment (all experiments of the store when none is named)."""
    client = _client(uri)
    out = []
    for exp in _experiments(client, experiments):
        for run in client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=limit):
            out.append(summarize(client, run, exp.name))
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.4f}"


def runs_table(runs: list[RunSummary], uri: str) -> str:
    """The listing `raymh runs` prints: one row per run, then its eval/resume commands."""
    if not runs:
        return f"no runs in {uri}"
    width = max(len(r.name) for r in runs) + 2
    head = f"{'run':<{width}}{'status':<10}{'steps':>11}  {'best':>6}  {'last':>6}  per-domain mIoU (best eval)"
    lines = [f"MLflow store {uri}", ""]
    for exp in dict.fromkeys(r.experiment for r in runs):
        lines += [f"experiment {exp!r}", head]
        for r in (r for r in runs if r.experiment == exp):
            steps = f"{r.steps_done}/{r.steps_total}" if r.steps_total else str(r.steps_done)
            domains = ", ".join(f"{d} {v:.3f}" for d, v in r.per_domain.items()) or "-"
            if r.is_sweep:
                steps, domains = "sweep", "(a Tune sweep: its trials are the runs listed with it)"
            lines.append(f"{r.name:<{width}}{r.status:<10}{steps:>11}  {_fmt(r.best):>6}  {_fmt(r.last):>6}  {domains}")
            lines += [f"{'':<{width}}{c}" for c in r.commands()]
        lines.append("")
    return "\n".join(lines).rstrip()


def find_run(client, run: str, experiments: list[str] | None = None):
    """A run by its id or its name (the newest of that name)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_run(run)
    except MlflowException:
        pass
    exp_ids = [e.experiment_id for e in _experiments(client, experiments)]
    found = client.search_runs(
        exp_ids, filter_string=f"attributes.run_name = '{run}'", order_by=["attributes.start_time DESC"], max_results=1
    ) if exp_ids else []  # fmt: skip
    if not found:
        raise InputError(f"no run named or with id {run!r} in this MLflow store; `raymh runs` lists them")
    return found[0]


def _run_config(client, run) -> dict[str, Any]:
    """The run's resolved config: its `config/config.yaml` artifact, else rebuilt from its params."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = client.download_artifacts(run.info.run_id, "config/config.yaml", tmp)
            return flatten(yaml.safe_load(Path(path).read_text()))
    except Exception:  # noqa: BLE001 - no artifact (or an unreachable artifact store): the params hold it too
        return dict(run.data.params)


def _same(a: Any, b: Any) -> bool:
    return str(a) == str(b) or (isinstance(a, list | tuple) and isinstance(b, list | tuple) and list(a) == list(b))


def config_diff(client, run) -> tuple[str, list[tuple[str, Any, Any]]]:
    """(preset, [(key, preset value, run value)]) for every key where the run differs from its preset."""
    preset = run.data.tags.get("preset", "")
    ran = _run_config(client, run)
    if preset not in preset_names():
        return preset, [(k, None, v) for k, v in sorted(ran.items())]
    base = flatten(load_config(preset))
    keys = sorted(set(base) | set(ran))
    return preset, [(k, base.get(k), ran.get(k)) for k in keys if not _same(base.get(k), ran.get(k))]


def eval_table(client, run) -> list[tuple[int, dict[str, float], float]]:
    """[(step, {domain: mIoU}, mean)] of every evaluation of the run."""
    domains = [d for d in run.data.tags.get("domains", "").split(",") if d]
    mean = _history(client, run.info.run_id, MEAN)
    per = {d: _history(client, run.info.run_id, DOMAIN_PREFIX + d) for d in domains}
    return [(s, {d: per[d].get(s, math.nan) for d in domains}, mean[s]) for s in sorted(mean)]


def show_run(uri: str, run: str, experiments: list[str] | None = None) -> str:
    """What `raymh runs show RUN` prints: the summary, the config diff against the preset, the evaluations."""
    client = _client(uri)
    found = find_run(client, run, experiments)
    exp = client.get_experiment(found.info.experiment_id).name
    s = summarize(client, found, exp)
    steps = f"{s.steps_done}/{s.steps_total}" if s.steps_total else str(s.steps_done)
    lines = [
        f"run {s.name} ({s.run_id}), experiment {exp!r}: {s.status}, step {steps}",
        f"best mean val mIoU {_fmt(s.best)} (step {s.best_step if s.best_step is not None else '-'}), last {_fmt(s.last)}",
        *s.commands(),
        "",
    ]
    preset, diff = config_diff(client, found)
    if preset in preset_names():
        lines.append(f"config vs preset {preset!r}: " + ("no differences" if not diff else f"{len(diff)} key(s) differ"))
        width = max([len(k) for k, _, _ in diff], default=0) + 2
        lines += [f"  {k:<{width}}{_show(a)} -> {_show(b)}" for k, a, b in diff]
    else:
        lines.append(f"config (its name {preset!r} is not a preset, so every key):")
        lines += [f"  {k} = {_show(b)}" for k, _, b in diff]
    table = eval_table(client, found)
    lines += ["", "evaluations (val mIoU):" if table else "evaluations: none yet"]
    if table:
        domains = list(table[0][1])
        widths = [max(len(d), 6) for d in domains]
        lines.append(f"  {'step':>6}  " + "  ".join(f"{d:>{w}}" for d, w in zip(domains, widths, strict=True)) + "    mean")
        for step, per, mean in table:
            cells = "  ".join(f"{_fmt(per[d]):>{w}}" for d, w in zip(domains, widths, strict=True))
            lines.append(f"  {step:>6}  {cells}  {_fmt(mean)}")
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "(unset)" if value is None else str(value)
