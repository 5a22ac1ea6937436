"""One real handshake against a context from ``build_context``: the server side runs in this
thread's gevent hub (a ``TLSConnection`` on an accepted gevent socket), a stdlib ``ssl``
client in a plain thread. Used by the test_tls_context_*.py modules."""

from __future__ import annotations

import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent.socket as gsocket
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL

from gnetserver.errors import ConfigError, TLSError
from gnetserver.tls import TLSConnection

WHERE = "port 127.0.0.1:8443/ssl"


@dataclass
class Pems:
    """The PEM files of one leaf certificate (the ``pems`` fixture)."""

    cert: Path  # leaf + chain
    key: Path
    combined: Path  # key + leaf + chain in one file
    ca: Path
    leaf: trustme.LeafCert


def write_pems(ca: trustme.CA, folder: Path) -> Pems:
    """A leaf for localhost/127.0.0.1 from ``ca``, written every way build_context reads."""
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    paths = Pems(folder / "cert.pem", folder / "key.pem", folder / "both.pem",
                 folder / "ca.pem", leaf)
    paths.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    paths.key.write_bytes(leaf.private_key_pem.bytes())
    paths.combined.write_bytes(leaf.private_key_and_cert_chain_pem.bytes())
    paths.ca.write_bytes(ca.cert_pem.bytes())
    return paths


def cert_objects(leaf: trustme.LeafCert) -> list[x509.Certificate]:
    """The leaf's chain as cryptography certificates."""
    return [x509.load_pem_x509_certificate(blob.bytes()) for blob in leaf.cert_chain_pems]


def key_object(leaf: trustme.LeafCert) -> Any:
    """The leaf's private key as a cryptography key."""
    return serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)


def assert_names(err: pytest.ExceptionInfo[ConfigError], *parts: str) -> None:
    """The error names WHERE and every one of ``parts``."""
    for part in (WHERE, *parts):
        assert part in str(err.value), (part, str(err.value))


@dataclass
class ServerFacts:
    version: str | None
    cipher: str | None
    reused: bool
    peer: x509.Certificate | None


@dataclass
class ClientFacts:
    version: str | None
    cipher: str
    session: ssl.SSLSession | None


def handshake(
    ctx: SSL.Context, client_ctx: ssl.SSLContext, session: ssl.SSLSession | None = None
) -> tuple[ServerFacts | OSError, ClientFacts | OSError]:
    """Run one real handshake on loopback; return each side's facts or its exception."""
    listener = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(5)
    port = listener.getsockname()[1]
    client: list[ClientFacts | OSError] = []

    def run_client() -> None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                with client_ctx.wrap_socket(raw, server_hostname="localhost", session=session) as s:
                    version, cipher = s.version(), (s.cipher() or ("?",))[0]
                    while s.recv(1024):  # until the server's close (also reads TLS 1.3 tickets)
                        pass
                    client.append(ClientFacts(version, cipher, s.session))
        except OSError as e:  # ssl.SSLError is an OSError
            client.append(e)

    thread = threading.Thread(target=run_client, daemon=True)
    thread.start()
    try:
        sock, _ = listener.accept()
        with TLSConnection(sock, ctx) as conn:
            try:
                conn.do_handshake(5)
                server: ServerFacts | OSError = ServerFacts(
                    conn.version, conn.cipher, conn.session_reused, conn.peer_certificate
                )
            except OSError as e:
                server = e
            conn.shutdown_tls()
    finally:
        listener.close()
        thread.join(5)
    assert not thread.is_alive(), "client thread hung"
    return server, client[0]


def ok(server: ServerFacts | OSError, client: ClientFacts | OSError) -> ServerFacts:
    """Both sides completed the handshake: the server's facts."""
    assert isinstance(server, ServerFacts), server
    assert isinstance(client, ClientFacts), client
    return server


def refused(server: ServerFacts | OSError, client: ClientFacts | OSError) -> TLSError:
    """Both sides failed the handshake: the server's error."""
    assert isinstance(server, TLSError), server
    assert isinstance(client, OSError), client
    return server
