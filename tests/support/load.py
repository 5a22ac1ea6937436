"""A TLS load for the restart tests: client threads doing one request per connection, each
request recorded (how far it got, the response or the error)."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .net import read_until_eof


@dataclass
class Record:
    """One request: how far it got (connect, handshake, sent), what came back, when, and the
    client's local port (None if the connect failed)."""

    payload: str
    stage: str
    response: str | None
    error: BaseException | None
    started: float
    ended: float
    port: int | None = None


class Load:
    """``clients`` threads doing one TLS request per connection (``delay`` and a payload sent,
    the response read to EOF) in a loop until :meth:`finish`.

    With ``stop_on_error`` a client stops at its first failed request (used once the server
    is told to quit, so the load ends when the port closes).
    """

    def __init__(self, where: tuple[Any, ...], context: ssl.SSLContext,
                 delay: float, stop_on_error: bool = False, clients: int = 20) -> None:
        self.address, self.context, self.delay = where[:2], context, delay
        self.stop_on_error = stop_on_error
        self.records: list[Record] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                         for i in range(clients)]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def finish(self, timeout: float = 20.0) -> list[Record]:
        self._stop.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        assert not any(t.is_alive() for t in self._threads), "clients did not stop in time"
        return self.records

    def count(self, test: Callable[[Record], bool] = lambda r: r.response is not None) -> int:
        with self._lock:
            return sum(1 for r in self.records if test(r))

    def _client(self, index: int) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            record = self._request(f"c{index}-r{number}")
            with self._lock:
                self.records.append(record)
            if record.error is not None and self.stop_on_error:
                return

    def _request(self, payload: str) -> Record:
        stage, started, port = "connect", time.monotonic(), None
        try:
            raw = socket.create_connection(self.address, timeout=15)
            port = raw.getsockname()[1]
            try:
                stage = "handshake"
                tls = self.context.wrap_socket(raw, server_hostname="localhost")
            except BaseException:
                raw.close()
                raise
            with tls:
                stage = "sent"
                tls.sendall(f"{self.delay} {payload}\n".encode())
                response = read_until_eof(tls).decode()
            return Record(payload, stage, response, None, started, time.monotonic(), port)
        except (OSError, ssl.SSLError) as exc:
            return Record(payload, stage, None, exc, started, time.monotonic(), port)
