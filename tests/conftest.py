"""Shared fixtures: a trustme CA, certificate files, servers in threads, real clients."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme

from gnetserver import GServer
from gnetserver.testing import ServerThread

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


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PEM files of a server certificate for localhost/127.0.0.1/::1: cert (with chain), key."""
    folder = tmp_path_factory.mktemp("certs")
    leaf = ca.issue_cert(*HOSTS)
    cert, key = folder / "cert.pem", folder / "key.pem"
    leaf.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    return {"SSL_cert_file": str(cert), "SSL_key_file": str(key)}


@pytest.fixture(scope="session")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


@pytest.fixture
def serve() -> Iterator[Callable[..., GServer]]:
    """Start servers in background threads; every one is stopped at teardown."""
    threads: list[ServerThread] = []

    def start(server: GServer | type[GServer] = GServer, **options: Any) -> GServer:
        if isinstance(server, type):
            server = server(**options)
        thread = ServerThread(server).start()
        threads.append(thread)
        return server

    yield start
    for thread in reversed(threads):
        thread.stop()


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


def read_until_eof(sock: Any, limit: int = 1 << 22) -> bytes:
    """Everything the peer sends until it closes."""
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

