"""`raymh reproduce` end to end (tiny): a Tune grid of 2 cells x 2 seeds under one MLflow parent run, the
table checked against the child runs' own metrics, and `raymh report` rebuilding it from MLflow alone."""

from __future__ import annotations

import math

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_table(ray_local, e2e_root):
    from raymh.evidence.reproduce import run_reproduce

    root = e2e_root / "evidence"
    overrides = tiny_overrides(root, **{"train.iters": 2, "train.eval_every": 2, "loss.dc_weight": 0.1,
                                        "data.cache_dir": str(e2e_root / "cache")})  # the session's rendered data
    ev = run_reproduce(
        "semi-vs-supervised", config="quickstart", seeds=2, fractions=("1/2",), full=False,
        overrides=overrides, out=root / "out",
    )  # fmt: skip
    return ev, root


def test_parent_and_child_runs_are_recorded(tiny_table):
    from mlflow.tracking import MlflowClient

    ev, root = tiny_table
    client = MlflowClient(ev.uri)
    parent = client.get_run(ev.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["table"] == "semi-vs-supervised" and parent.data.params["seeds"] == "0,1"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{ev.parent_run_id}'"
    )
    cells = sorted((c.data.tags["raymh.cell"], c.data.tags["raymh.seed"]) for c in children)
    assert cells == [("semi@1/2", "0"), ("semi@1/2", "1"), ("supervised@1/2", "0"), ("supervised@1/2", "1")]
    assert all(c.info.status == "FINISHED" for c in children)
    for c in children:  # each cell's own settings reached its run
        assert float(c.data.params["loss.dc_weight"]) == (0.0 if c.data.tags["raymh.setting"] == "supervised" else 0.1)
        assert c.data.params["data.labeled_fraction"] == "0.5" and c.data.params["train.seed"] == c.data.tags["raymh.seed"]
    semi = [c for c in children if c.data.tags["raymh.setting"] == "semi"]
    assert any(k.startswith("train/pseudo_acc/") for k in semi[0].data.metrics)  # diagnostics were logged
    assert any(k.startswith("train/hard_neg_sim/") for k in semi[0].data.metrics)
    artifacts = {a.path for a in client.list_artifacts(ev.parent_run_id, "evidence")}
    assert {"evidence/table.md", "evidence/table.csv", "evidence/bars.png"} <= artifacts


def test_supervised_and_semi_children_of_a_seed_trained_on_the_same_labeled_batches(tiny_table):
    from mlflow.tracking import MlflowClient

    ev, _ = tiny_table
    client = MlflowClient(ev.uri)
    parent = client.get_run(ev.parent_run_id)
    assert parent.data.params["render_seed"] == "0"  # quickstart names no tuning seeds: its own render seed
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{ev.parent_run_id}'")
    digest = {(c.data.tags["raymh.setting"], c.data.tags["raymh.seed"]): c.data.tags["raymh.labeled_digest"] for c in children}
    assert digest[("semi", "0")] == digest[("supervised", "0")] and digest[("semi", "1")] == digest[("supervised", "1")]
    assert digest[("semi", "0")] != digest[("semi", "1")]


def test_table_equals_the_childrens_metrics(tiny_table):
    from mlflow.tracking import MlflowClient

    ev, _ = tiny_table
    client = MlflowClient(ev.uri)
    parent = client.get_run(ev.parent_run_id)
    children = client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{ev.parent_run_id}'")
    domains = ev.spec.domains
    by = {(c.data.tags["raymh.setting"], int(c.data.tags["raymh.seed"])): c.data.metrics for c in children}
    sup_row, semi_row = ev.spec.rows
    for row, setting in ((sup_row, "supervised"), (semi_row, "semi")):
        for d in domains:
            vals = [by[(setting, s)][f"val/miou/{d}"] for s in (0, 1)]
            got = ev.values.cells[(row, d)]
            assert got.mean == pytest.approx(np.mean(vals)) and got.std == pytest.approx(np.std(vals, ddof=1))
    diffs = [np.mean([by[("semi", s)][f"val/miou/{d}"] for d in domains])
             - np.mean([by[("supervised", s)][f"val/miou/{d}"] for d in domains]) for s in (0, 1)]  # fmt: skip
    half = 12.706205 * np.std(diffs, ddof=1) / math.sqrt(2)
    got = ev.values.diffs[(0, "average")]
    assert got.mean == pytest.approx(np.mean(diffs), abs=1e-12)
    assert got.low == pytest.approx(np.mean(diffs) - half, abs=1e-9) and got.high == pytest.approx(np.mean(diffs) + half, abs=1e-9)


def test_report_rebuilds_the_same_table_from_mlflow(tiny_table, tmp_path):
    from raymh.cli import main
    from raymh.evidence import render

    ev, root = tiny_table
    printed = render.format_text(ev.values)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", "--run", ev.parent_run_id, "--tracking-uri", ev.uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert printed in result.output
    assert (out / "table.md").read_text() == (root / "out" / "table.md").read_text()
    assert (out / "table.csv").read_text() == (root / "out" / "table.csv").read_text()
    for name in ("bars.png", "qualitative.png", "diagnostics.png"):
        assert (out / name).stat().st_size > 1000, name
    bad = CliRunner().invoke(main, ["report", "--run", "0" * 32, "--tracking-uri", ev.uri])
    assert bad.exit_code != 0 and "not found" in bad.output and "Traceback" not in bad.output
