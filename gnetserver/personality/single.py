"""The ``Single`` personality: one process, one gevent hub, a greenlet per connection.

Rules of this module:

* One ``gevent.server.StreamServer`` per listener accepts in the hub; every accepted socket is
  handed to the server's ``handle`` in a greenlet of one shared pool. The pool holds
  ``max_servers + max_handshakes`` greenlets: a connection in its TLS handshake (or waiting for
  a session slot) counts against ``max_handshakes``, an established session against
  ``max_servers`` (:meth:`Single.session_slot`). The pool never grows past that.
* When the pool is full, the accept loop first evicts the oldest connection still in its
  handshake (:mod:`.pending`: a flood of silent sockets cannot lock real clients out); only
  when none is (every pending connection waits for a session, each for at most
  ``timeout_session_wait``) do new connections wait in the kernel's backlog.
* Datagram listeners (udp, unixdgram) have no connections: one reader greenlet per listener
  reads datagrams off the socket (``recvmsg``, the port's ``udp_recv_len`` and
  ``udp_recv_flags``) and spawns the server's ``handle`` for each, with a
  :class:`~gnetserver.proto.datagram.Datagram` in the place of an accepted socket, into a
  pool of its own of ``max_servers`` greenlets: at most that many datagrams are in flight.
  A datagram that finds the pool full is dropped at once and counted
  (:attr:`Single.datagrams_dropped`), never queued: the kernel's socket buffer is the only
  queue, and it drops what overflows it. Drops are logged at level 2, at most one line per
  :data:`DROP_REPORT_SECONDS` (the count since the last line), and once more when
  accepting stops. Datagram greenlets are never evicted (they have no handshake).
* An accept that fails for want of descriptors, buffers or memory (EMFILE, ENFILE, ENOBUFS,
  ENOMEM) pauses that listener's accepting with back-off (20 ms doubling to 0.5 s, reset by an
  accept that works), logged once per burst (:class:`~gnetserver.listener.AcceptBackoff`):
  no busy loop, no traceback per failure; the backlog holds the waiting connections.
* With ``max_blocking_time``, :meth:`Single.start` starts the hub-blocking detector
  (:mod:`gnetserver.hubwatch`) for this process's hub; :meth:`Single.kill_connections`, the
  end of every drain, stops it.
* The loop is the lifecycle's wait for a stop: the hub accepts meanwhile.
* Stopping: :meth:`Single.stop_accepting` closes the StreamServers, and so their listening
  sockets (the server's last close first accepts what the kernel queued on them), and kills
  the datagram readers (the datagram sockets stay open: the server owns them); the drain
  waits on :meth:`Single.wait_idle`, then :meth:`Single.kill_connections` cuts what is left.
"""

from __future__ import annotations

import functools
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import gevent
from gevent import getcurrent
from gevent.pool import Pool
from gevent.server import StreamServer
from gevent.socket import socket as GeventSocket

from ..conf import Conf
from ..hubwatch import BlockingDetector
from ..lifecycle import Dispatch, Lifecycle
from ..listener import EXHAUSTION_ERRNOS, AcceptBackoff, Listener
from ..proto.datagram import Datagram
from .hooks import ProcessHooks
from .pending import PendingBudget

#: The shortest interval between two log lines about dropped datagrams (seconds).
DROP_REPORT_SECONDS = 5.0

#: Datagrams a reader takes in a row before it lets the greenlets it spawned run.
DATAGRAM_BURST = 64


