"""allow/deny/cidr rules and reverse lookups against real peers on 127.0.0.1, ::1 and a
dual-stack socket (issue 4, point 5).

Address rules run before the TLS handshake on ssl ports (a denied peer is closed at once,
without any hook); host-name rules and allow_deny_hook run after it, and a peer they deny gets
request_denied_hook over the established TLS session.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent.event import Event
from support.net import address, needs_ipv6, poll, read_until_eof, tls_connect

from gnetserver import GServer

pytestmark = pytest.mark.timeout(30)

Serve = Callable[..., GServer]


class Recorder(GServer):
    """Records the per-connection hooks that run; says hello or denied."""

    def configure_hook(self) -> None:
        self.events: list[str] = []
        self.lock = threading.Lock()

    def _note(self, name: str) -> None:
        with self.lock:
            self.events.append(name)

    def post_accept_hook(self, client: Any) -> None:
        self._note("post_accept_hook")

    def allow_deny_hook(self, client: Any) -> bool:
        self._note("allow_deny_hook")
        return True

    def process_request(self, client: Any) -> None:
        self._note("process_request")
        host = getattr(client, "peerhost", None)
        client.sendall(f"hello {client.peeraddr} {host}\n".encode())

    def request_denied_hook(self, client: Any) -> None:
        self._note("request_denied_hook")
        client.sendall(b"denied\n")

    def post_process_request_hook(self, client: Any) -> None:
        self._note("post_process_request_hook")

    def post_client_connection_hook(self, client: Any) -> None:
        self._note("post_client_connection_hook")


def logged(caplog: pytest.LogCaptureFixture, pattern: str) -> bool:
    return poll(lambda: any(re.search(pattern, m) for m in caplog.messages))


def talk(server: GServer, context: ssl.SSLContext, host: str = "localhost") -> bytes:
    """A full TLS exchange: handshake, read the server's answer until it closes."""
    with tls_connect(server, context, server_hostname=host) as conn:
        return read_until_eof(conn)


def assert_denied_before_handshake(server: Recorder, context: ssl.SSLContext,
                                   caplog: pytest.LogCaptureFixture, peer: str) -> None:
    """The peer is closed before any TLS work: a raw client that sends nothing sees EOF at once
    (a handshake would wait timeout_handshake = 20 s for its ClientHello), a TLS client's
    handshake fails, the log says denied, and no per-connection hook ran."""
    with socket.create_connection(address(server), timeout=3) as raw:
        assert raw.recv(100) == b""
    with pytest.raises(OSError):
        talk(server, context)
    assert logged(caplog, rf"Denied \[{re.escape(peer)}\]:\d+ .*before the TLS handshake")
    assert server.events == [] and server.requests == 0


@pytest.fixture
def tls(certs: dict[str, str], caplog: pytest.LogCaptureFixture) -> dict[str, Any]:
    """Options of a TLS server logging at level 3, with a long handshake timeout."""
    caplog.set_level(logging.INFO, logger="gnetserver")
    return {"proto": "ssl", "log_level": 3, "timeout_handshake": 20, **certs}


def test_ipv4_deny_before_handshake(serve: Serve, tls: dict[str, Any],
                                    client_context: ssl.SSLContext,
                                    caplog: pytest.LogCaptureFixture) -> None:
    """A deny regex on 127.0.0.1 closes the peer before the handshake; deny wins over allow."""
    server = serve(Recorder, port="127.0.0.1:0", deny=r"127\.0\.0\.1",
                   cidr_allow="127.0.0.0/8", **tls)
    assert_denied_before_handshake(server, client_context, caplog, "127.0.0.1")


