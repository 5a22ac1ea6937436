"""build_context: OCSP stapling from a file or a callback, per SNI name.

Certificates come from the session's ``trustme.CA`` (the ``pems``/``pem_files`` fixtures);
the staple is what a real pyOpenSSL client that asks for one receives in a handshake on
127.0.0.1.
"""

from __future__ import annotations

import datetime
import socket
import threading
from pathlib import Path
from typing import Any

import gevent.socket as gsocket
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL
from support.handshake import WHERE, Pems

from gnetserver.errors import ConfigError
from gnetserver.tls import TLSConnection, build_context

pytestmark = pytest.mark.timeout(10)


# ---------------------------------------------------------------------------------------------
# OCSP stapling, seen by a pyOpenSSL client that asks for a staple


def ocsp_response(ca: trustme.CA, leaf: trustme.LeafCert, *, days: float = 1.0) -> bytes:
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509 import ocsp

    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=cert, issuer=ca_cert, algorithm=hashes.SHA256(),
        cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now - datetime.timedelta(days=2),
        next_update=now + datetime.timedelta(days=days), revocation_time=None,
        revocation_reason=None,
    ).responder_id(ocsp.OCSPResponderEncoding.HASH, ca_cert)
    response = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    return response.public_bytes(serialization.Encoding.DER)


def stapled(ctx: SSL.Context, name: bytes = b"localhost") -> bytes:
    """Handshake with a pyOpenSSL client that requests OCSP; return the staple (b"": none)."""
    got: list[bytes] = []
    listener = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]

    def run_client() -> None:
        client_ctx = SSL.Context(SSL.TLS_CLIENT_METHOD)
        client_ctx.set_ocsp_client_callback(lambda conn, data, _: got.append(data) or True)
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            # pyOpenSSL needs a blocking socket; the server side closes it in any case.
            raw.settimeout(None)
            conn = SSL.Connection(client_ctx, raw)
            conn.set_tlsext_host_name(name)
            conn.request_ocsp()
            conn.set_connect_state()
            conn.do_handshake()
            conn.shutdown()

    thread = threading.Thread(target=run_client, daemon=True)
    thread.start()
    try:
        sock, _ = listener.accept()
        with TLSConnection(sock, ctx) as conn:
            conn.do_handshake(5)
            conn.shutdown_tls()
    finally:
        listener.close()
        thread.join(5)
    assert len(got) == 1
    return got[0]


@pytest.fixture
def staple_file(ca: trustme.CA, pems: Pems, tmp_path: Path) -> Path:
    path = tmp_path / "staple.der"
    path.write_bytes(ocsp_response(ca, pems.leaf))
    return path


def test_ocsp_staple_file(pem_files: dict[str, Any], staple_file: Path) -> None:
    ctx = build_context({**pem_files, "SSL_ocsp_staple_file": str(staple_file)}, WHERE)
    assert stapled(ctx) == staple_file.read_bytes()
    assert stapled(build_context(pem_files, WHERE)) == b""  # the twin: nothing configured


def test_expired_ocsp_staple_is_not_sent(ca: trustme.CA, pems: Pems, pem_files: dict[str, Any],
                                         tmp_path: Path) -> None:
    path = tmp_path / "old.der"
    path.write_bytes(ocsp_response(ca, pems.leaf, days=-1))
    warnings: list[str] = []
    ctx = build_context({**pem_files, "SSL_ocsp_staple_file": str(path)}, WHERE, warnings.append)
    assert len(warnings) == 1 and f"SSL_ocsp_staple_file {str(path)!r} expired on" in warnings[0]
    assert stapled(ctx) == b""


def test_ocsp_staple_for_another_certificate(ca: trustme.CA, pem_files: dict[str, Any],
                                             tmp_path: Path) -> None:
    path = tmp_path / "other.der"
    path.write_bytes(ocsp_response(ca, ca.issue_cert("other.example")))
    with pytest.raises(ConfigError, match="is for serial number .* but the certificate has"):
        build_context({**pem_files, "SSL_ocsp_staple_file": str(path)}, WHERE)


def test_ocsp_staple_file_garbage_or_unsuccessful(pem_files: dict[str, Any],
                                                 tmp_path: Path) -> None:
    from cryptography.x509 import ocsp

    path = tmp_path / "bad.der"
    path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="is not a DER OCSP response"):
        build_context({**pem_files, "SSL_ocsp_staple_file": str(path)}, WHERE)
    unauthorized = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.UNAUTHORIZED)
    path.write_bytes(unauthorized.public_bytes(serialization.Encoding.DER))
    with pytest.raises(ConfigError, match="unsuccessful OCSP response \\(UNAUTHORIZED\\)"):
        build_context({**pem_files, "SSL_ocsp_staple_file": str(path)}, WHERE)


def test_ocsp_staple_callback(pems: Pems, pem_files: dict[str, Any], staple_file: Path) -> None:
    calls: list[tuple[x509.Certificate, str | None]] = []

    def staple(cert: x509.Certificate, server_name: str | None) -> bytes:
        calls.append((cert, server_name))
        return staple_file.read_bytes()

    ctx = build_context({**pem_files, "SSL_ocsp_staple_callback": staple}, WHERE)
    assert stapled(ctx) == staple_file.read_bytes()
    leaf = x509.load_pem_x509_certificate(pems.leaf.cert_chain_pems[0].bytes())
    assert calls == [(leaf, "localhost")]


@pytest.mark.parametrize(("answer", "logged"), [
    (RuntimeError("cache down"), "raised RuntimeError('cache down'); no OCSP staple sent"),
    ("text", "returned str, not bytes"),
    (None, None),
])
def test_ocsp_staple_callback_failures_send_no_staple(pem_files: dict[str, Any], answer: Any,
                                                      logged: str | None) -> None:
    def staple(cert: x509.Certificate, server_name: str | None) -> Any:
        if isinstance(answer, Exception):
            raise answer
        return answer

    warnings: list[str] = []
    ctx = build_context({**pem_files, "SSL_ocsp_staple_callback": staple}, WHERE, warnings.append)
    assert stapled(ctx) == b""
    assert [logged in w for w in warnings] == ([] if logged is None else [True])


def test_ocsp_staple_per_sni_name(ca: trustme.CA, pems: Pems, staple_file: Path,
                                  tmp_path: Path) -> None:
    other = ca.issue_cert("a.example")
    other_staple = tmp_path / "a.der"
    other_staple.write_bytes(ocsp_response(ca, other))
    opts = {
        "SSL_cert": {"": pems.cert.read_bytes(), "a.example": other.cert_chain_pems[0].bytes()},
        "SSL_key": {"": pems.key.read_bytes(), "a.example": other.private_key_pem.bytes()},
        "SSL_ocsp_staple_file": {"": str(staple_file), "a.example": str(other_staple)},
    }
    ctx = build_context(opts, WHERE)
    assert stapled(ctx, b"a.example") == other_staple.read_bytes()
    assert stapled(ctx, b"localhost") == staple_file.read_bytes()
