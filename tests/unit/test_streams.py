"""Protocols hand back streams; a Client owns the stream it is given.

Real loopback sockets and real TLS (trustme certificates), as in test_tls_connection: the
server side runs in this thread's gevent hub, each peer in a plain thread with blocking stdlib
sockets and ``ssl``, so it never depends on the hub.
"""

from __future__ import annotations

import os
import socket
import ssl
import threading
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import gevent
import gevent.socket as gsocket
import pytest
import trustme
from support.net import PeerThread
from support.tls import trusting

from gnetserver.client import Client
from gnetserver.errors import HandshakeTimeout, TLSError
from gnetserver.ports import PortSpec, parse_ports
from gnetserver.proto import (
    PROTOCOLS,
    PlainStream,
    SSLeayProtocol,
    SSLProtocol,
    TCPProtocol,
    TLSStream,
    UnixProtocol,
)
from gnetserver.proto.stream import LINGER_SECONDS, PlainIO
from gnetserver.tls import TLSContexts

pytestmark = pytest.mark.timeout(20)

WAIT = 5.0  # upper bound for every blocking step; tests normally take milliseconds
TLS_PROTOCOLS = {"ssl": SSLProtocol, "ssleay": SSLeayProtocol}


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def spec(proto: str, port: str = "127.0.0.1:0") -> PortSpec:
    [one] = parse_ports(f"{port}/{proto}")
    return one


@pytest.fixture
def client_ctx(ca: trustme.CA) -> ssl.SSLContext:
    return trusting(ca)


@pytest.fixture(params=sorted(TLS_PROTOCOLS))
def tls_protocol(request: Any, pem_files: dict[str, Any]) -> Any:
    """An ssl or an ssleay protocol with its context from a TLSContexts registry."""
    cls = TLS_PROTOCOLS[request.param]
    return cls(spec(request.param), pem_files, TLSContexts(lambda text: None))


@contextmanager
def accepted(listener: Any, peer_fn: Callable[[int], Any]) -> Iterator[tuple[Any, PeerThread]]:
    """Start ``peer_fn`` in a thread, accept it here, yield ``(sock, peer)``."""
    peer = PeerThread(peer_fn, listener.getsockname()[1], WAIT)
    peer.start()
    sock, _ = listener.accept()
    try:
        yield sock, peer
    finally:
        sock.close()
        peer.join(WAIT)


def wait_in_hub(event: threading.Event) -> None:
    """Wait for a thread's event while letting the hub run the server's greenlets."""
    for _ in range(int(WAIT / 0.01)):
        if event.is_set():
            return
        gevent.sleep(0.01)
    raise AssertionError("the peer did not get there")


def raw_peer(then: Callable[[socket.socket], Any]) -> Callable[[int], Any]:
    def run(port: int) -> Any:
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as raw:
            return then(raw)
    return run


def read_to_eof(raw: socket.socket) -> bytes:
    data = b""
    while chunk := raw.recv(65536):
        data += chunk
    return data


def silent_until(release: threading.Event) -> Callable[[socket.socket], bytes]:
    """A peer that sends nothing until ``release``, then reads to EOF (b"" when reset)."""
    def silent(raw: socket.socket) -> bytes:
        release.wait(WAIT)
        try:
            return read_to_eof(raw)
        except ConnectionResetError:
            return b""
    return silent


# -- protocols --------------------------------------------------------------------------------


def test_protocols_are_built_from_spec_options_and_contexts(pem_files: dict[str, Any]) -> None:
    contexts = TLSContexts(lambda text: None)
    for name, cls in PROTOCOLS.items():
        options = pem_files if cls.is_tls else {}
        path = "/tmp/gnetserver-test-none.sock" if name == "unix" else "127.0.0.1:0"
        protocol = cls(spec(name, path), options, contexts)
        assert protocol.name == name
    assert TCPProtocol(spec("tcp"), {}, None).tls_library() is None


@pytest.mark.parametrize("cls", [SSLProtocol, SSLeayProtocol])
def test_a_tls_protocol_needs_the_registry(cls: Any, pem_files: dict[str, Any]) -> None:
    with pytest.raises(RuntimeError, match="no TLS registry"):
        cls(spec(cls.name), pem_files, None)


