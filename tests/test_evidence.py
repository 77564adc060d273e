"""Evidence tables: cells and trials of each table, seed statistics, paired t-intervals and the layout."""

from __future__ import annotations

import csv
import io
import math

import numpy as np
import pytest

from raymh.config import ConfigError, load_config_dict
from raymh.evidence import render
from raymh.evidence.stats import (
    betainc,
    holm,
    paired_difference,
    paired_t_p,
    summarize,
    t_quantile_975,
    t_two_sided_p,
)
from raymh.evidence.tables import RunRecord, Trial, parse_fraction, table_spec, table_values

DOMAINS = ["cityscapes", "bdd100k", "synscapes"]


def test_t_quantiles_match_scipy():
    stats = pytest.importorskip("scipy.stats")  # scipy is a dev dependency: this runs in CI
    for df in (1, 2, 3, 5, 10, 29, 30, 31, 60, 200):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), rel=2e-4), df
    with pytest.raises(ValueError, match="degree of freedom"):
        t_quantile_975(0)


def test_paired_difference_is_a_t_interval_over_same_seed_differences():
    treated = {0: 0.40, 1: 0.36, 2: 0.39, 7: 0.5}  # seed 7 has no control: left out
    control = {0: 0.33, 1: 0.33, 2: 0.34}
    d = np.array([0.07, 0.03, 0.05])
    half = 4.302653 * d.std(ddof=1) / math.sqrt(3)
    s = paired_difference(treated, control)
    assert s.n == 3
    assert s.mean == pytest.approx(d.mean())
    assert s.std == pytest.approx(d.std(ddof=1))
    assert (s.low, s.high) == (pytest.approx(d.mean() - half, rel=1e-4), pytest.approx(d.mean() + half, rel=1e-4))
    one = paired_difference({0: 0.4}, {0: 0.3})
    assert one.n == 1 and one.mean == pytest.approx(0.1) and math.isnan(one.low)
    assert math.isnan(summarize([0.5]).std) and summarize([]).n == 0


def test_t_test_p_values_match_scipy():
    """The paired t-test's two-sided p-value, from our own regularized incomplete beta function."""
    stats = pytest.importorskip("scipy.stats")
    special = pytest.importorskip("scipy.special")
    for a, b, x in ((0.5, 0.5, 0.3), (1.5, 0.5, 0.9), (10.0, 0.5, 0.01), (2.0, 3.0, 0.6), (50.0, 0.5, 0.999)):
        assert betainc(a, b, x) == pytest.approx(special.betainc(a, b, x), rel=1e-10), (a, b, x)
    for df in (1, 2, 3, 5, 29, 200):
        for t in (0.0, 0.3, 1.0, 2.0, 4.3, 12.7, 80.0, -2.5):
            assert t_two_sided_p(t, df) == pytest.approx(2 * stats.t.sf(abs(t), df), rel=1e-9, abs=1e-300), (t, df)
    treated, control = {0: 0.40, 1: 0.36, 2: 0.39, 3: 0.41}, {0: 0.33, 1: 0.35, 2: 0.34, 3: 0.33}
    want = stats.ttest_rel(list(treated.values()), list(control.values())).pvalue
    assert paired_difference(treated, control).p == pytest.approx(want, rel=1e-9)
    assert math.isnan(paired_difference({0: 0.4}, {0: 0.3}).p)  # one seed: no test
    assert paired_t_p(0.03, 0.0, 3) == 0.0 and paired_t_p(0.0, 0.0, 3) == 1.0  # every seed the same difference


def test_holm_adjustment_by_hand():
    # sorted: 0.005 (x4 = 0.02), 0.01 (x3 = 0.03), 0.03 (x2 = 0.06), 0.04 (x1 = 0.04 -> kept monotone: 0.06)
    got = holm([0.01, 0.04, 0.03, math.nan, 0.005])
    assert got[:3] == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06)]
    assert math.isnan(got[3]) and got[4] == pytest.approx(0.02)
    assert holm([0.5, 0.6]) == [1.0, 1.0] and holm([]) == []


def test_the_tables_differences_are_one_holm_family():
    rng = np.random.default_rng(2)
    spec = table_spec("semi-vs-supervised", domains=DOMAINS, fractions=["1/8", "1/4"])
    values = table_values(spec, _records(rng, spec, [0, 1, 2]))
    assert values.family == "family: 2 fractions x 4 columns = 8 paired comparisons"
    keys = [(i, c) for i in range(2) for c in values.columns]
    want = holm([values.diffs[k].p for k in keys])
    assert [values.p_holm[k] for k in keys] == pytest.approx(want)
    assert all(values.p_holm[k] >= values.diffs[k].p for k in keys)
    d, p = values.diffs[(1, "average")], values.p_holm[(1, "average")]
    text = render.format_text(values)
    assert f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}] p_holm{render.p_text(p)}" in text
    assert "Holm-adjusted over the 2 fractions x 4 columns = 8 paired comparisons" in text
    rows = list(csv.DictReader(io.StringIO(render.format_csv(values))))
    diff = next(r for r in rows if r["kind"] == "paired_diff" and r["labels"] == "1/4" and r["column"] == "average")
    assert float(diff["p"]) == pytest.approx(d.p) and float(diff["p_holm"]) == pytest.approx(p)
    assert diff["seeds"] == "0 1 2" and diff["n"] == "3"
    assert render.p_text(0.0004) == "<0.001" and render.p_text(0.04321) == "=0.043"


