"""`ray job submit ... -- raymh train` against a real `ray start --head` with token auth (slow).

A job runs in Ray's temporary copy of its working dir, one copy per code version: raymh's records (checkpoints
and the default MLflow store) go to a stable home instead, here RAYMH_HOME set in the head's environment (a tmp
dir, so the test never writes into the real home). On two nodes that do not share the storage path, training
stops before its first step with a message naming the setting.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from raymh.platform.records import MARKERS
from tests.conftest import tiny_overrides
from tests.ray_head import RayHead

pytestmark = [pytest.mark.slow, pytest.mark.cluster]

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    home = tmp_path_factory.mktemp("raymh_home")
    h = RayHead(num_cpus=4, token_mode=True, env={"RAYMH_HOME": str(home)})
    h.home = home
    try:
        yield h.wait_ready()
    finally:
        h.stop()


def _train_args(e2e_root, *extra_args: str, **over) -> list[str]:
    """`raymh train` of a tiny run with the default records locations (no tracking paths set)."""
    sets = tiny_overrides(e2e_root, **{"data.cache_dir": str(e2e_root / "cache")})
    sets = [s for s in sets if not s.startswith(("tracking.storage_path=", "tracking.tracking_uri="))]
    sets += [f"{k}={v}" for k, v in over.items()]  # last: they win (a test may set a storage path)
    return ["raymh", "train", "--config", "quickstart", *[a for s in sets for a in ("--set", s)], *extra_args]


def _working_dir(tmp_path: Path, name: str) -> Path:
    """A small working dir of its own content (so its own `_ray_pkg_<hash>` copy on the head)."""
    wd = tmp_path / name
    wd.mkdir()
    (wd / "NOTE.txt").write_text(f"job {name}\n")
    return wd


def _ok(done: subprocess.CompletedProcess) -> str:
    out = done.stdout[-5000:] + done.stderr[-3000:]
    assert done.returncode == 0 and "succeeded" in done.stdout.lower(), out
    return done.stdout


def _logs(head: RayHead, job: str) -> str:
    """A finished job's whole driver log, as the head's job API serves it (what `ray job logs` prints)."""
    return head.api("GET", f"/api/jobs/{job}/logs")["logs"]


def _status(head: RayHead, job: str) -> str:
    return head.api("GET", f"/api/jobs/{job}")["status"]


def test_jobs_keep_one_store_outside_rays_session_and_a_later_job_resumes(head, e2e_root, tmp_path):
    home = head.home
    store = f"sqlite:///{home / 'mlflow.db'}"
    # 1. a complete run, submitted with the README's recipe: the repository as working dir, runtime_env.yaml
    runtime_env = {k: v for k, v in yaml.safe_load((ROOT / "cluster" / "runtime_env.yaml").read_text()).items()
                   if k != "pip"}  # fmt: skip  (pip: offline here; raymh is installed)
    _ok(head.submit(*_train_args(e2e_root, **{"train.iters": 2, "train.eval_every": 2,
                                              "tracking.run_name": "complete"}),
                    working_dir=ROOT, runtime_env=runtime_env, submission_id="raymh-complete"))  # fmt: skip
    # the job's whole log, from the head (`ray job submit`'s live tail dropped lines once in a loaded suite)
    out = _logs(head, "raymh-complete")
    assert f"[raymh] records (RAYMH_HOME is set): checkpoints under {home / 'ray_results'}, MLflow {store}" in out
    assert "run complete: finished at step 2" in out and f"browse:       mlflow ui --backend-store-uri {store}" in out

    # 2. a run from other code (another working-dir copy), stopped after its first checkpoint
    job = "raymh-interrupted"
    follow = head.submit(*_train_args(e2e_root, **{"train.iters": 24, "train.eval_every": 4,
                                                   "tracking.run_name": "interrupted"}),
                         working_dir=_working_dir(tmp_path, "b"), wait=False, submission_id=job)  # fmt: skip
    run_dir = home / "ray_results" / "interrupted"
    deadline = time.monotonic() + 600
    while not list(run_dir.glob("checkpoint_*/state.pt")):
        assert follow.poll() is None and time.monotonic() < deadline, follow.communicate()[0][-5000:]
        time.sleep(0.2)
    head.api("POST", f"/api/jobs/{job}/stop")
    follow.communicate(timeout=300)
    deadline = time.monotonic() + 120
    while _status(head, job) not in ("STOPPED", "FAILED", "SUCCEEDED"):
        assert time.monotonic() < deadline
        time.sleep(1)
    assert _status(head, job) == "STOPPED"

    # 3. a third job, from yet another copy, resumes the stopped run by name and finishes it
    _ok(head.submit(*_train_args(e2e_root, "--resume", "interrupted"), working_dir=_working_dir(tmp_path, "c"),
                    timeout=1200, submission_id="raymh-resumed"))  # fmt: skip
    out = _logs(head, "raymh-resumed")
    assert "run interrupted: finished at step 24" in out, out[-4000:]

    client = MlflowClient(store)
    runs = {r.info.run_name: r for r in client.search_runs(
        [client.get_experiment_by_name("raymh-quickstart").experiment_id])}  # fmt: skip
    assert set(runs) == {"complete", "interrupted"}
    assert all(r.info.status == "FINISHED" for r in runs.values())
    assert runs["interrupted"].data.tags.get("resumed") == "true"
    assert runs["complete"].data.params["train.iters"] == "2" and "val/miou_mean" in runs["complete"].data.metrics
    steps = {m.step for m in client.get_metric_history(runs["interrupted"].info.run_id, "train/lr")}
    assert steps == set(range(1, 25))  # one run, continued across jobs
    # nothing of it under Ray's session dir (the working-dir copies)
    assert not [p for p in head.temp_dir.rglob("*") if p.name in ("mlflow.db", "ray_results")]
    # and the head refuses a client with a wrong token
    anon = {**head.cli_env, "RAY_AUTH_TOKEN": "wrong-" + head.token[6:]}
    denied = head.ray("job", "list", "--address", head.dashboard, env=anon)
    assert denied.returncode != 0 and "Authentication" in denied.stdout + denied.stderr


def test_two_nodes_must_share_the_storage_path(head, e2e_root, tmp_path):
    if subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode != 0 or not shutil.which("mount"):
        pytest.skip("no mount namespaces here: a local node cannot get its own files at the same path")
    storage = head.home / "ray_results"
    storage.mkdir(exist_ok=True)
    own = tmp_path / "node2_files"
    own.mkdir()
    # a second node that sees its own, empty folder at the storage path (as a second machine's local disk)
    head.add_node(
        num_cpus=1,
        wrap=["unshare", "-m", "--propagation", "private", "sh", "-c", f'mount --bind "{own}" "{storage}" && exec "$@"',
              "sh"],
    )  # fmt: skip
    done = head.submit(*_train_args(e2e_root, **{"tracking.run_name": "split"}), working_dir=_working_dir(tmp_path, "d"))
    out = done.stdout + done.stderr
    assert done.returncode != 0, out[-4000:]
    assert f"tracking.storage_path {storage} is not shared by the cluster's nodes" in out, out[-4000:]
    assert "s3://" in out and "Traceback" not in out
    assert not (storage / "split").exists() and "step 1/" not in out  # stopped before the first step
    assert not (own / MARKERS).exists() and not (storage / MARKERS).exists()  # the check cleans up after itself

    shared = tmp_path / "shared_runs"
    out = _ok(head.submit(*_train_args(e2e_root, **{"tracking.run_name": "shared", "train.iters": 2,
                                                    "train.eval_every": 2, "tracking.storage_path": str(shared)}),
                          working_dir=_working_dir(tmp_path, "e")))  # fmt: skip
    assert "run shared: finished at step 2" in out and list((shared / "shared").glob("checkpoint_*"))
