"""Acceptance point 11: the server closes like a good TLS citizen, and stop(timeout) drains then
cuts.

* A response written just before the close reaches a client that still had request data in
  flight (closing a socket with unread input makes the kernel send RST, which would destroy the
  unsent end of the response): close_notify once, half-close, drain briefly, close.
* A client that never closes holds the connection's greenlet no longer than the linger bound.
* ``stop(timeout)`` stops accepting at once, lets running connections finish for ``timeout``
  seconds, then cuts the rest.

The TLS client here runs stdlib ``ssl`` over memory BIOs on a raw socket, so the test sees every
raw byte: it can tell a close_notify from a bare FIN, and a FIN from a reset.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from support.net import address, poll, read_until_eof, tls_connect

from gnetserver import GServer
from gnetserver.proto.ssl import SHUTDOWN_SECONDS
from gnetserver.proto.tcp import LINGER_SECONDS
from gnetserver.testing import ServerThread

RESPONSE = bytes(range(256)) * 8192  # 2 MiB, far more than the client's receive buffer
IN_FLIGHT = 512 * 1024  # response bytes the client leaves unread until the server closes
BODY = b"b" * 65536  # request body the handler never reads


class Responder(GServer):
    """Reads a 5-byte request header, never the body; answers RESPONSE and returns."""

    def configure_hook(self) -> None:
        self.written = threading.Event()  # set once the whole response is written
        self.held: list[float] = []  # seconds from handler return to end of connection

    def post_accept_hook(self, client: Any) -> None:
        # Room for the unread end of the response, so sendall can finish before the close.
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 20)

    def process_request(self, client: Any) -> None:
        header = b""
        while len(header) < 5:
            chunk = client.recv(5 - len(header))
            if not chunk:
                return
            header += chunk
        client.sendall(RESPONSE if header == b"POST\n" else b"short\n")
        client.data["returned"] = time.monotonic()

    def post_process_request_hook(self, client: Any) -> None:
        self.written.set()

    def post_client_connection_hook(self, client: Any) -> None:
        self.held.append(time.monotonic() - client.data["returned"])


class RawTLS:
    """A stdlib TLS client over memory BIOs: every raw byte passes through this object."""

    def __init__(self, sock: socket.socket, context: ssl.SSLContext) -> None:
        self.sock = sock
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = context.wrap_bio(self.incoming, self.outgoing, server_hostname="localhost")
        while True:
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self._flush()
                self._fill()
        self._flush()

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def _fill(self) -> bytes:
        """One raw read; a reset raises ConnectionResetError."""
        data = self.sock.recv(65536)
        if data:
            self.incoming.write(data)
        else:
            self.incoming.write_eof()
        return data

    def sendall(self, data: bytes) -> None:
        self.tls.write(data)
        self._flush()

    def recv(self, limit: int) -> bytes:
        """Application data; b"" after close_notify (a bare EOF raises SSLEOFError)."""
        while True:
            try:
                return self.tls.read(limit)
            except ssl.SSLWantReadError:
                self._fill()
            except ssl.SSLZeroReturnError:
                return b""

    def after_close_notify(self) -> bytes:
        """Raw bytes after the close_notify, up to the TCP EOF (a reset raises)."""
        trailing = self.incoming.read()
        while data := self.sock.recv(65536):
            trailing += data
        return trailing


class Plain:
    """The same interface over plain TCP."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv(self, limit: int) -> bytes:
        return self.sock.recv(limit)

    def after_close_notify(self) -> bytes:
        return b""


