"""Hook order (issue 2, point 3): a server that records every hook, a real TLS client.

``run()`` is called for real (in a thread with its own hub, stopped through a thread-safe
async watcher), so the recorded server-wide order includes ``loop`` and ``server_close``.
"""

from __future__ import annotations

import inspect
import ssl
import threading
from collections.abc import Callable
from typing import Any

import gevent
import pytest
from support.net import read_until_eof, tls_connect, wait_until
from support.runthread import RunThread

from gnetserver import GServer
from gnetserver.client import Client
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(20)

SERVER_ORDER = [
    "configure_hook", "configure", "post_configure", "post_configure_hook",
    "pre_bind", "bind", "post_bind_hook", "post_bind", "pre_loop_hook",
    "loop", "server_close", "pre_server_close_hook",
]
ALLOWED_ORDER = [
    "post_accept", "get_client_info", "post_accept_hook", "allow_deny", "allow_deny_hook",
    "process_request", "post_process_request_hook", "post_process_request",
    "post_client_connection_hook",
]
DENIED_ORDER = [
    "post_accept", "get_client_info", "post_accept_hook", "allow_deny", "allow_deny_hook",
    "request_denied_hook", "post_process_request_hook", "post_process_request",
    "post_client_connection_hook",
]
USER_HOOKS = [
    "configure_hook", "post_configure_hook", "post_bind_hook", "pre_loop_hook",
    "pre_server_close_hook", "post_accept_hook", "allow_deny_hook", "request_denied_hook",
    "process_request", "post_process_request_hook", "post_client_connection_hook",
]
FRAMEWORK_STEPS = [
    "options", "default_values", "configure", "post_configure", "pre_bind", "bind",
    "post_bind", "loop", "server_close", "post_accept", "get_client_info", "allow_deny",
    "post_process_request",
]


