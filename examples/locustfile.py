"""Load-test the TLS echo server with locust, speaking raw TLS lines (no HTTP).

Start the server, then a bounded, headless run (20 users, 10 started per second, 10 seconds)::

    python examples/echo_server.py &
    locust -f examples/locustfile.py --headless -u 20 -r 10 -t 10s --host 127.0.0.1:8443

``pip install locust`` first (it is not a gnetserver dependency). Target loopback or a server
you own; always bound the run with ``-t``.

Each user keeps one TLS connection and sends lines on it; now and then it reconnects, which
costs a full handshake (no session is resumed). Three operations are reported to locust, each
timed on its own through ``events.request.fire``: ``connect`` (TCP connect + TLS handshake),
``echo`` (one line out, the same line back) and ``close``.

The client is the stdlib ``ssl`` module, which locust's gevent monkey-patching makes
cooperative (pyOpenSSL, which no monkey patch makes cooperative, would block the whole
worker). The certificate is not
verified unless ``LOCUST_TLS_CAFILE`` names a CA file (then the host name is checked against
``LOCUST_TLS_SERVER_NAME``, default the host of ``--host``). ``--host`` is ``host:port``,
``[v6addr]:port`` or ``tls://host:port``.
"""

from __future__ import annotations

import os
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

from locust import User, between, task

TIMEOUT = 5.0


def parse_host(host: str | None) -> tuple[str, int]:
    """``host:port``, ``[::1]:port`` or ``tls://host:port`` -> (host, port)."""
    if not host:
        raise ValueError("give the server with --host HOST:PORT, e.g. --host 127.0.0.1:8443")
    text = host.split("://", 1)[-1].rstrip("/")
    name, _, port = text.rpartition(":")
    if not name or not port.isdigit():
        raise ValueError(f"--host {host!r}: expected HOST:PORT")
    return name.strip("[]"), int(port)


def client_context() -> ssl.SSLContext:
    """Verify against LOCUST_TLS_CAFILE when set; else accept any certificate (self-signed)."""
    cafile = os.environ.get("LOCUST_TLS_CAFILE")
    context = ssl.create_default_context(cafile=cafile)
    if not cafile:
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    return context


class TLSLineClient:
    """One TLS connection speaking lines; every operation fires one locust request event."""

    def __init__(self, host: str, port: int, fire: Callable[..., Any]) -> None:
        self.host, self.port, self._fire = host, port, fire
        self.context = client_context()
        self.server_name = os.environ.get("LOCUST_TLS_SERVER_NAME", host)
        self.sock: ssl.SSLSocket | None = None
        self.reader: Any = None

    def _measure(self, name: str, operation: Callable[[], int]) -> None:
        """Time one operation and report it (failures too, with their exception)."""
        started, length, error = time.perf_counter(), 0, None
        try:
            length = operation()
        except Exception as exc:  # reported to locust, never raised into the user
            error = exc
            self._drop()
        elapsed_ms = (time.perf_counter() - started) * 1000
        self._fire(request_type="TLS", name=name, response_time=elapsed_ms,
                   response_length=length, exception=error, context={})

    def connect(self) -> None:
        def operation() -> int:
            raw = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
            try:
                self.sock = self.context.wrap_socket(raw, server_hostname=self.server_name)
            except BaseException:
                raw.close()
                raise
            self.reader = self.sock.makefile("rb")
            return 0

        self._measure("connect", operation)

    def echo(self, payload: bytes) -> None:
        def operation() -> int:
            if self.sock is None:
                raise ConnectionError("not connected")
            self.sock.sendall(payload)
            answer = self.reader.readline()
            if answer != payload:
                raise ValueError(f"sent {payload[:40]!r}, got back {answer[:40]!r}")
            return len(answer)

        self._measure("echo", operation)

    def close(self) -> None:
        if self.sock is not None:
            self._measure("close", self._close)

    def _close(self) -> int:
        sock, self.sock = self.sock, None
        if sock is not None:
            self.reader.close()
            sock.close()
        return 0

    def _drop(self) -> None:
        try:
            self._close()
        except OSError:
            pass


class TLSEchoUser(User):
    """Sends lines over one kept-alive TLS connection; reconnects now and then."""

    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        host, port = parse_host(self.host)
        self.client = TLSLineClient(host, port, self.environment.events.request.fire)
        self.client.connect()
        self.count = 0

    @task(20)
    def echo(self) -> None:
        if self.client.sock is None:
            self.client.connect()  # the last operation failed: start over
        self.count += 1
        self.client.echo(f"line {self.count} from a locust user\n".encode())

    @task(1)
    def reconnect(self) -> None:
        self.client.close()
        self.client.connect()  # a full handshake: the new connection resumes nothing

    def on_stop(self) -> None:
        self.client.close()
