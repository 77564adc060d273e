"""Stopping a run on purpose: Ctrl-C / SIGTERM (and `ray job stop`) end it at a step boundary with a checkpoint.

The driver owns a small named Ray actor, the stop flag of the run. Its first SIGINT or SIGTERM sets the flag;
rank 0 of the Train workers reads it after every step and the ranks agree through the same all-reduce as
the non-finite check, so every rank finishes the step in progress, writes one checkpoint and returns at
the same step. A second signal stops at once (what was last checkpointed is kept). The driver runs
`trainer.fit()` in a helper thread: Ray Train installs its own SIGINT handler (an abort without a
checkpoint) only when fit runs in the main thread, so the driver's handlers stay in charge.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

import ray

from raymh.train.stop_flag import StopFlag, stop_flag_name


def create_stop_flag(run_name: str):
    """The run's stop flag actor (replacing a stale one of the same name, e.g. from an interrupted driver)."""
    name = stop_flag_name(run_name)
    try:
        ray.kill(ray.get_actor(name))
    except ValueError:
        pass
    return StopFlag.options(name=name, lifetime=None).remote()


def run_interruptible(fn: Callable[[], Any], *, flag, on_first: Callable[[str], None],
                      on_second: Callable[[str], None]) -> tuple[Any, str | None]:
    """Run fn() in a helper thread while SIGINT/SIGTERM are handled here: the first sets the stop flag (if
    any) and calls on_first(signal name); the second calls on_second(signal name) (which should exit).
    A Tune sweep runs here too: Tune then installs no handler of its own (not the main thread).
    Returns (fn's result, the first signal's name or None). fn's exceptions propagate."""
    if threading.current_thread() is not threading.main_thread():  # under Tune: no signal handling here
        return fn(), None
    box: dict[str, Any] = {}
    received: list[str] = []

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            box["error"] = e

    def handler(signum, _frame) -> None:
        name = signal.Signals(signum).name
        received.append(name)
        if len(received) == 1:
            try:
                if flag is not None:
                    flag.request.remote(name)
            finally:
                on_first(name)
        else:
            on_second(name)

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    worker = threading.Thread(target=target, name="raymh-fit", daemon=True)
    for s in previous:
        signal.signal(s, handler)
    try:
        worker.start()
        while worker.is_alive():
            worker.join(timeout=0.5)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    if "error" in box:
        raise box["error"]
    return box.get("result"), (received[0] if received else None)


def exit_now(code: int = 130) -> None:
    """Leave at once after a second signal (Ray's processes are reaped by Ray when the driver goes)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def stop_sweep_at_once(tracking_uri: str, parent, *, what: str) -> Callable[[str], None]:
    """The signal handler of a sweep (`raymh tune`, `raymh reproduce`): its trials are not resumable one by one,
    so the first signal ends it at once, with honest records: every child still RUNNING and the parent KILLED."""

    def handler(name: str) -> None:
        from raymh.platform.tracking import close_child_runs

        n = close_child_runs(tracking_uri, parent.run_id, status="KILLED")
        parent.set_tags({"raymh.stopped_by": name})
        parent.end("KILLED")
        print(f"\n[raymh] {name}: {what} stopped; MLflow parent run {parent.run_id} and {n} running child run(s) "
              "marked KILLED; finished runs and their checkpoints are kept", file=sys.stderr, flush=True)
        exit_now(130)

    return handler
