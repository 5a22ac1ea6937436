"""Acceptance point 10: faults stay local to their connection.

An exception in any per-connection hook is logged at level 1 with its traceback and closes that
client only. Peers that vanish mid-handshake or mid-request, send garbage instead of a
ClientHello, or speak plain HTTP to the TLS port end their own connection, logged without a
traceback. After 1,000 such connections the server's open file descriptors are back to where
they started.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import os
import socket
import ssl
import struct
import time
from collections.abc import Callable
from typing import Any

import pytest
from support.net import address, poll, read_until_eof, tls_connect
from support.tls import client_hello

from gnetserver import GServer

HOOKS = ("post_accept_hook", "allow_deny_hook", "request_denied_hook", "process_request",
         "post_process_request_hook", "post_client_connection_hook")


class Faulty(GServer):
    """The first line a client sends names the hook that must raise ("ok": none).

    process_request says ``hello``, echoes one line and returns.
    """

    def configure_hook(self) -> None:
        self.finished = 0  # connections whose greenlet has ended, whatever happened
        self.processed = 0  # connections that reached process_request

    def run_client_connection(self, client: Any) -> None:
        try:
            super().run_client_connection(client)
        finally:
            self.finished += 1

    def fail(self, client: Any, hook: str) -> None:
        if client.data.get("fail") == hook:
            raise RuntimeError(f"boom in {hook}")

    def post_accept_hook(self, client: Any) -> None:
        client.data["fail"] = client.readline().strip().decode()
        self.fail(client, "post_accept_hook")

    def allow_deny_hook(self, client: Any) -> bool:
        self.fail(client, "allow_deny_hook")
        return client.data["fail"] != "request_denied_hook"

    def request_denied_hook(self, client: Any) -> None:
        self.fail(client, "request_denied_hook")

    def process_request(self, client: Any) -> None:
        self.processed += 1
        client.sendall(b"hello\n")
        self.fail(client, "process_request")
        client.sendall(client.readline())

    def post_process_request_hook(self, client: Any) -> None:
        self.fail(client, "post_process_request_hook")

    def post_client_connection_hook(self, client: Any) -> None:
        self.fail(client, "post_client_connection_hook")


# -- the clients: each returns once the connection is over on its side ------------------------


def ragged(sock: socket.socket) -> None:
    """Make the next close() send RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def hook_client(server: GServer, ctx: ssl.SSLContext, hook: str) -> bytes:
    """Name the hook that must fail; return everything received until the server closed."""
    with tls_connect(server, ctx) as tls:
        tls.sendall(hook.encode() + b"\n")
        received = b""
        if hook not in ("post_accept_hook", "allow_deny_hook", "request_denied_hook",
                        "process_request"):
            received = tls.recv(6)  # "hello\n" (TLS keeps record boundaries here)
            tls.sendall(b"echo\n")
        return received + read_until_eof(tls)


def ok_client(server: GServer, ctx: ssl.SSLContext) -> None:
    assert hook_client(server, ctx, "ok") == b"hello\necho\n"


def raw_client(server: GServer, send: bytes, reset: bool = False, wait: bool = True) -> None:
    """Send raw bytes to the TLS port; read until the server closes (or just close)."""
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(send)
        if wait:
            with contextlib.suppress(ConnectionResetError):
                while sock.recv(4096):
                    pass
        if reset:
            ragged(sock)


def mid_request_client(server: GServer, ctx: ssl.SSLContext, reset: bool) -> None:
    """Complete the handshake, start a request, vanish before its line is complete."""
    with tls_connect(server, ctx) as tls:
        tls.sendall(b"ok\n")
        assert tls.recv(6) == b"hello\n"
        tls.sendall(b"half a li")
        if reset:
            ragged(tls)


def hello_then_vanish(server: GServer, hello: bytes) -> None:
    """A full ClientHello, the server's first flight, then gone before the client Finished."""
    with socket.create_connection(address(server), timeout=5) as sock:
        sock.sendall(hello)
        assert sock.recv(1), "the server did not answer the ClientHello"


