"""Issue 3, point 4: client certificates. With SSL_verify_mode 2 (or 3) and a CA, a client
without a certificate and a client whose certificate comes from another CA both fail in the
handshake (logged, process_request never called); a valid client succeeds and its subject is
visible in process_request. Every success has a twin that must fail: CRLs and
SSL_verify_callback too.

With TLS 1.3 the client finishes its side of the handshake before the server has checked its
certificate, so the client learns of the refusal on its first read (an alert).
"""

from __future__ import annotations

import datetime
import logging
import ssl
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from support.net import poll, tls_connect
from support.servers import QueueServer
from support.tls import trusting

from gnetserver import GServer

pytestmark = pytest.mark.timeout(20)


class WhoServer(QueueServer):
    """Greets the client by the subject of its certificate; records what it saw."""

    def __init__(self, **options: Any) -> None:
        super().__init__(log_level=3, **options)

    def observe(self, client: Any) -> tuple[str | None, str | None, Any]:
        return client.peer_subject, client.peer_issuer, client.peer_certificate

    def reply(self, client: Any) -> bytes:
        return f"hello {client.peer_subject}\n".encode()


@pytest.fixture(scope="module")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "clients-ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


def client(ca: trustme.CA, cert_from: trustme.CA | None = None,
           name: str = "alice") -> ssl.SSLContext:
    """A client trusting the server's CA, with a certificate for ``name`` from ``cert_from``."""
    if cert_from is None:
        return trusting(ca)
    return trusting(ca, cert=cert_from.issue_cert(f"{name}@example.org", common_name=name))


def talk(server: GServer, context: ssl.SSLContext) -> bytes | Exception:
    """The server's greeting, or the exception the client got (handshake or first read)."""
    try:
        with tls_connect(server, context) as tls:
            return tls.recv(100)
    except (ssl.SSLError, OSError) as exc:
        return exc


def wait_for_log(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 5) -> str:
    found = poll(lambda: [m for m in caplog.messages if text in m], timeout)
    if not found:
        raise AssertionError(f"no log line with {text!r} in {caplog.messages}")
    return found[0]


def assert_refused(server: WhoServer, outcome: bytes | Exception,
                   caplog: pytest.LogCaptureFixture, reason: str) -> None:
    assert isinstance(outcome, (ssl.SSLError, ConnectionError)) or outcome == b"", outcome
    line = wait_for_log(caplog, "TLS handshake failed from [127.0.0.1]:")
    assert reason in line
    assert server.seen.empty()  # process_request never ran


@pytest.mark.parametrize("mode", [2, 3, "0x03"])
def test_valid_client_certificate_is_accepted(serve: Any, certs: dict[str, str], ca_file: str,
                                              ca: trustme.CA, mode: Any) -> None:
    server = serve(WhoServer(port="127.0.0.1:0/ssl", SSL_ca_file=ca_file, SSL_verify_mode=mode,
                             **certs))
    assert talk(server, client(ca, ca)).startswith(b"hello CN=alice,")  # type: ignore[union-attr]
    subject, issuer, cert = server.seen.get(timeout=5)
    assert subject is not None and subject.startswith("CN=alice,")
    ca_subject = x509.load_pem_x509_certificate(ca.cert_pem.bytes()).subject
    assert issuer == ca_subject.rfc4514_string()
    assert isinstance(cert, x509.Certificate)
    assert cert.subject.rfc4514_string() == subject


@pytest.mark.parametrize("mode", [2, 3])
def test_client_without_certificate_is_refused(serve: Any, certs: dict[str, str], ca_file: str,
                                               ca: trustme.CA, mode: int,
                                               caplog: pytest.LogCaptureFixture) -> None:
    server = serve(WhoServer(port="127.0.0.1:0/ssl", SSL_ca_file=ca_file, SSL_verify_mode=mode,
                             **certs))
    assert_refused(server, talk(server, client(ca)), caplog, "peer did not return a certificate")


def test_certificate_from_another_ca_is_refused(serve: Any, certs: dict[str, str],
                                                ca_file: str, ca: trustme.CA,
                                                caplog: pytest.LogCaptureFixture) -> None:
    server = serve(WhoServer(port="127.0.0.1:0/ssl", SSL_ca_file=ca_file, SSL_verify_mode=3,
                             **certs))
    outcome = talk(server, client(ca, trustme.CA(), name="mallory"))
    assert_refused(server, outcome, caplog, "certificate verify failed")


