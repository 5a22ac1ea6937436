"""build_context: every supported option, every error message, and the secure defaults.

Certificates come from a fresh ``trustme.CA`` (PEMs written under ``tmp_path``); behaviour is
checked with real handshakes on 127.0.0.1: the server side runs in this thread's gevent hub, a
stdlib ``ssl`` client in a plain thread.
"""

from __future__ import annotations

import datetime
import hashlib
import re
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
from OpenSSL import SSL, crypto

from gnetserver.errors import ConfigError, TLSError
from gnetserver.tls import (
    REFUSED_SSL_OPTIONS,
    SUPPORTED_SSL_OPTIONS,
    TLSConnection,
    TLSContexts,
    build_context,
    fingerprint_sha256,
    make_self_signed,
    parse_ssl_version,
)

pytestmark = pytest.mark.timeout(10)

WHERE = "port 127.0.0.1:8443/ssl"
TLS1, TLS11, TLS12, TLS13 = (
    SSL.TLS1_VERSION,
    SSL.TLS1_1_VERSION,
    SSL.TLS1_2_VERSION,
    SSL.TLS1_3_VERSION,
)


# ---------------------------------------------------------------------------------------------
# Fixtures and the handshake harness


@dataclass
class Pems:
    cert: Path  # leaf + chain
    key: Path
    combined: Path  # key + leaf + chain in one file
    ca: Path
    leaf: trustme.LeafCert


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def pems(ca: trustme.CA, tmp_path: Path) -> Pems:
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    paths = Pems(
        tmp_path / "cert.pem",
        tmp_path / "key.pem",
        tmp_path / "both.pem",
        tmp_path / "ca.pem",
        leaf,
    )
    paths.cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    paths.key.write_bytes(leaf.private_key_pem.bytes())
    paths.combined.write_bytes(leaf.private_key_and_cert_chain_pem.bytes())
    paths.ca.write_bytes(ca.cert_pem.bytes())
    return paths


@pytest.fixture
def files(pems: Pems) -> dict[str, Any]:
    return {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key)}


def client_context(
    ca: trustme.CA, *, max_version: ssl.TLSVersion | None = None, ciphers: str | None = None
) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    if max_version is not None:
        ctx.maximum_version = max_version
    if ciphers is not None:
        ctx.set_ciphers(ciphers)
    return ctx


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
    assert isinstance(server, ServerFacts), server
    assert isinstance(client, ClientFacts), client
    return server


def refused(server: ServerFacts | OSError, client: ClientFacts | OSError) -> TLSError:
    assert isinstance(server, TLSError), server
    assert isinstance(client, OSError), client
    return server


# ---------------------------------------------------------------------------------------------
# The table


def test_every_supported_option_is_documented_with_its_default() -> None:
    for name, doc in SUPPORTED_SSL_OPTIONS.items():
        assert name.startswith("SSL_")
        assert "default" in doc and "\n" not in doc, name


# ---------------------------------------------------------------------------------------------
# Certificate and key sources


def test_cert_file_and_key_file(ca: trustme.CA, files: dict[str, Any]) -> None:
    facts = ok(*handshake(build_context(files, WHERE), client_context(ca)))
    assert facts.version == "TLSv1.3"
    assert facts.peer is None


def test_key_is_read_from_the_cert_file_when_no_key_file(ca: trustme.CA, pems: Pems) -> None:
    ctx = build_context({"SSL_cert_file": str(pems.combined), "SSL_key_file": None}, WHERE)
    ok(*handshake(ctx, client_context(ca)))


def _cert_objects(leaf: trustme.LeafCert) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(blob.bytes()) for blob in leaf.cert_chain_pems]


def _key_object(leaf: trustme.LeafCert) -> Any:
    return serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)


@pytest.mark.parametrize(
    "form",
    [
        lambda leaf: {"SSL_cert": _cert_objects(leaf)[0], "SSL_key": _key_object(leaf)},
        lambda leaf: {"SSL_cert": _cert_objects(leaf), "SSL_key": leaf.private_key_pem.bytes()},
        lambda leaf: {
            "SSL_cert": b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
            "SSL_key": leaf.private_key_pem.bytes().decode(),
        },
    ],
    ids=["objects", "list+pem-bytes", "pem-bytes+pem-str"],
)
def test_in_memory_cert_and_key(ca: trustme.CA, pems: Pems, form: Any) -> None:
    ok(*handshake(build_context(form(pems.leaf), WHERE), client_context(ca)))


