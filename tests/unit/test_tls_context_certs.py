"""build_context: where certificates and keys come from (files, memory, encrypted, made
self-signed), and the errors that name the port, the option and the path.

Certificates come from the session's ``trustme.CA`` (PEMs written under ``tmp_path`` by the
``pems``/``pem_files`` fixtures); behaviour is checked with real handshakes on 127.0.0.1
(support/handshake.py): the server side runs in this thread's gevent hub, a stdlib ``ssl``
client in a plain thread.
"""

from __future__ import annotations

import hashlib
import re
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from support.handshake import WHERE, Pems, assert_names, cert_objects, handshake, key_object, ok
from support.tls import trusting

from gnetserver.errors import ConfigError
from gnetserver.tls import (
    SUPPORTED_SSL_OPTIONS,
    build_context,
    fingerprint_sha256,
    make_self_signed,
)

pytestmark = pytest.mark.timeout(10)


# ---------------------------------------------------------------------------------------------
# The table


def test_every_supported_option_is_documented_with_its_default() -> None:
    for name, doc in SUPPORTED_SSL_OPTIONS.items():
        assert name.startswith("SSL_")
        assert "default" in doc and "\n" not in doc, name

# ---------------------------------------------------------------------------------------------
# Certificate and key sources


def test_cert_file_and_key_file(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    facts = ok(*handshake(build_context(pem_files, WHERE), trusting(ca)))
    assert facts.version == "TLSv1.3"
    assert facts.peer is None


def test_key_is_read_from_the_cert_file_when_no_key_file(ca: trustme.CA, pems: Pems) -> None:
    ctx = build_context({"SSL_cert_file": str(pems.combined), "SSL_key_file": None}, WHERE)
    ok(*handshake(ctx, trusting(ca)))


@pytest.mark.parametrize(
    "form",
    [
        lambda leaf: {"SSL_cert": cert_objects(leaf)[0], "SSL_key": key_object(leaf)},
        lambda leaf: {"SSL_cert": cert_objects(leaf), "SSL_key": leaf.private_key_pem.bytes()},
        lambda leaf: {
            "SSL_cert": b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
            "SSL_key": leaf.private_key_pem.bytes().decode(),
        },
    ],
    ids=["objects", "list+pem-bytes", "pem-bytes+pem-str"],
)
def test_in_memory_cert_and_key(ca: trustme.CA, pems: Pems, form: Any) -> None:
    ok(*handshake(build_context(form(pems.leaf), WHERE), trusting(ca)))


def _encrypted_key(pems: Pems, password: bytes) -> Path:
    key = key_object(pems.leaf)
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
    ok(*handshake(build_context(opts, WHERE), trusting(ca)))


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


def test_passwd_cb_is_ignored_for_a_plain_key(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    ctx = build_context({**pem_files, "SSL_passwd_cb": lambda: "unused"}, WHERE)
    ok(*handshake(ctx, trusting(ca)))


def test_passwd_cb_that_raises(pems: Pems) -> None:
    def broken() -> str:
        raise RuntimeError("no tty")

    path = _encrypted_key(pems, b"s3cret")
    opts = {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(path), "SSL_passwd_cb": broken}
    with pytest.raises(ConfigError, match="SSL_passwd_cb failed: RuntimeError"):
        build_context(opts, WHERE)

# ---------------------------------------------------------------------------------------------
# Error messages name where, the option and the path


def test_missing_cert_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.pem")
    with pytest.raises(ConfigError, match="cannot read") as err:
        build_context({"SSL_cert_file": path}, WHERE)
    assert_names(err, "SSL_cert_file", path, "No such file")


def test_missing_key_file(pems: Pems, tmp_path: Path) -> None:
    path = str(tmp_path / "nope.key")
    with pytest.raises(ConfigError) as err:
        build_context({"SSL_cert_file": str(pems.cert), "SSL_key_file": path}, WHERE)
    assert_names(err, "SSL_key_file", path)


def test_unreadable_cert_file_is_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as err:
        build_context({"SSL_cert_file": str(tmp_path)}, WHERE)
    assert_names(err, "SSL_cert_file", str(tmp_path))


def test_garbage_cert_pem(pems: Pems) -> None:
    pems.cert.write_bytes(
        b"-----BEGIN CERTIFICATE-----\nnot base64 !!\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(ConfigError, match="no valid PEM certificate") as err:
        build_context({"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key)}, WHERE)
    assert_names(err, "SSL_cert_file", str(pems.cert))


def test_garbage_key_pem(pems: Pems) -> None:
    pems.key.write_bytes(b"this is not a key\n")
    with pytest.raises(ConfigError, match="cannot load a PEM or DER private key") as err:
        build_context({"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key)}, WHERE)
    assert_names(err, "SSL_key_file", str(pems.key))


def test_cert_file_without_key_and_no_key_file(pems: Pems) -> None:
    with pytest.raises(ConfigError, match="no SSL_key_file given") as err:
        build_context({"SSL_cert_file": str(pems.cert)}, WHERE)
    assert_names(err, str(pems.cert))


def test_key_that_does_not_match_the_certificate(ca: trustme.CA, pems: Pems) -> None:
    other = pems.key.with_name("other.key")
    other.write_bytes(ca.issue_cert("localhost").private_key_pem.bytes())
    with pytest.raises(ConfigError, match="does not match") as err:
        build_context({"SSL_cert_file": str(pems.cert), "SSL_key_file": str(other)}, WHERE)
    assert_names(err, "SSL_cert_file", str(pems.cert), "SSL_key_file", str(other))


def test_no_certificate_at_all() -> None:
    with pytest.raises(ConfigError) as err:
        build_context({"SSL_version": "TLSv1_3", "port": 443}, WHERE)
    assert str(err.value) == f"{WHERE}: a TLS port needs SSL_cert_file (or SSL_cert)"


def test_unsupported_ssl_option_lists_the_supported_ones(pem_files: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="unsupported option\\(s\\) SSL_foo, SSL_zap") as err:
        build_context({**pem_files, "SSL_zap": 1, "SSL_foo": "x"}, WHERE)
    listed = str(err.value).split("supported: ", 1)[1].split(", ")
    assert listed == sorted(SUPPORTED_SSL_OPTIONS)
    assert_names(err)


def test_keys_not_starting_with_ssl_are_ignored(ca: trustme.CA, pem_files: dict[str, Any]) -> None:
    ctx = build_context({**pem_files, "port": 8443, "proto": "ssl", "ssl_lowercase": 1}, WHERE)
    ok(*handshake(ctx, trusting(ca)))


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
def test_invalid_values(pem_files: dict[str, Any], extra: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_context({**pem_files, **extra}, WHERE)
    assert_names(err, message)


def test_openssl_reason_is_in_the_cipher_list_error(pem_files: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match="no cipher match"):
        build_context({**pem_files, "SSL_cipher_list": "NOT-A-CIPHER"}, WHERE)


@pytest.mark.parametrize("value", [42, [], ["not a cert"], object()])
def test_ssl_cert_of_the_wrong_type(pems: Pems, value: Any) -> None:
    with pytest.raises(ConfigError, match="SSL_cert must be an x509.Certificate"):
        build_context({"SSL_cert": value, "SSL_key": pems.leaf.private_key_pem.bytes()}, WHERE)


def test_ssl_key_of_the_wrong_type(pems: Pems) -> None:
    with pytest.raises(ConfigError, match="cannot use the private key SSL_key"):
        build_context({"SSL_cert": cert_objects(pems.leaf), "SSL_key": 42}, WHERE)


def test_ssl_cert_without_ssl_key(pems: Pems) -> None:
    with pytest.raises(ConfigError, match="SSL_cert needs SSL_key"):
        build_context({"SSL_cert": cert_objects(pems.leaf)}, WHERE)


def test_garbage_ca_file(pem_files: dict[str, Any], tmp_path: Path) -> None:
    garbage = tmp_path / "ca.pem"
    garbage.write_bytes(b"garbage\n")
    with pytest.raises(ConfigError) as err:
        build_context({**pem_files, "SSL_ca_file": str(garbage), "SSL_verify_mode": 1}, WHERE)
    assert_names(err, "SSL_ca_file", str(garbage))

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
