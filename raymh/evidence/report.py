"""`raymh report`: rebuild an evidence table and its figures from MLflow alone (no training, no data).

Several parent runs of the same table and config combine into one table (`--run A --run B`): a grid at 1/8
and a later one at 1/4 with the full row, or more seeds of the same cells. Each cell and seed is taken once.

A `raymh reproduce` parent run records which table it ran (params `table`, `domains`, `fractions`, `full`);
its child runs carry their trial in tags (`raymh.setting`, `raymh.fraction`, `raymh.seed`,
`raymh.cell_domain`) and their final val mIoU per domain as the last value of `val/miou/<domain>`. The
figures read the children's final predictions (`eval/final/predictions/`) and their `train/*` diagnostics.
"""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from raymh.errors import InputError
from raymh.evidence import figures, render
from raymh.evidence.tables import (
    RunRecord,
    TableSpec,
    TableValues,
    Trial,
    parse_fraction,
    table_spec,
    table_values,
)


@dataclass
class Evidence:
    """A table rebuilt from MLflow: its spec, values, the runs behind it and where it came from."""

    spec: TableSpec
    values: TableValues
    records: list[RunRecord]
    parent_run_id: str
    uri: str
    failed_trials: int = 0  # runs of the grid that did not finish (`raymh reproduce` sets it; they are left out)
    parent_run_ids: list[str] = field(default_factory=list)  # every grid combined into the table (report --run A --run B)


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


def _parent_run(client, uri: str, parent_run_id: str):
    from mlflow.exceptions import MlflowException

    try:
        parent = client.get_run(parent_run_id)
    except MlflowException as e:
        raise FileNotFoundError(
            f"MLflow run {parent_run_id!r} not found in {uri} ({e.message.splitlines()[0]}); pass the parent run id "
            "that `raymh reproduce` printed, and --tracking-uri if the store is not ./mlflow.db"
        ) from None
    if "table" not in parent.data.params:
        raise FileNotFoundError(f"MLflow run {parent_run_id} is not a `raymh reproduce` parent run (no `table` param)")
    return parent


# What must agree between grids combined into one table; seeds, fractions and the full row may differ.
SAME_GRID_PARAMS = ("table", "domains", "config", "render_seed", "overrides")


def _base_config(uri: str, run_id: str) -> dict[str, Any] | None:
    """The parent's `config/base_config.yaml` as {dotted key: value}, or None when the run has none."""
    import mlflow
    import yaml

    try:
        with tempfile.TemporaryDirectory() as tmp:
            path = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path="config/base_config.yaml", dst_path=tmp, tracking_uri=uri
            )
            raw = yaml.safe_load(Path(path).read_text())
    except Exception:  # noqa: BLE001 - a parent without the artifact is compared by its params alone
        return None

    def flat(value: Any, prefix: str) -> dict[str, Any]:
        if isinstance(value, dict):
            return {k: v for key, sub in value.items() for k, v in flat(sub, f"{prefix}{key}.").items()}
        if isinstance(value, list) and value and all(isinstance(x, dict) and "name" in x for x in value):
            return {k: v for x in value for k, v in flat(x, f"{prefix}{x['name']}.").items()}
        return {prefix.rstrip("."): value}

    return flat(raw, "")


def _check_same_grid(uri: str, parents) -> None:
    """Grids combine into one table only when they ran the same table on the same config. Keys that only one
    of the base configs has (a setting added by a later raymh version, at its default) are not compared."""
    first = parents[0]
    first_config = _base_config(uri, first.info.run_id) if len(parents) > 1 else None
    for other in parents[1:]:
        for key in SAME_GRID_PARAMS:
            a, b = first.data.params.get(key), other.data.params.get(key)
            if a != b:
                raise InputError(
                    f"runs {first.info.run_id} and {other.info.run_id} differ in {key} ({a!r} vs {b!r}): only grids of "
                    "the same table, domains, config and overrides combine into one table; report them separately"
                )
        configs = first_config, _base_config(uri, other.info.run_id)
        if None in configs:
            continue
        differ = [k for k in configs[0] if k in configs[1] and configs[0][k] != configs[1][k]]
        if differ:
            shown = ", ".join(f"{k}: {configs[0][k]!r} vs {configs[1][k]!r}" for k in differ[:3])
            raise InputError(
                f"runs {first.info.run_id} and {other.info.run_id} trained different base configs "
                f"(config/base_config.yaml: {shown}); report them separately"
            )


def load_evidence(uri: str, parent_run_id: str | Sequence[str]) -> Evidence:
    """The table of one parent run, or of several grids of the same table combined (for instance 1/8 from one
    sweep and 1/4 + full from another), from their FINISHED children; errors name the run and the fix."""
    ids = [parent_run_id] if isinstance(parent_run_id, str) else list(dict.fromkeys(parent_run_id))
    if not ids:
        raise InputError("no parent run given: pass the run id that `raymh reproduce` printed")
    client = _client(uri)
    parents = [_parent_run(client, uri, i) for i in ids]
    _check_same_grid(uri, parents)
    params = parents[0].data.params
    fractions = sorted({f for p in parents for f in p.data.params["fractions"].split(",")}, key=parse_fraction)
    spec = table_spec(
        params["table"], domains=params["domains"].split(","), fractions=fractions,
        full=any(p.data.params.get("full", "True") == "True" for p in parents),
    )  # fmt: skip
    records, skipped, seen = [], [], {}
    for parent in parents:
        pid = parent.info.run_id
        children = client.search_runs(
            [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{pid}'", max_results=5000
        )
        for run in children:
            tags = run.data.tags
            if "raymh.setting" not in tags:
                continue
            if run.info.status != "FINISHED":
                skipped.append(f"{run.info.run_name} ({run.info.status})")
                continue
            trial = Trial.from_tags(tags)
            if trial in seen and seen[trial] != pid:
                raise InputError(
                    f"{trial.cell} seed {trial.seed} ran in both parent runs {seen[trial]} and {pid}: a combined table "
                    "takes each cell and seed once; report them separately, or combine grids of other seeds or fractions"
                )
            seen[trial] = pid
            miou = {d: run.data.metrics[f"val/miou/{d}"] for d in spec.domains if f"val/miou/{d}" in run.data.metrics}
            records.append(RunRecord(trial, miou, run.info.run_id, run.info.status))
    if skipped:
        print(f"[raymh] left out {len(skipped)} unfinished run(s): {', '.join(sorted(skipped))}", file=sys.stderr)
    return Evidence(spec, table_values(spec, records), records, ids[0], uri, parent_run_ids=ids)


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


def report(parent_run_ids: str | Sequence[str], *, uri: str, out: str | Path | None = None) -> Evidence:
    """`raymh report`: print the table of one or more combined grids and write its files (default
    ./evidence-<run id prefixes>)."""
    ev = load_evidence(uri, parent_run_ids)
    if len(ev.parent_run_ids) > 1:
        print(f"[raymh] one table from {len(ev.parent_run_ids)} grids: {', '.join(ev.parent_run_ids)}", flush=True)
    print(render.format_text(ev.values), flush=True)
    target = Path(out) if out else Path("evidence-" + "-".join(i[:8] for i in ev.parent_run_ids))
    files = write_outputs(ev, target)
    print(f"[raymh] wrote {', '.join(sorted(files))} to {target}", flush=True)
    return ev
