"""Acceptance point 8: stalled TLS handshakes cannot lock real clients out.

500 sockets connect to a TLS port and then send nothing, half a ClientHello, or a ClientHello
trickled a byte at a time. Meanwhile real stdlib TLS clients must be served within 1 s, and the
server must close every stalled socket within ``timeout_handshake`` + 2 s, logging each one at
level 3 without a traceback and never running process_request for it.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import selectors
import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.net import address, tls_connect
from support.tls import client_hello

from gnetserver import GServer
from gnetserver.options import OPTIONS, table

TIMEOUT = 2.0  # timeout_handshake used by the test (the default is 10)
STALLED = 500
REAL_CLIENTS = 5


class Counting(GServer):
    """Answers one line; counts how many connections reached process_request."""

    served = 0

    def process_request(self, client: Any) -> None:
        type(self).served += 1
        client.sendall(b"echo " + client.readline())


@contextlib.contextmanager
def open_files(needed: int) -> Iterator[None]:
    """Raise the soft RLIMIT_NOFILE to ``needed`` for the test (both ends live in-process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {needed}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def real_request(server: GServer, context: ssl.SSLContext) -> float:
    """Connect, handshake, one request/response; return the seconds it took."""
    start = time.monotonic()
    with tls_connect(server, context, timeout=5) as tls:
        tls.sendall(b"ping\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = tls.recv(100)
            assert chunk, f"connection closed after {reply!r}"
            reply += chunk
    assert reply == b"echo ping\n"
    return time.monotonic() - start


class Stalled:
    """The stalled sockets and when the server closed each of them."""

    def __init__(self, server: GServer, hello: bytes, count: int) -> None:
        self.socks: list[socket.socket] = []
        self.connected: dict[socket.socket, float] = {}
        self.closed: dict[socket.socket, float] = {}
        self.hello = hello
        for i in range(count):
            sock = socket.create_connection(address(server), timeout=5)
            self.socks.append(sock)
            self.connected[sock] = time.monotonic()
            if i % 2:
                sock.sendall(hello[: len(hello) // 2])  # half a ClientHello, then silence
            sock.setblocking(False)
        # One more sends the ClientHello a byte at a time: the deadline covers the whole
        # handshake, not each read.
        self.trickler = socket.create_connection(address(server), timeout=5)
        self.connected[self.trickler] = time.monotonic()
        self.trickler.setblocking(False)
        self.socks.append(self.trickler)
        self.trickled = 0
        self.next_trickle = 0.0

    def wait_closed(self, deadline: float) -> None:
        """Record when each socket reads EOF or a reset, until all are closed or the deadline."""
        with selectors.DefaultSelector() as selector:
            for sock in self.socks:
                selector.register(sock, selectors.EVENT_READ)
            while len(self.closed) < len(self.socks) and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.1):
                    if self._reads_closed(key.fileobj):
                        self.closed[key.fileobj] = time.monotonic()
                        selector.unregister(key.fileobj)
                self._trickle()

    def _reads_closed(self, sock: Any) -> bool:
        try:
            return sock.recv(4096) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except BlockingIOError:
            return False

    def _trickle(self) -> None:
        now = time.monotonic()
        if self.trickler in self.closed or now < self.next_trickle:
            return
        self.next_trickle = now + 0.1  # pace: about 20 bytes before the handshake deadline
        with contextlib.suppress(OSError):  # the server may just have closed it
            self.trickler.send(self.hello[self.trickled : self.trickled + 1])
            self.trickled += 1

    def close(self) -> None:
        for sock in self.socks:
            sock.close()


def test_timeout_handshake_defaults_to_ten_seconds() -> None:
    assert table(OPTIONS)["timeout_handshake"].default == 10


@pytest.mark.timeout(30)
def test_stalled_handshakes_do_not_lock_out_real_clients(
    serve: Any, certs: dict[str, str], client_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    Counting.served = 0
    with open_files(4 * STALLED + 256):
        server = serve(Counting, port="127.0.0.1:0/ssl", max_servers=50,
                       timeout_handshake=TIMEOUT, log_level=4, **certs)
        stalled = Stalled(server, client_hello(), STALLED)
        try:
            # While all of them are pending, real clients are served, each within 1 s.
            took = [real_request(server, client_context) for _ in range(REAL_CLIENTS)]
            assert max(took) < 1.0, took
            assert time.monotonic() < min(stalled.connected.values()) + TIMEOUT, (
                "the real clients were not served while the stalled handshakes were pending")
            stalled.wait_closed(max(stalled.connected.values()) + TIMEOUT + 2.5)
        finally:
            stalled.close()

    assert len(stalled.closed) == len(stalled.socks), "stalled sockets left open by the server"
    lifetimes = [stalled.closed[s] - stalled.connected[s] for s in stalled.socks]
    assert max(lifetimes) <= TIMEOUT + 2, max(lifetimes)
    assert min(lifetimes) >= TIMEOUT - 0.2, min(lifetimes)  # closed by the timeout, not before
    assert stalled.trickled > 2, "the trickling client did not get to send anything"
    assert Counting.served == REAL_CLIENTS  # no stalled socket reached process_request

    records = caplog.records  # the server logs from its own thread, into the same handler
    timed_out = [r for r in records if "handshake timed out" in r.getMessage()]
    assert len(timed_out) == len(stalled.socks)
    assert {r.levelno for r in timed_out} == {logging.INFO}  # Net::Server level 3
    assert not [r for r in records if r.levelno >= logging.ERROR]
    assert not [r for r in records if r.exc_info or "Traceback" in r.getMessage()]
