"""TLS per port (issue 2, point 7): certificates per port, from options, methods and attributes;
start-time errors naming port and file; secure defaults checked with real stdlib clients."""

from __future__ import annotations

import socket
import ssl
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from support.net import address, read_until_eof, tls_connect
from support.tls import trusting, write_leaf

from gnetserver import GServer
from gnetserver.errors import ConfigError
from gnetserver.tls.context import SUPPORTED_SSL_OPTIONS

pytestmark = pytest.mark.timeout(20)


def issue_leaf(ca: trustme.CA, folder: Path, name: str) -> dict[str, Any]:
    """A distinct leaf certificate for localhost/127.0.0.1 as PEM files, and its DER."""
    leaf = ca.issue_cert("localhost", "127.0.0.1", common_name=name)
    files = write_leaf(leaf, folder / f"{name}-cert.pem", folder / f"{name}-key.pem")
    der = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).public_bytes(
        Encoding.DER)
    return {**files, "der": der}


@pytest.fixture(scope="module")
def leaves(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("leaves")
    return {name: issue_leaf(ca, folder, name) for name in ("one", "two", "three")}


def files(leaf: dict[str, Any]) -> dict[str, str]:
    return {"SSL_cert_file": leaf["SSL_cert_file"], "SSL_key_file": leaf["SSL_key_file"]}


def peer_der(server: GServer, context: ssl.SSLContext, index: int = 0) -> bytes:
    """The certificate a verifying stdlib client receives from listener ``index``."""
    with tls_connect(server, context, index) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def ssl_port(**keys: Any) -> dict[str, Any]:
    return {"port": 0, "host": "127.0.0.1", "proto": "ssl", **keys}


# -- where certificates come from ----------------------------------------------------------------


def test_two_ports_two_certificates(serve: Callable[..., GServer], leaves: dict[str, Any],
                                    client_context: ssl.SSLContext) -> None:
    server = serve(GServer, port=[ssl_port(**files(leaves["one"])),
                                  ssl_port(**files(leaves["two"]))])
    assert peer_der(server, client_context, 0) == leaves["one"]["der"]
    assert peer_der(server, client_context, 1) == leaves["two"]["der"]


class FromMethod(GServer):
    """Certificates from a method (called per port with host, port, proto) and an attribute."""

    SSL_key_file: str  # set per test, as a plain attribute

    def SSL_cert_file(self, host: str, port: int, proto: str) -> str:  # noqa: N802
        self.asked.append((host, port, proto))
        return self.cert_for_method

    def configure_hook(self) -> None:
        self.asked: list[tuple[str, int, str]] = []


def test_certificate_from_method_and_attribute(serve: Callable[..., GServer],
                                               leaves: dict[str, Any],
                                               client_context: ssl.SSLContext) -> None:
    """Precedence per port: per-port dict > server-wide option > method/attribute."""
    server = FromMethod(port=[ssl_port(), ssl_port(**files(leaves["one"]))])
    server.cert_for_method = leaves["two"]["SSL_cert_file"]
    server.SSL_key_file = leaves["two"]["SSL_key_file"]
    serve(server)
    assert server.asked == [("127.0.0.1", 0, "ssl")]  # the second port has its own cert
    assert peer_der(server, client_context, 0) == leaves["two"]["der"]
    assert peer_der(server, client_context, 1) == leaves["one"]["der"]


def test_server_wide_option_beats_the_method(serve: Callable[..., GServer],
                                             leaves: dict[str, Any],
                                             client_context: ssl.SSLContext) -> None:
    server = FromMethod(port=[ssl_port()], **files(leaves["three"]))
    server.cert_for_method = leaves["two"]["SSL_cert_file"]
    serve(server)
    assert server.asked == []
    assert peer_der(server, client_context) == leaves["three"]["der"]


# -- errors at start -----------------------------------------------------------------------------


def _garbage(tmp_path: Path) -> str:
    path = tmp_path / "garbage.pem"
    path.write_text("-----BEGIN PRIVATE KEY-----\nnot base64 at all\n-----END PRIVATE KEY-----\n")
    return str(path)


START_ERRORS = [
    # (id, cert file, key file, the files the message names, other words it holds)
    ("missing-cert", "missing", "one-key", ["cert"], ["SSL_cert_file", "cannot read"]),
    ("missing-key", "one-cert", "missing", ["key"], ["SSL_key_file", "cannot read"]),
    ("mismatch", "one-cert", "two-key", ["cert", "key"], ["does not match"]),
    ("garbage-key", "one-cert", "garbage", ["key"], ["private key"]),
    ("garbage-cert", "garbage", "one-key", ["cert"], ["no valid PEM certificate"]),
]


@pytest.mark.parametrize("cert, key, named, words", [r[1:] for r in START_ERRORS],
                         ids=[r[0] for r in START_ERRORS])
@pytest.mark.parametrize("where", ["per-port", "server-wide"])
def test_bad_certificate_or_key_stops_the_start(cert: str, key: str, named: list[str],
                                                words: list[str], where: str,
                                                leaves: dict[str, Any], tmp_path: Path) -> None:
    paths = {"missing": str(tmp_path / "missing.pem"), "garbage": _garbage(tmp_path)}
    for name in ("one", "two"):
        paths[f"{name}-cert"] = leaves[name]["SSL_cert_file"]
        paths[f"{name}-key"] = leaves[name]["SSL_key_file"]
    tls = {"SSL_cert_file": paths[cert], "SSL_key_file": paths[key]}
    # A good TCP port first: it must not stay bound when the TLS port fails.
    if where == "per-port":
        server = GServer(port=["127.0.0.1:0/tcp", ssl_port(**tls)], log_level=0)
    else:
        server = GServer(port=["127.0.0.1:0/tcp", "127.0.0.1:0/ssl"], log_level=0, **tls)
    with pytest.raises(ConfigError) as info:
        server.start()
    message = str(info.value)
    assert "port 127.0.0.1:0/ssl" in message
    for which in named:
        assert paths[cert if which == "cert" else key] in message
    for word in words:
        assert word in message
    assert server.listeners == []  # contexts are built before anything is bound


def test_unsupported_ssl_key_server_wide() -> None:
    with pytest.raises(ConfigError) as info:
        GServer(port="127.0.0.1:0/ssl", SSL_not_a_real_option=3, log_level=0).start()
    message = str(info.value)
    assert "SSL_not_a_real_option" in message
    assert all(name in message for name in SUPPORTED_SSL_OPTIONS)


def test_unsupported_ssl_key_per_port(leaves: dict[str, Any]) -> None:
    port = ssl_port(SSL_frobnicate=1, **files(leaves["one"]))
    with pytest.raises(ConfigError) as info:
        GServer(port=[port], log_level=0).start()
    message = str(info.value)
    assert "port 127.0.0.1:0/ssl" in message and "SSL_frobnicate" in message
    assert all(name in message for name in SUPPORTED_SSL_OPTIONS)


# -- secure defaults -----------------------------------------------------------------------------


@pytest.fixture
def tls_server(serve: Callable[..., GServer], leaves: dict[str, Any]) -> GServer:
    return serve(GServer, port="127.0.0.1:0/ssl", log_level=0, **files(leaves["one"]))


def client(ca: trustme.CA, low: ssl.TLSVersion | None = None,
           high: ssl.TLSVersion | None = None, ciphers: str | None = None) -> ssl.SSLContext:
    versions = {"minimum_version": low, "maximum_version": high}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.1 is deprecated: on purpose
        return trusting(ca, ciphers=ciphers,
                        **{name: value for name, value in versions.items() if value is not None})


def test_tls_11_client_is_refused(tls_server: GServer, ca: trustme.CA) -> None:
    """The client really offers TLS 1.0/1.1 (security level 0); the server answers with a
    protocol_version alert, and keeps serving."""
    old = client(ca, ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0")
    with pytest.raises(ssl.SSLError, match="PROTOCOL_VERSION|UNSUPPORTED_PROTOCOL"):
        tls_connect(tls_server, old).close()
    with tls_connect(tls_server, client(ca)) as tls:
        assert tls.recv(100).startswith(b"Welcome")


@pytest.mark.parametrize("version, name", [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
                                           (ssl.TLSVersion.TLSv1_3, "TLSv1.3")])
def test_tls_12_and_13_succeed_with_fs_aead_and_no_compression(
    tls_server: GServer, ca: trustme.CA, version: ssl.TLSVersion, name: str
) -> None:
    with tls_connect(tls_server, client(ca, version, version)) as tls:
        assert tls.version() == name
        cipher, _, bits = tls.cipher()
        assert tls.compression() is None
        assert tls.recv(100).startswith(b"Welcome")
    if name == "TLSv1.2":
        assert cipher.startswith("ECDHE-") and ("GCM" in cipher or "CHACHA20" in cipher)
    else:
        assert cipher in ("TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256",
                          "TLS_CHACHA20_POLY1305_SHA256")
    assert bits >= 128


@pytest.mark.parametrize("ciphers", ["AES128-SHA:AES256-SHA", "AES128-GCM-SHA256",
                                     "ECDHE-ECDSA-AES128-SHA:ECDHE-RSA-AES128-SHA"])
def test_tls_12_without_forward_secret_aead_is_refused(tls_server: GServer, ca: trustme.CA,
                                                       ciphers: str) -> None:
    """Static RSA key exchange or CBC suites only: no shared cipher."""
    weak = client(ca, ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_2, ciphers)
    with pytest.raises(ssl.SSLError, match="HANDSHAKE_FAILURE|NO_SHARED_CIPHER"):
        tls_connect(tls_server, weak).close()


def test_handshake_failure_does_not_reach_the_handler(serve: Callable[..., GServer],
                                                      leaves: dict[str, Any],
                                                      client_context: ssl.SSLContext) -> None:
    """Plain text sent to a TLS port ends that connection only; the next client is served."""
    server = serve(GServer, port="127.0.0.1:0/ssl", log_level=0, **files(leaves["one"]))
    with socket.create_connection(address(server), timeout=5) as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        assert b"Welcome" not in read_until_eof(plain)
    with tls_connect(server, client_context) as tls:
        assert tls.recv(100).startswith(b"Welcome")
