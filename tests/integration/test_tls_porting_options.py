"""Issue 12: IO::Socket::SSL options a port from Perl needs, each over a real handshake.

* ``SSL_client_ca_file``/``SSL_client_ca``: the CA names of the CertificateRequest, as
  ``openssl s_client`` prints them ("Acceptable client certificate CA names").
* DER and PKCS#12 files in ``SSL_cert_file``/``SSL_key_file`` (told apart by content), with
  ``SSL_passwd_cb`` for encrypted ones, on proto ssl and ssleay: a verifying stdlib client gets
  the very certificate (and chain) of the file.
* ``SSL_error_trap(client, error)``: called when a handshake fails (a client sending garbage),
  on ssl and ssleay; what the trap raises is logged.
"""

from __future__ import annotations

import queue
import shutil
import socket
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from support.net import address, poll, tls_connect

from gnetserver import GServer
from gnetserver.errors import ConfigError, TLSError

pytestmark = pytest.mark.timeout(30)

PROTOS = ["ssl", "ssleay"]


class Hello(GServer):
    """Says hello and closes."""

    def process_request(self, client: Any) -> None:
        client.sendall(b"hello\n")


def tls_port(proto: str = "ssl", **keys: Any) -> dict[str, Any]:
    return {"port": 0, "host": "127.0.0.1", "proto": proto, **keys}


def peer_chain(server: GServer, context: ssl.SSLContext) -> tuple[bytes, bytes]:
    """The leaf (DER) a verifying stdlib client received, and the server's first line."""
    with tls_connect(server, context) as tls:
        der = tls.getpeercert(binary_form=True)
        line = tls.recv(100)
    assert der is not None
    return der, line


def leaf_der(leaf: trustme.LeafCert) -> bytes:
    return x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
        serialization.Encoding.DER)


# -- SSL_client_ca_file ------------------------------------------------------------------------


def s_client_ca_names(server: GServer) -> str:
    """What ``openssl s_client`` prints about the CertificateRequest's CA names."""
    host, port = address(server)
    result = subprocess.run(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-servername", "localhost"],
        input=b"", capture_output=True, timeout=15, check=False)
    out = result.stdout.decode("utf-8", "replace")
    assert "Server certificate" in out, out + result.stderr.decode("utf-8", "replace")
    start = out.find("client certificate CA names")
    assert start >= 0, out
    start = out.rfind("\n", 0, start) + 1  # the whole line: "Acceptable ..." or "No ..."
    return out[start:out.find("---", start)]


@pytest.fixture(scope="module")
def other_ca() -> trustme.CA:
    return trustme.CA(organization_name="Other Client CA")


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_client_ca_file_names_reach_the_client(serve: Callable[..., GServer],
                                               certs: dict[str, str], ca: trustme.CA,
                                               other_ca: trustme.CA, tmp_path: Path) -> None:
    names = tmp_path / "client-cas.pem"
    names.write_bytes(other_ca.cert_pem.bytes() + ca.cert_pem.bytes())
    trust = tmp_path / "trust.pem"
    trust.write_bytes(ca.cert_pem.bytes())
    base = {**certs, "SSL_ca_file": str(trust), "SSL_verify_mode": 1}
    server = serve(Hello, port=[tls_port(**base, SSL_client_ca_file=str(names))])
    listed = s_client_ca_names(server)
    assert "Acceptable client certificate CA names" in listed
    assert "Other Client CA" in listed and "trustme" in listed, listed  # both, in order
    assert listed.index("Other Client CA") < listed.index("trustme")
    # Without it, OpenSSL lists none (the trusted CAs are not announced).
    plain = serve(Hello, port=[tls_port(**base)])
    assert "No client certificate CA names sent" in s_client_ca_names(plain)


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_client_ca_objects_in_memory(serve: Callable[..., GServer], certs: dict[str, str],
                                     ca: trustme.CA, other_ca: trustme.CA,
                                     tmp_path: Path) -> None:
    trust = tmp_path / "trust.pem"
    trust.write_bytes(ca.cert_pem.bytes())
    other = x509.load_pem_x509_certificate(other_ca.cert_pem.bytes())
    server = serve(Hello, port=[tls_port(**certs, SSL_ca_file=str(trust), SSL_verify_mode=1,
                                         SSL_client_ca=[other])])
    listed = s_client_ca_names(server)
    assert "Other Client CA" in listed


