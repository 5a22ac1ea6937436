"""The life of a server: one state, how it stops, the one close, the bounded drain, signals.

Rules of this module (behaviour: spec/netserver.md section 6):

* One :class:`State` says where a server is: IDLE (built), BOUND (ports bound, start-up hooks
  running), SERVING (accepting), DRAINING (closing: no new connection, in-flight ones finish),
  RESTARTING (closing for a HUP re-exec), CLOSED. Only :class:`Lifecycle` changes it.
* One close: the first caller of ``stop``/``server_close`` runs it (:meth:`Lifecycle.claim_close`);
  a later caller waits for it to end, except in a greenlet the close waits for or runs in (a
  connection's, the loop's, the closer's own), where waiting would never end: there it returns
  at once. A close asked for from a connection's greenlet never runs there (the drain would
  wait for its own caller): it ends the loop and ``run()`` closes; a server started with
  ``start()`` has no loop, so the close runs in a fresh greenlet.
* The drain lets connections finish for ``graceful_timeout`` (or the shortest
  ``stop(timeout)`` asked for), then kills those left. ``stop(timeout)`` during a drain can only
  bring its end closer. Its start (accepting has stopped: a close, a HUP's drainer once the new
  image accepts, a PreFork worker told to finish) sets :meth:`Lifecycle.draining_event`, which
  a protocol links to (``rawlink``) to end its idle sessions at once, as the HTTP personality
  ends keep-alive connections waiting between requests.
* Signals: the OS-level handlers only queue names (:class:`gnetserver.signals.SignalQueue`);
  the loop, and the drain while it waits, hand them to the server's ``dispatch_signals`` in
  their own greenlet. Installed when the loop starts, removed when the close ends.
* A HUP's drainer (a child forked by the close right before the exec, :mod:`gnetserver.
  restart`) keeps this object: :meth:`Lifecycle.become_drainer` swaps the parent's signal
  queue for its own, :meth:`Lifecycle.wait_for_handover` serves until the new image accepts,
  then the usual drain runs (TERM/INT: ``stop(0)`` cuts it).
* The steps of the close (which hook runs when) are the server's (``GServer.server_close``);
  this module keeps the state and the waiting. It knows connections only through the small
  :class:`Connections` interface a personality implements.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import gevent
from gevent.event import Event

from . import signals
from .restart import wait_for_eof as restart_wait_for_eof

#: Called with the names of the signals received, in order (the server's ``dispatch_signals``).
Dispatch = Callable[[Sequence[str]], None]


class State(enum.Enum):
    """Where a server is in its life; see the module rules."""

    IDLE = "idle"
    BOUND = "bound"
    SERVING = "serving"
    DRAINING = "draining"
    RESTARTING = "restarting"
    CLOSED = "closed"


class Connections(Protocol):
    """What the lifecycle needs from a personality about its running connections."""

    def in_connection(self) -> bool:
        """True when the calling greenlet serves a connection."""
        ...

    def active_connections(self) -> int:
        """How many connections run now."""
        ...

    def wait_idle(self) -> gevent.Greenlet[[], Any]:
        """A greenlet that ends once no connection runs (the drain kills it afterwards)."""
        ...

    def kill_connections(self) -> None:
        """Cut every connection still running (their greenlets are killed), waiting briefly."""
        ...


class Lifecycle:
    """The state of one server and the machinery of stopping it (see the module rules).

    Owned by :class:`~gnetserver.server.GServer`; any greenlet of the server's hub may call
    it. Public state: :attr:`state`, :attr:`stop_requested`, :attr:`closing`,
    :attr:`restarting`, :attr:`looping`, :attr:`closed`.
    """

    def __init__(self) -> None:
        self._state = State.IDLE
        self._stop = Event()  # set by stop()/signals: the loop ends, then run() closes
        self._done = Event()  # set once the close ended (also after a failing hook)
        self._stop_timeout: float | None = None  # the shortest stop(timeout) asked for
        self._claimed = False  # True from the start of the one close on
        self._restart = False  # a HUP asked for a re-exec
        self._closer: Any = None  # the greenlets running the close and the loop
        self._looper: Any = None
        self._drain_deadline = float("inf")
        self._deadline_moved = Event()
        self._connections: Connections | None = None
        self._signals: signals.SignalQueue | None = None
        self._overlap_over = Event()  # a drainer's wait for the new image ends (QUIT)
        self._draining = Event()  # set when a drain starts (accepting has stopped)

    # -- state -----------------------------------------------------------------------------

    @property
    def state(self) -> State:
        """The current :class:`State`."""
        return self._state

    @property
    def stop_requested(self) -> bool:
        """True once a stop (or a signal's stop or restart) was asked for."""
        return self._stop.is_set()

    @property
    def closing(self) -> bool:
        """True from the start of the one close on."""
        return self._claimed

    @property
    def draining(self) -> bool:
        """True once a drain has started: nothing is accepted any more and the running
        connections are finishing (a close, a HUP's drainer, a PreFork worker told to stop)."""
        return self._draining.is_set()

    def draining_event(self) -> Event:
        """The event set when a drain starts; ``rawlink`` a callback to it to end idle
        sessions at once (it runs in the hub). Kept across forks (workers, drainers)."""
        return self._draining

    @property
    def closed(self) -> bool:
        """True once the close has ended (or the start failed)."""
        return self._done.is_set()

    @property
    def restarting(self) -> bool:
        """True while a HUP re-exec is asked for (the close hands the sockets over)."""
        return self._restart

    @property
    def in_loop(self) -> bool:
        """True while the server's loop runs (``run()``; not with ``start()``)."""
        return self._looper is not None

    @property
    def signals_installed(self) -> bool:
        """True while this server's signal handlers are installed (the loop runs them)."""
        return self._signals is not None and self._signals.installed

    def bound(self) -> None:
        """The start-up bound every port (IDLE -> BOUND; a server already closing stays so)."""
        if self._state is State.IDLE:
            self._state = State.BOUND

    def serving(self, connections: Connections) -> None:
        """Accepting started; ``connections`` tells about the running ones (-> SERVING)."""
        self._connections = connections
        if not self._claimed:
            self._state = State.SERVING

    def start_failed(self) -> None:
        """A start-up step raised: nothing serves, nobody may wait for a close (-> CLOSED)."""
        self._state = State.CLOSED
        self._done.set()

    # -- asking to stop ----------------------------------------------------------------------

    def request_stop(self, timeout: float | None = None) -> None:
        """Ask the loop to end (the close follows); ``timeout`` can only shorten the drain.
        A HUP restart asked for stays asked for: ``stop()`` cancels it explicitly
        (:meth:`cancel_restart`), QUIT does not."""
        self._shorten(timeout)
        self._stop.set()

    def request_restart(self) -> None:
        """A HUP passed its preflight: end the loop; the close hands the sockets over."""
        self._restart = True
        self._stop.set()

    @property
    def stop_timeout(self) -> float | None:
        """The shortest ``stop(timeout)`` asked for (TERM and INT ask 0), None if none was."""
        return self._stop_timeout

    @property
    def drain_deadline(self) -> float:
        """When the drain ends (``time.monotonic()``; infinite before a drain started)."""
        return self._drain_deadline

    def cancel_restart(self) -> None:
        """An explicit stop during a HUP's drain: close instead of re-executing."""
        self._restart = False
        if self._state is State.RESTARTING:
            self._state = State.DRAINING

    def _shorten(self, timeout: float | None) -> None:
        """Keep the shortest timeout asked for; during a drain, move its deadline closer."""
        if timeout is None:
            return
        if self._stop_timeout is None or timeout < self._stop_timeout:
            self._stop_timeout = timeout
        deadline = time.monotonic() + timeout
        if deadline < self._drain_deadline:
            self._drain_deadline = deadline
            self._deadline_moved.set()

    def may_wait(self) -> bool:
        """False in a greenlet the close waits for or runs in (a connection's, the loop's, the
        closer's): waiting for the close there would never end."""
        current = gevent.getcurrent()
        return current is not self._closer and current is not self._looper \
            and not self.in_connection()

    def in_connection(self) -> bool:
        """True in a connection's greenlet."""
        return self._connections is not None and self._connections.in_connection()

    def wait_closed(self) -> None:
        """Wait until the close has ended."""
        self._done.wait()

    def closed_event(self) -> Event:
        """An event set once the close has ended, to wait on with others (``gevent.wait``)."""
        return self._done

    # -- signals and the loop ----------------------------------------------------------------

    def register_signals(self, names: Sequence[str] = signals.SIGNALS) -> bool:
        """Prepare Net::Server's signals (TERM, INT, QUIT, HUP, and whatever else ``names``
        adds: a PreFork parent also queues CHLD, TTIN, TTOU; a worker prepares its own after
        the fork); only the main thread may install handlers, so elsewhere this does nothing
        and returns False."""
        if not signals.in_main_thread():
            return False
        self._signals = signals.SignalQueue(tuple(names))
        return True

    def install_signals(self) -> None:
        """Install the handlers prepared by :meth:`register_signals` (when the loop starts)."""
        if self._signals is not None:
            self._signals.install()

    def uninstall_signals(self) -> None:
        """Put back the program's own handlers (at the end of the close)."""
        if self._signals is not None:
            self._signals.uninstall()

    @contextmanager
    def looping(self) -> Iterator[None]:
        """Around the server's loop (whatever the personality does in it): the close knows a
        loop runs (``stop()`` then lets it end and ``run()`` close) and never waits for it."""
        self._looper = gevent.getcurrent()
        try:
            yield
        finally:
            self._looper = None

    def wait_for_stop(self, dispatch: Dispatch, timeout: float | None = None) -> None:
        """Wait until a stop is asked for, handing queued signals to ``dispatch`` meanwhile,
        in this greenlet (the loop of a one-hub personality). With ``timeout``, return after
        that many seconds at the latest, or once signals were dispatched (a supervising loop
        does its rounds between)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._stop.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            if self._wait_then_dispatch([self._stop], dispatch, left) and timeout is not None:
                return

    def _wait_then_dispatch(self, events: list[Any], dispatch: Dispatch,
                            timeout: float | None = None) -> bool:
        """One round of the waits above and below: wait until one of ``events`` or a queued
        signal wakes (at most ``timeout`` seconds), then hand the queued signals to
        ``dispatch``; True when there were any."""
        queue = self._signals
        wake = events + [queue.event] if queue is not None else events
        gevent.wait(wake, count=1, timeout=timeout)
        names = queue.pop_all() if queue is not None else []
        if names:
            dispatch(names)
        return bool(names)

    def dispatch_pending(self, dispatch: Dispatch) -> None:
        """Hand the signals queued now (none is waited for) to ``dispatch``: the close does it
        before a HUP's exec, so a TERM that came with the HUP wins."""
        if self._signals is not None and self._signals.event.is_set():
            dispatch(self._signals.pop_all())

    # -- a HUP's drainer (the forked child that finishes the previous generation) -------------

    def become_drainer(self) -> None:
        """First thing in a HUP's drainer: the parent's signal watchers (copied by the fork,
        they would run the parent's handlers here) are cancelled and the drainer's own queue
        installed (the same names: TERM/INT cut, the server decides about QUIT and HUP); no
        restart is pending here (-> DRAINING)."""
        self._restart = False
        self._state = State.DRAINING
        self._looper = None
        self._overlap_over = Event()
        if self._signals is not None:
            self._signals.uninstall()
            self._signals = signals.SignalQueue()
            self._signals.install()

    def end_overlap(self) -> None:
        """In a drainer: stop waiting for the new image (a QUIT asks it)."""
        self._overlap_over.set()

    def wait_for_handover(self, ready_fd: int, dispatch: Dispatch) -> None:
        """In a drainer: go on serving (the hub keeps accepting) until the new image closes
        the ready pipe (it accepts, or it died), :meth:`end_overlap` is called, or a stop with
        a timeout is asked for (TERM/INT: ``stop(0)``). Signals go to ``dispatch``."""
        eof = gevent.spawn(restart_wait_for_eof, ready_fd)
        try:
            while not (eof.dead or self._overlap_over.is_set()
                       or self._stop_timeout is not None):
                self._deadline_moved.clear()
                self._wait_then_dispatch([eof, self._overlap_over, self._deadline_moved],
                                         dispatch)
        finally:
            eof.kill()

    # -- the one close -----------------------------------------------------------------------

    def claim_close(self, close: Callable[[], None]) -> bool:
        """First step of ``server_close``: True when the caller is to run the one close now
        (-> DRAINING, or RESTARTING after a HUP). Otherwise False: after waiting for the close
        already running (unless the caller is a greenlet that close waits for), or, in a
        connection's greenlet, after handing the close on (the loop ends; without a loop,
        ``close`` runs in a fresh greenlet)."""
        if self._claimed:
            if self.may_wait():
                self._done.wait()
            return False
        if self.in_connection():
            self._stop.set()
            if not self.in_loop:
                gevent.spawn(close)
            return False
        self._claimed, self._closer = True, gevent.getcurrent()
        self._state = State.RESTARTING if self._restart else State.DRAINING
        return True

    def drain(self, graceful_timeout: float, dispatch: Dispatch,
              log: Callable[[int, str], None]) -> None:
        """Let the running connections finish until the drain's deadline (the shortest
        ``stop(timeout)``, else ``graceful_timeout``, from now), then cut those left. Signals
        that come meanwhile go to ``dispatch``; the wait is announced through ``log``. First
        the draining event is set (its links end idle sessions)."""
        self._draining.set()
        connections = self._connections
        if connections is None:
            return  # never accepted
        timeout = graceful_timeout if self._stop_timeout is None else self._stop_timeout
        self._drain_deadline = time.monotonic() + timeout
        running = connections.active_connections()
        if timeout > 0 and running:
            log(2, f"Waiting up to {timeout:g}s for {running} connection(s) to finish")
            self._wait_for_connections(connections, dispatch)
        connections.kill_connections()

    def _wait_for_connections(self, connections: Connections, dispatch: Dispatch) -> None:
        """Wait until no connection runs or the deadline has passed; a later
        ``stop(timeout)`` may move it closer (TERM and INT do: ``stop(0)``)."""
        idle = connections.wait_idle()
        try:
            while connections.active_connections():
                self._deadline_moved.clear()  # read the deadline afresh below
                left = self._drain_deadline - time.monotonic()
                if left <= 0:
                    break
                self._wait_then_dispatch([idle, self._deadline_moved], dispatch, left)
        finally:
            idle.kill()

    def close_ended(self) -> None:
        """Last step of the close, also after a failing hook (-> CLOSED): waiters wake."""
        self._restart = False
        self._state = State.CLOSED
        self._done.set()
