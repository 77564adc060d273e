"""Evidence tables as text (console and Markdown) and CSV, in the method's layout.

Rows are settings at a label fraction, columns the domains and their average; cells are mean +- std over
seeds (mIoU x100); under each compared pair a row gives the paired difference with its 95% t-interval.
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


def cell_text(s: Summary) -> str:
    if s.n == 0:
        return "n/a"
    return _pct(s.mean) + (f" ± {_pct(s.std)}" if math.isfinite(s.std) else "")


def diff_text(s: Summary) -> str:
    if s.n == 0:
        return "n/a"
    if not math.isfinite(s.low):
        return _pct(s.mean, sign=True) + " (1 seed)"
    return f"{_pct(s.mean, sign=True)} [{_pct(s.low, sign=True)}, {_pct(s.high, sign=True)}]"


def table_rows(values: TableValues) -> list[list[str]]:
    """Header plus one row per setting and one per comparison (placed after its treated row)."""
    spec = values.spec
    header = ["setting", "labels", *values.columns]
    out = [header]
    for row in spec.rows:
        out.append([row.label, row.fraction, *(cell_text(values.cells[(row, c)]) for c in values.columns)])
        for i, (treated, control) in enumerate(spec.comparisons):
            if treated == row:
                name = f"  {treated.setting} - {control.setting}"
                out.append([name, row.fraction, *(diff_text(values.diffs[(i, c)]) for c in values.columns)])
    return out


def _title(values: TableValues) -> str:
    n = len(values.seeds)
    return f"{values.spec.title}: mean ± std over {n} seed{'s' if n != 1 else ''} {values.seeds}"


def _note() -> str:
    return "differences are paired by seed (same labeled subset, init and augmentation), with 95% t-intervals"


def format_text(values: TableValues) -> str:
    rows = table_rows(values)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = [_title(values)]
    for k, r in enumerate(rows):
        lines.append("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(_note())
    return "\n".join(lines)


def format_markdown(values: TableValues) -> str:
    rows = table_rows(values)
    lines = [f"**{_title(values)}**", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(v.strip() for v in r) + " |" for r in rows[1:]]
    return "\n".join([*lines, "", f"_{_note()}_", ""])


def format_csv(values: TableValues) -> str:
    """One line per (row or difference, column): raw fractions (not x100), for further analysis."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["table", "kind", "setting", "labels", "column", "mean", "std", "n", "ci_low", "ci_high"])
    spec = values.spec
    for row in spec.rows:
        for c in values.columns:
            s = values.cells[(row, c)]
            w.writerow([spec.name, "cell", row.setting, row.fraction, c, s.mean, s.std, s.n, "", ""])
    for i, (treated, control) in enumerate(spec.comparisons):
        for c in values.columns:
            s = values.diffs[(i, c)]
            name = f"{treated.setting}-{control.setting}"
            w.writerow([spec.name, "paired_diff", name, treated.fraction, c, s.mean, s.std, s.n, s.low, s.high])
    return buf.getvalue()
