"""Issue 3, points 1, 2 and 10: the TLS facts a handler reads on its client, ALPN, where SSL_*
options come from (server-wide, per port, subclass method/attribute), and the OpenSSL version
logged at start.

Every server runs in a thread (``serve``); real stdlib TLS clients connect on 127.0.0.1.
``process_request`` hands what it saw to the test through a queue.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import Any

import cryptography
import OpenSSL
import pytest
import trustme
from support.net import address, tls_connect
from support.servers import QueueServer
from support.tls import trusting, unverified

from gnetserver import GServer
from gnetserver.errors import ConfigError
from gnetserver.ports import parse_ports
from gnetserver.proto import SSLeayProtocol, SSLProtocol
from gnetserver.tls import SUPPORTED_SSL_OPTIONS, tls_library_versions

pytestmark = pytest.mark.timeout(20)

FACTS = ("tls_version", "cipher", "server_name", "alpn_protocol", "session_reused",
         "peer_certificate", "peer_subject", "peer_issuer")


class FactsServer(QueueServer):
    """Puts the client's TLS facts on ``self.seen`` and answers one line."""

    def observe(self, client: Any) -> dict[str, Any]:
        return {name: getattr(client, name) for name in FACTS}


def exchange(server: FactsServer, context: ssl.SSLContext, index: int = 0,
             server_hostname: str | None = "localhost") -> tuple[ssl.SSLSocket, dict[str, Any]]:
    """Connect, read the answer, return the (closed) client socket and the server's facts."""
    with tls_connect(server, context, index, server_hostname=server_hostname) as tls:
        assert tls.recv(10) == b"ok\n"
    return tls, server.seen.get(timeout=5)


def test_facts_of_a_tls_client(serve: Any, certs: dict[str, str],
                               client_context: ssl.SSLContext) -> None:
    server = serve(FactsServer(port="127.0.0.1:0/ssl", **certs))
    with tls_connect(server, client_context) as tls:
        assert tls.recv(10) == b"ok\n"
        version, cipher = tls.version(), tls.cipher()
    facts = server.seen.get(timeout=5)
    assert facts["tls_version"] == version == "TLSv1.3"
    assert cipher is not None and facts["cipher"] == cipher[0]
    assert facts["server_name"] == "localhost"
    assert facts["session_reused"] is False
    assert facts["alpn_protocol"] is None  # no SSL_alpn_protocols
    assert facts["peer_certificate"] is None and facts["peer_subject"] is None
    assert facts["peer_issuer"] is None


def test_tls_1_2_facts_and_no_sni(serve: Any, certs: dict[str, str], ca: trustme.CA) -> None:
    server = serve(FactsServer(port="127.0.0.1:0/ssl", **certs))
    context = trusting(ca, check_hostname=False, maximum_version=ssl.TLSVersion.TLSv1_2)
    tls, facts = exchange(server, context, server_hostname=None)
    assert facts["tls_version"] == "TLSv1.2"
    assert facts["cipher"].startswith("ECDHE-ECDSA-")  # the default list: FS + AEAD only
    assert facts["server_name"] is None


def test_plain_tcp_clients_have_no_tls_facts(serve: Any) -> None:
    server = serve(FactsServer(port="127.0.0.1:0/tcp"))
    with socket.create_connection(address(server), timeout=5) as sock:
        assert sock.recv(10) == b"ok\n"
    assert server.seen.get(timeout=5) == dict.fromkeys(FACTS)


# -- ALPN --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("offered", "chosen"),
    [
        (["h2", "http/1.1"], "http/1.1"),  # the server's preference wins
        (["h2"], "h2"),
        (["spdy/3"], None),  # twin: nothing in common -> no ALPN, handshake still succeeds
    ],
)
def test_alpn(serve: Any, certs: dict[str, str], ca: trustme.CA, offered: list[str],
              chosen: str | None) -> None:
    server = serve(FactsServer(port="127.0.0.1:0/ssl", SSL_alpn_protocols="http/1.1,h2",
                               **certs))
    context = trusting(ca, alpn=offered)
    with tls_connect(server, context) as tls:
        assert tls.recv(10) == b"ok\n"
        assert tls.selected_alpn_protocol() == chosen
    assert server.seen.get(timeout=5)["alpn_protocol"] == chosen


# -- where options come from -------------------------------------------------------------------


class MethodOptions(FactsServer):
    """SSL_* options as Net::Server methods (called with host, port, proto) and attributes."""

    SSL_honor_cipher_order = 1
    calls: list[tuple[Any, ...]]

    def SSL_alpn_protocols(self, host: str, port: int, proto: str) -> list[str]:  # noqa: N802
        self.calls.append((host, port, proto))
        return ["h2"] if proto == "ssl" else ["never"]


def _alpn_of(server: FactsServer, index: int) -> str | None:
    with tls_connect(server, unverified(alpn=["h2", "http/1.1"]), index) as tls:
        tls.recv(10)
        return tls.selected_alpn_protocol()


