"""PROXY protocol ports (issue 10): a real HAProxy (send-proxy, send-proxy-v2,
send-proxy-v2-ssl-cn) in front of gnetserver, and raw headers for what HAProxy never sends.

Addresses: the test's client connects from 127.0.0.2 (or 127.0.0.4), HAProxy connects to
gnetserver from 127.0.0.3 (``source``), so the handler must see 127.0.0.2 as the peer and
127.0.0.3 only as ``client.proxy_peer``.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import ssl
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from support.handshake import Pems
from support.haproxy import HAProxy
from support.net import address, free_port, poll, read_until_eof
from support.servers import QueueServer

from gnetserver import GServer
from gnetserver.client import Client
from gnetserver.errors import ConfigError
from gnetserver.proxyproto import V2_SIGNATURE

pytestmark = pytest.mark.timeout(60)

Serve = Callable[..., GServer]
CLIENT, OTHER_CLIENT, BALANCER = "127.0.0.2", "127.0.0.4", "127.0.0.3"


class Facts(QueueServer):
    """Reports what the handler sees of the connection; records every per-connection hook."""

    def configure_hook(self) -> None:
        self.hooks: list[str] = []
        self.lock = threading.Lock()

    def _note(self, name: str) -> None:
        with self.lock:
            self.hooks.append(name)

    def post_accept_hook(self, client: Client) -> None:
        self._note("post_accept_hook")

    def request_denied_hook(self, client: Client) -> None:
        self._note("request_denied_hook")

    def post_client_connection_hook(self, client: Client) -> None:
        self._note("post_client_connection_hook")

    def observe(self, client: Client) -> dict[str, Any]:
        header = client.proxy
        line = client.readline() if client.listener.proto == "tcp" else b""
        return {
            "peer": (client.peeraddr, client.peerport),
            "local": (client.sockaddr, client.sockport),
            "proxy_peer": client.proxy_peer,
            "version": header and header.version, "command": header and header.command,
            "alpn": client.proxy_alpn, "authority": client.proxy_authority,
            "unique_id": client.proxy_unique_id, "ssl": client.proxy_ssl,
            "tls_version": client.tls_version, "line": line,
        }


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    return caplog


def logged(caplog: pytest.LogCaptureFixture, pattern: str) -> bool:
    return bool(poll(lambda: any(re.search(pattern, m) for m in caplog.messages)))


@pytest.fixture
def haproxy(tmp_path: Path) -> Iterator[Callable[..., HAProxy]]:
    """``haproxy(server_line, bind_options="", frontend="")``: a real haproxy whose frontend
    listens on 127.0.0.1:<free port> and whose one backend server is ``server_line``; stopped
    at teardown."""
    started: list[HAProxy] = []

    def start(server_line: str, bind_options: str = "", frontend: str = "") -> HAProxy:
        port = free_port()
        config = (f"frontend fe\n    bind 127.0.0.1:{port} {bind_options}\n{frontend}"
                  f"    default_backend be\n\nbackend be\n    server s1 {server_line}\n")
        started.append(HAProxy(config, tmp_path, port))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


def connect_from(source: str, port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10,
                                    source_address=(source, 0))


def tls_through(balancer: HAProxy, context: ssl.SSLContext, source: str = CLIENT,
                data: bytes = b"") -> tuple[bytes, int]:
    """A TLS exchange from ``source`` through the balancer: (the answer, the client's port)."""
    with connect_from(source, balancer.port) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as conn:
        conn.sendall(data)
        return read_until_eof(conn), conn.getsockname()[1]


def read_until_closed(conn: socket.socket) -> bytes:
    """Everything until the server closes the connection; a reset reads as b""."""
    try:
        return read_until_eof(conn)
    except ConnectionResetError:
        return b""


# -- HAProxy in TCP mode in front of a TLS port ----------------------------------------------------


@pytest.mark.parametrize(("keyword", "version"), [("send-proxy", 1), ("send-proxy-v2", 2)])
def test_tcp_mode_in_front_of_a_tls_port(serve: Serve, haproxy: Callable[..., HAProxy],
                                         certs: dict[str, str],
                                         client_context: ssl.SSLContext, keyword: str,
                                         version: int) -> None:
    """The header comes first, then the ClientHello (in one segment, as HAProxy sends them):
    the handshake works, and the handler sees the client, not the balancer."""
    server = serve(Facts, port="127.0.0.1:0/ssl", proxy_protocol=f"v{version}",
                   proxy_protocol_from=f"{BALANCER}/32", **certs)
    host, port = address(server)
    balancer = haproxy(f"{host}:{port} {keyword} source {BALANCER}")
    answer, client_port = tls_through(balancer, client_context)
    assert answer == b"ok\n"
    facts = server.seen.get(timeout=10)  # type: ignore[attr-defined]
    assert facts["peer"] == (CLIENT, client_port)
    assert facts["local"] == ("127.0.0.1", balancer.port)
    assert facts["proxy_peer"][0] == BALANCER
    assert (facts["version"], facts["command"]) == (version, "PROXY")
    assert facts["tls_version"] in ("TLSv1.2", "TLSv1.3") and facts["ssl"] is None


# -- TLS terminated by HAProxy in front of a tcp port ----------------------------------------------


def test_tls_terminated_by_haproxy_exposes_the_ssl_tlv(
        serve: Serve, haproxy: Callable[..., HAProxy], ca: trustme.CA, pems: Pems) -> None:
    """send-proxy-v2-ssl-cn with every proxy-v2-option: ALPN, authority (SNI), unique id and
    the SSL TLV (version, client certificate CN, cipher), checked by CRC32C."""
    server = serve(Facts, port="127.0.0.1:0", proxy_protocol="v2",
                   proxy_protocol_from=BALANCER)
    host, port = address(server)
    balancer = haproxy(
        f"{host}:{port} send-proxy-v2-ssl-cn proxy-v2-options "
        f"authority,crc32c,unique-id,ssl-cipher,cert-sig,cert-key source {BALANCER}",
        bind_options=f"ssl crt {pems.combined} ca-file {pems.ca} verify optional "
                     "alpn h2,http/1.1",
        frontend="    unique-id-format %{+X}o\\ %ci:%cp_%fi:%fp_%Ts_%rt\n")
    context = ssl.create_default_context()
    ca.configure_trust(context)
    ca.issue_cert("alice@example.org", common_name="alice").configure_cert(context)
    context.set_alpn_protocols(["http/1.1"])
    answer, client_port = tls_through(balancer, context, data=b"hello\n")
    assert answer == b"ok\n"
    facts = server.seen.get(timeout=10)  # type: ignore[attr-defined]
    assert facts["peer"] == (CLIENT, client_port) and facts["proxy_peer"][0] == BALANCER
    assert facts["line"] == b"hello\n"  # the bytes after the header were left for the handler
    assert facts["alpn"] == "http/1.1" and facts["authority"] == "localhost"
    assert facts["unique_id"] and facts["unique_id"].startswith(b"7F000002:")
    info = facts["ssl"]
    assert info is not None and info.tls and info.cert_verified
    assert info.version == "TLSv1.3" and info.cn == "alice"
    assert info.cipher.startswith("TLS_") and info.key_alg and info.sig_alg
    assert facts["tls_version"] is None  # the tcp port itself has no TLS


# -- who may send a header, and whose address the rules see ----------------------------------------


def test_header_from_an_untrusted_peer_is_refused(serve: Serve,
                                                  haproxy: Callable[..., HAProxy],
                                                  logs: pytest.LogCaptureFixture) -> None:
    """A balancer outside proxy_protocol_from: closed before a byte is read, no hook runs."""
    server = serve(Facts, port="127.0.0.1:0", proxy_protocol="v2",
                   proxy_protocol_from="10.0.0.0/8", log_level=3)
    host, port = address(server)
    balancer = haproxy(f"{host}:{port} send-proxy-v2 source {BALANCER}")
    with connect_from(CLIENT, balancer.port) as conn:
        conn.sendall(b"hello\n")
        assert read_until_closed(conn) == b""
    assert logged(logs, rf"Connection \[{BALANCER}\]:\d+ refused: the peer is not in "
                        r"proxy_protocol_from")
    assert server.hooks == [] and server.seen.empty()  # type: ignore[attr-defined]


def test_deny_rules_see_the_real_client(serve: Serve, haproxy: Callable[..., HAProxy],
                                        certs: dict[str, str], client_context: ssl.SSLContext,
                                        logs: pytest.LogCaptureFixture) -> None:
    """Both clients come through the same balancer: the rule on 127.0.0.2 closes that one
    before its TLS handshake (no hook), and lets 127.0.0.4 in."""
    server = serve(Facts, port="127.0.0.1:0/ssl", proxy_protocol="any",
                   proxy_protocol_from=BALANCER, cidr_deny=f"{CLIENT}/32",
                   cidr_allow="127.0.0.0/8", log_level=3,
                   **certs)
    host, port = address(server)
    balancer = haproxy(f"{host}:{port} send-proxy-v2 source {BALANCER}")
    with pytest.raises(OSError):
        tls_through(balancer, client_context)
    assert logged(logs, rf"Denied \[{CLIENT}\]:\d+ by the allow/deny rules, before the TLS")
    assert server.hooks == []  # type: ignore[attr-defined]
    answer, client_port = tls_through(balancer, client_context, source=OTHER_CLIENT)
    assert answer == b"ok\n"
    facts = server.seen.get(timeout=10)  # type: ignore[attr-defined]
    assert facts["peer"] == (OTHER_CLIENT, client_port)


# -- raw headers: what HAProxy does not send ----------------------------------------------------


def v2_header(command: int = 1, body: bytes | None = None) -> bytes:
    if body is None:
        body = struct.pack("!4s4sHH", bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7]),
                           56324, 443)
    family = 0x11 if command == 1 else 0x00
    return V2_SIGNATURE + bytes([0x20 | command, family]) + struct.pack("!H", len(body)) + body