# -- plain streams ----------------------------------------------------------------------------


def test_plain_stream_reads_and_writes_on_the_socket(listener: Any) -> None:
    with accepted(listener, raw_peer(read_to_eof)) as (sock, peer):
        stream = TCPProtocol(spec("tcp"), {}, None).post_accept(sock, 1.0)
        assert isinstance(stream, PlainStream)
        assert stream.sock is sock and stream.tls is None
        assert isinstance(stream.io, PlainIO)  # a Client reads and writes through it
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        stream.io.sendall(b"hello")
        stream.close()  # half-close: the peer reads to its EOF, then closes
        assert sock.fileno() == -1
        stream.close()
        stream.abort()  # idempotent: nothing left to do
        assert peer.result() == b"hello"


def test_plain_stream_close_sends_fin_and_drains(listener: Any) -> None:
    def peer(raw: socket.socket) -> bytes:
        raw.sendall(b"unread request data")  # sits unread at the server
        return read_to_eof(raw)  # the FIN of the half-close, not a reset

    with accepted(listener, raw_peer(peer)) as (sock, thread):
        stream = TCPProtocol(spec("tcp"), {}, None).post_accept(sock, 1.0)
        stream.io.sendall(b"answer")
        stream.close()
        assert thread.result() == b"answer"


def test_plain_stream_abort_closes_at_once(listener: Any) -> None:
    def peer(raw: socket.socket) -> Any:
        try:
            return read_to_eof(raw)
        except ConnectionResetError:
            return "reset"

    with accepted(listener, raw_peer(peer)) as (sock, thread):
        stream = TCPProtocol(spec("tcp"), {}, None).post_accept(sock, 1.0)
        stream.abort()
        assert sock.fileno() == -1
        stream.close()  # no-op after abort
        assert thread.result() in (b"", "reset")


def test_unix_stream_and_listener_file(short_tmp_path: str) -> None:
    path = str(Path(short_tmp_path) / "s.sock")
    protocol = UnixProtocol(spec("unix", path), {}, None)
    listening = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listening.bind(path)
    listening.listen(1)
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    peer.connect(path)
    sock, _ = listening.accept()
    stream = protocol.post_accept(sock, 1.0)
    assert isinstance(stream, PlainStream) and stream.sock is sock and stream.tls is None
    peer.sendall(b"x")
    assert stream.io.recv(1) == b"x"
    peer.close()
    stream.close()
    assert sock.fileno() == -1
    protocol.close_listener(listening)
    assert listening.fileno() == -1 and not os.path.exists(path)
    protocol.close_listener(listening)  # idempotent


def test_unix_close_listener_leaves_other_files(short_tmp_path: str) -> None:
    path = Path(short_tmp_path) / "not-a-socket"
    path.write_text("keep me")
    protocol = UnixProtocol(spec("unix", str(path)), {}, None)
    listening = gsocket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    protocol.close_listener(listening)
    assert path.read_text() == "keep me"


def test_tcp_close_listener_closes_the_socket(listener: Any) -> None:
    TCPProtocol(spec("tcp"), {}, None).close_listener(listener)
    assert listener.fileno() == -1


# -- TLS streams ------------------------------------------------------------------------------


def test_tls_post_accept_returns_a_handshaken_stream(
    listener: Any, tls_protocol: Any, client_ctx: ssl.SSLContext
) -> None:
    notified = threading.Event()

    def peer(port: int) -> tuple[bytes, bytes]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        tls = client_ctx.wrap_socket(raw, server_hostname="localhost",
                                     suppress_ragged_eofs=False)  # a bare EOF would raise
        tls.sendall(b"ping")
        data = b""
        while chunk := tls.recv(100):  # b"" only after the server's close_notify
            data += chunk
        notified.set()
        plain = tls.unwrap()  # our close_notify; the socket is plain again
        after = read_to_eof(plain)  # the half-close: EOF, nothing after the close_notify
        plain.close()
        return data, after

    with accepted(listener, peer) as (accepted_sock, thread):
        stream = tls_protocol.post_accept(accepted_sock, WAIT)
        assert isinstance(stream, TLSStream)
        assert stream.tls.version == "TLSv1.3"
        assert stream.tls.server_name == "localhost"
        assert stream.sock.getsockname() == listener.getsockname()  # the live socket
        assert stream.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        if tls_protocol.name == "ssleay":  # the wrapper took the accepted socket's fd over
            assert stream.sock is not accepted_sock and accepted_sock.fileno() == -1
        else:
            assert stream.sock is accepted_sock
        assert stream.io is stream.tls  # a Client reads and writes on the connection itself
        stream.io.settimeout(WAIT)
        got = b""
        while len(got) < 4:
            got += stream.io.recv(4 - len(got))
        assert got == b"ping"
        stream.io.sendall(b"pong")
        stream.close()  # close_notify, half-close, drain until the peer closes
        assert stream.sock.fileno() == -1
        stream.close()
        stream.abort()  # idempotent
        assert thread.result() == (b"pong", b"")


