"""`raymh tune` end to end (slow): a real Ray Tune sweep of TorchTrainers, MLflow parent and child runs."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from raymh.cli import main
from raymh.config import load_config
from raymh.tune.sweep import run_sweep
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow
SPACE = Path(__file__).resolve().parents[1] / "tune_spaces" / "quick.yaml"


def test_quick_sweep_logs_a_parent_and_one_child_per_trial(ray_local, e2e_root, tmp_path, capfd):
    overrides = tiny_overrides(e2e_root, **{"tracking.tracking_uri": f"sqlite:///{tmp_path}/mlflow.db",
                                            "tracking.storage_path": str(tmp_path / "runs")})  # fmt: skip
    best_file = tmp_path / "best.yaml"
    out = run_sweep(
        "quickstart", str(SPACE), overrides=overrides + ["train.iters=4", "train.eval_every=2"],
        num_samples=2, export_best=str(best_file),
        max_concurrent=2,  # the two trials' start-ups (mostly waiting) overlap
    )  # fmt: skip
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    parent = client.get_run(out["parent_run_id"])
    assert parent.info.status == "FINISHED" and parent.data.params["space.loss.gamma"].startswith("uniform")
    assert "results" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    exp = parent.info.experiment_id
    children = client.search_runs([exp], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)
    for child in children:  # each child holds its own sampled values
        lam, gamma = float(child.data.params["loss.dc_weight"]), float(child.data.params["loss.gamma"])
        assert 0.03 <= lam <= 0.3 and 0.6 <= gamma <= 0.9
        assert child.data.params["model.head_depth"] in ("1", "2")
        assert child.data.params["sampled.loss.dc_weight"] == child.data.params["loss.dc_weight"]
    best_child = max(children, key=lambda c: c.data.metrics["val/miou_mean"])
    assert out["best"]["metric"] == pytest.approx(best_child.data.metrics["val/miou_mean"], rel=1e-9)
    assert out["best"]["mlflow_run_id"] == best_child.info.run_id
    best_cfg = load_config(str(best_file))
    assert best_cfg.loss.dc_weight == pytest.approx(float(best_child.data.params["loss.dc_weight"]))
    assert all(math.isfinite(r["metric"]) for r in out["rows"])
    console = capfd.readouterr().out
    assert "Configuration for experiment" not in console and "TensorBoard" not in console  # Tune's own output
    steps = re.findall(r"\[raymh\] trial (\w+): step \d+/4", console)
    assert len(set(steps)) == 2, console[-3000:]  # each trial's progress lines say which trial they are of


def test_bad_space_fails_before_any_trial(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("params:\n  loss.dcweight: {uniform: [0.1, 0.2]}\n")
    result = CliRunner().invoke(main, ["tune", "--config", "quickstart", "--space", str(bad)])
    assert result.exit_code != 0 and "loss.dcweight" in result.output
    bad.write_text("params:\n  loss.gamma: {uniform: [0.9, 0.5]}\n")
    result = CliRunner().invoke(main, ["tune", "--config", "quickstart", "--space", str(bad)])
    assert result.exit_code != 0 and "loss.gamma" in result.output
