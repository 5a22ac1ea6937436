"""Issue 3, point 3: one port, one certificate per SNI host name; an unknown or absent name gets
the default ('' entry).

Clients send different names (or none) and check which certificate they received: by
verifying it against the name (a wrong certificate fails the handshake) and by reading the
names in the certificate itself.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from support.net import tls_connect
from support.servers import QueueServer
from support.tls import trusting, write_leaf

from gnetserver import GServer

pytestmark = pytest.mark.timeout(20)

NAMES = ("a.example", "b.example")


@pytest.fixture(scope="module")
def sni_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """SSL_cert_file/SSL_key_file dicts: '' -> localhost, a.example, b.example."""
    folder = tmp_path_factory.mktemp("sni")
    cert_files, key_files = {}, {}
    for key, identity in (("", "localhost"), *((name, name) for name in NAMES)):
        stem = identity.replace(".", "_")
        files = write_leaf(ca.issue_cert(identity), folder / f"{stem}.pem", folder / f"{stem}.key")
        cert_files[key], key_files[key] = files["SSL_cert_file"], files["SSL_key_file"]
    return {"SSL_cert_file": cert_files, "SSL_key_file": key_files}


class NameServer(QueueServer):
    """Records the SNI name each client sent."""

    def observe(self, client: Any) -> str | None:
        return client.server_name


def dns_names(tls: ssl.SSLSocket) -> list[str]:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return names.get_values_for_type(x509.DNSName)


def received(server: GServer, context: ssl.SSLContext, name: str | None) -> list[str]:
    """The DNS names of the certificate a client sending ``name`` gets."""
    with tls_connect(server, context, server_hostname=name) as tls:  # type: ignore[arg-type]
        assert tls.recv(10) == b"ok\n"
        return dns_names(tls)


def unverified(ca: trustme.CA) -> ssl.SSLContext:
    """Trusts the CA but does not check the name: to see which certificate comes back."""
    return trusting(ca, check_hostname=False)


@pytest.mark.parametrize("name", NAMES)
def test_each_name_gets_its_certificate(serve: Any, sni_files: dict[str, Any],
                                        client_context: ssl.SSLContext, name: str) -> None:
    server = serve(NameServer(port="127.0.0.1:0/ssl", **sni_files))
    # client_context checks the host name: the handshake only succeeds with the right one.
    assert received(server, client_context, name) == [name]
    assert server.seen.get(timeout=5) == name


def test_names_match_case_insensitively(serve: Any, sni_files: dict[str, Any],
                                        client_context: ssl.SSLContext) -> None:
    server = serve(NameServer(port="127.0.0.1:0/ssl", **sni_files))
    assert received(server, client_context, "B.Example") == ["b.example"]


@pytest.mark.parametrize("name", ["unknown.example", None])
def test_unknown_or_absent_name_gets_the_default(serve: Any, sni_files: dict[str, Any],
                                                 ca: trustme.CA, name: str | None) -> None:
    server = serve(NameServer(port="127.0.0.1:0/ssl", **sni_files))
    assert received(server, unverified(ca), name) == ["localhost"]
    assert server.seen.get(timeout=5) == name


def test_the_wrong_certificate_fails_verification(serve: Any, sni_files: dict[str, Any],
                                                  client_context: ssl.SSLContext) -> None:
    """Twin of the tests above: a verifying client asking for a name that the default
    certificate does not cover is refused, so they did test the selection."""
    server = serve(NameServer(port="127.0.0.1:0/ssl", **sni_files))
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        received(server, client_context, "unknown.example")


def test_without_a_default_unknown_names_are_refused(serve: Any, sni_files: dict[str, Any],
                                                     ca: trustme.CA,
                                                     client_context: ssl.SSLContext) -> None:
    no_default = {key: {k: v for k, v in table.items() if k} for key, table in sni_files.items()}
    server = serve(NameServer(port="127.0.0.1:0/ssl", **no_default))
    assert received(server, client_context, "a.example") == ["a.example"]
    for name in ("unknown.example", None):
        with pytest.raises(ssl.SSLError):
            received(server, unverified(ca), name)


def test_in_memory_certificates_by_name(serve: Any, ca: trustme.CA,
                                        client_context: ssl.SSLContext) -> None:
    leaves = {key: ca.issue_cert(name) for key, name in (("", "localhost"), ("a.example",) * 2)}
    server = serve(NameServer(
        port="127.0.0.1:0/ssl",
        SSL_cert={k: b"".join(b.bytes() for b in v.cert_chain_pems) for k, v in leaves.items()},
        SSL_key={k: v.private_key_pem.bytes() for k, v in leaves.items()},
    ))
    assert received(server, client_context, "a.example") == ["a.example"]
    assert received(server, client_context, "localhost") == ["localhost"]


def test_a_second_ecdsa_certificate_for_a_name(serve: Any, tmp_path: Path) -> None:
    """'name%ecc' adds an ECDSA certificate beside the RSA one; OpenSSL serves the one the
    client's cipher needs."""
    ca = trustme.CA(key_type=trustme.KeyType.RSA)
    rsa = ca.issue_cert("localhost", key_type=trustme.KeyType.RSA)
    ecdsa = ca.issue_cert("localhost", key_type=trustme.KeyType.ECDSA)
    files = {}
    for key, leaf in (("", rsa), ("%ecc", ecdsa)):
        path = tmp_path / f"cert{key.strip('%')}.pem"
        leaf.private_key_and_cert_chain_pem.write_to_path(str(path))
        files[key] = str(path)
    server = serve(NameServer(port="127.0.0.1:0/ssl", SSL_cert_file=files))
    for cipher, leaf in (("ECDHE-RSA-AES128-GCM-SHA256", rsa),
                         ("ECDHE-ECDSA-AES128-GCM-SHA256", ecdsa)):
        context = trusting(ca, maximum_version=ssl.TLSVersion.TLSv1_2, ciphers=cipher)
        with tls_connect(server, context) as tls:
            assert tls.recv(10) == b"ok\n"
            expected = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
            assert tls.getpeercert(binary_form=True) == expected.public_bytes(Encoding.DER)