def _encrypted_key(pems: Pems, password: bytes) -> Path:
    key = _key_object(pems.leaf)
    path = pems.key.with_name("encrypted.pem")
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(password),
        )
    )
    return path


@pytest.mark.parametrize("answer", ["s3cret", b"s3cret"])
def test_encrypted_key_with_the_right_passphrase(ca: trustme.CA, pems: Pems, answer: Any) -> None:
    opts = {
        "SSL_cert_file": str(pems.cert),
        "SSL_key_file": str(_encrypted_key(pems, b"s3cret")),
        "SSL_passwd_cb": lambda: answer,
    }
    ok(*handshake(build_context(opts, WHERE), client_context(ca)))


def test_encrypted_key_with_a_wrong_passphrase(pems: Pems) -> None:
    path = _encrypted_key(pems, b"s3cret")
    opts = {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(path)}
    with pytest.raises(ConfigError, match="SSL_passwd_cb") as err:
        build_context({**opts, "SSL_passwd_cb": lambda: "wrong"}, WHERE)
    assert WHERE in str(err.value) and str(path) in str(err.value)


def test_encrypted_key_without_passwd_cb(pems: Pems) -> None:
    path = _encrypted_key(pems, b"s3cret")
    with pytest.raises(ConfigError, match="encrypted private key; give SSL_passwd_cb"):
        build_context({"SSL_cert_file": str(pems.cert), "SSL_key_file": str(path)}, WHERE)


def test_passwd_cb_is_ignored_for_a_plain_key(ca: trustme.CA, files: dict[str, Any]) -> None:
    ctx = build_context({**files, "SSL_passwd_cb": lambda: "unused"}, WHERE)
    ok(*handshake(ctx, client_context(ca)))


def test_passwd_cb_that_raises(pems: Pems) -> None:
    def broken() -> str:
        raise RuntimeError("no tty")

    path = _encrypted_key(pems, b"s3cret")
    opts = {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(path), "SSL_passwd_cb": broken}
    with pytest.raises(ConfigError, match="SSL_passwd_cb failed: RuntimeError"):
        build_context(opts, WHERE)


# ---------------------------------------------------------------------------------------------
# Error messages name where, the option and the path


def _assert_names(err: pytest.ExceptionInfo[ConfigError], *parts: str) -> None:
    for part in (WHERE, *parts):
        assert part in str(err.value), (part, str(err.value))


def test_missing_cert_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="cannot read") as err:
        build_context({"SSL_cert_file": path}, WHERE)
    _assert_names(err, "SSL_cert_file", path, "No such file")


def test_missing_key_file(pems: Pems, tmp_path: Path) -> None:
    path = str(tmp_path / "nope.key")
    with pytest.raises(ConfigError) as err:
        build_context({"SSL_cert_file": str(pems.cert), "SSL_key_file": path}, WHERE)
    _assert_names(err, "SSL_key_file", path)


def test_unreadable_cert_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as err:
        build_context({"SSL_cert_file": str(tmp_path)}, WHERE)
    _assert_names(err, "SSL_cert_file", str(tmp_path))


