"""`raymh runs` on an MLflow store written the way a training run writes it (params, tags, metric histories,
the config artifact), without Ray; the end-to-end version runs on a real run in test_console_e2e.py."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from mlflow.tracking import MlflowClient

from raymh.cli import main
from raymh.config import flatten, load_config, to_yaml

DOMAINS = ["cityscapes", "bdd100k"]


def _log_run(client, exp_id, tmp_path, name, *, status, evals, iters, storage):
    cfg = load_config("quickstart", [f"train.iters={iters}", "loss.dc_weight=0.2", f"tracking.storage_path={storage}",
                                     "domains=[{name: cityscapes, kind: cityscapes, root: cityscapes}, "
                                     "{name: bdd100k, kind: bdd100k, root: bdd100k}]"])  # fmt: skip
    run = client.create_run(exp_id, run_name=name, tags={"preset": "quickstart", "domains": ",".join(DOMAINS)})
    rid = run.info.run_id
    for k, v in flatten(cfg).items():
        client.log_param(rid, k, v)
    (tmp_path / "config.yaml").write_text(to_yaml(cfg))
    client.log_artifact(rid, str(tmp_path / "config.yaml"), "config")
    for step in range(1, max(evals) + 1):
        client.log_metric(rid, "train/lr", 0.001, step=step)
    for step, per in evals.items():
        for d, v in zip(DOMAINS, per, strict=True):
            client.log_metric(rid, f"val/miou/{d}", v, step=step)
        client.log_metric(rid, "val/miou_mean", sum(per) / len(per), step=step)
    client.set_terminated(rid, status)
    return rid


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("runs")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("raymh-quickstart")
    _log_run(client, exp, tmp_path, "done", status="FINISHED", evals={10: [0.2, 0.4], 20: [0.5, 0.3]}, iters=20,
             storage="/runs")  # fmt: skip
    _log_run(client, exp, tmp_path, "cut", status="FAILED", evals={10: [0.3, 0.5], 20: [0.2, 0.2]}, iters=40,
             storage="/runs")  # fmt: skip
    return uri


def test_runs_lists_status_steps_best_last_and_per_domain_miou(store):
    out = CliRunner().invoke(main, ["runs", "--tracking-uri", store])
    assert out.exit_code == 0, out.output
    rows = {line.split()[0]: line for line in out.output.splitlines() if line.startswith(("done ", "cut "))}
    assert re.search(r"FINISHED\s+20/20\s+0\.4000\s+0\.4000\s+cityscapes 0\.500, bdd100k 0\.300", rows["done"])
    # best at step 10 (0.4 mean), last at step 20 (0.2); per-domain values of the best evaluation
    assert re.search(r"FAILED\s+20/40\s+0\.4000\s+0\.2000\s+cityscapes 0\.300, bdd100k 0\.500", rows["cut"])
    assert "raymh train --resume cut --set tracking.storage_path=/runs" in out.output
    assert "raymh train --resume done" not in out.output  # a finished run has nothing to resume
    assert "raymh eval --checkpoint /runs/done" in out.output


def test_runs_show_diffs_the_config_against_its_preset_and_tables_evaluations(store):
    out = CliRunner().invoke(main, ["runs", "--tracking-uri", store, "show", "cut"])
    assert out.exit_code == 0, out.output
    assert re.search(r"loss\.dc_weight\s+0\.1 -> 0\.2", out.output)
    assert re.search(r"train\.iters\s+600 -> 40", out.output)
    assert "optim.lr" not in out.output  # the preset's own value: no difference
    assert re.search(r"^\s+10\s+0\.3000\s+0\.5000\s+0\.4000$", out.output, re.M)
    assert re.search(r"^\s+20\s+0\.2000\s+0\.2000\s+0\.2000$", out.output, re.M)


def test_runs_of_an_unknown_experiment_or_run_is_one_message(store):
    out = CliRunner().invoke(main, ["runs", "--tracking-uri", store, "--experiment", "nope"])
    assert out.exit_code == 1 and "no MLflow experiment 'nope'" in out.output and "Traceback" not in out.output
    out = CliRunner().invoke(main, ["runs", "--tracking-uri", store, "show", "nope"])
    assert out.exit_code == 1 and "no run named or with id 'nope'" in out.output
