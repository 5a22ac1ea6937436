"""BOUND_SOCKETS (issue 4, point 6): the pure format, and fd adoption with real sockets.

Adoption is tested in this process: a listening socket is dup'ed the way a HUP hands it over,
``BOUND_SOCKETS`` names the dup, and ``bind_ports`` must take that very socket back.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.net import needs_ipv6

from gnetserver import restart, signals
from gnetserver.listener import Listener
from gnetserver.ports import parse_ports
from gnetserver.resolve import BindAddress, resolve
from gnetserver.restart import BoundSocket, decode, encode

pytestmark = pytest.mark.timeout(10)

#: Observed with the real Net::Server (spec 6.2).
NET_SERVER = "8|127.0.0.1|29450|SSL|ipv4; 3|::|29451|TCP|ipv*; 4|127.0.0.1|38481|TCP|ipv4|0"


# -- the format ---------------------------------------------------------------------------------


def test_decode_reads_net_server_value() -> None:
    entries, bad = decode(NET_SERVER)
    assert bad == []
    assert entries == [
        BoundSocket(8, "127.0.0.1", "29450", "SSL", "ipv4"),
        BoundSocket(3, "::", "29451", "TCP", "ipv*"),
        BoundSocket(4, "127.0.0.1", "38481", "TCP", "ipv4", "0"),
    ]
    assert [e.key for e in entries] == [
        "127.0.0.1|29450|SSL|ipv4", "::|29451|TCP|ipv*", "127.0.0.1|0|TCP|ipv4"]


def test_encode_writes_net_server_value() -> None:
    assert encode(decode(NET_SERVER)[0]) == NET_SERVER


def test_unix_entry_round_trip() -> None:
    entry = BoundSocket(5, "*", "/run/app.sock", "UNIX", "*")
    assert encode([entry]) == "5|*|/run/app.sock|UNIX|*"
    assert decode("5|*|/run/app.sock|UNIX|*") == ([entry], [])


@pytest.mark.parametrize("piece", [
    "x|127.0.0.1|80|TCP|ipv4",  # fd not a number
    "2|127.0.0.1|80|TCP|ipv4",  # stdin/stdout/stderr are never sockets to adopt
    "7|127.0.0.1|80|TCP",  # a field missing
    "7|127.0.0.1|80|TCP|ipv4|0|extra",  # one too many
])
def test_decode_sets_malformed_entries_aside(piece: str) -> None:
    entries, bad = decode(f"9|127.0.0.1|81|TCP|ipv4;{piece};  ;")
    assert entries == [BoundSocket(9, "127.0.0.1", "81", "TCP", "ipv4")]
    assert bad == [piece]


def test_encode_refuses_a_field_it_could_not_read_back() -> None:
    with pytest.raises(ValueError, match="'|' or ';'"):
        encode([BoundSocket(5, "*", "/tmp/a|b.sock", "UNIX", "*")])


def test_fresh_port_zero_address_matches_entry_with_its_real_port() -> None:
    """Port 0 is matched by orig_port, so the new image keeps the port the kernel chose."""
    spec = parse_ports("127.0.0.1:0/ssl")[0]
    (address,) = resolve(spec)
    entry = restart.entry_for(7, address)  # the old image: real port from bind_all
    real = restart.entry_for(7, BindAddress(spec, address.family, ("127.0.0.1", 4321), None))
    assert str(real) == "7|127.0.0.1|4321|SSL|ipv4|0"
    assert restart.key_for(address) == entry.key == real.key == "127.0.0.1|0|SSL|ipv4"


def test_fixed_port_key_uses_the_port() -> None:
    spec = parse_ports("127.0.0.1:8443/tcp")[0]
    (address,) = resolve(spec)
    assert restart.key_for(address) == "127.0.0.1|8443|TCP|ipv4"


@needs_ipv6
def test_ipv6_and_dual_stack_keys() -> None:
    """Net::Server's observed ``3|::|29451|TCP|ipv*``: a dual-stack socket says ``ipv*``."""
    (v6,) = resolve(parse_ports("[::1]:0/ssl")[0])
    assert restart.key_for(v6) == "::1|0|SSL|ipv6"
    dual = [a for a in resolve(parse_ports("*:0/tcp")[0]) if a.v6only is False]
    assert [restart.key_for(a) for a in dual] in ([], ["::|0|TCP|ipv*"])


