"""``bare-idle``: a pyOpenSSL server that keeps no greenlet for an idle connection.

For bench/idle_tls.py (``--servers bare-idle``): what an idle TLS connection costs when
nothing but its socket, its ``SSL.Connection``, one io watcher and a small state object stay:
the floor of a design where a connection waiting for its next request has no parked greenlet
(whose saved C stack, Python data-stack page and ``Greenlet`` object are about 7 kB, see
bench/parked_greenlets.py). The handshake and each burst of requests run in a greenlet that
ends when the socket has nothing more to read; the io watcher spawns a new one when it turns
readable. The same answers as bench/side_by_side.py's servers (``answer_heads``); no timeouts.
"""

from __future__ import annotations

import re
import socket
from typing import Any

from side_by_side import MAX_HEAD, OK, OK_CLOSE, _no_resumption

_CLOSE = re.compile(rb"(?im)^connection:[ \t]*close")


def serve_bare_idle(port: int, cert: str, key: str) -> None:
    """Serve on 127.0.0.1:``port`` until terminated."""
    import gevent
    from gevent.server import StreamServer
    from gevent.socket import wait_read, wait_write
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate_chain_file(cert)
    context.use_privatekey_file(key)
    _no_resumption(context)
    context.set_mode(SSL.MODE_RELEASE_BUFFERS)
    loop = gevent.get_hub().loop

    class Idle:
        """One connection between bursts: what stays of it."""

        __slots__ = ("sock", "conn", "buf", "watcher")

        def __init__(self, sock: Any, conn: SSL.Connection) -> None:
            self.sock, self.conn, self.buf = sock, conn, b""
            self.watcher = loop.io(sock.fileno(), 1)

        def call(self, op: Any, *args: Any) -> Any:
            while True:
                try:
                    return op(*args)
                except SSL.WantReadError:
                    wait = wait_read
                except SSL.WantWriteError:
                    wait = wait_write
                wait(self.sock.fileno())

        def park(self) -> None:
            """Nothing to read: no greenlet waits; the watcher starts one when readable."""
            self.watcher.start(self.wake)

        def wake(self) -> None:
            self.watcher.stop()
            gevent.spawn(self.burst)

        def burst(self) -> None:
            """Answer what has arrived, then park again (or close)."""
            try:
                while True:
                    try:
                        data = self.conn.recv(65536)
                    except SSL.WantReadError:
                        self.park()
                        return
                    except SSL.ZeroReturnError:
                        break
                    if not self.answer(data):
                        break
            except (SSL.Error, OSError):
                pass
            self.close()

        def answer(self, data: bytes) -> bool:
            """Answer the complete heads; False once the connection should close."""
            buf = self.buf + data
            while (end := buf.find(b"\r\n\r\n")) >= 0:
                head, buf = buf[:end], buf[end + 4:]
                if b"lose" in head and _CLOSE.search(head):
                    self.call(self.conn.sendall, OK_CLOSE)
                    return False
                self.call(self.conn.sendall, OK)
            self.buf = buf
            return len(buf) <= MAX_HEAD

        def close(self) -> None:
            self.watcher.close()
            self.sock.close()

    def handle(sock: Any, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(context, sock)
        conn.set_accept_state()
        idle = Idle(sock, conn)
        try:
            idle.call(conn.do_handshake)
        except (SSL.Error, OSError):
            idle.close()
            return
        idle.burst()

    class Server(StreamServer):  # type: ignore[misc]
        def do_close(self, *args: Any) -> None:
            """Not when ``handle`` returns (gevent's default): the connection outlives its
            greenlet; ``Idle.close`` closes it."""

    Server(("127.0.0.1", port), handle).serve_forever()
