"""The method's two comparison tables: which runs (cells x seeds) they need, and how runs become a table.

- `semi-vs-supervised` (the method's Table 1): supervised and semi-supervised multi-domain training at each
  label fraction, plus full supervision; the paired difference semi - supervised at each fraction.
- `multi-vs-single` (the method's Table 3): one semi-supervised multi-head model for all domains against one
  semi-supervised model per domain, at each fraction; the paired difference multi - single.

A cell is one training setting; a trial is a cell at one seed (and, for single-domain cells, one domain).
Runs of the same seed share the labeled subsets (data.split_seed), the initial weights and the labeled
batches (train.seed: each purpose its own random stream, `raymh.streams`), so differences between settings
are paired by seed; each run's `raymh.labeled_digest` shows it (`raymh.evidence.pooling`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from raymh.config import ConfigError
from raymh.errors import InputError
from raymh.evidence.stats import Summary, holm, paired_difference, summarize

TABLES = ("semi-vs-supervised", "multi-vs-single")
SETTING_NAMES = {
    "supervised": "supervised",
    "semi": "semi (DCLoss)",
    "single": "single-domain semi",
    "multi": "multi-domain semi",
}


def parse_fraction(text: str | float) -> Fraction:
    """'1/8', '0.125' or 'full' -> a Fraction in (0, 1]; the message names the bad value."""
    if isinstance(text, str) and text.strip().lower() == "full":
        return Fraction(1)
    try:
        frac = Fraction(str(text).strip()).limit_denominator(1024)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"label fraction {text!r} is not a fraction such as 1/8, 0.25 or full") from None
    if not 0 < frac <= 1:
        raise ConfigError(f"label fraction {text!r} must be in (0, 1]")
    return frac


def fraction_label(frac: Fraction) -> str:
    return "full" if frac == 1 else f"{frac.numerator}/{frac.denominator}"


@dataclass(frozen=True)
class Trial:
    """One training run of a table: a setting at a label fraction and a seed (single: also one domain)."""

    setting: str
    fraction: str
    seed: int
    domain: str | None = None

    @property
    def cell(self) -> str:
        return f"{self.setting}@{self.fraction}" + (f":{self.domain}" if self.domain else "")

    @property
    def slug(self) -> str:
        """A run-name-safe id: `semi-1_8-s0`, `single-1_4-cityscapes-s1`."""
        parts = [self.setting, self.fraction.replace("/", "_"), *([self.domain] if self.domain else []), f"s{self.seed}"]
        return "-".join(parts)

    def tags(self) -> dict[str, str]:
        return {
            "raymh.cell": self.cell, "raymh.setting": self.setting, "raymh.fraction": self.fraction,
            "raymh.seed": str(self.seed), **({"raymh.cell_domain": self.domain} if self.domain else {}),
        }  # fmt: skip

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Trial:
        return cls(tags["raymh.setting"], tags["raymh.fraction"], int(tags["raymh.seed"]), tags.get("raymh.cell_domain"))

    def overrides(self, base: dict[str, Any]) -> dict[str, Any]:
        """Dotted config overrides of this trial on top of the table's base config (a raw dict)."""
        frac = float(parse_fraction(self.fraction))
        out: dict[str, Any] = {"data.labeled_fraction": frac, "data.split_seed": self.seed, "train.seed": self.seed}
        if self.setting == "supervised":
            out["loss.dc_weight"] = 0.0
        if self.domain is not None:
            out["domains"] = [d for d in base["domains"] if d["name"] == self.domain]
        return out


@dataclass(frozen=True)
class Row:
    setting: str
    fraction: str

    @property
    def label(self) -> str:
        return SETTING_NAMES[self.setting]


@dataclass
class TableSpec:
    name: str
    title: str
    rows: list[Row]
    comparisons: list[tuple[Row, Row]]  # (treated, control): treated - control, paired by seed
    domains: list[str]

    def trials(self, seeds: Sequence[int]) -> list[Trial]:
        """Every run the table needs, seed-major (a stopped sweep has whole seeds done first)."""
        out = []
        for seed in seeds:
            for row in self.rows:
                if row.setting == "single":
                    out += [Trial("single", row.fraction, seed, d) for d in self.domains]
                else:
                    out.append(Trial(row.setting, row.fraction, seed))
        return out


def table_spec(name: str, *, domains: Sequence[str], fractions: Sequence[str], full: bool = True) -> TableSpec:
    """The spec of one of TABLES for these domains and label fractions (e.g. ['1/8', '1/4'])."""
    fracs = [fraction_label(parse_fraction(f)) for f in fractions]
    if not fracs:
        raise ConfigError("at least one label fraction is needed (e.g. --fractions 1/8,1/4)")
    if name == "semi-vs-supervised":
        rows, comps = [], []
        for f in [f for f in fracs if f != "full"]:
            sup, semi = Row("supervised", f), Row("semi", f)
            rows += [sup, semi]
            comps.append((semi, sup))
        if full or "full" in fracs:
            rows.append(Row("supervised", "full"))
        title = "Semi-supervised vs supervised multi-domain training (val mIoU x100)"
    elif name == "multi-vs-single":
        if len(domains) < 2:
            raise ConfigError(f"multi-vs-single needs at least two domains; the config has {list(domains)}")
        rows, comps = [], []
        for f in fracs:
            single, multi = Row("single", f), Row("multi", f)
            rows += [single, multi]
            comps.append((multi, single))
        title = "Multi-domain vs single-domain semi-supervised training (val mIoU x100)"
    else:
        raise ConfigError(f"unknown table {name!r}; choose one of {', '.join(TABLES)}")
    return TableSpec(name, title, rows, comps, list(domains))


