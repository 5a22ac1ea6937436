"""Porting aids (issue 12): the client on STDIN/STDOUT, periodic work, Net::Server's remaining
hooks, log formats, the echo's quit and Timed Out, and blocking calls in the thread pool.
Real servers in threads (their own hubs), real TCP clients."""

from __future__ import annotations

import io
import socket
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gevent
import pytest
from support.net import address, read_line, read_until_eof, wait_until
from support.runthread import RunThread

from gnetserver import GServer, stdio
from gnetserver.client import Client
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(30)


def connect(server: GServer) -> socket.socket:
    return socket.create_connection(address(server), timeout=10)


# -- tie_client_stdout ---------------------------------------------------------------------------


class Tied(GServer):
    """Talks to its clients through print()/input()/sys.stdin/sys.stdout only."""

    def process_request(self, client: Client) -> None:
        name = input("who? ")  # the prompt goes to the client too
        gevent.sleep(0.01)  # let the other connections run in between
        print(f"hello {name}")
        sys.stdout.write(f"again {name}\n")
        sys.stdout.flush()
        line = sys.stdin.readline()
        gevent.sleep(0.01)
        print("bye", line.strip(), name, flush=True)


def talk(server: GServer, token: str) -> bytes:
    with connect(server) as sock:
        sock.sendall(f"{token}\n".encode())
        sock.sendall(f"more-{token}\n".encode())
        return read_until_eof(sock)


def test_tie_client_stdout_keeps_100_concurrent_clients_apart(
        serve: Callable[..., GServer], capsys: pytest.CaptureFixture[str]) -> None:
    server = serve(Tied, port="127.0.0.1:0", tie_client_stdout=1, max_servers=200,
                   log_level=1)
    assert stdio.installed()
    print("from the test's own thread")  # not bound: the real (captured) stdout
    with ThreadPoolExecutor(100) as pool:
        tokens = [f"c{index}" for index in range(100)]
        answers = list(pool.map(lambda token: talk(server, token), tokens))
    for token, answer in zip(tokens, answers, strict=True):
        assert answer == (f"who? hello {token}\nagain {token}\n"
                          f"bye more-{token} {token}\n").encode(), token
    out = capsys.readouterr().out
    assert out == "from the test's own thread\n"  # nothing of a client's leaked here


def test_tie_client_stdout_is_removed_at_close_and_off_by_default() -> None:
    before = sys.stdout, sys.stdin
    with ServerThread(GServer(port="127.0.0.1:0")):
        assert (sys.stdout, sys.stdin) == before and not stdio.installed()
    with ServerThread(GServer(port="127.0.0.1:0", tie_client_stdout=1)):
        with ServerThread(GServer(port="127.0.0.1:0", tie_client_stdout=1)):
            assert sys.stdout is not before[0] and sys.stdin is not before[1]
        assert stdio.installed()  # the first server still holds them
    assert (sys.stdout, sys.stdin) == before and not stdio.installed()


def test_tied_callbacks_replace_the_client_io(serve: Callable[..., GServer]) -> None:
    seen: list[tuple[str, Any]] = []

    def out(client: Client, method: str, *args: Any) -> Any:
        seen.append((method, args))
        if method == "write":
            client.sendall(args[0].upper().encode())
            return len(args[0])
        return None

    def into(client: Client, method: str, *args: Any) -> str:
        seen.append((method, args))
        return "canned\n"

    class Echo(GServer):
        def process_request(self, client: Client) -> None:
            print(sys.stdin.readline().strip())

    server = serve(Echo, port="127.0.0.1:0", tie_client_stdout=1,
                   tied_stdout_callback=out, tied_stdin_callback=into)
    with connect(server) as sock:
        assert read_until_eof(sock) == b"CANNED\n"
    assert ("readline", (-1,)) in seen and ("write", ("canned",)) in seen


def test_server_log_on_stdout_stays_real_in_a_tied_connection() -> None:
    """A log_function writing to sys.stdout, called from a connection's greenlet, writes to
    the real stream, not to the client."""
    real = io.StringIO()

    class Logs(GServer):
        def process_request(self, client: Client) -> None:
            self.log(2, "to the log")
            print("to the client")

    def log_to_stdout(level: int, message: str) -> None:
        sys.stdout.write(message + "\n")

    saved = sys.stdout
    sys.stdout = real
    try:
        server = Logs(port="127.0.0.1:0", tie_client_stdout=1, log_function=log_to_stdout)
        with ServerThread(server):
            with connect(server) as sock:
                assert read_until_eof(sock) == b"to the client\n"
    finally:
        sys.stdout = saved
    assert "to the log" in real.getvalue() and "to the client" not in real.getvalue()