class Single:
    """One process, one hub (see the module rules).

    Args:
        conf: the server's configuration: ``max_servers`` sessions served at once
            (established connections), ``max_handshakes`` connections in their handshake, or
            waiting for a session, on top, ``timeout_session_wait`` seconds a connection may
            wait for a session slot. ``max_servers`` also bounds the datagrams in flight.
    """

    name: ClassVar[str] = "Single"
    #: Signals it handles itself (:meth:`handle_signal`): none, the server does them all.
    signals: ClassVar[tuple[str, ...]] = ()
    #: Whether it needs the server's own loop in the main thread (forking, supervising).
    needs_main_loop: ClassVar[bool] = False

    def __init__(self, conf: Conf, *, max_accept: int | None = None) -> None:
        self._size = conf.max_servers + conf.max_handshakes  # the pool's (it never changes)
        self._pool = Pool(self._size)
        self._budget = PendingBudget(conf.max_servers, conf.timeout_session_wait)
        self._servers: list[StreamServer] = []
        self._running = 0  # connection greenlets that started (the others wait to be run)
        # Connections accepted per wake-up (gevent's default 100): a PreFork worker takes 1,
        # so that one woken worker does not take a burst its siblings would serve sooner.
        self._max_accept = max_accept
        self._datagram_pool = Pool(conf.max_servers)
        self._readers: list[gevent.Greenlet[..., Any]] = []
        self._dropped = 0  # datagrams dropped since the start
        self._unreported = 0  # ... of which no log line spoke yet
        self._reported_at = float("-inf")
        self._log: Callable[[int, str], None] | None = None
        self._max_blocking_time = conf.max_blocking_time
        self._blocking: BlockingDetector | None = None

    @property
    def datagrams_dropped(self) -> int:
        """Datagrams dropped because ``max_servers`` datagrams were in flight already."""
        return self._dropped

    @property
    def evictions(self) -> int:
        """Connections evicted from their handshake to make room for newer ones."""
        return self._budget.evictions

    @property
    def session_wait_timeouts(self) -> int:
        """Connections closed because no session slot freed within ``timeout_session_wait``."""
        return self._budget.session_wait_timeouts

    def start(self, listeners: Sequence[Listener],
              handle: Callable[[Listener, Any, Any], None],
              hooks: ProcessHooks | None = None) -> None:
        """One acceptor (a StreamServer) per stream listener, all spawning into the one pool;
        one reader greenlet per datagram listener, spawning into the datagram pool
        (``hooks``: their ``log`` reports dropped datagrams; one process has no workers)."""
        self._log = hooks.log if hooks is not None else None
        if self._max_blocking_time > 0:  # the hub-blocking detector: this process's hub
            self._blocking = BlockingDetector(self._max_blocking_time, self._log)
            self._blocking.start()
        for listener in listeners:
            if listener.is_datagram:
                self._readers.append(gevent.spawn(self._read_datagrams, handle, listener))
                continue
            server = _Acceptor(self, listener.sock, self._handler(handle, listener),
                               AcceptBackoff(str(listener), self._log,
                                             self._accept_failed(hooks, listener)))
            if self._max_accept is not None:
                server.max_accept = self._max_accept
            server.start()
            self._servers.append(server)

    def handle_signal(self, name: str) -> bool:
        """No signal of its own: False, the server's ``handle_<name>`` does it."""
        return False

    @staticmethod
    def _accept_failed(hooks: ProcessHooks | None, listener: Listener
                       ) -> Callable[[], None] | None:
        """What a failed accept on ``listener`` calls (the server's counter), if anything."""
        if hooks is None:
            return None
        accept_failed = hooks.accept_failed
        return lambda: accept_failed(listener)

    def _handler(self, handle: Callable[[Listener, Any, Any], None], listener: Listener
                 ) -> Callable[[Any, Any], None]:
        """The StreamServer's handle for ``listener``: a plain function, not a
        ``functools.partial``, because CPython calls a Python function from Python code
        without a C-level frame, and every connection's greenlet keeps a copy of its C stack
        while it waits (measured: smaller idle connections)."""
        budget = self._budget

        def handle_connection(sock: Any, address: Any) -> None:
            """A connection's greenlet body: pending in its handshake (evictable) until the
            server asks for its session slot, or until it ends. (One function, the budget's
            calls inline: each Python call is a measurable part of a full handshake.)"""
            me = getcurrent()
            budget.handshaking(me)
            self._running += 1
            try:
                handle(listener, sock, address)
            finally:
                self._running -= 1
                budget.done(me)

        return handle_connection

    def _read_datagrams(self, handle: Callable[[Listener, Any, Any], None],
                        listener: Listener) -> None:
        """A datagram listener's reader (its own greenlet, until stop_accepting kills it):
        read each datagram as it comes and hand it on (:meth:`_dispatch`); wait for the
        socket to be readable when none is queued."""
        sock, protocol = listener.sock, listener.protocol
        size: int = getattr(protocol, "recv_len", 65536)
        flags: int = getattr(protocol, "recv_flags", 0)
        hub = gevent.get_hub()
        readable = hub.loop.io(sock.fileno(), 1)
        burst = 0
        try:
            while True:
                try:
                    data, _, msg_flags, peer = sock.recvmsg(size, 0, flags)
                except (BlockingIOError, InterruptedError):
                    burst = 0
                    hub.wait(readable)
                    continue
                except OSError as exc:  # a queued error (ICMP...): said, then go on reading
                    if self._log is not None:
                        self._log(4, f"Reading a datagram on {listener}: {exc}")
                    hub.wait(readable)
                    continue
                self._dispatch(handle, listener,
                               Datagram(sock, data, peer, bool(msg_flags & socket.MSG_TRUNC)))
                burst += 1
                if burst >= DATAGRAM_BURST:  # a flood must not starve the handlers
                    burst = 0
                    gevent.sleep(0)
        finally:
            readable.close()

    def _dispatch(self, handle: Callable[[Listener, Any, Any], None], listener: Listener,
                  packet: Datagram) -> None:
        """Run ``handle`` for one datagram in a greenlet of the datagram pool, or drop it
        (counted) when ``max_servers`` datagrams are in flight."""
        pool = self._datagram_pool
        if pool.full():
            self._dropped += 1
            self._unreported += 1
            return
        if self._unreported:
            self._report_drops()
        pool.spawn(handle, listener, packet, packet.peer)

    def _report_drops(self, now: bool = False) -> None:
        """Log the datagrams dropped since the last line, at most once per
        DROP_REPORT_SECONDS (``now``: whatever the time)."""
        moment = time.monotonic()
        if not self._unreported or (not now and moment - self._reported_at
                                    < DROP_REPORT_SECONDS):
            return
        count, self._unreported, self._reported_at = self._unreported, 0, moment
        if self._log is not None:
            self._log(2, f"{count} datagram(s) dropped: max_servers ({self._datagram_pool.size})"
                         f" datagrams were in flight ({self._dropped} dropped since the start)")

    def _no_room(self, server: StreamServer) -> bool:
        """``server``'s ``full`` check, in the hub before each accept: True (stop accepting
        until a greenlet ends) only when the pool is full and no connection is in its
        handshake: while one is, accepting goes on and :meth:`_make_room` evicts for each
        connection actually accepted."""
        pool = self._pool
        # len(pool) < size is gevent's ``pool.full()`` (free_count() <= 0) without its two
        # calls: this runs before every accept.
        if len(pool.greenlets) < self._size or self._budget.pending_handshakes():
            return False
        if self._running < len(pool):
            # Greenlets of this accept burst have not run yet, so none is known to be in its
            # handshake: look again once they have (their starts are queued before this).
            gevent.get_hub().loop.run_callback(self._resume, server)
        return True  # else every pending connection waits for a session: the backlog holds

    def _make_room(self) -> bool:
        """In the hub, after an accept: free a place in a full pool by evicting the oldest
        connections in their handshake; False if none could be freed. An evicted greenlet dies
        in the call (it is thrown into from the hub), so its place frees now, not one loop
        iteration later; one whose unwinding had to wait (a log sink that blocks) ends soon
        after, and the next oldest is evicted meanwhile."""
        pool = self._pool
        while len(pool.greenlets) >= self._size:  # pool.full(), inline (after every accept)
            victim = self._budget.evict_oldest()
            if victim is None:
                return False
            if victim.dead and victim in pool:
                pool.discard(victim)  # releases its place (gevent would, one loop later)
        return True

    @staticmethod
    def _resume(server: StreamServer) -> None:
        """Accept again on ``server`` (unless it was closed meanwhile)."""
        if server.started:
            server.start_accepting()

    def loop(self, lifecycle: Lifecycle, dispatch: Dispatch) -> None:
        """Wait for the stop while the hub accepts; signals go to ``dispatch``."""
        lifecycle.wait_for_stop(dispatch)

    def stop_accepting(self, take_queued: bool = False) -> None:
        """Close every StreamServer (and so its listening socket: new connections are
        refused from now on) and kill the datagram readers (the datagram sockets stay open:
        the server owns them); say how many datagrams were dropped since the last line.
        With ``take_queued`` (the server's last close), the connections the kernel has
        already queued on each stream listener are accepted first and served like the
        others (:meth:`_take_queued`)."""
        for server in self._servers:
            if take_queued and not server.closed:
                self._take_queued(server)
            server.close()
        gevent.killall(self._readers, block=True)
        self._readers = []
        self._report_drops(now=True)

    def _take_queued(self, server: StreamServer) -> None:
        """Accept what waits in ``server``'s listen queue, with nothing that yields until
        the close that follows. Why: those connections finished their TCP handshake, their
        peer may have sent its data already (a balancer has: the PROXY header and the
        ClientHello), and closing the listener would reset them; a balancer in TCP mode
        cannot retry a connection that was established, so the client would see the reset.
        Refused connects, after the close, are retried elsewhere. Bounded: at most the pool's
        size, and only while the pool has room (what is left is reset, as it was before)."""
        server.stop_accepting()  # the hub's watcher: this loop is the last accept
        for _ in range(self._pool.size or 1):
            if server.full():
                return
            try:
                accepted = server.do_read()
            except OSError:
                return
            if accepted is None:  # the queue is empty
                return
            server.do_handle(*accepted)

    def session_slot(self) -> PendingBudget:
        """Held while a session runs: at most ``max_servers`` at once; others wait, each at
        most ``timeout_session_wait`` seconds (then entering it raises
        :class:`~gnetserver.errors.SessionWaitTimeout`). Entering it ends the connection's
        handshake stage: it can no longer be evicted."""
        return self._budget

    def in_connection(self) -> bool:
        """True in a connection's (or a datagram's) greenlet."""
        current = gevent.getcurrent()
        return current in self._pool.greenlets or current in self._datagram_pool.greenlets

    def active_connections(self) -> int:
        """How many connection (and datagram) greenlets run."""
        return len(self._pool) + len(self._datagram_pool)

    def greenlets(self) -> list[Any]:
        """The live connection and datagram greenlets, and the datagram readers."""
        every = [*self._pool.greenlets, *self._datagram_pool.greenlets, *self._readers]
        return [greenlet for greenlet in every if not greenlet.dead]

    def wait_idle(self) -> gevent.Greenlet[[], Any]:
        """A greenlet that ends once both pools are empty (the drain waits on it; killed
        after)."""
        return gevent.spawn(self._join_pools)

    def _join_pools(self) -> None:
        """Wait until no connection and no datagram runs (accepting has stopped)."""
        self._pool.join()
        self._datagram_pool.join()

    def kill_connections(self) -> None:
        """Kill the connections and datagrams left (their clients are aborted), waiting up to
        a second; the hub-blocking detector, if any, stops (the drain ends here)."""
        self._pool.kill(block=True, timeout=1)
        self._datagram_pool.kill(block=True, timeout=1)
        if self._blocking is not None:
            self._blocking.stop()
            self._blocking = None


