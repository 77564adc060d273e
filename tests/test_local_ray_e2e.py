"""`raymh train` beside a `ray start --head` on the same machine (slow): join it, ignore it when dead, or not.

Ray keeps its "current cluster" record in `<system temp>/ray/ray_current_cluster`, and the system temp is
RAY_TMPDIR when that is set. The head here runs with `--temp-dir=<root>/ray`, so its record lands in
`<root>/ray`, and each `raymh train` runs with RAY_TMPDIR=<root>: for that command this head is the machine's
recorded cluster, while `/tmp/ray` (other Ray users) is never read or written. Token auth is as after `ray
get-auth-token --generate`: a token file, RAY_AUTH_MODE unset.
"""

from __future__ import annotations

import json
import subprocess

import pytest

from tests.conftest import tiny_overrides
from tests.ray_head import BIN, RayHead

pytestmark = [pytest.mark.slow, pytest.mark.cluster]


@pytest.fixture(scope="module")
def head():
    h = RayHead(num_cpus=3, token_mode=False)
    try:
        yield h.wait_ready()
    finally:
        h.stop()


def _train(head: RayHead, e2e_root, tmp_path, name: str, *args: str) -> tuple[int, str]:
    """A tiny `raymh train` in a subprocess, as from a shell: (its pid, its output); asserts it finished."""
    over = tiny_overrides(tmp_path, **{"data.cache_dir": str(e2e_root / "cache"), "train.iters": 2,
                                       "train.eval_every": 2, "tracking.run_name": name})  # fmt: skip
    proc = subprocess.Popen(
        [str(BIN / "raymh"), "train", "--config", "quickstart", *[a for o in over for a in ("--set", o)], *args],
        env={**head.env, "RAY_TMPDIR": str(head.root)},
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0 and f"run {name}: finished at step 2" in out, out[-4000:]
    return proc.pid, out


def _ray_line(out: str) -> str:
    return next(line for line in out.splitlines() if line.startswith("[raymh] Ray:"))


def _drivers(head: RayHead) -> dict[int, str]:
    """The head's own records: driver pid -> job id of every driver that connected to it."""
    jobs = head.ray("list", "jobs", "--address", head.dashboard, "--format", "json", "--detail")
    assert jobs.returncode == 0, jobs.stderr[-2000:]
    listed = json.loads(jobs.stdout) if jobs.stdout.lstrip().startswith("[") else []  # none: a sentence
    return {int(j["driver_info"]["pid"]): j["job_id"] for j in listed if j.get("driver_info")}


def test_no_address_joins_the_live_recorded_head(head, e2e_root, tmp_path):
    pid, out = _train(head, e2e_root, tmp_path, "joined")
    line = _ray_line(out)
    assert f"joined the running Ray cluster at {head.gcs_address}" in line and "3 CPUs, 0 GPUs" in line, line
    # the cluster's own records: this process was a driver of the head, and its Train workers were actors there
    job_id = _drivers(head).get(pid)
    assert job_id, f"pid {pid} is not among the head's drivers"
    actors = head.ray("list", "actors", "--address", head.dashboard, "--format", "json",
                      "--filter", f"job_id={job_id}", "--limit", "1000")  # fmt: skip
    classes = {a["class_name"] for a in json.loads(actors.stdout)}
    assert any("TrainWorker" in c for c in classes), classes


def test_address_local_trains_on_its_own_ray_beside_the_live_head(head, e2e_root, tmp_path):
    pid, out = _train(head, e2e_root, tmp_path, "private", "--address", "local")
    assert "started a private local Ray (--address local)" in _ray_line(out)
    assert pid not in _drivers(head)


def test_a_killed_heads_stale_record_is_ignored(head, e2e_root, tmp_path):
    address = head.gcs_address
    head.kill()  # SIGKILL, no `ray stop`: the record stays behind, naming a GCS that no longer answers
    assert head.record.read_text().strip() == address
    _, out = _train(head, e2e_root, tmp_path, "fresh")
    line = _ray_line(out)
    assert f"ignored the stale record of a Ray cluster at {address}" in line, line
