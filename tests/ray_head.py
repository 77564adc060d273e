"""Real `ray start` processes for end-to-end tests, each one stopped by the test that started it.

Every head gets its own short temp dir (Ray's socket paths must fit 107 characters), free ports (the Ray Client
server's and dashboard agent's too: their defaults are fixed), and its own process group (`start_new_session`),
so a test ends it, or SIGKILLs it, without touching any other Ray on the machine. Ray writes the head's
"current cluster" record into that temp dir, never into `/tmp/ray`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent
RAY = str(BIN / "ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict[str, str]:
    """This environment with the venv's bin first, no RAY_ADDRESS, no Ray auth settings and no records locations
    (MLFLOW_TRACKING_URI, RAYMH_HOME: a head's jobs get only the ones the test gives them), plus `extra`."""
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "RAY_USAGE_STATS_ENABLED": "0"}
    for key in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI",
                "RAYMH_HOME"):
        env.pop(key, None)
    return {**env, **extra}


def _stop(proc: subprocess.Popen, grace_s: float = 90) -> None:
    if proc.poll() is None:
        proc.terminate()  # `ray start --block` drains and stops the processes it started
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # its own process group only (start_new_session)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def _labels_flag(labels: dict[str, str]) -> list[str]:
    return [f"--labels={','.join(f'{k}={v}' for k, v in labels.items())}"] if labels else []


