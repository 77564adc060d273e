"""What a raymh driver's console shows: raymh's own lines and real problems; Ray's chatter goes to a log file.

Three kinds of lines reach the console of `raymh train` / `eval` / `tune`:

1. Python logging in the driver from Ray's own loggers (`ray`, `ray.data`, `ray.train`, `ray.tune`, ...):
   e.g. "Started a local Ray instance" and Ray Data's execution plan of every dataset it materializes.
2. Lines Ray forwards from its other processes (`log_to_driver`): the stdout/stderr of the Train
   controller and workers (raymh's `[raymh]` progress lines among them), of Ray Data tasks, and the
   raylet's and core workers' own notices (e.g. "(raylet) ... worker processes have been started ...
   maximum expected startup concurrency", or an `E ... core_worker.cc ... PreemptionWatcher` line).
3. Python warnings, such as deprecation notices from inside Ray.

By default (`install()`, which the commands that start Ray call first): INFO/DEBUG records of Ray's and
MLflow's loggers, Ray-format INFO lines and known-harmless notices (`HARMLESS`) from other processes, and
deprecation warnings go to the run's log file (`attach_log(<run>/raymh/console.log)`; lines before the
run directory exists are kept and written first). raymh's `[raymh]` lines print once, without Ray's
process prefix; everything else (warnings, errors, tracebacks, a user's own prints) prints as Ray would
print it. Ray Train's own INFO lines are kept off the console at their source (`train_log_level`).
`set_verbose(True)` (`raymh --verbose`) leaves Ray's console untouched, and nothing is filtered.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any

RAYMH_TAG = "[raymh]"
# Notices that read like problems and are not; matched against single forwarded lines and log messages.
HARMLESS = [
    re.compile(p)
    for p in (
        r"worker processes have been started on node",  # raylet: start-up concurrency on small machines
        r"maximum expected startup concurrency",
        r"PreemptionWatcher",  # core_worker.cc, E level: no preemption source on a local machine
        r"[Tt]oken auth",  # Ray's note about its token authentication mode
        r"RAY_AUTH_MODE",
        r"[Dd]eprecat",  # deprecation notices (the source line printed after one is logged with it)
        r"Progress bars disabled",  # Ray Data, once per process: raymh turns them off on purpose
        r"Add type hints to the `predict` method",  # MLflow, logging the pyfunc: raymh gives its signature
        r"An input example was not provided when logging the model",  # MLflow: the signature is explicit
    )
]
# Ray's shutdown notices that come with a traceback though the run is fine (a loaded machine at the end of a
# run): the notice and its traceback go to the log file; a real failure still reaches the console.
SHUTDOWN_NOISE = [re.compile(r"Failed to stop PlacementGroupCleaner gracefully")]
TRACEBACK_LINE = re.compile(r"^(\s|Traceback \(most recent call last\)|[\w.]+(Error|Exception)\b|$)")
# Ray's Python log format ("2026-01-01 12:00:00,123\tINFO file.py:12 -- msg") and glog's ("[2026-01-01
# 12:00:00,123 I 123 456] file.cc:12: msg"), at levels that are never problems.
QUIET_LEVEL = re.compile(
    r"^\d{4}-\d\d-\d\d[ T][\d:,.]+\s+(INFO|DEBUG)\s|^\[\d{4}-\d\d-\d\d [\d:,.]+ I \d+ \d+\]"
)

# Set in every Ray process a raymh command starts (the runtime_env of a local Ray; cluster/runtime_env.yaml for
# jobs): Ray Data's progress bars, and MLflow's tqdm bars when a Tune trial logs or downloads artifacts.
QUIET_ENV = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"}

_verbose = False
_state = {"atexit": False, "say_where": True}


class ConsoleLog:
    """The run's log file of hidden lines; lines before `attach` are buffered, then written first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buffer: list[str] = []
        self._file = None
        self.path: Path | None = None

    def attach(self, path: str | Path) -> Path:
        with self._lock:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            if self._file is not None:
                self._file.close()
            self._file = open(path, "a", encoding="utf-8", buffering=1)  # noqa: SIM115 - kept open for the run
            self._file.writelines(self._buffer)
            self._buffer.clear()
            self.path = path
            return path

    def write(self, line: str) -> None:
        text = line if line.endswith("\n") else line + "\n"
        with self._lock:
            if self._file is not None:
                self._file.write(text)
            elif len(self._buffer) < 100_000:
                self._buffer.append(text)

    def pending(self) -> int:
        return len(self._buffer)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


