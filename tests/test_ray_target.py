"""Which Ray a command uses (raymh.platform.cluster): the recorded cluster, a live/stale probe, resource checks."""

from __future__ import annotations

import socket

import pytest
from click.testing import CliRunner

from raymh.cli import main
from raymh.config import load_config
from raymh.platform.cluster import RayClusterError, check_fits, gcs_answers, recorded_cluster, resolve_target


@pytest.fixture
def ray_tmp(tmp_path, monkeypatch):
    """A private Ray temp root (RAY_TMPDIR), so Ray's own helpers read `<tmp>/ray/ray_current_cluster`."""
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path))
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    (tmp_path / "ray").mkdir()
    return tmp_path / "ray" / "ray_current_cluster"


@pytest.fixture
def listening():
    """A TCP port that accepts connections (a live GCS, as far as the probe can tell)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # closed when the socket is


def test_the_record_is_read_with_rays_own_helper(ray_tmp, listening):
    assert recorded_cluster() == (str(ray_tmp), None)
    ray_tmp.write_text(listening + "\n")
    assert recorded_cluster() == (str(ray_tmp), listening)


def test_probe_tells_live_from_dead(listening, closed_port):
    assert gcs_answers(listening)
    assert not gcs_answers(closed_port)
    assert not gcs_answers("not-an-address")


def test_no_address_joins_a_live_record_and_checks_its_resources(ray_tmp, listening):
    ray_tmp.write_text(listening)
    target = resolve_target(None)
    assert target.join and target.address is None and target.check_resources
    assert listening in target.note and str(ray_tmp) in target.note


def test_no_address_ignores_a_stale_record(ray_tmp, closed_port):
    ray_tmp.write_text(closed_port)
    target = resolve_target(None)
    assert not target.join
    assert f"ignored the stale record of a Ray cluster at {closed_port}" in target.note


def test_no_address_and_no_record_starts_a_local_ray(ray_tmp):
    target = resolve_target(None)
    assert not target.join and target.note == "a local Ray"


def test_address_local_never_joins(ray_tmp, listening, monkeypatch):
    ray_tmp.write_text(listening)
    monkeypatch.setenv("RAY_ADDRESS", listening)
    assert not resolve_target("local").join


def test_address_auto_needs_a_live_record(ray_tmp, listening, closed_port):
    with pytest.raises(RayClusterError, match="no cluster is recorded"):
        resolve_target("auto")
    ray_tmp.write_text(closed_port)
    with pytest.raises(RayClusterError, match=f"recorded there \\({closed_port}\\) does not answer"):
        resolve_target("auto")
    ray_tmp.write_text(listening)
    target = resolve_target("auto")
    assert target.join and target.address == "auto" and not target.check_resources


def test_explicit_address_and_ray_address(ray_tmp, listening, closed_port, monkeypatch):
    assert resolve_target(listening).address == listening
    with pytest.raises(RayClusterError, match=f"no Ray cluster answers at {closed_port} \\(--address\\)"):
        resolve_target(closed_port)
    monkeypatch.setenv("RAY_ADDRESS", listening)
    target = resolve_target(None)
    assert target.join and target.address == listening and "RAY_ADDRESS" in target.note
    assert resolve_target("ray://head:10001").address == "ray://head:10001"  # Ray Client: not probed


@pytest.mark.parametrize(
    ("overrides", "total", "nodes", "missing"),
    [
        ([], {"CPU": 2.0}, [{"CPU": 2.0}], "missing 1 CPU"),
        (["scaling.num_workers=2"], {"CPU": 4.0}, [{"CPU": 4.0}], "missing 1 CPU"),
        (["scaling.use_gpu=true"], {"CPU": 8.0}, [{"CPU": 8.0}], "missing 1 GPU"),
        (
            ["scaling.use_gpu=true", "scaling.num_workers=2"],
            {"CPU": 8.0, "GPU": 1.0},
            [{"CPU": 4.0, "GPU": 1.0}, {"CPU": 4.0}],
            "missing 1 GPU",
        ),
        (["scaling.cpus_per_worker=4"], {"CPU": 6.0}, [{"CPU": 3.0}, {"CPU": 3.0}], "a node with 4 CPUs"),
    ],
)
def test_resource_shortfall_names_what_is_missing_and_a_fit(overrides, total, nodes, missing):
    cfg = load_config("quickstart", overrides)
    with pytest.raises(RayClusterError) as err:
        check_fits(cfg, total, nodes)
    msg = str(err.value)
    assert missing in msg and "--address local" in msg, msg
    fix = msg.split("run with `")[1].split("`")[0].replace("--set ", "").split()
    assert fix, msg
    check_fits(load_config("quickstart", [*overrides, *fix]), total, nodes)  # the suggested values do fit


def test_resources_that_fit_pass_and_hopeless_ones_suggest_no_set():
    cfg = load_config("quickstart", [])  # 1 worker x 2 CPUs + 1 CPU for data
    check_fits(cfg, {"CPU": 3.0}, [{"CPU": 3.0}])
    with pytest.raises(RayClusterError) as err:
        check_fits(cfg, {"CPU": 1.0}, [{"CPU": 1.0}])
    assert "--set" not in str(err.value) and "missing 2 CPUs" in str(err.value)
    check_fits(cfg, {"CPU": 1.0}, [{"CPU": 1.0}], train=False)  # eval: one data task


def test_cli_prints_one_message_and_exits_nonzero(ray_tmp, tmp_path, monkeypatch):
    import ray

    monkeypatch.setattr(ray, "is_initialized", lambda: False)  # as in a fresh process, whatever ran before
    result = CliRunner().invoke(
        main, ["train", "--config", "quickstart", "--address", "auto", "--set", f"tracking.storage_path={tmp_path}"]
    )
    assert result.exit_code == 1, result.output
    assert "Error: --address auto needs a running local Ray cluster" in result.output
    assert "Traceback" not in result.output and result.exception.__class__ is SystemExit


def test_a_started_local_ray_quiets_progress_bars_in_every_process(ray_tmp, monkeypatch):
    """Tune trials of `raymh reproduce` printed MLflow's 'Downloading artifacts' bars: the local Ray's
    runtime_env sets the variables that turn them (and Ray Data's) off in every Ray process."""
    import ray

    from raymh.platform.cluster import init_ray

    seen = {}
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: seen.update(kw))
    init_ray(load_config("quickstart"), address="local")
    assert seen["address"] == "local"
    assert seen["runtime_env"]["env_vars"] == {
        "RAY_DATA_DISABLE_PROGRESS_BARS": "1",
        "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    }
