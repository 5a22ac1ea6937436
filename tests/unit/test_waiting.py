"""gnetserver.tls.waiting.Waits: one deadline per connection, one timer re-armed when it fires."""

from __future__ import annotations

import errno
import time
from collections.abc import Iterator

import gevent
import greenlet
import pytest
from gevent import socket as gsocket
from gevent.exceptions import ConcurrentObjectUseError

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


def test_a_deadline_passed_as_the_fd_became_ready_does_not_cut_the_next_wait(
        pair: tuple) -> None:
    """The timer and the fd fire in one loop iteration (the hub was busy past the deadline):
    whichever wins, the timer's verdict is about that wait only. It used to be delivered by a
    callback run later, into the greenlet's next wait, which had a deadline far ahead."""
    a, b = pair
    waits = Waits(a.fileno())
    got: list[bytes] = []

    def reader() -> bytes:
        try:
            waits.wait_read(time.monotonic() + 0.2, Expired)
            got.append(a.recv(1))
        except Expired:
            got.append(b"expired")
        waits.wait_read(time.monotonic() + 5, Expired)  # a new operation, far from its end
        return a.recv(1)

    try:
        waiter = gevent.spawn(reader)
        gevent.sleep(0.05)
        b.send(b"x")
        time.sleep(0.3)  # blocks the hub past the deadline: the timer and the fd are both due
        gevent.spawn_later(0.3, b.send, b"y")
        waiter.join(5)
        assert waiter.exception is None, repr(waiter.exception)
        assert got and waiter.value in (b"x", b"y")
    finally:
        waits.close()


class ReadExpired(Exception):
    pass


class WriteExpired(Exception):
    pass


def fill(sock: gsocket.socket) -> None:
    """Write into ``sock`` until its buffers are full (its peer reads nothing)."""
    sock.setblocking(False)
    try:
        while True:
            sock.send(b"x" * 65536)
    except BlockingIOError:
        pass


@pytest.mark.parametrize("read_after", [None, 0.8])
def test_a_reader_and_a_writer_each_keep_their_own_deadline(
        pair: tuple, read_after: float | None) -> None:
    """A reader and a writer greenlet on one connection (gevent's sockets allow one of each):
    each wait ends by its own deadline, not by the other's; a reader without one waits on."""
    a, _ = pair
    fill(a)
    waits = Waits(a.fileno())
    start = time.monotonic()
    reader = gevent.spawn(waits.wait_read,
                          None if read_after is None else start + read_after, ReadExpired)
    gevent.sleep(0.05)
    writer = gevent.spawn(waits.wait_write, start + 0.3, WriteExpired)
    try:
        writer.join(5)
        assert isinstance(writer.exception, WriteExpired), repr(writer.exception)
        assert not reader.dead  # the writer's deadline did not end the read
        if read_after is not None:
            reader.join(5)
            assert isinstance(reader.exception, ReadExpired), repr(reader.exception)
            assert time.monotonic() - start >= read_after - 0.01
    finally:
        waits.close()
        reader.join(5)
        assert reader.dead


def test_an_error_out_of_a_bare_greenlet_does_not_stop_the_other_wait(pair: tuple) -> None:
    """A bare greenlet (not a gevent Greenlet) lets the exception thrown into it out into the
    timer's callback; the other direction's wait, due at the same time, still ends."""
    a, _ = pair
    fill(a)
    waits = Waits(a.fileno())
    until = time.monotonic() + 0.2
    hub = gevent.get_hub()
    bare = greenlet.greenlet(lambda: waits.wait_read(until, ReadExpired), parent=hub)
    hub.loop.run_callback(bare.switch)
    writer = gevent.spawn(waits.wait_write, until, WriteExpired)
    handle_error, hub.handle_error = hub.handle_error, lambda *args: None  # the bare one's
    try:
        writer.join(5)
        assert isinstance(writer.exception, WriteExpired), repr(writer.exception)
        assert bare.dead
    finally:
        hub.handle_error = handle_error
        waits.close()


def test_a_second_reader_is_refused_and_leaves_the_first_ones_deadline(pair: tuple) -> None:
    waits = Waits(pair[0].fileno())
    first = gevent.spawn(waits.wait_read, time.monotonic() + 0.3, ReadExpired)
    gevent.sleep(0.05)
    try:
        with pytest.raises(ConcurrentObjectUseError):
            waits.wait_read(None, Expired)  # would have made the first one wait forever
        first.join(5)
        assert isinstance(first.exception, ReadExpired), repr(first.exception)
    finally:
        waits.close()
