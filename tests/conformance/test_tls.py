"""The TLS part of the stream contract, run over both TLS backends: ssl (pyOpenSSL) and ssleay
(stdlib ssl through gevent.ssl).

Same options, same observable behaviour: the facts a handler sees, ALPN, SNI, client
certificates (every success has a twin that must fail), resumption, version and cipher
selection, the handshake deadline, handshake failures that never reach process_request, and a
close that sends close_notify.
"""

from __future__ import annotations

import json
import socket
import ssl
import struct
import time
from typing import Any

import pytest
import trustme
from cryptography import x509
from support.conformance import (
    TLS_PROTOS,
    ConformanceServer,
    Endpoint,
    StartServer,
    issue_files,
)
from support.net import poll, read_line, read_until_eof

from gnetserver.client import Client
from gnetserver.errors import ConfigError

pytestmark = pytest.mark.timeout(20)


@pytest.fixture(params=TLS_PROTOS)
def proto(request: pytest.FixtureRequest) -> str:
    return str(request.param)


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


def test_alpn_picks_a_protocol_both_sides_speak(start_endpoint: StartServer) -> None:
    endpoint = start_endpoint(SSL_alpn_protocols=["h2", "http/1.1"])
    chosen = facts(endpoint, context=endpoint.client_context(alpn=["http/1.1", "spdy/3"]))
    assert chosen["alpn_protocol"] == "http/1.1"
    assert facts(endpoint)["alpn_protocol"] is None  # the twin: a client offering nothing