# -- adoption with real sockets -----------------------------------------------------------------


@pytest.fixture
def handed_over() -> Iterator[list[int]]:
    """fds made for a test; closed at teardown if the code under test did not take them."""
    fds: list[int] = []
    yield fds
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def listening_dup(fds: list[int], family: int = socket.AF_INET, address: object = None,
                  listen: bool = True) -> tuple[int, object]:
    """A bound socket dup'ed into an inheritable fd, as detach_listeners does; the original
    is closed, so the dup alone keeps the port."""
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind(address if address is not None else ("127.0.0.1", 0))
        if listen:
            sock.listen(8)
        fd = os.dup(sock.fileno())
        name = sock.getsockname()
    os.set_inheritable(fd, True)
    fds.append(fd)
    return fd, name


def fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_bind_ports_without_bound_sockets_binds_fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(restart.ENV, raising=False)
    calls: list[str] = []
    pairs = restart.bind_ports(parse_ports("127.0.0.1:0/tcp"), 8, lambda *a: None,
                               lambda: calls.append("hook"))
    try:
        assert calls == [] and len(pairs) == 1 and pairs[0][1].getsockname()[1] > 0
    finally:
        pairs[0][1].close()


def test_bind_ports_adopts_matching_and_binds_the_rest(
        monkeypatch: pytest.MonkeyPatch, handed_over: list[int], tmp_path: Path) -> None:
    kept_fd, (_, kept_port) = listening_dup(handed_over)
    gone_fd, (_, gone_port) = listening_dup(handed_over)  # a port no longer configured
    unix_path = str(tmp_path / "s.sock")
    unix_fd, _ = listening_dup(handed_over, socket.AF_UNIX, unix_path)
    monkeypatch.setenv(restart.MARKER, str(os.getpid()))  # as the re-exec sets it
    monkeypatch.setenv(restart.ENV, f"{kept_fd}|127.0.0.1|{kept_port}|SSL|ipv4|0; "
                                    f"{gone_fd}|127.0.0.1|{gone_port}|TCP|ipv4; "
                                    f"{unix_fd}|*|{unix_path}|UNIX|*")
    specs = parse_ports([f"{unix_path}|unix", "127.0.0.1:0/ssl", "127.0.0.1:0/tcp"])
    messages: list[str] = []
    hooks: list[str] = []
    pairs = restart.bind_ports(specs, 8, lambda level, msg: messages.append(msg),
                               lambda: hooks.append(os.environ.get(restart.ENV, "")))
    try:
        assert hooks and hooks[0]  # restart_open_hook ran before adoption
        assert restart.ENV not in os.environ and restart.MARKER not in os.environ
        assert [pair[0].spec for pair in pairs] == specs  # spec order kept
        (unix_addr, unix_sock), (ssl_addr, ssl_sock), (tcp_addr, tcp_sock) = pairs
        assert unix_sock.fileno() == unix_fd and unix_sock.getsockname() == unix_path
        assert ssl_sock.fileno() == kept_fd and ssl_addr.sockaddr == ("127.0.0.1", kept_port)
        assert not os.get_inheritable(kept_fd)  # FD_CLOEXEC back on
        assert tcp_sock.fileno() not in (kept_fd, gone_fd, unix_fd)  # bound fresh
        assert not fd_open(gone_fd) or gone_fd in (s.fileno() for _, s in pairs)
        assert any("Closing un-mapped port" in m and f"{gone_fd}|" in m for m in messages)
        assert any("Added new port configuration" in m for m in messages)
        with socket.create_connection(("127.0.0.1", kept_port), timeout=2):
            pass  # the adopted socket still listens
    finally:
        for _, sock in pairs:
            sock.close()
        handed_over.clear()  # adopted or closed by the code under test


