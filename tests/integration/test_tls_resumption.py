"""Issue 3, point 5: session resumption, seen by a stdlib client (``session_reused``) and by the
handler (``client.session_reused``): TLS 1.2 tickets and session ids, TLS 1.3 tickets, across
the listeners of one server, with client certificates, and ticket-key rotation.

Every success has a twin that must not resume: a first connection, a listener with other TLS
options, a rotated context.
"""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest
import trustme
from support.net import address
from support.servers import QueueServer
from support.tls import trusting

pytestmark = pytest.mark.timeout(20)

TWO_PORTS = ["127.0.0.1:0/ssl", "127.0.0.1:0/ssl"]


class ResumeServer(QueueServer):
    """Records whether each handshake resumed a session."""

    def observe(self, client: Any) -> bool | None:
        return client.session_reused


def client(ca: trustme.CA, version: ssl.TLSVersion, tickets: bool = True) -> ssl.SSLContext:
    context = trusting(ca, minimum_version=version, maximum_version=version)
    if not tickets:
        context.options |= ssl.OP_NO_TICKET  # TLS 1.2: resume by session id instead
    return context


def visit(server: ResumeServer, context: ssl.SSLContext, index: int = 0,
          session: ssl.SSLSession | None = None) -> tuple[bool, ssl.SSLSession]:
    """One connection; returns (resumed, session to resume next time). The server's view must
    agree with the client's."""
    raw = socket.create_connection(address(server, index), timeout=5)
    with context.wrap_socket(raw, server_hostname="localhost", session=session) as tls:
        # Reading the answer also reads the TLS 1.3 NewSessionTicket messages sent before it.
        assert tls.recv(10) == b"ok\n"
        reused, new_session = tls.session_reused, tls.session
    assert server.seen.get(timeout=5) is reused
    assert new_session is not None
    return reused, new_session


VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, True, id="tls1.2-ticket"),
    pytest.param(ssl.TLSVersion.TLSv1_2, False, id="tls1.2-session-id"),
    pytest.param(ssl.TLSVersion.TLSv1_3, True, id="tls1.3-ticket"),
]


@pytest.mark.parametrize(("version", "tickets"), VERSIONS)
def test_a_client_resumes_its_session(serve: Any, certs: dict[str, str], ca: trustme.CA,
                                      version: ssl.TLSVersion, tickets: bool) -> None:
    server = serve(ResumeServer(port="127.0.0.1:0/ssl", **certs))
    context = client(ca, version, tickets)
    reused, session = visit(server, context)
    assert not reused  # twin: the first handshake is a full one
    assert visit(server, context, session=session)[0]


@pytest.mark.parametrize(("version", "tickets"), VERSIONS)
def test_sessions_resume_across_the_listeners_of_a_server(
        serve: Any, certs: dict[str, str], ca: trustme.CA, version: ssl.TLSVersion,
        tickets: bool) -> None:
    server = serve(ResumeServer(port=TWO_PORTS, **certs))
    assert server.listeners[0].port != server.listeners[1].port
    context = client(ca, version, tickets)
    _, session = visit(server, context, index=0)
    assert visit(server, context, index=1, session=session)[0]


@pytest.mark.parametrize(("version", "tickets"), VERSIONS)
def test_listeners_with_other_tls_options_do_not_share_sessions(
        serve: Any, certs: dict[str, str], ca: trustme.CA, version: ssl.TLSVersion,
        tickets: bool) -> None:
    other = {"host": "127.0.0.1", "port": 0, "proto": "ssl", "SSL_honor_cipher_order": 0}
    server = serve(ResumeServer(port=["127.0.0.1:0/ssl", other], **certs))
    context = client(ca, version, tickets)
    _, session = visit(server, context, index=0)
    assert not visit(server, context, index=1, session=session)[0]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_resumption_with_client_certificates(serve: Any, certs: dict[str, str],
                                             ca: trustme.CA, version: ssl.TLSVersion,
                                             tmp_path: Any) -> None:
    """OpenSSL only resumes verified sessions with a session id context (always set)."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = serve(ResumeServer(port=TWO_PORTS, SSL_ca_file=str(ca_file), SSL_verify_mode=3,
                                **certs))
    context = client(ca, version)
    ca.issue_cert("alice@example.org").configure_cert(context)
    _, session = visit(server, context, index=0)
    assert visit(server, context, index=1, session=session)[0]


def test_custom_session_id_context(serve: Any, certs: dict[str, str], ca: trustme.CA) -> None:
    server = serve(ResumeServer(port="127.0.0.1:0/ssl", SSL_session_id_context="my-service",
                                **certs))
    context = client(ca, ssl.TLSVersion.TLSv1_3)
    _, session = visit(server, context)
    assert visit(server, context, session=session)[0]


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_ticket_key_rotation_ends_resumption(serve: Any, certs: dict[str, str], ca: trustme.CA,
                                             version: ssl.TLSVersion) -> None:
    period = 0.3
    server = serve(ResumeServer(port=TWO_PORTS, SSL_ticket_key_rotation=period, **certs))
    context = client(ca, version)
    started = time.monotonic()
    _, session = visit(server, context, index=0)
    if time.monotonic() - started < period / 2:  # still well inside the first period
        assert visit(server, context, index=1, session=session)[0]
    deadline = time.monotonic() + 5
    while visit(server, context, index=1, session=session)[0]:  # until the keys are renewed
        assert time.monotonic() < deadline, "the ticket keys were never rotated"
        time.sleep(period / 3)
