"""A tiny `raymh train` as a new user runs it (slow): what its console holds, and `raymh runs` on its store."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow

ITERS = 6
RAY_INFO = re.compile(r"^\S+ [\d:,.]+\s+INFO \S+:\d+ -- ")  # Ray's Python log format at INFO
CORE_E = re.compile(r"\[\d{4}-\d\d-\d\d [\d:,.]+ E \d+ \d+\]")  # a glog E line of a Ray core worker


def _raymh(*args: str, env: dict, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "raymh.cli", *args], capture_output=True, text=True, env=env, cwd=cwd,
        timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(e2e_root):
    """One tiny training run in a subprocess with its own local Ray (its own temp dir)."""
    root = e2e_root / "console"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rmh", dir="/tmp")
    over = tiny_overrides(root, **{"train.iters": ITERS, "loss.dc_start_iter": 3, "tracking.run_name": "tiny",
                                   "data.cache_dir": str(e2e_root / "cache")})  # fmt: skip
    args = ["train", "--config", "quickstart", *[a for o in over for a in ("--set", o)]]
    proc = _raymh(*args, env=env, cwd=root)
    return {"proc": proc, "root": root, "env": env, "uri": f"sqlite:///{root}/mlflow.db"}


def test_the_console_shows_raymh_lines_once_and_no_ray_chatter(tiny_run):
    proc = tiny_run["proc"]
    console = (proc.stdout + proc.stderr).splitlines()
    assert proc.returncode == 0, "\n".join(console[-40:])
    for k in range(1, ITERS + 1):
        steps = [line for line in console if line.startswith(f"[raymh] step {k}/{ITERS} ")]
        assert len(steps) == 1, (k, steps)
    assert sum(line.startswith("[raymh] eval step ") for line in console) == 2
    assert not [line for line in console if RAY_INFO.search(line)]
    assert not [line for line in console if CORE_E.search(line) and "core_worker" in line]
    assert not [line for line in console if "maximum expected startup concurrency" in line or "Deprecat" in line]
    log = tiny_run["root"] / "runs" / "tiny" / "raymh" / "console.log"
    assert f"Ray's own log lines go to {log}" in proc.stdout
    assert "Started a local Ray instance" in log.read_text()  # Ray's INFO lines are kept, in the log file


def test_runs_lists_the_run_with_its_best_miou(tiny_run):
    run_dir = tiny_run["root"] / "runs" / "tiny"
    best = max(json.loads(p.read_text())["best/miou_mean"] for p in run_dir.glob("checkpoint_*/metrics.json"))
    out = _raymh("runs", "--tracking-uri", tiny_run["uri"], env=tiny_run["env"], cwd=tiny_run["root"], timeout=120)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if line.startswith("tiny "))
    assert re.search(rf"FINISHED\s+{ITERS}/{ITERS}\s+{best:.4f}\s", row), row
    assert f"raymh eval --checkpoint {run_dir}" in out.stdout


def test_runs_show_diffs_the_config_against_its_preset(tiny_run):
    out = _raymh("runs", "--tracking-uri", tiny_run["uri"], "show", "tiny", env=tiny_run["env"],
                 cwd=tiny_run["root"], timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert re.search(r"train\.iters\s+600 -> 6", out.stdout), out.stdout
    assert "model.backbone" not in out.stdout  # quickstart's own resnet18: not a difference
    evals = [line.split() for line in out.stdout.splitlines() if re.match(r"\s+[36]\s+0\.\d{4}", line)]
    assert [int(e[0]) for e in evals] == [3, 6] and all(len(e) == 5 for e in evals)  # step, 3 domains, mean
    missing = _raymh("runs", "--tracking-uri", tiny_run["uri"], "show", "nope", env=tiny_run["env"],
                     cwd=tiny_run["root"], timeout=120)  # fmt: skip
    assert missing.returncode == 1 and "no run named or with id 'nope'" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_eval_of_the_run_prints_its_table_and_no_ray_chatter(tiny_run):
    run_dir = tiny_run["root"] / "runs" / "tiny"
    out = _raymh("eval", "--checkpoint", str(run_dir), env=tiny_run["env"], cwd=tiny_run["root"])
    console = (out.stdout + out.stderr).splitlines()
    assert out.returncode == 0, "\n".join(console[-30:])
    assert re.search(r"^\s+mean\s+0\.\d{4}$", out.stdout, re.M), out.stdout
    assert not [line for line in console if RAY_INFO.search(line)]
    assert any("Ray's own log lines of this command:" in line for line in console)  # eval has no run dir
