"""The load generator of bench/echo_tls.py: one process, greenlets, the stdlib ``ssl`` module
through ``gevent.ssl`` (cooperative without monkey-patching), the certificate not verified so
the client spends as little CPU as a TLS client can."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gevent
import gevent.socket
from gevent import ssl as gssl
from gevent.pool import Pool
from servers import raise_fd_limit

CONNECT_TIMEOUT = 10.0


@dataclass
class Load:
    """What one measurement did: operations, wall time, and CPU seconds on both sides."""

    ops: int
    seconds: float
    server_cpu: float
    client_cpu: float
    resumed: int = 0

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_op_us(self) -> float:
        return self.server_cpu / self.ops * 1e6 if self.ops else float("nan")

    @property
    def server_busy(self) -> float:
        return 100 * self.server_cpu / self.seconds if self.seconds else 0.0

    @property
    def client_busy(self) -> float:
        return 100 * self.client_cpu / self.seconds if self.seconds else 0.0


def client_cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class LoadGenerator:
    """Drives a :class:`~servers.ServerProcess` and measures it (its CPU from /proc)."""

    def __init__(self, payload_size: int = 64) -> None:
        self.payload_size = payload_size
        raise_fd_limit()  # the idle-memory measurement holds over a thousand connections
        self.context = gssl.SSLContext(gssl.PROTOCOL_TLS_CLIENT)
        self.context.check_hostname = False
        self.context.verify_mode = gssl.CERT_NONE
        self.session_facts = "?"

    @property
    def payload(self) -> bytes:
        return b"x" * (self.payload_size - 1) + b"\n"

    # -- one connection --------------------------------------------------------------------

    def connect(self, address: tuple[str, int]) -> Any:
        raw = gevent.socket.create_connection(address, timeout=CONNECT_TIMEOUT)
        # As h2load and wrk do: the client's own small writes are never held back by Nagle.
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            return self.context.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise

    @staticmethod
    def echo(sock: Any, payload: bytes) -> None:
        """One round-trip: the line out, the same number of bytes back."""
        sock.sendall(payload)
        got = sock.recv(65536)
        while len(got) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-echo")
            got += chunk
        if got != payload:
            raise ValueError(f"echo mismatch: sent {len(payload)} bytes, got {got[:40]!r}")

    def open_many(self, address: tuple[str, int], count: int, deadline: float) -> list[Any]:
        """``count`` connections (16 handshakes at a time), each after one echo."""
        socks: list[Any] = []

        def open_one(_: int) -> None:
            if time.monotonic() < deadline:
                sock = self.connect(address)
                socks.append(sock)
                self.echo(sock, self.payload)

        Pool(16).map(open_one, range(count))
        return socks

    # -- measurements ------------------------------------------------------------------------

    def _timed(self, proc: Any, body: Callable[[], int]) -> tuple[int, float, float, float]:
        cpu0, client0, t0 = proc.cpu_seconds(), client_cpu_seconds(), time.perf_counter()
        ops = body()
        seconds = time.perf_counter() - t0
        return ops, seconds, proc.cpu_seconds() - cpu0, client_cpu_seconds() - client0

    def keepalive(self, proc: Any, connections: int, requests: int, timeout: float,
                  depth: int = 1) -> Load:
        """N persistent connections, each doing M round-trips with ``depth`` lines in flight
        (one TLS record each); stops early at the timeout."""
        socks = self.open_many(proc.address, connections, time.monotonic() + timeout)
        counts = [0] * len(socks)

        def body() -> int:
            deadline = time.monotonic() + timeout
            workers = [gevent.spawn(self._pipeline, sock, requests, depth, deadline, counts, i)
                       for i, sock in enumerate(socks)]
            gevent.joinall(workers, raise_error=True)
            return sum(counts)

        try:
            return Load(*self._timed(proc, body))
        finally:
            for sock in socks:
                sock.close()

    def _pipeline(self, sock: Any, requests: int, depth: int, deadline: float,
                  counts: list[int], index: int) -> None:
        """Keep ``depth`` lines in flight until ``requests`` came back (or the deadline)."""
        payload, size = self.payload, self.payload_size
        sent = min(depth, requests)
        for _ in range(sent):
            sock.sendall(payload)
        received, pending = 0, 0
        while received < sent:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("server closed the connection mid-echo")
            lines, pending = divmod(pending + len(chunk), size)
            received += lines
            counts[index] = received
            more = min(lines, requests - sent) if time.monotonic() < deadline else 0
            for _ in range(more):
                sock.sendall(payload)
            sent += more

    def handshakes(self, proc: Any, total: int, concurrency: int, timeout: float) -> Load:
        """Fresh connections (full handshake, one echo, close), ``concurrency`` at a time."""
        done, resumed = [0], [0]

        def worker(deadline: float) -> None:
            while done[0] < total and time.monotonic() < deadline:
                done[0] += 1
                with self.connect(proc.address) as sock:
                    self.echo(sock, self.payload)
                    resumed[0] += sock.session_reused
                    if self.session_facts == "?":
                        self.session_facts = f"{sock.version()} {sock.cipher()[0]}"

        def body() -> int:
            deadline = time.monotonic() + timeout
            gevent.joinall([gevent.spawn(worker, deadline) for _ in range(concurrency)],
                           raise_error=True)
            return done[0]

        ops, seconds, server_cpu, client_cpu = self._timed(proc, body)
        return Load(ops, seconds, server_cpu, client_cpu, resumed[0])

    def idle_memory(self, proc: Any, count: int, timeout: float) -> float:
        """Server RSS growth per open, idle TLS connection, in kB."""
        before = proc.rss_kb()
        socks = self.open_many(proc.address, count, time.monotonic() + timeout)
        try:
            return (proc.rss_kb() - before) / len(socks) if socks else float("nan")
        finally:
            for sock in socks:
                sock.close()
