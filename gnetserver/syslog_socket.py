"""A connection to a syslog daemon that never makes its caller wait.

Rules of this module:

* Log messages are written from the gevent hub's thread (connection greenlets, the accept
  loop's callbacks), so a send must never block: a syslog daemon that stops reading must not
  freeze the server. The socket is non-blocking, connects without waiting (except a TCP
  connection at start, bounded by :attr:`SyslogSocket.CONNECT_TIMEOUT`), and a message syslog
  has no room for is dropped, never waited for.
* Datagram sockets (the usual ``/dev/log``, UDP): a datagram refused with EAGAIN/ENOBUFS is
  dropped. Stream sockets (unix stream, TCP; one message per line, inner newlines written
  ``#012``): what syslog has not taken yet waits in a buffer of at most
  :attr:`SyslogSocket.STREAM_BACKLOG` bytes, sent on by later messages; beyond it messages
  are dropped. A message is never half sent then followed by another (after a broken
  connection the torn one is dropped).
* Drops are counted (:attr:`SyslogSocket.dropped`) and reported: by a notice sent ahead of the
  next message that gets through, or at :meth:`SyslogSocket.close` (on stderr when syslog does
  not take it). An unreachable syslog is said once on stderr, then retried at each message.
* Not thread-safe: the caller (the log handler) serialises calls with its lock.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import sys
from collections import deque
from collections.abc import Callable
from typing import Any

#: What a syslog refusal looks like when it only means "not now".
_BUSY = (BlockingIOError, InterruptedError)


def drop_text(count: int) -> str:
    """The notice reporting ``count`` lost messages."""
    return (f"{count} log message{'s' if count != 1 else ''} dropped "
            "(syslog did not take them in time)")


def report_failure(what: str, exc: BaseException | None = None) -> None:
    """One line on stderr for a failed log write (never a traceback, never an exception)."""
    exc = exc or sys.exc_info()[1]
    try:
        sys.stderr.write(f"gnetserver: {what}: {exc}\n" if exc else f"gnetserver: {what}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class SyslogSocket:
    """The socket to one syslog daemon: ``address`` is a unix socket path (datagram first,
    then stream, unless ``socktype`` says) or a ``(host, port)``; ``notice(count)`` builds the
    encoded message that reports ``count`` dropped messages.

    Attributes:
        socket: the connected non-blocking socket, or None (the next message reconnects).
        error: why the last connection attempt failed, or None.
        dropped: messages lost since start.
    """

    #: Bytes a stream socket may hold back while syslog is not reading.
    STREAM_BACKLOG = 256 * 1024
    #: Seconds the first connection (at start, before serving) may take to a TCP syslog.
    CONNECT_TIMEOUT = 2.0

    def __init__(self, address: Any, socktype: int | None,
                 notice: Callable[[int], bytes]) -> None:
        self.address, self.socktype, self.notice = address, socktype, notice
        self.socket: socket.socket | None = None
        self.error: OSError | None = None
        self.dropped = 0
        #: Called with the count of each drop (the server's metrics); None: nobody.
        self.on_drop: Callable[[int], None] | None = None
        self._unreported = 0  # dropped since the last notice
        self._outage = False  # unreachable, already said on stderr
        self._pending: deque[bytes] = deque()  # stream: messages syslog has not taken yet
        self._pending_bytes = 0
        self._sent = 0  # bytes of _pending[0] already sent
        self.connect(self.CONNECT_TIMEOUT)

    def connect(self, wait: float = 0.0) -> None:
        """(Re)connect without blocking (a TCP connection may take up to ``wait`` seconds to
        be established); a failure is kept in ``error`` and the next message tries again.
        Buffered stream messages are kept for the new connection."""
        self._disconnect()
        try:
            self.socket, self.error = open_socket(self.address, self.socktype, wait), None
        except OSError as exc:
            self.error = exc

    def send(self, payload: bytes) -> bool:
        """Send one encoded message (after the notice of earlier drops) without waiting;
        False when it was dropped."""
        if self._unreported:
            notice = self.notice(self._unreported)
            if self._fits(len(notice) + len(payload)) and self._deliver(notice):
                self._unreported = 0
        if self._deliver(payload):
            return True
        self._count_drop()
        return False

    def close(self) -> None:
        """Send what syslog takes now (never waiting), report drops not reported yet (to
        syslog when it takes the notice at once, else on stderr), close the socket."""
        self._flush()
        if self._pending:  # syslog never took them: lost (and no room for the notice)
            self._count_drop(len(self._pending))
            self._pending.clear()
            self._pending_bytes = self._sent = 0
        elif self._unreported and self._send_whole(self.notice(self._unreported)):
            self._unreported = 0
        if self._unreported:
            report_failure(f"syslog: {drop_text(self._unreported)}")
            self._unreported = 0
        self._disconnect()

    # -- internals ------------------------------------------------------------------------

    def _deliver(self, payload: bytes) -> bool:
        """Hand one message to the socket without waiting; False when it is lost."""
        if self.socket is None:
            self.connect()
            if self.socket is None:
                return self._unreachable(self.error)
        if self.socket.type == socket.SOCK_STREAM:
            return self._queue(_line(payload))
        for retry in (True, False):
            try:
                self.socket.send(payload)
                self._outage = False
                return True
            except _BUSY:
                return False  # syslog's queue is full: never wait for it
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    return False
                if exc.errno == errno.EMSGSIZE or not retry:
                    return self._unreachable(exc)
                self.connect()  # syslog restarted: its socket is a new one
                if self.socket is None:
                    return self._unreachable(self.error)
        return False

    def _fits(self, size: int) -> bool:
        """Whether ``size`` more bytes fit now (a stream buffer has a bound, so a notice must
        not take the room of the message it announces)."""
        if self.socket is None or self.socket.type != socket.SOCK_STREAM:
            return True
        self._flush()
        return not self._pending or self._pending_bytes + size + 2 <= self.STREAM_BACKLOG

    def _queue(self, payload: bytes) -> bool:
        """Stream: buffer one message (within STREAM_BACKLOG) and send what syslog takes."""
        self._flush()
        if self._pending and self._pending_bytes + len(payload) > self.STREAM_BACKLOG:
            return False
        self._pending.append(payload)
        self._pending_bytes += len(payload)
        self._flush()
        return True

    def _flush(self) -> None:
        """Stream: send buffered messages until syslog takes no more, never waiting."""
        while self._pending and self.socket is not None:
            head = self._pending[0]
            try:
                self._sent += self.socket.send(memoryview(head)[self._sent:])
            except _BUSY:
                return
            except OSError as exc:  # syslog went away: the next message reconnects
                self._unreachable(exc)
                self._disconnect()
                return
            self._outage = False
            if self._sent == len(head):
                self._pending.popleft()
                self._pending_bytes -= len(head)
                self._sent = 0

    def _send_whole(self, payload: bytes) -> bool:
        """One message sent at once or not at all (at close nothing may wait)."""
        if self.socket is None:
            return False
        if self.socket.type == socket.SOCK_STREAM:
            payload = _line(payload)
        try:
            return self.socket.send(payload) == len(payload)
        except OSError:
            return False

    def _disconnect(self) -> None:
        """Close the socket; a half-sent message is lost (its tail would garble the next)."""
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        if self._sent:
            self._pending_bytes -= len(self._pending.popleft())
            self._sent = 0
            self._count_drop()

    def _count_drop(self, count: int = 1) -> None:
        self.dropped += count
        self._unreported += count
        if self.on_drop is not None:
            self.on_drop(count)

    def _unreachable(self, exc: OSError | None) -> bool:
        """Say once on stderr that syslog cannot be reached (until it can again); False."""
        if not self._outage:
            self._outage = True
            report_failure(f"cannot send to syslog at {self.address} (messages are dropped "
                           "and counted until it is back)", exc)
        return False


def _line(payload: bytes) -> bytes:
    """A message framed for a stream socket: one line, its own newlines (a traceback) written
    ``#012`` as rsyslog shows them, so they cannot start forged messages."""
    return payload.replace(b"\n", b"#012") + b"\n"


