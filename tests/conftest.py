"""Shared fixtures: a tiny synthetic experiment config and one local Ray for the end-to-end tests."""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")


def tiny_overrides(tmp_root, **extra) -> list[str]:
    """A run that trains in seconds on 2 cores: tiny synthetic domains, resnet18, 64 px crops."""
    base = {
        "data.cache_dir": str(tmp_root / "cache"),
        "data.synthetic": "{images: 8, val_images: 4, size: [64, 128], seed: 0}",
        "data.crop_size": "[64, 64]",
        "data.labeled_batch_size": 2,
        "data.unlabeled_batch_size": 1,
        "data.labeled_fraction": 0.5,
        "model.backbone": "resnet18",
        "model.head_depth": 1,
        "loss.dc_start_iter": 0,
        "train.iters": 6,
        "train.eval_every": 3,
        "train.log_every": 1,
        "train.panels": 1,
        "scaling.cpus_per_worker": 1,
        "tracking.storage_path": str(tmp_root / "runs"),
        "tracking.tracking_uri": f"sqlite:///{tmp_root}/mlflow.db",
        "tracking.log_model": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


SESSION_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI")


def _restore_tracking_uri() -> None:
    if SESSION_TRACKING_URI is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = SESSION_TRACKING_URI


@pytest.fixture(autouse=True)
def _no_leaked_tracking_uri():
    """`mlflow.set_tracking_uri` also sets MLFLOW_TRACKING_URI in os.environ, where every later subprocess (a
    `raymh` CLI, a `ray start` head and its jobs) would inherit it: each test starts and ends with the variable as
    the session found it (a session fixture's call is undone too)."""
    _restore_tracking_uri()
    yield
    _restore_tracking_uri()


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray for all end-to-end tests (starting Ray costs ~10 s on 2 cores)."""
    import ray

    from raymh.console import QUIET_ENV

    ray.init(
        address="local",  # never a cluster `ray start` recorded on this machine
        num_cpus=6, include_dashboard=True, runtime_env={"env_vars": dict(QUIET_ENV)}  # as raymh's own Ray
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory):
    """A folder shared by the end-to-end tests (one synthetic render and prepare for all of them)."""
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def tiny_trained_run(ray_local, e2e_root):
    """One tiny run, trained once per session, for every test that needs a trained model.

    Returns a namespace: `cfg`, `outcome` (FitOutcome: run_dir, best_checkpoint, mlflow_run_id, metrics),
    `uri` (its MLflow store) and `model_uri` (`runs:/<id>/model`, the logged pyfunc)."""
    from raymh.config import load_config
    from raymh.run.driver import fit

    cfg = load_config(
        "quickstart", tiny_overrides(e2e_root, **{"tracking.run_name": "tiny-trained", "tracking.log_model": True})
    )
    outcome = fit(cfg, quiet=True)
    assert outcome.ok, outcome.error
    return SimpleNamespace(
        cfg=cfg, outcome=outcome, uri=cfg.tracking.tracking_uri, model_uri=f"runs:/{outcome.mlflow_run_id}/model"
    )


# ------------------------------------------------------------------------------------------ process exit
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    """End the test process with pytest's own status once pytest has reported everything, without running the
    interpreter's teardown of the native libraries the suite loaded in this one process (Ray's core worker,
    torch, gloo, onnxruntime, pyarrow).

    Why: in CI the process once died with SIGSEGV after the last test had passed: `make test` failed with
    code 139, and pytest's summary, still in stdout's buffer, was lost with the process. That teardown is
    not code under test here: every test's outcome is already decided and printed when this runs, and the
    `raymh` commands themselves are checked for a clean exit by the tests that run them as subprocesses.
    `-X faulthandler` (Makefile) prints the native stack of any crash before this point."""
    if not _EXIT_STATUS:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])
