"""The server's metrics collaborator (``GServer.metrics``) and what it counts.

Rules of this module:

* :class:`Metrics` is the interface the server calls at a connection's events: its start and
  end, the end of its TLS handshake (done or failed, and why), a denial, the session slot,
  the session's end (bytes), reloads, dropped syslog lines, the served certificates, ACME
  orders. This base
  records nothing: it is the collaborator of a server without ``metrics_port``, so the calls
  cost a method call each and nothing more. :class:`gnetserver.metrics_prometheus.
  PrometheusMetrics` records them with prometheus-client; the server imports it only when
  ``metrics_port`` is set.
* Counting happens at a connection's start and end and at its handshake's end, never per read
  or write: bytes come from the kernel's TCP_INFO (:func:`tcp_bytes`), read once per session.
* The scrape (:func:`answer_scrape`) is a minimal HTTP/1.x responder for ``GET /metrics``:
  one request per connection, read with bounds (line length, header count, a deadline), then
  ``Connection: close``. Rendering the exposition is CPU only (no I/O in the hub but the
  socket's; under PreFork, reading the small per-process files in a private directory).
* Certificate expiry is decided by the pure :func:`expiring` (start, reload, daily); the server
  logs the level-1 lines, the collaborator sets the gauges.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, ClassVar

from .errors import HandshakeTimeout

__all__ = ["Metrics", "ServedCertificate", "answer_scrape", "expiring", "failure_reason",
           "tcp_bytes"]

#: ``struct tcp_info`` (linux/tcp.h): tcpi_bytes_acked at byte 120, tcpi_bytes_received at
#: 128 (both u64, since Linux 4.1/4.2); the buffer asked for covers them.
_TCP_INFO_SIZE = 136
_BYTES_AT = 120
_TCP_INFO = getattr(socket, "TCP_INFO", None)

#: Bounds of a scrape request: one line, how many header lines, seconds for the whole head.
SCRAPE_LINE_LIMIT = 8192
SCRAPE_HEADER_LINES = 100
SCRAPE_TIMEOUT = 10.0

_NULL = contextlib.nullcontext()


@dataclass(frozen=True)
class ServedCertificate:
    """One certificate a TLS port serves.

    Attributes:
        port: the listening port (its number, or a unix socket's path) as the metrics label it.
        sni: the SNI name it is served for ('' for the default certificate).
        not_after: when it expires (Unix time).
        subject: its subject (RFC 4514), for the log line.
    """

    port: str
    sni: str
    not_after: float
    subject: str


def expiring(served: Sequence[ServedCertificate], days: float,
             now: float | None = None) -> list[ServedCertificate]:
    """The certificates of ``served`` that expire within ``days`` days of ``now`` (or have
    expired); none when ``days`` is 0 (the warning is off)."""
    if days <= 0:
        return []
    limit = (time.time() if now is None else now) + days * 86400
    return [cert for cert in served if cert.not_after <= limit]


def failure_reason(exc: BaseException) -> str:
    """The ``reason`` label of a failed TLS handshake's exception (see
    :data:`gnetserver.metric_names.FAILURE_REASONS`): the timeout, the peer's close, or
    OpenSSL's reason read from the message (both backends name it the same way)."""
    if isinstance(exc, HandshakeTimeout):
        return "timeout"
    if isinstance(exc, (ConnectionAbortedError, ConnectionResetError, BrokenPipeError)):
        return "peer_closed"
    text = str(exc).lower()
    if "no shared cipher" in text or "no suitable signature" in text:
        return "no_shared_cipher"
    if ("certificate" in text and ("peer did not return" in text or "verify failed" in text
                                   or "required" in text or "unknown ca" in text
                                   or "bad certificate" in text)):
        return "client_cert_refused"
    if "unexpected eof" in text or "connection reset" in text:
        return "peer_closed"
    return "protocol_error"


def tcp_bytes(sock: Any) -> tuple[int, int] | None:
    """``(received, sent and acknowledged)`` TCP payload bytes of a connected TCP socket, from
    TCP_INFO (one getsockopt); None where the kernel does not say (not Linux, not TCP, the
    socket closed)."""
    if _TCP_INFO is None:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_SIZE)
    except (OSError, AttributeError, ValueError):
        return None
    if len(info) < _TCP_INFO_SIZE:
        return None
    acked, received = struct.unpack_from("=QQ", info, _BYTES_AT)
    return received, acked


