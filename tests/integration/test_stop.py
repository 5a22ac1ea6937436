"""stop() and server_close from every place a program calls them (issue 2, review findings).

* From a connection's own greenlet (Net::Server's echo ``exit``), on a server started with
  ``start()``: the close runs in another greenlet, completes (listeners, unix socket file, pid
  file), and the calling connection finishes like any other.
* Concurrently: one close runs, every other caller waits for it, and a later ``stop(timeout)``
  can only bring the end of the drain closer; also during a real QUIT drain (subprocess).
* Before the loop (``stop()`` in pre_loop_hook): ``start()`` and ``run()`` return cleanly
  instead of accepting on closed sockets.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import gevent
import pytest
from support.net import address, open_stream, poll, read_line, read_until_eof, wait_until
from support.process import REPO, ServerProcess, python_env
from support.runthread import RunThread

from gnetserver import GServer
from gnetserver.client import Client
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(20)


class Counting(GServer):
    """Counts closes (pre_server_close_hook, "Server closing!") and keeps every log message."""

    def configure_hook(self) -> None:
        self.closes = 0
        self.messages: list[str] = []

    def pre_server_close_hook(self) -> None:
        self.closes += 1

    def log(self, level: int, message: str) -> None:
        self.messages.append(message)
        super().log(level, message)

    def said(self, text: str) -> int:
        """How many log messages so far start with ``text``."""
        return sum(1 for m in list(self.messages) if m.startswith(text))


class Exit(Counting):
    """Says hello; ``exit`` answers bye, stops the server from this connection's greenlet,
    then still writes ``after stop`` (the caller is drained, not killed); ``hold`` waits for
    the peer's next line or its end."""

    def process_request(self, client: Client) -> None:
        client.sendall(b"hello\n")
        command = client.readline().strip()
        if command == b"exit":
            client.sendall(b"bye\n")
            self.stop()
            client.sendall(b"after stop\n")
        elif command == b"hold":
            client.readline()


def refused(where: tuple[str, int] | str) -> bool:
    """True when nothing listens at ``where`` any more (TCP address or unix socket path)."""
    try:
        open_stream(where, 2).close()
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    return False


def tcp_and_unix(folder: str, **options: Any) -> dict[str, Any]:
    return {"port": ["127.0.0.1:0/tcp", f"{folder}/s.sock|unix"], "log_level": 0, **options}


# -- from a connection's greenlet ------------------------------------------------------------


def test_stop_from_a_connection_closes_a_started_server(short_tmp_path: str) -> None:
    pid_file = Path(short_tmp_path, "server.pid")
    server = Exit(**tcp_and_unix(short_tmp_path, pid_file=str(pid_file), graceful_timeout=2))
    thread = ServerThread(server, stop_timeout=2).start()
    try:
        where, path = address(server), f"{short_tmp_path}/s.sock"
        assert pid_file.exists() and os.path.exists(path)
        with socket.create_connection(where, timeout=5) as sock:
            assert read_line(sock) == b"hello\n"
            sock.sendall(b"exit\n")
            # The caller's stop() returned and its connection ended normally, not killed.
            assert read_until_eof(sock) == b"bye\nafter stop\n"
        assert poll(lambda: server.lifecycle.closed, 3), "the close never completed"
        assert not os.path.exists(path), "the unix socket file was left behind"
        assert not pid_file.exists(), "the pid file was left behind"
        assert refused(where) and refused(path)
        assert thread.ended(3), "the ServerThread did not end with its server"
    finally:
        thread.stop()
    assert server.closes == 1 and server.said("Server closing!") == 1


# -- concurrent closes -----------------------------------------------------------------------


class Stoppers:
    """``stop(timeout)`` calls run as greenlets of the server's hub; each records whether the
    server was closed when its call returned, and when that was."""

    def __init__(self, thread: ServerThread) -> None:
        self.thread, self.returned = thread, []  # (timeout, closed, monotonic time)

    def spawn(self, timeout: float | None) -> None:
        def stopper() -> None:
            self.thread.server.stop(timeout)
            self.returned.append((timeout, self.thread.server.lifecycle.closed, time.monotonic()))

        def start() -> None:  # in the hub: must not block
            gevent.spawn(stopper)

        self.thread.call(start)


def test_concurrent_stops_close_once_and_a_later_timeout_shortens_the_drain(
        short_tmp_path: str) -> None:
    thread = ServerThread(Exit(**tcp_and_unix(short_tmp_path, log_level=2))).start()
    server, stoppers = thread.server, Stoppers(thread)
    try:
        held = socket.create_connection(address(server), timeout=15)
        with held:
            assert read_line(held) == b"hello\n"
            held.sendall(b"hold\n")  # its handler now waits for a line that never comes
            stoppers.spawn(10)
            wait_until(lambda: server.said("Waiting up to 10s"), 5, "the drain to start")
            stoppers.spawn(None)  # waits for the running close, changes nothing
            cut_asked = time.monotonic()
            stoppers.spawn(0.3)  # brings the end of the drain closer
            assert read_until_eof(held) == b""  # cut by the shortened drain
            assert time.monotonic() - cut_asked < 3.0, "the drain (10 s) was not shortened"
        wait_until(lambda: len(stoppers.returned) == 3, 5, "every stop() to return")
        assert all(closed for _, closed, _ in stoppers.returned), stoppers.returned
        assert thread.ended(3), "the ServerThread did not end with its server"
    finally:
        thread.stop()
    assert server.closes == 1 and server.said("Server closing!") == 1
    assert server.said("Waiting up to") == 1  # drained once