class Recorder(GServer):
    """Records every hook and step: server-wide ones in ``self.calls``, per-connection ones in
    ``client.data["calls"]``, each with the greenlet it ran in. The second listener denies."""

    def configure_hook(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.clients: list[Client] = []
        self.facts: list[dict[str, Any]] = []
        self.ready = threading.Event()
        self._note("configure_hook")

    def _note(self, name: str, client: Client | None = None) -> None:
        where = self.calls if client is None else client.data.setdefault("calls", [])
        where.append((name, gevent.getcurrent()))

    def pre_loop_hook(self) -> None:
        self._note("pre_loop_hook")
        self.ready.set()

    def post_accept(self, client: Client) -> None:
        self.clients.append(client)
        self._note("post_accept", client)
        client.data["tls_before"] = client.tls
        super().post_accept(client)
        client.data["tls_after"] = client.tls.version if client.tls else None

    def allow_deny_hook(self, client: Client) -> bool:
        self._note("allow_deny_hook", client)
        return client.listener is not self.listeners[1]

    def request_denied_hook(self, client: Client) -> None:
        self._note("request_denied_hook", client)
        client.sendall(b"denied\r\n")

    def process_request(self, client: Client) -> None:
        """Uses every I/O method a handler has: readline, recv, makefile, sendall."""
        self._note("process_request", client)
        self.facts.append({name: getattr(client, name) for name in
                           ("peeraddr", "peerport", "sockaddr", "sockport", "proto")})
        first = client.readline()
        rest = b""
        while not rest.endswith(b"\n"):
            chunk = client.recv(100)
            if not chunk:
                break
            rest += chunk
        writer = client.makefile("wb")
        writer.write(b"line: " + first)
        writer.flush()
        client.sendall(b"recv: " + rest)


def _recording(name: str, per_connection: bool) -> Callable[..., Any]:
    """A Recorder method that notes ``name`` and then runs GServer's own."""

    def method(self: Recorder, *args: Any) -> Any:
        self._note(name, args[0] if per_connection else None)
        return getattr(super(Recorder, self), name)(*args)

    method.__name__ = name
    return method


for _name in SERVER_ORDER:
    if _name not in vars(Recorder):
        setattr(Recorder, _name, _recording(_name, per_connection=False))
for _name in ALLOWED_ORDER + DENIED_ORDER:
    if _name not in vars(Recorder):
        setattr(Recorder, _name, _recording(_name, per_connection=True))


def names(calls: list[tuple[str, Any]]) -> list[str]:
    return [name for name, _ in calls]


def test_hook_order_of_run_and_of_two_tls_connections(
    certs: dict[str, str], client_context: ssl.SSLContext
) -> None:
    server = Recorder(commandline=[], port=["127.0.0.1:0", "127.0.0.1:0"], proto="ssl", **certs)
    runner = RunThread(server)
    runner.start()
    try:
        assert server.ready.wait(10)
        port = server.listeners[0].port
        with tls_connect(server, client_context, 0) as allowed:
            allowed.sendall(b"first line\nsecond ")
            allowed.sendall(b"line\n")
            assert read_until_eof(allowed) == b"line: first line\nrecv: second line\n"
        with tls_connect(server, client_context, 1) as denied:
            assert read_until_eof(denied) == b"denied\r\n"
        wait_until(lambda: len(server.clients) == 2 and all(
            names(c.data.get("calls", []))[-1:] == ["post_client_connection_hook"]
            for c in server.clients), 5.0, "both connections to end")
    finally:
        runner.stop()

    assert names(server.calls) == SERVER_ORDER
    first, second = server.clients
    assert names(first.data["calls"]) == ALLOWED_ORDER
    assert names(second.data["calls"]) == DENIED_ORDER
    assert (first.allowed, second.allowed) == (True, False)

    # Server-wide hooks share the greenlet that called run(); each connection has its own.
    server_greenlets = {greenlet for _, greenlet in server.calls}
    assert len(server_greenlets) == 1
    hub_greenlets = server_greenlets | {gevent.get_hub()}
    for client in (first, second):
        own = {greenlet for _, greenlet in client.data["calls"]}
        assert len(own) == 1 and not own & hub_greenlets
    assert {g for _, g in first.data["calls"]} != {g for _, g in second.data["calls"]}

    # The handshake happens inside post_accept; hooks then see Net::Server's facts.
    assert first.data["tls_before"] is None and first.data["tls_after"] in ("TLSv1.2", "TLSv1.3")
    [facts] = server.facts
    assert facts["peeraddr"] == "127.0.0.1" and isinstance(facts["peerport"], int)
    assert (facts["sockaddr"], facts["sockport"]) == ("127.0.0.1", port)
    assert facts["proto"] == "ssl"
    assert first.closed and second.closed


def test_start_and_stop_run_the_same_steps_without_the_loop() -> None:
    """The embedding API: start() runs every step up to pre_loop_hook, stop() the close."""
    server = Recorder(port=["127.0.0.1:0/tcp", "127.0.0.1:0/tcp"], log_level=0)
    with ServerThread(server):  # start() and stop() run in the server's own thread and hub
        assert names(server.calls) == SERVER_ORDER[:9]
    assert names(server.calls) == SERVER_ORDER[:9] + ["server_close", "pre_server_close_hook"]


@pytest.mark.parametrize("name", sorted(set(USER_HOOKS + FRAMEWORK_STEPS)))
def test_every_hook_and_step_is_documented(name: str) -> None:
    doc = inspect.getdoc(getattr(GServer, name))
    assert doc and len(doc) >= 40, f"GServer.{name} needs a docstring saying when it runs"


@pytest.mark.parametrize("name", ["recv", "recv_into", "send", "sendall", "makefile",
                                  "readline", "settimeout", "close", "abort"])
def test_client_io_is_documented(name: str) -> None:
    doc = inspect.getdoc(getattr(Client, name))
    assert doc and len(doc) >= 20
