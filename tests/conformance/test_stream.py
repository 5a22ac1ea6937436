"""One stream contract, run over every proto: tcp, unix, ssl (pyOpenSSL) and ssleay (stdlib ssl).

Each test starts :class:`~support.conformance.ConformanceServer` on the proto of its parameter
and talks to it with a real blocking client. What must hold on every proto: bytes arrive intact
both ways (small lines and 1 MiB payloads), the server sees the client's EOF (a TCP half-close
or a TLS close_notify) and can still answer, readline and makefile work, the client facts are
filled in, an idle client is closed after ``timeout_idle``, and closing with unread input does
not reset the connection (the client gets the whole answer, then a clean EOF).
"""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from typing import Any

import pytest
from support.conformance import (
    MIB,
    PROTOS,
    Endpoint,
    StartServer,
    pattern,
    read_exactly,
)
from support.net import read_line, read_until_eof

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(params=PROTOS)
def proto(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def endpoint(start_endpoint: StartServer) -> Endpoint:
    return start_endpoint()


def test_echo_small_lines(endpoint: Endpoint) -> None:
    with endpoint.connect() as sock:
        sock.sendall(b"ECHO\nhello\n")
        assert read_line(sock) == b"echo: hello\n"
        sock.sendall(b"\xff\x00 binary\r\n")
        assert read_line(sock) == b"echo: \xff\x00 binary\r\n"
        sock.sendall(b"quit\n")
        assert read_until_eof(sock) == b"echo: quit\n"


def test_large_payload_both_ways(endpoint: Endpoint) -> None:
    data = pattern(MIB)
    with endpoint.connect() as sock:
        sock.sendall(b"BULK %d\n" % len(data) + data)
        assert read_line(sock).strip() == hashlib.sha256(data).hexdigest().encode()
        assert read_exactly(sock, len(data)) == data
        assert read_until_eof(sock) == b""


def test_server_sees_half_close_and_still_answers(endpoint: Endpoint) -> None:
    data = pattern(200_000)
    answer = endpoint.half_close_exchange(b"EOF\n", data)
    assert answer == f"{len(data)} {hashlib.sha256(data).hexdigest()}\n".encode()


def test_half_close_right_after_the_command(endpoint: Endpoint) -> None:
    assert endpoint.half_close_exchange(b"EOF\n", b"") == (
        f"0 {hashlib.sha256(b'').hexdigest()}\n".encode())


def test_readline_and_makefile(endpoint: Endpoint) -> None:
    with endpoint.connect() as sock:
        sock.sendall(b"FILE\nalpha\n")
        assert read_line(sock) == b"file: alpha\n"
        sock.sendall("héllo wörld\n".encode())
        assert read_line(sock).decode() == "HÉLLO WÖRLD\n"
        assert read_until_eof(sock) == b""


def test_client_facts(endpoint: Endpoint) -> None:
    with endpoint.connect() as sock:
        sock.sendall(b"FACTS\n")
        facts = json.loads(read_line(sock))
        local = sock.getsockname()
    assert facts["proto"] == endpoint.proto
    if endpoint.proto == "unix":  # as in Net::Server: no peer address, the path as sockport
        assert (facts["peeraddr"], facts["peerport"], facts["sockaddr"]) == (None, None, None)
        assert facts["sockport"] == endpoint.server.listeners[0].bound
    else:
        assert (facts["peeraddr"], facts["peerport"]) == ("127.0.0.1", local[1])
        assert (facts["sockaddr"], facts["sockport"]) == endpoint.server.listeners[0].bound
    if endpoint.tls:
        assert facts["version"] == "TLSv1.3"
        assert facts["cipher"].startswith("TLS_")
        assert facts["server_name"] == "localhost"
        assert facts["session_reused"] is False
        assert facts["alpn_protocol"] is None and facts["peer_subject"] is None
    else:
        assert "version" not in facts


def test_idle_client_is_closed_after_timeout_idle(start_endpoint: StartServer) -> None:
    endpoint = start_endpoint(timeout_idle=0.3)
    with endpoint.connect() as sock:
        begun = time.monotonic()
        assert read_until_eof(sock) == b""  # a clean EOF, no reset
        waited = time.monotonic() - begun
    assert 0.2 < waited < 4.0


def test_idle_timeout_restarts_with_each_read(start_endpoint: StartServer) -> None:
    endpoint = start_endpoint(timeout_idle=0.5)
    with endpoint.connect() as sock:
        sock.sendall(b"ECHO\n")
        for word in (b"one", b"two", b"three"):
            sock.sendall(word + b"\n")  # each within the idle time of the previous one
            assert read_line(sock) == b"echo: " + word + b"\n"
        assert read_until_eof(sock) == b""


def test_a_client_that_does_not_read_is_cut_after_timeout_idle(
        start_endpoint: StartServer) -> None:
    """timeout_idle bounds a write too: the server's write waits for room (the client reads
    nothing) and is cut after 0.3 s, long before the 64 MiB flood is out."""
    endpoint = start_endpoint(timeout_idle=0.3)
    flood = 64 * MIB
    with endpoint.raw() as raw:
        sock: Any = raw
        if endpoint.tls:
            sock = endpoint.client_context().wrap_socket(raw, server_hostname="localhost")
        sock.sendall(b"FLOOD %d\n" % flood)
        time.sleep(1.0)  # reads nothing meanwhile: the server's write is cut at 0.3 s
        got = 0
        try:
            while chunk := sock.recv(65536):
                got += len(chunk)
        except (ConnectionResetError, ssl.SSLError):
            pass  # cut by an abort: what was in flight, then a reset
    assert got < flood // 2, got


def test_close_with_unread_input_does_not_reset(endpoint: Endpoint) -> None:
    size = 256 * 1024
    with endpoint.connect() as sock:
        # The server answers and closes without reading the 64 KiB that follow its command;
        # a close with unread input would send RST and the client could lose the answer.
        sock.sendall(b"SPEW %d\n" % size + b"x" * 65536)
        assert read_until_eof(sock) == pattern(size)


def test_many_sequential_connections(endpoint: Endpoint) -> None:
    for number in range(10):
        with endpoint.connect() as sock:
            sock.sendall(b"ECHO\n%d\nquit\n" % number)
            assert read_until_eof(sock) == b"echo: %d\necho: quit\n" % number
