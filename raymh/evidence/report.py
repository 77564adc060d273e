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
STRUCTURE_PARAMS = ("table", "domains")  # never pooled: the table itself would differ (--allow-mixed or not)
SEED_KEYS = ("train.seed", "data.split_seed")  # set per trial; the render seed is compared by its param
VERSION_TAGS = ("raymh.version", "mlflow.source.git.commit")  # the code every pooled run must share
DIGEST_TAG = "raymh.labeled_digest"  # a hash of the labeled batches a run consumed first (rank 0)
UNKNOWN = "unknown"  # a run without one of VERSION_TAGS
NOT_IN_VERSION = "<not in this raymh version>"
_SHOWN = 4  # run ids named per value in a message


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value}; a list of named items (domains) is keyed by name, not position."""
    if isinstance(value, dict) and value:
        return {k: v for key, sub in value.items() for k, v in _flat(sub, f"{prefix}{key}.").items()}
    if isinstance(value, list) and value and all(isinstance(x, dict) and "name" in x for x in value):
        return {k: v for x in value for k, v in _flat(x, f"{prefix}{x['name']}.").items()}
    return {prefix.rstrip("."): value}


def _base_config(uri: str, run_id: str) -> dict[str, Any] | None:
    """The parent's `config/base_config.yaml` as written (a nested dict), or None when the run has none."""
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
    return raw if isinstance(raw, dict) else None


def _pop_key(data: dict[str, Any], loc: tuple[Any, ...]) -> tuple[str, Any]:
    """Remove the item at a validation error's location; returns its dotted key (domains by name) and value."""
    node: Any = data
    parts = []
    for i, part in enumerate(loc):
        last = i == len(loc) - 1
        if isinstance(part, int):
            item = node[part]
            parts.append(str(item.get("name", part)) if isinstance(item, dict) else str(part))
        else:
            parts.append(str(part))
        if last:
            return ".".join(parts), node.pop(part)
        node = node[part]
    raise KeyError(loc)


def _schema_default(key: str) -> Any:
    """The default this raymh version gives a dotted config key (domains.<name>.<field> included), or
    NOT_IN_VERSION when its schema has no such key."""
    import typing

    from pydantic import BaseModel
    from pydantic_core import PydanticUndefined

    from raymh.config import ExperimentConfig

    def model_in(annotation: Any) -> type[BaseModel] | None:
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        return next((m for a in typing.get_args(annotation) if (m := model_in(a))), None)

    model: type[BaseModel] | None = ExperimentConfig
    parts = key.split(".")
    i = 0
    while model is not None and i < len(parts):
        f = model.model_fields.get(parts[i])
        if f is None:
            return NOT_IN_VERSION
        if i == len(parts) - 1:
            if f.default_factory is not None:
                value = f.default_factory()  # type: ignore[call-arg]
            elif f.default is PydanticUndefined:
                return "<required, no default>"
            else:
                value = f.default
            if isinstance(value, BaseModel):
                return value.model_dump(mode="json")
            return list(value) if isinstance(value, tuple) else value  # as a YAML file has it
        i += 2 if parts[i] == "domains" else 1  # domains.<name>.<field>
        model = model_in(f.annotation)
    return NOT_IN_VERSION


@dataclass
class _Config:
    """A base config as this raymh version resolves it: every key at its value or default (seeds left out)."""

    values: dict[str, Any]
    written: set[str]  # the keys the file itself has (the others are defaults)
    unknown: set[str]  # keys this raymh version does not know
    validated: bool

    def get(self, key: str) -> tuple[Any, str]:
        """(value, how): how is "" (as written), "default", "section" (its section is null) or "unknown"."""
        if key in self.values:
            return self.values[key], ("" if key in self.written or key in self.unknown else "default")
        if not self.validated and (default := _schema_default(key)) is not NOT_IN_VERSION:
            return default, "default"
        parts = key.split(".")
        for n in range(len(parts) - 1, 0, -1):  # a section left empty (data.synthetic: null) has no sub-keys
            head = ".".join(parts[:n])
            if head in self.values:
                return f"<{head} is {self.values[head]!r}>", "section"
        return NOT_IN_VERSION, "unknown"