def test_client_ca_file_needs_a_verify_mode(certs: dict[str, str], ca: trustme.CA,
                                            tmp_path: Path) -> None:
    names = tmp_path / "client-cas.pem"
    names.write_bytes(ca.cert_pem.bytes())
    server = Hello(port=[tls_port(**certs, SSL_client_ca_file=str(names))])
    with pytest.raises(ConfigError, match="SSL_client_ca_file is sent only when client "
                                          "certificates are asked for"):
        server.start()


def test_client_ca_file_is_refused_on_ssleay(certs: dict[str, str], ca: trustme.CA,
                                             tmp_path: Path) -> None:
    names = tmp_path / "client-cas.pem"
    names.write_bytes(ca.cert_pem.bytes())
    server = Hello(port=[tls_port("ssleay", **certs, SSL_ca_file=str(names), SSL_verify_mode=1,
                                  SSL_client_ca_file=str(names))])
    with pytest.raises(ConfigError, match="SSL_client_ca_file not supported by proto ssleay "
                                          r"\(proto ssl supports more\)"):
        server.start()


# -- DER and PKCS#12 ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def leaf(ca: trustme.CA) -> trustme.LeafCert:
    return ca.issue_cert("localhost", "127.0.0.1")


def key_of(leaf: trustme.LeafCert) -> Any:
    return serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)


def chain_of(leaf: trustme.LeafCert) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(blob.bytes()) for blob in leaf.cert_chain_pems]


def write_der(leaf: trustme.LeafCert, folder: Path,
              encryption: serialization.KeySerializationEncryption | None = None
              ) -> dict[str, str]:
    cert, key = folder / "cert.der", folder / "key.der"
    cert.write_bytes(leaf_der(leaf))
    key.write_bytes(key_of(leaf).private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
        encryption or serialization.NoEncryption()))
    return {"SSL_cert_file": str(cert), "SSL_key_file": str(key)}


def write_p12(leaf: trustme.LeafCert, path: Path, password: bytes | None,
              with_key: bool = True, cas: list[x509.Certificate] | None = None) -> str:
    chain = chain_of(leaf)
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password) if password
        else serialization.NoEncryption())
    path.write_bytes(pkcs12.serialize_key_and_certificates(
        b"gnetserver", key_of(leaf) if with_key else None, chain[0],
        chain[1:] if cas is None else cas, encryption))
    return str(path)


@pytest.mark.parametrize("proto", PROTOS)
def test_der_certificate_and_key(serve: Callable[..., GServer], proto: str,
                                 leaf: trustme.LeafCert, tmp_path: Path,
                                 client_context: ssl.SSLContext) -> None:
    server = serve(Hello, port=[tls_port(proto, **write_der(leaf, tmp_path))])
    assert peer_chain(server, client_context) == (leaf_der(leaf), b"hello\n")


@pytest.mark.parametrize("proto", PROTOS)
def test_encrypted_der_key_with_passwd_cb(serve: Callable[..., GServer], proto: str,
                                          leaf: trustme.LeafCert, tmp_path: Path,
                                          client_context: ssl.SSLContext) -> None:
    files = write_der(leaf, tmp_path, serialization.BestAvailableEncryption(b"s3cret"))
    with pytest.raises(ConfigError, match="encrypted private key; give SSL_passwd_cb"):
        Hello(port=[tls_port(proto, **files)]).start()
    server = serve(Hello, port=[tls_port(proto, **files, SSL_passwd_cb=lambda: "s3cret")])
    assert peer_chain(server, client_context)[0] == leaf_der(leaf)


@pytest.mark.parametrize("proto", PROTOS)
@pytest.mark.parametrize("name", ["server.p12", "server.pfx", "no-extension"])
def test_pkcs12_with_passphrase(serve: Callable[..., GServer], proto: str, name: str,
                                ca: trustme.CA, tmp_path: Path,
                                client_context: ssl.SSLContext) -> None:
    """A PKCS#12 file with an intermediate CA: the client verifies the chain it carries."""
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("localhost", "127.0.0.1")
    assert len(leaf.cert_chain_pems) == 2  # leaf + intermediate: the chain must be sent
    # The extra certificates in reverse order: the server puts them back in chain order.
    path = write_p12(leaf, tmp_path / name, b"pfx-pass", cas=chain_of(leaf)[1:][::-1])
    asked: list[int] = []

    def passwd() -> str:
        asked.append(1)
        return "pfx-pass"

    server = serve(Hello, port=[tls_port(proto, SSL_cert_file=path, SSL_passwd_cb=passwd)])
    assert peer_chain(server, client_context) == (leaf_der(leaf), b"hello\n")
    assert asked


