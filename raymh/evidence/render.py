"""Evidence tables as text (console and Markdown) and CSV, in the method's layout.

Rows are settings at a label fraction, columns the domains and their average; cells are mean +- std over
seeds (mIoU x100); under each compared pair a row gives the paired difference with its 95% t-interval and
its Holm-adjusted p-value. When the cells do not all have the same seeds, every value says its n. Marks: "*"
on rows that pool runs of different code versions or configs, "†" on differences with a pair of runs whose
labeled batches are not shown to match; the footnotes below the table say which.
"""

from __future__ import annotations

import csv
import io
import math

from raymh.evidence.stats import Summary
from raymh.evidence.tables import TableValues


def _pct(v: float, sign: bool = False) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{100 * v:+.1f}" if sign else f"{100 * v:.1f}"


def p_text(p: float) -> str:
    """A p-value with two significant digits (p < 0.001 as such)."""
    if not math.isfinite(p):
        return "n/a"
    return "<0.001" if p < 0.001 else f"={p:.2g}"


def cell_text(s: Summary, *, show_n: bool = False) -> str:
    if s.n == 0:
        return "n/a"
    text = _pct(s.mean) + (f" ± {_pct(s.std)}" if math.isfinite(s.std) else "")
    return text + (f" (n={s.n})" if show_n else "")


def diff_text(s: Summary, p_holm: float = math.nan, *, show_n: bool = False) -> str:
    if s.n == 0:
        return "n/a"
    if not math.isfinite(s.low):
        return _pct(s.mean, sign=True) + " (1 seed)"
    text = f"{_pct(s.mean, sign=True)} [{_pct(s.low, sign=True)}, {_pct(s.high, sign=True)}]"
    if math.isfinite(p_holm):
        text += f" p_holm{p_text(p_holm)}"
    return text + (f" (n={s.n})" if show_n else "")


def table_rows(values: TableValues) -> list[list[str]]:
    """Header plus one row per setting and one per comparison (placed after its treated row)."""
    spec = values.spec
    header = ["setting", "labels", *values.columns]
    out = [header]
    show_n = not values.uniform_seeds
    for row in spec.rows:
        label = row.label + values.row_marks.get(row, "")
        out.append([label, row.fraction, *(cell_text(values.cells[(row, c)], show_n=show_n) for c in values.columns)])
        for i, (treated, control) in enumerate(spec.comparisons):
            if treated == row:
                name = f"  {treated.setting} - {control.setting}" + values.diff_marks.get(i, "")
                out.append([name, row.fraction, *(
                    diff_text(values.diffs[(i, c)], values.p_holm.get((i, c), math.nan), show_n=show_n)
                    for c in values.columns
                )])  # fmt: skip
    return out


def _title(values: TableValues) -> str:
    n = len(values.seeds)
    if values.uniform_seeds:
        over = f"mean ± std over {n} seed{'s' if n != 1 else ''} {values.seeds}"
    else:
        over = f"mean ± std over each cell's own seeds (n after each value; {n} seeds {values.seeds} in all)"
    return f"{values.spec.title}: {over}{values.title_suffix}"


def _seed_note(values: TableValues) -> list[str]:
    """Which seeds each row has, when they are not the same everywhere."""
    if values.uniform_seeds:
        return []
    parts = []
    for row in values.spec.rows:
        per_col = {tuple(values.seeds_of(row, c)) for c in values.columns}
        seeds = values.seeds_of(row, "average") if len(per_col) > 1 else list(next(iter(per_col)))
        extra = " (average; some domains have more)" if len(per_col) > 1 else ""
        parts.append(f"{row.setting}@{row.fraction} {seeds}{extra}")
    return ["seeds per row: " + "; ".join(parts) + "; a difference uses the seeds both rows have"]


def _notes(values: TableValues) -> list[str]:
    return [
        "differences are paired by seed (same labeled subset, init and labeled batches, checked by digest), with 95% t-intervals; "
        f"p_holm: paired t-test p-value, Holm-adjusted over the {values.family.removeprefix('family: ')}",
        *_seed_note(values),
        *values.notes,
    ]


def format_text(values: TableValues) -> str:
    rows = table_rows(values)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [_title(values)]
    for k, r in enumerate(rows):
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines += _notes(values)
    return "\n".join(lines)


def format_markdown(values: TableValues) -> str:
    def md(text: str) -> str:  # a mark "*" is a character, not emphasis
        return text.replace("*", "\\*")

    rows = table_rows(values)
    lines = [f"**{md(_title(values))}**", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(md(v.strip()) for v in r) + " |" for r in rows[1:]]
    return "\n".join([*lines, "", *(f"_{md(n)}_  " for n in _notes(values)), ""])


def format_csv(values: TableValues) -> str:
    """One line per (row or difference, column): raw fractions (not x100), for further analysis."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "kind", "setting", "labels", "column", "mean", "std", "n", "ci_low", "ci_high", "p", "p_holm",
                "seeds", "marks"])  # fmt: skip
    spec = values.spec
    for row in spec.rows:
        for c in values.columns:
            s = values.cells[(row, c)]
            seeds = " ".join(map(str, values.seeds_of(row, c)))
            marks = values.row_marks.get(row, "")
            w.writerow([spec.name, "cell", row.setting, row.fraction, c, s.mean, s.std, s.n, "", "", "", "", seeds, marks])
    for i, (treated, control) in enumerate(spec.comparisons):
        for c in values.columns:
            s = values.diffs[(i, c)]
            name = f"{treated.setting}-{control.setting}"
            seeds = " ".join(map(str, sorted(set(values.per_seed[(treated, c)]) & set(values.per_seed[(control, c)]))))
            w.writerow([spec.name, "paired_diff", name, treated.fraction, c, s.mean, s.std, s.n, s.low, s.high, s.p,
                        values.p_holm.get((i, c), math.nan), seeds, values.diff_marks.get(i, "")])  # fmt: skip
    return buf.getvalue()