HELLO = client_hello()
HALF = HELLO[: len(HELLO) // 2]
GARBAGE = b"\x00\xffTHIS IS NOT A CLIENTHELLO" * 20
HTTP = b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"

#: The bad peers: name -> (client, reaches process_request).
BAD_PEERS: dict[str, tuple[Callable[[GServer, ssl.SSLContext], Any], bool]] = {
    "half hello, close": (lambda s, c: raw_client(s, HALF, wait=False), False),
    "half hello, reset": (lambda s, c: raw_client(s, HALF, reset=True, wait=False), False),
    "hello, vanish": (lambda s, c: hello_then_vanish(s, HELLO), False),
    "garbage": (lambda s, c: raw_client(s, GARBAGE), False),
    "plain http": (lambda s, c: raw_client(s, HTTP), False),
    "mid request, close": (lambda s, c: mid_request_client(s, c, reset=False), True),
    "mid request, reset": (lambda s, c: mid_request_client(s, c, reset=True), True),
}


def has_traceback(record: logging.LogRecord) -> bool:
    return bool(record.exc_info) or "Traceback (most recent call last)" in record.getMessage()


@pytest.fixture
def server(serve: Any, certs: dict[str, str]) -> GServer:
    return serve(Faulty, port="127.0.0.1:0/ssl", log_level=4, timeout_handshake=5, **certs)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("hook", HOOKS)
def test_exception_in_hook_is_logged_and_closes_only_that_client(
    server: Any, client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture, hook: str
) -> None:
    received = hook_client(server, client_context, hook)
    expected = {"post_accept_hook": b"", "allow_deny_hook": b"", "request_denied_hook": b"",
                "process_request": b"hello\n"}
    assert received == expected.get(hook, b"hello\necho\n")  # then a clean close
    assert poll(lambda: server.finished == 1)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    message = errors[0].getMessage()
    assert errors[0].levelno == logging.ERROR  # Net::Server level 1
    assert "Traceback (most recent call last)" in message and f"boom in {hook}" in message
    ok_client(server, client_context)  # the server keeps serving
    assert poll(lambda: server.finished == 2)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", BAD_PEERS)
def test_bad_peer_ends_only_its_connection(
    server: Any, client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture, kind: str
) -> None:
    client, processed = BAD_PEERS[kind]
    client(server, client_context)
    assert poll(lambda: server.finished == 1)
    assert server.processed == int(processed)  # failed handshakes never reach it
    records = list(caplog.records)
    assert not [r for r in records if r.levelno >= logging.ERROR or has_traceback(r)]
    assert not [r for r in records if r.getMessage().endswith("[]")]  # a reason, not a blank
    if not processed:
        failed = [r for r in records if "handshake failed" in r.getMessage()]
        assert len(failed) == 1 and failed[0].levelno in (logging.INFO, logging.DEBUG)
    if kind == "plain http":
        assert "http request" in failed[0].getMessage()
    ok_client(server, client_context)
    assert poll(lambda: server.finished == 2)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.timeout(60)
def test_thousand_faulty_connections_leak_no_descriptors(
    server: Any, client_context: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    kinds: list[Callable[[], Any]] = [
        lambda hook=hook: hook_client(server, client_context, hook) for hook in HOOKS]
    kinds += [lambda c=c: c(server, client_context) for c, _ in BAD_PEERS.values()]
    kinds.append(lambda: ok_client(server, client_context))
    for run in kinds:  # warm up: first-use allocations are not leaks
        run()
    assert poll(lambda: server.finished == len(kinds))
    baseline = open_fds()

    total = 1000
    deadline = time.monotonic() + 40
    with concurrent.futures.ThreadPoolExecutor(max_workers=12) as pool:
        futures = [pool.submit(kinds[i % len(kinds)]) for i in range(total)]
        for future in concurrent.futures.as_completed(futures, timeout=40):
            future.result()
    assert time.monotonic() < deadline
    assert poll(lambda: server.finished == len(kinds) + total, timeout=10)
    assert poll(lambda: open_fds() == baseline, timeout=5), (open_fds(), baseline)

    ok_client(server, client_context)  # still serving
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    hook_faults = sum(1 for i in range(-len(kinds), total) if i % len(kinds) < len(HOOKS))
    assert len(errors) == hook_faults and all(has_traceback(r) for r in errors)
    tracebacks = [r for r in caplog.records if has_traceback(r)]
    assert len(tracebacks) == len(errors)