def raw_server(serve: Serve, mode: str = "any", **options: Any) -> Facts:
    server = serve(Facts, port="127.0.0.1:0", proxy_protocol=mode,
                   proxy_protocol_from="127.0.0.0/8", log_level=4, **options)
    return server  # type: ignore[return-value]


def exchange(server: GServer, data: bytes) -> bytes:
    """Send ``data`` in one write, read until the server closes (a reset reads as b"")."""
    with socket.create_connection(address(server), timeout=10) as conn:
        conn.sendall(data)
        return read_until_closed(conn)


def test_header_and_data_in_one_segment(serve: Serve) -> None:
    """Exactly the header is consumed: the handler reads the line that followed it."""
    server = raw_server(serve)
    assert exchange(server, v2_header() + b"hello\n") == b"ok\n"
    facts = server.seen.get(timeout=10)
    assert facts["peer"] == ("192.0.2.1", 56324) and facts["local"] == ("198.51.100.7", 443)
    assert facts["proxy_peer"][0] == "127.0.0.1" and facts["line"] == b"hello\n"
    line = b"PROXY TCP6 2001:db8::1 2001:db8::2 40000 8443\r\n"
    assert exchange(server, line + b"again\n") == b"ok\n"
    facts = server.seen.get(timeout=10)
    assert facts["peer"] == ("2001:db8::1", 40000) and facts["line"] == b"again\n"


