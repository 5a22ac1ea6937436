"""The TLS part of the stream contract, run over both TLS backends: ssl (pyOpenSSL) and ssleay
(stdlib ssl through gevent.ssl).

Same options, same observable behaviour: the facts a handler sees, ALPN, SNI, client
certificates (every success has a twin that must fail), resumption, version and cipher
selection, the handshake deadline, handshake failures that never reach process_request, and a
close that sends close_notify.
"""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trustme
from conformance_harness import (
    TLS_PROTOS,
    ConformanceServer,
    Endpoint,
    StartServer,
    issue_files,
    make_starter,
    read_line,
    read_until_eof,
)
from cryptography import x509

from gnetserver import GServer
from gnetserver.client import Client
from gnetserver.errors import ConfigError

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(params=TLS_PROTOS)
def proto(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def folder() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="gns-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start(proto: str, serve: Callable[..., GServer], ca: trustme.CA, certs: dict[str, str],
          folder: str) -> StartServer:
    return make_starter(proto, serve, ca, certs, folder)


def start_or_skip(start: StartServer, feature: str, **options: Any) -> Endpoint:
    """Start; skip (naming the backend's own message) when proto ssl refuses an option that its
    context builder does not implement yet. ssleay must accept everything used here."""
    try:
        return start(**options)
    except ConfigError as e:
        if "/ssl:" in str(e) or "/ssl " in str(e):
            pytest.skip(f"proto ssl does not support {feature} yet: {e}")
        raise


def facts(endpoint: Endpoint, **connect: Any) -> dict[str, Any]:
    with endpoint.connect(**connect) as sock:
        sock.sendall(b"FACTS\n")
        return dict(json.loads(read_line(sock)))


class CountingServer(ConformanceServer):
    """Counts process_request calls (all run in the server's one hub thread)."""

    served = 0

    def process_request(self, client: Client) -> None:
        type(self).served += 1
        super().process_request(client)


# ---------------------------------------------------------------------------------------------


def test_alpn_picks_a_protocol_both_sides_speak(start: StartServer) -> None:
    endpoint = start_or_skip(start, "SSL_alpn_protocols", SSL_alpn_protocols=["h2", "http/1.1"])
    chosen = facts(endpoint, context=endpoint.client_context(alpn=["http/1.1", "spdy/3"]))
    assert chosen["alpn_protocol"] == "http/1.1"
    assert facts(endpoint)["alpn_protocol"] is None  # the twin: a client offering nothing


def test_sni_selects_the_certificate(start: StartServer, ca: trustme.CA, certs: dict[str, str],
                                     folder: str) -> None:
    other = issue_files(ca, folder, "other", "other.test")
    endpoint = start_or_skip(
        start, "SNI dicts",
        SSL_cert_file={"": certs["SSL_cert_file"], "other.test": other["cert"]},
        SSL_key_file={"": certs["SSL_key_file"], "other.test": other["key"]})
    # A verifying client accepts only the certificate of the name it asked for.
    assert facts(endpoint, server_hostname="other.test")["server_name"] == "other.test"
    assert facts(endpoint, server_hostname="localhost")["server_name"] == "localhost"
    # An unknown name gets the default certificate (valid for localhost, not other.test).
    lax = endpoint.client_context(check_hostname=False)
    with endpoint.connect(context=lax, server_hostname="unknown.test") as sock:
        names = [v for k, v in sock.getpeercert()["subjectAltName"] if k == "DNS"]
    assert names == ["localhost"]
    strict = endpoint.client_context()
    with pytest.raises(ssl.SSLCertVerificationError):
        endpoint.connect(context=strict, server_hostname="unknown.test").close()


def _rejected(endpoint: Endpoint, context: ssl.SSLContext) -> bool:
    """True when the server refuses the client: in TLS 1.3 the client's handshake returns
    before the server checked its certificate, so the refusal shows on the first read."""
    try:
        with endpoint.connect(context=context) as sock:
            sock.sendall(b"FACTS\n")
            return read_line(sock) == b""
    except (ssl.SSLError, ConnectionError):
        return True


@pytest.mark.parametrize("verify_mode", [2, 3])
def test_client_certificates_required(start: StartServer, folder: str,
                                      verify_mode: int) -> None:
    trusted, stranger = trustme.CA(), trustme.CA()
    ca_file = f"{folder}/clients.pem"
    trusted.cert_pem.write_to_path(ca_file)
    CountingServer.served = 0
    endpoint = start(CountingServer, SSL_verify_mode=verify_mode, SSL_ca_file=ca_file)
    good = trusted.issue_cert("client.test", common_name="client.test")
    bad = stranger.issue_cert("client.test", common_name="client.test")
    assert _rejected(endpoint, endpoint.client_context())  # no certificate
    assert _rejected(endpoint, endpoint.client_context(cert=bad))  # another CA
    assert CountingServer.served == 0
    seen = facts(endpoint, context=endpoint.client_context(cert=good))
    assert "CN=client.test" in seen["peer_subject"]
    issuer = x509.load_pem_x509_certificate(trusted.cert_pem.bytes()).subject
    assert seen["peer_issuer"] == issuer.rfc4514_string()
    assert CountingServer.served == 1