class Metrics:
    """The server's metrics (see the module rules); this base records nothing.

    Every method is called by the server (any greenlet of its hub; under PreFork, any
    process) and never raises for a bad label or a closed socket: metrics must not end a
    connection.
    """

    #: True when something is recorded (``metrics_port`` is set).
    enabled: ClassVar[bool] = False

    def connection(self, listener: Any) -> contextlib.AbstractContextManager[Any]:
        """Held for a connection's whole life: counts it accepted, and active meanwhile."""
        return _NULL

    def session(self, slot: contextlib.AbstractContextManager[Any]
                ) -> contextlib.AbstractContextManager[Any]:
        """``slot`` (the personality's session slot), counted: waiting for it, then in use."""
        return slot

    def handshake_done(self, client: Any, started: float) -> None:
        """A TLS handshake completed (``started``: ``time.perf_counter()`` at the accept):
        its duration, version, cipher, whether it resumed a session. Plain ports: nothing."""

    def handshake_failed(self, listener: Any, reason: str) -> None:
        """A TLS handshake failed (``reason``: :func:`failure_reason`'s, or
        ``denied_before_tls``, ``evicted``)."""

    def denied(self, listener: Any) -> None:
        """A connection refused by the access rules or allow_deny_hook."""

    def accept_failed(self, listener: Any) -> None:
        """An ``accept()`` on ``listener`` failed for want of resources (EMFILE, ...)."""

    def session_ended(self, client: Any) -> None:
        """A session ends (before its close): its bytes in and out (:func:`tcp_bytes`)."""

    def reloaded(self, ok: bool) -> None:
        """A reload ended: ``ok`` True when the new configuration or certificates are used."""

    def log_dropped(self, count: int = 1) -> None:
        """Syslog had no room for ``count`` log lines."""

    def certificates(self, served: Sequence[ServedCertificate],
                     expiring: Sequence[ServedCertificate]) -> None:
        """The served certificates (start, reload, daily) and those about to expire."""

    def acme_order(self, result: str) -> None:
        """An ACME order ended (``result``: ``issued``, ``renewed`` or ``failed``)."""

    def worker_ended(self, pid: int) -> None:
        """PreFork, in the parent: worker ``pid`` was reaped (its live gauges go)."""

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The metrics in the text format the ``Accept`` header asks for: (body, type)."""
        return b"", "text/plain; version=0.0.4; charset=utf-8"

    def close(self) -> None:
        """The server closes: release what the metrics hold (PreFork: the directory)."""


def answer_scrape(client: Any, metrics: Metrics, timeout: float = SCRAPE_TIMEOUT) -> int:
    """Read one HTTP request from ``client`` (bounded, see the module rules) and answer it:
    ``GET``/``HEAD /metrics`` (any query) with the exposition, else 404 or 405; always
    ``Connection: close``. Returns the status sent (408 when the head did not come in time:
    the answer is attempted, the caller closes). Raises OSError when the peer went away."""
    client.settimeout(timeout)
    deadline = time.monotonic() + timeout
    accept, request = "", b""
    try:
        request = client.readline(SCRAPE_LINE_LIMIT)
        status = 400 if not request.endswith(b"\n") else 0
        for _ in range(SCRAPE_HEADER_LINES):
            if status:
                break
            if time.monotonic() > deadline:  # lines trickling in: the head came too late
                status = 408
                break
            line = client.readline(SCRAPE_LINE_LIMIT)
            if not line.endswith(b"\n"):
                status = 400
            elif line in (b"\r\n", b"\n"):
                break
            else:
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "accept":
                    accept = value.strip()
        else:
            status = status or 431
    except TimeoutError:
        status = 408
    parts = request.decode("latin-1").split() if status != 408 else []
    if not status:
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            status = 400
        elif parts[1].split("?", 1)[0] != "/metrics":
            status = 404
        elif parts[0] not in ("GET", "HEAD"):
            status = 405
        else:
            status = 200
    body, content_type = (metrics.exposition(accept) if status == 200
                          else (f"{status} {HTTPStatus(status).phrase}\n".encode(), "text/plain"))
    head = (f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n"
            + ("Allow: GET, HEAD\r\n" if status == 405 else "") + "\r\n").encode("latin-1")
    client.sendall(head if parts[:1] == ["HEAD"] else head + body)
    return status