@pytest.mark.parametrize("header", [v2_header(command=0, body=b""), b"PROXY UNKNOWN\r\n"],
                         ids=["v2-LOCAL", "v1-UNKNOWN"])
def test_health_check_headers_keep_the_real_addresses(serve: Serve, header: bytes) -> None:
    """LOCAL (v2) and UNKNOWN (v1) are the balancer speaking for itself: served as usual,
    with the socket's own addresses."""
    server = raw_server(serve)
    assert exchange(server, header + b"ping\n") == b"ok\n"
    facts = server.seen.get(timeout=10)
    assert facts["peer"][0] == "127.0.0.1" and facts["peer"] == facts["proxy_peer"]
    assert facts["local"] == address(server) and facts["line"] == b"ping\n"


@pytest.mark.parametrize("header", [v2_header(command=0, body=b""), b"PROXY UNKNOWN\r\n"],
                         ids=["v2-LOCAL", "v1-UNKNOWN"])
def test_health_check_headers_refused_where_a_relayed_client_is_required(
        serve: Serve, logs: pytest.LogCaptureFixture, header: bytes) -> None:
    """proxy_protocol_local refuse: a LOCAL or UNKNOWN header is closed, no hook runs; a
    PROXY command is still served."""
    server = raw_server(serve, proxy_protocol_local="refuse")
    assert exchange(server, header + b"ping\n") == b""
    assert logged(logs, r"refused: a PROXY header naming no client \((LOCAL|PROXY) \w+\) "
                        r"where a relayed client is required")
    assert server.hooks == [] and server.seen.empty()
    assert exchange(server, v2_header() + b"hello\n") == b"ok\n"


