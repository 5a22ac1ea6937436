"""The server's one state (``server.lifecycle.state``) and the personality seam (issue 7).

Each hook records the state it runs in, over a real TCP connection, so the table below is
what a user's hook sees: IDLE before binding, BOUND once the ports are bound, SERVING while
connections run, DRAINING in the close, CLOSED after it. The personality is the ``Single``
one (one hub) unless ``server_type`` names another personality gnetserver has; its
connection counts are what the drain waits on.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

import gevent
import pytest
from support.net import address, read_line, read_until_eof, wait_until
from support.runthread import RunThread

from gnetserver import GServer
from gnetserver.client import Client
from gnetserver.lifecycle import State
from gnetserver.personality import PERSONALITIES, Single, personality_name
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(20)


class StateRecorder(GServer):
    """Records ``lifecycle.state`` in each server-wide hook and in the connection; a
    connection says ``hello``, then waits for a line (``hold``) before it ends."""

    def configure_hook(self) -> None:
        self.seen: list[tuple[str, State]] = [("configure_hook", self.lifecycle.state)]
        self.in_session = threading.Event()

    def _note(self, where: str) -> None:
        self.seen.append((where, self.lifecycle.state))

    def post_configure_hook(self) -> None:
        self._note("post_configure_hook")

    def post_bind_hook(self) -> None:
        self._note("post_bind_hook")

    def pre_loop_hook(self) -> None:
        self._note("pre_loop_hook")

    def process_request(self, client: Client) -> None:
        self._note("process_request")
        assert self.personality is not None
        client.data["active"] = self.personality.active_connections()
        client.data["mine"] = gevent.getcurrent() in self.personality.greenlets()
        client.sendall(f"hello {client.data['active']} {client.data['mine']}\n".encode())
        self.in_session.set()
        client.readline()

    def pre_server_close_hook(self) -> None:
        self._note("pre_server_close_hook")


def test_states_seen_by_the_hooks() -> None:
    server = StateRecorder(commandline=[], port="127.0.0.1:0/tcp", graceful_timeout=5)
    assert server.lifecycle.state is State.IDLE
    runner = RunThread(server).start()
    try:
        wait_until(lambda: server.lifecycle.state is State.SERVING, what="serving")
        with socket.create_connection(address(server), timeout=5) as conn:
            assert read_line(conn) == b"hello 1 True\n"
            assert server.lifecycle.state is State.SERVING
            conn.sendall(b"bye\n")
            read_until_eof(conn)
    finally:
        runner.stop()
    assert server.seen == [
        ("configure_hook", State.IDLE), ("post_configure_hook", State.IDLE),
        ("post_bind_hook", State.BOUND), ("pre_loop_hook", State.BOUND),
        ("process_request", State.SERVING), ("pre_server_close_hook", State.DRAINING),
    ]
    assert server.lifecycle.state is State.CLOSED and server.lifecycle.closed
    assert isinstance(server.personality, Single)
    assert server.personality.active_connections() == 0 and server.personality.greenlets() == []


def test_a_failed_start_is_closed() -> None:
    server = GServer(port="127.0.0.1:0/tcp", commandline=[])

    class Boom(Exception):
        pass

    def fail() -> None:
        raise Boom

    server.post_bind_hook = fail  # type: ignore[method-assign]
    with pytest.raises(Boom):
        server.start()
    assert server.lifecycle.state is State.CLOSED and server.listeners[0].sock.fileno() == -1


def test_the_drain_waits_on_the_personalitys_connections() -> None:
    """A connection in progress when stop(timeout) runs is counted by the personality, and the
    close is DRAINING until it ends (here: cut when the timeout runs out)."""
    server = StateRecorder(port="127.0.0.1:0/tcp")
    thread = ServerThread(server, stop_timeout=0.2).start()
    try:
        with socket.create_connection(address(server), timeout=5) as conn:
            assert read_line(conn) == b"hello 1 True\n"
            assert server.in_session.wait(5)
            assert thread.call(lambda: server.personality.active_connections()) == 1
            thread.stop()
            assert read_until_eof(conn) == b""  # cut at the end of the drain
    finally:
        thread.stop()
    assert ("pre_server_close_hook", State.DRAINING) in server.seen
    assert server.lifecycle.state is State.CLOSED


@pytest.mark.parametrize("server_types, expected", [
    ([], "Single"),
    (["Single"], "Single"),
    (["PreFork", "Single"], "PreFork"),  # MultiType order: the first one gnetserver has
    (["Fork", "Single"], "Single"),
    (["Fork", "PreFork"], "PreFork"),
    (["Fork"], "Single"),  # none it has: the default
])
def test_server_type_picks_the_personality(server_types: list[str], expected: str) -> None:
    assert personality_name(server_types) == expected
    assert PERSONALITIES[expected].name == expected


def test_server_type_single_is_not_reported_as_ignored(serve: Any) -> None:
    class Recording(GServer):
        def configure_hook(self) -> None:
            self.messages: list[str] = []

        def log(self, level: int, message: str) -> None:
            self.messages.append(message)
            super().log(level, message)

    server = serve(Recording, port="127.0.0.1:0/tcp", server_type="Single")
    assert isinstance(server.personality, Single)
    assert not [m for m in server.messages if "ignored Net::Server options" in m]


@pytest.mark.parametrize("hook", ["post_configure_hook", "post_bind_hook", "pre_loop_hook"])
def test_stop_in_a_start_up_hook_leaves_nothing_open(hook: str) -> None:
    """stop() in a start-up hook closes the server; the steps after it bind nothing more and
    the state stays CLOSED."""
    server = GServer(commandline=[], port="127.0.0.1:0/tcp")
    setattr(server, hook, lambda: server.stop())
    server.start()
    assert server.lifecycle.state is State.CLOSED and server.personality is None
    assert all(listener.sock.fileno() == -1 for listener in server.listeners)


class OverridingSteps(GServer):
    """Overrides framework steps the documented way (one argument, ``super()``), and counts
    them: the HUP preflight runs the same steps as the start."""

    def configure_hook(self) -> None:
        self.calls: list[str] = []

    def pre_bind(self) -> None:
        self.calls.append("pre_bind")
        super().pre_bind()

    def ssl_options(self, spec: Any) -> dict[str, Any]:
        self.calls.append("ssl_options")
        return super().ssl_options(spec)


def test_overridden_steps_run_at_start_and_in_the_hup_preflight(
        serve: Any, pem_files: dict[str, Any]) -> None:
    server = serve(OverridingSteps, port="127.0.0.1:0/ssl", **pem_files)
    assert server.calls == ["pre_bind", "ssl_options"]
    thread_calls = list(server.calls)
    server.calls.clear()
    conf_before = server.conf
    assert server.restart_problem() is None
    assert server.calls == thread_calls  # the same steps, on the planned configuration
    assert server.conf is conf_before  # and the server is left as it was
