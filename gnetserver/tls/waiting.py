"""Cooperative waits of one connection under one deadline: no timer armed per wait.

Rules of this module:

* A :class:`Waits` belongs to one connection (one fd) and parks the connection's greenlet until
  the fd is readable (:meth:`Waits.wait_read`) or writable (:meth:`Waits.wait_write`), through
  two io watchers reused by every wait (gevent's ``wait_read`` makes one per wait): the gevent
  socket's own two when it is given one, else two made once. The socket's own methods may
  still wait on them, one greenlet per direction at a time (a wait of ours meanwhile gets
  ``ConcurrentObjectUseError``); the timer throws only into waits of ours.
* **One deadline per connection and direction.** A wait is given the monotonic time by which
  the operation it belongs to must end (``until``; ``None``: no limit) and the exception to
  raise then. It records them (one pair for reads, one for writes: a reader and a writer
  greenlet keep their own deadlines); it does not arm a timer. One libev timer per
  connection, created when a wait first needs one, fires at the earliest deadline recorded:
  a waiting greenlet whose deadline has passed then gets its exception, and the timer is
  re-armed for the deadlines now recorded (a later operation pushed them back). So a
  connection that serves request after request arms its timer about once per timeout
  period, where a ``gevent.Timeout`` per wait arms and cancels one per wait (an allocation,
  a start and a stop each time, measured as a large part of a keep-alive request's cost).
* A wait that passes its deadline gets the exception given (``TimeoutError`` for reads and
  writes, ``HandshakeTimeout`` in a handshake) thrown by the timer's callback itself, as a
  ``gevent.Timeout`` is: not by a callback run later (``hub.cancel_wait``), which, when the fd
  became ready in the same loop iteration, would hit the greenlet's *next* wait. The watcher
  stops in the wait's own ``finally``, so nothing stays started.
* ``close()`` wakes a greenlet parked in a wait (with gevent's ``cancel_wait_ex``, EBADF) and
  closes the watchers and the timer; later waits are not allowed (the fd is gone).

Concurrency: in the thread of the hub that made it; one reader and one writer greenlet at a
time, as on a gevent socket (a second greenlet waiting in the same direction gets gevent's
``ConcurrentObjectUseError``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, NoReturn

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

    __slots__ = ("_hub", "_reading", "_writing", "_timer", "_timer_at", "_read_until",
                 "_read_expired", "_write_until", "_write_expired")

    def __init__(self, fd: int, sock: Any = None) -> None:
        """``fd``: the connection's descriptor. ``sock``: the gevent socket over it, if there
        is one: its own two io watchers are used (they exist already: measured, two watchers
        and two ``fcntl`` calls less per connection); the socket's own waits on them are
        never cut by a deadline of these (see :func:`_parked`)."""
        hub = get_hub()
        self._hub = hub
        # Any: gevent's stubs of the io watcher lack ``active``.
        self._reading: Any
        self._writing: Any
        if sock is not None:  # gevent's socket keeps them as _read_event/_write_event
            self._reading, self._writing = sock._read_event, sock._write_event
        else:
            self._reading, self._writing = hub.loop.io(fd, _READ), hub.loop.io(fd, _WRITE)
        self._timer: Any = None
        self._timer_at = _INF  # when the started timer fires (inf: none started)
        # The deadline of the read (write) now waiting (inf: none) and what it raises then.
        self._read_until = self._write_until = _INF
        self._read_expired: Callable[[], BaseException] | None = None
        self._write_expired: Callable[[], BaseException] | None = None

    def wait_read(self, until: float | None, expired: Callable[[], BaseException]) -> None:
        """Park until the fd is readable; raise ``expired()`` once ``until`` (monotonic) has
        passed (``None``: no deadline)."""
        watcher = self._reading
        if watcher.callback is not None:  # before a parked reader's deadline is replaced
            _in_use(watcher)
        if until is None:
            self._read_until = _INF
        else:
            if until < self._timer_at:  # (else the started timer fires by then)
                self._deadline(until, expired)
            self._read_until, self._read_expired = until, expired
        self._park(watcher)

    def wait_write(self, until: float | None, expired: Callable[[], BaseException]) -> None:
        """Park until the fd is writable; deadline as :meth:`wait_read`."""
        watcher = self._writing
        if watcher.callback is not None:
            _in_use(watcher)
        if until is None:
            self._write_until = _INF
        else:
            if until < self._timer_at:
                self._deadline(until, expired)
            self._write_until, self._write_expired = until, expired
        self._park(watcher)

    def _park(self, watcher: Any) -> None:
        """``hub.wait(watcher)`` without its ``Waiter``: the watcher switches straight back to
        this greenlet (one allocation and one C frame less per wait; a parked greenlet keeps
        a copy of its C stack). ``hub.cancel_wait`` throws into ``callback.__self__``, this
        greenlet, as it would into a Waiter; so does the timer (:meth:`_fire`)."""
        watcher.start(getcurrent().switch, _READY)
        try:
            result = self._hub.switch()
        finally:
            watcher.stop()
        if result is not _READY:
            raise InvalidSwitchError(f"Invalid switch into {getcurrent()}: got {result!r}")

    def _deadline(self, until: float, expired: Callable[[], BaseException]) -> None:
        """For a deadline earlier than the started timer (or with none started): raise
        ``expired()`` if ``until`` has passed, else re-arm the timer to fire by it. (A wait
        whose deadline is not earlier than the timer's leaves both to the timer, which throws
        ``expired()`` into it when it fires past that deadline: measured, one clock read and
        one call less per such wait.)"""
        now = _monotonic()
        if until <= now:
            raise expired()
        self._arm(until, now)

    def _arm(self, at: float, now: float) -> None:
        """(Re)start the timer to fire at monotonic time ``at`` (``now``: the time now)."""
        if self._timer is not None:
            self._timer.close()
        # ref=False: a timer alone must not keep the hub's loop running.
        timer = self._hub.loop.timer(at - now if at > now else 0.0, ref=False)
        timer.start(self._fire)
        self._timer, self._timer_at = timer, at

    def _fire(self) -> None:
        """The timer, in the hub: throw into each wait whose deadline passed, then re-arm for
        the deadlines left. A throw runs the greenlet until it waits again (its next wait may
        arm the timer itself), or ends (it may close this object)."""
        self._timer_at = _INF
        try:
            if _parked(self._reading) and _passed(self._read_until):
                self._read_until = _INF
                _throw(self._reading, self._read_expired)
            if _parked(self._writing) and _passed(self._write_until):
                self._write_until = _INF
                _throw(self._writing, self._write_expired)
        finally:  # a bare greenlet's error comes out of the throw: the other wait still ends
            at = min(self._read_until if _parked(self._reading) else _INF,
                     self._write_until if _parked(self._writing) else _INF)
            if at < self._timer_at:  # (inf when a wait armed it again, or none waits)
                self._arm(at, _monotonic())

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
        # A greenlet woken by the close waits no more: nothing for a timer to re-arm.
        self._timer_at, self._read_until, self._write_until = _INF, _INF, _INF


def _in_use(watcher: Any) -> NoReturn:
    """gevent's error: one greenlet waits on a watcher at a time."""
    raise ConcurrentObjectUseError(
        f"This socket is already used by another greenlet: {watcher.callback!r}")


def _parked(watcher: Any) -> bool:
    """True while a greenlet is parked on ``watcher`` in one of these waits: not in a wait of
    the gevent socket's own (``sock.recv``, ``sendfile``...: its ``hub.wait`` starts the shared
    watcher with a Waiter), which the deadline recorded by an earlier wait of ours, the
    timer's, must not cut. Read only when the timer fires: no cost per wait."""
    args = watcher.args  # (_READY,) from _park; None once stopped
    return args is not None and args[0] is _READY


def _passed(until: float) -> bool:
    """True once ``until`` has passed (libev's clock may lag the monotonic one: slack)."""
    return _monotonic() >= until - _SLACK


def _throw(watcher: Any, expired: Callable[[], BaseException] | None) -> None:
    """Throw ``expired()`` into the greenlet parked on ``watcher`` (in the hub)."""
    assert expired is not None
    watcher.callback.__self__.throw(expired())