@pytest.mark.parametrize("peer_ends_with", ["fin", "close_notify"])
def test_tls_close_after_the_peer_closed_first_does_not_wait_the_linger(
    listener: Any, tls_protocol: Any, client_ctx: ssl.SSLContext, peer_ends_with: str
) -> None:
    """The peer ends first: with a bare FIN the server never reads (it is queued when the
    server closes), with a close_notify the server reads it (recv gives b""). Either way the
    lingering close is over at once (no wait for the linger bound), and the peer gets the
    server's close_notify and then EOF, not a reset."""
    ended = threading.Event()

    def peer(port: int) -> tuple[bytes, bytes]:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        tls = client_ctx.wrap_socket(raw, server_hostname="localhost",
                                     suppress_ragged_eofs=False)
        tls.sendall(b"ping")
        got = b""
        while len(got) < 4:
            got += tls.recv(4 - len(got))
        if peer_ends_with == "fin":
            # Through a duplicate of the descriptor: the TLS socket's own shutdown would
            # drop its TLS state.
            plain = socket.fromfd(tls.fileno(), socket.AF_INET, socket.SOCK_STREAM)
            plain.shutdown(socket.SHUT_WR)
            ended.set()
            assert tls.recv(100) == b""  # the server's close_notify (a reset would raise)
            tls.close()
        else:
            ended.set()
            plain = tls.unwrap()  # our close_notify, then the server's
        after = read_to_eof(plain)  # then the server's FIN
        plain.close()
        return got, after

    with accepted(listener, peer) as (accepted_sock, thread):
        stream = tls_protocol.post_accept(accepted_sock, WAIT)
        stream.io.settimeout(WAIT)
        got = b""
        while len(got) < 4:
            got += stream.io.recv(4 - len(got))
        stream.io.sendall(b"pong")
        wait_in_hub(ended)
        if peer_ends_with == "close_notify":
            assert stream.io.recv(100) == b""
        else:
            gevent.sleep(0.05)  # the FIN is queued at the server by now
        started = time.monotonic()
        stream.close()
        # Waiting for the peer's FIN (the linger) would take LINGER_SECONDS: it was queued.
        assert time.monotonic() - started < LINGER_SECONDS
        assert stream.sock.fileno() == -1
        assert thread.result() == (b"pong", b"")


@pytest.mark.parametrize("request_bytes", [b"GET / HTTP/1.0\r\n\r\n", b""])
def test_failed_handshake_is_closed_and_leaves_no_descriptor(
    listener: Any, tls_protocol: Any, request_bytes: bytes
) -> None:
    def peer(raw: socket.socket) -> bytes:
        if request_bytes:
            raw.sendall(request_bytes)
        else:
            raw.shutdown(socket.SHUT_WR)  # EOF mid-handshake
        return read_to_eof(raw)  # the server's graceful close ends in EOF, not a reset

    baseline = open_fds()
    with accepted(listener, raw_peer(peer)) as (sock, thread):
        expected = TLSError if request_bytes else ConnectionAbortedError
        with pytest.raises(expected):
            tls_protocol.post_accept(sock, WAIT)
        assert sock.fileno() == -1
        thread.result()
    assert open_fds() == baseline