def connect(server: GServer, context: ssl.SSLContext) -> Any:
    """A client with a small receive buffer, so most of a big response waits at the server."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    sock.settimeout(10)
    sock.connect(address(server))
    if server.listeners[0].proto == "ssl":
        return RawTLS(sock, context)
    return Plain(sock)


def read_exactly(client: Any, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = client.recv(min(65536, size - len(data)))
        assert chunk, f"closed after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


@contextlib.contextmanager
def answered_ping(server: GServer, context: ssl.SSLContext) -> Iterator[Any]:
    """A client whose ``ping`` got its ``short`` answer (the handler has returned); its
    socket is closed on exit."""
    client = connect(server, context)
    try:
        client.sendall(b"ping\n")
        assert read_exactly(client, 6) == b"short\n"
        yield client
    finally:
        client.sock.close()


@pytest.fixture(params=["ssl", "tcp"])
def responder(request: Any, serve: Any, certs: dict[str, str]) -> Responder:
    tls = certs if request.param == "ssl" else {}
    return serve(Responder, port=f"127.0.0.1:0/{request.param}", log_level=1, **tls)


@pytest.mark.timeout(20)
def test_response_survives_unread_request_data(
    responder: Responder, client_context: ssl.SSLContext
) -> None:
    client = connect(responder, client_context)
    try:
        client.sendall(b"POST\n")
        client.sendall(BODY)  # sits unread in the server's receive buffer
        head = read_exactly(client, len(RESPONSE) - IN_FLIGHT)
        # The handler has returned and the close starts now, with the end of the response
        # still queued at the server and the body still unread there.
        assert responder.written.wait(5)
        tail = read_exactly(client, IN_FLIGHT)
        assert head + tail == RESPONSE
        assert client.recv(65536) == b""  # TLS: a close_notify, not a bare EOF
        assert client.after_close_notify() == b""  # nothing after it, and EOF, not a reset
    finally:
        client.sock.close()


@pytest.mark.timeout(20)
def test_idle_client_that_never_closes_is_let_go_after_the_linger(
    responder: Responder, client_context: ssl.SSLContext
) -> None:
    with answered_ping(responder, client_context) as client:
        assert client.recv(100) == b""  # close_notify (TLS) / FIN (TCP) arrives at once
        # The client neither closes nor sends: the server waits for it at most the linger.
        assert poll(lambda: responder.held, SHUTDOWN_SECONDS + LINGER_SECONDS + 2), (
            "the connection greenlet is still held")
        assert LINGER_SECONDS - 0.1 <= responder.held[0] <= LINGER_SECONDS + 0.5


@pytest.mark.timeout(20)
def test_flooding_client_is_cut_after_the_linger(
    responder: Responder, client_context: ssl.SSLContext
) -> None:
    errors: list[BaseException] = []

    def flood(client: Any) -> None:  # never reads, never stops sending (bounded to 10 s)
        end = time.monotonic() + 10
        try:
            while time.monotonic() < end:
                client.sock.sendall(b"x" * 65536)
        except OSError as exc:  # the server cut the connection: the expected end
            errors.append(exc)

    with answered_ping(responder, client_context) as client:
        sender = threading.Thread(target=flood, args=(client,), daemon=True)
        sender.start()
        sender.join(SHUTDOWN_SECONDS + LINGER_SECONDS + 5)
        assert not sender.is_alive() and errors, "the server never cut the flooding client"
        assert poll(lambda: responder.held, 2)
        assert responder.held[0] <= SHUTDOWN_SECONDS + LINGER_SECONDS + 0.5


class Holder(GServer):
    """Says hello, then answers ``finish`` with ``bye``; a silent client holds it forever."""

    def process_request(self, client: Any) -> None:
        client.sendall(b"hello\n")
        if client.readline() == b"finish\n":
            client.sendall(b"bye\n")


def refused(server_address: tuple[str, int]) -> bool:
    try:
        socket.create_connection(server_address, timeout=1).close()
    except (ConnectionRefusedError, ConnectionResetError):  # reset: closed mid-connect
        return True
    return False


@pytest.mark.timeout(20)
def test_stop_drains_then_cuts(certs: dict[str, str], client_context: ssl.SSLContext) -> None:
    grace = 1.5
    thread = ServerThread(Holder(port="127.0.0.1:0/ssl", log_level=1, **certs), grace).start()
    server = thread.server
    finisher = tls_connect(server, client_context)
    stuck = tls_connect(server, client_context)
    try:
        assert finisher.recv(6) == b"hello\n" and stuck.recv(6) == b"hello\n"
        where = address(server)
        stopper = threading.Thread(target=thread.stop)
        started = time.monotonic()
        stopper.start()
        while not refused(where):  # the listener closes at once
            assert time.monotonic() - started < 1.0, "still accepting after stop()"
        finisher.sendall(b"finish\n")  # a running connection may finish within the grace
        assert read_until_eof(finisher) == b"bye\n"
        assert time.monotonic() - started < grace

        stuck.settimeout(grace + 3)
        try:  # the silent one is cut once the grace is over
            assert stuck.recv(100) == b""
        except (ConnectionResetError, ssl.SSLError):
            pass
        cut = time.monotonic() - started
        assert grace - 0.1 <= cut <= grace + 1.0, cut
        stopper.join(3)
        assert not stopper.is_alive()
        assert time.monotonic() - started <= grace + 1.5
    finally:
        finisher.close()
        stuck.close()
        thread.stop()
