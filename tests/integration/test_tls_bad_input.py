"""Issue 3, point 9: bad TLS input stops the server at start with a ConfigError naming the
option, the port and the reason: wrong key password, key/certificate mismatch, missing CA file,
invalid SSL_version, unknown curve. An expired certificate is a warning naming it and its
expiry; the server starts (and clients refuse the certificate). SSL_* options a user gives
while no port is TLS are refused too, not ignored (the program's own defaults are not).

Servers are started for real (``serve``, in a thread): the error comes out of ``start``.
"""

from __future__ import annotations

import datetime
import logging
import re
import socket
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography.hazmat.primitives import serialization
from support.net import address, read_line, tls_connect
from support.tls import trusting

from gnetserver import GServer
from gnetserver.errors import ConfigError

pytestmark = pytest.mark.timeout(20)

PORT = "port 127.0.0.1:0/ssl"


def start_fails(serve: Any, **options: Any) -> str:
    """Start a server that must fail; return the ConfigError's text."""
    options.setdefault("port", "127.0.0.1:0/ssl")
    with pytest.raises(ConfigError) as err:
        serve(GServer(**options))
    return str(err.value)


def encrypted_key(certs: dict[str, str], tmp_path: Path, password: bytes) -> str:
    key = serialization.load_pem_private_key(Path(certs["SSL_key_file"]).read_bytes(), None)
    path = tmp_path / "encrypted.key"
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.BestAvailableEncryption(password)))
    return str(path)


def test_wrong_key_password(serve: Any, certs: dict[str, str], tmp_path: Path) -> None:
    key = encrypted_key(certs, tmp_path, b"right")
    text = start_fails(serve, SSL_cert_file=certs["SSL_cert_file"], SSL_key_file=key,
                       SSL_passwd_cb=lambda: "wrong")
    assert text.startswith(f"{PORT}: cannot load a PEM private key from SSL_key_file {key!r}")
    assert "wrong passphrase from SSL_passwd_cb?" in text


def test_right_key_password(serve: Any, certs: dict[str, str], tmp_path: Path,
                            client_context: ssl.SSLContext) -> None:
    """The twin: the same key with the right passphrase serves."""
    key = encrypted_key(certs, tmp_path, b"right")
    server = serve(GServer(port="127.0.0.1:0/ssl", SSL_cert_file=certs["SSL_cert_file"],
                           SSL_key_file=key, SSL_passwd_cb=lambda: b"right"))
    with tls_connect(server, client_context) as tls:
        assert tls.recv(100).startswith(b"Welcome")


def test_key_does_not_match_the_certificate(serve: Any, certs: dict[str, str], ca: trustme.CA,
                                            tmp_path: Path) -> None:
    other = tmp_path / "other.key"
    ca.issue_cert("localhost").private_key_pem.write_to_path(str(other))
    text = start_fails(serve, SSL_cert_file=certs["SSL_cert_file"], SSL_key_file=str(other))
    assert text.startswith(f"{PORT}: the private key (SSL_key_file {str(other)!r}) does not "
                           f"match the certificate (SSL_cert_file {certs['SSL_cert_file']!r})")


