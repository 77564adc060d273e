"""Ctrl-C on `raymh train` (slow): the step in progress finishes, a checkpoint is written, the MLflow run ends
KILLED with the step tags, the console names the resume command, and `--resume` continues from that step."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def _raymh(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "raymh.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, **kw,
    )  # fmt: skip


def test_sigint_checkpoints_marks_killed_and_resume_continues(ray_local, e2e_root):
    root = e2e_root / "interrupt"
    over = tiny_overrides(root, **{"train.iters": 30, "train.eval_every": 30, "train.checkpoint_every": 5,
                                   "tracking.run_name": "ctrlc", "loss.dc_weight": 0.0,
                                   "data.cache_dir": str(e2e_root / "cache")})  # fmt: skip
    sets = [a for o in over for a in ("--set", o)]
    address = ray_local.get_runtime_context().gcs_address
    proc = _raymh(["train", "--config", "quickstart", "--address", address, *sets])
    lines: list[str] = []
    deadline = time.time() + 600
    for line in proc.stdout:
        lines.append(line)
        m = re.search(r"step (\d+)/30 ", line)
        if m and int(m.group(1)) >= 7:  # past the first step checkpoint (5), before the next one (10)
            proc.send_signal(signal.SIGINT)
            break
        assert time.time() < deadline, "".join(lines[-20:])
    try:
        rest, _ = proc.communicate(timeout=240)  # bounded: one step, one checkpoint, then the driver exits
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    out = "".join(lines) + rest
    assert proc.returncode != 0, out
    resume = re.search(r"continue with: (raymh train --resume ctrlc.*)", out)
    assert resume, out[-3000:]
    stopped = int(re.search(r"stopped at step (\d+)/30", out).group(1))
    assert 7 <= stopped < 30

    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    run = client.search_runs([client.get_experiment_by_name("raymh-quickstart").experiment_id],
                             "attributes.run_name = 'ctrlc'")[0]  # fmt: skip
    assert run.info.status == "KILLED"
    assert run.data.tags["raymh.stopped_at_step"] == str(stopped) == run.data.tags["raymh.checkpoint_step"]

    args = resume.group(1).split()[1:] + ["--address", address]
    again = subprocess.run([sys.executable, "-m", "raymh.cli", *args], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert f"resumed from checkpoint at step {stopped}/30" in again.stdout + again.stderr
    run = client.get_run(run.info.run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "train/lr")]
    assert max(steps) == 30 and set(range(1, 31)) <= set(steps)
    redone = len(steps) - len(set(steps))
    assert redone == 0  # stopped at a step boundary with a checkpoint of that very step: nothing is redone