class RayHead:
    """`ray start --head --block` in `<root>/ray` (root: a fresh /tmp/rmhXXXX), with the dashboard and Ray's
    token auth. `token_mode`: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN in `env` (the cluster README's recipe);
    else only a token file (RAY_AUTH_TOKEN_PATH, as `~/.ray/auth_token`), which the head and a `ray.init()`
    that finds a local cluster use by themselves. `cli_env` is what `ray` client commands need."""

    def __init__(
        self, *, num_cpus: int = 4, token_mode: bool = True, env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
    ):  # fmt: skip
        self.root = Path(tempfile.mkdtemp(prefix="rmh", dir="/tmp"))
        self.temp_dir = self.root / "ray"
        token = os.urandom(32).hex()
        if token_mode:
            auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
        else:
            (self.root / "auth_token").write_text(token)
            auth = {"RAY_AUTH_TOKEN_PATH": str(self.root / "auth_token")}
        self.token = token
        self.env = ray_env(**auth, **(env or {}))
        self.cli_env = {**self.env, "RAY_AUTH_MODE": "token"}
        self.num_cpus = num_cpus
        self.labels = labels or {}
        self.workers: list[subprocess.Popen] = []
        self._launch()

    def _launch(self) -> None:
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.gcs_port, self.dash_port = free_port(), free_port()
        self.dashboard = f"http://127.0.0.1:{self.dash_port}"
        self.proc = subprocess.Popen(
            [
                RAY, "start", "--head", "--block", f"--port={self.gcs_port}", f"--dashboard-port={self.dash_port}",
                "--dashboard-host=127.0.0.1", f"--num-cpus={self.num_cpus}", "--include-dashboard=true",
                f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--temp-dir={self.temp_dir}", "--disable-usage-stats", *_labels_flag(self.labels),
            ],  # fmt: skip
            env=self.env,
            stdout=(self.root / "head.log").open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, n: int = 3000) -> str:
        return (self.root / "head.log").read_text()[-n:] if (self.root / "head.log").is_file() else ""

    @property
    def record(self) -> Path:
        """Ray's "current cluster" record of this head (a process with RAY_TMPDIR=root reads it)."""
        return self.temp_dir / "ray_current_cluster"

    @property
    def gcs_address(self) -> str:
        return self.record.read_text().strip()

    def ray(self, *args: str, env: dict[str, str] | None = None, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([RAY, *args], env=env or self.cli_env, capture_output=True, text=True, **kw)

    def wait_ready(self, timeout_s: float = 300, tries: int = 3) -> RayHead:
        """Until the record is written and the dashboard's job API answers. `ray start` gives its raylet 30 s
        to register and exits after that; on a loaded machine it is started again (`tries` in all)."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.record.is_file():
                probe = self.ray("job", "list", "--address", self.dashboard)
                if probe.returncode == 0:
                    return self
            if self.proc.poll() is not None:
                tries -= 1
                assert tries > 0, f"ray start --head exited ({self.proc.returncode}): {self.log_tail()}"
                _stop(self.proc)
                self._launch()
            assert time.monotonic() < deadline, f"the Ray head did not come up in time: {self.log_tail()}"
            time.sleep(2)

    def add_node(
        self, *, num_cpus: int = 1, wrap: list[str] | None = None, labels: dict[str, str] | None = None
    ) -> subprocess.Popen:
        """A worker node (`ray start --address=... --block [--labels=k=v,...]`), optionally run through `wrap`
        (e.g. `unshare -m sh -c '... "$@"' sh`); waits until the head counts it alive. `ray start` gives its
        raylet 30 s to come up and exits after that; on a loaded machine it is started again (3 tries)."""
        temp_dir = self.root / f"node{len(self.workers) + 1}"  # its own: a worker node's record goes there too
        before = self.alive_nodes()
        deadline = time.monotonic() + 300
        for tries_left in (2, 1, 0):
            cmd = [RAY, "start", f"--address={self.gcs_address}", "--block", f"--num-cpus={num_cpus}",
                   f"--temp-dir={temp_dir}", f"--dashboard-agent-listen-port={free_port()}",
                   "--disable-usage-stats", *_labels_flag(labels or {})]  # fmt: skip
            node = subprocess.Popen(
                [*(wrap or []), *cmd],
                env=self.cli_env,  # worker nodes need RAY_AUTH_MODE=token
                stdout=(self.root / f"{temp_dir.name}.log").open("w"),
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.workers.append(node)
            while self.alive_nodes() <= before and node.poll() is None:
                assert time.monotonic() < deadline, "the worker node did not join in time"
                time.sleep(2)
            if node.poll() is None:
                return node
            log = (self.root / f"{temp_dir.name}.log").read_text()[-3000:]
            assert tries_left, f"the worker node exited with {node.returncode}: {log}"
            _stop(node)
        raise AssertionError("unreachable")

    def alive_nodes(self) -> int:
        out = self.ray("list", "nodes", "--address", self.dashboard, "--format", "json", "--filter", "state=ALIVE")
        return len(json.loads(out.stdout)) if out.returncode == 0 else 0

    def submit(self, *entrypoint: str, working_dir: Path, runtime_env: dict | None = None, timeout: float = 600,
               wait: bool = True, submission_id: str | None = None) -> subprocess.CompletedProcess | subprocess.Popen:  # fmt: skip
        """`ray job submit --working-dir DIR -- ENTRYPOINT` (retried while the head's job agent comes up);
        `wait=False`: the running `ray job submit` process, which follows the job's log until it ends."""
        args = ["job", "submit", "--address", self.dashboard, "--working-dir", str(working_dir)]
        if submission_id:
            args += ["--submission-id", submission_id]
        if runtime_env:
            args += ["--runtime-env-json", json.dumps(runtime_env)]
        args += ["--", *entrypoint]
        if not wait:
            return subprocess.Popen([RAY, *args], env=self.cli_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    text=True, cwd=working_dir)  # fmt: skip
        for _ in range(30):
            done = self.ray(*args, cwd=working_dir, timeout=timeout)
            if "No available agent" not in done.stdout + done.stderr:
                return done
            time.sleep(4)
        return done

    def api(self, method: str, path: str) -> dict:
        """The dashboard's HTTP API (e.g. GET /api/jobs/ID, POST /api/jobs/ID/stop) with the token."""
        req = urllib.request.Request(
            f"{self.dashboard}{path}", method=method, headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read() or b"{}")

    def kill(self) -> None:
        """SIGKILL the head and everything it started: no `ray stop`, so its record stays behind."""
        for proc in [*self.workers, self.proc]:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)

    def stop(self) -> None:
        for node in self.workers:
            _stop(node)
        _stop(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)
