"""The console filter: which lines a user sees, which go to the run's console.log; the ETA; clean errors."""

from __future__ import annotations

import logging

import pytest
from click.testing import CliRunner

from raymh import console
from raymh.cli import main
from raymh.train.progress import Eta

# Lines seen on the console of a tiny `raymh train` before the filter existed (Ray 2.60, 2 cores).
RAY_CHATTER = [
    "2026-11-29 09:20:34,518\tINFO worker.py:2029 -- Started a local Ray instance. View the dashboard at http://127.0.0.1:8267",
    "2026-11-29 09:21:10,273\tINFO streaming_executor.py:216 -- Execution plan of Dataset dataset_0_0: InputDataBuffer[Input]",
    "WARNING: 12 PYTHON worker processes have been started on node: 21063da7 with address: 192.0.2.2, which is 6x "
    "the maximum expected startup concurrency (2). This could be a result of using a large number of actors",
    "[2026-11-29 09:25:01,002 E 16046 16360] core_worker.cc:512: Failed to start PreemptionWatcher: no source",
    "2026-11-29 09:19:30,830\tWARNING authentication_token_setup.py:85 -- Token authentication is enabled for this "
    "Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.",
    "/x/ray/train/_internal/data_config.py:150: RayDeprecationWarning: `ExecutionOptions.exclude_resources` is deprecated",
    "Progress bars disabled. To enable, set `ray.data.DataContext.get_current().enable_progress_bars = True`.",
]
REAL_PROBLEMS = [
    "Traceback (most recent call last):",
    "ValueError: sample 'a' has no label but is in a labeled or val set; re-run prepare",
    "2026-11-29 09:22:11,281\tWARNING resource_manager.py:818 -- Cluster resources are not enough to run any task",
    "[2026-11-29 09:20:47,448 E 16046 16360] logging.cc:474: *** SIGABRT received at time=1795944047 on cpu 0 ***",
]


@pytest.fixture
def log(tmp_path, monkeypatch):
    fresh = console.ConsoleLog()
    monkeypatch.setattr(console, "LOG", fresh)
    monkeypatch.setattr(console, "_verbose", False)
    fresh.attach(tmp_path / "console.log")
    yield tmp_path / "console.log"
    fresh.close()


def test_ray_chatter_goes_to_the_log_and_real_problems_show():
    assert [console.classify(line) for line in RAY_CHATTER] == ["log"] * len(RAY_CHATTER)
    assert [console.classify(line) for line in REAL_PROBLEMS] == ["show"] * len(REAL_PROBLEMS)
    assert console.classify("[raymh] step 3/6 eta 0.1m ce/a=1.0") == "raymh"


def test_forwarded_lines_print_raymh_lines_once_without_prefix_and_log_the_rest(log):
    data = {"pid": 42, "actor_name": "RayTrainWorker", "is_err": False,
            "lines": ["[raymh] step 1/6 eta 0.1m", RAY_CHATTER[3], REAL_PROBLEMS[0]]}  # fmt: skip
    raymh_lines, rest = console.filter_forwarded(data)
    assert raymh_lines == ["[raymh] step 1/6 eta 0.1m"]
    assert rest == {**data, "lines": [REAL_PROBLEMS[0]]}  # Ray's own printer prints what is left, as it would
    console.LOG.close()
    assert "PreemptionWatcher" in log.read_text() and "RayTrainWorker pid=42" in log.read_text()
    assert console.filter_forwarded({**data, "lines": [RAY_CHATTER[0]]})[1] is None
    autoscaler = {**data, "pid": "autoscaler", "lines": ["2026-11-29 09:58:05,349\tINFO autoscaler.py:147 -- x"]}
    assert console.filter_forwarded(autoscaler) == ([], autoscaler)  # Ray's printer filters those itself
    warning = [RAY_CHATTER[5], "  self.exclude_resources = exclude_resources", "  File 'x.py', line 1"]
    assert console.filter_forwarded({**data, "lines": warning})[1] is None  # its source line goes with it


def test_rays_shutdown_notice_and_its_traceback_are_logged_a_real_traceback_shows(log):
    noise = ["Failed to stop PlacementGroupCleaner gracefully: will force kill.", "Traceback (most recent call last):",
             '  File "/x/ray/_private/worker.py", line 2961, in get', "    raise value",
             "ray.exceptions.GetTimeoutError: Get timed out: some object(s) not ready."]  # fmt: skip
    data = {"pid": 7, "actor_name": "TrainController", "is_err": True, "lines": noise[:2]}
    assert console.filter_forwarded(data) == ([], None)
    assert console.filter_forwarded({**data, "lines": noise[2:]}) == ([], None)  # the rest, in a later batch
    real = ["Traceback (most recent call last):", '  File "train.py", line 3, in f', "ValueError: bad input"]
    assert console.filter_forwarded({**data, "lines": ["[raymh] step 6/6", *real]}) == (["[raymh] step 6/6"], {**data, "lines": real})
    console.LOG.close()
    assert "GetTimeoutError" in log.read_text() and "ValueError" not in log.read_text()