def _resolved_config(raw: dict[str, Any]) -> _Config:
    """Re-validate a logged base config with this raymh version, so that a key only one grid's file has is
    compared against this version's default. Keys this version does not know are kept as written (the other
    side then has NOT_IN_VERSION); a file that does not validate for another reason is compared as written."""
    import copy

    from pydantic import ValidationError

    from raymh.config import ExperimentConfig

    data = copy.deepcopy(raw)
    written = set(_flat(raw))
    unknown: dict[str, Any] = {}
    for _ in range(50):
        try:
            cfg = ExperimentConfig.model_validate(data)
        except ValidationError as e:
            extra = [err["loc"] for err in e.errors() if err["type"] == "extra_forbidden"]
            try:
                for loc in sorted(extra, key=len, reverse=True):
                    key, value = _pop_key(data, loc)
                    unknown.update(_flat(value, key + "."))
            except (KeyError, IndexError, TypeError):
                extra = []
            if extra:
                continue
            break
        values = {**_flat(cfg.model_dump(mode="json")), **unknown}
        return _Config(_drop_seeds(values), written, set(unknown), True)
    return _Config(_drop_seeds({**_flat(data), **unknown}), written, set(unknown), False)


def _drop_seeds(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k not in SEED_KEYS}


def _shown(value: Any, how: str) -> str:
    if how == "unknown":
        return NOT_IN_VERSION
    if how == "section":
        return str(value)
    return repr(value) + (" (default)" if how == "default" else "")


def _config_differences(a: _Config, b: _Config) -> list[str]:
    """'key: a vs b' for every key whose resolved value differs, a key only one side has included."""
    out = []
    for key in sorted(set(a.values) | set(b.values)):
        if any(k.startswith(key + ".") for k in (*a.values, *b.values)):
            continue  # a section null on one side, set on the other: its keys say what differs
        (va, ha), (vb, hb) = a.get(key), b.get(key)
        if (va, ha == "unknown") != (vb, hb == "unknown"):
            out.append(f"{key}: {_shown(va, ha)} vs {_shown(vb, hb)}")
    return out


def _listed(items: Sequence[str], limit: int = _SHOWN) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _grid_differences(uri: str, parents) -> tuple[list[str], dict[str, int]]:
    """Compare every grid with the first of each group of equal grids: the differences in words (params and
    base configs) and each parent's config group. Grids of other tables or domains are always refused."""
    first = parents[0]
    for other in parents[1:]:
        for key in STRUCTURE_PARAMS:
            a, b = first.data.params.get(key), other.data.params.get(key)
            if a != b:
                raise InputError(
                    f"runs {first.info.run_id} and {other.info.run_id} differ in {key} ({a!r} vs {b!r}): only grids "
                    "of the same table and domains combine into one table; report them separately"
                )
    if len(parents) == 1:
        return [], {first.info.run_id: 0}
    configs: dict[str, _Config | None] = {}
    for p in parents:
        raw = _base_config(uri, p.info.run_id)
        configs[p.info.run_id] = _resolved_config(raw) if raw else None  # without the file: by params alone
    reps: list[Any] = []  # the first parent of each group
    group: dict[str, int] = {}
    found: list[str] = []
    for parent in parents:
        pid = parent.info.run_id
        for g, rep in enumerate(reps):
            rid = rep.info.run_id
            params = [k for k in SAME_GRID_PARAMS if rep.data.params.get(k) != parent.data.params.get(k)]
            keys = _config_differences(configs[rid], configs[pid]) if configs[rid] and configs[pid] else []
            if not params and not keys:
                group[pid] = g
                break
        else:
            group[pid] = len(reps)
            if reps:  # name what differs from the first grid
                rid = reps[0].info.run_id
                for k in SAME_GRID_PARAMS:
                    a, b = reps[0].data.params.get(k), parent.data.params.get(k)
                    if a != b:
                        found.append(f"runs {rid} and {pid} differ in {k} ({a!r} vs {b!r})")
                keys = _config_differences(configs[rid], configs[pid]) if configs[rid] and configs[pid] else []
                if keys:
                    found.append(
                        f"runs {rid} and {pid} trained different base configs (config/base_config.yaml: "
                        f"{_listed(keys, 12)})"
                    )
            reps.append(parent)
    return found, group


def _version_differences(records: Sequence[RunRecord]) -> list[str]:
    """'raymh.version: '0.1' (runs a, b) vs '0.2' (runs c)' for every version tag the pooled runs disagree on."""
    out = []
    for tag in VERSION_TAGS:
        by: dict[str, list[str]] = {}
        for r in records:
            by.setdefault(r.tags.get(tag) or UNKNOWN, []).append(r.run_id)
        if len(by) > 1:
            out.append(f"{tag} " + " vs ".join(f"{v!r} (runs {_listed(sorted(ids))})" for v, ids in sorted(by.items())))
    return out


