"""Resolution and binding with real sockets on loopback and under tmp_path (spec 3.5, 3.6).

No DNS is involved: hosts are ``*``, literals, or ``localhost`` (from /etc/hosts). Every socket a
test opens is closed by a fixture or a ``with`` block; every blocking call has a timeout.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from support.net import IPV6

from gnetserver.errors import ConfigError
from gnetserver.ports import PortSpec, parse_ports
from gnetserver.resolve import (
    BindAddress,
    _bind_addresses,
    _set_mode,
    bind_all,
    describe,
    resolve,
)

S = PortSpec
Bound = list[tuple[BindAddress, socket.socket]]
TIMEOUT = 5.0


@pytest.fixture
def ipv6() -> None:
    """Skip the test unless this machine can bind ::1."""
    if not IPV6:
        pytest.skip("no IPv6 loopback on this machine")


@pytest.fixture
def bind() -> Iterator[Callable[..., Bound]]:
    """``bind_all`` whose sockets are closed at teardown."""
    opened: list[socket.socket] = []

    def bind_and_track(specs: Sequence[PortSpec], backlog: int = 8) -> Bound:
        pairs = bind_all(specs, backlog)
        opened.extend(sock for _, sock in pairs)
        return pairs

    yield bind_and_track
    for sock in opened:
        sock.close()


def accept_from(listener: socket.socket, family: int, address: tuple[str, int] | str) -> str:
    """Connect a real client to ``address``, accept it; return the peer host the server saw."""
    listener.settimeout(TIMEOUT)
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        client.connect(address)
        conn, peer = listener.accept()
        conn.close()
    return str(peer[0]) if isinstance(peer, tuple) else str(peer)


def refuses(family: int, address: tuple[str, int]) -> None:
    """Assert nothing accepts a connection at ``address``."""
    with socket.socket(family, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        with pytest.raises(ConnectionRefusedError):
            client.connect(address)


# -- resolve ----------------------------------------------------------------------------------

V4 = socket.AF_INET
V6 = socket.AF_INET6


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (S(8080, "127.0.0.1"), [(V4, ("127.0.0.1", 8080), None)]),
        (S(8080, "127.0.0.1", ipv="4"), [(V4, ("127.0.0.1", 8080), None)]),
        (S(8080, ipv="4"), [(V4, ("0.0.0.0", 8080), None)]),
        (S(8080, "localhost", ipv="4"), [(V4, ("127.0.0.1", 8080), None)]),
        (S("/tmp/x.sock", proto="unix"), [(socket.AF_UNIX, "/tmp/x.sock", None)]),
    ],
    ids=str,
)
def test_resolve_ipv4_and_unix(spec: PortSpec, expected: list[tuple[int, object, bool]]) -> None:
    """Numeric IPv4 hosts short-circuit, ipv 4 takes the first IPv4 address, unix is the path."""
    assert [(a.family, a.sockaddr, a.v6only) for a in resolve(spec)] == expected


@pytest.mark.parametrize(
    ("spec", "host", "v6only"),
    [
        (S(8080), "::", False),  # "*" with ipv "*": :: and 0.0.0.0 fold into one dual-stack
        (S(8080, ipv="6"), "::", True),
        (S(8080, "::1", ipv="6"), "::1", True),
    ],
    ids=str,
)
@pytest.mark.usefixtures("ipv6")
def test_resolve_ipv6(spec: PortSpec, host: str, v6only: bool) -> None:
    (addr,) = resolve(spec)
    assert (addr.family, addr.sockaddr[:2], addr.v6only) == (V6, (host, 8080), v6only)


def test_no_ipv6_env_means_ipv4_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NO_IPV6", "1")
    assert [(a.family, a.sockaddr) for a in resolve(S(8080))] == [(V4, ("0.0.0.0", 8080))]
    with pytest.raises(ConfigError, match=r"cannot resolve \*:8080/tcp/IPv6: IPv6 is disabled"):
        resolve(S(8080, ipv="6"))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (S(8080, "127.0.0.1", ipv="6"), "cannot resolve 127.0.0.1:8080/tcp/IPv6: "),
        (S("http"), "cannot resolve *:http/tcp: port 'http' is not a number"),
    ],
    ids=str,
)
def test_resolve_errors_name_the_spec(spec: PortSpec, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(spec)
    assert str(caught.value).startswith(message)


# -- bind_all: inet ---------------------------------------------------------------------------


def test_bind_ipv4_loopback_port_0(bind: Callable[..., Bound]) -> None:
    """Port 0 binds a kernel-chosen port; the address and describe() show the real one."""
    ((addr, sock),) = bind(parse_ports("127.0.0.1:0"))
    port = sock.getsockname()[1]
    assert port > 0
    assert addr.sockaddr == ("127.0.0.1", port)
    assert addr.spec == S(0, "127.0.0.1", orig_port="0")
    assert describe(addr, sock) == f"127.0.0.1:{port}"
    assert accept_from(sock, V4, ("127.0.0.1", port)) == "127.0.0.1"


@pytest.mark.usefixtures("ipv6")
def test_bind_ipv6_loopback_port_0(bind: Callable[..., Bound]) -> None:
    ((addr, sock),) = bind(parse_ports("[::1]:0"))
    port = sock.getsockname()[1]
    assert describe(addr, sock) == f"[::1]:{port}"
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    assert accept_from(sock, V6, ("::1", port)) == "::1"


@pytest.mark.usefixtures("ipv6")
def test_wildcard_is_one_dual_stack_socket(bind: Callable[..., Bound]) -> None:
    """Host * with ipv * gives one [::] socket that accepts IPv4 and IPv6 clients."""
    ((addr, sock),) = bind(parse_ports(0))
    port = sock.getsockname()[1]
    assert (addr.family, addr.v6only) == (V6, False)
    assert describe(addr, sock) == f"[::]:{port}"
    assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 0
    assert accept_from(sock, V4, ("127.0.0.1", port)) == "::ffff:127.0.0.1"
    assert accept_from(sock, V6, ("::1", port)) == "::1"


@pytest.mark.parametrize(
    ("spec", "family", "v6only", "shown", "served", "refused"),
    [
        ("0/IPv4", V4, None, "0.0.0.0", (V4, "127.0.0.1"), (V6, "::1")),
        ("0/IPv6", V6, True, "[::]", (V6, "::1"), (V4, "127.0.0.1")),
    ],
    ids=["ipv4-refuses-ipv6", "ipv6-refuses-ipv4"],
)
@pytest.mark.usefixtures("ipv6")
def test_one_family_socket_refuses_the_other(
    bind: Callable[..., Bound], spec: str, family: int, v6only: bool | None, shown: str,
    served: tuple[int, str], refused: tuple[int, str],
) -> None:
    """``/IPv4`` and ``/IPv6`` bind one socket of that family only: clients of the other
    family are refused."""
    ((addr, sock),) = bind(parse_ports(spec))
    port = sock.getsockname()[1]
    assert (addr.family, addr.v6only) == (family, v6only)
    assert describe(addr, sock) == f"{shown}:{port}"
    refuses(refused[0], (refused[1], port))
    assert accept_from(sock, served[0], (served[1], port)) == served[1]


@pytest.mark.usefixtures("ipv6")
def test_port_0_is_shared_by_every_address_of_one_spec() -> None:
    """The first address learns the kernel's port; the next ones bind that same number."""
    spec = S(0, "localhost", orig_port="0")
    addrs = [
        BindAddress(spec, V6, ("::1", 0, 0, 0), True),
        BindAddress(spec, V4, ("127.0.0.1", 0), None),
    ]
    bound: Bound = []
    try:
        _bind_addresses(addrs, 8, bound)
        ports = {sock.getsockname()[1] for _, sock in bound}
        assert len(bound) == 2 and len(ports) == 1
        assert [addr.sockaddr[1] for addr, _ in bound] == list(ports) * 2
    finally:
        for _, sock in bound:
            sock.close()


