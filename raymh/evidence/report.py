"""`raymh report`: rebuild an evidence table and its figures from MLflow alone (no training, no data).

Several parent runs of the same table and config combine into one table (`--run A --run B`): a grid at 1/8
and a later one at 1/4 with the full row, or more seeds of the same cells. Each cell and seed is taken once:
two finished runs of one cell and seed, in two grids or in one, are refused. Every pooled run must have run
the same code (tags `raymh.version`, `mlflow.source.git.commit`) and every grid the same resolved config
(seeds aside); `allow_mixed` pools them anyway, marked. The runs of one seed compared in semi-vs-supervised
must show, by equal `raymh.labeled_digest` tags, that they trained on the same labeled batches;
`allow_unpaired` reports them anyway, marked.

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
from raymh.evidence.pooling import (
    DIGEST_TAG,
    digest_issues,
    grid_differences,
    listed,
    mark_mixed,
    version_differences,
)
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
def load_evidence(
    uri: str, parent_run_id: str | Sequence[str], *, allow_mixed: bool = False, allow_unpaired: bool = False
) -> Evidence:
    """The table of one parent run, or of several grids of the same table combined (for instance 1/8 from one
    sweep and 1/4 + full from another), from their FINISHED children; errors name the run and the fix.

    Refused unless allowed: runs of other code (tags `raymh.version`, `mlflow.source.git.commit`) or grids of
    other configs (`allow_mixed`: the table then marks them), and pairs of semi-vs-supervised runs of one
    seed without equal `raymh.labeled_digest` tags (`allow_unpaired`: marked). Never allowed: two finished
    runs of one cell and seed, grids of other tables or domains."""
    ids = [parent_run_id] if isinstance(parent_run_id, str) else list(dict.fromkeys(parent_run_id))
    if not ids:
        raise InputError("no parent run given: pass the run id that `raymh reproduce` printed")
    client = _client(uri)
    parents = [_parent_run(client, uri, i) for i in ids]
    grid_notes, group = grid_differences(uri, parents)
    if grid_notes and not allow_mixed:
        raise InputError(
            "; ".join(grid_notes) + ": only grids of the same config and overrides combine into one table; report "
            "them separately, or pass --allow-mixed to pool them in one table that says so"
        )
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
            if trial in seen:
                prev = seen[trial]
                where = (
                    f"both parent runs {prev.parent_run_id} and {pid}" if prev.parent_run_id != pid
                    else f"parent run {pid} (a retried or repeated trial)"
                )  # fmt: skip
                raise InputError(
                    f"{trial.cell} seed {trial.seed} ran in {where}: finished runs {prev.run_id} and "
                    f"{run.info.run_id}; a table takes each cell and seed once, never one of two silently: delete "
                    "the run that should not count (`mlflow runs delete --run-id ...`), or report the grids "
                    "separately"
                )
            miou = {d: run.data.metrics[f"val/miou/{d}"] for d in spec.domains if f"val/miou/{d}" in run.data.metrics}
            seen[trial] = RunRecord(trial, miou, run.info.run_id, run.info.status, dict(tags), pid)
            records.append(seen[trial])
    if skipped:
        print(f"[raymh] left out {len(skipped)} unfinished run(s): {', '.join(sorted(skipped))}", file=sys.stderr)
    version_notes = version_differences(records)
    if version_notes and not allow_mixed:
        raise InputError(
            "the runs pooled into one table ran different code: " + "; ".join(version_notes) + " (a run without "
            "the tag counts as 'unknown'); report them separately, or pass --allow-mixed to pool them in one table "
            "that says so"
        )
    unpaired = digest_issues(spec, records)
    if unpaired and not allow_unpaired:
        issues = [x for i in sorted(unpaired) for x in unpaired[i]]
        raise InputError(
            f"{len(issues)} pair(s) of runs of one seed are not shown to have trained on the same labeled batches "
            f"(tag {DIGEST_TAG}): {listed(issues, 6)}. Runs made before raymh recorded digests have none: pass "
            "--allow-unpaired to report them, with those differences marked"
        )
    values = table_values(spec, records)
    if grid_notes or version_notes:
        mark_mixed(values, records, group, [*version_notes, *grid_notes])
    for i, issues in sorted(unpaired.items()):
        values.diff_marks[i] = values.diff_marks.get(i, "") + "†"
        values.notes += [f"unpaired: {x}" for x in issues]
    if unpaired:
        values.notes.append(f"†: the difference includes pairs of runs without equal {DIGEST_TAG} (--allow-unpaired)")
    return Evidence(spec, values, records, ids[0], uri, parent_run_ids=ids)


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


def report(
    parent_run_ids: str | Sequence[str], *, uri: str, out: str | Path | None = None, allow_mixed: bool = False,
    allow_unpaired: bool = False,
) -> Evidence:
    """`raymh report`: print the table of one or more combined grids and write its files (default
    ./evidence-<run id prefixes>)."""
    ev = load_evidence(uri, parent_run_ids, allow_mixed=allow_mixed, allow_unpaired=allow_unpaired)
    if len(ev.parent_run_ids) > 1:
        print(f"[raymh] one table from {len(ev.parent_run_ids)} grids: {', '.join(ev.parent_run_ids)}", flush=True)
    print(render.format_text(ev.values), flush=True)
    target = Path(out) if out else Path("evidence-" + "-".join(i[:8] for i in ev.parent_run_ids))
    files = write_outputs(ev, target)
    print(f"[raymh] wrote {', '.join(sorted(files))} to {target}", flush=True)
    return ev
