"""Where records land (raymh.platform.records): the current dir in a shell, a stable home in a Ray job."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from raymh.config import load_config
from raymh.platform import records
from raymh.platform.tracking import resolve_tracking_uri
from raymh.run.driver import storage_root


@pytest.fixture
def shell(tmp_path, monkeypatch):
    """A plain shell in tmp/cwd: no Ray job, no RAYMH_HOME, no MLflow URI; HOME in tmp."""
    for key in (records.HOME_ENV, records.JOB_ENV, "MLFLOW_TRACKING_URI"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return tmp_path


def _as_job(monkeypatch, job_id: str = "raysubmit_abc") -> None:
    monkeypatch.setenv(records.JOB_ENV, json.dumps({"runtime_env": {}, "metadata": {"job_submission_id": job_id}}))


def test_a_plain_shell_keeps_the_current_directory(shell):
    cfg = load_config("quickstart", [])
    assert records.records_base() == records.RecordsBase(shell / "cwd", None)
    assert storage_root(cfg) == str(shell / "cwd" / "ray_results")
    assert resolve_tracking_uri(cfg) == f"sqlite:///{shell / 'cwd' / 'mlflow.db'}"
    assert records.announce(storage_root(cfg), resolve_tracking_uri(cfg)) is None


def test_a_ray_job_resolves_relative_records_to_the_users_raymh_home(shell, monkeypatch):
    _as_job(monkeypatch)
    cfg = load_config("quickstart", [])
    home = shell / "home" / "raymh"
    assert records.ray_job_context() == "Ray job raysubmit_abc"
    assert storage_root(cfg) == str(home / "ray_results")
    assert resolve_tracking_uri(cfg) == f"sqlite:///{home / 'mlflow.db'}"
    line = records.announce(storage_root(cfg), resolve_tracking_uri(cfg))
    assert "Ray job raysubmit_abc" in line and str(home / "ray_results") in line and "mlflow.db" in line
    relative = load_config("quickstart", ["tracking.storage_path=runs", "tracking.tracking_uri=sqlite:///t.db"])
    assert storage_root(relative) == str(home / "runs")
    assert resolve_tracking_uri(relative) == f"sqlite:///{home / 't.db'}"


def test_rays_working_dir_copy_counts_as_a_job(shell, monkeypatch):
    copy = shell / "session_x" / "runtime_resources" / "working_dir_files" / "_ray_pkg_123"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    assert records.ray_job_context() == "Ray's runtime copy of a working dir"
    assert records.records_base().path == shell / "home" / "raymh"


def test_explicit_settings_win_in_a_job(shell, monkeypatch):
    _as_job(monkeypatch)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    cfg = load_config("quickstart", [f"tracking.storage_path={shell / 'abs'}"])
    assert resolve_tracking_uri(cfg) == "http://mlflow:5000"
    assert storage_root(cfg) == str(shell / "abs")
    cfg = load_config("quickstart", ["tracking.storage_path=s3://bucket/x", "tracking.tracking_uri=sqlite:////m.db"])
    assert storage_root(cfg) == "s3://bucket/x" and resolve_tracking_uri(cfg) == "sqlite:////m.db"
    monkeypatch.setenv(records.HOME_ENV, str(shell / "rh"))
    assert storage_root(load_config("quickstart", [])) == str(shell / "rh" / "ray_results")


def test_raymh_home_also_applies_in_a_shell_and_is_announced(shell, monkeypatch):
    monkeypatch.setenv(records.HOME_ENV, "~/elsewhere")
    assert records.records_base() == records.RecordsBase(shell / "home" / "elsewhere", records.HOME_ENV)
    assert "RAYMH_HOME is set" in records.announce("/x", "sqlite:////y/mlflow.db")


def test_local_dirs_are_the_places_every_node_must_share():
    assert records.local_dirs("/s/runs", "sqlite:////d/mlflow.db") == {
        "tracking.storage_path": "/s/runs",
        "MLflow tracking URI": "/d",
    }
    assert records.local_dirs("s3://b/p", "http://mlflow:5000") == {}
    assert records.local_dirs("gs://b/p", "file:///d/mlruns") == {"MLflow tracking URI": "/d"}


def test_markers_are_written_and_removed(tmp_path):
    dirs = [str(tmp_path / "a"), str(tmp_path / "b")]
    assert records._write_marker(dirs, "t0", "node1") is None
    assert all((Path(d) / records.MARKERS / "t0" / "node1").is_file() for d in dirs)
    records._remove_markers(dirs, "t0")
    assert not any((Path(d) / records.MARKERS).exists() for d in dirs)
    (tmp_path / "file").write_text("")
    assert "file" in records._write_marker([str(tmp_path / "file" / "x")], "t1", "node1")
