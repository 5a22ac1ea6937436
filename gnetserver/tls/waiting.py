"""Cooperative waits of one connection under one deadline: no timer armed per wait.

Rules of this module:

* A :class:`Waits` belongs to one connection (one fd) and parks the connection's greenlet until
  the fd is readable (:meth:`Waits.wait_read`) or writable (:meth:`Waits.wait_write`), through
  two io watchers created once and reused by every wait (gevent's ``wait_read`` makes one per
  wait).
* **One deadline per connection.** A wait is given the monotonic time by which the operation
  it belongs to must end (``until``; ``None``: no limit) and the exception to raise then. It
  records them in two attributes; it does not arm a timer. One libev timer per connection,
  created when a wait first needs one, fires at the earliest deadline recorded: the waiting
  greenlet then gets the exception if its deadline has passed, else the timer is re-armed for
  the deadline now recorded (a later operation pushed it back). So a connection that serves
  request after request arms its timer about once per timeout period, where a
  ``gevent.Timeout`` per wait arms and cancels one per wait (an allocation, a start and a stop
  each time, measured as a large part of a keep-alive request's cost).
* A wait that passes its deadline raises the exception given (``TimeoutError`` for reads and
  writes, ``HandshakeTimeout`` in a handshake), through gevent's ``hub.cancel_wait``: the
  watcher stops in the wait's own ``finally``, so nothing stays started.
* ``close()`` wakes a greenlet parked in a wait (with gevent's ``cancel_wait_ex``, EBADF) and
  closes the watchers and the timer; later waits are not allowed (the fd is gone).

Concurrency: one greenlet at a time, in the thread of the hub that made it (a second greenlet
waiting on the same watcher gets gevent's ``ConcurrentObjectUseError``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from gevent import get_hub, getcurrent
from gevent.exceptions import ConcurrentObjectUseError, InvalidSwitchError
from gevent.socket import cancel_wait_ex  # type: ignore[attr-defined]  # missing in its stubs

__all__ = ["Waits"]

_READ, _WRITE = 1, 2  # libev/libuv io watcher event masks
_INF = float("inf")
_READY = object()  # what a watcher switches back with
#: A deadline is taken as passed this close to it: libev's clock may lag the monotonic one.
_SLACK = 0.001

_monotonic = time.monotonic


class Waits:
    """The waits of one connection on ``fd`` (see the module rules)."""

    __slots__ = ("_hub", "_reading", "_writing", "_timer", "_timer_at", "_until", "_expired")

    def __init__(self, fd: int) -> None:
        hub = get_hub()
        self._hub = hub
        # Any: gevent's stubs of the io watcher lack ``active``.
        self._reading: Any = hub.loop.io(fd, _READ)
        self._writing: Any = hub.loop.io(fd, _WRITE)
        self._timer: Any = None
        self._timer_at = _INF  # when the started timer fires (inf: none started)
        self._until = _INF  # the deadline of the operation now waiting (inf: none)
        self._expired: Callable[[], BaseException] | None = None

    def wait_read(self, until: float | None, expired: Callable[[], BaseException]) -> None:
        """Park until the fd is readable; raise ``expired()`` once ``until`` (monotonic) has
        passed (``None``: no deadline)."""
        self._deadline(until, expired)
        self._park(self._reading)

    def wait_write(self, until: float | None, expired: Callable[[], BaseException]) -> None:
        """Park until the fd is writable; deadline as :meth:`wait_read`."""
        self._deadline(until, expired)
        self._park(self._writing)

    def _park(self, watcher: Any) -> None:
        """``hub.wait(watcher)`` without its ``Waiter``: the watcher switches straight back to
        this greenlet (one allocation and one C frame less per wait; a parked greenlet keeps
        a copy of its C stack). ``hub.cancel_wait`` throws into ``callback.__self__``, this
        greenlet, as it would into a Waiter."""
        if watcher.callback is not None:
            raise ConcurrentObjectUseError(
                f"This socket is already used by another greenlet: {watcher.callback!r}")
        watcher.start(getcurrent().switch, _READY)
        try:
            result = self._hub.switch()
        finally:
            watcher.stop()
        if result is not _READY:
            raise InvalidSwitchError(f"Invalid switch into {getcurrent()}: got {result!r}")

    def _deadline(self, until: float | None, expired: Callable[[], BaseException]) -> None:
        if until is None:
            self._until = _INF
            return
        if until <= _monotonic():
            raise expired()
        self._until, self._expired = until, expired
        if until < self._timer_at:  # no timer started yet, or one that would fire too late
            self._arm(until)

    def _arm(self, at: float) -> None:
        """(Re)start the timer to fire at monotonic time ``at``."""
        if self._timer is not None:
            self._timer.close()
        # ref=False: a timer alone must not keep the hub's loop running.
        timer = self._hub.loop.timer(max(at - _monotonic(), 0.0), ref=False)
        timer.start(self._fire)
        self._timer, self._timer_at = timer, at

    def _fire(self) -> None:
        """The timer, in the hub: cut the wait whose deadline passed, or re-arm."""
        self._timer_at = _INF
        if self._reading.active:
            watcher = self._reading
        elif self._writing.active:
            watcher = self._writing
        else:
            return  # no wait now: the next one arms the timer again
        until = self._until
        if until == _INF:
            return
        if _monotonic() >= until - _SLACK:
            expired = self._expired
            assert expired is not None
            self._until = _INF
            self._hub.cancel_wait(watcher, expired())
        else:
            self._arm(until)

    def waiting(self) -> bool:
        """True while a greenlet is parked in a wait."""
        return bool(self._reading.active or self._writing.active)

    def close(self) -> None:
        """Wake a greenlet parked in a wait (EBADF), close the watchers and the timer."""
        hub = self._hub
        for watcher in (self._reading, self._writing):
            hub.cancel_wait(watcher, cancel_wait_ex, True)
        if self._timer is not None:
            self._timer.close()
            self._timer = None
        self._timer_at = _INF
