"""The server of bench/prefork.py: a fixed ``HTTP/1.1 200`` answer to every request, over TLS.

It is as small as an HTTP responder can be, so that the benchmark measures gnetserver (accept,
handshake, greenlet, reads and writes through pyOpenSSL) rather than request handling:

* every request head (up to a blank line) is read with ``client.readline()``, at most
  :data:`MAX_HEAD` bytes and :data:`MAX_LINES` lines (a longer head ends the connection), and
  gets ``HTTP/1.1 200 OK``, ``Content-Length: 2``, ``ok``; a body is never read (the load
  generators send GETs);
* the connection stays open for the next request until the client closes it, except after a
  request with ``Connection: close``: the answer says ``Connection: close`` too and the server
  closes (h2load then opens a new connection for its next request, a new full handshake);
* with ``stats_dir`` (the benchmark's ``--stats``), each connection appends one byte to
  ``STATS/connections`` after its handshake, ``R`` when it resumed a TLS session and ``F``
  when it was a full handshake: the benchmark counts them (every process of a PreFork server
  appends to the same file, ``O_APPEND``). One ``write`` per connection, the same in every
  configuration measured;
* :func:`no_resumption` (the benchmark passes it as ``SSL_create_ctx_callback``) makes every
  handshake a full one even with a client that offers a session: h2load keeps the session of a
  client's first connection and offers it on the next ones. The server still sends its
  TLS 1.3 session tickets after each handshake, as a default server does, but they are
  stateful (``OP_NO_TICKET``) and the session cache is off, so no ticket can resume.
"""

from __future__ import annotations

import os
from typing import Any

from OpenSSL import SSL

from gnetserver import Client, GServer

#: The bound of one request head: bytes, and lines (request line and headers).
MAX_HEAD, MAX_LINES = 8192, 100
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def no_resumption(context: SSL.Context) -> None:
    """No session can resume: tickets refer to the session cache, and the cache is off."""
    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)


class HttpOk(GServer):
    """Answers ``200 ok`` to every HTTP/1.1 request head; keep-alive until the client closes."""

    def __init__(self, stats_dir: str | None = None, **options: Any) -> None:
        super().__init__(commandline=[], **options)
        self.stats_dir = stats_dir
        self._stats_fd: int | None = None
        self._stats_pid = 0  # the process that opened _stats_fd (a PreFork worker opens its own)

    def _count(self, client: Client) -> None:
        """One byte per connection in STATS/connections: R resumed, F full handshake."""
        if self.stats_dir is None:
            return
        if self._stats_pid != os.getpid():
            self._stats_fd = os.open(os.path.join(self.stats_dir, "connections"),
                                     os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._stats_pid = os.getpid()
        assert self._stats_fd is not None
        os.write(self._stats_fd, b"R" if client.session_reused else b"F")

    def process_request(self, client: Client) -> None:
        """Runs in the connection's greenlet after the TLS handshake: one answer per head."""
        self._count(client)
        try:
            while True:
                close, size, lines = False, 0, 0
                while True:
                    line = client.readline(MAX_HEAD - size + 1)  # bounded: never past MAX_HEAD
                    if not line:
                        return  # the client closed (between requests, or mid-head)
                    size, lines = size + len(line), lines + 1
                    if size > MAX_HEAD or lines > MAX_LINES:
                        return  # a head too large: end the connection
                    if line in (b"\r\n", b"\n"):
                        break
                    lowered = line.lower()
                    if lowered.startswith(b"connection:") and b"close" in lowered:
                        close = True
                client.sendall(OK_CLOSE if close else OK)
                if close:
                    return
        except OSError:  # TimeoutError too
            return  # idle too long, or the peer went away: nothing to report in a benchmark
