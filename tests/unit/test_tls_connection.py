"""TLSConnection over real loopback sockets.

The server side runs in this thread's gevent hub (accept on a gevent listening socket, then
``TLSConnection``); each client runs in a plain thread with blocking stdlib sockets and ``ssl``,
so it never depends on the hub. Threads synchronise through ``threading.Event`` (no sleeps).
Waiting on an Event blocks the hub, which is fine here: the server side has nothing else to run.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trustme
from OpenSSL import SSL
from support.net import PeerThread
from support.tls import trusting

from gnetserver.errors import HandshakeTimeout, TLSError
from gnetserver.tls import TLSConnection, build_context

pytestmark = pytest.mark.timeout(10)

MIB = 1 << 20
WAIT = 5.0  # upper bound for every blocking step; tests normally take milliseconds


# ---------------------------------------------------------------------------------------------
# Fixtures and harness


@pytest.fixture
def server_ctx(pem_files: dict[str, Any]) -> SSL.Context:
    return build_context(pem_files, "port test")


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    return trusting(ca)


@contextmanager
def serve(listener: Any, ctx: SSL.Context, client_fn: Callable[[int], Any]) -> Iterator[Any]:
    """Start ``client_fn`` in a thread, accept it here and yield ``(conn, client)``.

    On exit the server side sends close_notify (when it still can) and closes; the client
    thread is then joined, so a client waiting for the server's EOF finishes.
    """
    client = PeerThread(client_fn, listener.getsockname()[1], WAIT)
    client.start()
    sock, _ = listener.accept()
    conn = TLSConnection(sock, ctx)
    try:
        yield conn, client
    finally:
        conn.shutdown_tls()
        conn.close()
        client.join(WAIT)


def tls_client(
    client_ctx: ssl.SSLContext,
    then: Callable[[ssl.SSLSocket], Any] = lambda s: None,
    host: str = "localhost",
    rcvbuf: int | None = None,
) -> Callable[[int], Any]:
    """A client that handshakes, runs ``then`` and reads until the server closes."""

    def run(port: int) -> Any:
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(WAIT)
        raw.connect(("127.0.0.1", port))
        with client_ctx.wrap_socket(raw, server_hostname=host) as tls:
            result = then(tls)
            while tls.recv(65536):  # the server's close; also consumes TLS 1.3 tickets
                pass
            return result

    return run


def plain_client(data: bytes, reset: threading.Event | None = None) -> Callable[[int], bytes]:
    """A non-TLS client: waits for ``reset`` if given, sends ``data``, then closes."""

    def run(port: int) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
            if reset is not None:
                assert reset.wait(WAIT)
                sock.sendall(data)
                _linger_zero(sock)
                return b""
            sock.sendall(data)
        return b""

    return run


def _linger_zero(sock: socket.socket) -> None:
    """Make the next close() send RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def recv_exactly(read: Callable[[int], bytes], size: int) -> bytes:
    chunks, got = [], 0
    while got < size:
        chunk = read(min(65536, size - got))
        assert chunk, f"EOF after {got} of {size} bytes"
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


# ---------------------------------------------------------------------------------------------
# Data transfer


def test_echo_one_mib_both_ways(listener: Any, server_ctx: SSL.Context, client_ctx: Any) -> None:
    """Small socket buffers make every direction wait many times (WantRead and WantWrite)."""
    payload = os.urandom(MIB)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # inherited by accept()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)

    def exchange(tls: ssl.SSLSocket) -> bytes:
        tls.sendall(payload)
        return recv_exactly(tls.recv, MIB)

    with serve(listener, server_ctx, tls_client(client_ctx, exchange, rcvbuf=4096)) as (conn, c):
        conn.do_handshake(WAIT)
        conn.settimeout(WAIT)
        buffer = bytearray(MIB)
        view, got = memoryview(buffer), 0
        while got < MIB:
            count = conn.recv_into(view[got:])
            assert count > 0
            got += count
        assert buffer == payload
        conn.sendall(buffer)
    assert c.result() == payload