def test_missing_ca_file(serve: Any, certs: dict[str, str], tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-ca.pem")
    text = start_fails(serve, SSL_ca_file=missing, SSL_verify_mode=3, **certs)
    assert text == f"{PORT}: SSL_ca_file {missing!r}: cannot read (No such file or directory)"


def test_invalid_ssl_version(serve: Any, certs: dict[str, str]) -> None:
    text = start_fails(serve, SSL_version="SSLv23:!TLSv1_9", **certs)
    assert text.startswith(f"{PORT}: invalid SSL_version 'SSLv23:!TLSv1_9': unknown token")


def test_unknown_curve(serve: Any, certs: dict[str, str]) -> None:
    text = start_fails(serve, SSL_ecdh_curve="X25519:P-999", **certs)
    assert text.startswith(f"{PORT}: invalid SSL_ecdh_curve 'X25519:P-999': unknown curve")


def test_the_error_names_the_port_that_has_the_bad_option(serve: Any,
                                                          certs: dict[str, str]) -> None:
    bad = {"host": "127.0.0.1", "port": 0, "proto": "ssl", "SSL_version": "TLSv2"}
    text = start_fails(serve, port=["127.0.0.1:0/ssl", bad | {"port": 1}], **certs)
    assert text.startswith("port 127.0.0.1:1/ssl: invalid SSL_version 'TLSv2'")


def test_option_that_cannot_be_honoured(serve: Any, certs: dict[str, str]) -> None:
    port = {"host": "127.0.0.1", "port": 0, "proto": "ssl", "SSL_npn_protocols": ["h2"]}
    text = start_fails(serve, port=[port], **certs)
    assert text == (f"{PORT}: SSL_npn_protocols cannot be honoured: NPN is obsolete and "
                    "pyOpenSSL removed it; use SSL_alpn_protocols")


def test_expired_certificate_is_a_warning(serve: Any, ca: trustme.CA, tmp_path: Path,
                                          caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    now = datetime.datetime.now(datetime.timezone.utc)
    expiry = (now - datetime.timedelta(days=1)).replace(microsecond=0)
    leaf = ca.issue_cert("localhost", not_before=now - datetime.timedelta(days=30),
                         not_after=expiry)
    cert = tmp_path / "expired.pem"
    leaf.private_key_and_cert_chain_pem.write_to_path(str(cert))
    server = serve(GServer(port="127.0.0.1:0/ssl", SSL_cert_file=str(cert)))
    warnings = [r for r in caplog.records if "expired" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.ERROR  # Net::Server level 1
    text = warnings[0].getMessage()
    assert text.startswith(f"{PORT}: WARNING: the certificate SSL_cert_file {str(cert)!r}")
    assert f"expired on {expiry:%Y-%m-%d %H:%M:%S} UTC" in text
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate has expired"):
        tls_connect(server, trusting(ca))


def test_valid_certificate_gives_no_warning(serve: Any, certs: dict[str, str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    serve(GServer(port="127.0.0.1:0/ssl", **certs))
    assert not [m for m in caplog.messages if "WARNING" in m]


# -- SSL_* options while no port is TLS ---------------------------------------------------------

NOWHERE = {"SSL_cert_file": "/nonexistent/cert.pem", "SSL_key_file": "/nonexistent/key.pem"}
NO_TLS = "given, but no port uses TLS (proto ssl or ssleay)"


def test_ssl_options_without_a_tls_port_are_refused(serve: Any, certs: dict[str, str]) -> None:
    """A certificate for a server whose ports are all plain TCP was meant for a TLS port:
    serving plain text instead would hide the mistake. Missing files or not."""
    text = start_fails(serve, port=["127.0.0.1:0", "127.0.0.2:0/tcp"], **NOWHERE)
    assert text == ("SSL_cert_file (constructor arguments), SSL_key_file (constructor "
                    f"arguments) {NO_TLS}: ports 127.0.0.1:0/tcp, 127.0.0.2:0/tcp; add /ssl to "
                    "a port or drop the option(s)")
    text = start_fails(serve, port="127.0.0.1:0/tcp", **certs)
    assert text.startswith(f"SSL_cert_file (constructor arguments), SSL_key_file (constructor "
                           f"arguments) {NO_TLS}")


def test_the_error_names_where_the_option_came_from(serve: Any, certs: dict[str, str],
                                                    tmp_path: Path) -> None:
    text = start_fails(serve, port="127.0.0.1:0/tcp",
                       commandline=["--SSL_cert_file", certs["SSL_cert_file"]])
    assert text.startswith(f"SSL_cert_file (command line) {NO_TLS}: ports 127.0.0.1:0/tcp")
    conf = tmp_path / "server.conf"
    conf.write_text(f"port 127.0.0.1:0/tcp\nSSL_cipher_list {'HIGH'}\n")
    with pytest.raises(ConfigError) as err:
        serve(GServer(conf_file=str(conf)))
    assert str(err.value).startswith(f"SSL_cipher_list (conf_file {str(conf)!r}) {NO_TLS}")


def test_ssl_options_serve_when_a_port_uses_tls(serve: Any, certs: dict[str, str],
                                                client_context: ssl.SSLContext) -> None:
    """The twin: one TLS port (ssl or ssleay) is enough, plain ports beside it are fine."""
    for proto in ("ssl", "ssleay"):
        server = serve(GServer(port=["127.0.0.1:0/tcp", f"127.0.0.1:0/{proto}"], **certs))
        with tls_connect(server, client_context, 1) as tls:
            assert read_line(tls).startswith(b"Welcome to")


class DefaultsForTLS(GServer):
    """A program whose own defaults name certificates; a user may run it with plain ports."""

    def default_values(self) -> dict[str, Any]:
        return dict(NOWHERE)


class MethodsForTLS(GServer):
    """The same with an SSL_* method and attribute (Net::Server's way)."""

    SSL_key_file = NOWHERE["SSL_key_file"]

    def SSL_cert_file(self, host: str, port: int, proto: str) -> str:  # noqa: N802
        return NOWHERE["SSL_cert_file"]


@pytest.mark.parametrize("cls", [DefaultsForTLS, MethodsForTLS])
def test_the_programs_own_ssl_defaults_are_not_refused(serve: Any, cls: type[GServer]) -> None:
    server = serve(cls(port="127.0.0.1:0/tcp"))
    with socket.create_connection(address(server), timeout=5) as sock:
        assert read_line(sock).startswith(b"Welcome to")
    # The defaults are real: a TLS port uses them (and here, fails on the missing file).
    with pytest.raises(ConfigError, match="/nonexistent/cert.pem"):
        serve(cls(port="127.0.0.1:0/ssl"))
    # A user who sets one explicitly on a plain-port server is refused as usual.
    with pytest.raises(ConfigError, match=re.escape(f"SSL_key_file (constructor arguments) "
                                                    f"{NO_TLS}")):
        serve(cls(port="127.0.0.1:0/tcp", SSL_key_file="/nonexistent/other.pem"))