@pytest.mark.parametrize("proto", PROTOS)
def test_pkcs12_without_passphrase(serve: Callable[..., GServer], proto: str,
                                   leaf: trustme.LeafCert, tmp_path: Path,
                                   client_context: ssl.SSLContext) -> None:
    path = write_p12(leaf, tmp_path / "open.p12", None)
    server = serve(Hello, port=[tls_port(proto, SSL_cert_file=path)])
    assert peer_chain(server, client_context)[0] == leaf_der(leaf)


@pytest.mark.parametrize("proto", PROTOS)
def test_pkcs12_errors_name_the_file(proto: str, leaf: trustme.LeafCert,
                                     tmp_path: Path) -> None:
    locked = write_p12(leaf, tmp_path / "locked.p12", b"right")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"SSL_cert_file": locked}, "needs a passphrase: give SSL_passwd_cb"),
        ({"SSL_cert_file": locked, "SSL_passwd_cb": lambda: "wrong"},
         "cannot open SSL_cert_file .*locked.p12.* as PKCS#12 .wrong passphrase"),
        ({"SSL_cert_file": locked, "SSL_passwd_cb": lambda: "right",
          "SSL_key_file": write_der(leaf, tmp_path)["SSL_key_file"]},
         "is a PKCS#12 file with its own key; drop SSL_key_file"),
        ({"SSL_cert_file": write_p12(leaf, tmp_path / "nokey.p12", None, with_key=False)},
         "is a PKCS#12 file without a private key; give SSL_key_file"),
        ({"SSL_cert_file": write_der(leaf, tmp_path)["SSL_cert_file"]},
         "is a DER file without a private key; give SSL_key_file"),
    ]
    garbage = tmp_path / "garbage.bin"
    garbage.write_bytes(b"\x00\x01 neither PEM nor DER")
    cases.append(({"SSL_cert_file": str(garbage)},
                  "no valid PEM certificate .nor a DER certificate or a PKCS#12 file."))
    for opts, message in cases:
        with pytest.raises(ConfigError, match=message) as err:
            Hello(port=[tls_port(proto, **opts)]).start()
        assert "port 127.0.0.1:0/" in str(err.value)


# -- SSL_error_trap ----------------------------------------------------------------------------


class Trapped(Hello):
    """Records what SSL_error_trap receives."""

    def __init__(self, **options: Any) -> None:
        self.trapped: queue.Queue[tuple[Any, BaseException]] = queue.Queue()
        super().__init__(**options)

    def SSL_error_trap(self, host: str, port: int, proto: str) -> Any:  # noqa: N802
        """Net::Server's precedence: a method of the option's name returns its value."""
        return lambda client, error: self.trapped.put((client, error))


def send_garbage(server: GServer) -> bytes:
    """A client that speaks no TLS: what it gets back before the server closes."""
    with socket.create_connection(address(server), timeout=5) as raw:
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        chunks = []
        while chunk := raw.recv(4096):
            chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.parametrize("proto", PROTOS)
def test_error_trap_gets_client_and_error(serve: Callable[..., GServer], proto: str,
                                          certs: dict[str, str],
                                          client_context: ssl.SSLContext) -> None:
    server = serve(Trapped, port=[tls_port(proto, **certs)])
    send_garbage(server)
    client, error = server.trapped.get(timeout=5)  # type: ignore[attr-defined]
    assert isinstance(error, TLSError), error
    assert str(error)  # OpenSSL's reason
    assert client.address[0] == "127.0.0.1"
    assert client.peer_text().startswith("[127.0.0.1]:")
    # A good client is served and never trapped.
    assert peer_chain(server, client_context)[1] == b"hello\n"
    assert server.trapped.empty()  # type: ignore[attr-defined]


def test_error_trap_that_raises_is_logged(serve: Callable[..., GServer],
                                          certs: dict[str, str],
                                          caplog: pytest.LogCaptureFixture,
                                          client_context: ssl.SSLContext) -> None:
    def broken(client: Any, error: BaseException) -> None:
        raise RuntimeError("trap exploded")

    server = serve(Hello, log_level=3, port=[tls_port(**certs, SSL_error_trap=broken)])
    send_garbage(server)
    found = poll(lambda: [m for m in caplog.messages if "SSL_error_trap failed" in m])
    assert found and "trap exploded" in found[0] and "[127.0.0.1]:" in found[0], caplog.messages
    assert peer_chain(server, client_context)[1] == b"hello\n"  # the server goes on


def test_error_trap_must_be_callable(certs: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="SSL_error_trap must be callable"):
        Hello(port=[tls_port(**certs, SSL_error_trap="nope")]).start()