def test_garbage_cert_pem(pems: Pems) -> None:
    pems.cert.write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(ConfigError, match="no valid PEM certificate") as err:
        build_context({"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key)}, WHERE)
    _assert_names(err, "SSL_cert_file", str(pems.cert))


def test_garbage_key_pem(pems: Pems) -> None:
    pems.key.write_bytes(b"this is not a key\n")
    with pytest.raises(ConfigError, match="cannot load a PEM private key") as err:
        build_context({"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key)}, WHERE)
    _assert_names(err, "SSL_key_file", str(pems.key))


def test_cert_file_without_key_and_no_key_file(pems: Pems) -> None:
    with pytest.raises(ConfigError, match="no SSL_key_file given") as err:
        build_context({"SSL_cert_file": str(pems.cert)}, WHERE)
    _assert_names(err, str(pems.cert))


def test_key_that_does_not_match_the_certificate(ca: trustme.CA, pems: Pems) -> None:
    other = pems.key.with_name("other.key")
    other.write_bytes(ca.issue_cert("localhost").private_key_pem.bytes())
    with pytest.raises(ConfigError, match="does not match") as err:
        build_context({"SSL_cert_file": str(pems.cert), "SSL_key_file": str(other)}, WHERE)
    _assert_names(err, "SSL_cert_file", str(pems.cert), "SSL_key_file", str(other))


def test_no_certificate_at_all() -> None:
    with pytest.raises(ConfigError) as err:
        build_context({"SSL_version": "TLSv1_3", "port": 443}, WHERE)
    assert str(err.value) == f"{WHERE}: a TLS port needs SSL_cert_file (or SSL_cert)"


def test_unsupported_ssl_option_lists_the_supported_ones(files: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="unsupported option\\(s\\) SSL_foo, SSL_zap") as err:
        build_context({**files, "SSL_zap": 1, "SSL_foo": "x"}, WHERE)
    listed = str(err.value).split("supported: ", 1)[1].split(", ")
    assert listed == sorted(SUPPORTED_SSL_OPTIONS)
    _assert_names(err)


def test_keys_not_starting_with_ssl_are_ignored(ca: trustme.CA, files: dict[str, Any]) -> None:
    ctx = build_context({**files, "port": 8443, "proto": "ssl", "ssl_lowercase": 1}, WHERE)
    ok(*handshake(ctx, client_context(ca)))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"SSL_cert": b"x"}, "give SSL_cert_file or SSL_cert, not both"),
        ({"SSL_key": b"x"}, "give SSL_key_file or SSL_key, not both"),
        ({"SSL_version": "TLSv1_4"}, "invalid SSL_version 'TLSv1_4'"),
        ({"SSL_cipher_list": "NOT-A-CIPHER"}, "invalid SSL_cipher_list 'NOT-A-CIPHER'"),
        ({"SSL_ciphersuites": "TLS_NOPE"}, "invalid SSL_ciphersuites 'TLS_NOPE'"),
        ({"SSL_ecdh_curve": "P-256:nope"}, "invalid SSL_ecdh_curve 'P-256:nope'"),
        ({"SSL_honor_cipher_order": "maybe"}, "invalid SSL_honor_cipher_order 'maybe'"),
        ({"SSL_verify_mode": 1}, "SSL_verify_mode 1 verifies clients and needs SSL_ca_file"),
        ({"SSL_verify_mode": "banana"}, "invalid SSL_verify_mode 'banana'"),
        ({"SSL_verify_mode": 8}, "invalid SSL_verify_mode 8"),
        ({"SSL_ca_path": "/nonexistent/ca/dir"}, "SSL_ca_path '/nonexistent/ca/dir' is not a"),
        ({"SSL_ca_file": "/nonexistent/ca.pem"}, "SSL_ca_file '/nonexistent/ca.pem': cannot read"),
    ],
)
def test_invalid_values(files: dict[str, Any], extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_context({**files, **extra}, WHERE)
    _assert_names(err, message)


def test_openssl_reason_is_in_the_cipher_list_error(files: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="no cipher match"):
        build_context({**files, "SSL_cipher_list": "NOT-A-CIPHER"}, WHERE)


@pytest.mark.parametrize("value", [42, [], ["not a cert"], object()])
def test_ssl_cert_of_the_wrong_type(pems: Pems, value: Any) -> None:
    with pytest.raises(ConfigError, match="SSL_cert must be an x509.Certificate"):
        build_context({"SSL_cert": value, "SSL_key": pems.leaf.private_key_pem.bytes()}, WHERE)


def test_ssl_key_of_the_wrong_type(pems: Pems) -> None:
    with pytest.raises(ConfigError, match="cannot use the private key SSL_key"):
        build_context({"SSL_cert": _cert_objects(pems.leaf), "SSL_key": 42}, WHERE)


def test_ssl_cert_without_ssl_key(pems: Pems) -> None:
    with pytest.raises(ConfigError, match="SSL_cert needs SSL_key"):
        build_context({"SSL_cert": _cert_objects(pems.leaf)}, WHERE)


def test_garbage_ca_file(files: dict[str, Any], tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_bytes(b"garbage\n")
    with pytest.raises(ConfigError) as err:
        build_context({**files, "SSL_ca_file": str(garbage), "SSL_verify_mode": 1}, WHERE)
    _assert_names(err, "SSL_ca_file", str(garbage))


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
    _assert_names(err, "SSL_version", repr(spec))


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1:DeprecationWarning")
def test_default_refuses_a_tls_1_1_client(ca: trustme.CA, files: dict[str, Any]) -> None:
    client = client_context(ca, max_version=ssl.TLSVersion.TLSv1_1, ciphers="DEFAULT:@SECLEVEL=0")
    client.minimum_version = ssl.TLSVersion.TLSv1
    error = refused(*handshake(build_context(files, WHERE), client))
    assert "unsupported protocol" in str(error)


@pytest.mark.parametrize(
    ("max_version", "negotiated"),
    [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"), (ssl.TLSVersion.TLSv1_3, "TLSv1.3")],
)
def test_default_accepts_tls_1_2_and_1_3(
    ca: trustme.CA, files: dict[str, Any], max_version: ssl.TLSVersion, negotiated: str
) -> None:
    client = client_context(ca, max_version=max_version)
    assert ok(*handshake(build_context(files, WHERE), client)).version == negotiated


def test_ssl_version_pins_tls_1_3(ca: trustme.CA, files: dict[str, Any]) -> None:
    ctx = build_context({**files, "SSL_version": "TLSv1_3"}, WHERE)
    refused(*handshake(ctx, client_context(ca, max_version=ssl.TLSVersion.TLSv1_2)))


def test_ssl_version_pins_tls_1_2(ca: trustme.CA, files: dict[str, Any]) -> None:
    ctx = build_context({**files, "SSL_version": "SSLv23:!TLSv1_3:!TLSv1_1:!TLSv1"}, WHERE)
    assert ok(*handshake(ctx, client_context(ca))).version == "TLSv1.2"


# ---------------------------------------------------------------------------------------------
# Ciphers and groups

ECDSA_AES256 = "ECDHE-ECDSA-AES256-GCM-SHA384"  # trustme issues ECDSA certificates
ECDSA_AES128 = "ECDHE-ECDSA-AES128-GCM-SHA256"


def test_default_cipher_list_refuses_cbc(ca: trustme.CA, files: dict[str, Any]) -> None:
    client = client_context(
        ca, max_version=ssl.TLSVersion.TLSv1_2, ciphers="ECDHE-ECDSA-AES128-SHA"
    )
    assert "no shared cipher" in str(refused(*handshake(build_context(files, WHERE), client)))


def test_cipher_list(ca: trustme.CA, files: dict[str, Any]) -> None:
    ctx = build_context({**files, "SSL_cipher_list": ECDSA_AES128}, WHERE)
    client = client_context(ca, max_version=ssl.TLSVersion.TLSv1_2)
    assert ok(*handshake(ctx, client)).cipher == ECDSA_AES128


@pytest.mark.parametrize(("honor", "chosen"), [(None, ECDSA_AES256), ("0", ECDSA_AES128)])
def test_honor_cipher_order(
    ca: trustme.CA, files: dict[str, Any], honor: str | None, chosen: str
) -> None:
    opts = {**files, "SSL_cipher_list": f"{ECDSA_AES256}:{ECDSA_AES128}"}
    ctx = build_context({**opts, "SSL_honor_cipher_order": honor}, WHERE)
    client = client_context(
        ca, max_version=ssl.TLSVersion.TLSv1_2, ciphers=f"{ECDSA_AES128}:{ECDSA_AES256}"
    )
    assert ok(*handshake(ctx, client)).cipher == chosen


def test_ciphersuites(ca: trustme.CA, files: dict[str, Any]) -> None:
    ctx = build_context({**files, "SSL_ciphersuites": "TLS_CHACHA20_POLY1305_SHA256"}, WHERE)
    assert ok(*handshake(ctx, client_context(ca))).cipher == "TLS_CHACHA20_POLY1305_SHA256"


def test_ecdh_curve(ca: trustme.CA, files: dict[str, Any]) -> None:
    client = client_context(ca)
    client.set_ecdh_curve("prime256v1")  # on a client this limits the offered groups
    ok(*handshake(build_context({**files, "SSL_ecdh_curve": "P-256:X25519"}, WHERE), client))
    ctx = build_context({**files, "SSL_ecdh_curve": "P-384"}, WHERE)
    refused(*handshake(ctx, client))


# ---------------------------------------------------------------------------------------------
# Client certificates


def _client_with_cert(ca: trustme.CA) -> ssl.SSLContext:
    client = client_context(ca)
    ca.issue_cert("client@example.org").configure_cert(client)
    return client


def test_verify_mode_requires_a_client_certificate(ca: trustme.CA, pems: Pems) -> None:
    opts = {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key)}
    ctx = build_context({**opts, "SSL_ca_file": str(pems.ca), "SSL_verify_mode": 0x03}, WHERE)
    assert "certificate" in str(refused(*handshake(ctx, client_context(ca))))
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
# Always-on settings


def test_always_on_options_and_mode(files: dict[str, Any]) -> None:
    ctx = build_context(files, WHERE)
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


def test_session_resumption(ca: trustme.CA, files: dict[str, Any]) -> None:
    ctx = build_context(files, WHERE)
    client = client_context(ca, max_version=ssl.TLSVersion.TLSv1_2)
    first_server, first_client = handshake(ctx, client)
    assert not ok(first_server, first_client).reused
    assert isinstance(first_client, ClientFacts) and first_client.session is not None
    assert ok(*handshake(ctx, client, session=first_client.session)).reused


# ---------------------------------------------------------------------------------------------
# Self-signed certificates


def test_self_signed_certificate_verifies_for_its_names(ca: trustme.CA) -> None:
    cert, key = make_self_signed()
    ctx = build_context({"SSL_cert": cert, "SSL_key": key}, WHERE)
    client = ssl.create_default_context(
        cadata=cert.public_bytes(serialization.Encoding.PEM).decode()
    )
    facts = ok(*handshake(ctx, client))
    assert facts.version == "TLSv1.3"
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]


def test_self_signed_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="at least one host name"):
        make_self_signed(())
    with pytest.raises(ValueError, match="days must be positive"):
        make_self_signed(days=0)