def test_sni_selects_the_certificate(start_endpoint: StartServer, ca: trustme.CA,
                                     certs: dict[str, str], short_tmp_path: str) -> None:
    other = issue_files(ca, short_tmp_path, "other", "other.test")
    endpoint = start_endpoint(
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


def test_sni_names_ignore_case_and_a_trailing_dot(start_endpoint: StartServer, ca: trustme.CA,
                                                  certs: dict[str, str],
                                                  short_tmp_path: str) -> None:
    """Both backends match names as tls/sni.py says: "Other.Test." is the entry of a client
    that sends "other.test" (ssleay used to keep the dot, so that client got the default)."""
    other = issue_files(ca, short_tmp_path, "other", "other.test")
    endpoint = start_endpoint(
        SSL_cert_file={"": certs["SSL_cert_file"], "Other.Test.": other["cert"]},
        SSL_key_file={"": certs["SSL_key_file"], "other.TEST": other["key"]})
    # The verifying client accepts only the certificate for other.test.
    assert facts(endpoint, server_hostname="other.test")["server_name"] == "other.test"
    assert facts(endpoint, server_hostname="OTHER.test")["server_name"] == "OTHER.test"


def test_sni_entry_with_an_unknown_suffix_is_refused(start_endpoint: StartServer, proto: str,
                                                     certs: dict[str, str]) -> None:
    """Only '%ecc' may follow a name, on both backends (ssleay used to accept any suffix)."""
    with pytest.raises(ConfigError) as error:
        start_endpoint(SSL_cert_file={"": certs["SSL_cert_file"],
                                      "a.example%bogus": certs["SSL_cert_file"]})
    message = str(error.value)
    assert message.startswith(f"port 127.0.0.1:0/{proto}: SSL_cert_file key "
                              "'a.example%bogus': only the suffix '%ecc' is known"), message


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
def test_client_certificates_required(start_endpoint: StartServer, short_tmp_path: str,
                                      verify_mode: int) -> None:
    trusted, stranger = trustme.CA(), trustme.CA()
    ca_file = f"{short_tmp_path}/clients.pem"
    trusted.cert_pem.write_to_path(ca_file)
    CountingServer.served = 0
    endpoint = start_endpoint(CountingServer, SSL_verify_mode=verify_mode, SSL_ca_file=ca_file)
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


def test_session_resumption(start_endpoint: StartServer) -> None:
    endpoint = start_endpoint()
    context = endpoint.client_context()
    with endpoint.connect(context=context) as sock:
        sock.sendall(b"FACTS\n")
        assert json.loads(read_line(sock))["session_reused"] is False
        session = sock.session  # the TLS 1.3 ticket arrived with the data
    with endpoint.connect(context=context, session=session) as sock:
        sock.sendall(b"FACTS\n")
        assert json.loads(read_line(sock))["session_reused"] is True
        assert sock.session_reused


@pytest.mark.parametrize(("spec", "negotiated", "refused_client"), [
    pytest.param("TLSv1_2", "TLSv1.2", {"minimum_version": ssl.TLSVersion.TLSv1_3},
                 id="pinned-to-tls12"),
    pytest.param("SSLv23:!TLSv1:!TLSv1_1:!TLSv1_2", "TLSv1.3",
                 {"maximum_version": ssl.TLSVersion.TLSv1_2}, id="range-without-tls12"),
])
def test_ssl_version(start_endpoint: StartServer, spec: str, negotiated: str,
                     refused_client: dict[str, Any]) -> None:
    """SSL_version decides what is negotiated, and a client limited to the versions it
    leaves out is refused."""
    endpoint = start_endpoint(SSL_version=spec)
    assert facts(endpoint)["version"] == negotiated
    with pytest.raises(ssl.SSLError):
        endpoint.connect(context=endpoint.client_context(**refused_client)).close()


def test_cipher_list_for_tls12(start_endpoint: StartServer) -> None:
    endpoint = start_endpoint(SSL_version="TLSv1_2", SSL_cipher_list="ECDHE+CHACHA20")
    assert facts(endpoint)["cipher"] == "ECDHE-ECDSA-CHACHA20-POLY1305"
    aes_only = endpoint.client_context()
    aes_only.set_ciphers("ECDHE+AESGCM")
    with pytest.raises(ssl.SSLError):
        endpoint.connect(context=aes_only).close()


def test_default_ciphers_are_forward_secret_aead(start_endpoint: StartServer) -> None:
    endpoint = start_endpoint()
    cbc = endpoint.client_context(maximum_version=ssl.TLSVersion.TLSv1_2)
    cbc.set_ciphers("ECDHE+AES128+SHA256:ECDHE+AES+SHA:AES128-GCM-SHA256")  # CBC, static RSA
    with pytest.raises(ssl.SSLError):
        endpoint.connect(context=cbc).close()


def test_silent_client_dropped_after_timeout_handshake(start_endpoint: StartServer) -> None:
    CountingServer.served = 0
    endpoint = start_endpoint(CountingServer, timeout_handshake=0.3)
    with endpoint.raw() as silent:
        begun = time.monotonic()
        assert silent.recv(100) == b""
        assert 0.2 < time.monotonic() - begun < 4.0
    assert facts(endpoint)["version"] == "TLSv1.3"  # the server still serves
    assert CountingServer.served == 1


def test_plaintext_client_fails_the_handshake(start_endpoint: StartServer,
                                              caplog: pytest.LogCaptureFixture) -> None:
    CountingServer.served = 0
    endpoint = start_endpoint(CountingServer)
    with endpoint.raw() as plain:
        plain.sendall(b"GET / HTTP/1.0\r\n\r\n")
        answer = read_until_eof(plain)
    assert not answer.startswith(b"HTTP") and b"Welcome" not in answer  # an alert at most
    poll(lambda: "TLS handshake failed" in caplog.text, 5)  # the server thread's log line
    assert "TLS handshake failed" in caplog.text
    assert CountingServer.served == 0


def test_server_close_sends_close_notify(start_endpoint: StartServer) -> None:
    endpoint = start_endpoint()
    context = endpoint.client_context()
    raw = endpoint.raw()
    # suppress_ragged_eofs=False: a close without close_notify would raise SSLEOFError.
    with context.wrap_socket(raw, server_hostname="localhost",
                             suppress_ragged_eofs=False) as sock:
        sock.sendall(b"ECHO\nquit\n")
        assert read_until_eof(sock) == b"echo: quit\n"


def test_client_close_notify_is_a_clean_eof(start_endpoint: StartServer) -> None:
    endpoint = start_endpoint()
    answer = endpoint.half_close_exchange(b"EOF\n", b"payload")
    assert answer.startswith(b"7 ")


def test_abrupt_client_close_does_not_hurt_the_server(start_endpoint: StartServer) -> None:
    endpoint = start_endpoint()
    for _ in range(3):
        with endpoint.connect() as sock:
            sock.sendall(b"ECHO\nhello\n")
            assert read_line(sock) == b"echo: hello\n"
            # SO_LINGER 0: close() sends RST instead of FIN.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert facts(endpoint)["version"] == "TLSv1.3"
