"""End-to-end training on Ray (slow): real Ray Train workers, real Ray Data, a real MLflow store."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raymh.config import load_config
from raymh.train.checkpoint import read_state
from raymh.train.driver import fit
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def _kill_a_worker_after_first_checkpoint(run_dir: Path, killed: list) -> threading.Thread:
    """Wait for the run's first checkpoint, then SIGKILL one Ray Train worker found with Ray's state API."""
    from ray.util.state import list_actors

    def go():
        deadline = time.time() + 240
        while time.time() < deadline and not list(run_dir.glob("checkpoint_*/state.pt")):
            time.sleep(0.2)
        workers = [a for a in list_actors(filters=[("state", "=", "ALIVE")]) if "TrainWorker" in a.class_name]
        if workers:
            os.kill(workers[0].pid, signal.SIGKILL)
            killed.append(workers[0].pid)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_two_workers_lower_the_loss_and_log_to_mlflow(ray_local, e2e_root):
    cfg = load_config(
        "quickstart",
        tiny_overrides(e2e_root, **{"scaling.num_workers": 2, "train.iters": 12, "train.eval_every": 6,
                                    "loss.dc_weight": 0.1, "optim.lr": 0.02}),
    )  # fmt: skip
    out = fit(cfg)
    assert out.ok, out.error
    uri, client = cfg.tracking.tracking_uri, MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(out.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert (
        run.data.params["scaling.num_workers"] == "2"
        and run.data.tags["domains"] == "cityscapes,bdd100k,synscapes"
    )
    assert {"val/miou/cityscapes", "val/miou/bdd100k", "val/miou/synscapes", "val/miou_mean"} <= set(
        run.data.metrics
    )
    assert {"train/dc/cityscapes", "train/passing/bdd100k", "train/lr", "train/images_per_s"} <= set(
        run.data.metrics
    )
    losses = [v for _, v in _history(uri, out.mlflow_run_id, "train/ce/cityscapes")]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns
    assert {"config", "splits", "eval"} <= {a.path for a in client.list_artifacts(out.mlflow_run_id)}
    panels = client.list_artifacts(out.mlflow_run_id, "eval/step_000012/panels")
    assert {p.path.rsplit("/", 1)[-1] for p in panels} == {"cityscapes.png", "bdd100k.png", "synscapes.png"}
    assert read_state(out.checkpoint)["step"] == 12


def test_killed_worker_recovers_from_the_last_checkpoint(ray_local, e2e_root):
    cfg = load_config(
        "quickstart",
        tiny_overrides(e2e_root, **{"train.iters": 40, "train.eval_every": 4, "train.max_failures": 1,
                                    "tracking.run_name": "killed", "loss.dc_weight": 0.0}),
    )  # fmt: skip
    killed: list[int] = []
    thread = _kill_a_worker_after_first_checkpoint(Path(cfg.tracking.storage_path) / "killed", killed)
    out = fit(cfg)
    thread.join(timeout=5)
    assert killed, "no Ray Train worker was found to kill"
    assert out.ok, out.error
    assert read_state(out.checkpoint)["step"] == 40
    steps = [s for s, _ in _history(cfg.tracking.tracking_uri, out.mlflow_run_id, "train/lr")]
    assert steps[-1] == 40 and set(range(1, 41)) <= set(steps)


def test_resume_continues_the_step_count_and_lr_schedule_exactly(ray_local, e2e_root):
    over = {"train.iters": 40, "train.eval_every": 4, "train.max_failures": 0, "tracking.run_name": "cut",
            "loss.dc_weight": 0.0, "optim.lr": 0.01}  # fmt: skip
    cfg = load_config("quickstart", tiny_overrides(e2e_root, **over))
    killed: list[int] = []
    thread = _kill_a_worker_after_first_checkpoint(Path(cfg.tracking.storage_path) / "cut", killed)
    first = fit(cfg)
    thread.join(timeout=5)
    assert killed and not first.ok  # interrupted, checkpoints kept
    with pytest.raises(Exception, match="already exists"):
        fit(cfg)  # re-using a name is refused: never a silent resume
    resumed = fit(cfg, resume="cut")
    assert resumed.ok, resumed.error
    assert resumed.mlflow_run_id == first.mlflow_run_id  # the same MLflow run goes on
    assert read_state(resumed.checkpoint)["step"] == 40
    history = _history(cfg.tracking.tracking_uri, resumed.mlflow_run_id, "train/lr")
    assert {s for s, _ in history} == set(range(1, 41))
    for step, lr in history:  # poly 0.9 per iteration, continued exactly across the resume
        assert lr == pytest.approx(0.01 * (1 - step / 40) ** 0.9, rel=1e-9, abs=1e-15)


def test_nan_loss_stops_with_the_step_and_domain_and_keeps_checkpoints(ray_local, e2e_root):
    cfg = load_config(
        "quickstart",
        tiny_overrides(e2e_root, **{"optim.lr": 1.0e12, "train.iters": 12, "train.eval_every": 1,
                                    "loss.dc_weight": 0.0}),
    )  # fmt: skip
    out = fit(cfg)
    assert not out.ok
    assert "non-finite Mix Loss at step" in out.error and "ce/" in out.error
    assert list(out.run_dir.glob("checkpoint_*/state.pt")), "checkpoints written before the NaN are kept"
    assert MlflowClient(cfg.tracking.tracking_uri).get_run(out.mlflow_run_id).info.status == "FAILED"
