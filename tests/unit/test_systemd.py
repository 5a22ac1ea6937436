"""gnetserver.systemd: reading LISTEN_FDS, and matching passed sockets to ports (real sockets
in this process; the fds are the test's own, not 3.., which the matching does not care about).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from gnetserver.errors import ConfigError
from gnetserver.ports import parse_ports
from gnetserver.systemd import (
    PassedSocket,
    adopt_passed,
    check_port_name,
    decode_names,
    encode_names,
    listen_fds,
)

pytestmark = pytest.mark.timeout(10)


def nolog(level: int, message: str) -> None:
    """A log sink that drops everything."""


@pytest.fixture
def listening() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock
    sock.close()


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def test_variables_of_another_pid_are_removed_and_ignored() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": "1", "LISTEN_FDNAMES": "a:b", "OTHER": "x"}
    assert listen_fds(env, pid=2) == []
    assert env == {"OTHER": "x"}
    assert listen_fds({"LISTEN_FDS": "1"}, pid=2) == []  # no LISTEN_PID: not for us


@pytest.mark.parametrize(("env", "message"), [
    ({"LISTEN_FDS": "x"}, "LISTEN_FDS='x' is not a number"),
    ({"LISTEN_FDS": "2", "LISTEN_FDNAMES": "web"}, "names 1 socket(s), LISTEN_FDS=2"),
])
def test_malformed_variables_for_this_pid(env: dict[str, str], message: str) -> None:
    env = dict(env, LISTEN_PID="7")
    with pytest.raises(ConfigError, match="socket activation") as info:
        listen_fds(env, pid=7)
    assert message in str(info.value)
    assert env == {}


def test_zero_sockets_is_no_activation() -> None:
    assert listen_fds({"LISTEN_FDS": "0", "LISTEN_PID": "7"}, pid=7) == []


@pytest.mark.parametrize("name", ["", "a:b", "two words", 5, "x" * 256])
def test_bad_port_names(name: object) -> None:
    with pytest.raises(ConfigError, match="bad name"):
        check_port_name(parse_ports({"port": 80, "name": name})[0])


def test_names_round_trip() -> None:
    assert decode_names(encode_names([(5, "web"), (9, "a=b")])) == {5: "web", 9: "a=b"}
    assert decode_names("junk:x=1:7=") == {7: ""}  # passed, matched by address


def test_matched_by_address(listening: socket.socket) -> None:
    port = listening.getsockname()[1]
    spec = parse_ports(f"127.0.0.1:{port}/tcp")[0]
    fd = listening.detach()
    [(address, sock)] = adopt_passed([spec], [PassedSocket(fd, "gnet.socket")], nolog)
    with sock:
        assert sock.fileno() == fd and address.spec is spec
        assert address.sockaddr == ("127.0.0.1", port) and address.fdname is None
        assert not os.get_inheritable(fd)


def test_matched_by_name_wherever_bound(listening: socket.socket) -> None:
    spec = parse_ports({"port": 9, "host": "127.0.0.1", "name": "web"})[0]
    fd = listening.detach()
    [(address, sock)] = adopt_passed([spec], [PassedSocket(fd, "web")], nolog)
    with sock:
        assert address.sockaddr == sock.getsockname() and address.fdname == "web"


def test_mismatch_closes_every_passed_socket(listening: socket.socket) -> None:
    other = socket.socket()
    other.bind(("127.0.0.1", 0))
    other.listen()
    specs = parse_ports([f"127.0.0.1:{other.getsockname()[1]}/tcp", "127.0.0.1:1/tcp"])
    fds = [listening.detach(), other.detach()]
    with pytest.raises(ConfigError) as info:
        adopt_passed(specs, [PassedSocket(fd) for fd in fds], nolog)
    assert "port 127.0.0.1:1/tcp (127.0.0.1:1) is served by none of them" in str(info.value)
    assert f"fd {fds[0]} (127.0.0.1:" in str(info.value)
    assert not any(is_open(fd) for fd in fds)


def test_port_zero_never_matches_by_address(listening: socket.socket) -> None:
    fd = listening.detach()
    with pytest.raises(ConfigError, match="is served by none"):
        adopt_passed(parse_ports("127.0.0.1:0/tcp"), [PassedSocket(fd)], nolog)
    assert not is_open(fd)


def test_a_socket_that_does_not_listen_is_refused() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    spec = parse_ports(f"127.0.0.1:{sock.getsockname()[1]}/tcp")[0]
    fd = sock.detach()
    with pytest.raises(ConfigError, match="not a listening stream socket"):
        adopt_passed([spec], [PassedSocket(fd)], nolog)
    assert not is_open(fd)