# -- check_for_dequeue / run_dequeue ---------------------------------------------------------------


class Dequeue(GServer):
    def configure_hook(self) -> None:
        self.runs = 0
        self.inside = 0
        self.most_inside = 0

    def run_dequeue(self) -> None:
        self.runs += 1
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        try:
            if self.runs == 2:
                raise RuntimeError("dequeue broke")
            if self.runs == 3:
                gevent.sleep(0.5)  # longer than the interval: the next run must wait
        finally:
            self.inside -= 1


def test_run_dequeue_runs_periodically_one_at_a_time_and_survives_errors(
        serve: Callable[..., GServer]) -> None:
    lines: list[str] = []
    server = serve(Dequeue, port="127.0.0.1:0", check_for_dequeue=0.1,
                   log_function=lambda level, message: lines.append(message))
    assert isinstance(server, Dequeue)
    wait_until(lambda: server.runs >= 6, 15, "six dequeue runs")
    assert server.most_inside == 1
    assert any("run_dequeue failed (the schedule is kept)" in line and "dequeue broke" in line
               for line in lines)
    timer = server.dequeue_timer
    assert timer is not None and timer.running


def test_dequeue_default_calls_dequeue(serve: Callable[..., GServer]) -> None:
    class Old(GServer):
        calls = 0

        def dequeue(self) -> None:
            type(self).calls += 1

    serve(Old, port="127.0.0.1:0", check_for_dequeue=0.05)
    wait_until(lambda: Old.calls >= 2, 10, "dequeue() called")


# -- hooks: fatal, server_exit, handle_log_error, post_child_cleanup_hook -----------------------


class Fatal(GServer):
    def configure_hook(self) -> None:
        self.record: list[Any] = []

    def process_request(self, client: Client) -> None:
        client.sendall(b"going down\n")
        self.fatal("the disk is gone")
        client.sendall(b"never\n")  # fatal() does not return

    def fatal_hook(self, message: str, module: str, file: str, line: int) -> None:
        self.record.append(("fatal_hook", message, module, file.endswith("test_porting.py")))

    def post_child_cleanup_hook(self) -> None:
        self.record.append(("post_child_cleanup_hook",))

    def pre_server_close_hook(self) -> None:
        self.record.append(("pre_server_close_hook",))

    def server_exit(self, status: int) -> None:
        self.record.append(("server_exit", status))


def test_fatal_logs_at_level_0_stops_the_server_and_exits_1() -> None:
    lines: list[tuple[int, str]] = []
    server = Fatal(port="127.0.0.1:0", log_level=1,
                   log_function=lambda level, message: lines.append((level, message)))
    runner = RunThread(server).start()
    try:
        wait_until(lambda: server.listeners and server.lifecycle.in_loop, 10, "serving")
        with connect(server) as sock:
            assert read_until_eof(sock) == b"going down\n"
        assert runner.returned(10)
    finally:
        runner.stop()
    assert server.record == [
        ("fatal_hook", "the disk is gone", __name__, True),
        ("pre_server_close_hook",), ("post_child_cleanup_hook",), ("server_exit", 1)]
    [(level, text)] = [(lv, m) for lv, m in lines if "the disk is gone" in m]
    assert level == 0 and "at line" in text and "test_porting.py" in text


def test_server_exit_default_raises_systemexit_with_the_status() -> None:
    with pytest.raises(SystemExit) as info:
        GServer().server_exit(3)
    assert info.value.code == 3
    GServer().server_exit(0)  # returns: run() returns to the program


def test_handle_log_error_gets_the_error_and_the_record_then_the_sink_writes(
        serve: Callable[..., GServer]) -> None:
    class Broken(GServer):
        def configure_hook(self) -> None:
            self.errors: list[Any] = []
            self.sunk: list[str] = []

        def handle_log_error(self, error: BaseException, record: tuple[int, str]) -> None:
            self.errors.append((str(error), record))

        def write_to_log_hook(self, level: int, message: str) -> None:
            self.sunk.append(message)

    def broken(level: int, message: str) -> None:
        raise OSError("log host down")

    server = serve(Broken, port="127.0.0.1:0", log_function=broken)
    assert isinstance(server, Broken)
    server.log(1, "hello %s", "there")
    assert ("log host down", (1, "hello there")) in server.errors
    assert "hello there" in server.sunk