def _digest_issues(spec, records: Sequence[RunRecord]) -> dict[int, list[str]]:
    """{comparison index: ['semi@1/8 vs supervised@1/8 seed 1: runs A (digest ...) and B (no digest)']} for
    every pair of runs of one seed whose labeled batches are not shown to be the same. Only the table whose
    two settings train the same domains (semi-vs-supervised) is checked: a single-domain run of multi-vs-single
    reads only its domain's labeled batches, so its digest cannot equal the multi-domain run's."""
    if spec.name != "semi-vs-supervised":
        return {}
    out: dict[int, list[str]] = {}
    for i, (treated, control) in enumerate(spec.comparisons):
        def of(row):
            return {r.trial.seed: r for r in records if (r.trial.setting, r.trial.fraction) == (row.setting, row.fraction)}

        a, b = of(treated), of(control)
        for seed in sorted(set(a) & set(b)):
            da, db = a[seed].tags.get(DIGEST_TAG), b[seed].tags.get(DIGEST_TAG)
            if da and db and da == db:
                continue
            what = "no digest" if not da or not db else "different digests"
            out.setdefault(i, []).append(
                f"{a[seed].trial.cell} vs {b[seed].trial.cell} seed {seed} ({what}): runs {a[seed].run_id} "
                f"({DIGEST_TAG} {da or 'missing'}) and {b[seed].run_id} ({db or 'missing'})"
            )
    return out


def _mark_mixed(values, records: Sequence[RunRecord], group: dict[str, int], notes: list[str]) -> None:
    """'*' on every row and comparison whose runs differ in code version or config; the notes as footnotes."""
    def variant(r: RunRecord) -> tuple:
        return (*(r.tags.get(t) or UNKNOWN for t in VERSION_TAGS), group.get(r.parent_run_id, 0))

    def variants(*rows) -> set:
        return {variant(r) for r in records if any((r.trial.setting, r.trial.fraction) == (w.setting, w.fraction) for w in rows)}

    for row in values.spec.rows:
        if len(variants(row)) > 1:
            values.row_marks[row] = values.row_marks.get(row, "") + "*"
    for i, pair in enumerate(values.spec.comparisons):
        if len(variants(*pair)) > 1:
            values.diff_marks[i] = values.diff_marks.get(i, "") + "*"
    values.title_suffix += " [pools mixed code versions or configs: see 'mixed:' below]"
    values.notes += [f"mixed: {n}" for n in notes]
    grid_of = {}
    for pid, g in group.items():
        grid_of.setdefault(g, pid)

    def said(v: tuple) -> str:
        return f"raymh.version {v[0]}, commit {v[1][:12]}, config of grid {grid_of.get(v[2], '?')[:8]}"

    by_variants: dict[tuple, list[str]] = {}
    for row in values.spec.rows:
        by_variants.setdefault(tuple(sorted(variants(row))), []).append(f"{row.setting}@{row.fraction}")
    values.notes.append("runs by row: " + "; ".join(
        f"{', '.join(rows)}: {' + '.join(said(v) for v in vs)}" for vs, rows in by_variants.items()
    ))  # fmt: skip
    if values.row_marks or values.diff_marks:
        values.notes.append("*: the row or difference pools runs that differ as the 'mixed:' lines say (--allow-mixed)")
    else:
        values.notes.append("each row's runs agree among themselves; the rows differ as the 'mixed:' lines say")


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
    grid_notes, group = _grid_differences(uri, parents)
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
    version_notes = _version_differences(records)
    if version_notes and not allow_mixed:
        raise InputError(
            "the runs pooled into one table ran different code: " + "; ".join(version_notes) + " (a run without "
            "the tag counts as 'unknown'); report them separately, or pass --allow-mixed to pool them in one table "
            "that says so"
        )
    unpaired = _digest_issues(spec, records)
    if unpaired and not allow_unpaired:
        issues = [x for i in sorted(unpaired) for x in unpaired[i]]
        raise InputError(
            f"{len(issues)} pair(s) of runs of one seed are not shown to have trained on the same labeled batches "
            f"(tag {DIGEST_TAG}): {_listed(issues, 6)}. Runs made before raymh recorded digests have none: pass "
            "--allow-unpaired to report them, with those differences marked"
        )
    values = table_values(spec, records)
    if grid_notes or version_notes:
        _mark_mixed(values, records, group, [*version_notes, *grid_notes])
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