def test_address_in_use(bind: Callable[..., Bound]) -> None:
    ((_, taken),) = bind(parse_ports("127.0.0.1:0"))
    port = taken.getsockname()[1]
    with pytest.raises(ConfigError) as caught:
        bind_all(parse_ports(f"127.0.0.1:{port}/ssl"), 8)
    reason = f"[Errno {errno.EADDRINUSE}] {os.strerror(errno.EADDRINUSE)}"
    assert str(caught.value) == f"cannot bind 127.0.0.1:{port}/ssl: {reason}"


@pytest.mark.usefixtures("ipv6")
def test_address_in_use_names_the_resolved_address(bind: Callable[..., Bound]) -> None:
    ((_, taken),) = bind(parse_ports(0))
    port = taken.getsockname()[1]
    with pytest.raises(ConfigError, match=rf"^cannot bind \*:{port}/tcp on \[::\]:{port}: "):
        bind_all(parse_ports(port), 8)


def test_a_failure_closes_the_sockets_already_bound(
    bind: Callable[..., Bound], tmp_path: Path
) -> None:
    ((_, taken),) = bind(parse_ports("127.0.0.1:0"))
    port = taken.getsockname()[1]
    path = tmp_path / "first.sock"
    with pytest.raises(ConfigError, match="Address already in use"):
        bind_all(parse_ports([f"{path}|unix", f"127.0.0.1:{port}"]), 8)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(TIMEOUT)
        with pytest.raises(ConnectionRefusedError):
            client.connect(str(path))