def test_send_is_partial_and_sendall_finishes(
    listener: Any, server_ctx: SSL.Context, client_ctx: Any
) -> None:
    payload = os.urandom(MIB)
    go = threading.Event()

    def read_later(tls: ssl.SSLSocket) -> bytes:
        assert go.wait(WAIT)
        return recv_exactly(tls.recv, MIB)

    with serve(listener, server_ctx, tls_client(client_ctx, read_later)) as (conn, client):
        conn.do_handshake(WAIT)
        conn.settimeout(WAIT)
        sent = conn.send(payload)
        assert 0 < sent < MIB  # partial-write mode: at most a record or so per call
        go.set()
        conn.sendall(memoryview(payload)[sent:])
    assert client.result() == payload


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")], ids=type)
def test_empty_writes_send_nothing_and_keep_the_connection(
    listener: Any, server_ctx: SSL.Context, client_ctx: Any, empty: Any
) -> None:
    """An empty body is a common write: as on a socket, it sends nothing (``send`` says 0),
    and the connection goes on, to its close_notify (the client reads to a clean EOF)."""

    def read_all(tls: ssl.SSLSocket) -> bytes:
        data = b""
        while chunk := tls.recv(65536):  # an EOF without close_notify raises here
            data += chunk
        return data

    with serve(listener, server_ctx, tls_client(client_ctx, read_all)) as (conn, client):
        conn.do_handshake(WAIT)
        conn.sendall(empty)
        assert conn.send(empty) == 0
        conn.sendall(b"after")
    assert client.result() == b"after"


def test_reads_of_nothing_return_nothing_and_keep_the_connection(
    listener: Any, server_ctx: SSL.Context, client_ctx: Any
) -> None:
    """recv(0) and recv_into an empty buffer return at once, as on a socket; they used to
    call SSL_read with nothing, which fails as an EOF does, and the connection read as
    ended from then on."""

    def hello(tls: ssl.SSLSocket) -> bytes:
        tls.sendall(b"hello")
        return tls.recv(10)

    with serve(listener, server_ctx, tls_client(client_ctx, hello)) as (conn, client):
        conn.do_handshake(WAIT)
        conn.settimeout(WAIT)
        assert conn.recv(0) == b""
        assert conn.recv_into(bytearray()) == 0
        with pytest.raises(ValueError):
            conn.recv(-1)
        assert recv_exactly(conn.recv, 5) == b"hello"
        conn.sendall(b"world")
    assert client.result() == b"world"


# ---------------------------------------------------------------------------------------------
# Handshake failures


def test_plaintext_http_request_is_a_tls_error(listener: Any, server_ctx: SSL.Context) -> None:
    with serve(listener, server_ctx, plain_client(b"GET / HTTP/1.0\r\n\r\n")) as (conn, _):
        with pytest.raises(TLSError) as err:
            conn.do_handshake(WAIT)
    assert not isinstance(err.value, HandshakeTimeout)
    assert "http request" in str(err.value) or "wrong version number" in str(err.value)
    assert isinstance(err.value.__cause__, SSL.Error)


@pytest.mark.timeout(5)
def test_silent_client_times_out(listener: Any, server_ctx: SSL.Context) -> None:
    release = threading.Event()

    def silent(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT):
            release.wait(WAIT)

    with serve(listener, server_ctx, silent) as (conn, _):
        start = time.monotonic()
        with pytest.raises(HandshakeTimeout) as err:
            conn.do_handshake(0.3)
        elapsed = time.monotonic() - start
        release.set()
    assert 0.25 <= elapsed < 2.0
    assert isinstance(err.value, TimeoutError) and isinstance(err.value, TLSError)


@pytest.mark.parametrize(
    "data", [b"", b"\x16\x03\x01\x02\x00\x01\x00"], ids=["nothing", "half-a-hello"]
)
def test_client_closing_mid_handshake(listener: Any, server_ctx: SSL.Context, data: bytes) -> None:
    with serve(listener, server_ctx, plain_client(data)) as (conn, _):
        with pytest.raises(ConnectionAbortedError, match="during the TLS handshake"):
            conn.do_handshake(WAIT)


def test_client_resetting_mid_handshake(listener: Any, server_ctx: SSL.Context) -> None:
    accepted = threading.Event()
    with serve(listener, server_ctx, plain_client(b"\x16\x03\x01", accepted)) as (conn, _):
        accepted.set()
        with pytest.raises(ConnectionError) as err:
            conn.do_handshake(WAIT)
    assert not isinstance(err.value, TLSError)