# -- log(level, format, *args) ------------------------------------------------------------------


def test_log_formats_like_sprintf_and_clamps_levels(serve: Callable[..., GServer]) -> None:
    lines: list[tuple[int, str]] = []
    server = serve(GServer, port="127.0.0.1:0", log_level=4,
                   log_function=lambda level, message: lines.append((level, message)))
    lines.clear()
    server.log(2, "user %s has %d items", "bob", 3)
    server.log(2, "100% sure")  # no args: not a format (the log escapes % as %25)
    server.log(2, "%(who)s left", {"who": "ann"})
    server.log(2, "two %s %s", "only-one")  # does not fit: logged as it is, with the args
    server.log(5, "very verbose")  # above 4: never
    server.log(9, "%s", "never either")
    server.log(-1, "below 0 is 0")
    assert lines[:3] == [(2, "user bob has 3 items"), (2, "100%25 sure"), (2, "ann left")]
    assert lines[3][1].startswith("two %25s %25s ('only-one',) (log format: ")
    assert lines[4:] == [(0, "below 0 is 0")]


# -- the default echo -----------------------------------------------------------------------------


def test_echo_ends_on_quit_anywhere_in_a_line(serve: Callable[..., GServer]) -> None:
    server = serve(GServer, port="127.0.0.1:0")
    with connect(server) as sock:
        assert read_line(sock).startswith(b'Welcome to "GServer"')
        sock.sendall(b"hello\r\nplease quit now\r\nnot read\r\n")
        rest = read_until_eof(sock)
    assert b'You said "hello"' in rest and b'You said "please quit now"' in rest
    assert b"not read" not in rest


def test_echo_says_timed_out_to_an_idle_client(serve: Callable[..., GServer]) -> None:
    server = serve(GServer, port="127.0.0.1:0", timeout_idle=1)
    with connect(server) as sock:
        assert read_line(sock).startswith(b"Welcome")
        assert read_until_eof(sock) == b"Timed Out.\r\n"


def test_echo_has_no_get_dump_or_exit(serve: Callable[..., GServer]) -> None:
    server = serve(GServer, port="127.0.0.1:0")
    with connect(server) as sock:
        read_line(sock)
        sock.sendall(b"get log_level\r\ndump\r\nexit\r\n")
        answers = [read_line(sock) for _ in range(3)]
    assert [a.split(b": ", 1)[1] for a in answers] == [
        b'You said "get log_level"\r\n', b'You said "dump"\r\n', b'You said "exit"\r\n']
    assert server.lifecycle.in_loop or server.listeners  # still serving


# -- run_blocking --------------------------------------------------------------------------------


class Blocking(GServer):
    def configure_hook(self) -> None:
        self.slow_started = threading.Event()

    def process_request(self, client: Client) -> None:
        line = client.readline().strip()
        if line == b"slow":
            self.slow_started.set()
            self.run_blocking(time.sleep, 2)  # the real, blocking sleep, in a pool thread
        client.sendall(b"done " + line + b"\n")


def test_run_blocking_keeps_other_clients_served(serve: Callable[..., GServer]) -> None:
    server = serve(Blocking, port="127.0.0.1:0")
    assert isinstance(server, Blocking)
    with connect(server) as slow, connect(server) as fast:
        slow.sendall(b"slow\n")
        assert server.slow_started.wait(10)
        fast.sendall(b"fast\n")
        assert read_line(fast) == b"done fast\n"  # served while the slow call blocks
        slow.setblocking(False)
        with pytest.raises(BlockingIOError):  # the slow one is still sleeping
            slow.recv(1)
        slow.settimeout(10)
        assert read_line(slow) == b"done slow\n"


def test_run_blocking_returns_values_and_raises_errors() -> None:
    server = GServer(port="127.0.0.1:0")

    def in_hub() -> Any:
        value = server.run_blocking(lambda a, b=0: a + b, 2, b=3)
        with pytest.raises(ZeroDivisionError):
            server.run_blocking(lambda: 1 / 0)
        return value

    with ServerThread(server) as thread:
        assert thread.call(in_hub) == 5
