"""sd_notify readiness (issue 10) against a real NOTIFY_SOCKET that the test opens.

The test binds a unix datagram socket (a short path in a temporary folder, or a name in the
abstract namespace: ``NOTIFY_SOCKET=@name``), starts ``python -m gnetserver`` as a subprocess
with ``NOTIFY_SOCKET`` pointing at it, and reads what a service manager would read. What the
code does (gnetserver/systemd.py ``Notifier``, called by GServer): ``READY=1`` (with
``MAINPID``) once the listeners accept, ``RELOADING=1`` (with ``MONOTONIC_USEC``) when a HUP
is taken and ``READY=1`` again from the re-executed image (same pid), ``STOPPING=1`` when the
server closes on TERM. A HUP refused by its preflight sends ``READY=1`` at once: the reload
ended, with the old configuration.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.process import REPO, ServerProcess, python_env

from gnetserver.systemd import Notifier

pytestmark = pytest.mark.timeout(30)


class NotifySocket:
    """The service manager's end: a bound unix datagram socket; :meth:`next` parses one
    message into a dict (``{"READY": "1", "MAINPID": "123"}``)."""

    def __init__(self, abstract: bool, folder: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"gnet-test-{os.getpid()}-{os.urandom(4).hex()}"
            self.sock.bind("\0" + name)
            self.env = "@" + name
        else:
            path = str(folder / "notify")
            self.sock.bind(path)
            self.env = path

    def next(self, timeout: float = 15.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(4096).decode()
        return dict(line.split("=", 1) for line in data.splitlines())

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(params=["path", "abstract"])
def notify_socket(request: pytest.FixtureRequest) -> Iterator[NotifySocket]:
    # A short folder of its own: sun_path holds 108 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="gn") as folder:
        sock = NotifySocket(request.param == "abstract", Path(folder))
        try:
            yield sock
        finally:
            sock.close()


def start(spawn: Callable[..., Any], notify: str, *args: str) -> ServerProcess:
    env = dict(python_env(REPO), NOTIFY_SOCKET=notify)
    argv = [sys.executable, "-m", "gnetserver", "--port", "127.0.0.1:0/tcp",
            "--graceful_timeout", "1", *args]
    proc: ServerProcess = spawn(argv, env=env, cwd=REPO, terminate=True)
    return proc


def test_ready_reloading_stopping(spawn: Callable[..., Any],
                                  notify_socket: NotifySocket) -> None:
    proc = start(spawn, notify_socket.env)
    ready = notify_socket.next()
    assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
    host, port, _ = proc.ports()[0]
    # READY=1 came after the listener accepts: a connection is served at once.
    with socket.create_connection((host, port), timeout=10) as sock:
        assert sock.makefile("rb").readline().startswith(b'Welcome to "DemoServer"')
    assert ready["STATUS"] == f"Serving 127.0.0.1:{port}/tcp"

    proc.send(signal.SIGHUP)
    reloading = notify_socket.next()
    assert reloading["RELOADING"] == "1"
    assert 0 < int(reloading["MONOTONIC_USEC"]) <= time.clock_gettime_ns(
        time.CLOCK_MONOTONIC) // 1000
    again = notify_socket.next()  # from the re-executed image: same pid
    assert again["READY"] == "1" and again["MAINPID"] == str(proc.pid)
    proc.wait_for("Server ready", count=2)  # logged just before READY=1 (a pipe behind)

    proc.send(signal.SIGTERM)
    assert notify_socket.next()["STOPPING"] == "1"
    assert proc.wait_exit() == 0


def test_refused_hup_is_ready_again_at_once(spawn: Callable[..., Any], tmp_path: Path,
                                            notify_socket: NotifySocket) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text("log_level 2\n")
    proc = start(spawn, notify_socket.env, "--conf_file", str(conf))
    assert notify_socket.next()["READY"] == "1"
    conf.write_text("max_servers many\n")  # the HUP's dry run fails on it
    proc.send(signal.SIGHUP)
    assert notify_socket.next()["RELOADING"] == "1"
    refused = notify_socket.next()
    assert refused["READY"] == "1"
    assert refused["STATUS"].startswith("HUP refused, still serving:")
    proc.wait_for("HUP ignored")  # logged before that READY=1 (stderr may lag behind)
    assert proc.count("Server ready") == 1  # no re-exec
    proc.send(signal.SIGTERM)
    assert notify_socket.next()["STOPPING"] == "1"
    assert proc.wait_exit() == 0


def test_unreachable_notify_socket_is_logged_once(spawn: Callable[..., Any],
                                                  tmp_path: Path) -> None:
    missing = str(tmp_path / "nobody-listens")
    proc = start(spawn, missing, "--log_level", "4")
    proc.wait_for("Server ready")
    proc.send(signal.SIGTERM)  # STOPPING=1 fails too: not logged again
    assert proc.wait_exit() == 0
    proc.stop()  # reaps it and reads stderr to its end
    assert proc.count(f"sd_notify to {missing} failed") == 1


# -- the notifier alone ---------------------------------------------------------------------------


def test_notifier_without_socket_does_nothing() -> None:
    notifier = Notifier.from_environment(environ={})
    assert not notifier.enabled
    assert notifier.ready() is False and notifier.stopping() is False
    assert not Notifier.from_environment(environ={"NOTIFY_SOCKET": "vsock:2:1"}).enabled


def test_notifier_status_is_one_line_and_stopping_once(notify_socket: NotifySocket) -> None:
    logged: list[tuple[int, str]] = []
    notifier = Notifier.from_environment(lambda *entry: logged.append(entry),
                                         environ={"NOTIFY_SOCKET": notify_socket.env})
    assert notifier.status("two\nlines é")
    assert notify_socket.next() == {"STATUS": "two lines é"}
    assert notifier.stopping("bye") and not notifier.stopping("again")
    assert notify_socket.next() == {"STOPPING": "1", "STATUS": "bye"}
    assert logged == []
