"""The progress line's ETA: remaining steps times the step time measured since the step's cost last changed.

A step costs more once DCLoss starts (`loss.dc_start_iter`: the unlabeled crop pairs are forwarded too,
about twice the work of a CE-only step), so an average over every step so far undershoots for the rest of
the run. The clock restarts at each such change (and at the first step, which pays start-up costs), so
from the first log line after DCLoss starts the ETA is measured on steps that cost what the remaining ones
cost. Before DCLoss starts, the ETA counts the remaining steps at the current (cheaper) rate.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable


class Eta:
    """`Eta(total, restart_at=[dc_start_iter])`; call `step_starts(step)` before each step, `seconds(done)` after."""

    def __init__(self, total: int, *, restart_at: Iterable[int] = (), clock: Callable[[], float] = time.perf_counter):
        self.total = total
        self._restart_at = set(restart_at)
        self._clock = clock
        self._since_step: int | None = None
        self._since_time = 0.0

    def step_starts(self, step: int) -> None:
        """Mark the start of `step` (0-based): the clock restarts at the first step seen and at restart steps."""
        if self._since_step is None or (step in self._restart_at and step != self._since_step):
            self._since_step, self._since_time = step, self._clock()

    def seconds(self, done: int) -> float:
        """Seconds left after `done` steps, at the mean step time since the last restart."""
        if self._since_step is None or done <= self._since_step:
            return float("nan")
        per_step = (self._clock() - self._since_time) / (done - self._since_step)
        return per_step * max(self.total - done, 0)
