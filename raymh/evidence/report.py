"""`raymh report`: rebuild an evidence table and its figures from MLflow alone (no training, no data).

A `raymh reproduce` parent run records which table it ran (params `table`, `domains`, `fractions`, `full`);
its child runs carry their trial in tags (`raymh.setting`, `raymh.fraction`, `raymh.seed`,
`raymh.cell_domain`) and their final val mIoU per domain as the last value of `val/miou/<domain>`. The
figures read the children's final predictions (`eval/final/predictions/`) and their `train/*` diagnostics.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raymh.evidence import figures, render
from raymh.evidence.tables import RunRecord, TableSpec, TableValues, Trial, table_spec, table_values


@dataclass
class Evidence:
    """A table rebuilt from MLflow: its spec, values, the runs behind it and where it came from."""

    spec: TableSpec
    values: TableValues
    records: list[RunRecord]
    parent_run_id: str
    uri: str
    failed_trials: int = 0  # runs of the grid that did not finish (`raymh reproduce` sets it; they are left out)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def load_evidence(uri: str, parent_run_id: str) -> Evidence:
    """The parent run's table, from its params and its FINISHED children; errors name the run and the fix."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        parent = client.get_run(parent_run_id)
    except MlflowException as e:
        raise FileNotFoundError(
            f"MLflow run {parent_run_id!r} not found in {uri} ({e.message.splitlines()[0]}); pass the parent run id "
            "that `raymh reproduce` printed, and --tracking-uri if the store is not ./mlflow.db"
        ) from None
    params = parent.data.params
    if "table" not in params:
        raise FileNotFoundError(f"MLflow run {parent_run_id} is not a `raymh reproduce` parent run (no `table` param)")
    spec = table_spec(
        params["table"], domains=params["domains"].split(","), fractions=params["fractions"].split(","),
        full=params.get("full", "True") == "True",
    )  # fmt: skip
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=5000
    )
    records, skipped = [], []
    for run in children:
        tags = run.data.tags
        if "raymh.setting" not in tags:
            continue
        if run.info.status != "FINISHED":
            skipped.append(f"{run.info.run_name} ({run.info.status})")
            continue
        miou = {d: run.data.metrics[f"val/miou/{d}"] for d in spec.domains if f"val/miou/{d}" in run.data.metrics}
        records.append(RunRecord(Trial.from_tags(tags), miou, run.info.run_id, run.info.status))
    if skipped:
        print(f"[raymh] left out {len(skipped)} unfinished run(s): {', '.join(sorted(skipped))}", file=sys.stderr)
    return Evidence(spec, table_values(spec, records), records, parent_run_id, uri)


def _download(uri: str, run_id: str, path: str, dst: Path) -> Path | None:
    import mlflow

    try:
        return Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=uri))
    except Exception:  # noqa: BLE001 - a run without predictions (panels: 0) simply has no figure
        return None


def _qualitative(ev: Evidence, out: Path, tmp: Path) -> Path | None:
    """input | GT | treated | control for the first comparison, at the lowest seed both settings ran."""
    if not ev.spec.comparisons:
        return None
    treated, control = ev.spec.comparisons[0]

    def runs_of(row, seed):
        return [r for r in ev.records if (r.trial.setting, r.trial.fraction, r.trial.seed) == (row.setting, row.fraction, seed)]

    seeds = sorted({r.trial.seed for r in ev.records})
    seed = next((s for s in seeds if runs_of(treated, s) and runs_of(control, s)), None)
    if seed is None:
        return None
    dirs: dict[str, dict[str, Path]] = {}
    for domain in ev.spec.domains:
        pair = {}
        for key, row in (("treated", treated), ("control", control)):
            run = next((r for r in runs_of(row, seed) if r.trial.domain in (None, domain)), None)
            got = run and _download(ev.uri, run.run_id, f"eval/final/predictions/{domain}", tmp / key / domain)
            if got:
                pair[key] = got
        if len(pair) == 2:
            dirs[domain] = pair
    names = (f"{treated.label} {treated.fraction}", f"{control.label} {control.fraction}")
    return figures.qualitative(dirs, names=names, path=out / "qualitative.png")


def diagnostic_curves(ev: Evidence) -> dict[str, Any]:
    """{'semi@1/8': {diagnostic: {domain: [(step, mean over seeds)]}}} of the runs that train DCLoss."""
    client = _client(ev.uri)
    curves: dict[str, Any] = {}
    for rec in ev.records:
        if rec.trial.setting == "supervised":
            continue
        series = f"{rec.trial.setting}@{rec.trial.fraction}"
        domains = [rec.trial.domain] if rec.trial.domain else ev.spec.domains
        for name in figures.DIAGNOSTICS:
            for d in domains:
                hist = client.get_metric_history(rec.run_id, f"train/{name}/{d}")
                bucket = curves.setdefault(series, {}).setdefault(name, {}).setdefault(d, {})
                for m in hist:
                    bucket.setdefault(m.step, []).append(m.value)
    return {
        s: {n: {d: sorted((st, sum(v) / len(v)) for st, v in pts.items()) for d, pts in by_d.items()} for n, by_d in by_n.items()}
        for s, by_n in curves.items()
    }


def write_outputs(ev: Evidence, out: Path) -> dict[str, Path]:
    """table.md, table.csv, bars.png, qualitative.png, diagnostics.png (those that have data) under `out`."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"table.md": out / "table.md", "table.csv": out / "table.csv"}
    files["table.md"].write_text(render.format_markdown(ev.values))
    files["table.csv"].write_text(render.format_csv(ev.values))
    files["bars.png"] = figures.bar_chart(ev.values, out / "bars.png")
    with tempfile.TemporaryDirectory() as tmp:
        qual = _qualitative(ev, out, Path(tmp))
    if qual:
        files["qualitative.png"] = qual
    diag = figures.diagnostics(diagnostic_curves(ev), out / "diagnostics.png")
    if diag:
        files["diagnostics.png"] = diag
    return files


def report(parent_run_id: str, *, uri: str, out: str | Path | None = None) -> Evidence:
    """`raymh report`: print the table and write its files (default ./evidence-<run id prefix>)."""
    ev = load_evidence(uri, parent_run_id)
    print(render.format_text(ev.values), flush=True)
    target = Path(out) if out else Path(f"evidence-{parent_run_id[:8]}")
    files = write_outputs(ev, target)
    print(f"[raymh] wrote {', '.join(sorted(files))} to {target}", flush=True)
    return ev