def test_bind_ports_adopts_datagram_sockets(monkeypatch: pytest.MonkeyPatch,
                                            handed_over: list[int], tmp_path: Path) -> None:
    """A HUP hands udp and unixdgram sockets over too (bound, never listening); a stream
    fd offered for a datagram port is refused and the port bound fresh."""
    fds = []
    for family, address in ((socket.AF_INET, ("127.0.0.1", 0)),
                            (socket.AF_UNIX, str(tmp_path / "d.sock"))):
        with socket.socket(family, socket.SOCK_DGRAM) as sock:
            sock.bind(address)
            fds.append((os.dup(sock.fileno()), sock.getsockname()))
    handed_over.extend(fd for fd, _ in fds)
    (udp_fd, (_, udp_port)), (unix_fd, unix_path) = fds
    stream_fd, (_, stream_port) = listening_dup(handed_over)
    monkeypatch.setenv(restart.MARKER, str(os.getpid()))
    monkeypatch.setenv(restart.ENV, f"{udp_fd}|127.0.0.1|{udp_port}|UDP|ipv4|0; "
                                    f"{unix_fd}|*|{unix_path}|UNIXDGRAM|*; "
                                    f"{stream_fd}|127.0.0.1|{stream_port}|UDP|ipv4")
    specs = parse_ports(["127.0.0.1:0/udp", f"{unix_path}|unixdgram",
                         f"127.0.0.1:{stream_port}/udp"])
    messages: list[str] = []
    pairs = restart.bind_ports(specs, 8, lambda level, msg: messages.append(msg), lambda: None)
    try:
        (_, udp), (_, unix), (_, fresh) = pairs
        assert (udp.fileno(), udp.type) == (udp_fd, socket.SOCK_DGRAM)
        assert (unix.fileno(), unix.getsockname()) == (unix_fd, unix_path)
        assert fresh.type == socket.SOCK_DGRAM and fresh.fileno() != stream_fd
        assert any("not a datagram socket" in m for m in messages)
    finally:
        for _, sock in pairs:
            sock.close()
        handed_over.clear()


@pytest.mark.parametrize("marker", [None, "", "1", "pid+1"])
def test_bound_sockets_without_the_reexec_marker_is_ignored(
        monkeypatch: pytest.MonkeyPatch, handed_over: list[int], marker: str | None) -> None:
    """A first start (no marker, or another process's pid) never adopts what BOUND_SOCKETS
    names: a stray or planted variable must not give the server someone else's socket."""
    fd, (_, port) = listening_dup(handed_over)
    monkeypatch.setenv(restart.ENV, f"{fd}|127.0.0.1|{port}|TCP|ipv4|0")
    if marker is None:
        monkeypatch.delenv(restart.MARKER, raising=False)
    else:
        monkeypatch.setenv(restart.MARKER, str(os.getpid() + 1) if marker == "pid+1" else marker)
    assert not restart.reexecuted()
    messages: list[tuple[int, str]] = []
    hooks: list[str] = []
    pairs = restart.bind_ports(parse_ports("127.0.0.1:0/tcp"), 8,
                               lambda level, msg: messages.append((level, msg)),
                               lambda: hooks.append("hook"))
    try:
        ((_, sock),) = pairs
        assert sock.fileno() != fd and sock.getsockname()[1] != port  # bound fresh
        assert fd_open(fd)  # not ours: neither adopted nor closed
        assert hooks == []  # not a restart: restart_open_hook does not run
        assert any(level == 2 and f"{restart.ENV} is set, but not by a HUP re-exec" in msg
                   for level, msg in messages), messages
        assert restart.ENV not in os.environ and restart.MARKER not in os.environ
    finally:
        for _, sock in pairs:
            sock.close()


def test_adopt_fd_refuses_a_socket_that_does_not_listen(handed_over: list[int]) -> None:
    fd, (_, port) = listening_dup(handed_over, listen=False)
    (address,) = resolve(parse_ports("127.0.0.1:0/tcp")[0])
    with pytest.raises(OSError, match="not a listening stream socket"):
        restart.adopt_fd(BoundSocket(fd, "127.0.0.1", str(port), "TCP", "ipv4", "0"), address)
    assert not fd_open(fd)  # a socket that does not fit is closed
    handed_over.clear()


def test_adopt_fd_refuses_a_socket_bound_elsewhere(handed_over: list[int]) -> None:
    fd, (_, port) = listening_dup(handed_over)
    (address,) = resolve(parse_ports("127.0.0.1:0/tcp")[0])
    with pytest.raises(OSError, match="bound to"):
        restart.adopt_fd(BoundSocket(fd, "127.0.0.1", str(port + 1), "TCP", "ipv4", "0"),
                         address)
    handed_over.clear()