def test_fingerprint_sha256() -> None:
    cert, _ = make_self_signed(["example.test"], days=1)
    fingerprint = fingerprint_sha256(cert)
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", fingerprint)
    der = cert.public_bytes(serialization.Encoding.DER)
    assert fingerprint.replace(":", "") == hashlib.sha256(der).hexdigest().upper()


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
def test_refused_options_say_why(files: dict[str, Any], name: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} cannot be honoured: .*{reason}") as err:
        build_context({**files, name: object()}, WHERE)
    _assert_names(err)
    assert name not in SUPPORTED_SSL_OPTIONS
    build_context({**files, name: None}, WHERE)  # None: not given


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


def test_create_ctx_callback_that_fails(files: dict[str, Any]) -> None:
    def broken(ctx: SSL.Context) -> None:
        raise RuntimeError("nope")

    with pytest.raises(ConfigError, match="SSL_create_ctx_callback failed: nope"):
        build_context({**files, "SSL_create_ctx_callback": broken}, WHERE)


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
    ],
)
def test_invalid_values_of_newer_options(files: dict[str, Any], extra: dict[str, Any],
                                         message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_context({**files, **extra}, WHERE)
    _assert_names(err, message)


def test_garbage_dh_file(files: dict[str, Any], tmp_path: Path) -> None:
    path = tmp_path / "dh.pem"
    path.write_bytes(b"garbage\n")
    with pytest.raises(ConfigError, match="cannot use SSL_dh_file .*: no start line") as err:
        build_context({**files, "SSL_dh_file": str(path)}, WHERE)
    _assert_names(err, str(path))


def test_crl_file_errors(files: dict[str, Any], pems: Pems, tmp_path: Path) -> None:
    path = tmp_path / "crl.pem"
    path.write_bytes(b"not a crl\n")
    opts = {**files, "SSL_ca_file": str(pems.ca), "SSL_verify_mode": 3}
    with pytest.raises(ConfigError, match="holds no PEM CRL"):
        build_context({**opts, "SSL_crl_file": str(path)}, WHERE)
    path.write_bytes(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n")
    with pytest.raises(ConfigError, match="invalid CRL"):
        build_context({**opts, "SSL_crl_file": str(path)}, WHERE)


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
    client = client_context(rsa_ca, max_version=ssl.TLSVersion.TLSv1_2, ciphers=dhe)
    ctx = build_context({"SSL_cert_file": str(cert), "SSL_dh_file": str(dh_file)}, WHERE)
    assert ok(*handshake(ctx, client)).cipher == dhe
    # The twin: without SSL_dh_file no DHE suite can be negotiated.
    refused(*handshake(build_context({"SSL_cert_file": str(cert)}, WHERE), client))


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
    stranger = client_context(ca)
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


def test_ocsp_staple_file(files: dict[str, Any], staple_file: Path) -> None:
    ctx = build_context({**files, "SSL_ocsp_staple_file": str(staple_file)}, WHERE)
    assert stapled(ctx) == staple_file.read_bytes()
    assert stapled(build_context(files, WHERE)) == b""  # the twin: nothing configured


def test_expired_ocsp_staple_is_not_sent(ca: trustme.CA, pems: Pems, files: dict[str, Any],
                                         tmp_path: Path) -> None:
    path = tmp_path / "old.der"
    path.write_bytes(ocsp_response(ca, pems.leaf, days=-1))
    warnings: list[str] = []
    ctx = build_context({**files, "SSL_ocsp_staple_file": str(path)}, WHERE, warnings.append)
    assert len(warnings) == 1 and f"SSL_ocsp_staple_file {str(path)!r} expired on" in warnings[0]
    assert stapled(ctx) == b""


def test_ocsp_staple_for_another_certificate(ca: trustme.CA, files: dict[str, Any],
                                             tmp_path: Path) -> None:
    path = tmp_path / "other.der"
    path.write_bytes(ocsp_response(ca, ca.issue_cert("other.example")))
    with pytest.raises(ConfigError, match="is for serial number .* but the certificate has"):
        build_context({**files, "SSL_ocsp_staple_file": str(path)}, WHERE)


def test_ocsp_staple_file_garbage_or_unsuccessful(files: dict[str, Any], tmp_path: Path) -> None:
    from cryptography.x509 import ocsp

    path = tmp_path / "bad.der"
    path.write_bytes(b"garbage")
    with pytest.raises(ConfigError, match="is not a DER OCSP response"):
        build_context({**files, "SSL_ocsp_staple_file": str(path)}, WHERE)
    unauthorized = ocsp.OCSPResponseBuilder.build_unsuccessful(
        ocsp.OCSPResponseStatus.UNAUTHORIZED)
    path.write_bytes(unauthorized.public_bytes(serialization.Encoding.DER))
    with pytest.raises(ConfigError, match="unsuccessful OCSP response \\(UNAUTHORIZED\\)"):
        build_context({**files, "SSL_ocsp_staple_file": str(path)}, WHERE)


def test_ocsp_staple_callback(pems: Pems, files: dict[str, Any], staple_file: Path) -> None:
    calls: list[tuple[x509.Certificate, str | None]] = []

    def staple(cert: x509.Certificate, server_name: str | None) -> bytes:
        calls.append((cert, server_name))
        return staple_file.read_bytes()

    ctx = build_context({**files, "SSL_ocsp_staple_callback": staple}, WHERE)
    assert stapled(ctx) == staple_file.read_bytes()
    leaf = x509.load_pem_x509_certificate(pems.leaf.cert_chain_pems[0].bytes())
    assert calls == [(leaf, "localhost")]


@pytest.mark.parametrize(("answer", "logged"), [
    (RuntimeError("cache down"), "raised RuntimeError('cache down'); no OCSP staple sent"),
    ("text", "returned str, not bytes"),
    (None, None),
])
def test_ocsp_staple_callback_failures_send_no_staple(files: dict[str, Any], answer: Any,
                                                      logged: str | None) -> None:
    def staple(cert: x509.Certificate, server_name: str | None) -> Any:
        if isinstance(answer, Exception):
            raise answer
        return answer

    warnings: list[str] = []
    ctx = build_context({**files, "SSL_ocsp_staple_callback": staple}, WHERE, warnings.append)
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


# ---------------------------------------------------------------------------------------------
# SNI: splitting the per-certificate keys by name (pure)


def test_split_without_dicts() -> None:
    from gnetserver.tls.sni import split_by_name

    split = split_by_name({"SSL_cert_file": "c.pem", "SSL_version": "TLSv1_3"}, WHERE)
    assert list(split) == [""]
    assert split[""][0]["SSL_cert_file"] == "c.pem" and split[""][0]["SSL_key_file"] is None


def test_split_by_name_with_scalars_and_ecc_twins() -> None:
    from gnetserver.tls.sni import split_by_name

    opts = {
        "SSL_cert_file": {"": "d.pem", "B.Example.": "b.pem", "b.example%ecc": "b-ec.pem"},
        "SSL_key_file": {"b.example": "b.key"},
        "SSL_ocsp_staple_callback": print,
    }
    split = split_by_name(opts, WHERE)
    assert list(split) == ["", "b.example"]
    assert [c["SSL_cert_file"] for c in split["b.example"]] == ["b.pem", "b-ec.pem"]
    assert [c["SSL_key_file"] for c in split["b.example"]] == ["b.key", None]
    assert split[""][0]["SSL_key_file"] is None
    assert all(c["SSL_ocsp_staple_callback"] is print for cs in split.values() for c in cs)


@pytest.mark.parametrize(("opts", "message"), [
    ({"SSL_cert_file": {"a%rsa": "x"}}, "only the suffix '%ecc' is known"),
    ({"SSL_cert_file": {1: "x"}}, "dict keys are SNI host names"),
    ({"SSL_cert_file": {"a%ecc": "x"}}, "adds a certificate to 'a', which has none"),
    ({"SSL_cert_file": {"": "x"}, "SSL_ocsp_staple_file": {"b": "o.der"}},
     "SSL_ocsp_staple_file has an entry for 'b', which has no certificate"),
])
def test_split_errors(opts: dict[str, Any], message: str) -> None:
    from gnetserver.tls.sni import split_by_name

    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        split_by_name(opts, WHERE)
    _assert_names(err)


def test_sni_errors_name_the_host(pems: Pems, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    opts = {"SSL_cert_file": {"": str(pems.combined), "a.example": missing}}
    with pytest.raises(ConfigError) as err:
        build_context(opts, WHERE)
    _assert_names(err, "(SNI name 'a.example')", missing, "cannot read")


# ---------------------------------------------------------------------------------------------
# TLSContexts: sharing, reload, rotation


def test_equal_options_share_one_context(files: dict[str, Any]) -> None:
    contexts = TLSContexts()
    def callback() -> str:
        return "unused"

    first = contexts.handle({**files, "SSL_passwd_cb": callback}, "port a")
    same = contexts.handle({**files, "SSL_passwd_cb": callback}, "port b")
    other = contexts.handle({**files, "SSL_passwd_cb": lambda: "x"}, "port c")
    assert first is same and first is not other
    assert first.ports == ["port a", "port b"]
    assert first.context is same.context
    assert len(contexts.handles) == 2


def test_reload_swaps_every_context_or_none(files: dict[str, Any], pems: Pems,
                                            tmp_path: Path) -> None:
    contexts = TLSContexts()
    copy = tmp_path / "copy.pem"
    copy.write_bytes(pems.combined.read_bytes())
    a = contexts.handle(files, "port a")
    b = contexts.handle({"SSL_cert_file": str(copy)}, "port b")
    before = (a.context, b.context)
    copy.write_bytes(b"broken")
    with pytest.raises(ConfigError, match="port b: SSL_cert_file"):
        contexts.reload()
    assert (a.context, b.context) == before
    copy.write_bytes(pems.combined.read_bytes())
    contexts.reload()
    assert a.context is not before[0] and b.context is not before[1]


def test_rotation_rebuilds_after_its_period(files: dict[str, Any], pems: Pems) -> None:
    contexts = TLSContexts()
    handle = contexts.handle({**files, "SSL_ticket_key_rotation": 60}, WHERE)
    first = handle.context
    assert handle.context is first  # within the period
    handle.built_at -= 61  # as if a minute had passed
    assert handle.context is not first
    never = contexts.handle(files, "port never")
    never.built_at -= 10**6
    assert never.context is never.context  # 0: no rotation


def test_failed_rotation_keeps_the_context_and_warns(pems: Pems, tmp_path: Path) -> None:
    warnings: list[str] = []
    copy = tmp_path / "copy.pem"
    copy.write_bytes(pems.combined.read_bytes())
    handle = TLSContexts(warnings.append).handle(
        {"SSL_cert_file": str(copy), "SSL_ticket_key_rotation": 1}, WHERE)
    first = handle.context
    copy.write_bytes(b"broken")
    handle.built_at -= 2
    assert handle.context is first
    assert len(warnings) == 1 and "session-ticket key rotation failed" in warnings[0]
    assert handle.context is first and len(warnings) == 1  # retried one period later
