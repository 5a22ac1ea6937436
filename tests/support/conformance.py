"""The server and the real clients the conformance suite runs over every stream proto.

:class:`ConformanceServer` answers one command per connection (its first line), each exercising
one part of the stream contract; :class:`Endpoint` starts it on one proto and connects real
blocking clients to it: plain sockets for tcp/unix, stdlib ``ssl`` for ssl/ssleay, and
pyOpenSSL where a client must send close_notify and keep reading (the stdlib cannot).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

import trustme
from OpenSSL import SSL

from gnetserver import GServer
from gnetserver.client import Client
from support.net import open_stream, read_until_eof
from support.tls import trusting, write_leaf

PROTOS = ("tcp", "unix", "ssl", "ssleay")
TLS_PROTOS = ("ssl", "ssleay")
MIB = 1 << 20
WAIT = 5.0  # bound of every blocking client step; tests normally take milliseconds


class ConformanceServer(GServer):
    """Reads one command line, then serves it (see the ``do_*`` methods)."""

    def process_request(self, client: Client) -> None:
        """Dispatch on the first word of the first line (``ECHO``, ``BULK n``...)."""
        words = client.readline().decode().split()
        if words:
            getattr(self, f"do_{words[0].lower()}")(client, *words[1:])

    def do_echo(self, client: Client) -> None:
        """Answer each line with ``echo: <line>`` until ``quit``."""
        for line in client:
            client.sendall(b"echo: " + line)
            if line.strip() == b"quit":
                break

    def do_bulk(self, client: Client, size: str) -> None:
        """Read exactly ``size`` bytes with recv_into, answer their sha256, send them back."""
        data = bytearray(int(size))
        view, got = memoryview(data), 0
        while got < len(data):
            count = client.recv_into(view[got:])
            if not count:
                raise ConnectionError(f"EOF after {got} of {len(data)} bytes")
            got += count
        client.sendall(hashlib.sha256(data).hexdigest().encode() + b"\n")
        client.sendall(data)

    def do_eof(self, client: Client) -> None:
        """Read until the peer's EOF (half-close or close_notify), answer the count and hash."""
        digest, count = hashlib.sha256(), 0
        while chunk := client.recv(65536):
            digest.update(chunk)
            count += len(chunk)
        client.sendall(f"{count} {digest.hexdigest()}\n".encode())

    def do_file(self, client: Client) -> None:
        """Binary then text files from makefile(): one line read and answered through each."""
        binary = client.makefile("rwb")
        binary.write(b"file: " + binary.readline())
        binary.flush()
        reader = client.makefile("r", encoding="utf-8")
        writer = client.makefile("w", encoding="utf-8")
        writer.write(reader.readline().upper())
        writer.flush()

    def do_facts(self, client: Client) -> None:
        """Answer the client's facts as one JSON line."""
        facts: dict[str, Any] = {name: getattr(client, name) for name in (
            "proto", "peeraddr", "peerport", "sockaddr", "sockport")}
        if client.tls is not None:  # the Client's TLS facts, whichever backend is below
            facts.update(version=client.tls_version, cipher=client.cipher,
                         server_name=client.server_name, alpn_protocol=client.alpn_protocol,
                         session_reused=client.session_reused, peer_subject=client.peer_subject,
                         peer_issuer=client.peer_issuer)
        client.sendall(json.dumps(facts).encode() + b"\n")

    def do_spew(self, client: Client, size: str) -> None:
        """Send ``size`` bytes and return without reading what the peer sent meanwhile."""
        client.sendall(pattern(int(size)))

    def do_flood(self, client: Client, size: str) -> None:
        """Send ``size`` bytes in 64 KiB writes (to a peer that reads nothing, a write then
        waits for room until ``timeout_idle`` cuts it)."""
        chunk = b"x" * 65536
        for _ in range(int(size) // len(chunk)):
            client.sendall(chunk)


def pattern(size: int) -> bytes:
    """``size`` recognisable bytes (a counter), so truncation or reordering shows."""
    block = b"".join(struct.pack(">I", i) for i in range(16384))
    return (block * (size // len(block) + 1))[:size]


def read_exactly(sock: Any, size: int) -> bytes:
    """Exactly ``size`` bytes, or fewer if the peer closes first."""
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(min(65536, size - len(data)))
        if not chunk:
            break
        data += chunk
    return bytes(data)


class Endpoint:
    """A started server on one proto, and how to reach it.

    Args:
        server: the started server.
        proto: its proto (tcp, unix, ssl or ssleay).
        ca: the CA that issued the server certificate (TLS protos).
        ca_file: that CA's certificate as a PEM file.
    """

    def __init__(self, server: GServer, proto: str, ca: trustme.CA, ca_file: str) -> None:
        self.server, self.proto, self.ca, self.ca_file = server, proto, ca, ca_file

    @property
    def tls(self) -> bool:
        """True on the TLS protos (ssl, ssleay)."""
        return self.proto in TLS_PROTOS

    def raw(self, timeout: float = WAIT) -> socket.socket:
        """A connected plain socket (TCP or UNIX) to the server's first listener."""
        bound = self.server.listeners[0].bound
        return open_stream(bound if self.proto == "unix" else bound[:2], timeout)

    def client_context(self, **settings: Any) -> ssl.SSLContext:
        """A stdlib client context trusting the CA; ``settings`` are set as attributes
        (``maximum_version=...``), ``alpn=[...]`` and ``cert=LeafCert`` are applied too."""
        return trusting(self.ca, **settings)

    def connect(self, context: ssl.SSLContext | None = None, server_hostname: str = "localhost",
                session: ssl.SSLSession | None = None, timeout: float = WAIT) -> Any:
        """A connected client: a plain socket, or a stdlib TLS socket after its handshake."""
        sock = self.raw(timeout)
        if not self.tls:
            return sock
        try:
            return (context or self.client_context()).wrap_socket(
                sock, server_hostname=server_hostname, session=session)
        except BaseException:
            sock.close()
            raise

    def half_close_exchange(self, request: bytes, payload: bytes) -> bytes:
        """Send ``request`` + ``payload``, half-close (TCP FIN, or a TLS close_notify with the
        connection kept open for reading), then return everything the server answers."""
        sock = self.raw()
        if not self.tls:
            with sock:
                sock.sendall(request + payload)
                sock.shutdown(socket.SHUT_WR)
                return read_until_eof(sock)
        return _openssl_half_close(sock, self.ca_file, request + payload)


def _openssl_half_close(sock: socket.socket, ca_file: str, data: bytes) -> bytes:
    """The TLS half-close with pyOpenSSL on a blocking socket (SO_RCVTIMEO bounds reads)."""
    sock.settimeout(None)
    limit = struct.pack("ll", int(WAIT), 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, limit)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, limit)
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_verify(SSL.VERIFY_PEER)
    context.load_verify_locations(ca_file)
    conn = SSL.Connection(context, sock)
    conn.set_tlsext_host_name(b"localhost")
    conn.set_connect_state()
    chunks = []
    try:
        conn.do_handshake()
        conn.sendall(data)
        conn.shutdown()  # sends close_notify; reading stays allowed
        while True:
            try:
                chunks.append(conn.recv(65536))
            except SSL.ZeroReturnError:
                break
    finally:
        sock.close()
    return b"".join(chunks)


def issue_files(ca: trustme.CA, folder: str, name: str, *hosts: str) -> dict[str, str]:
    """Write a leaf certificate (with chain) and key for ``hosts``; return their paths."""
    files = write_leaf(ca.issue_cert(*hosts), os.path.join(folder, f"{name}.pem"),
                       os.path.join(folder, f"{name}.key"))
    return {"cert": files["SSL_cert_file"], "key": files["SSL_key_file"]}


StartServer = Callable[..., Endpoint]


def make_starter(proto: str, serve: Callable[..., GServer], ca: trustme.CA,
                 certs: dict[str, str], folder: str) -> StartServer:
    """A function starting ``ConformanceServer`` (or a given class) on ``proto`` with the
    test certificate and returning its :class:`Endpoint`; unix sockets go in ``folder``."""
    ca_file = os.path.join(folder, "ca.pem")
    ca.cert_pem.write_to_path(ca_file)
    count = 0

    def start(server_class: type[GServer] = ConformanceServer, **options: Any) -> Endpoint:
        nonlocal count
        count += 1
        if proto == "unix":
            options.setdefault("port", f"{folder}/s{count}.sock|unix")
        else:
            options.setdefault("port", f"127.0.0.1:0/{proto}")
        if proto in TLS_PROTOS and "SSL_cert" not in options:
            options = {**certs, **options}
        options.setdefault("log_level", 3)
        return Endpoint(serve(server_class, **options), proto, ca, ca_file)

    return start