def test_options_from_a_method_a_port_dict_and_server_wide(serve: Any,
                                                           certs: dict[str, str]) -> None:
    method = MethodOptions(port=["127.0.0.1:0/ssl",
                                 {"host": "127.0.0.1", "port": 0, "proto": "ssl",
                                  "SSL_alpn_protocols": ["http/1.1"]}],
                           **certs)
    method.calls = []
    serve(method)
    assert method.calls == [("127.0.0.1", 0, "ssl")]  # only the port without its own value
    assert _alpn_of(method, 0) == "h2"  # from the method
    assert _alpn_of(method, 1) == "http/1.1"  # the per-port dict wins over the method
    wide = serve(MethodOptions(port="127.0.0.1:0/ssl", SSL_alpn_protocols="http/1.1", **certs))
    assert _alpn_of(wide, 0) == "http/1.1"  # server-wide wins over the method


class RefusedMethod(GServer):
    def SSL_ticket_keycb(self, host: str, port: int, proto: str) -> Any:  # noqa: N802
        return lambda *args: None


class TypoAttribute(GServer):
    SSL_cert_fiel = "cert.pem"


def test_unhonourable_or_unknown_ssl_methods_fail_at_start(serve: Any,
                                                           certs: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match="SSL_ticket_keycb cannot be honoured: pyOpenSSL") as e:
        serve(RefusedMethod(port="127.0.0.1:0/ssl", **certs))
    assert "port 127.0.0.1:0/ssl" in str(e.value)
    with pytest.raises(ConfigError, match="unsupported option\\(s\\) SSL_cert_fiel; supported"):
        serve(TypoAttribute(port="127.0.0.1:0/ssl", **certs))


# -- the OpenSSL version at start --------------------------------------------------------------


def test_openssl_version_is_logged_at_start(serve: Any, certs: dict[str, str],
                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    serve(GServer(port="127.0.0.1:0/ssl", **certs))
    expected = (f"TLS by pyOpenSSL {OpenSSL.__version__} over "
                f"{OpenSSL.SSL.OpenSSL_version(OpenSSL.SSL.OPENSSL_VERSION).decode()} "
                f"(bundled with cryptography {cryptography.__version__})")
    assert expected in caplog.messages


def test_each_tls_library_is_logged_once(serve: Any, certs: dict[str, str],
                                         caplog: pytest.LogCaptureFixture) -> None:
    """One "TLS by" line per library in use, whatever the number of ports using it."""
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    ports = ["127.0.0.1:0/ssleay", "127.0.0.1:0/ssl", "127.0.0.1:0/ssleay", "127.0.0.1:0/ssl"]
    serve(GServer(port=ports, **certs))
    assert [m for m in caplog.messages if "TLS by" in m] == [
        f"TLS by the stdlib ssl module over {ssl.OPENSSL_VERSION}",
        f"TLS by {tls_library_versions()}",
    ]


def test_a_tls_protocol_uses_the_servers_registry_only(certs: dict[str, str]) -> None:
    """No private TLSContexts behind the server's back (reload_tls would miss it)."""
    server = GServer(port="127.0.0.1:0/ssl", **certs)  # never bound: no tls_contexts yet
    for proto, protocol in (("ssl", SSLProtocol), ("ssleay", SSLeayProtocol)):
        [spec] = parse_ports(f"127.0.0.1:0/{proto}")
        with pytest.raises(RuntimeError, match="no TLS registry"):
            protocol(spec, certs, server.tls_contexts)


def test_no_tls_line_for_a_server_without_tls(serve: Any,
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    serve(GServer(port="127.0.0.1:0/tcp"))
    assert not [m for m in caplog.messages if m.startswith("TLS by")]


# -- every option from every source (configuration only, nothing bound) ------------------------


def resolved(server: GServer) -> dict[str, Any]:
    """The SSL_* options the server resolves for its first port."""
    server.commandline = []
    server.configure()
    server.pre_bind()
    return server.ssl_options(server.port_specs[0])


@pytest.mark.parametrize("name", sorted(SUPPORTED_SSL_OPTIONS))
def test_every_option_from_every_source(name: str) -> None:
    value = object()
    assert resolved(GServer(port="127.0.0.1:0/ssl", **{name: value}))[name] is value
    port = {"host": "127.0.0.1", "port": 0, "proto": "ssl", name: value}
    assert resolved(GServer(port=[port], **{name: "server-wide"}))[name] is value

    def method(self: GServer, host: str, port: int, proto: str) -> Any:
        return (value, host, port, proto)

    with_method = type("WithMethod", (GServer,), {name: method})
    assert resolved(with_method(port="127.0.0.1:0/ssl"))[name] == (value, "127.0.0.1", 0, "ssl")
    with_attribute = type("WithAttribute", (GServer,), {name: "attribute"})
    assert resolved(with_attribute(port="127.0.0.1:0/ssl"))[name] == "attribute"


def test_a_method_with_the_wrong_signature(serve: Any, certs: dict[str, str]) -> None:
    wrong = type("Wrong", (GServer,), {"SSL_passwd_cb": staticmethod(lambda: "secret")})
    with pytest.raises(ConfigError, match="SSL_passwd_cb is called as SSL_passwd_cb\\(host, "
                                          "port, proto\\) and must return the option's value"):
        serve(wrong(port="127.0.0.1:0/ssl", **certs))
