"""The hub-blocking detector's process-wide gevent settings (gnetserver.hubwatch): set while a
detector runs, put back once the last one stops (the reports themselves are tested with real
servers in tests/integration/test_exhaustion.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import gevent

from gnetserver.hubwatch import BlockingDetector


def settings() -> tuple[bool, float, bool]:
    config = gevent.config
    return config.monitor_thread, config.max_blocking_time, config.print_blocking_reports


def in_hub_thread(body: Callable[[], Any]) -> Any:
    """Run ``body`` in a new thread (a hub of its own, destroyed after); return its result."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(body())
        finally:
            gevent.get_hub().destroy(destroy_loop=True)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and result
    return result[0]


def test_the_last_detector_stopped_restores_gevent_settings() -> None:
    before = settings()
    first, second = BlockingDetector(0.3, None), BlockingDetector(0.7, None)
    assert in_hub_thread(lambda: (first.start(), settings())[1]) == (True, 0.3, False)
    assert in_hub_thread(lambda: (second.start(), settings())[1]) == (True, 0.7, False)
    second.stop()  # the first still runs: its limit is gevent's again
    assert settings() == (True, 0.3, False)
    first.stop()
    first.stop()  # twice: harmless
    assert settings() == before


def test_a_monitor_thread_started_before_is_left_running() -> None:
    """GEVENT_MONITOR_THREAD_ENABLE (or the program) started the hub's monitor thread: a
    detector watches through it and leaves it running when it stops."""

    def body() -> tuple[bool, bool]:
        hub, before = gevent.get_hub(), gevent.config.monitor_thread
        gevent.config.monitor_thread = True
        try:
            thread = hub.start_periodic_monitoring_thread()
            detector = BlockingDetector(0.5, None)
            detector.start()
            detector.stop()
            return hub.periodic_monitoring_thread is thread, thread.should_run
        finally:
            gevent.config.monitor_thread = before

    assert in_hub_thread(body) == (True, True)  # (the hub's destruction ends it)
