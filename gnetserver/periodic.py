"""Periodic work: the greenlet behind ``check_for_dequeue``.

Rules of this module:

* :class:`Periodic` calls one function every ``interval`` seconds in a greenlet of its own,
  the ticks counted from its start (a fixed rate, no drift). A run is never overlapped by
  the next: a run longer than the interval skips the ticks it missed, and the next run
  starts at the next tick after it ended.
* An exception of a run is logged (level 1, with the traceback) and the schedule kept.
* It belongs to the process that started it: in a forked child (a PreFork worker) it stops
  at its next tick without running.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from collections.abc import Callable
from typing import Any

import gevent

__all__ = ["Periodic"]


class Periodic:
    """Run ``fn()`` every ``interval`` seconds (see the module rules) once started.

    Args:
        interval: seconds between ticks (> 0).
        fn: what to run; called in the periodic greenlet.
        log: ``log(level, message)`` for failures.
        name: what the log calls it.
    """

    def __init__(self, interval: float, fn: Callable[[], Any],
                 log: Callable[[int, str], None], name: str) -> None:
        self.interval = interval
        self._fn = fn
        self._log = log
        self._name = name
        self._greenlet: gevent.Greenlet[[int], None] | None = None
        self.runs = 0  # runs that started (ended or not)

    def start(self) -> None:
        """Start ticking (idempotent)."""
        if self._greenlet is None:
            self._greenlet = gevent.spawn(self._loop, os.getpid())

    def stop(self) -> None:
        """Stop ticking; a run in progress is killed (GreenletExit), unless the caller is that
        run (it ends when it returns). Idempotent, returns at once."""
        greenlet, self._greenlet = self._greenlet, None
        if greenlet is not None and greenlet is not gevent.getcurrent():
            greenlet.kill(block=False)

    @property
    def running(self) -> bool:
        """True while the periodic greenlet lives."""
        return self._greenlet is not None and not self._greenlet.dead

    def _loop(self, pid: int) -> None:
        """Tick until stopped (or forked away from)."""
        started = time.monotonic()
        ticks = 0
        while True:
            ticks += 1
            gevent.sleep(max(0.0, started + ticks * self.interval - time.monotonic()))
            if os.getpid() != pid:  # a forked child: the work is the parent's
                return
            self.runs += 1
            try:
                self._fn()
            except Exception:
                self._log(1, f"{self._name} failed (the schedule is kept): "
                             f"{traceback.format_exc().rstrip()}")
            # The next tick after now: ticks missed during a long run are skipped.
            ticks = max(ticks, math.floor((time.monotonic() - started) / self.interval))