class _Acceptor(StreamServer):
    """gevent's StreamServer, with the pending budget of a :class:`Single`: it keeps accepting
    while the pool is full of connections in their handshake, and makes room for each
    connection it accepts (:meth:`Single._make_room`). An accept that fails for want of
    descriptors (or buffers, memory) pauses accepting with back-off (:class:`AcceptBackoff`:
    one log line per burst), instead of gevent's traceback per failure."""

    def __init__(self, single: Single, sock: Any, handle: Callable[..., None],
                 backoff: AcceptBackoff) -> None:
        super().__init__(sock, handle=handle, spawn=single._pool)
        self._single = single
        self._backoff = backoff
        # The accepted sockets' family, type and protocol, as plain ints (see do_read).
        self._kind = (int(sock.family), int(sock.type), int(sock.proto))
        # set_spawn made the pool's ``full`` an instance attribute: replace it with ours.
        self.full = functools.partial(single._no_room, self)  # type: ignore[method-assign]

    def do_read(self) -> Any:
        """Accept one connection (None when none waits) and make room for it. If no place can
        be freed, which takes every pending handshake blocking in its unwinding, the new
        connection is closed: the pool never grows past its size.

        gevent's ``do_read``, with the listening socket's family, type and protocol read once:
        ``socket.family`` and ``socket.type`` of a stdlib socket make an enum each time
        (measured: eight Python calls per connection)."""
        sock = self.socket
        try:
            try:
                fd, address = sock._accept()  # type: ignore[attr-defined]  # stdlib private
            except BlockingIOError:
                if not sock.timeout:
                    return None
                raise
            accepted = (GeventSocket(self._kind[0], self._kind[1], self._kind[2], fileno=fd),
                        address)
        except OSError as exc:
            if exc.errno not in EXHAUSTION_ERRNOS:
                raise  # gevent's handling: fatal ones close the server, others retry
            self._pause(self._backoff.failed(exc))
            return None
        self._backoff.succeeded()
        if not self._single._make_room():
            accepted[0].close()
            return None
        return accepted

    def _pause(self, delay: float) -> None:
        """Stop watching the listening socket (its queued connection keeps it readable: the
        watcher would fire again at once) and accept again ``delay`` seconds later, unless
        the server is closed meanwhile (``close`` stops the timer with the watcher)."""
        self.stop_accepting()
        self._timer = self.loop.timer(delay)
        self._timer.start(Single._resume, self)
