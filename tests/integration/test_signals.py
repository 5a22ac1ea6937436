"""Signals (issue 4, point 6), against the server run as a real subprocess.

TERM and INT stop at once; QUIT stops accepting and lets in-flight connections finish within
``graceful_timeout``; HUP re-executes the server in place (same pid) keeping its listening
sockets through ``BOUND_SOCKETS``, calling restart_close_hook and restart_open_hook. The
server under test answers one request per connection, ``<delay> <payload>`` ->
``<pid> <token> <payload>``, where the token is new in every process image: a HUP changes
the token, never the pid. ``ServerProcess`` is also used by test_hup_load.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gevent
import pytest

from gnetserver import GServer

pytestmark = pytest.mark.timeout(30)

REPO = Path(__file__).resolve().parents[2]
READY = re.compile(r"Server ready: (.*)$")
GENERATION = re.compile(r"generation (\w+)$")

SERVER_MODULE = textwrap.dedent('''
    """The server the signal tests run (written next to the test's files)."""
    import os
    import uuid

    import gevent

    from gnetserver import GServer

    TOKEN = uuid.uuid4().hex[:12]  # one per process image: a HUP re-exec makes a new one


    class SignalServer(GServer):
        """One request per connection: '<delay> <payload>' -> '<pid> <token> <payload>'."""

        def pre_loop_hook(self):
            self.log(2, f"generation {TOKEN}")

        def process_request(self, client):
            line = client.readline().decode().strip()
            delay, _, payload = line.partition(" ")
            self.log(3, f"request {payload}")
            gevent.sleep(float(delay or 0))
            client.sendall(f"{os.getpid()} {TOKEN} {payload}\\n".encode())

        def restart_open_hook(self):
            self.log(2, f"restart_open_hook {TOKEN} {os.environ.get('BOUND_SOCKETS')}")

        def restart_close_hook(self):
            self.log(2, f"restart_close_hook {TOKEN}")
''')


class ServerProcess:
    """``python -m gnetserver --server sigserver:SignalServer ...`` with its stderr collected
    line by line by a reader thread. Always :meth:`close` it (kills it if still running)."""

    def __init__(self, folder: Path, *args: str) -> None:
        (folder / "sigserver.py").write_text(SERVER_MODULE)
        paths = [str(folder), str(REPO), os.environ.get("PYTHONPATH", "")]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
        env.pop("BOUND_SOCKETS", None)
        argv = [sys.executable, "-m", "gnetserver", "--server", "sigserver:SignalServer", *args]
        self.proc = subprocess.Popen(argv, cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for(self, pattern: re.Pattern[str] | str, count: int = 1,
                 timeout: float = 15.0) -> re.Match[str]:
        """The ``count``-th stderr line matching ``pattern``; fails if the process ends first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(regex.search, self.lines) if m]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    pytest.fail(f"no line #{count} matching {regex.pattern!r}; "
                                f"stderr: {self.lines}")
                self._changed.wait(left)

    def count(self, pattern: str) -> int:
        with self._changed:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def ports(self, generation: int = 1) -> list[tuple[str, Any, str]]:
        """(host, port or path, proto) of every listener, from the n-th "Server ready:" line."""
        found: list[tuple[str, Any, str]] = []
        for item in self.wait_for(READY, generation).group(1).split(", "):
            where, proto = item.rsplit("|" if item.endswith("|unix") else "/", 1)
            if proto == "unix":
                found.append(("", where, proto))
            else:
                host, port = where.rsplit(":", 1)
                found.append((host.strip("[]"), int(port), proto))
        return found

    def token(self, generation: int = 1) -> str:
        return self.wait_for(GENERATION, generation).group(1)

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@contextlib.contextmanager
def server_processes(folder: Path, certs: dict[str, str]) -> Iterator[Any]:
    """A function starting ServerProcess(es) with the test certificate; every one is killed
    on exit."""
    started: list[ServerProcess] = []

    def start(*args: str) -> ServerProcess:
        cert_args = ["--SSL_cert_file", certs["SSL_cert_file"],
                     "--SSL_key_file", certs["SSL_key_file"]]
        server = ServerProcess(folder, *cert_args, *args)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.close()


@pytest.fixture
def start_server(tmp_path: Path, certs: dict[str, str]) -> Iterator[Any]:
    with server_processes(tmp_path, certs) as start:
        yield start


def connect(where: tuple[str, Any, str], context: ssl.SSLContext | None = None,
            timeout: float = 10.0) -> socket.socket:
    """A connected client socket (TLS for ssl listeners, verified against the test CA)."""
    host, port, proto = where
    if proto == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(port)
        except BaseException:
            sock.close()
            raise
        return sock
    raw = socket.create_connection((host, port), timeout=timeout)
    if proto != "ssl":
        return raw
    assert context is not None
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def read_all(sock: socket.socket) -> str:
    chunks = []
    while True:
        try:
            chunk = sock.recv(4096)
        except ssl.SSLZeroReturnError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def request(where: tuple[str, Any, str], context: ssl.SSLContext | None, payload: str,
            delay: float = 0.0) -> str:
    """One request on its own connection; the whole response."""
    with connect(where, context) as sock:
        sock.sendall(f"{delay} {payload}\n".encode())
        return read_all(sock)


def refused(where: tuple[str, Any, str]) -> bool:
    try:
        connect(where, None, timeout=2).close()
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    return False


class InFlight(threading.Thread):
    """A request running in a thread; ``result`` is the response or the exception."""

    def __init__(self, where: tuple[str, Any, str], context: ssl.SSLContext | None,
                 payload: str, delay: float) -> None:
        super().__init__(daemon=True)
        self.args_ = (where, context, payload, delay)
        self.result: str | BaseException | None = None

    def run(self) -> None:
        try:
            self.result = request(*self.args_)
        except BaseException as exc:  # handed to the test
            self.result = exc

    def outcome(self, timeout: float = 15.0) -> str | BaseException | None:
        self.join(timeout)
        assert not self.is_alive(), "request did not end in time"
        return self.result


# -- TERM, INT, QUIT ----------------------------------------------------------------------------


@pytest.mark.parametrize("signame", ["TERM", "INT"])
def test_term_and_int_stop_at_once(start_server: Any, client_context: ssl.SSLContext,
                                   signame: str) -> None:
    server = start_server("--port", "127.0.0.1:0/ssl", "--graceful_timeout", "20",
                          "--log_level", "3")
    where = server.ports()[0]
    held = InFlight(where, client_context, "held", 30)
    held.start()
    server.wait_for(r"request held$")
    began = time.monotonic()
    server.send(getattr(signal, f"SIG{signame}"))
    assert server.wait_exit() == 0
    assert time.monotonic() - began < 5  # not the 20 s graceful_timeout
    assert server.count(f"Received a SIG {signame}: stopping now") == 1
    assert not isinstance(held.outcome(), str) or held.result == ""  # cut, no response
    assert refused(where)


def test_quit_lets_in_flight_requests_finish(start_server: Any,
                                             client_context: ssl.SSLContext) -> None:
    server = start_server("--port", "127.0.0.1:0/ssl", "--graceful_timeout", "10",
                          "--log_level", "3")
    where = server.ports()[0]
    slow = InFlight(where, client_context, "slow", 1.5)
    slow.start()
    server.wait_for(r"request slow$")
    server.send(signal.SIGQUIT)
    server.wait_for("Waiting up to 10s for 1 connection")
    assert refused(where) and server.proc.poll() is None  # closed while it drains
    assert slow.outcome() == f"{server.pid} {server.token()} slow\n"
    assert server.wait_exit() == 0


def test_quit_waits_no_longer_than_graceful_timeout(start_server: Any,
                                                    client_context: ssl.SSLContext) -> None:
    server = start_server("--port", "127.0.0.1:0/ssl", "--graceful_timeout", "1",
                          "--log_level", "3")
    held = InFlight(server.ports()[0], client_context, "held", 30)
    held.start()
    server.wait_for(r"request held$")
    began = time.monotonic()
    server.send(signal.SIGQUIT)
    assert server.wait_exit() == 0
    assert 0.9 < time.monotonic() - began < 6
    assert not isinstance(held.outcome(), str) or held.result == ""


def test_term_during_quit_drain_stops_at_once(start_server: Any,
                                              client_context: ssl.SSLContext) -> None:
    server = start_server("--port", "127.0.0.1:0/ssl", "--graceful_timeout", "20",
                          "--log_level", "3")
    held = InFlight(server.ports()[0], client_context, "held", 30)
    held.start()
    server.wait_for(r"request held$")
    server.send(signal.SIGQUIT)
    server.wait_for("Waiting up to 20s")
    began = time.monotonic()
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert time.monotonic() - began < 5
    held.outcome()


# -- HUP ------------------------------------------------------------------------------------------


def test_hup_reexecs_in_place_keeping_every_socket(
        start_server: Any, client_context: ssl.SSLContext, tmp_path: Path) -> None:
    unix_path = str(tmp_path / "s.sock")
    server = start_server("--port", "127.0.0.1:0/ssl", "--port", "127.0.0.1:0/tcp",
                          "--port", f"{unix_path}|unix", "--graceful_timeout", "10",
                          "--log_level", "3")
    ports, first = server.ports(), server.token()
    inflight = InFlight(ports[0], client_context, "inflight", 1.0)
    inflight.start()
    server.wait_for(r"request inflight$")
    server.send(signal.SIGHUP)
    # The request in flight is served by the old image before the exec.
    assert inflight.outcome() == f"{server.pid} {first} inflight\n"
    assert server.ports(2) == ports
    second = server.token(2)
    assert second != first
    server.wait_for(f"restart_close_hook {first}$")
    bound = server.wait_for(rf"restart_open_hook {second} (.*)$").group(1)
    entries = {entry.split("|", 1)[1] for entry in bound.split("; ")}
    assert entries == {f"127.0.0.1|{ports[0][1]}|SSL|ipv4|0",
                       f"127.0.0.1|{ports[1][1]}|TCP|ipv4|0", f"*|{unix_path}|UNIX|*"}
    for where in ports:
        context = client_context if where[2] == "ssl" else None
        assert request(where, context, where[2]) == f"{server.pid} {second} {where[2]}\n"
    # The new image handles signals too: a second HUP, then TERM.
    server.send(signal.SIGHUP)
    assert server.ports(3) == ports and server.token(3) not in (first, second)
    assert request(ports[0], client_context, "third") == f"{server.pid} {server.token(3)} third\n"
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert all(refused(where) for where in ports)
    assert not os.path.exists(unix_path)


def test_hup_applies_a_changed_port_configuration(
        start_server: Any, client_context: ssl.SSLContext, tmp_path: Path) -> None:
    """Net::Server's rules: kept ports keep their socket, new ones are bound, dropped ones are
    closed; the conf file is read again."""
    conf = tmp_path / "server.conf"
    unix_path = str(tmp_path / "new.sock")
    conf.write_text("port 127.0.0.1:0/ssl\nport 127.0.0.1:0/tcp\ngraceful_timeout 5\n")
    server = start_server("--conf_file", str(conf))
    kept, dropped = server.ports()
    conf.write_text(f"port 127.0.0.1:0/ssl\nport {unix_path}|unix\ngraceful_timeout 5\n")
    server.send(signal.SIGHUP)
    assert server.ports(2) == [kept, ("", unix_path, "unix")]
    server.wait_for(rf"Closing un-mapped port \d+\|127\.0\.0\.1\|{dropped[1]}\|TCP\|ipv4\|0")
    server.wait_for(r"Added new port configuration: .*new\.sock\|unix")
    assert refused(dropped)
    assert request(kept, client_context, "kept").endswith(f"{server.token(2)} kept\n")
    assert request(("", unix_path, "unix"), None, "unix").endswith(" unix\n")
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0


# -- in a thread ----------------------------------------------------------------------------------


class Recording(GServer):
    """Keeps what it logs."""

    def write_to_log_hook(self, level: int, message: str) -> None:
        self.messages = [*getattr(self, "messages", []), message]


def test_register_signals_is_a_noop_off_the_main_thread(serve: Any) -> None:
    before = {name: signal.getsignal(getattr(signal, f"SIG{name}"))
              for name in ("TERM", "INT", "QUIT", "HUP")}
    server = serve(Recording, port="127.0.0.1:0/tcp", log_level=4)
    assert "Not in the main thread: signal handlers not installed" in server.messages
    after = {name: signal.getsignal(getattr(signal, f"SIG{name}")) for name in before}
    assert after == before


class HupInProcess(Recording):
    """Sends itself a HUP once its loop runs (the handlers are installed by then)."""

    def pre_loop_hook(self) -> None:
        def hup() -> None:
            assert self._signal_queue is not None and self._signal_queue.installed
            os.kill(os.getpid(), signal.SIGHUP)

        gevent.spawn(hup)

    def restart_close_hook(self) -> None:
        self.log(2, "restart_close_hook")


def test_failed_reexec_shuts_down_cleanly(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """run() in the main thread: HUP is handled in the loop; when the exec cannot happen (no
    command line to run again), the server closes as after TERM: sockets closed, pid file
    removed, BOUND_SOCKETS gone, the previous signal handlers back."""
    monkeypatch.setattr(sys, "orig_argv", [sys.executable])  # nothing to re-execute
    before = signal.getsignal(signal.SIGHUP)
    pid_file = tmp_path / "server.pid"
    server = HupInProcess(commandline=[], port="127.0.0.1:0/tcp", pid_file=str(pid_file))
    with gevent.Timeout(10):
        server.run()
    assert "Received a SIG HUP: restarting in place" in server.messages
    assert "restart_close_hook" in server.messages
    assert any(m.startswith("Re-exec failed, shutting down instead") for m in server.messages)
    assert refused(("127.0.0.1", server.listeners[0].port, "tcp"))
    assert not pid_file.exists() and "BOUND_SOCKETS" not in os.environ
    assert signal.getsignal(signal.SIGHUP) == before
