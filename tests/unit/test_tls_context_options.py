"""build_context: client certificates (verify mode, verify callback), ALPN, the options that
cannot be honoured and the escape hatch, and bad values of the newer options.

Certificates come from the session's ``trustme.CA`` (PEMs written under ``tmp_path`` by the
``pems``/``pem_files`` fixtures); behaviour is checked with real handshakes on 127.0.0.1
(support/handshake.py): the server side runs in this thread's gevent hub, a stdlib ``ssl``
client in a plain thread.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from OpenSSL import SSL, crypto
from support.handshake import WHERE, Pems, assert_names, handshake, ok, refused
from support.tls import trusting

from gnetserver.errors import ConfigError
from gnetserver.tls import REFUSED_SSL_OPTIONS, SUPPORTED_SSL_OPTIONS, build_context

pytestmark = pytest.mark.timeout(10)


# ---------------------------------------------------------------------------------------------
# Client certificates


def _client_with_cert(ca: trustme.CA) -> ssl.SSLContext:
    client = trusting(ca)
    ca.issue_cert("client@example.org").configure_cert(client)
    return client


def test_verify_mode_requires_a_client_certificate(ca: trustme.CA, pems: Pems) -> None:
    opts = {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key)}
    ctx = build_context({**opts, "SSL_ca_file": str(pems.ca), "SSL_verify_mode": 0x03}, WHERE)
    assert "certificate" in str(refused(*handshake(ctx, trusting(ca))))
    ctx = build_context({**opts, "SSL_ca_file": str(pems.ca), "SSL_verify_mode": "3"}, WHERE)
    peer = ok(*handshake(ctx, _client_with_cert(ca))).peer
    assert peer is not None
    names = peer.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.RFC822Name) == ["client@example.org"]


def test_verify_mode_with_ca_path(ca: trustme.CA, pems: Pems, tmp_path: Path) -> None:
    ca_dir = tmp_path / "cas"
    ca_dir.mkdir()
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    subject_hash = crypto.X509.from_cryptography(ca_cert).subject_name_hash()
    (ca_dir / f"{subject_hash:08x}.0").write_bytes(ca.cert_pem.bytes())
    opts = {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key)}
    ctx = build_context({**opts, "SSL_ca_path": str(ca_dir), "SSL_verify_mode": 3}, WHERE)
    assert ok(*handshake(ctx, _client_with_cert(ca))).peer is not None


def test_verify_mode_none_asks_no_certificate(ca: trustme.CA, pems: Pems) -> None:
    opts = {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key)}
    ctx = build_context({**opts, "SSL_ca_file": str(pems.ca), "SSL_verify_mode": 0}, WHERE)
    assert ok(*handshake(ctx, _client_with_cert(ca))).peer is None

# ---------------------------------------------------------------------------------------------
# ALPN, client certificates (verify callback, CRL)


@pytest.mark.parametrize(("value", "expected"), [
    ("h2,http/1.1", [b"h2", b"http/1.1"]),
    (" h2  http/1.1 ", [b"h2", b"http/1.1"]),
    (["h2", b"x"], [b"h2", b"x"]),
    (("http/1.1",), [b"http/1.1"]),
])
def test_parse_alpn(value: Any, expected: list[bytes]) -> None:
    from gnetserver.tls.negotiation import parse_alpn

    assert parse_alpn(value, WHERE) == expected


def test_verify_callback_arguments(ca: trustme.CA, pems: Pems) -> None:
    calls: list[tuple[bool, str, int, str]] = []

    def record(ok: bool, cert: x509.Certificate, depth: int, error: str) -> bool:
        calls.append((ok, cert.subject.rfc4514_string(), depth, error))
        return ok

    opts = {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key),
            "SSL_ca_file": str(pems.ca), "SSL_verify_mode": 3, "SSL_verify_callback": record}
    ok(*handshake(build_context(opts, WHERE), _client_with_cert(ca)))
    ca_subject = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject.rfc4514_string()
    assert calls[0] == (True, ca_subject, 1, "ok")
    assert calls[-1][2] == 0 and calls[-1][0] is True


def test_verify_callback_may_accept_what_openssl_refuses(ca: trustme.CA, pems: Pems) -> None:
    stranger = trusting(ca)
    trustme.CA().issue_cert("eve@example.org").configure_cert(stranger)
    opts = {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key),
            "SSL_ca_file": str(pems.ca), "SSL_verify_mode": 3}
    refused(*handshake(build_context(opts, WHERE), stranger))
    errors: list[str] = []

    def anyone(ok: bool, cert: x509.Certificate, depth: int, error: str) -> bool:
        errors.append(error)
        return True

    ctx = build_context({**opts, "SSL_verify_callback": anyone}, WHERE)
    assert ok(*handshake(ctx, stranger)).peer is not None
    assert errors[0] == "unable to get issuer cert locally"

# ---------------------------------------------------------------------------------------------
# Options we cannot honour, and the escape hatch


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("SSL_ticket_keycb", "pyOpenSSL exposes no session-ticket key callback"),
        ("SSL_npn_protocols", "NPN is obsolete"),
        ("SSL_verifycn_scheme", "client-side option"),
        ("SSL_reuse_ctx", "the server builds and shares contexts itself"),
    ],
)
def test_refused_options_say_why(pem_files: dict[str, Any], name: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} cannot be honoured: .*{reason}") as err:
        build_context({**pem_files, name: object()}, WHERE)
    assert_names(err)
    assert name not in SUPPORTED_SSL_OPTIONS
    build_context({**pem_files, name: None}, WHERE)  # None: not given


def test_refused_and_supported_tables_are_disjoint() -> None:
    assert not set(REFUSED_SSL_OPTIONS) & set(SUPPORTED_SSL_OPTIONS)


def test_create_ctx_callback_sees_every_context(ca: trustme.CA, pems: Pems,
                                                tmp_path: Path) -> None:
    other = ca.issue_cert("a.example")
    seen: list[SSL.Context] = []
    opts = {
        "SSL_cert": {"": pems.cert.read_bytes(), "a.example": other.cert_chain_pems[0].bytes()},
        "SSL_key": {"": pems.key.read_bytes(), "a.example": other.private_key_pem.bytes()},
        "SSL_create_ctx_callback": seen.append,
    }
    default = build_context(opts, WHERE)
    assert len(seen) == 2 and seen[0] is default


def test_create_ctx_callback_that_fails(pem_files: dict[str, Any]) -> None:
    def broken(ctx: SSL.Context) -> None:
        raise RuntimeError("nope")

    with pytest.raises(ConfigError, match="SSL_create_ctx_callback failed: nope"):
        build_context({**pem_files, "SSL_create_ctx_callback": broken}, WHERE)

# ---------------------------------------------------------------------------------------------
# Bad values of the newer options


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"SSL_alpn_protocols": 42}, "invalid SSL_alpn_protocols 42"),
        ({"SSL_alpn_protocols": ""}, "invalid SSL_alpn_protocols ''"),
        ({"SSL_alpn_protocols": ["h2", ""]}, "invalid SSL_alpn_protocols"),
        ({"SSL_session_id_context": "x" * 33}, "invalid SSL_session_id_context"),
        ({"SSL_session_id_context": 7}, "invalid SSL_session_id_context 7"),
        ({"SSL_ticket_key_rotation": -1}, "invalid SSL_ticket_key_rotation -1"),
        ({"SSL_ticket_key_rotation": "soon"}, "invalid SSL_ticket_key_rotation 'soon'"),
        ({"SSL_dh_file": "/nonexistent/dh.pem"}, "SSL_dh_file '/nonexistent/dh.pem': cannot read"),
        ({"SSL_verify_callback": lambda *a: True}, "SSL_verify_callback is never called"),
        ({"SSL_verify_mode": 3, "SSL_ca_file": None, "SSL_verify_callback": 5},
         "needs SSL_ca_file"),
        ({"SSL_crl_file": "/nonexistent/crl.pem"}, "SSL_crl_file is only used with client"),
        ({"SSL_check_crl": 1}, "SSL_check_crl is only used with client"),
        ({"SSL_passwd_cb": "secret"}, "SSL_passwd_cb must be callable, not str"),
        ({"SSL_create_ctx_callback": 1}, "SSL_create_ctx_callback must be callable, not int"),
        ({"SSL_ocsp_staple_file": "/nonexistent/o.der"},
         "SSL_ocsp_staple_file '/nonexistent/o.der': cannot read"),
        ({"SSL_ocsp_staple_callback": "x"}, "SSL_ocsp_staple_callback must be callable"),
        ({"SSL_ocsp_staple_file": "a", "SSL_ocsp_staple_callback": print}, "not both"),
        ({"SSL_client_ca": 5}, "SSL_client_ca is sent only when client certificates"),
    ],
)
def test_invalid_values_of_newer_options(pem_files: dict[str, Any], extra: dict[str, Any],
                                         message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_context({**pem_files, **extra}, WHERE)
    assert_names(err, message)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"SSL_client_ca": 5},
         "SSL_client_ca must be an x509.Certificate, a non-empty list of them or PEM bytes"),
        ({"SSL_client_ca_file": "/nonexistent/cas.pem"},
         "SSL_client_ca_file '/nonexistent/cas.pem': cannot read"),
        ({"SSL_client_ca": b"junk"}, "SSL_client_ca holds no valid PEM certificate"),
    ],
)
def test_invalid_client_ca(pems: Pems, extra: dict[str, Any], message: str) -> None:
    opts = {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key),
            "SSL_ca_file": str(pems.ca), "SSL_verify_mode": 1, **extra}
    with pytest.raises(ConfigError) as err:
        build_context(opts, WHERE)
    assert_names(err, message)


def test_garbage_dh_file(pem_files: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "dh.pem"
    path.write_bytes(b"garbage\n")
    with pytest.raises(ConfigError, match="cannot use SSL_dh_file .*: no start line") as err:
        build_context({**pem_files, "SSL_dh_file": str(path)}, WHERE)
    assert_names(err, str(path))


def test_crl_file_errors(pem_files: dict[str, Any], pems: Pems, tmp_path: Path) -> None:
    path = tmp_path / "crl.pem"
    path.write_bytes(b"not a crl\n")
    opts = {**pem_files, "SSL_ca_file": str(pems.ca), "SSL_verify_mode": 3}
    with pytest.raises(ConfigError, match="holds no PEM CRL"):
        build_context({**opts, "SSL_crl_file": str(path)}, WHERE)
    path.write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(ConfigError, match="invalid CRL"):
        build_context({**opts, "SSL_crl_file": str(path)}, WHERE)
