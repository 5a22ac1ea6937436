"""C heap (malloc) per idle server-side TLS session, by TLS library: where idle memory goes.

Handshakes ``--count`` TLS 1.3 sessions in memory (no sockets, no gevent, no gnetserver): a
stdlib ``ssl`` client against a server session of pyOpenSSL (``SSL.Connection`` with memory
BIOs and ``MODE_RELEASE_BUFFERS``, as gnetserver's contexts set) or of the stdlib ``ssl``
module, each session then answers one request and stays open. It prints the growth of the
process's malloc heap (``mallinfo2``, glibc) per session, the clients' share taken out.

pyOpenSSL runs over the OpenSSL that its ``cryptography`` links (the wheel's own), the ``ssl``
module over the interpreter's: run it with both interpreters to compare the two libraries::

    python bench/tls_heap.py                 # the venv: cryptography's bundled OpenSSL
    /usr/bin/python3 bench/tls_heap.py       # Debian's python3-openssl: the system OpenSSL

``--no-tickets`` / ``--no-cache``: pyOpenSSL's context without session tickets / cache.

A third line, ``gnetserver``, makes the pyOpenSSL sessions on the context that gnetserver builds
for a ``/ssl`` port with only a certificate and key given (``gnetserver.tls.context``'s
defaults: its ciphers, groups, session id context, tickets; run from the repository root, or
with the tree on ``PYTHONPATH``): what gnetserver's own settings add to or take from a session.
``--rounds N`` repeats the measurement in A/B/A order (plain, gnetserver, stdlib, then
reversed ...) and prints every round.
"""

from __future__ import annotations

import argparse
import gc
import ssl
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

# servers imports only the stdlib at module level: fine in any interpreter this runs in
from servers import malloc_in_use  # noqa: E402


def heap_bytes() -> int:
    """Bytes in use in the malloc heap (small blocks and mmapped ones)."""
    gc.collect()
    return malloc_in_use()


def _certificate(folder: Path) -> tuple[str, str]:
    try:
        from servers import write_certificate  # the benchmarks' ECDSA P-256 certificate
        return write_certificate(folder, "ecdsa")
    except ImportError:  # an interpreter without this project's dependencies: openssl(1)
        import subprocess
        cert, key = folder / "cert.pem", folder / "key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-subj", "/CN=localhost",
                        "-days", "1", "-keyout", str(key), "-out", str(cert)],
                       check=True, capture_output=True)
        return str(cert), str(key)


def _session(kind: str, server_ctx: Any, client_ctx: ssl.SSLContext) -> tuple[Any, Any]:
    """One handshaken session that answered one request: (server side, client side)."""
    cin, cout = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(cin, cout)
    if kind in ("pyopenssl", "gnetserver"):
        from OpenSSL import SSL
        server = SSL.Connection(server_ctx, None)
        server.set_accept_state()

        def server_out() -> bytes:
            try:
                return bytes(server.bio_read(65536))
            except SSL.WantReadError:
                return b""

        def server_in(data: bytes) -> None:
            server.bio_write(data)

        def server_step() -> None:
            try:
                server.do_handshake()
            except SSL.WantReadError:
                pass
    else:
        sin, sout = ssl.MemoryBIO(), ssl.MemoryBIO()
        server = server_ctx.wrap_bio(sin, sout, server_side=True)
        server_out, server_in = sout.read, sin.write

        def server_step() -> None:
            try:
                server.do_handshake()
            except ssl.SSLWantReadError:
                pass
    for _ in range(10):
        try:
            client.do_handshake()
            done = True
        except ssl.SSLWantReadError:
            done = False
        if data := cout.read():
            server_in(data)
        server_step()
        answer = server_out()
        if answer:
            cin.write(answer)
        if done and not answer:
            break
    client.write(b"GET / HTTP/1.1\r\n\r\n")
    server_in(cout.read())
    if kind in ("pyopenssl", "gnetserver"):
        server.recv(1000)
        server.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    else:
        server.read(1000)
        server.write(b"HTTP/1.1 200 OK\r\n\r\n")
    cin.write(server_out())
    client.read(1000)
    return server, client


def measure(kind: str, count: int, cert: str, key: str, tickets: bool, cache: bool) -> float:
    """kB of C heap per server-side session."""
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname, client_ctx.verify_mode = False, ssl.CERT_NONE
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    server_ctx: Any
    if kind == "gnetserver":
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        from gnetserver.tls.context import build_context
        server_ctx = build_context({"SSL_cert_file": cert, "SSL_key_file": key}, "tls_heap")
    elif kind == "pyopenssl":
        from OpenSSL import SSL
        server_ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        server_ctx.use_certificate_chain_file(cert)
        server_ctx.use_privatekey_file(key)
        server_ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        if not tickets:
            server_ctx.set_options(SSL.OP_NO_TICKET)
        if not cache:
            server_ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
    else:
        server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server_ctx.load_cert_chain(cert, key)
        if not tickets:
            server_ctx.options |= ssl.OP_NO_TICKET
    for _ in range(20):  # warm-up: caches, lazily loaded providers
        _session(kind, server_ctx, client_ctx)
    start = heap_bytes()
    pairs = [_session(kind, server_ctx, client_ctx) for _ in range(count)]
    servers = [server for server, _ in pairs]
    del pairs  # the clients go: what stays is the servers' sessions
    grown = heap_bytes() - start
    assert len(servers) == count
    return grown / count / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="sessions (1000)")
    parser.add_argument("--no-tickets", action="store_true")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--rounds", type=int, default=1, help="A/B/A rounds (1)")
    parser.add_argument("--kinds", default="pyopenssl,gnetserver,stdlib",
                        help="which (pyopenssl,gnetserver,stdlib)")
    args = parser.parse_args()
    from OpenSSL import SSL
    libraries = {"pyopenssl": SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode(),
                 "stdlib": ssl.OPENSSL_VERSION}
    libraries["gnetserver"] = libraries["pyopenssl"]
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = _certificate(Path(tmp))
        for round_number in range(args.rounds):
            for kind in kinds if round_number % 2 == 0 else kinds[::-1]:
                try:
                    kb = measure(kind, args.count, cert, key, not args.no_tickets,
                                 not args.no_cache)
                except (ImportError, ValueError) as e:
                    if kind != "gnetserver":
                        raise
                    # gnetserver's dependencies missing here, or its context cannot be built
                    # on this binding (a ConfigError, e.g. a tree before d1a7397 on
                    # cryptography < 47: SSL_ecdh_curve)
                    print(f"{kind:10s}: not measured ({e})")
                    continue
                print(f"{kind:10s} over {libraries[kind]}: {kb:.1f} kB of C heap per idle "
                      "server session")


if __name__ == "__main__":
    main()