# ------------------------------------------------------------------------------------ runs -> table values
@dataclass(frozen=True)
class RunRecord:
    """What a table needs of one finished run: its trial and its final val mIoU per domain (and, read back
    from MLflow, its tags and parent run)."""

    trial: Trial
    miou: dict[str, float]
    run_id: str = ""
    status: str = "FINISHED"
    tags: dict[str, str] = field(default_factory=dict, compare=False)
    parent_run_id: str = ""


@dataclass
class TableValues:
    spec: TableSpec
    seeds: list[int]
    cells: dict[tuple[Row, str], Summary] = field(default_factory=dict)  # (row, domain | "average")
    diffs: dict[tuple[int, str], Summary] = field(default_factory=dict)  # (comparison index, column)
    per_seed: dict[tuple[Row, str], dict[int, float]] = field(default_factory=dict)
    p_holm: dict[tuple[int, str], float] = field(default_factory=dict)  # Holm-adjusted over the family of diffs
    # What the table pools that a reader must know (`raymh report` fills these): "*" on rows and comparisons
    # whose runs differ in code version or config, "†" on comparisons with a pair of runs whose labeled
    # batches are not shown to match; one footnote line per finding.
    row_marks: dict[Row, str] = field(default_factory=dict)
    diff_marks: dict[int, str] = field(default_factory=dict)  # comparison index -> marks
    notes: list[str] = field(default_factory=list)
    title_suffix: str = ""

    @property
    def columns(self) -> list[str]:
        return [*self.spec.domains, "average"]

    def seeds_of(self, row: Row, column: str) -> list[int]:
        return sorted(self.per_seed.get((row, column), {}))

    @property
    def uniform_seeds(self) -> bool:
        """Every cell of the table has the same seeds (then the title's seed list is every cell's)."""
        sets = {tuple(self.seeds_of(row, c)) for row in self.spec.rows for c in self.columns}
        return len(sets) <= 1

    @property
    def family(self) -> str:
        """The family of paired comparisons the p-values are adjusted over, in words."""
        spec = self.spec
        k, cols = len(spec.comparisons), len(self.columns)
        tested = sum(1 for v in self.p_holm.values() if not math.isnan(v))
        unit = "fraction" if k == 1 else "fractions"
        text = f"family: {k} {unit} x {cols} columns = {k * cols} paired comparisons"
        if tested < k * cols:
            text += f", {tested} of them with a p-value (2 or more common seeds)"
        return text


def per_seed_values(spec: TableSpec, records: Sequence[RunRecord]) -> dict[tuple[Row, str], dict[int, float]]:
    """{(row, column): {seed: mIoU}}; a single-domain row takes each domain from its own run; the average is
    the mean over domains of one seed, present only when every domain has a value for that seed."""
    out: dict[tuple[Row, str], dict[int, float]] = {}
    seen: dict[Trial, RunRecord] = {}
    for r in records:  # a cell at a seed is one run: a second (a retried or resumed trial) is never dropped silently
        if r.trial in seen:
            raise InputError(
                f"{r.trial.cell} seed {r.trial.seed} has two finished runs, {seen[r.trial].run_id or '?'} and "
                f"{r.run_id or '?'}: a table takes each cell and seed once; delete or rename (mlflow) the one that "
                "should not count"
            )
        seen[r.trial] = r
    for row in spec.rows:
        mine = [r for r in records if r.trial.setting == row.setting and r.trial.fraction == row.fraction]
        for d in spec.domains:
            vals = {}
            for r in mine:
                if row.setting == "single" and r.trial.domain != d:
                    continue
                v = r.miou.get(d, math.nan)
                if math.isfinite(v):
                    vals[r.trial.seed] = v
            out[(row, d)] = vals
        seeds = set.intersection(*(set(out[(row, d)]) for d in spec.domains)) if spec.domains else set()
        out[(row, "average")] = {s: sum(out[(row, d)][s] for d in spec.domains) / len(spec.domains) for s in seeds}
    return out


def table_values(spec: TableSpec, records: Sequence[RunRecord]) -> TableValues:
    """Mean +- std per cell and paired differences with 95% t-intervals and Holm-adjusted p-values (the
    table's comparisons x columns are one family), from finished runs."""
    seeds = sorted({r.trial.seed for r in records})
    values = TableValues(spec, seeds, per_seed=per_seed_values(spec, records))
    for key, by_seed in values.per_seed.items():
        values.cells[key] = summarize(list(by_seed.values()))
    for i, (treated, control) in enumerate(spec.comparisons):
        for col in values.columns:
            values.diffs[(i, col)] = paired_difference(values.per_seed[(treated, col)], values.per_seed[(control, col)])
    keys = list(values.diffs)
    values.p_holm = dict(zip(keys, holm([values.diffs[k].p for k in keys]), strict=True))
    return values
