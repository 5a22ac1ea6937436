"""Ports at server level (issue 2, point 5) and tcp/ssl/unix on one server (point 6).

Every server binds kernel-chosen ports (port 0) and is found through ``server.listeners``.
The default ``process_request`` is Net::Server's echo, which the clients here speak.
"""

from __future__ import annotations

import os
import socket
import ssl
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.net import address, needs_ipv6, tls_connect

from gnetserver import GServer
from gnetserver.errors import ConfigError
from gnetserver.server import ECHO_LINE_LIMIT
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(20)


def echo(sock: Any, text: str = "ping") -> None:
    """One round of Net::Server's echo, then ``quit`` and the server's close."""
    reader = sock.makefile("rb")
    assert reader.readline().startswith(b'Welcome to "GServer"')
    sock.sendall(f"{text}\r\nquit\r\n".encode())
    assert reader.readline().endswith(f'You said "{text}"\r\n'.encode())
    assert reader.readline().endswith(b'You said "quit"\r\n')
    assert reader.read() == b""
    reader.close()


# -- point 5: port 0, dual stack, bad specs -----------------------------------------------------


@pytest.mark.parametrize("options", [
    {"port": 0, "host": "127.0.0.1"},
    {"port": "127.0.0.1:0"},
    {"port": "127.0.0.1|0|tcp"},
    {"port": [{"port": 0, "host": "127.0.0.1", "proto": "tcp"}]},
], ids=["int", "string", "pipes", "dict"])
def test_port_zero_binds_a_kernel_port(options: dict[str, Any],
                                       serve: Callable[..., GServer]) -> None:
    server = serve(GServer, **options)
    [listener] = server.listeners
    assert listener.port != 0 and listener.host == "127.0.0.1" and listener.proto == "tcp"
    assert str(listener) == f"127.0.0.1:{listener.port}/tcp"
    with socket.create_connection(address(server), timeout=5) as sock:
        echo(sock)


@needs_ipv6
def test_ipv_star_is_one_dual_stack_socket(serve: Callable[..., GServer]) -> None:
    """``host *`` with ``ipv *``: one ``[::]`` socket with IPV6_V6ONLY off, reached over
    IPv4 and IPv6 (clients use loopback addresses only)."""
    server = serve(GServer, port=0, host="*", ipv="*")
    [listener] = server.listeners
    assert listener.sock.family == socket.AF_INET6 and listener.host == "::"
    assert listener.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    for host in ("127.0.0.1", "::1"):
        with socket.create_connection((host, listener.port), timeout=5) as sock:
            echo(sock, f"over {host}")


@needs_ipv6
def test_ipv6_literal_binds_ipv6_only(serve: Callable[..., GServer]) -> None:
    server = serve(GServer, port="[::1]:0/tcp")
    [listener] = server.listeners
    assert listener.sock.family == socket.AF_INET6 and listener.host == "::1"
    assert listener.sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    with socket.create_connection(("::1", listener.port), timeout=5) as sock:
        echo(sock)


def test_list_alignment_of_host_and_proto(serve: Callable[..., GServer],
                                          certs: dict[str, str],
                                          client_context: ssl.SSLContext) -> None:
    """host/proto lists align with port, the last element reused."""
    server = serve(GServer, port=[0, 0, 0], host=["127.0.0.1"], proto=["ssl", "tcp"], **certs)
    assert [(lis.host, lis.proto) for lis in server.listeners] == [
        ("127.0.0.1", "ssl"), ("127.0.0.1", "tcp"), ("127.0.0.1", "tcp")]
    with tls_connect(server, client_context, 0) as tls:
        echo(tls)
    with socket.create_connection(address(server, 2), timeout=5) as sock:
        echo(sock)


