"""TLS material for tests: stdlib client contexts, certificate files, a real ClientHello."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trustme


def trusting(ca: trustme.CA, *, alpn: Sequence[str] | None = None,
             cert: trustme.LeafCert | None = None, ciphers: str | None = None,
             **attributes: Any) -> ssl.SSLContext:
    """A stdlib client context that trusts ``ca``.

    ``alpn`` is offered, ``cert`` presented as the client certificate, ``ciphers`` set with
    set_ciphers, and every other keyword is set as an attribute of the context
    (``check_hostname=False``, ``maximum_version=ssl.TLSVersion.TLSv1_2``...).
    """
    context = ssl.create_default_context()
    ca.configure_trust(context)
    if alpn:
        context.set_alpn_protocols(list(alpn))
    if cert is not None:
        cert.configure_cert(context)
    if ciphers is not None:
        context.set_ciphers(ciphers)
    for name, value in attributes.items():
        setattr(context, name, value)
    return context


def unverified(alpn: Sequence[str] | None = None) -> ssl.SSLContext:
    """A client context that checks neither the certificate nor the name: for self-signed
    servers (the tests compare the logged fingerprint instead) or to see what comes back."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(list(alpn))
    return context


def write_leaf(leaf: trustme.LeafCert, cert: Path | str, key: Path | str) -> dict[str, str]:
    """Write a leaf certificate (with its chain) and its key as PEM files; return them as the
    ``SSL_cert_file``/``SSL_key_file`` options."""
    Path(cert).write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    Path(key).write_bytes(leaf.private_key_pem.bytes())
    return {"SSL_cert_file": str(cert), "SSL_key_file": str(key)}


def client_hello(server_hostname: str = "localhost") -> bytes:
    """The first flight of a real stdlib TLS client (its ClientHello record)."""
    context = ssl.create_default_context()
    outgoing = ssl.MemoryBIO()
    tls = context.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname=server_hostname)
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    assert hello[:1] == b"\x16" and len(hello) > 100  # a TLS handshake record
    return hello