def test_semi_vs_supervised_cells_and_trials():
    spec = table_spec("semi-vs-supervised", domains=DOMAINS, fractions=["1/8", "0.25"])
    assert [(r.setting, r.fraction) for r in spec.rows] == [
        ("supervised", "1/8"), ("semi", "1/8"), ("supervised", "1/4"), ("semi", "1/4"), ("supervised", "full")
    ]  # fmt: skip
    trials = spec.trials([0, 1])
    assert len(trials) == 10 and trials[0].seed == 0 and trials[-1].seed == 1  # seed-major
    base = load_config_dict("quickstart")
    sup = Trial("supervised", "1/8", 3).overrides(base)
    assert sup == {"data.labeled_fraction": 0.125, "data.split_seed": 3, "train.seed": 3, "loss.dc_weight": 0.0}
    assert "loss.dc_weight" not in Trial("semi", "1/4", 0).overrides(base)
    assert Trial("supervised", "full", 0).overrides(base)["data.labeled_fraction"] == 1.0
    assert Trial.from_tags(Trial("semi", "1/8", 2).tags()) == Trial("semi", "1/8", 2)


def test_multi_vs_single_runs_one_model_per_domain():
    spec = table_spec("multi-vs-single", domains=DOMAINS, fractions=["1/8"])
    trials = spec.trials([0])
    assert sorted(t.cell for t in trials) == sorted(
        ["multi@1/8", *(f"single@1/8:{d}" for d in DOMAINS)]
    )
    base = load_config_dict("quickstart")
    one = next(t for t in trials if t.domain == "bdd100k").overrides(base)
    assert [d["name"] for d in one["domains"]] == ["bdd100k"]
    with pytest.raises(ConfigError, match="at least two domains"):
        table_spec("multi-vs-single", domains=["a"], fractions=["1/8"])
    with pytest.raises(ConfigError, match="unknown table"):
        table_spec("nope", domains=DOMAINS, fractions=["1/8"])
    with pytest.raises(ConfigError, match="1/8"):
        parse_fraction("one eighth")
    with pytest.raises(ConfigError, match=r"\(0, 1\]"):
        parse_fraction("3/2")


def _records(rng: np.random.Generator, spec, seeds) -> list[RunRecord]:
    out = []
    for t in spec.trials(seeds):
        domains = [t.domain] if t.domain else spec.domains
        out.append(RunRecord(t, {d: float(rng.uniform(0.2, 0.6)) for d in domains}, run_id=t.slug))
    return out


def test_table_values_average_and_paired_columns_from_runs():
    rng = np.random.default_rng(0)
    spec = table_spec("multi-vs-single", domains=DOMAINS, fractions=["1/8"])
    records = _records(rng, spec, [0, 1, 2])
    values = table_values(spec, records)
    single = {(r.trial.seed, r.trial.domain): r.miou[r.trial.domain] for r in records if r.trial.setting == "single"}
    multi = {r.trial.seed: r.miou for r in records if r.trial.setting == "multi"}
    single_avg = {s: np.mean([single[(s, d)] for d in DOMAINS]) for s in range(3)}
    multi_avg = {s: np.mean([multi[s][d] for d in DOMAINS]) for s in range(3)}
    single_row, multi_row = spec.rows
    assert values.cells[(single_row, "average")].mean == pytest.approx(np.mean(list(single_avg.values())))
    assert values.cells[(multi_row, "bdd100k")].std == pytest.approx(np.std([multi[s]["bdd100k"] for s in range(3)], ddof=1))
    diff = np.array([multi_avg[s] - single_avg[s] for s in range(3)])
    got = values.diffs[(0, "average")]
    half = 4.302653 * diff.std(ddof=1) / math.sqrt(3)
    assert got.mean == pytest.approx(diff.mean()) and got.low == pytest.approx(diff.mean() - half, rel=1e-4)
    # a seed missing one domain's single run has no average for that seed
    partial = [r for r in records if not (r.trial.setting == "single" and r.trial.seed == 2 and r.trial.domain == "bdd100k")]
    assert table_values(spec, partial).cells[(single_row, "average")].n == 2


def test_rendered_table_has_the_methods_layout():
    rng = np.random.default_rng(1)
    spec = table_spec("semi-vs-supervised", domains=DOMAINS, fractions=["1/8"])
    values = table_values(spec, _records(rng, spec, [0, 1]))
    text = render.format_text(values)
    lines = text.splitlines()
    assert lines[1].split() == ["setting", "labels", *DOMAINS, "average"]
    labels = [line.strip().split("  ")[0] for line in lines[3:-1]]
    assert labels == ["supervised", "semi (DCLoss)", "semi - supervised", "supervised"]
    sup = values.cells[(spec.rows[0], "cityscapes")]
    assert f"{100 * sup.mean:.1f} ± {100 * sup.std:.1f}" in lines[3]
    d = values.diffs[(0, "average")]
    assert f"{100 * d.mean:+.1f} [{100 * d.low:+.1f}, {100 * d.high:+.1f}]" in lines[5]
    md = render.format_markdown(values)
    assert md.count("\n|") == 1 + 1 + 4  # header, rule, 4 rows
    csv_lines = render.format_csv(values).strip().splitlines()
    assert len(csv_lines) == 1 + 3 * 4 + 4  # header, 3 rows x 4 columns, 1 comparison x 4 columns


@pytest.mark.parametrize("failed", [0, 2])
def test_reproduce_exits_1_when_a_run_of_the_grid_failed(monkeypatch, failed):
    """The table is still written with the finished runs, but a grid with failed runs is not a success."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    import raymh.evidence.reproduce as reproduce
    from raymh.cli import main

    calls = []
    monkeypatch.setattr(reproduce, "run_reproduce", lambda *a, **k: calls.append(k) or SimpleNamespace(failed_trials=failed))
    result = CliRunner().invoke(main, ["reproduce", "--table", "semi-vs-supervised", "--seeds", "1"])
    assert calls and calls[0]["seeds"] == 1
    assert result.exit_code == (1 if failed else 0), result.output