def test_ipv4_default_deny_and_allow(serve: Serve, tls: dict[str, Any],
                                     client_context: ssl.SSLContext,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """Any rule makes the default deny; a matching cidr_allow lets the peer in."""
    denied = serve(Recorder, port="127.0.0.1:0", cidr_allow="10.0.0.0/8", **tls)
    assert_denied_before_handshake(denied, client_context, caplog, "127.0.0.1")
    allowed = serve(Recorder, port="127.0.0.1:0", cidr_allow="127.0.0.0/8", **tls)
    assert talk(allowed, client_context) == b"hello 127.0.0.1 None\n"


@needs_ipv6
def test_ipv6_peer(serve: Serve, tls: dict[str, Any], client_context: ssl.SSLContext,
                   caplog: pytest.LogCaptureFixture) -> None:
    """::1 is allowed by ::1/128, denied by a deny regex, and by IPv4-only rules."""
    allowed = serve(Recorder, port="[::1]:0", cidr_allow="::1/128", deny=r"127\..*", **tls)
    assert talk(allowed, client_context) == b"hello ::1 None\n"
    denied = serve(Recorder, port="[::1]:0", allow=".*", deny="::1", **tls)
    assert_denied_before_handshake(denied, client_context, caplog, "::1")
    v4_only = serve(Recorder, port="[::1]:0", cidr_allow="0.0.0.0/0", **tls)
    assert_denied_before_handshake(v4_only, client_context, caplog, "::1")


def dual_stack_server(serve: Serve, **options: Any) -> Recorder:
    server = serve(Recorder, port="*:0", ipv="*", **options)
    listener = server.listeners[0]
    if len(server.listeners) != 1 or listener.address.family != socket.AF_INET6 \
            or listener.address.v6only is not False:
        pytest.skip("no dual-stack socket on this machine")
    return server  # type: ignore[return-value]


def connect_v4(server: GServer, context: ssl.SSLContext) -> bytes:
    """A TLS exchange from 127.0.0.1 to the dual-stack listener's port."""
    port = server.listeners[0].port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as conn:
        return read_until_eof(conn)


@needs_ipv6
def test_ipv4_mapped_peer_on_dual_stack_socket(serve: Serve, tls: dict[str, Any],
                                               client_context: ssl.SSLContext,
                                               caplog: pytest.LogCaptureFixture) -> None:
    """An IPv4 peer on a `*` socket shows as ::ffff:127.0.0.1 but IPv4 rules match it."""
    allowed = dual_stack_server(serve, cidr_allow="127.0.0.0/8", allow=r"10\.1\.1\.1", **tls)
    assert connect_v4(allowed, client_context) == b"hello ::ffff:127.0.0.1 None\n"
    denied = dual_stack_server(serve, deny=r"127\.0\.0\.1", allow=".*", **tls)
    with pytest.raises(OSError):
        connect_v4(denied, client_context)
    assert logged(caplog, r"Denied \[::ffff:127\.0\.0\.1\]:\d+ .*before the TLS handshake")
    assert denied.events == []


def test_tcp_port_keeps_net_server_order(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """On plain tcp a denied peer goes through Net::Server's order: request_denied_hook runs
    (and may answer) instead of process_request; allow_deny_hook is not called."""
    caplog.set_level(logging.INFO, logger="gnetserver")
    server = serve(Recorder, port="127.0.0.1:0", cidr_deny="127.0.0.1", log_level=3)
    with socket.create_connection(address(server), timeout=5) as conn:
        assert read_until_eof(conn) == b"denied\n"
    assert poll(lambda: len(server.events) == 4)
    assert server.events == ["post_accept_hook", "request_denied_hook",
                             "post_process_request_hook", "post_client_connection_hook"]
    assert logged(caplog, r"Denied \[127\.0\.0\.1\]:\d+ by the allow/deny rules$")


def test_unix_sockets_are_immune(serve: Serve, tmp_path: Path) -> None:
    """As in Net::Server, the rules never apply to unix-socket clients."""
    path = str(tmp_path / "s.sock")
    serve(Recorder, port=f"{path}|unix", deny=".*", cidr_deny="0.0.0.0/0")
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(5)
        conn.connect(path)
        assert read_until_eof(conn) == b"hello None None\n"  # no peer address on unix sockets


class CountingPrepare(Recorder):
    """Counts prepare_access calls; its pre_loop_hook, the last start-up hook, adds a rule."""

    def configure_hook(self) -> None:
        super().configure_hook()
        self.prepared = 0

    def pre_loop_hook(self) -> None:
        self.conf = self.conf.replace(deny=[r"127\.0\.0\.1"])

    def prepare_access(self) -> Any:
        self.prepared += 1
        return super().prepare_access()


def test_rules_are_compiled_once_per_start(serve: Serve) -> None:
    """The rules are compiled when accepting starts (so a rule a start-up hook adds counts),
    once: connections only read them. Changing ``conf`` later takes effect when
    prepare_access runs again."""
    server = serve(CountingPrepare, port="127.0.0.1:0", cidr_allow="127.0.0.0/8")
    for _ in range(3):
        with socket.create_connection(address(server), timeout=5) as conn:
            assert read_until_eof(conn) == b"denied\n"
    assert server.prepared == 1  # type: ignore[attr-defined]
    server.conf = server.conf.replace(deny=[])
    server.prepare_access()
    with socket.create_connection(address(server), timeout=5) as conn:
        assert read_until_eof(conn) == b"hello 127.0.0.1 None\n"
    assert server.prepared == 2  # type: ignore[attr-defined]


class DenyingHook(Recorder):
    def allow_deny_hook(self, client: Any) -> bool:
        self._note("allow_deny_hook")
        return False


def test_allow_deny_hook_runs_after_handshake(serve: Serve, tls: dict[str, Any],
                                              client_context: ssl.SSLContext) -> None:
    """allow_deny_hook decides after the handshake; its denial gets request_denied_hook over TLS."""
    server = serve(DenyingHook, port="127.0.0.1:0", cidr_allow="127.0.0.1", **tls)
    assert talk(server, client_context) == b"denied\n"
    assert poll(lambda: len(server.events) == 5)
    assert server.events == ["post_accept_hook", "allow_deny_hook", "request_denied_hook",
                             "post_process_request_hook", "post_client_connection_hook"]


def name_of_loopback() -> str:
    try:
        return socket.getnameinfo(("127.0.0.1", 0), socket.NI_NAMEREQD)[0]
    except OSError:
        pytest.skip("127.0.0.1 has no host name on this machine")


def test_host_name_rules_run_after_handshake(serve: Serve, tls: dict[str, Any],
                                             client_context: ssl.SSLContext,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """With reverse_lookups a deny on the host name is decided after the handshake (the address
    alone is allowed), so the peer gets request_denied_hook over TLS."""
    name = name_of_loopback()
    server = serve(Recorder, port="127.0.0.1:0", reverse_lookups=1, deny=re.escape(name),
                   cidr_allow="127.0.0.0/8", **tls)
    assert talk(server, client_context) == b"denied\n"
    assert "request_denied_hook" in poll(lambda: server.events)
    assert logged(caplog, rf"Denied \[127\.0\.0\.1\]:\d+ \({re.escape(name)}\)")
    allowed = serve(Recorder, port="127.0.0.1:0", reverse_lookups=1, allow=re.escape(name),
                    **tls)
    assert talk(allowed, client_context) == f"hello 127.0.0.1 {name}\n".encode()


def test_double_reverse_lookups(serve: Serve, tls: dict[str, Any],
                                client_context: ssl.SSLContext,
                                caplog: pytest.LogCaptureFixture) -> None:
    """Double-reverse passes when the name resolves back to 127.0.0.1 (checked against the
    stdlib resolver here); `autofail` denies even then."""
    name = name_of_loopback()
    forward = {info[4][0] for info in socket.getaddrinfo(name, None, 0, socket.SOCK_STREAM)}
    server = serve(Recorder, port="127.0.0.1:0", reverse_lookups="double", **tls)
    expected = f"hello 127.0.0.1 {name}\n" if "127.0.0.1" in forward else "denied\n"
    assert talk(server, client_context) == expected.encode()
    autofail = serve(Recorder, port="127.0.0.1:0", double_reverse_lookups="autofail", **tls)
    assert talk(autofail, client_context) == b"denied\n"
    if "127.0.0.1" in forward:
        assert logged(caplog, rf"Double reverse autofail:  addr: 127\.0\.0\.1,  host: {name}")


class StallFirstLookup:
    """The hub's real resolver, except that the first getnameinfo waits (cooperatively) until
    some other connection has been fully served: that can only happen if a pending lookup does
    not block the other clients."""

    def __init__(self, real: Any, served: Event) -> None:
        self.real, self.served = real, served
        self.calls = 0
        self.stall_ended_by_other_client: bool | None = None

    def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        self.calls += 1
        if self.calls == 1:
            self.stall_ended_by_other_client = self.served.wait(timeout=5)
        return self.real.getnameinfo(sockaddr, flags)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)


class SlowDNSServer(Recorder):
    def pre_loop_hook(self) -> None:
        hub = gevent.get_hub()  # the server thread's hub
        self.served = Event()
        self.stalling = StallFirstLookup(hub.resolver, self.served)
        hub.resolver = self.stalling

    def post_client_connection_hook(self, client: Any) -> None:
        self.served.set()


def test_lookups_are_cooperative(serve: Serve, tls: dict[str, Any],
                                 client_context: ssl.SSLContext) -> None:
    """A connection whose reverse lookup is pending does not stop another from being served."""
    server = serve(SlowDNSServer, port="127.0.0.1:0", reverse_lookups=1, **tls)
    first = tls_connect(server, client_context)
    try:
        assert talk(server, client_context).startswith(b"hello 127.0.0.1")
        assert read_until_eof(first).startswith(b"hello 127.0.0.1")
    finally:
        first.close()
    stalling = server.stalling  # type: ignore[attr-defined]
    assert stalling.calls >= 2 and stalling.stall_ended_by_other_client is True


# -- issue 16 point 4: a peer's PTR record cannot pass address rules; names ignore case --------


class ClaimedName:
    """The hub's real resolver, except that every reverse lookup answers ``name``: what a peer
    that controls its own PTR record makes the server see."""

    def __init__(self, real: Any, name: str) -> None:
        self.real, self.name = real, name

    def getnameinfo(self, sockaddr: Any, flags: int) -> Any:
        return self.name, str(sockaddr[1])

    def __getattr__(self, attribute: str) -> Any:
        return getattr(self.real, attribute)


class PTRClaimer(Recorder):
    """Its peers' PTR records say ``claimed`` (set on the class before serving)."""

    claimed = ""

    def pre_loop_hook(self) -> None:
        hub = gevent.get_hub()  # the server thread's hub
        hub.resolver = ClaimedName(hub.resolver, self.claimed)


def claimer(name: str) -> type[PTRClaimer]:
    return type("PTRClaimer", (PTRClaimer,), {"claimed": name})


@pytest.mark.parametrize("claimed", ["10.1.2.3", "10.1.2.3.evil.test"])
def test_a_ptr_name_cannot_pass_an_address_rule(serve: Serve, tls: dict[str, Any],
                                                client_context: ssl.SSLContext,
                                                caplog: pytest.LogCaptureFixture,
                                                claimed: str) -> None:
    """A peer on 127.0.0.1 whose PTR says 10.1.2.3 is not let in by a rule for 10.x addresses
    (it was: the regex was tried on the name too). The address rule alone decides, so the
    peer is closed before the TLS handshake."""
    server = serve(claimer(claimed), port="127.0.0.1:0", reverse_lookups=1, allow=r"10\..*",
                   **tls)
    assert_denied_before_handshake(server, client_context, caplog, "127.0.0.1")
    plain = serve(claimer(claimed), port="127.0.0.1:0", reverse_lookups=1, allow=r"10\..*",
                  log_level=3)
    with socket.create_connection(address(plain), timeout=5) as conn:
        assert read_until_eof(conn) == b"denied\n"


def test_host_name_rules_ignore_case(serve: Serve, tls: dict[str, Any],
                                     client_context: ssl.SSLContext,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """`EVIL.example.` is denied by `deny evil\\.example` (it passed: the match was
    case-sensitive and kept the root's dot)."""
    server = serve(claimer("EVIL.example."), port="127.0.0.1:0", reverse_lookups=1,
                   deny=r"evil\.example", cidr_allow="127.0.0.0/8", **tls)
    assert talk(server, client_context) == b"denied\n"
    assert logged(caplog, r"Denied \[127\.0\.0\.1\]:\d+ \(EVIL\.example\.\) by the allow/deny")
    allowed = serve(claimer("WWW.Example.ORG"), port="127.0.0.1:0", reverse_lookups=1,
                    allow=r"www\.example\.org", **tls)
    assert talk(allowed, client_context) == b"hello 127.0.0.1 WWW.Example.ORG\n"


def test_name_rules_without_double_reverse_are_warned_about(
        serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """Name rules trust a PTR name the peer's DNS gives: a level-1 warning at start (none
    with double-reverse lookups, none for address rules)."""
    caplog.set_level(logging.INFO, logger="gnetserver")
    serve(Recorder, port="127.0.0.1:0", reverse_lookups=1, deny=r"evil\.example",
          allow=r"127\..*")
    warnings = [r for r in caplog.records if "double_reverse_lookups" in r.getMessage()]
    assert [r.levelno for r in warnings] == [logging.ERROR]  # Net::Server level 1
    assert r"'evil\\.example'" in warnings[0].getMessage()
    assert "127" not in warnings[0].getMessage()
    caplog.clear()
    serve(Recorder, port="127.0.0.1:0", double_reverse_lookups=1, deny=r"evil\.example")
    serve(Recorder, port="127.0.0.1:0", reverse_lookups=1, allow=r"127\..*")
    assert not [r for r in caplog.records if "host-name rule" in r.getMessage()]
