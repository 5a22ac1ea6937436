"""AcceptBackoff (gnetserver.listener): the delays and the log lines of a burst of failed
accepts (the subprocess test in tests/integration/test_exhaustion.py hits a real EMFILE)."""

from __future__ import annotations

import errno

from gnetserver.listener import AcceptBackoff


def test_a_burst_doubles_the_delay_up_to_the_cap_and_logs_one_line_each_way() -> None:
    lines: list[tuple[int, str]] = []
    backoff = AcceptBackoff("127.0.0.1:1/tcp", lambda level, text: lines.append((level, text)))
    emfile = OSError(errno.EMFILE, "Too many open files")
    delays = [backoff.failed(emfile) for _ in range(8)]
    assert delays[0] == AcceptBackoff.MIN_DELAY
    assert all(b == min(AcceptBackoff.MAX_DELAY, 2 * a) for a, b in zip(delays, delays[1:],
                                                                         strict=False))
    assert delays[-1] == AcceptBackoff.MAX_DELAY
    backoff.succeeded()
    backoff.succeeded()
    assert backoff.failed(emfile) == AcceptBackoff.MIN_DELAY  # reset by the success
    backoff.succeeded()  # the same burst (no BURST_GAP between): no new lines
    assert [level for level, _ in lines] == [1, 2]
    assert "EMFILE (Too many open files)" in lines[0][1] and "127.0.0.1:1/tcp" in lines[0][1]
    assert "after 8 failed attempt(s)" in lines[1][1]
    assert backoff.failures == 9


def test_no_log_given_logs_nothing() -> None:
    backoff = AcceptBackoff("x", None)
    backoff.failed(OSError(errno.ENFILE, "Too many open files in system"))
    backoff.succeeded()
    assert backoff.failures == 1
