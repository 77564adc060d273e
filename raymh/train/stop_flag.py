"""The stop flag between a run's driver and its rank 0: a named actor the driver creates and sets on Ctrl-C
or SIGTERM (`raymh.run.interrupt`), which rank 0 polls after each step to stop with a checkpoint."""

from __future__ import annotations

import ray

STOP_FLAG_PREFIX = "raymh-stop-"


@ray.remote(num_cpus=0)
class StopFlag:
    """Holds why the run should stop (None: keep going)."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def get(self) -> str | None:
        return self.reason


def stop_flag_name(run_name: str) -> str:
    return f"{STOP_FLAG_PREFIX}{run_name}"


class WorkerStopCheck:
    """Rank 0's view of the stop flag (workers without a flag, e.g. under Tune, never stop early)."""

    def __init__(self, name: str | None) -> None:
        self._handle = None
        if name:
            try:
                self._handle = ray.get_actor(name)
            except ValueError:
                self._handle = None

    def requested(self) -> bool:
        if self._handle is None:
            return False
        try:
            return ray.get(self._handle.get.remote(), timeout=30) is not None
        except Exception:  # noqa: BLE001 - the driver (and its flag) went away: stop with a checkpoint
            return True
