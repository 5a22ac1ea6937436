"""gnetserver.tls.waiting.Waits: one deadline per connection, one timer re-armed when it fires."""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator

import gevent
import pytest
from gevent import socket as gsocket

from gnetserver.tls.waiting import Waits


class Expired(Exception):
    pass


@pytest.fixture
def pair() -> Iterator[tuple[gsocket.socket, gsocket.socket]]:
    a, b = gsocket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_a_wait_past_its_deadline_raises_what_it_was_given(pair: tuple) -> None:
    waits = Waits(pair[0].fileno())
    try:
        with pytest.raises(Expired):
            waits.wait_read(time.monotonic() + 0.2, Expired)
        assert not waits.waiting()
        with pytest.raises(Expired):  # a deadline already passed: at once, no wait
            waits.wait_read(time.monotonic() - 1, Expired)
    finally:
        waits.close()


def test_ready_fd_ends_the_wait_and_a_later_deadline_is_not_cut_early(pair: tuple) -> None:
    a, b = pair
    waits = Waits(a.fileno())
    try:
        gevent.spawn_later(0.1, b.send, b"x")
        waits.wait_read(time.monotonic() + 0.3, Expired)  # the timer fires at +0.3 s
        assert a.recv(1) == b"x"
        # A later operation pushes the deadline back: the timer, when it fires for the first
        # deadline, must re-arm for this one instead of cutting the wait.
        gevent.spawn_later(0.5, b.send, b"y")
        waits.wait_read(time.monotonic() + 5, Expired)
        assert a.recv(1) == b"y"
    finally:
        waits.close()


def test_close_wakes_a_parked_greenlet_with_ebadf(pair: tuple) -> None:
    waits = Waits(pair[0].fileno())
    waiter = gevent.spawn(waits.wait_read, None, Expired)
    gevent.sleep(0.05)
    assert waits.waiting()
    waits.close()
    waiter.join(5)
    assert isinstance(waiter.exception, OSError) and waiter.exception.errno == errno.EBADF


def test_a_wait_without_deadline_is_not_cut_by_an_old_timer(pair: tuple) -> None:
    a, b = pair
    waits = Waits(a.fileno())
    try:
        gevent.spawn_later(0.05, b.send, b"x")
        waits.wait_read(time.monotonic() + 0.2, Expired)  # arms the timer for +0.2 s
        a.recv(1)
        gevent.spawn_later(0.4, b.send, b"y")
        waits.wait_read(None, Expired)  # no deadline: the timer firing at +0.2 s lets it be
        assert a.recv(1) == b"y"
    finally:
        waits.close()