def _busy_port() -> tuple[socket.socket, str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock, f"127.0.0.1:{sock.getsockname()[1]}"


BAD_SPECS = [
    # (id, port option, extra options, words the message must contain)
    ("range", "127.0.0.1:99999/tcp", {}, ["'127.0.0.1:99999/tcp'", "out of range"]),
    ("negative", "-1", {}, ["'-1'", "out of range"]),
    ("service", "127.0.0.1:nosuchsvc/tcp", {}, ["'127.0.0.1:nosuchsvc/tcp'", "service"]),
    ("empty", "", {}, ["''", "empty"]),
    ("fields", "a:b:c:d", {}, ["'a:b:c:d'", "fields"]),
    ("udp-recv-len", {"port": 0, "host": "127.0.0.1", "proto": "udp", "udp_recv_len": "big"},
     {}, ["127.0.0.1:0/udp", "udp_recv_len", "'big'", "integer"]),
    ("udp-recv-flags", "127.0.0.1:0/udp", {"udp_recv_flags": 2},
     ["udp_recv_flags", "MSG_PEEK", "read again"]),
    ("udp-proxy", {"port": 0, "host": "127.0.0.1", "proto": "udp", "proxy_protocol": "v1"},
     {}, ["127.0.0.1:0/udp", "proxy_protocol on a udp port"]),
    ("udp-ssl", {"port": 0, "host": "127.0.0.1", "proto": "udp", "SSL_cert_file": "c.pem"},
     {}, ["127.0.0.1:0/udp", "SSL_cert_file", "proto ssl"]),
    ("dict-no-port", {"host": "127.0.0.1"}, {}, ["{'host': '127.0.0.1'}", "port"]),
    ("dict-unknown-key", {"port": 0, "host": "127.0.0.1", "colour": "red"}, {},
     ["127.0.0.1:0/tcp", "colour"]),
    ("ipv6-of-ipv4", "127.0.0.1:0", {"ipv": 6}, ["127.0.0.1:0/tcp/IPv6", "resolve"]),
    ("bad-ipv4", "999.1.1.1:0", {}, ["999.1.1.1:0/tcp", "resolve"]),
    ("unix-no-dir", "/nonexistent/dir/s.sock|unix", {},
     ["/nonexistent/dir/s.sock|unix", "No such file"]),
    ("ssl-on-tcp", {"port": 0, "host": "127.0.0.1", "SSL_cert_file": "c.pem"}, {},
     ["127.0.0.1:0/tcp", "SSL_cert_file", "proto ssl"]),
]


@pytest.mark.parametrize("port, extra, words", [r[1:] for r in BAD_SPECS],
                         ids=[r[0] for r in BAD_SPECS])
def test_bad_spec_stops_the_start(port: Any, extra: dict[str, Any], words: list[str]) -> None:
    server = GServer(port=port, log_level=0, **extra)
    with pytest.raises(ConfigError) as info:
        server.start()
    for word in words:
        assert word in str(info.value)
    assert all(listener.sock.fileno() == -1 for listener in server.listeners)


def test_port_in_use_stops_the_start_and_releases_the_others() -> None:
    busy, spec = _busy_port()
    with busy:
        server = GServer(port=["127.0.0.1:0", spec], log_level=0)
        with pytest.raises(ConfigError, match=f"cannot bind {spec}/tcp: .*in use"):
            server.start()
    assert all(listener.sock.fileno() == -1 for listener in server.listeners)


# -- point 6: tcp, ssl and unix on one server ----------------------------------------------------


def test_one_server_serves_ssl_ssl_tcp_and_unix(tmp_path: Path, certs: dict[str, str],
                                                client_context: ssl.SSLContext) -> None:
    path = str(tmp_path / "srv.sock")
    stale = socket.socket(socket.AF_UNIX)  # a socket file left behind by an earlier run
    stale.bind(path)
    stale.close()
    server = GServer(port=["127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0/tcp", f"{path}|unix"],
                     proto="ssl", log_level=0, **certs)
    with ServerThread(server):
        assert [lis.proto for lis in server.listeners] == ["ssl", "ssl", "tcp", "unix"]
        assert len({lis.port for lis in server.listeners[:3]}) == 3
        assert server.listeners[3].port == path and stat.S_ISSOCK(os.lstat(path).st_mode)
        for index in (0, 1):
            with tls_connect(server, client_context, index) as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
                echo(tls, f"tls {index}")
        with socket.create_connection(address(server, 2), timeout=5) as sock:
            echo(sock, "tcp")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            echo(sock, "unix")
    assert not os.path.exists(path), "the unix socket file must be removed on close"


def test_unix_path_holding_a_regular_file_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("precious")
    with pytest.raises(ConfigError, match="exists and is not a socket"):
        GServer(port=f"{path}|unix", log_level=0).start()
    assert path.read_text() == "precious"


# -- the default echo reads bounded lines ---------------------------------------------------------


class LoggedEcho(GServer):
    """The default echo, keeping every log message (level, text) for the test."""

    def configure_hook(self) -> None:
        self.messages: list[tuple[int, str]] = []

    def log(self, level: int, message: str) -> None:
        self.messages.append((level, message))
        super().log(level, message)


def test_echo_answers_a_line_at_the_limit_and_ends_a_longer_one(
        serve: Callable[..., GServer]) -> None:
    server = serve(LoggedEcho, port="127.0.0.1:0/tcp", log_level=0)
    longest = b"a" * (ECHO_LINE_LIMIT - 2) + b"\r\n"  # exactly the limit, its end included
    with socket.create_connection(address(server), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline().startswith(b"Welcome")
        sock.sendall(longest)
        assert reader.readline().endswith(b'You said "' + longest[:-2] + b'"\r\n')
        sock.sendall(b"b" * (ECHO_LINE_LIMIT + 10) + b"\r\n")  # one byte too many, and more
        assert reader.readline().endswith(b": Line too long\r\n")
        assert reader.read() == b""  # the connection ends; nothing was echoed
        reader.close()
    too_long = [m for m in server.messages if "Line longer than" in m[1]]
    assert len(too_long) == 1 and too_long[0][0] == 3, server.messages
