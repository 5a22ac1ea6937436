"""Signals (issue 4, point 6), against the server run as a real subprocess.

TERM and INT stop at once; QUIT stops accepting and lets in-flight connections finish within
``graceful_timeout``; HUP re-executes the server in place (same pid) keeping its listening
sockets through ``BOUND_SOCKETS``, calling restart_close_hook and restart_open_hook, while a
drainer child (another pid, the previous image's token) finishes the connections. The
server under test (support/sigserver.py, also used by test_hup_load.py) answers one request
per connection, ``<delay> <payload>`` -> ``<pid> <token> <payload>``, where the token is new
in every process image: a HUP changes the token, never the pid.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import gevent
import pytest
from support.net import read_until_eof
from support.process import REPO, Where, python_env
from support.sigserver import InFlight, SignalServerProcess, refused, request

from gnetserver import GServer, restart

pytestmark = pytest.mark.timeout(30)


def hold_a_request(start_sigserver: Any, client_context: ssl.SSLContext,
                   graceful: str) -> tuple[SignalServerProcess, Where, InFlight]:
    """A server with ``graceful_timeout`` ``graceful`` and a request held in it for 30 s."""
    server = start_sigserver("--port", "127.0.0.1:0/ssl", "--graceful_timeout", graceful,
                             "--log_level", "3")
    where = server.ports()[0]
    held = InFlight(where, client_context, "held", 30)
    held.start()
    server.wait_for(r"request held$")
    return server, where, held


# -- TERM, INT, QUIT ----------------------------------------------------------------------------


@pytest.mark.parametrize("signame", ["TERM", "INT"])
def test_term_and_int_stop_at_once(start_sigserver: Any, client_context: ssl.SSLContext,
                                   signame: str) -> None:
    server, where, held = hold_a_request(start_sigserver, client_context, "20")
    began = time.monotonic()
    server.send(getattr(signal, f"SIG{signame}"))
    assert server.wait_exit() == 0
    assert time.monotonic() - began < 5  # not the 20 s graceful_timeout
    assert server.count(f"Received a SIG {signame}: stopping now") == 1
    assert not isinstance(held.outcome(), str) or held.result == ""  # cut, no response
    assert refused(where)


def test_quit_lets_in_flight_requests_finish(start_sigserver: Any,
                                             client_context: ssl.SSLContext) -> None:
    server = start_sigserver("--port", "127.0.0.1:0/ssl", "--graceful_timeout", "10",
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


def test_quit_waits_no_longer_than_graceful_timeout(start_sigserver: Any,
                                                    client_context: ssl.SSLContext) -> None:
    server, _, held = hold_a_request(start_sigserver, client_context, "1")
    began = time.monotonic()
    server.send(signal.SIGQUIT)
    assert server.wait_exit() == 0
    assert 0.9 < time.monotonic() - began < 6
    assert not isinstance(held.outcome(), str) or held.result == ""


def test_term_during_quit_drain_stops_at_once(start_sigserver: Any,
                                              client_context: ssl.SSLContext) -> None:
    server, _, held = hold_a_request(start_sigserver, client_context, "20")
    server.send(signal.SIGQUIT)
    server.wait_for("Waiting up to 20s")
    began = time.monotonic()
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert time.monotonic() - began < 5
    held.outcome()


GRACEFUL_TERM = textwrap.dedent('''
    from gnetserver import GServer


    class GracefulTerm(GServer):
        """TERM lets in-flight connections finish (stop() without a timeout); each
        connection is held until its peer sends a second line."""

        def handle_term(self):
            self.log(2, "TERM: letting connections finish")
            self.stop()

        def process_request(self, client):
            client.readline()
            self.log(2, "request held")
            client.readline()
            client.sendall(b"finished\\n")
''')


def test_an_overridden_handle_term_keeps_a_drain_running(spawn: Any, tmp_path: Path) -> None:
    """TERM during a drain goes to handle_term; the default one ends the drain (stop(0)), an
    override that does not keeps it running: the held connection finishes normally."""
    (tmp_path / "graceful.py").write_text(GRACEFUL_TERM)
    server = spawn([sys.executable, "-m", "gnetserver", "--server", "graceful:GracefulTerm",
                    "--port", "127.0.0.1:0/tcp", "--graceful_timeout", "20"],
                   env=python_env(tmp_path, REPO), cwd=tmp_path)
    host, port, _ = server.ports()[0]
    with socket.create_connection((host, port), timeout=15) as sock:
        sock.sendall(b"first\n")
        server.wait_for("request held")
        server.send(signal.SIGQUIT)
        server.wait_for("Waiting up to 20s for 1 connection")
        server.send(signal.SIGTERM)
        server.wait_for("TERM: letting connections finish")
        sock.sendall(b"second\n")
        assert read_until_eof(sock) == b"finished\n"
    assert server.wait_exit(10) == 0


# -- HUP ------------------------------------------------------------------------------------------


def test_hup_reexecs_in_place_keeping_every_socket(
        start_sigserver: Any, client_context: ssl.SSLContext, tmp_path: Path) -> None:
    unix_path = str(tmp_path / "s.sock")
    server = start_sigserver("--port", "127.0.0.1:0/ssl", "--port", "127.0.0.1:0/tcp",
                             "--port", f"{unix_path}|unix", "--graceful_timeout", "10",
                             "--log_level", "3")
    ports, first = server.ports(), server.token()
    inflight = InFlight(ports[0], client_context, "inflight", 1.0)
    inflight.start()
    server.wait_for(r"request inflight$")
    server.send(signal.SIGHUP)
    # The request in flight is finished by the previous generation: the drainer forked right
    # before the exec (its own pid, the old image's token). It used to be the old image,
    # before the exec (same pid), while accepting paused.
    assert inflight.outcome() == f"{server.drainer()} {first} inflight\n"
    assert server.ports(2) == ports
    second = server.token(2)
    assert second != first
    server.wait_for(f"restart_close_hook {first}$")
    bound = server.wait_for(rf"restart_open_hook {second} (.*)$").group(1)
    entries = {entry.split("|", 1)[1] for entry in bound.split("; ")}
    assert entries == {f"127.0.0.1|{ports[0][1]}|SSL|ipv4|0",
                       f"127.0.0.1|{ports[1][1]}|TCP|ipv4|0", f"*|{unix_path}|UNIX|*"}
    server.drainer_stopped()  # from now on only the new image accepts (the unix file stays)
    for where in ports:
        context = client_context if where[2] == "ssl" else None
        assert request(where, context, where[2]) == f"{server.pid} {second} {where[2]}\n"
    # The new image handles signals too: a second HUP, then TERM.
    server.send(signal.SIGHUP)
    assert server.ports(3) == ports and server.token(3) not in (first, second)
    server.drainer_stopped(2)
    assert request(ports[0], client_context, "third") == f"{server.pid} {server.token(3)} third\n"
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert all(refused(where) for where in ports)
    assert not os.path.exists(unix_path)


def test_hup_applies_a_changed_port_configuration(
        start_sigserver: Any, client_context: ssl.SSLContext, tmp_path: Path) -> None:
    """Net::Server's rules: kept ports keep their socket, new ones are bound, dropped ones are
    closed; the conf file is read again."""
    conf = tmp_path / "server.conf"
    unix_path = str(tmp_path / "new.sock")
    conf.write_text("port 127.0.0.1:0/ssl\nport 127.0.0.1:0/tcp\ngraceful_timeout 5\n")
    server = start_sigserver("--conf_file", str(conf))
    kept, dropped = server.ports()
    conf.write_text(f"port 127.0.0.1:0/ssl\nport {unix_path}|unix\ngraceful_timeout 5\n")
    server.send(signal.SIGHUP)
    assert server.ports(2) == [kept, ("", unix_path, "unix")]
    server.drainer_stopped()  # the previous generation holds the dropped port until then
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
            assert self.lifecycle.signals_installed
            os.kill(os.getpid(), signal.SIGHUP)

        gevent.spawn(hup)

    def restart_close_hook(self) -> None:
        self.log(2, "restart_close_hook")


def test_failed_reexec_shuts_down_cleanly(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    """run() in the main thread: HUP is handled in the loop; when the exec fails anyway
    (something the preflight could not foresee: here its exec check is switched off, and
    there is no command line to run again), the server closes as after TERM: sockets closed,
    pid file removed, BOUND_SOCKETS gone, the previous signal handlers back."""
    monkeypatch.setattr(sys, "orig_argv", [sys.executable])  # nothing to re-execute
    monkeypatch.setattr(restart, "exec_problems", lambda: [])  # unforeseen by the preflight
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
    assert restart.MARKER not in os.environ
    assert signal.getsignal(signal.SIGHUP) == before


class HupThenStop(HupInProcess):
    """Sends itself a HUP, then a TERM once the HUP was handled (refused)."""

    def write_to_log_hook(self, level: int, message: str) -> None:
        super().write_to_log_hook(level, message)
        if message.startswith("HUP ignored"):
            os.kill(os.getpid(), signal.SIGTERM)


def test_a_reexec_that_cannot_happen_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """No command line to run again: the preflight refuses the HUP (level 1) and the server
    keeps serving, where it used to close (a failed exec)."""
    monkeypatch.setattr(sys, "orig_argv", [sys.executable])
    server = HupThenStop(commandline=[], port="127.0.0.1:0/tcp")
    with gevent.Timeout(10):
        server.run()
    refusal = [m for m in server.messages if m.startswith("HUP ignored")]
    assert refusal and "no command line to run again" in refusal[0], server.messages
    assert "restart_close_hook" not in server.messages
    assert not any(m.startswith("Re-exec failed") for m in server.messages)