def test_handshake_timeout_aborts(listener: Any, tls_protocol: Any) -> None:
    release = threading.Event()
    baseline = open_fds()
    with accepted(listener, raw_peer(silent_until(release))) as (sock, thread):
        with pytest.raises(HandshakeTimeout):
            tls_protocol.post_accept(sock, 0.05)
        assert sock.fileno() == -1  # aborted before the peer did anything
        release.set()
        assert thread.result() == b""
    assert open_fds() == baseline


def test_killed_handshake_aborts(listener: Any, tls_protocol: Any) -> None:
    release = threading.Event()
    baseline = open_fds()
    with accepted(listener, raw_peer(silent_until(release))) as (sock, thread):
        handshake = gevent.spawn(tls_protocol.post_accept, sock, None)
        gevent.sleep(0)  # the handshake runs until it waits for the ClientHello
        assert not handshake.dead
        handshake.kill(block=True, timeout=WAIT)
        assert handshake.dead and isinstance(handshake.value, gevent.GreenletExit)
        assert sock.fileno() == -1
        release.set()
        thread.result()
    assert open_fds() == baseline


def test_tls_close_releases_the_connection_when_killed(
    listener: Any, tls_protocol: Any, client_ctx: ssl.SSLContext
) -> None:
    notified, release = threading.Event(), threading.Event()

    def lingering_peer(port: int) -> None:  # reads the close_notify, then never closes
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            while tls.recv(100):
                pass
            notified.set()
            release.wait(WAIT)

    baseline = open_fds()
    with accepted(listener, lingering_peer) as (sock, thread):
        stream = tls_protocol.post_accept(sock, WAIT)
        closing = gevent.spawn(stream.close)
        wait_in_hub(notified)  # the close_notify is out; the close lingers now
        assert not closing.dead
        closing.kill(block=True, timeout=WAIT)
        assert stream.sock.fileno() == -1 and stream.tls.fileno() == -1
        release.set()
        thread.result()
    assert open_fds() == baseline


# -- the Client owns its stream ---------------------------------------------------------------


def make_client(sock: Any, proto: str = "tcp") -> Client:
    listener = types.SimpleNamespace(spec=spec(proto))
    return Client(sock, ("127.0.0.1", 1), listener, server=None)


def test_client_without_a_stream_closes_its_socket(listener: Any) -> None:
    with accepted(listener, raw_peer(read_to_eof)) as (sock, thread):
        client = make_client(sock)
        assert client.sock is sock and client.stream is None and client.tls is None
        client.sendall(b"before attach")  # the accepted socket until a stream is attached
        client.close()  # the lingering close of the bare socket
        assert client.closed and sock.fileno() == -1
        client.close()
        client.abort()
        assert thread.result() == b"before attach"


def test_client_abort_without_a_stream(listener: Any) -> None:
    with accepted(listener, raw_peer(read_to_eof)) as (sock, thread):
        client = make_client(sock)
        client.abort()
        assert sock.fileno() == -1
        thread.result()


def test_client_reads_and_closes_through_the_attached_stream(listener: Any) -> None:
    def peer(raw: socket.socket) -> bytes:
        raw.sendall(b"one\ntwo\n")
        return read_to_eof(raw)

    with accepted(listener, raw_peer(peer)) as (sock, thread):
        client = make_client(sock)
        stream = TCPProtocol(spec("tcp"), {}, None).post_accept(sock, 1.0)
        client.attach(stream)
        assert client.stream is stream and client.sock is stream.sock and client.tls is None
        assert client.tls_version is None
        client.settimeout(WAIT)
        assert client.readline() == b"one\n"
        assert client.recv(100) == b"two\n"
        client.sendall(b"bye")
        other = PlainStream(gsocket.socket())
        with pytest.raises(RuntimeError):
            client.attach(other)  # one stream per client; the extra one is dropped
        assert other.sock.fileno() == -1
        client.close()
        assert stream.sock.fileno() == -1
        assert thread.result() == b"bye"


