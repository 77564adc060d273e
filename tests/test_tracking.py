"""MLflow tracking: absolute default URI, a run in a temporary store, and nothing lost when unreachable."""

import json
import os

import pytest
from mlflow.tracking import MlflowClient

from raymh.config import load_config
from raymh.platform.tracking import TrackedRun, resolve_tracking_uri


def test_default_uri_is_absolute_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///rel.db")
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path.resolve()}/rel.db"
    cfg = load_config("quickstart", ["tracking.tracking_uri=http://127.0.0.1:5999"])
    assert resolve_tracking_uri(cfg) == "http://127.0.0.1:5999"


def test_run_logs_metrics_params_and_artifacts(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = TrackedRun.create(
        uri, experiment="e", run_name="r", spool=tmp_path / "spool.jsonl", tags={"t": "1"}
    )
    assert run.online
    run.log_params({"loss.dc_weight": 0.1})
    run.log_metrics({"train/loss": 1.5, "val/iou/x": float("nan")}, step=3)
    (tmp_path / "a.txt").write_text("hello")
    run.log_artifact(tmp_path / "a.txt", "config")
    run.end()
    client = MlflowClient(uri)
    data = client.get_run(run.run_id)
    assert data.data.params["loss.dc_weight"] == "0.1"
    assert data.data.metrics == {"train/loss": 1.5} and data.data.tags["t"] == "1"
    assert data.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(run.run_id, "config")] == ["config/a.txt"]
    assert not (tmp_path / "spool.jsonl").exists()


def test_dataset_inputs_carry_name_digest_source_and_context(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    run = TrackedRun.create(uri, experiment="e", run_name="r", spool=tmp_path / "spool.jsonl", tags={})
    run.log_datasets([{"name": "a.val", "context": "val", "digest": "0123456789abcdef", "source": str(tmp_path), "rows": 7}])
    assert run.online  # logging datasets never takes the run offline
    (got,) = MlflowClient(uri).get_run(run.run_id).inputs.dataset_inputs
    assert (got.dataset.name, got.dataset.digest, got.dataset.source_type) == ("a.val", "0123456789abcdef", "local")
    assert str(tmp_path) in got.dataset.source
    assert {t.key: t.value for t in got.tags} == {"mlflow.data.context": "val", "raymh.rows": "7"}


def test_unreachable_server_warns_once_and_spools_everything(tmp_path, capsys):
    spool = tmp_path / "spool.jsonl"
    run = TrackedRun.create("http://127.0.0.1:9", experiment="e", run_name="r", spool=spool)
    assert not run.online
    run.log_metrics({"train/loss": 1.0}, step=1)
    run.log_metrics({"train/loss": 0.5}, step=2)
    run.end()
    err = capsys.readouterr().err
    assert err.count("[raymh] MLflow tracking") == 1 and str(spool) in err
    records = [json.loads(line) for line in spool.read_text().splitlines()]
    assert [r["kind"] for r in records] == ["metrics", "metrics", "end"]
    assert records[1]["metrics"] == {"train/loss": 0.5} and records[1]["step"] == 2


@pytest.mark.parametrize("before", [None, "sqlite:////somewhere/else.db"])
def test_fluent_tracking_uri_leaves_the_processs_variable_as_it_was(before, tmp_path, monkeypatch):
    """`mlflow.set_tracking_uri` writes MLFLOW_TRACKING_URI; a later run of this process would take it as its
    default store (resolve_tracking_uri) and subprocesses would inherit it."""
    import mlflow

    from raymh.platform.tracking import fluent_tracking_uri, resolve_tracking_uri

    if before is None:
        monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    else:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", before)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with fluent_tracking_uri(uri):
        assert mlflow.get_tracking_uri() == uri
    assert os.environ.get("MLFLOW_TRACKING_URI") == before
    assert resolve_tracking_uri() != uri