LOG = ConsoleLog()


def set_verbose(verbose: bool) -> None:
    """`raymh --verbose`: show Ray's own lines on the console too (nothing is filtered)."""
    global _verbose
    _verbose = bool(verbose)
    # QUIET_ENV in the command's own process too: MLflow's tqdm bars ("Downloading artifacts: 29%|...") when
    # `report`, `reproduce` or a model load read artifacts or a model is logged, and Ray Data's bars; a batch
    # command's console and job logs are no place for them
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)


def train_log_level() -> str:
    """Ray Train's console log level (`RunConfig(logging_config=ray.train.LoggingConfig(...))`): WARNING, so
    the controller's and workers' INFO lines ("Requesting resources", "Setting up process group ...") stay
    in Train's own session log files; INFO with --verbose. In its worker processes Ray prints records
    without their level, so the driver's filter could not tell those INFO lines from warnings."""
    return "INFO" if _verbose else "WARNING"


def is_harmless(text: str) -> bool:
    return any(p.search(text) for p in HARMLESS)


def classify(line: str) -> str:
    """'raymh' (a raymh line), 'log' (Ray chatter: to the log file) or 'show' (anything else)."""
    if RAYMH_TAG in line:
        return "raymh"
    if QUIET_LEVEL.search(line) or is_harmless(line):
        return "log"
    return "show"


# ---------------------------------------------------------------------------------- 1. Ray's Python loggers
def keep_record(record: logging.LogRecord) -> bool:
    """Whether a record of Ray's loggers reaches the console; if not, it goes to the log file."""
    if _verbose:
        return True
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed record: let the handler report it
        return True
    if record.levelno >= logging.WARNING and not is_harmless(message):
        return True
    LOG.write(f"{record.levelname} {record.name}: {message}")
    return False


def _quiet_ray_handlers() -> bool:
    """Every console handler of Ray's loggers is a `PlainRayHandler` (the `ray` logger's, and Ray Data's own
    `console` handler, which Ray Data may re-create): route its records through `keep_record`, class-wide."""
    try:
        from ray._private.log import PlainRayHandler  # private: Ray's console handler class
    except ImportError:
        return False
    if getattr(PlainRayHandler.emit, "_raymh", False):
        return True
    emit = PlainRayHandler.emit

    def filtered_emit(self, record):
        if keep_record(record):
            emit(self, record)

    filtered_emit._raymh = True
    PlainRayHandler.emit = filtered_emit
    return True


# ------------------------------------------------------------------------ 2. lines forwarded by log_to_driver
_in_noise: dict[Any, bool] = {}  # pid -> inside a shutdown notice's traceback


def filter_forwarded(data: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None]:
    """(raymh lines, what is left for Ray's printer or None) of one batch of forwarded lines; the rest is logged.

    A logged warning's continuation (the indented source line Python prints after a warning) is logged too.
    """
    if data.get("pid") == "autoscaler":  # Ray's printer keeps only the autoscaler's events of these itself
        return [], data
    shown, raymh_lines, in_warning = [], [], False
    who = f"({data.get('actor_name') or data.get('task_name') or 'pid'} pid={data.get('pid', '?')})"
    pid = data.get("pid")
    for line in data.get("lines", []):
        kind = classify(line)
        if any(p.search(line) for p in SHUTDOWN_NOISE):
            _in_noise[pid], kind = True, "log"
        elif _in_noise.get(pid) and kind != "raymh" and TRACEBACK_LINE.match(line):
            kind = "log"  # the shutdown notice's traceback, possibly in a later batch of lines
        else:
            _in_noise.pop(pid, None)
        if in_warning and kind == "show" and line.startswith("  "):
            kind = "log"  # the source line of a logged warning
        in_warning = kind == "log" and ("Warning: " in line or in_warning)
        if kind == "raymh":
            raymh_lines.append(line[line.index(RAYMH_TAG) :])
        elif kind == "log":
            LOG.write(f"{who} {line}")
        else:
            shown.append(line)
    return raymh_lines, ({**data, "lines": shown} if shown else None)


def _filtered_printer(ray_print):
    def print_to_stdstream(data, *args, **kwargs):
        if _verbose:
            return ray_print(data, *args, **kwargs)
        raymh_lines, rest = filter_forwarded(data)
        if raymh_lines:
            print("\n".join(raymh_lines), file=sys.stdout, flush=True)
        if rest is not None:
            ray_print(rest, *args, **kwargs)

    print_to_stdstream._raymh = True
    return print_to_stdstream