def test_client_tls_facts_come_from_the_stream(
    listener: Any, tls_protocol: Any, client_ctx: ssl.SSLContext
) -> None:
    def peer(port: int) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            while tls.recv(100):
                pass

    with accepted(listener, peer) as (sock, thread):
        client = make_client(sock, tls_protocol.name)
        assert client.tls is None and client.tls_version is None
        stream = tls_protocol.post_accept(client.sock, WAIT)
        client.attach(stream)
        assert client.tls is stream.tls and client.sock is stream.sock
        assert client.tls_version == "TLSv1.3" and client.server_name == "localhost"
        assert client.peer_certificate is None and client.session_reused is False
        client.close()
        assert stream.sock.fileno() == -1
        thread.result()


# -- closed from another greenlet -------------------------------------------------------------
# A stream closed by another greenlet while its reader is parked (a chat-style server closing
# another client): the reader is woken, and the close itself does not raise.


def stream_of(proto: str, sock: Any, pem_files: dict[str, Any]) -> Any:
    if proto == "tcp":
        return TCPProtocol(spec("tcp"), {}, None).post_accept(sock, WAIT)
    return SSLProtocol(spec("ssl"), pem_files, TLSContexts(lambda text: None)).post_accept(
        sock, WAIT)


@pytest.mark.parametrize("how", ["close", "abort"])
@pytest.mark.parametrize("proto", ["tcp", "ssl"])
def test_closing_from_another_greenlet_wakes_the_parked_reader(
        listener: Any, pem_files: dict[str, Any], ca: trustme.CA, proto: str, how: str) -> None:
    connected, ended = threading.Event(), threading.Event()

    def peer(port: int) -> bytes:  # connects (handshakes), sends nothing, reads to EOF
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        conn: Any = raw
        if proto == "ssl":
            conn = trusting(ca).wrap_socket(raw, server_hostname="localhost")
        connected.set()
        data = b""
        try:
            while chunk := conn.recv(65536):
                data += chunk
        except (ConnectionResetError, ssl.SSLError):
            pass
        ended.set()
        conn.close()
        return data

    gevent.sleep(0.05)  # descriptors of earlier tests whose close the hub deferred
    baseline = open_fds()
    with accepted(listener, peer) as (sock, thread):
        stream = stream_of(proto, sock, pem_files)
        stream.io.settimeout(None)
        wait_in_hub(connected)
        reader = gevent.spawn(stream.io.recv, 100)
        gevent.sleep(0.05)
        assert not reader.dead  # parked: the peer sends nothing
        closer = gevent.spawn(getattr(stream, how))
        closer.join(WAIT)
        assert closer.successful(), repr(closer.exception)
        reader.join(WAIT)
        assert reader.dead, "the parked reader was not woken by the close"
        # abort: EBADF; close: the end of the stream (the peer's FIN), or EBADF at the close
        assert isinstance(reader.exception, OSError) or reader.value == b"", repr(reader.exception)
        wait_in_hub(ended)  # the peer saw the end of the connection (the hub closes it)
        thread.result()
    gevent.sleep(0.05)
    assert open_fds() == baseline


def test_socket_own_wait_after_a_timed_read_is_not_cut_by_the_stale_deadline(
        listener: Any) -> None:
    """The stream's waits share the gevent socket's io watchers: a handler that then waits
    through the socket's own methods (``client.sock.recv``, ``sendfile``: no timeout set on
    the socket) must not get the stream's earlier read deadline thrown into that wait."""
    first_read, go = threading.Event(), threading.Event()

    def peer(raw: socket.socket) -> bytes:
        time.sleep(0.05)
        raw.sendall(b"a")  # ends the stream's timed read: its deadline stays recorded
        first_read.wait(WAIT)
        time.sleep(0.6)  # past that deadline (0.3 s), the server waits on the socket itself
        raw.sendall(b"b")
        go.set()
        return read_to_eof(raw)

    with accepted(listener, raw_peer(peer)) as (sock, thread):
        stream = TCPProtocol(spec("tcp"), {}, None).post_accept(sock, 1.0)
        stream.io.settimeout(0.3)
        assert stream.io.recv(10) == b"a"  # parked until the peer sent: the timer is armed
        first_read.set()
        assert sock.gettimeout() is None
        assert sock.recv(10) == b"b"  # the gevent socket's own wait, without a timeout
        stream.io.sendall(b"done")
        stream.close()
        assert thread.result() == b"done"
