"""Issue 16, point 5: a peer streaming megabytes without a newline cannot make the server buffer
them. Line reads without a limit stop at ``max_line_length`` (64 KiB by default) with
LineTooLong, logged at level 3 without a traceback, and the connection ends.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
from typing import Any

import pytest
from support.net import address, read_until_eof, tls_connect, wait_until

from gnetserver import GServer
from gnetserver.client import MAX_LINE_LENGTH
from gnetserver.errors import LineTooLong

STREAMED = 4 * 1024 * 1024  # stands for the 100 MiB of the report: the bound is what counts
CHUNK = 64 * 1024


class Lines(GServer):
    """Echoes lines read the way ``reader`` says; notes what it held when a line was too long."""

    reader = "iter"

    def configure_hook(self) -> None:
        self.too_long: list[tuple[int, int]] = []  # (limit, bytes buffered by the client)

    def process_request(self, client: Any) -> None:
        lines = client if self.reader == "iter" else client.makefile("rb")
        for line in lines:
            client.sendall(line)

    def connection_error(self, client: Any, exc: BaseException) -> None:
        if isinstance(exc, LineTooLong):
            self.too_long.append((exc.limit, len(client._rbuf)))
        super().connection_error(client, exc)


def stream_without_newline(sock: Any) -> None:
    """Send STREAMED bytes with no line end; the server may cut us off (reset) on the way."""
    block = b"x" * CHUNK
    with contextlib.suppress(OSError):
        for _ in range(STREAMED // CHUNK):
            sock.sendall(block)


@pytest.mark.timeout(30)
@pytest.mark.parametrize(("proto", "reader"), [("tcp", "iter"), ("ssl", "iter"),
                                               ("tcp", "makefile")])
def test_a_line_without_end_is_cut_at_max_line_length(
    serve: Any, certs: dict[str, str], client_context: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture, proto: str, reader: str,
) -> None:
    tls = certs if proto == "ssl" else {}
    server = serve(type("Lines", (Lines,), {"reader": reader}), port=f"127.0.0.1:0/{proto}",
                   log_level=3, **tls)
    assert server.conf.max_line_length == MAX_LINE_LENGTH  # the default bound applies
    sock: Any = (tls_connect(server, client_context, timeout=10) if proto == "ssl"
                 else socket.create_connection(address(server), timeout=10))
    try:
        sock.sendall(b"short\n")
        assert sock.recv(100) == b"short\n"  # normal lines still pass
        stream_without_newline(sock)
        with contextlib.suppress(OSError):
            assert read_until_eof(sock) == b""  # the connection ended, nothing echoed
    finally:
        sock.close()
    wait_until(lambda: [r for r in caplog.records if "LineTooLong" in r.getMessage()],
               what="the LineTooLong log line")
    lines = [r for r in caplog.records if "LineTooLong" in r.getMessage()]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO  # Net::Server level 3
    assert f"{MAX_LINE_LENGTH} bytes" in lines[0].getMessage()
    assert not [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert [limit for limit, _ in server.too_long] == [MAX_LINE_LENGTH]
    if reader == "iter":  # what the client held: the bound plus at most one read
        assert server.too_long[0][1] <= MAX_LINE_LENGTH + 65536