@pytest.mark.parametrize("port", ["127.0.0.1:0/udp", "{dir}/d.sock|unixdgram",
                                  "{dir}/d.sock|sock_dgram|unix",
                                  {"port": "{dir}/d.sock", "proto": "unix",
                                   "unix_type": "SOCK_DGRAM"}])
def test_datagram_records_bind_datagram_sockets(port: object, bind: Callable[..., Bound],
                                                tmp_path: Path) -> None:
    """udp, unixdgram and unix_type sock_dgram bind a SOCK_DGRAM socket, never listened on;
    a udp socket has no SO_REUSEADDR (another server could then share its port); a unix
    datagram socket file gets unix_mode, as a stream one."""
    if isinstance(port, dict):
        port = {**port, "port": str(port["port"]).format(dir=tmp_path)}
    else:
        port = str(port).format(dir=tmp_path)
    [(address, sock)] = bind(parse_ports(port))
    assert sock.type == socket.SOCK_DGRAM
    if address.family == socket.AF_UNIX:
        assert stat.S_IMODE(os.stat(tmp_path / "d.sock").st_mode) == 0o660
    else:
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 0
        with pytest.raises(ConfigError, match="Address already in use"):
            bind_all(parse_ports(f"127.0.0.1:{sock.getsockname()[1]}/udp"), 8)


def test_udp_and_tcp_share_a_port_number(bind: Callable[..., Bound]) -> None:
    [(_, tcp)] = bind(parse_ports("127.0.0.1:0/tcp"))
    number = tcp.getsockname()[1]
    [(_, udp)] = bind(parse_ports(f"127.0.0.1:{number}/udp"))
    assert udp.getsockname() == ("127.0.0.1", number)


def test_udp_broadcast_option_and_per_port_key(bind: Callable[..., Bound]) -> None:
    """SO_BROADCAST from the option (udp ports only) or a port's own udp_broadcast key."""
    pairs = bind_all(parse_ports(["127.0.0.1:0/udp", "127.0.0.1:0/tcp",
                                  {"port": 0, "host": "127.0.0.1", "proto": "udp",
                                   "udp_broadcast": "off"}]), 8, broadcast=True)
    try:
        assert [sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
                for _, sock in pairs] == [True, False, False]
    finally:
        for _, sock in pairs:
            sock.close()
    [(_, sock)] = bind(parse_ports({"port": 0, "host": "127.0.0.1", "proto": "udp",
                                    "udp_broadcast": 1}))
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
    with pytest.raises(ConfigError, match="udp_broadcast 1 is only for udp ports"):
        bind_all(parse_ports({"port": 0, "host": "127.0.0.1", "udp_broadcast": 1}), 8)


def test_a_live_unix_socket_of_the_other_type_is_not_taken_over(tmp_path: Path) -> None:
    """A path a live stream socket holds is refused to a datagram port (and the other way
    round): connect answers EPROTOTYPE, which is "in use", never "stale"."""
    for live_type, port in ((socket.SOCK_STREAM, "unixdgram"), (socket.SOCK_DGRAM, "unix")):
        path = tmp_path / f"{port}.sock"
        with socket.socket(socket.AF_UNIX, live_type) as live:
            live.bind(str(path))
            if live_type == socket.SOCK_STREAM:
                live.listen(1)
            with pytest.raises(ConfigError, match="socket of the other type"):
                bind_all(parse_ports(f"{path}|{port}"), 8)
        assert path.exists()


def test_a_stale_unix_datagram_socket_is_taken_over(bind: Callable[..., Bound],
                                                    tmp_path: Path) -> None:
    path = tmp_path / "d.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as old:
        old.bind(str(path))  # closed: the file stays, stale
    [(_, sock)] = bind(parse_ports(f"{path}|unixdgram"))
    assert sock.getsockname() == str(path)


def test_every_socket_is_a_listening_stream(bind: Callable[..., Bound], tmp_path: Path) -> None:
    pairs = bind(parse_ports(["127.0.0.1:0", f"{tmp_path / 's.sock'}|SOCK_STREAM|unix"]))
    for _, sock in pairs:
        assert sock.type == socket.SOCK_STREAM
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1


# -- bind_all: unix ---------------------------------------------------------------------------