def test_session_resumption(start: StartServer) -> None:
    endpoint = start()
    context = endpoint.client_context()
    with endpoint.connect(context=context) as sock:
        sock.sendall(b"FACTS\n")
        assert json.loads(read_line(sock))["session_reused"] is False
        session = sock.session  # the TLS 1.3 ticket arrived with the data
    with endpoint.connect(context=context, session=session) as sock:
        sock.sendall(b"FACTS\n")
        assert json.loads(read_line(sock))["session_reused"] is True
        assert sock.session_reused


def test_version_pinned_to_tls12(start: StartServer) -> None:
    endpoint = start(SSL_version="TLSv1_2")
    assert facts(endpoint)["version"] == "TLSv1.2"
    only13 = endpoint.client_context(minimum_version=ssl.TLSVersion.TLSv1_3)
    with pytest.raises(ssl.SSLError):
        endpoint.connect(context=only13).close()


def test_version_range_without_tls12(start: StartServer) -> None:
    endpoint = start(SSL_version="SSLv23:!TLSv1:!TLSv1_1:!TLSv1_2")
    assert facts(endpoint)["version"] == "TLSv1.3"
    only12 = endpoint.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(ssl.SSLError):
        endpoint.connect(context=only12).close()


def test_cipher_list_for_tls12(start: StartServer) -> None:
    endpoint = start(SSL_version="TLSv1_2", SSL_cipher_list="ECDHE+CHACHA20")
    assert facts(endpoint)["cipher"] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    aes_only = endpoint.client_context()
    aes_only.set_ciphers("ECDHE+AESGCM")
    with pytest.raises(ssl.SSLError):
        endpoint.connect(context=aes_only).close()


def test_default_ciphers_are_forward_secret_aead(start: StartServer) -> None:
    endpoint = start()
    cbc = endpoint.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    cbc.set_ciphers("ECDHE+AES128+SHA256:ECDHE+AES+SHA:AES128-GCM-SHA256")  # CBC, static RSA
    with pytest.raises(ssl.SSLError):
        endpoint.connect(context=cbc).close()


def test_silent_client_dropped_after_timeout_handshake(start: StartServer) -> None:
    CountingServer.served = 0
    endpoint = start(CountingServer, timeout_handshake=0.3)
    with endpoint.raw() as silent:
        begun = time.monotonic()
        assert silent.recv(100) == b""
        assert 0.2 < time.monotonic() - begun < 4.0
    assert facts(endpoint)["version"] == "TLSv1.3"  # the server still serves
    assert CountingServer.served == 1


def test_plaintext_client_fails_the_handshake(start: StartServer,
                                              caplog: pytest.LogCaptureFixture) -> None:
    CountingServer.served = 0
    endpoint = start(CountingServer)
    with endpoint.raw() as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        answer = read_until_eof(plain)
    assert not answer.startswith(b"HTTP") and b"Welcome" not in answer  # an alert at most
    deadline = time.monotonic() + 5
    while "TLS handshake failed" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)  # polling for the server thread's log line, bounded
    assert "TLS handshake failed" in caplog.text
    assert CountingServer.served == 0


def test_server_close_sends_close_notify(start: StartServer) -> None:
    endpoint = start()
    context = endpoint.client_context()
    raw = endpoint.raw()
    # suppress_ragged_eofs=False: a close without close_notify would raise SSLEOFError.
    with context.wrap_socket(raw, server_hostname="localhost",
                             suppress_ragged_eofs=False) as sock:
        sock.sendall(b"ECHO\nquit\n")
        assert read_until_eof(sock) == b"echo: quit\n"


def test_client_close_notify_is_a_clean_eof(start: StartServer) -> None:
    endpoint = start()
    answer = endpoint.half_close_exchange(b"EOF\n", b"payload")
    assert answer.startswith(b"7 ")


def test_abrupt_client_close_does_not_hurt_the_server(start: StartServer) -> None:
    endpoint = start()
    for _ in range(3):
        with endpoint.connect() as sock:
            sock.sendall(b"ECHO\nhello\n")
            assert read_line(sock) == b"echo: hello\n"
            # SO_LINGER 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert facts(endpoint)["version"] == "TLSv1.3"
