"""Acceptance point 9: ``max_servers`` bounds the established sessions across all ports, and a
connection beyond it waits (it is not refused) until a slot frees. Also gevent's pool-full
behaviour: once the pool of greenlets is full the server stops accepting, new
connections wait in the kernel backlog, and accepting resumes as soon as a greenlet ends.

Concurrency is observed exactly: each session announces ``in N`` (N = sessions active in the
server at that moment) and then blocks until its client sends a line, so the test decides when
each slot frees.
"""

from __future__ import annotations

import concurrent.futures
import select
import socket
import ssl
import time
from typing import Any

import pytest
from support import net
from support.net import address, poll, tls_connect

from gnetserver import GServer
from gnetserver.proto.tcp import LINGER_SECONDS


class Gate(GServer):
    """Each session says ``in <active sessions>`` and ends when its client sends a line."""

    def configure_hook(self) -> None:
        self.active = 0
        self.peak = 0
        self.negotiated = 0  # connections past post_accept (handshake done), slot or not
        self.ended = 0  # connections closed (the close, lingering included, is over)

    def post_accept(self, client: Any) -> None:
        super().post_accept(client)
        self.negotiated += 1

    def process_request(self, client: Any) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            client.sendall(f"in {self.active}\n".encode())
            client.sendall(b"bye " + client.readline())
        finally:
            self.active -= 1

    def post_client_connection_hook(self, client: Any) -> None:
        self.ended += 1


def connect(server: GServer, index: int, context: ssl.SSLContext) -> socket.socket:
    """A real client on listener ``index``: TLS on the ssl port, plain on the tcp port."""
    if server.listeners[index].proto == "ssl":
        return tls_connect(server, context, index)
    return socket.create_connection(address(server, index), timeout=5)


def read_line(sock: socket.socket, timeout: float = 2.0) -> bytes:
    """One line (the server sends one line per step, so nothing is read past it)."""
    sock.settimeout(timeout)
    return net.read_line(sock)


def next_line(socks: list[Any], timeout: float) -> tuple[Any, bytes] | None:
    """The first of ``socks`` to send application data, with its line; None if none does
    within ``timeout`` s. Readability alone is not enough: a TLS 1.3 server also sends session
    tickets, which make the socket readable without any data for the application."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select(socks, [], [], left)
        for sock in readable:
            sock.setblocking(False)
            try:
                first = sock.recv(1)
            except (ssl.SSLWantReadError, BlockingIOError):
                continue  # only a ticket (or nothing yet): keep watching
            finally:
                sock.settimeout(5)
            return sock, first + (read_line(sock) if first else b"")
    return None


def silent(socks: list[Any], window: float = 0.4) -> bool:
    """True when none of ``socks`` is served for ``window`` s: the only way to show that a
    waiting client is *not* served yet is to watch it for a bounded time."""
    return next_line(socks, window) is None


def finish(sock: socket.socket, tag: bytes) -> None:
    """Release one session: it answers ``bye <tag>`` and closes."""
    sock.sendall(tag + b"\n")
    assert read_line(sock) == b"bye " + tag + b"\n"
    sock.close()


@pytest.mark.timeout(20)
def test_max_servers_bounds_sessions_across_ports(
    serve: Any, certs: dict[str, str], client_context: ssl.SSLContext
) -> None:
    server = serve(Gate, port=["127.0.0.1:0/ssl", "127.0.0.1:0/tcp"], max_servers=3,
                   log_level=1, **certs)
    assert [listener.proto for listener in server.listeners] == ["ssl", "tcp"]
    sessions = []
    for i in range(3):  # ssl, tcp, ssl: three sessions, on both ports
        sessions.append(connect(server, i % 2, client_context))
        assert read_line(sessions[-1]) == f"in {i + 1}\n".encode()

    # Two more, one per port: connected (and TLS done), not refused, but not served.
    waiting = [connect(server, 1, client_context), connect(server, 0, client_context)]
    try:
        assert poll(lambda: server.negotiated == 5, 3.0)
        assert silent(waiting)
        for n, sock in enumerate(sessions[:2]):
            released = time.monotonic()
            finish(sock, b"%d" % n)  # a slot frees: exactly one waiting client gets it
            served = next_line(waiting, 1.0)
            assert served is not None and served[1] == b"in 3\n", served
            assert time.monotonic() - released < 1.0
            waiting.remove(served[0])
            assert not waiting or silent(waiting), "a freed slot served two clients"
            sessions.append(served[0])
        for n, sock in enumerate(sessions[2:]):
            finish(sock, b"last%d" % n)
    finally:
        for sock in sessions + waiting:
            sock.close()
    assert server.peak == 3


@pytest.mark.timeout(20)
def test_full_pool_stops_accepting_and_resumes(
    serve: Any, certs: dict[str, str], client_context: ssl.SSLContext
) -> None:
    # One session slot + one handshake/waiting greenlet: the pool holds two greenlets.
    server = serve(Gate, port="127.0.0.1:0/ssl", max_servers=1, max_handshakes=1,
                   log_level=1, **certs)
    first = tls_connect(server, client_context)
    assert read_line(first) == b"in 1\n"
    second = tls_connect(server, client_context)  # handshake done, waiting for the slot
    assert poll(lambda: server.negotiated == 2, 3.0)

    # The pool is full: the third connects (kernel backlog) but is not accepted, so its
    # handshake cannot progress. It must not be refused either.
    third_raw = socket.create_connection(address(server), timeout=10)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        handshake = pool.submit(client_context.wrap_socket, third_raw,
                                server_hostname="localhost")
        try:
            assert concurrent.futures.wait([handshake], timeout=0.5).not_done
            assert server.negotiated == 2
            finish(first, b"first")  # its greenlet ends: the pool has room again
            assert read_line(second) == b"in 1\n"
            third = handshake.result(timeout=2)  # accepted again, handshake completes
        finally:
            if not handshake.done():
                third_raw.close()  # unblock the thread before the executor joins it
    try:
        assert poll(lambda: server.negotiated == 3, 3.0)
        assert silent([third])  # the slot is still held by the second
        finish(second, b"second")
        assert read_line(third) == b"in 1\n"
        finish(third, b"third")
    finally:
        for sock in (first, second, third):
            sock.close()
    assert server.peak == 1


@pytest.mark.timeout(20)
@pytest.mark.parametrize("proto", ["tcp", "ssl"])
def test_lingering_close_does_not_hold_the_slot(
    serve: Any, certs: dict[str, str], client_context: ssl.SSLContext, proto: str
) -> None:
    # The first client gets its answer and then neither closes nor reads: the server's close
    # (close_notify, half-close, drain) lingers on it for up to LINGER_SECONDS (ssl: plus
    # SHUTDOWN_SECONDS). Its max_servers slot must be free as soon as the handler returned.
    tls = certs if proto == "ssl" else {}
    server = serve(Gate, port=f"127.0.0.1:0/{proto}", max_servers=1, log_level=1, **tls)
    first = connect(server, 0, client_context)
    second = None
    try:
        assert read_line(first) == b"in 1\n"
        second = connect(server, 0, client_context)
        assert poll(lambda: server.negotiated == 2, 3.0)
        first.sendall(b"one\n")
        assert read_line(first) == b"bye one\n"  # the handler returns; the close begins
        served = next_line([second], LINGER_SECONDS)
        assert served == (second, b"in 1\n"), served
        # The order of events: the second was served while the first's close still lingers.
        assert server.ended == 0, "the slot waited for the close"
        finish(second, b"two")
    finally:
        first.close()
        if second is not None:
            second.close()
    assert server.peak == 1