def test_unmapped_fd_that_is_not_a_socket_is_left_alone(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "file"
    path.write_text("x")
    fd = os.open(path, os.O_RDONLY)
    try:
        monkeypatch.setenv(restart.MARKER, str(os.getpid()))
        monkeypatch.setenv(restart.ENV, f"{fd}|127.0.0.1|1|TCP|ipv4")
        pairs = restart.bind_ports(parse_ports("127.0.0.1:0/tcp"), 8, lambda *a: None,
                                   lambda: None)
        for _, sock in pairs:
            sock.close()
        assert fd_open(fd)
    finally:
        os.close(fd)


def test_detach_listeners_hands_over_inheritable_dups(handed_over: list[int]) -> None:
    spec = parse_ports("127.0.0.1:0/ssl")[0]
    pairs = restart.bind_ports([spec], 8, lambda *a: None, lambda: None)
    (address, sock), = pairs
    listener = Listener(spec, address, sock, protocol=None)
    try:
        (entry,) = restart.detach_listeners([listener], lambda *a: None)
        handed_over.append(entry.fd)
        assert entry.fd != sock.fileno() and os.get_inheritable(entry.fd)
        assert str(entry) == f"{entry.fd}|127.0.0.1|{sock.getsockname()[1]}|SSL|ipv4|0"
    finally:
        sock.close()
    with socket.create_connection(address.sockaddr, timeout=2):  # type: ignore[arg-type]
        pass  # the dup alone keeps the socket listening


def test_exec_argv_is_the_interpreter_command() -> None:
    import sys

    assert restart.exec_argv() == [sys.executable, *sys.orig_argv[1:]]


# -- the signal queue ---------------------------------------------------------------------------


def test_signal_queue_only_queues() -> None:
    queue = signals.SignalQueue()
    queue.queue("HUP")
    queue.queue("TERM")
    assert queue.event.is_set()
    assert queue.pop_all() == ["HUP", "TERM"]
    assert not queue.event.is_set() and queue.pop_all() == []


def test_signal_queue_install_is_refused_off_the_main_thread() -> None:
    import threading

    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(signals.SignalQueue().install()))
    thread.start()
    thread.join(5)
    assert result == [False]


# -- what a re-exec leaves besides its sockets: children and the ready pipe ---------------------


def test_take_inherited_trusts_only_the_marker_of_this_pid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    read_fd, write_fd = os.pipe()
    try:
        monkeypatch.setenv(restart.CHILDREN, "12345,x,678")
        monkeypatch.setenv(restart.READY_FD, str(write_fd))
        monkeypatch.setenv(restart.MARKER, str(os.getpid() + 1))
        assert restart.take_inherited() == restart.Inherited()  # someone else's: ignored
        assert restart.CHILDREN not in os.environ and restart.READY_FD not in os.environ
        monkeypatch.setenv(restart.CHILDREN, "12345,x,678")
        monkeypatch.setenv(restart.READY_FD, str(write_fd))
        monkeypatch.setenv(restart.MARKER, str(os.getpid()))
        os.set_inheritable(write_fd, True)
        assert restart.take_inherited() == restart.Inherited((12345, 678), write_fd)
        assert not os.get_inheritable(write_fd)
        restart.announce_ready(write_fd)  # closes it: the reader sees EOF
        assert os.read(read_fd, 10) == b""
    finally:
        os.close(read_fd)


def test_children_are_reaped_with_their_status_and_strangers_dropped() -> None:
    said: list[tuple[int, str]] = []
    children = restart.Children(lambda level, message: said.append((level, message)))
    ok, failed = os.fork(), None
    if ok == 0:
        os._exit(0)
    failed = os.fork()
    if failed == 0:
        os._exit(3)
    children.add(ok)
    children.add(failed, "worker")
    children.add(1)  # not our child: dropped, never signalled
    children.finish(5)
    assert children.pids == []
    assert (2, f"HUP: drainer {ok} of a previous generation exited with status 0") in said
    assert (1, f"HUP: worker {failed} of a previous generation exited with status 3") in said
    assert not Path(f"/proc/{ok}").exists() and not Path(f"/proc/{failed}").exists()


def test_describe_names_the_signal() -> None:
    assert restart.describe(9) == "killed by SIGKILL (often the OOM killer or a watchdog)"
    assert restart.describe(2 << 8) == "exited with status 2"
