"""The hub-blocking detector of option ``max_blocking_time``: gevent's monitor thread, its
reports turned into one level-1 log line per blocking episode, naming the code that blocked.

Rules of this module:

* A handler that calls blocking code without monkey patching (``time.sleep``, a stdlib socket,
  a C library's I/O) or computes for long stops every connection of its process: the hub runs
  nothing else meanwhile. gevent's periodic monitoring thread (a real thread, per hub) sees
  that no greenlet switch happened for ``max_blocking_time`` seconds and notifies
  :class:`gevent.events.EventLoopBlocked`; :class:`BlockingDetector` subscribes to it.
* The report is made in the monitor thread (where the hub's thread is blocked), but written
  by the hub: the monitor thread takes the blocked thread's innermost frames
  (``sys._current_frames()``) and hands the text to the hub through the loop's thread-safe
  callback; the line is logged, in a greenlet of its own, as soon as the hub runs again (so
  log targets are only ever used from the hub's thread). Until then further reports of the
  same episode are ignored: one line per episode, saying how long it lasted at least (from
  its first report, plus ``max_blocking_time``, to the hub running again).
* gevent's own configuration is process-wide: starting a detector sets
  ``gevent.config.monitor_thread`` and ``max_blocking_time`` (the last started wins when
  servers of one process differ) and turns gevent's own printing of blocking reports to
  stderr off (the log line replaces it). Stopping the last running detector of the process
  puts the three settings back as they were before the first started (else every hub started
  later in the process, a server's in a thread for one, would run a monitor thread too).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import types
import warnings
from collections.abc import Callable
from typing import Any

import gevent
import gevent.events
from gevent.hub import Hub

#: How many frames of the blocked code the log line names (innermost first).
FRAMES = 4

# The detectors of this process started and not stopped yet, and gevent's settings from before
# the first of them started (restored when the last stops); under _CONFIG_LOCK (hubs of
# several threads start and stop them).
_CONFIG_LOCK = threading.Lock()
_running: list[BlockingDetector] = []
_saved: tuple[bool, float, bool] = (False, 0.0, True)


def describe_frames(frame: types.FrameType | None, depth: int = FRAMES) -> str:
    """``function (file:line) <- caller (file:line) ...``, innermost first, at most
    ``depth`` frames."""
    parts: list[str] = []
    while frame is not None and len(parts) < depth:
        code = frame.f_code
        name = getattr(code, "co_qualname", code.co_name)  # co_qualname: Python 3.11+
        parts.append(f"{name} ({code.co_filename}:{frame.f_lineno})")
        frame = frame.f_back
    return " <- ".join(parts) or "unknown code"


class BlockingDetector:
    """Reports, at level 1, each time the hub of the thread that started it was blocked for
    more than ``max_blocking_time`` seconds. Start it in the hub's thread (a serving process:
    Single, or a PreFork worker); :meth:`stop` it when that process stops serving.

    Args:
        max_blocking_time: seconds without a greenlet switch that count as blocking.
        log: ``log(level, message)``, the server's log; called in the hub's thread only.
    """

    def __init__(self, max_blocking_time: float,
                 log: Callable[[int, str], None] | None) -> None:
        self._limit = max_blocking_time
        self._log = log
        self._hub: Hub | None = None
        self._own_thread = False  # start() started the hub's monitor thread (stop() ends it)
        self._lock = threading.Lock()  # a real lock: the monitor thread takes it too
        # (where, when first seen) of an episode not logged yet
        self._pending: tuple[str, float] | None = None
        self._reported = 0

    @property
    def reported(self) -> int:
        """Blocking episodes logged so far."""
        return self._reported

    def start(self) -> None:
        """Start gevent's monitor thread for this thread's hub (if it has none yet) and
        subscribe to its reports."""
        global _saved
        config = gevent.config
        with _CONFIG_LOCK:
            if not _running:
                _saved = (config.monitor_thread, config.max_blocking_time,
                          config.print_blocking_reports)
            _running.append(self)
            config.monitor_thread = True
            config.max_blocking_time = self._limit
            config.print_blocking_reports = False
        hub = self._hub = gevent.get_hub()
        # A monitor thread already there (GEVENT_MONITOR_THREAD_ENABLE) is not ours to stop.
        self._own_thread = hub.periodic_monitoring_thread is None
        with warnings.catch_warnings():  # "install psutil": memory monitoring is not ours
            warnings.simplefilter("ignore")
            hub.start_periodic_monitoring_thread()
        gevent.events.subscribers.append(self._on_event)

    def stop(self) -> None:
        """Unsubscribe and stop the hub's monitor thread if :meth:`start` started it (it ends
        within its period); the last running detector of the process puts gevent's settings
        back."""
        with contextlib.suppress(ValueError):
            gevent.events.subscribers.remove(self._on_event)
        hub, self._hub = self._hub, None
        if (hub is not None and self._own_thread
                and hub.periodic_monitoring_thread is not None):
            hub.periodic_monitoring_thread.kill()
            hub.periodic_monitoring_thread = None
        config = gevent.config
        with _CONFIG_LOCK:
            if self not in _running:
                return
            _running.remove(self)
            if _running:  # another server's monitor goes on, with its own limit
                config.max_blocking_time = _running[-1]._limit
            else:
                (config.monitor_thread, config.max_blocking_time,
                 config.print_blocking_reports) = _saved

    def _on_event(self, event: Any) -> None:
        """In the monitor thread: an event of gevent's; ours are EventLoopBlocked of our hub."""
        hub = self._hub
        if hub is None or not isinstance(event, gevent.events.EventLoopBlocked):
            return
        if getattr(event, "hub", hub) is not hub:
            return
        with self._lock:
            if self._pending is not None:  # the hub has not run since: the same episode
                return
            frame = sys._current_frames().get(hub.thread_ident)
            self._pending = (describe_frames(frame), time.monotonic())
        hub.loop.run_callback_threadsafe(gevent.spawn, self._report)

    def _report(self) -> None:
        """In the hub's thread, once it runs again: log the episode."""
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        self._reported += 1
        if self._log is not None:
            where, seen = pending
            # It had been blocked for max_blocking_time at least when first seen.
            blocked = time.monotonic() - seen + self._limit
            self._log(1, f"The hub was blocked for at least {blocked:.1f} s "
                         f"(max_blocking_time {self._limit:g}): every connection of this "
                         f"process waited. Blocked in {where}. Blocking calls need "
                         "monkey_patch or run_blocking(); long computations too "
                         "(run_blocking)")
