"""Line reads are bounded by default (issue 16, point 5): ``Client.readline()`` without a
limit, iteration over the client and readline/iteration on every kind of ``makefile`` file
raise LineTooLong past ``max_line_length``; an explicit limit keeps the stdlib meaning.

Real sockets (a socketpair): the peer writes everything and shuts down before the reads, so no
read waits (the data stays far below the socket buffer).
"""

from __future__ import annotations

import socket
import types
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from gnetserver.client import MAX_LINE_LENGTH, Client
from gnetserver.errors import GNetServerError, LineTooLong
from gnetserver.options import OPTIONS, table

LIMIT = 16


@pytest.fixture
def feed() -> Iterator[Callable[[bytes], Client]]:
    """A Client bounded by LIMIT reading from a real socket the peer filled and shut."""
    socks: list[socket.socket] = []

    def make(data: bytes) -> Client:
        ours, peer = socket.socketpair()
        socks.extend((ours, peer))
        ours.settimeout(5)
        peer.sendall(data)
        peer.shutdown(socket.SHUT_WR)
        listener = types.SimpleNamespace(spec=types.SimpleNamespace(proto="tcp", port=0))
        return Client(ours, ("127.0.0.1", 1), listener, None, max_line_length=LIMIT)

    yield make
    for sock in socks:
        sock.close()


def test_defaults_agree_and_the_error_is_documented() -> None:
    option = table(OPTIONS)["max_line_length"]
    assert option.default == MAX_LINE_LENGTH == 64 * 1024
    assert "LineTooLong" in option.doc
    assert not issubclass(LineTooLong, ValueError) and issubclass(LineTooLong, GNetServerError)
    assert LineTooLong(LIMIT).limit == LIMIT and str(LIMIT) in str(LineTooLong(LIMIT))


def test_a_line_of_the_bound_passes_one_byte_more_raises(feed: Callable[[bytes], Client]
                                                         ) -> None:
    exact = b"a" * (LIMIT - 1) + b"\n"
    client = feed(exact + b"b" * LIMIT + b"\nrest")
    assert client.readline() == exact
    with pytest.raises(LineTooLong) as raised:
        client.readline()
    assert raised.value.limit == LIMIT


def test_an_endless_line_raises_after_the_bound(feed: Callable[[bytes], Client]) -> None:
    client = feed(b"x" * 10_000)
    with pytest.raises(LineTooLong):
        client.readline()
    with pytest.raises(LineTooLong):
        client.readline(None)
    with pytest.raises(LineTooLong):
        list(client)


def test_an_explicit_limit_keeps_the_stdlib_meaning(feed: Callable[[bytes], Client]) -> None:
    client = feed(b"x" * 40 + b"\nlast")
    assert client.readline(30) == b"x" * 30  # pieces, no error: the caller chose the size
    assert client.readline(30) == b"x" * 10 + b"\n"
    assert client.readline(0) == b""
    assert client.readline() == b"last"  # end of stream: the last line without its end
    assert client.readline() == b""


def test_iteration_is_bounded(feed: Callable[[bytes], Client]) -> None:
    client = feed(b"one\ntwo\n" + b"z" * (LIMIT + 1))
    lines = iter(client)
    assert [next(lines), next(lines)] == [b"one\n", b"two\n"]
    with pytest.raises(LineTooLong):
        next(lines)


@pytest.mark.parametrize(("mode", "buffering"), [("rb", -1), ("rwb", -1), ("rb", 0), ("r", -1)])
def test_makefile_lines_are_bounded(feed: Callable[[bytes], Client], mode: str,
                                    buffering: int) -> None:
    client = feed(b"ok\n" + b"y" * 1000 + b"\n")
    with client.makefile(mode, buffering) as file:
        first: Any = file.readline()
        assert first in (b"ok\n", "ok\n")
        with pytest.raises(LineTooLong):
            file.readline()


@pytest.mark.parametrize("mode", ["rb", "r"])
def test_makefile_iteration_and_explicit_size(feed: Callable[[bytes], Client], mode: str) -> None:
    client = feed(b"ok\n" + b"y" * 40 + b"\n")
    with client.makefile(mode) as file:
        lines = iter(file)
        assert next(lines) in (b"ok\n", "ok\n")
        assert len(file.readline(30)) == 30  # an explicit size: the stdlib's, no error
        assert len(file.readline(30)) == 11
    client = feed(b"w" * 40)
    with client.makefile(mode) as file, pytest.raises(LineTooLong):
        for _ in file:
            pass


@pytest.mark.parametrize(("mode", "buffering"), [("rb", -1), ("rwb", -1), ("rb", 0), ("r", -1)])
def test_the_rest_of_a_long_line_never_passes_for_a_line(feed: Callable[[bytes], Client],
                                                          mode: str, buffering: int) -> None:
    """A peer cannot choose the next "line" by overflowing the bound: after LineTooLong every
    unbounded read of that file raises again (an explicit size still reads what is there)."""
    client = feed(b"A" * 20 + b"DELE all\n")
    with client.makefile(mode, buffering) as file:
        for _ in range(2):
            with pytest.raises(LineTooLong):
                file.readline()
        with pytest.raises(LineTooLong):
            next(iter(file))
