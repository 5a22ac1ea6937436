"""ClosingMixin: how the server stops: ``stop(timeout)`` and the parts of ``server_close``.

Rules of this module (behaviour: spec/netserver.md section 6):

* The order of the close's steps is in one place, ``GServer.server_close`` (server.py); this
  mixin provides the steps and the bookkeeping around them.
* One close: the first caller of ``stop``/``server_close`` runs it; a later caller waits for
  it to end (``_closed``), except in a greenlet the close waits for or runs in (a connection's,
  the loop's, the closer's own), where waiting would never end: there it returns at once.
* A close asked for from a connection's greenlet never runs there (the drain would wait for
  its own caller): it ends the loop, and ``run()`` closes; a server started with ``start()``
  has no loop, so the close runs in a fresh greenlet.
* The drain lets connections finish for ``graceful_timeout`` (or the shortest
  ``stop(timeout)`` asked for), then kills those left (their clients are aborted).
  ``stop(timeout)`` during a drain can only bring its end closer (``_drain_deadline``,
  ``_deadline_moved``). Signals received meanwhile go to their handlers
  (:mod:`gnetserver.signal_handling`): TERM and INT end the drain through ``stop(0)``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from . import restart

if TYPE_CHECKING:
    from gevent.pool import Pool

    from . import signals
    from .listener import Listener


class ClosingMixin:
    """The closing steps of :class:`~gnetserver.server.GServer`: ``stop`` and the parts
    ``server_close`` calls in order."""

    if TYPE_CHECKING:  # provided by the server class and the other mixins
        conf: dict[str, Any]
        listeners: list[Listener]
        restarting: bool
        _pool: Pool | None
        _signal_queue: signals.SignalQueue | None

        def log(self, level: int, message: str) -> None: ...
        def server_close(self) -> None: ...
        def dispatch_signals(self, names: Sequence[str]) -> None: ...

    def _init_closing(self) -> None:
        """The closing state of a new server (run by ``GServer.__init__``), shared by every
        ``stop``/``server_close`` caller."""
        #: Set by stop() and the signal handlers: the loop ends, then run() closes.
        self._stop_requested = Event()
        #: Set once server_close has ended (also after a failing hook): later callers wait on it.
        self._closed = Event()
        #: The shortest ``stop(timeout)`` asked for; None: ``graceful_timeout``.
        self._stop_timeout: float | None = None
        #: True from the start of the one close on.
        self._closing = False
        #: The greenlets running server_close and loop (None when none runs).
        self._closer: Any = None
        self._looper: Any = None
        self._looping = False
        #: When the running drain ends; a later stop(timeout) may only move it closer, and
        #: sets ``_deadline_moved`` to wake the drain.
        self._drain_deadline = float("inf")
        self._deadline_moved = Event()

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let connections finish for ``timeout`` seconds (default
        ``graceful_timeout``), then cut them and close every listener; returns once closed.

        Any greenlet of the server's hub may call it, any number of times: a later call waits
        for the close already running, and its ``timeout`` can only bring that close's end
        closer. An explicit stop also cancels a HUP restart still draining. Called from a
        connection's own greenlet (an ``exit`` command), it returns at once: the server closes
        in another greenlet and drains this connection like the others, so return promptly.
        """
        self._shorten_stop(timeout)
        self.restarting = False
        self._stop_requested.set()
        if not self._looping:
            self.server_close()
        elif self._may_wait():  # the loop ends and run() closes the server
            self._closed.wait()

    def _shorten_stop(self, timeout: float | None) -> None:
        """Keep the shortest timeout asked for; during a drain, move its deadline closer."""
        if timeout is None:
            return
        if self._stop_timeout is None or timeout < self._stop_timeout:
            self._stop_timeout = timeout
        deadline = time.monotonic() + timeout
        if deadline < self._drain_deadline:
            self._drain_deadline = deadline
            self._deadline_moved.set()

    def _in_pool(self) -> bool:
        """True in a connection's greenlet."""
        return self._pool is not None and gevent.getcurrent() in self._pool

    def _may_wait(self) -> bool:
        """False in a greenlet the close itself waits for or runs in (a connection's, the
        loop's, the closer's): waiting for the close there would never end."""
        current = gevent.getcurrent()
        return current is not self._closer and current is not self._looper \
            and not self._in_pool()

    def _claim_close(self) -> bool:
        """First step of server_close: True when the caller is to run the one close now.

        Otherwise it returns False: after waiting for the close already running (unless the
        caller is a greenlet that close waits for), or, in a connection's greenlet, after
        handing the close on (the loop ends; without a loop, a fresh greenlet closes)."""
        if self._closing:
            if self._may_wait():
                self._closed.wait()
            return False
        if self._in_pool():
            self._stop_requested.set()  # a running loop ends, then run() closes
            if not self._looping:
                gevent.spawn(self.server_close)
            return False
        self._closing, self._closer = True, gevent.getcurrent()
        return True

    def _stop_accepting(self) -> list[restart.BoundSocket]:
        """Stop every listener's StreamServer. After a HUP (``restarting``) the listening
        sockets are first dup'ed for the new image: returns those dups (none otherwise)."""
        handed = restart.detach_listeners(self.listeners, self.log) if self.restarting else []
        for listener in self.listeners:
            if listener.stream_server is not None:
                listener.stream_server.close()
        return handed

    def _drain(self) -> None:
        """Let the running connections finish until the drain's deadline (the shortest
        ``stop(timeout)``, else ``graceful_timeout``, from now), then kill those left."""
        if self._pool is None:
            return  # never accepted
        timeout = self._stop_timeout
        if timeout is None:
            timeout = self.conf.get("graceful_timeout", 0)
        self._drain_deadline = time.monotonic() + timeout
        if timeout > 0 and len(self._pool):
            self.log(2, f"Waiting up to {timeout:g}s for {len(self._pool)} connection(s) "
                        "to finish")
            self._wait_for_connections()
        self._pool.kill(block=True, timeout=1)

    def _wait_for_connections(self) -> None:
        """Wait until the pool is empty or the drain's deadline has passed; a later
        ``stop(timeout)`` may move it closer (TERM and INT do: ``stop(0)``). Signals are
        dispatched here, in the closing greenlet, as they come."""
        assert self._pool is not None
        queue = self._signal_queue
        waiter = gevent.spawn(self._pool.join)
        wake = [waiter, self._deadline_moved] + ([queue.event] if queue is not None else [])
        try:
            while not waiter.dead:
                self._deadline_moved.clear()  # read the deadline afresh below
                left = self._drain_deadline - time.monotonic()
                if left <= 0:
                    break
                gevent.wait(wake, timeout=left, count=1)
                if queue is not None:
                    self.dispatch_signals(queue.pop_all())
        finally:
            waiter.kill()

    def _release_listeners(self) -> None:
        """Close every listening socket (also when a start-up step failed)."""
        for listener in self.listeners:
            listener.protocol.close_listener(listener.sock)