@pytest.mark.parametrize(("mode", "data", "reason"), [
    ("v2", b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 443\r\nhello\n",
     "a v1 header on a port that takes v2 only"),
    ("v1", v2_header() + b"hello\n", "a v2 header on a port that takes v1 only"),
    ("any", b"hello, no header\n", "not a PROXY header"),
    ("any", b"PROXY TCP4 192.0.2.1 198.51.100.7 56324 0443\r\n", "malformed v1 TCP4"),
    ("any", b"PROXY TCP4 " + b"9" * 120, "without CRLF in its first 107"),
    ("any", V2_SIGNATURE + b"\x21\x11\xff\xff" + bytes(64), "oversized"),
    ("any", v2_header()[:20], "truncated PROXY header: the peer closed after 20 bytes"),
    ("any", b"PROXY TCP4 192.0.2.1", "truncated PROXY header"),
], ids=["v1-on-v2", "v2-on-v1", "none", "leading-zero", "long-v1", "oversized-v2",
        "truncated-v2", "truncated-v1"])
def test_bad_headers_are_closed(serve: Serve, logs: pytest.LogCaptureFixture, mode: str,
                                data: bytes, reason: str) -> None:
    """Closed with a level-3 line naming the reason; nothing sent, no hook ran."""
    server = raw_server(serve, mode)
    with socket.create_connection(address(server), timeout=10) as conn:
        conn.sendall(data)
        with contextlib.suppress(OSError):  # the server may have closed already
            conn.shutdown(socket.SHUT_WR)  # a truncated header ends here
        assert read_until_closed(conn) == b""
    assert logged(logs, r"Connection \[127\.0\.0\.1\]:\d+ refused: .*" + re.escape(reason))
    assert server.hooks == [] and server.seen.empty() and server.requests == 0


def test_header_deadline(serve: Serve, logs: pytest.LogCaptureFixture) -> None:
    """A header that never ends is closed at timeout_proxy_header."""
    server = raw_server(serve, timeout_proxy_header=1)
    with socket.create_connection(address(server), timeout=10) as conn:
        conn.sendall(b"PROXY TCP4 ")
        assert read_until_closed(conn) == b""
    assert logged(logs, r"refused: no complete PROXY header within timeout_proxy_header "
                        r"\(1 s; 11 bytes received\)")
    assert server.hooks == []


# -- configuration ------------------------------------------------------------------------------


@pytest.mark.parametrize(("options", "reason"), [
    ({"port": "127.0.0.1:0", "proxy_protocol": "v1"}, "needs proxy_protocol_from"),
    ({"port": {"port": 0, "host": "127.0.0.1", "proxy_protocol": "v2"}},
     "needs proxy_protocol_from"),
    ({"port": "127.0.0.1:0", "proxy_protocol": "v3"}, "proxy_protocol"),
    ({"port": "127.0.0.1:0", "proxy_protocol": "v1", "proxy_protocol_from": "10.0.0.0/33"},
     "proxy_protocol_from"),
])
def test_configuration_errors(options: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        GServer(**options).start()


def test_per_port_setting(serve: Serve) -> None:
    """The port dict's keys: one port reads headers, the other does not."""
    server = serve(Facts, port=[
        {"host": "127.0.0.1", "port": 0, "proxy_protocol": "v1",
         "proxy_protocol_from": "127.0.0.1"},
        "127.0.0.1:0",
    ])
    assert [listener.proxy and listener.proxy.mode for listener in server.listeners] \
        == ["v1", None]
    with socket.create_connection(address(server, 1), timeout=10) as conn:
        conn.sendall(b"PROXY TCP4 192.0.2.1 198.51.100.7 1 2\r\n")
        assert read_until_eof(conn) == b"ok\n"
    facts = server.seen.get(timeout=10)  # type: ignore[attr-defined]
    assert facts["peer"][0] == "127.0.0.1" and facts["proxy_peer"] is None
    assert facts["line"].startswith(b"PROXY TCP4")  # an ordinary line on that port
