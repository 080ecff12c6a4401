"""How long each step of a submit or a job's run took, at debug level
(`ci-server --log-level debug`): where a slow run's time goes, without a profiler."""

from __future__ import annotations

import logging
import time


class Stopwatch:
    """Logs the time since the previous lap (or the start) under `what`, at debug level."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self._last = time.perf_counter()

    def lap(self, step: str) -> None:
        now = time.perf_counter()
        self.logger.debug("%s: %s in %.3f s", self.what, step, now - self._last)
        self._last = now