# ---------------------------------------------------------------------------------------------
# End of stream and shutdown


def test_ragged_eof_reads_as_empty(listener: Any, server_ctx: SSL.Context, client_ctx: Any) -> None:
    seen = threading.Event()

    def fin_without_close_notify(port: int) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        twin = raw.dup()  # wrap_socket takes over raw; the twin reaches the same TCP stream
        try:
            with client_ctx.wrap_socket(raw, server_hostname="localhost"):
                twin.shutdown(socket.SHUT_WR)
                assert seen.wait(WAIT)
        finally:
            twin.close()

    with serve(listener, server_ctx, fin_without_close_notify) as (conn, client):
        conn.do_handshake(WAIT)
        conn.settimeout(WAIT)
        assert conn.recv(100) == b""
        assert conn.recv(100) == b""
        assert conn.recv_into(bytearray(10)) == 0
        seen.set()
    client.result()


def test_close_notify_reads_as_empty(
    listener: Any, server_ctx: SSL.Context, client_ctx: Any
) -> None:
    def close_notify(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            tls = client_ctx.wrap_socket(raw, server_hostname="localhost")
            tls.sendall(b"bye")
            tls.unwrap().close()  # sends close_notify, waits for the server's

    with serve(listener, server_ctx, close_notify) as (conn, client):
        conn.do_handshake(WAIT)
        conn.settimeout(WAIT)
        assert recv_exactly(conn.recv, 3) == b"bye"
        assert conn.recv(100) == b""
        assert conn.recv_into(bytearray(10)) == 0
        conn.shutdown_tls()  # the client's unwrap() returns once this arrives
    client.result()


@contextmanager
def reset_by_peer(listener: Any, server_ctx: SSL.Context, client_ctx: Any) -> Iterator[Any]:
    """Yield ``(conn, client)`` once the client completed the handshake and then reset the
    TCP connection (SO_LINGER 0)."""
    ready, done = threading.Event(), threading.Event()

    def run(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            tls = client_ctx.wrap_socket(raw, server_hostname="localhost")
            assert ready.wait(WAIT)
            _linger_zero(tls)
            tls.close()
        done.set()

    with serve(listener, server_ctx, run) as (conn, client):
        conn.do_handshake(WAIT)
        ready.set()
        assert done.wait(WAIT)
        yield conn, client


def test_shutdown_tls_on_a_reset_peer_does_not_raise(
    listener: Any, server_ctx: SSL.Context, client_ctx: Any
) -> None:
    with reset_by_peer(listener, server_ctx, client_ctx) as (conn, client):
        start = time.monotonic()
        conn.shutdown_tls(timeout=1.0)
        conn.shutdown_tls(timeout=1.0)  # a second call does nothing
        assert time.monotonic() - start < 1.5
    client.result()


def test_send_to_a_reset_peer_is_a_connection_error(
    listener: Any, server_ctx: SSL.Context, client_ctx: Any
) -> None:
    with reset_by_peer(listener, server_ctx, client_ctx) as (conn, client):
        conn.settimeout(WAIT)
        with pytest.raises(ConnectionError):
            for _ in range(1000):  # the first writes may still fit in the socket buffer
                conn.sendall(b"x" * 16384)
    client.result()


def test_shutdown_tls_before_handshake_and_after_close(
    listener: Any, server_ctx: SSL.Context
) -> None:
    with serve(listener, server_ctx, plain_client(b"")) as (conn, _):
        conn.shutdown_tls()
        conn.close()
        conn.close()
        conn.shutdown_tls()
        assert conn.fileno() == -1


# ---------------------------------------------------------------------------------------------
# Timeouts


def test_recv_timeout_leaves_the_connection_usable(
    listener: Any, server_ctx: SSL.Context, client_ctx: Any
) -> None:
    go = threading.Event()

    def late_sender(tls: ssl.SSLSocket) -> None:
        assert go.wait(WAIT)
        tls.sendall(b"late")

    with serve(listener, server_ctx, tls_client(client_ctx, late_sender)) as (conn, client):
        conn.do_handshake(WAIT)
        conn.settimeout(0.2)
        assert conn.gettimeout() == 0.2
        start = time.monotonic()
        with pytest.raises(TimeoutError) as err:
            conn.recv(10)
        assert 0.15 <= time.monotonic() - start < 2.0
        assert not isinstance(err.value, TLSError)
        go.set()
        conn.settimeout(WAIT)
        assert recv_exactly(conn.recv, 4) == b"late"
    client.result()


def test_a_zero_timeout_read_after_a_write_takes_what_has_arrived(
    listener: Any, server_ctx: SSL.Context, client_ctx: Any
) -> None:
    """settimeout(0) polls: a read returns what is there and raises TimeoutError only when
    nothing is. After a write too (where a read otherwise waits for readable first)."""
    answered = threading.Event()

    def answer(tls: ssl.SSLSocket) -> None:
        assert tls.recv(10) == b"question"
        tls.sendall(b"answer")
        answered.set()

    with serve(listener, server_ctx, tls_client(client_ctx, answer)) as (conn, client):
        conn.do_handshake(WAIT)
        conn.sendall(b"question")
        assert answered.wait(WAIT)
        time.sleep(0.1)  # the answer crosses loopback
        conn.settimeout(0)
        assert recv_exactly(conn.recv, 6) == b"answer"
        conn.sendall(b"more?")
        with pytest.raises(TimeoutError):
            conn.recv(10)  # nothing came
    client.result()


def test_settimeout_rejects_negative(listener: Any, server_ctx: SSL.Context) -> None:
    with serve(listener, server_ctx, plain_client(b"")) as (conn, _):
        assert conn.gettimeout() is None
        with pytest.raises(ValueError):
            conn.settimeout(-1)


# ---------------------------------------------------------------------------------------------
# Facts


@pytest.mark.parametrize(
    ("host", "sni", "max_version", "version"),
    [
        ("localhost", "localhost", None, "TLSv1.3"),
        ("127.0.0.1", None, None, "TLSv1.3"),  # clients send no SNI for IP literals
        ("localhost", "localhost", ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
    ],
)
def test_facts(
    listener: Any,
    server_ctx: SSL.Context,
    client_ctx: ssl.SSLContext,
    host: str,
    sni: str | None,
    max_version: ssl.TLSVersion | None,
    version: str,
) -> None:
    if max_version is not None:
        client_ctx.maximum_version = max_version

    with serve(listener, server_ctx, tls_client(client_ctx, lambda s: s.cipher(), host)) as (
        conn,
        client,
    ):
        assert conn.version is None and conn.session_reused is False
        conn.do_handshake(WAIT)
        assert conn.fileno() >= 0
        assert conn.pending() == 0
        facts = (conn.version, conn.server_name, conn.session_reused, conn.alpn_protocol)
        assert facts == (version, sni, False, None)
        assert conn.peer_certificate is None
        cipher = conn.cipher
    assert client.result()[0] == cipher


# ---------------------------------------------------------------------------------------------
# After close


def test_a_closed_connection_never_touches_its_old_descriptor(
    listener: Any, server_ctx: SSL.Context, client_ctx: Any
) -> None:
    """OpenSSL keeps the fd *number*: after close() it may belong to another connection (the
    next accept gets the lowest free number). A read or write on the closed connection (a
    handler going on after another greenlet closed it) must not read that connection's bytes
    or write records into it."""
    with serve(listener, server_ctx, tls_client(client_ctx)) as (conn, client):
        conn.do_handshake(WAIT)
        number = conn.fileno()
        conn.close()
        other, peer = socket.socketpair()
        try:
            if number not in (other.fileno(), peer.fileno()):
                pytest.skip("the descriptor number was not reused")
            mine, theirs = (other, peer) if other.fileno() == number else (peer, other)
            theirs.sendall(b"someone else's data")
            with pytest.raises(OSError):
                conn.recv(100)
            with pytest.raises(OSError):
                conn.recv_into(bytearray(100))
            with pytest.raises(OSError):
                conn.sendall(b"stray record")
            with pytest.raises(OSError):
                conn.do_handshake(WAIT)
            mine.setblocking(False)
            assert mine.recv(100) == b"someone else's data"  # still there, unread
            theirs.setblocking(False)
            with pytest.raises(BlockingIOError):
                theirs.recv(100)  # nothing was written into it
        finally:
            other.close()
            peer.close()
    client.result()
