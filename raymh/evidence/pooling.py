"""What may be pooled into one evidence table, checked before `raymh report` pools runs: the grids' resolved
configs (a key one side lacks compared with this version's default; seeds aside), every run's code version,
and, for each compared pair of one seed, equal labeled digests (docs/evidence.md)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from raymh.errors import InputError
from raymh.evidence.tables import RunRecord
from raymh.train.digest import LABELED_DIGEST_TAG

SAME_GRID_PARAMS = ("table", "domains", "config", "render_seed", "overrides")
STRUCTURE_PARAMS = ("table", "domains")  # never pooled: the table itself would differ (--allow-mixed or not)
SEED_KEYS = ("train.seed", "data.split_seed")  # set per trial; the render seed is compared by its param
VERSION_TAGS = ("raymh.version", "mlflow.source.git.commit")  # the code every pooled run must share
DIGEST_TAG = LABELED_DIGEST_TAG  # a hash of the labeled batches a run consumed first (rank 0)
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


def listed(items: Sequence[str], limit: int = _SHOWN) -> str:
    items = list(items)
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def grid_differences(uri: str, parents) -> tuple[list[str], dict[str, int]]:
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
                        f"{listed(keys, 12)})"
                    )
            reps.append(parent)
    return found, group


def version_differences(records: Sequence[RunRecord]) -> list[str]:
    """'raymh.version: '0.1' (runs a, b) vs '0.2' (runs c)' for every version tag the pooled runs disagree on."""
    out = []
    for tag in VERSION_TAGS:
        by: dict[str, list[str]] = {}
        for r in records:
            by.setdefault(r.tags.get(tag) or UNKNOWN, []).append(r.run_id)
        if len(by) > 1:
            out.append(f"{tag} " + " vs ".join(f"{v!r} (runs {listed(sorted(ids))})" for v, ids in sorted(by.items())))
    return out


def digest_issues(spec, records: Sequence[RunRecord]) -> dict[int, list[str]]:
    """{comparison index: ['semi@1/8 vs supervised@1/8 seed 1: runs A (digest ...) and B (no digest)']} for
    every pair of runs of one seed whose labeled batches are not shown to be the same. semi-vs-supervised:
    the two runs' whole digests; multi-vs-single: the multi-domain run against each domain's single-domain
    run on that domain's digest (`raymh.labeled_digest.<domain>`: a domain's labeled batches come from its
    own streams, so the two runs of a seed read the same ones)."""
    out: dict[int, list[str]] = {}
    for i, (treated, control) in enumerate(spec.comparisons):
        def of(row):
            return [r for r in records if (r.trial.setting, r.trial.fraction) == (row.setting, row.fraction)]

        pairs = []  # (seed, tag, treated run, control run)
        if spec.name == "multi-vs-single":
            multi = {r.trial.seed: r for r in of(treated)}
            pairs = [(r.trial.seed, f"{DIGEST_TAG}.{r.trial.domain}", multi[r.trial.seed], r)
                     for r in sorted(of(control), key=lambda r: (r.trial.seed, r.trial.domain)) if r.trial.seed in multi]  # fmt: skip
        else:
            a, b = ({r.trial.seed: r for r in of(row)} for row in (treated, control))
            pairs = [(seed, DIGEST_TAG, a[seed], b[seed]) for seed in sorted(set(a) & set(b))]
        for seed, tag, x, y in pairs:
            dx, dy = x.tags.get(tag), y.tags.get(tag)
            if dx and dy and dx == dy:
                continue
            what = "no digest" if not dx or not dy else "different digests"
            out.setdefault(i, []).append(
                f"{x.trial.cell} vs {y.trial.cell} seed {seed} ({what}): runs {x.run_id} ({tag} {dx or 'missing'}) "
                f"and {y.run_id} ({dy or 'missing'})"
            )
    return out


def mark_mixed(values, records: Sequence[RunRecord], group: dict[str, int], notes: list[str]) -> None:
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
