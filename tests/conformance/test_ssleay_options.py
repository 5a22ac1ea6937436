"""What only proto ssleay has to prove: its options (gnetserver/tls/stdlib_context.py) are
honoured or refused at start with a clear message, and certificates given in memory work.

The shared behaviour of both TLS backends is in test_tls.py.
"""

from __future__ import annotations

import json
import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from support.conformance import ConformanceServer, Endpoint, issue_files
from support.net import read_line

from gnetserver import GServer
from gnetserver.errors import ConfigError

pytestmark = pytest.mark.timeout(20)

PORT = "127.0.0.1:0/ssleay"


def start(serve: Callable[..., GServer], ca: trustme.CA, **options: Any) -> Endpoint:
    options.setdefault("port", PORT)
    return Endpoint(serve(ConformanceServer, log_level=1, **options), "ssleay", ca, "")


def facts(endpoint: Endpoint, **connect: Any) -> dict[str, Any]:
    with endpoint.connect(**connect) as sock:
        sock.sendall(b"FACTS\n")
        return dict(json.loads(read_line(sock)))


def test_option_only_proto_ssl_has_is_refused_with_the_supported_list(
        serve: Callable[..., GServer], certs: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as error:
        serve(GServer, port=PORT, SSL_ciphersuites="TLS_AES_128_GCM_SHA256", **certs)
    message = str(error.value)
    assert "port 127.0.0.1:0/ssleay" in message and "SSL_ciphersuites" in message
    assert "ssleay supports:" in message and "SSL_alpn_protocols, SSL_ca_file" in message


@pytest.mark.parametrize(("options", "words"), [
    ({"SSL_version": "TLSv9"}, ["SSL_version", "TLSv9"]),
    ({"SSL_cipher_list": "NOPE-NOTHING"}, ["SSL_cipher_list", "NOPE-NOTHING"]),
    ({"SSL_ecdh_curve": "P-256:X25519"}, ["SSL_ecdh_curve", "one curve"]),
    ({"SSL_ecdh_curve": "P-999"}, ["SSL_ecdh_curve", "P-999"]),
    ({"SSL_verify_mode": 3}, ["SSL_verify_mode", "SSL_ca_file"]),
    ({"SSL_ca_file": "/nonexistent/ca.pem"}, ["SSL_ca_file", "/nonexistent/ca.pem"]),
    ({"SSL_alpn_protocols": ""}, ["SSL_alpn_protocols"]),
    ({"SSL_honor_cipher_order": "maybe"}, ["SSL_honor_cipher_order", "maybe"]),
    ({"SSL_cert_file": "/nonexistent/cert.pem"}, ["SSL_cert_file", "cannot read"]),
])
def test_bad_option_fails_at_start(serve: Callable[..., GServer], certs: dict[str, str],
                                   options: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as error:
        serve(GServer, port=PORT, **{**certs, **options})
    assert all(word in str(error.value) for word in words), str(error.value)
    assert str(error.value).startswith("port 127.0.0.1:0/ssleay")


@pytest.mark.parametrize(("extra", "text"), [
    ({"SSL_cert_fiel": "x"}, "unsupported option(s) SSL_cert_fiel; supported: SSL_alpn_"),
    ({"SSL_ticket_keycb": print}, "SSL_ticket_keycb cannot be honoured: pyOpenSSL"),
    ({"SSL_verify_mode": 9}, "invalid SSL_verify_mode 9 (a bitmask 0..7: 1 peer"),
    ({"SSL_honor_cipher_order": "maybe"}, "invalid SSL_honor_cipher_order 'maybe' (expected"),
])
def test_names_and_values_are_checked_as_for_proto_ssl(serve: Callable[..., GServer],
                                                       certs: dict[str, str],
                                                       extra: dict[str, Any], text: str) -> None:
    """One check of option names, SSL_verify_mode and truth values for both backends: the
    messages are proto ssl's (per-port keys: the server-wide table knows no typos)."""
    port = {"host": "127.0.0.1", "port": 0, "proto": "ssleay", **certs, **extra}
    with pytest.raises(ConfigError) as error:
        serve(GServer, port=[port])
    assert str(error.value).startswith(f"port 127.0.0.1:0/ssleay: {text}"), str(error.value)


def test_missing_certificate_and_mismatched_key(serve: Callable[..., GServer], ca: trustme.CA,
                                                tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs SSL_cert_file"):
        serve(GServer, port=PORT)
    one = issue_files(ca, str(tmp_path), "one", "localhost")
    two = issue_files(ca, str(tmp_path), "two", "localhost")
    with pytest.raises(ConfigError, match="key values mismatch"):
        serve(GServer, port=PORT, SSL_cert_file=one["cert"], SSL_key_file=two["key"])


def test_encrypted_key_needs_the_passphrase(serve: Callable[..., GServer], ca: trustme.CA,
                                            tmp_path: Path) -> None:
    files = issue_files(ca, str(tmp_path), "leaf", "localhost")
    key = serialization.load_pem_private_key(Path(files["key"]).read_bytes(), None)
    Path(files["key"]).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"s3cret")))
    common = {"SSL_cert_file": files["cert"], "SSL_key_file": files["key"]}
    with pytest.raises(ConfigError, match="encrypted private key; give SSL_passwd_cb"):
        serve(GServer, port=PORT, **common)  # and never a prompt on the terminal
    with pytest.raises(ConfigError, match="SSL_key_file"):
        serve(GServer, port=PORT, SSL_passwd_cb=lambda: "wrong", **common)
    endpoint = start(serve, ca, SSL_passwd_cb=lambda: "s3cret", **common)
    assert facts(endpoint)["version"] == "TLSv1.3"