QUIT_SERVER = '''
"""A server whose ``stop <seconds>`` command calls stop() from its connection's greenlet."""
from gnetserver import GServer


class StopServer(GServer):
    def pre_server_close_hook(self):
        self.log(2, "pre_server_close_hook")

    def process_request(self, client):
        client.sendall(b"hello\\n")
        words = client.readline().split()
        if words and words[0] == b"stop":
            self.stop(float(words[1]))
            client.sendall(b"stop returned\\n")
'''


def test_stop_from_a_connection_during_a_quit_drain(tmp_path: Path, spawn: Any) -> None:
    (tmp_path / "stopserver.py").write_text(QUIT_SERVER)
    server = spawn([sys.executable, "-m", "gnetserver", "--server", "stopserver:StopServer",
                    "--port", "127.0.0.1:0/tcp", "--graceful_timeout", "20"],
                   env=python_env(tmp_path, REPO), cwd=tmp_path)
    assert isinstance(server, ServerProcess)
    host, port, _ = server.ports()[0]
    held, control = (socket.create_connection((host, port), timeout=15) for _ in range(2))
    with held, control:
        assert read_line(held) == b"hello\n" and read_line(control) == b"hello\n"
        server.send(signal.SIGQUIT)
        server.wait_for(r"Waiting up to 20s for 2 connection")
        asked = time.monotonic()
        control.sendall(b"stop 0.3\n")  # stop() from a connection greenlet, during the drain
        assert read_until_eof(control) == b"stop returned\n"
        assert read_until_eof(held) == b""  # cut when the shortened drain ends
        assert server.wait_exit(10) == 0
        assert time.monotonic() - asked < 5.0, "the drain (20 s) was not shortened"
    assert server.count("pre_server_close_hook") == 1
    assert server.count("Server closing!") == 1


# -- before the loop -------------------------------------------------------------------------


class EarlyStop(Counting):
    """Stops in pre_loop_hook, before anything is accepted."""

    def pre_loop_hook(self) -> None:
        self.stop()


def test_stop_in_pre_loop_hook_with_start(short_tmp_path: str) -> None:
    thread = ServerThread(EarlyStop(**tcp_and_unix(short_tmp_path))).start()
    try:
        assert thread.ended(3), "the ServerThread did not end with its server"
        server = thread.server
        assert server.lifecycle.closed and server.personality is None  # never accepted
        assert refused(address(server)) and not os.path.exists(f"{short_tmp_path}/s.sock")
    finally:
        thread.stop()
    assert server.closes == 1


def test_stop_in_pre_loop_hook_with_run(short_tmp_path: str) -> None:
    server = EarlyStop(**tcp_and_unix(short_tmp_path))
    runner = RunThread(server).start()
    try:
        assert runner.returned(5), "run() did not return"
    finally:
        runner.stop()  # re-raises what run() raised (EBADF from accepting on closed sockets)
    assert server.closes == 1 and server.personality is None
    assert refused(address(server)) and not os.path.exists(f"{short_tmp_path}/s.sock")


def test_stop_from_the_thread_that_closes_does_not_wait_for_itself(
        short_tmp_path: str) -> None:
    """A stop() inside pre_server_close_hook (the closing greenlet) must not deadlock."""

    class StopInClose(Counting):
        def pre_server_close_hook(self) -> None:
            super().pre_server_close_hook()
            self.stop(0)

    server = StopInClose(**tcp_and_unix(short_tmp_path))
    done = threading.Event()
    thread = ServerThread(server).start()
    stopper = threading.Thread(target=lambda: (thread.stop(), done.set()), daemon=True)
    stopper.start()
    assert done.wait(5), "stop() waited for itself"
    assert server.closes == 1 and server.lifecycle.closed


# -- the listen queue at the last close ------------------------------------------------------


class Queuer(GServer):
    """``queue`` (the first connection): connects three more clients to its own port and
    sends a line on each, then stops accepting, with nothing that yields in between: those
    three are in the kernel's listen queue, not accepted, when the listener closes. Any
    other connection gets its line echoed."""

    take_queued = True

    def configure_hook(self) -> None:
        self.queued: list[socket.socket] = []

    def process_request(self, client: Client) -> None:
        line = client.readline()
        if line != b"queue\n":
            client.sendall(b"echo " + line)
            return
        for number in range(3):  # stdlib sockets, blocking: a loopback connect is immediate
            sock = socket.create_connection(address(self), timeout=5)
            sock.sendall(f"queued {number}\n".encode())
            self.queued.append(sock)
        self.stop_accepting(take_queued=self.take_queued)
        client.sendall(b"stopped\n")


@pytest.mark.parametrize("take_queued", [True, False])
def test_the_last_close_serves_the_connections_already_queued(take_queued: bool) -> None:
    """With take_queued (what server_close does: a QUIT, stop()), the queued connections are
    accepted and served before the listener closes; without it they are reset (why a
    balancer in front would lose them: it cannot retry an established connection)."""
    server = Queuer(port="127.0.0.1:0/tcp", log_level=0, graceful_timeout=2)
    server.take_queued = take_queued
    thread = ServerThread(server, stop_timeout=2).start()
    try:
        where = address(server)
        with socket.create_connection(where, timeout=5) as sock:
            sock.sendall(b"queue\n")
            assert read_until_eof(sock) == b"stopped\n"
        assert refused(where)  # the listener closed
        answers = []
        for sock in server.queued:
            try:
                answers.append(read_until_eof(sock))
            except ConnectionResetError:
                answers.append(b"reset")
            finally:
                sock.close()
        if take_queued:
            assert answers == [f"echo queued {n}\n".encode() for n in range(3)]
        else:
            assert answers == [b"reset"] * 3
    finally:
        thread.stop()