def open_socket(address: Any, socktype: int | None, wait: float) -> socket.socket:
    """A non-blocking socket connected (TCP: maybe still connecting) to syslog at
    ``address``; raises the last OSError when no candidate connects."""
    candidates: list[tuple[int, int, int, Any]]  # (family, type, proto, sockaddr)
    if isinstance(address, str):
        kinds = [socktype] if socktype else [socket.SOCK_DGRAM, socket.SOCK_STREAM]
        candidates = [(socket.AF_UNIX, kind, 0, address) for kind in kinds]
    else:
        # (host, port, family, type): mypy cannot count the arguments of a star before others.
        query: tuple[Any, ...] = (*address, 0, socktype or socket.SOCK_DGRAM)
        candidates = [(family, kind, proto, where) for family, kind, proto, _, where
                      in socket.getaddrinfo(*query)]
    error = OSError(f"no address for {address!r}")
    for family, kind, proto, where in candidates:
        sock = socket.socket(family, kind, proto)
        sock.setblocking(False)
        code = sock.connect_ex(where)
        if code == errno.EINPROGRESS and wait > 0:  # TCP at start: wait a little for it
            select.select([], [sock], [], wait)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code in (0, errno.EINPROGRESS):
            return sock
        sock.close()
        error = OSError(code, os.strerror(code))  # EAGAIN on a unix socket: backlog full
    raise error