def test_certificate_objects_in_memory_leave_no_file(serve: Callable[..., GServer],
                                                     ca: trustme.CA, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    from cryptography import x509

    leaf = ca.issue_cert("localhost")
    chain = [x509.load_pem_x509_certificate(blob.bytes()) for blob in leaf.cert_chain_pems]
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), None)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    endpoint = start(serve, ca, SSL_cert=chain, SSL_key=key)
    assert os.listdir(scratch) == []  # the PEM copies were removed right after loading
    assert facts(endpoint)["version"] == "TLSv1.3"  # and the client verified the chain


def test_self_signed(serve: Callable[..., GServer], ca: trustme.CA) -> None:
    endpoint = start(serve, ca, self_signed=True)
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    lax.check_hostname, lax.verify_mode = False, ssl.CERT_NONE
    assert facts(endpoint, context=lax)["version"] == "TLSv1.3"


def test_per_port_dict_and_single_curve(serve: Callable[..., GServer], ca: trustme.CA,
                                        certs: dict[str, str]) -> None:
    port = {"host": "127.0.0.1", "port": 0, "proto": "ssleay", "SSL_ecdh_curve": "P-384",
            "SSL_version": "TLSv1_2", **certs}
    endpoint = start(serve, ca, port=port)
    with endpoint.connect() as sock:
        sock.sendall(b"FACTS\n")
        assert json.loads(read_line(sock))["version"] == "TLSv1.2"
    only_x25519 = endpoint.client_context()
    only_x25519.set_ecdh_curve("X25519")  # the client offers just this group
    with pytest.raises(ssl.SSLError):
        endpoint.connect(context=only_x25519).close()


def test_sni_without_default_refuses_unknown_names(serve: Callable[..., GServer],
                                                   ca: trustme.CA, tmp_path: Path) -> None:
    named = issue_files(ca, str(tmp_path), "named", "named.test")
    endpoint = start(serve, ca, SSL_cert_file={"named.test": named["cert"]},
                     SSL_key_file={"named.test": named["key"]})
    assert facts(endpoint, server_hostname="named.test")["server_name"] == "named.test"
    with pytest.raises(ssl.SSLError, match="UNRECOGNIZED_NAME|unrecognized name"):
        endpoint.connect(server_hostname="other.test").close()


def test_second_ecdsa_certificate_per_name(serve: Callable[..., GServer], ca: trustme.CA,
                                           tmp_path: Path) -> None:
    rsa = ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    rsa_files = {"cert": str(tmp_path / "rsa.pem"), "key": str(tmp_path / "rsa.key")}
    Path(rsa_files["cert"]).write_bytes(b"".join(b.bytes() for b in rsa.cert_chain_pems))
    rsa.private_key_pem.write_to_path(rsa_files["key"])
    ecc = issue_files(ca, str(tmp_path), "ecc", "localhost")
    endpoint = start(serve, ca, SSL_version="TLSv1_2",
                     SSL_cert_file={"": rsa_files["cert"], "%ecc": ecc["cert"]},
                     SSL_key_file={"": rsa_files["key"], "%ecc": ecc["key"]})
    for suites, cipher in (("ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256"),
                           ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES128-GCM-SHA256")):
        context = endpoint.client_context()
        context.set_ciphers(suites)
        assert facts(endpoint, context=context)["cipher"] == cipher
