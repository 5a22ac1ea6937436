"""The server the signal tests (test_signals.py, test_hup_load.py) run as a real subprocess,
and the clients that talk to it.

It answers one request per connection, ``<delay> <payload>`` -> ``<pid> <token> <payload>``,
where the token is new in every process image: a HUP re-exec changes the token, never the pid.
"""

from __future__ import annotations

import re
import socket
import ssl
import sys
import textwrap
import threading
from pathlib import Path

from support.net import open_stream, read_until_eof
from support.process import REPO, ServerProcess, Where, python_env

GENERATION = re.compile(r"generation (\w+)$")
#: A HUP's drainer (the previous generation, another pid) starts, and stops accepting.
DRAINER = re.compile(r"HUP: pid (\d+) serves the previous generation")
DRAINER_STOPPED = re.compile(r"HUP: pid (\d+) stopped accepting")

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


class SignalServerProcess(ServerProcess):
    """``python -m gnetserver --server sigserver:SignalServer ARGS`` run in ``folder`` (where
    the module is written), with the certificate files of ``certs``."""

    def __init__(self, folder: Path, certs: dict[str, str], *args: str) -> None:
        (folder / "sigserver.py").write_text(SERVER_MODULE)
        env = python_env(folder, REPO)
        env.pop("BOUND_SOCKETS", None)
        super().__init__([sys.executable, "-m", "gnetserver", "--server",
                          "sigserver:SignalServer", "--SSL_cert_file", certs["SSL_cert_file"],
                          "--SSL_key_file", certs["SSL_key_file"], *args], env=env, cwd=folder)

    def token(self, generation: int = 1) -> str:
        """The token of the ``generation``-th process image."""
        return self.wait_for(GENERATION, generation).group(1)

    def drainer(self, hup: int = 1) -> int:
        """The pid of the drainer the ``hup``-th HUP forked (it answers with the previous
        image's token until the new image accepts, then finishes its sessions)."""
        return int(self.wait_for(DRAINER, hup).group(1))

    def drainer_stopped(self, hup: int = 1) -> int:
        """Wait until the ``hup``-th drainer stopped accepting; its pid."""
        return int(self.wait_for(DRAINER_STOPPED, hup).group(1))


def connect(where: Where, context: ssl.SSLContext | None = None,
            timeout: float = 10.0) -> socket.socket:
    """A connected client socket (TLS for ssl listeners, verified against the test CA)."""
    host, port, proto = where
    sock = open_stream(port if proto == "unix" else (host, port), timeout)
    if proto != "ssl":
        return sock
    assert context is not None
    try:
        return context.wrap_socket(sock, server_hostname="localhost")
    except BaseException:
        sock.close()
        raise


def request(where: Where, context: ssl.SSLContext | None, payload: str,
            delay: float = 0.0) -> str:
    """One request on its own connection; the whole response."""
    with connect(where, context) as sock:
        sock.sendall(f"{delay} {payload}\n".encode())
        return read_until_eof(sock).decode()


def refused(where: Where) -> bool:
    """True when nothing listens at ``where`` any more."""
    try:
        connect(where, None, timeout=2).close()
    except (ConnectionRefusedError, FileNotFoundError):
        return True
    return False


class InFlight(threading.Thread):
    """A request running in a thread; ``result`` is the response or the exception."""

    def __init__(self, where: Where, context: ssl.SSLContext | None,
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
