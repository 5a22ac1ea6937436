"""Issue 16, point 3: silent sockets past the handshake budget cannot lock real clients out, and
the wait for a session slot is bounded.

* With ``max_servers=2 max_handshakes=3`` (a pool of 5) and 10 times ``max_handshakes`` silent
  sockets (plain TCP to a TLS port, never sending), a real TLS client is served while the
  newest silent ones are still pending (long before ``timeout_handshake``): each new
  connection evicts the oldest one still in its handshake. The server never holds more
  connection greenlets than its pool, and closes every evicted socket (level 3, counted).
* A client whose handshake is done but finds ``max_servers`` busy is closed after
  ``timeout_session_wait`` (level 3, counted), and is never evicted meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import time
from typing import Any

import pytest
from support.net import address, poll, read_until_eof, tls_connect, wait_until

from gnetserver import GServer
from gnetserver.options import OPTIONS, table

MAX_SERVERS, MAX_HANDSHAKES = 2, 3
POOL = MAX_SERVERS + MAX_HANDSHAKES
SILENT = 10 * MAX_HANDSHAKES
TIMEOUT_HANDSHAKE = 20.0  # far beyond the test: only eviction can let the real client in


class Echo(GServer):
    """Answers one line; notes the most connection greenlets alive when one starts."""

    def configure_hook(self) -> None:
        self.peak = 0
        self.served = 0

    def run_client_connection(self, client: Any) -> None:
        assert self.personality is not None
        self.peak = max(self.peak, len(self.personality.greenlets()))
        super().run_client_connection(client)

    def process_request(self, client: Any) -> None:
        self.served += 1
        client.sendall(b"echo " + client.readline())


def closed_by_server(sock: socket.socket) -> bool:
    """True when the server closed (or reset) ``sock``; False while it is still open."""
    sock.setblocking(False)
    try:
        return sock.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:  # reset: an aborted connection
        return True


def messages(records: list[logging.LogRecord], text: str) -> list[logging.LogRecord]:
    return [record for record in records if text in record.getMessage()]


def test_new_options_have_sane_documented_defaults() -> None:
    options = table(OPTIONS)
    assert options["timeout_session_wait"].default == 30
    assert "timeout_session_wait" in options["max_servers"].doc
    assert "evicts the oldest" in options["max_handshakes"].doc


@pytest.mark.timeout(30)
def test_silent_flood_past_the_budget_does_not_lock_out_a_real_client(
    serve: Any, certs: dict[str, str], client_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = serve(Echo, port="127.0.0.1:0/ssl", max_servers=MAX_SERVERS,
                   max_handshakes=MAX_HANDSHAKES, timeout_handshake=TIMEOUT_HANDSHAKE,
                   log_level=3, **certs)
    silent = [socket.create_connection(address(server), timeout=5) for _ in range(SILENT)]
    try:
        started = time.monotonic()
        with tls_connect(server, client_context, timeout=10) as tls:
            tls.sendall(b"ping\n")
            reply = tls.recv(100)
            took = time.monotonic() - started
            # By order, not by clock: the newest silent sockets are still pending, so the
            # client was served during the flood, not after timeout_handshake cleared it.
            still_open = [sock for sock in silent if not closed_by_server(sock)]
        assert reply == b"echo ping\n"
        assert took < TIMEOUT_HANDSHAKE / 4, took
        assert len(still_open) == POOL - 1, len(still_open)
        assert still_open == silent[-(POOL - 1):]  # the oldest went first

        # Every connection beyond the pool evicted one: 30 silent + 1 real into 5 places.
        evicted = SILENT + 1 - POOL
        assert server.personality.evictions == evicted
        assert wait_until(lambda: sum(map(closed_by_server, silent[:evicted])) == evicted,
                          what="the evicted sockets closed by the server")
        assert server.peak <= POOL  # never more connection greenlets than the pool holds
        assert server.served == 1
    finally:
        for sock in silent:
            sock.close()
    lines = messages(caplog.records, "evicted from its handshake")
    assert len(lines) == evicted
    assert {record.levelno for record in lines} == {logging.INFO}  # Net::Server level 3
    assert not messages(caplog.records, "timed out")
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]


class Gate(GServer):
    """Each session says ``in`` and ends when its client sends a line; counts handshakes."""

    negotiated = 0

    def post_accept(self, client: Any) -> None:
        super().post_accept(client)
        self.negotiated += 1

    def process_request(self, client: Any) -> None:
        client.sendall(b"in\n")
        client.sendall(b"bye " + client.readline())


@pytest.mark.timeout(30)
def test_the_wait_for_a_session_slot_is_bounded(
    serve: Any, certs: dict[str, str], client_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    wait = 1.5
    server = serve(Gate, port="127.0.0.1:0/ssl", max_servers=1, max_handshakes=1,
                   timeout_session_wait=wait, log_level=3, **certs)
    first = tls_connect(server, client_context)
    waiting = silent = None
    try:
        first.settimeout(5)
        assert first.recv(100) == b"in\n"
        waiting = tls_connect(server, client_context, timeout=10)
        started = time.monotonic()
        wait_until(lambda: server.negotiated == 2, what="the server's side of the handshake")
        # The pool is full (one session, one waiting): a silent socket stays in the backlog
        # and the waiting client, past its handshake, is not evicted for it.
        silent = socket.create_connection(address(server), timeout=5)
        assert read_until_eof(waiting) == b""  # closed by the server, nothing served
        waited = time.monotonic() - started
        assert waited >= wait - 0.3, waited
        assert waited < wait + 5, waited
        assert server.personality.session_wait_timeouts == 1
        assert server.personality.evictions == 0
        first.sendall(b"one\n")  # the session holding the slot was never disturbed
        assert first.recv(100) == b"bye one\n"
    finally:
        for sock in (first, waiting, silent):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
    assert poll(lambda: messages(caplog.records, "no session slot freed within 1.5s"), 5)
    lines = messages(caplog.records, "no session slot freed")
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