def test_ray_logger_records_below_warning_are_logged_not_shown(log):
    def record(level, msg, name="ray.data"):
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    assert not console.keep_record(record(logging.INFO, "Execution plan of Dataset x"))
    assert not console.keep_record(record(logging.WARNING, "Token authentication is enabled for this Ray cluster"))
    assert console.keep_record(record(logging.WARNING, "Cluster resources are not enough to run any task"))
    assert console.keep_record(record(logging.ERROR, "worker died"))
    console.LOG.close()
    assert "INFO ray.data: Execution plan of Dataset x" in log.read_text()


def test_verbose_shows_everything(log, monkeypatch):
    monkeypatch.setattr(console, "_verbose", True)
    assert console.keep_record(logging.LogRecord("ray", logging.INFO, __file__, 1, "Started", None, None))


def test_log_lines_before_the_run_dir_exists_are_written_first(tmp_path):
    log = console.ConsoleLog()
    log.write("early")
    path = log.attach(tmp_path / "run" / "raymh" / "console.log")
    log.write("late")
    log.close()
    assert path.read_text() == "early\nlate\n"


def test_eta_restarts_when_dcloss_starts():
    now = [0.0]
    eta = Eta(100, restart_at=[10], clock=lambda: now[0])
    for step in range(20):
        eta.step_starts(step)
        now[0] += 1.0 if step < 10 else 2.0  # DCLoss steps cost twice as much
    assert eta.seconds(20) == pytest.approx(2.0 * 80)  # a mean since step 0 would say 1.5 * 80
    fresh = Eta(100, restart_at=[10], clock=lambda: now[0])
    assert fresh.seconds(0) != fresh.seconds(0)  # nan before any step


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--set", "loss.dc_weigth=0.2"], "loss.dc_weigth: unknown key"),
        (["train", "--resume", "no-such-run", "--set", "tracking.storage_path=/nonexistent"], "no run record"),
        (["eval", "--checkpoint", "/nonexistent/run"], "neither a checkpoint dir"),
        (["runs", "--tracking-uri", "sqlite:////nonexistent/mlflow.db"], "no MLflow store at /nonexistent/mlflow.db"),
        (["config", "show", "--config", "nope"], "unknown config 'nope'"),
        (["train", "--set", "data.synthetic=null", "--set", "domains=[{name: a, kind: cityscapes, root: EMPTY}]",
          "--set", "data.cache_dir=CACHE"], "cityscapes: no 'train' samples found under"),
    ],
)
def test_expected_errors_print_one_message_and_exit_1(args, message, monkeypatch, tmp_path):
    monkeypatch.setattr(console, "install", lambda: None)  # leave this test process's Ray hooks alone
    (tmp_path / "EMPTY").mkdir()
    args = [a.replace("EMPTY", str(tmp_path / "EMPTY")).replace("CACHE", str(tmp_path / "cache")) for a in args]
    out = CliRunner().invoke(main, args)
    assert out.exit_code == 1, out.output
    assert message in out.output and "Traceback" not in out.output
    others = [line for line in out.output.splitlines() if not line.startswith("[raymh] ")]  # raymh says what it does
    assert others[0].startswith("Error: ") and all(line.startswith("  ") for line in others[1:]), out.output


def test_mlflow_model_logging_notices_go_to_the_log_file_and_its_bars_are_off(monkeypatch):
    """Logging the best model printed MLflow's tqdm bars and two notices on every run's console."""
    from raymh import console

    for text in ("Add type hints to the `predict` method to enable data validation",
                 "An input example was not provided when logging the model. To ensure ..."):  # fmt: skip
        assert console.is_harmless(text), text
    assert not console.is_harmless("Model logging failed: disk full")
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    console.set_verbose(False)  # what every command does first
    from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR

    assert MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.get() is False


def test_reproduce_routes_ray_chatter_like_tune(monkeypatch):
    """`raymh reproduce` printed Ray's start-up INFO lines and its workers' `(RayTrainWorker pid=...)` prefixes:
    it did not install the console filter before starting Ray, as train, eval and tune do."""
    import types

    from raymh.evidence import reproduce

    calls = []
    monkeypatch.setattr(console, "install", lambda: calls.append("install"))
    monkeypatch.setattr(
        reproduce, "run_reproduce", lambda *a, **k: calls.append("run") or types.SimpleNamespace(failed_trials=[])
    )
    out = CliRunner().invoke(main, ["reproduce", "--table", "semi-vs-supervised", "--seeds", "1"])
    assert out.exit_code == 0, out.output
    assert calls == ["install", "run"]