def test_unix_socket(bind: Callable[..., Bound], tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    ((addr, sock),) = bind(parse_ports(f"{path}|unix"))
    assert describe(addr, sock) == str(path)
    accept_from(sock, socket.AF_UNIX, str(path))


def test_stale_unix_socket_is_replaced(bind: Callable[..., Bound], tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as previous_run:
        previous_run.bind(str(path))
    assert path.is_socket()
    ((_, sock),) = bind(parse_ports(f"{path}|unix"))
    accept_from(sock, socket.AF_UNIX, str(path))


def test_regular_file_is_never_deleted(tmp_path: Path) -> None:
    path = tmp_path / "data.txt"
    path.write_text("keep me")
    with pytest.raises(ConfigError, match=r"\|unix: '.*data.txt' exists and is not a socket"):
        bind_all(parse_ports(f"{path}|unix"), 8)
    assert path.read_text() == "keep me"


def test_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "s.sock"
    with pytest.raises(ConfigError, match=rf"^cannot bind {path}\|unix: \[Errno {errno.ENOENT}\]"):
        bind_all(parse_ports(f"{path}|unix"), 8)


# -- unix socket files: a live socket is never taken over; the mode is set, not the umask's ----


def test_a_live_unix_socket_of_another_process_is_not_taken_over(tmp_path: Path) -> None:
    """Another program listens on the path (a plain socket here): the bind is refused with
    the path named, and that program's socket keeps its file and its clients."""
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen(1)
        inode = path.stat().st_ino
        with pytest.raises(ConfigError, match=rf"cannot bind {path}\|unix: '{path}' is in use"):
            bind_all(parse_ports(f"{path}|unix"), 8)
        assert path.is_socket() and path.stat().st_ino == inode  # not unlinked, not replaced
        accept_from(other, socket.AF_UNIX, str(path))  # still the other program's


def test_a_live_unix_socket_with_a_full_backlog_is_not_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    clients: list[socket.socket] = []
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen(0)
        try:
            for _ in range(8):  # fill the backlog: a further connect would block
                client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                clients.append(client)
                client.setblocking(False)
                try:
                    client.connect(str(path))
                except BlockingIOError:
                    break
            with pytest.raises(ConfigError, match="is in use"):
                bind_all(parse_ports(f"{path}|unix"), 8)
            assert path.is_socket()
        finally:
            for client in clients:
                client.close()


def test_a_stale_unix_socket_is_taken_over(bind: Callable[..., Bound], tmp_path: Path) -> None:
    """Bound once and closed (nothing listens: connect is refused): unlinked and bound anew."""
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as previous_run:
        previous_run.bind(str(path))
        previous_run.listen(1)
    ((_, sock),) = bind(parse_ports(f"{path}|unix"))
    accept_from(sock, socket.AF_UNIX, str(path))


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_unix_socket_mode_is_0660_whatever_the_umask(bind: Callable[..., Bound],
                                                      tmp_path: Path, umask: int) -> None:
    path = tmp_path / "s.sock"
    old = os.umask(umask)
    try:
        bind(parse_ports(f"{path}|unix"))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o660


def test_unix_mode_option_and_per_port_key(tmp_path: Path) -> None:
    first, second = tmp_path / "a.sock", tmp_path / "b.sock"
    specs = parse_ports([f"{first}|unix", {"port": str(second), "proto": "unix",
                                           "unix_mode": "0600"}])
    pairs = bind_all(specs, 8, unix_mode=0o666)
    try:
        assert stat.S_IMODE(first.stat().st_mode) == 0o666
        assert stat.S_IMODE(second.stat().st_mode) == 0o600
    finally:
        for _, sock in pairs:
            sock.close()


@pytest.mark.parametrize(("port", "match"), [
    ({"port": "{dir}/s.sock", "proto": "unix", "unix_mode": "0999"},
     r"bad unix_mode '0999': expected an octal mode"),
    ({"port": "{dir}/s.sock", "proto": "unix", "unix_mode": "4755"},
     r"bad unix_mode '4755': expected a mode from 0 to 0777"),
    ({"port": 0, "host": "127.0.0.1", "proto": "tcp", "unix_mode": "0600"},
     r"unix_mode '0600' is only for unix ports"),
])
def test_bad_per_port_unix_mode(tmp_path: Path, port: dict[str, object], match: str) -> None:
    if isinstance(port["port"], str):
        port = {**port, "port": str(port["port"]).format(dir=tmp_path)}
    with pytest.raises(ConfigError, match=match):
        bind_all(parse_ports([port]), 8)
    assert not (tmp_path / "s.sock").exists()


def test_a_symlink_swapped_in_after_bind_is_not_chmodded(tmp_path: Path) -> None:
    """The mode is set on the socket file itself, never through a symlink put in its place
    (a service user owning the folder must not get chmod on root's files)."""
    path, target = tmp_path / "s.sock", tmp_path / "secret"
    target.write_text("root's")
    target.chmod(0o600)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.bind(str(path))
        path.unlink()
        path.symlink_to(target)  # the swap, between bind and chmod
        (address,) = resolve(parse_ports(f"{path}|unix")[0])
        with pytest.raises(ConfigError, match="is no longer the socket just bound"):
            _set_mode(address, 0o666)
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
