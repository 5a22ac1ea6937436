"""Reaching a started server over real sockets, and waiting for a condition with a deadline."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from gnetserver import GServer

#: The names the test certificate (the ``certs`` fixture) is valid for.
HOSTS = ("localhost", "127.0.0.1", "::1")


def ipv6_available() -> bool:
    """True when a socket can be bound on ::1."""
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


IPV6 = ipv6_available()
needs_ipv6 = pytest.mark.skipif(not IPV6, reason="no IPv6 loopback on this machine")


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port of ``host`` (IPv4) nobody uses now: the kernel's choice, released at once, for a
    program that takes no port 0 (a balancer, a CA, systemd-socket-activate) to bind."""
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def address(server: GServer, index: int = 0) -> tuple[str, int]:
    """(host, port) of a server's listener."""
    bound = server.listeners[index].bound
    return bound[0], bound[1]


def tls_connect(server: GServer, context: ssl.SSLContext, index: int = 0,
                server_hostname: str = "localhost", timeout: float = 5.0) -> ssl.SSLSocket:
    """A real stdlib TLS client connected to a listener of the server."""
    raw = socket.create_connection(address(server, index), timeout=timeout)
    try:
        return context.wrap_socket(raw, server_hostname=server_hostname)
    except BaseException:
        raw.close()
        raise


def open_stream(where: tuple[str, int] | str, timeout: float) -> socket.socket:
    """A connected plain stream socket: TCP to ``(host, port)``, UNIX to a path."""
    if not isinstance(where, str):
        return socket.create_connection(where, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(where)
    except BaseException:
        sock.close()
        raise
    return sock


def echo_line(where: tuple[str, int] | str, context: ssl.SSLContext | None = None) -> str:
    """One Net::Server echo exchange (welcome, ``hello``, ``quit``), over TLS with
    ``context``; the answer line."""
    with open_stream(where, 5) as raw:
        sock = raw if context is None else context.wrap_socket(raw,
                                                                 server_hostname="localhost")
        with sock:
            reader = sock.makefile("rb")
            reader.readline()
            sock.sendall(b"hello\r\n")
            line = reader.readline().decode()
            sock.sendall(b"quit\r\n")
            return line


def read_until_eof(sock: Any, limit: int = 1 << 22) -> bytes:
    """Everything the peer sends until it closes (close_notify or TCP EOF)."""
    chunks, size = [], 0
    while size < limit:
        try:
            chunk = sock.recv(65536)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_line(sock: Any) -> bytes:
    """One line, read byte by byte (so nothing after it is consumed); short at EOF."""
    line = bytearray()
    while not line.endswith(b"\n"):
        byte = sock.recv(1)
        if not byte:
            break
        line += byte
    return bytes(line)


def poll(condition: Callable[[], Any], timeout: float = 5.0, interval: float = 0.01) -> Any:
    """The first truthy value of ``condition()``, or its last (falsy) one once ``timeout``
    seconds have passed. The condition itself is the synchronisation: the short sleep between
    two calls only paces the polling."""
    deadline = time.monotonic() + timeout
    while not (value := condition()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value


def wait_until(condition: Callable[[], Any], timeout: float = 10.0,
               what: str = "condition") -> Any:
    """Like :func:`poll`, but an AssertionError naming ``what`` when time runs out."""
    value = poll(condition, timeout)
    if not value:
        raise AssertionError(f"timed out waiting for {what}")
    return value


class PeerThread(threading.Thread):
    """Runs ``fn(port)`` in a plain thread (the other end of a connection a test serves in its
    own hub); :meth:`result` joins within ``wait`` seconds and returns or re-raises."""

    def __init__(self, fn: Callable[[int], Any], port: int, wait: float = 5.0) -> None:
        super().__init__(daemon=True)
        self._fn, self._port, self._wait = fn, port, wait
        self._result: Any = None
        self._error: Exception | None = None

    def run(self) -> None:
        try:
            self._result = self._fn(self._port)
        except Exception as e:  # handed to the test's thread by result()
            self._error = e

    def result(self) -> Any:
        self.join(self._wait)
        assert not self.is_alive(), "peer thread hung"
        if self._error is not None:
            raise self._error
        return self._result
