"""build_context: protocol versions, ciphers and groups, DH parameters, and the settings that
are always on.

Certificates come from the session's ``trustme.CA`` (PEMs written under ``tmp_path`` by the
``pems``/``pem_files`` fixtures); behaviour is checked with real handshakes on 127.0.0.1
(support/handshake.py): the server side runs in this thread's gevent hub, a stdlib ``ssl``
client in a plain thread.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from OpenSSL import SSL
from support.handshake import WHERE, ClientFacts, assert_names, handshake, ok, refused
from support.tls import trusting

from gnetserver.errors import ConfigError
from gnetserver.tls import build_context, parse_ssl_version

pytestmark = pytest.mark.timeout(10)

TLS1, TLS11, TLS12, TLS13 = (
    SSL.TLS1_VERSION,
    SSL.TLS1_1_VERSION,
    SSL.TLS1_2_VERSION,
    SSL.TLS1_3_VERSION,
)


# ---------------------------------------------------------------------------------------------
# SSL_version


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("SSLv23", (TLS1, TLS13)),
        ("TLS", (TLS1, TLS13)),
        ("SSLv2/3:!SSLv2:!SSLv3", (TLS1, TLS13)),
        ("SSLv23:!TLSv1:!TLSv1_1:!SSLv3:!SSLv2", (TLS12, TLS13)),  # IO::Socket::SSL >= 2.082
        ("!TLSv1:!TLSv11", (TLS12, TLS13)),
        (" SSLv23 : !TLSv1 ", (TLS11, TLS13)),
        ("SSLv23:!TLSv1_3", (TLS1, TLS12)),
        ("TLSv1_2", (TLS12, TLS12)),
        ("tlsv12", (TLS12, TLS12)),
        ("TLSv1_3", (TLS13, TLS13)),
        ("TLSv1", (TLS1, TLS1)),
    ],
)
def test_parse_ssl_version(spec: str, expected: tuple[int, int]) -> None:
    assert parse_ssl_version(spec, WHERE) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("SSLv3", "SSLv3 can never be enabled"),
        ("SSLv2", "SSLv2 can never be enabled"),
        ("TLSv1_4", "unknown token 'tlsv1_4'"),
        ("", "unknown token ''"),
        ("TLSv1_2:TLSv1_3", "selects more than one protocol"),
        ("SSLv23:!TLSv1_2", "leaves a gap"),
        ("TLSv1_2:!TLSv1_2", "enables no protocol version"),
        ("!SSLv23", "enables no protocol version"),
    ],
)
def test_parse_ssl_version_errors(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        parse_ssl_version(spec, WHERE)
    assert_names(err, "SSL_version", repr(spec))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_default_refuses_a_tls_1_1_client(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    client = trusting(ca, maximum_version=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
    client.minimum_version = ssl.TLSVersion.TLSv1
    error = refused(*handshake(build_context(pem_files, WHERE), client))
    assert "unsupported protocol" in str(error)


@pytest.mark.parametrize(
    ("max_version", "negotiated"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
def test_default_accepts_tls_1_2_and_1_3(
    ca: trustme.CA, pem_files: dict[str, Any], max_version: ssl.TLSVersion, negotiated: str
) -> None:
    client = trusting(ca, maximum_version=max_version)
    assert ok(*handshake(build_context(pem_files, WHERE), client)).version == negotiated


def test_ssl_version_pins_tls_1_3(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    ctx = build_context({**pem_files, "SSL_version": "TLSv1_3"}, WHERE)
    refused(*handshake(ctx, trusting(ca, maximum_version=ssl.TLSVersion.TLSv1_2)))


def test_ssl_version_pins_tls_1_2(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    ctx = build_context({**pem_files, "SSL_version": "SSLv23:!TLSv1_3:!TLSv1_1:!TLSv1"}, WHERE)
    assert ok(*handshake(ctx, trusting(ca))).version == "TLSv1.2"

# ---------------------------------------------------------------------------------------------
# Ciphers and groups

ECDSA_AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"  # trustme issues ECDSA certificates
ECDSA_AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_default_cipher_list_refuses_cbc(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    client = trusting(
        ca, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA"
    )
    assert "no shared cipher" in str(refused(*handshake(build_context(pem_files, WHERE), client)))


def test_cipher_list(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    ctx = build_context({**pem_files, "SSL_cipher_list": ECDSA_AES128}, WHERE)
    client = trusting(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    assert ok(*handshake(ctx, client)).cipher == ECDSA_AES128


@pytest.mark.parametrize(("honor", "chosen"), [(None, ECDSA_AES256), ("0", ECDSA_AES128)])
def test_honor_cipher_order(
    ca: trustme.CA, pem_files: dict[str, Any], honor: str | None, chosen: str
) -> None:
    opts = {**pem_files, "SSL_cipher_list": f"{ECDSA_AES256}:{ECDSA_AES128}"}
    ctx = build_context({**opts, "SSL_honor_cipher_order": honor}, WHERE)
    client = trusting(
        ca, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers=f"{ECDSA_AES128}:{ECDSA_AES256}"
    )
    assert ok(*handshake(ctx, client)).cipher == chosen


def test_ciphersuites(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    ctx = build_context({**pem_files, "SSL_ciphersuites": "TLS_CHACHA20_POLY1305_SHA256"}, WHERE)
    assert ok(*handshake(ctx, trusting(ca))).cipher == "TLS_CHACHA20_POLY1305_SHA256"


def test_ecdh_curve(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    client = trusting(ca)
    client.set_ecdh_curve("prime256v1")  # on a client this limits the offered groups
    ok(*handshake(build_context({**pem_files, "SSL_ecdh_curve": "P-256:X25519"}, WHERE), client))
    ctx = build_context({**pem_files, "SSL_ecdh_curve": "P-384"}, WHERE)
    refused(*handshake(ctx, client))

# ---------------------------------------------------------------------------------------------
# DH parameters (DHE needs an RSA certificate)

FFDHE2048 = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""


def test_dh_file_enables_dhe(tmp_path: Path) -> None:
    rsa_ca = trustme.CA(key_type=trustme.KeyType.RSA)
    leaf = rsa_ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    cert = tmp_path / "rsa.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    dh_file = tmp_path / "dh.pem"
    dh_file.write_bytes(FFDHE2048)
    dhe = "DHE-RSA-AES128-GCM-SHA256"
    client = trusting(rsa_ca, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers=dhe)
    ctx = build_context({"SSL_cert_file": str(cert), "SSL_dh_file": str(dh_file)}, WHERE)
    assert ok(*handshake(ctx, client)).cipher == dhe
    # The twin: without SSL_dh_file no DHE suite can be negotiated.
    refused(*handshake(build_context({"SSL_cert_file": str(cert)}, WHERE), client))

# ---------------------------------------------------------------------------------------------
# Always-on settings


def test_always_on_options_and_mode(pem_files: dict[str, Any]) -> None:
    ctx = build_context(pem_files, WHERE)
    options = ctx.set_options(0)  # returns the current mask
    for flag in (
        SSL.OP_NO_COMPRESSION,
        SSL.OP_NO_RENEGOTIATION,
        SSL.OP_NO_SSLv2,
        SSL.OP_NO_SSLv3,
        SSL.OP_CIPHER_SERVER_PREFERENCE,
        SSL.OP_SINGLE_ECDH_USE,
    ):
        assert options & flag == flag, flag
    assert ctx.set_mode(0) & SSL.MODE_RELEASE_BUFFERS


def test_session_resumption(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    ctx = build_context(pem_files, WHERE)
    client = trusting(ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    first_server, first_client = handshake(ctx, client)
    assert not ok(first_server, first_client).reused
    assert isinstance(first_client, ClientFacts) and first_client.session is not None
    assert ok(*handshake(ctx, client, session=first_client.session)).reused