def test_mode_1_asks_but_does_not_require(serve: Any, certs: dict[str, str], ca_file: str,
                                          ca: trustme.CA) -> None:
    """The twin of the refusals: mode 1 serves a client that sends no certificate."""
    server = serve(WhoServer(port="127.0.0.1:0/ssl", SSL_ca_file=ca_file, SSL_verify_mode=1,
                             **certs))
    assert talk(server, client(ca)) == b"hello None\n"
    assert server.seen.get(timeout=5) == (None, None, None)


# -- CRLs --------------------------------------------------------------------------------------


def write_crl(ca: trustme.CA, revoked: list[x509.Certificate], path: Path) -> str:
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.bytes())
    ca_key = serialization.load_pem_private_key(ca.private_key_pem.bytes(), password=None)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
               .last_update(now - datetime.timedelta(minutes=1))
               .next_update(now + datetime.timedelta(days=1)))
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder().serial_number(cert.serial_number)
            .revocation_date(now - datetime.timedelta(minutes=1)).build())
    crl = builder.sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    path.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return str(path)


def test_revoked_client_certificate_is_refused(serve: Any, certs: dict[str, str],
                                               ca_file: str, tmp_path: Path,
                                               caplog: pytest.LogCaptureFixture) -> None:
    ca = trustme.CA()
    revoked, good = ca.issue_cert("bob@example.org"), ca.issue_cert("carol@example.org")
    crl = write_crl(ca, [x509.load_pem_x509_certificate(revoked.cert_chain_pems[0].bytes())],
                    tmp_path / "crl.pem")
    clients_ca = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(clients_ca))
    server = serve(WhoServer(port="127.0.0.1:0/ssl", SSL_ca_file=str(clients_ca),
                             SSL_verify_mode=3, SSL_crl_file=crl, **certs))
    trusting = ssl.create_default_context(cafile=ca_file)  # trusts the server's certificate
    good.configure_cert(trusting)
    assert talk(server, trusting).startswith(b"hello ")  # type: ignore[union-attr]
    server.seen.get(timeout=5)
    trusting = ssl.create_default_context(cafile=ca_file)
    revoked.configure_cert(trusting)
    outcome = talk(server, trusting)
    assert "alert certificate revoked" in str(outcome)  # the alert the server sent
    assert_refused(server, outcome, caplog, "certificate verify failed")


# -- SSL_verify_callback -----------------------------------------------------------------------


def only_alice(ok: bool, cert: x509.Certificate, depth: int, error: str) -> bool:
    """Accept a valid chain, and only alice at depth 0."""
    return ok and (depth > 0 or cert.subject.rfc4514_string().startswith("CN=alice,"))


def test_verify_callback_decides(serve: Any, certs: dict[str, str], ca_file: str,
                                 ca: trustme.CA, caplog: pytest.LogCaptureFixture) -> None:
    server = serve(WhoServer(port="127.0.0.1:0/ssl", SSL_ca_file=ca_file, SSL_verify_mode=3,
                             SSL_verify_callback=only_alice, **certs))
    assert talk(server, client(ca, ca, "alice")).startswith(b"hello CN=alice")  # type: ignore
    server.seen.get(timeout=5)
    assert_refused(server, talk(server, client(ca, ca, "bob")), caplog,
                   "certificate verify failed")


def test_verify_callback_that_raises_refuses_and_logs(serve: Any, certs: dict[str, str],
                                                      ca_file: str, ca: trustme.CA,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    def broken(ok: bool, cert: x509.Certificate, depth: int, error: str) -> bool:
        raise RuntimeError("no database")

    server = serve(WhoServer(port="127.0.0.1:0/ssl", SSL_ca_file=ca_file, SSL_verify_mode=3,
                             SSL_verify_callback=broken, **certs))
    caplog.set_level(logging.INFO, logger="gnetserver")
    assert_refused(server, talk(server, client(ca, ca)), caplog, "certificate verify failed")
    line = wait_for_log(caplog, "SSL_verify_callback")
    assert "RuntimeError('no database')" in line and "port 127.0.0.1:0/ssl" in line