def _filter_forwarded_lines() -> bool:
    """Wrap Ray's printer of forwarded lines (`ray._private.worker.print_to_stdstream`, which `ray.init`
    registers on the driver) in `filter_forwarded`: before `ray.init` by replacing the function it
    registers, after it by swapping the registered handler."""
    try:
        from ray._private import worker as ray_worker  # private: the only hook on the forwarded stream
    except ImportError:
        return False
    original = getattr(ray_worker, "print_to_stdstream", None)
    dispatcher = getattr(ray_worker, "global_worker_stdstream_dispatcher", None)
    if original is None or dispatcher is None:
        return False
    if not getattr(original, "_raymh", False):
        ray_worker.print_to_stdstream = _filtered_printer(original)
    for name, handler in list(getattr(dispatcher, "handlers", [])):
        func = getattr(handler, "func", handler)  # Ray registers functools.partial(print_to_stdstream, ...)
        if name == "ray_print_logs" and not getattr(func, "_raymh", False):
            dispatcher.remove_handler(name)
            dispatcher.add_handler(name, _filtered_printer(handler))
    return True


class _RecordFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return keep_record(record)


_RECORD_FILTER = _RecordFilter()


def _quiet_mlflow_handlers() -> None:
    """MLflow's own console handler (on its `mlflow` logger): INFO lines such as "Creating initial MLflow
    database tables" go to the log file too."""
    import mlflow  # noqa: F401 - configures MLflow's loggers

    for handler in logging.getLogger("mlflow").handlers:
        if _RECORD_FILTER not in handler.filters:
            handler.addFilter(_RECORD_FILTER)


# -------------------------------------------------------------------------------------------- 3. warnings
_show_warning = warnings.showwarning


def _showwarning(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, DeprecationWarning | PendingDeprecationWarning | FutureWarning) or is_harmless(
        str(message)
    ):
        LOG.write(warnings.formatwarning(message, category, filename, lineno, line).rstrip())
        return
    _show_warning(message, category, filename, lineno, file, line)


# ------------------------------------------------------------------------------------------------ install
def quiet_tune_output() -> None:
    """Before a Tuner runs: Tune's output engine prints a "Configuration for experiment" box, the results
    path and a TensorBoard hint on the driver's stdout whatever its verbosity, though raymh records to
    MLflow; its older engine, at verbose=0, prints nothing (raymh prints where the runs and their records
    are itself). Unchanged with --verbose."""
    if not _verbose:
        os.environ["RAY_AIR_NEW_OUTPUT"] = "0"


def install() -> None:
    """Route Ray's chatter to the log file (no-op with --verbose). Call once Ray is initialised."""
    if _verbose:
        return
    _quiet_ray_handlers()
    _quiet_mlflow_handlers()
    _filter_forwarded_lines()
    warnings.showwarning = _showwarning
    if not _state["atexit"]:
        atexit.register(_flush_unattached)
        _state["atexit"] = True


def _flush_unattached() -> None:
    """At exit, a command that made no run directory (`raymh eval`, a failed start) still keeps its hidden
    lines: in Ray's session log folder when known, else the temp folder."""
    if LOG.path is not None or not LOG.pending():
        LOG.close()
        return
    folder = Path(tempfile.gettempdir())
    try:
        from ray._private import worker as ray_worker

        node = getattr(ray_worker, "_global_node", None)
        if node is not None:
            folder = Path(node.get_logs_dir_path())
    except Exception:  # noqa: BLE001 - any trouble: the temp folder will do
        pass
    path = LOG.attach(folder / f"raymh-console-{os.getpid()}.log")
    LOG.close()
    if _state["say_where"]:
        print(f"{RAYMH_TAG} Ray's own log lines of this command: {path}", file=sys.stderr, flush=True)


def error_exit() -> None:
    """The command ends with an expected error: its one message is all the console gets (the log is kept)."""
    _state["say_where"] = False


def attach_log(path: str | Path, *, announce: bool = True) -> Path | None:
    """Write the hidden lines to `path` from now on (and those so far); says where, once."""
    if _verbose or not _state["atexit"]:  # verbose, or install() never ran (fit called from Python)
        return None
    first = LOG.path is None
    out = LOG.attach(path)
    if announce and first:
        print(f"{RAYMH_TAG} Ray's own log lines go to {out} (`raymh --verbose ...` shows them here)", flush=True)
    return out
