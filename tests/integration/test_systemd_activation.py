"""systemd socket activation (issue 10), with the real ``systemd-socket-activate`` (systemd 252).

``systemd-socket-activate -l 127.0.0.1:P [--fdname=NAME] CMD`` binds and listens itself, waits
for the first connection, then execs CMD in its own pid with ``LISTEN_FDS``/``LISTEN_PID``
(and ``LISTEN_FDNAMES``) set and the socket on fd 3; the environment is not inherited, so
``-E PYTHONPATH`` passes ours. What the code does (gnetserver/systemd.py, restart.bind_ports):
the passed sockets serve the configured ports, matched by address or by a port's ``name``
key, nothing is bound; the variables are removed so that nothing the server starts sees them;
a socket no port claims, a port no socket serves, or a datagram socket stop the start with a
ConfigError naming both sides. A HUP re-exec hands the activated sockets on like any others
(a named one with its name), so the same sockets keep serving.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from support.net import free_port
from support.process import REPO, ServerProcess, python_env

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                       reason="systemd-socket-activate missing (.ci/run installs systemd)"),
]

#: A server whose one port is claimed by name, at an address the unit file does not use, and
#: which answers each connection with its pid and what it sees of the activation variables.
NAMED_SERVER = """
import os
from gnetserver import GServer

class Named(GServer):
    def process_request(self, client):
        seen = ",".join(f"{k}={os.environ.get(k)}"
                        for k in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"))
        client.sendall(f"{os.getpid()} {seen}\\n".encode())

Named(port=[{"port": 9, "host": "127.0.0.1", "name": "web"}], log_level=3,
      graceful_timeout=1).serve_forever()
"""


def activate(spawn: Callable[..., Any], listen: list[str], *command: str,
             extra: tuple[str, ...] = ()) -> ServerProcess:
    """Start ``systemd-socket-activate -l ADDR... EXTRA -E PYTHONPATH python COMMAND`` and
    wait until it listens (it execs the server at the first connection)."""
    argv = ["systemd-socket-activate", *(f"-l{where}" for where in listen), *extra,
            "-E", "PYTHONPATH", sys.executable, *command]
    proc: ServerProcess = spawn(argv, env=python_env(REPO), cwd=REPO, terminate=True)
    for where in listen:
        proc.wait_for(f"Listening on {where} as ")
    return proc


def ask(port: int, timeout: float = 15.0) -> str:
    """Connect to 127.0.0.1:port and return the first line the server sends."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return sock.makefile("rb").readline().decode()


def test_activated_sockets_serve_matched_by_address(spawn: Callable[..., Any]) -> None:
    one, two = free_port(), free_port()
    proc = activate(spawn, [f"127.0.0.1:{one}", f"127.0.0.1:{two}"], "-m", "gnetserver",
                    "--port", f"127.0.0.1:{one}/tcp", "--port", f"127.0.0.1:{two}/tcp",
                    "--log_level", "3", "--graceful_timeout", "1")
    # The first connection makes the tool exec the server, which takes fd 3 and fd 4.
    assert ask(one).startswith(f'Welcome to "DemoServer" ({proc.pid})')
    assert ask(two).startswith(f'Welcome to "DemoServer" ({proc.pid})')
    proc.wait_for(rf"Adopted socket 3 from systemd for 127.0.0.1:{one}/tcp")
    proc.wait_for(rf"Adopted socket 4 from systemd for 127.0.0.1:{two}/tcp")
    proc.wait_for("Server ready")
    # HUP: the re-exec hands the activated sockets over like bound ones (same pid, same ports).
    proc.send(signal.SIGHUP)
    proc.wait_for("Server ready", count=2)
    # Until the new image's "ready" reaches it, the old generation (the drainer) may still
    # answer: ask once it has stopped accepting.
    proc.wait_for(r"HUP: pid \d+ stopped accepting")
    assert proc.count("Added new port configuration") == 0
    assert ask(one).startswith(f'Welcome to "DemoServer" ({proc.pid})')
    assert ask(two).startswith(f'Welcome to "DemoServer" ({proc.pid})')
    proc.send(signal.SIGTERM)
    assert proc.wait_exit() == 0


def test_socket_named_for_a_port_serves_it_and_the_variables_are_gone(
        spawn: Callable[..., Any], tmp_path: Path) -> None:
    script = tmp_path / "named.py"
    script.write_text(NAMED_SERVER)
    port = free_port()
    proc = activate(spawn, [f"127.0.0.1:{port}"], str(script), extra=("--fdname=web",))
    # Served on the passed socket (the port's own address, 127.0.0.1:9, is never bound), and
    # the activation variables were removed from the environment once read.
    seen = "LISTEN_FDS=None,LISTEN_PID=None,LISTEN_FDNAMES=None"
    assert ask(port) == f"{proc.pid} {seen}\n"
    proc.wait_for(r"Adopted socket 3 from systemd for 127\.0\.0\.1:9/tcp")
    proc.wait_for(rf"Server ready: 127\.0\.0\.1:{port}/tcp")
    # After a HUP the new image finds the named socket by its name again, not by address.
    proc.send(signal.SIGHUP)
    proc.wait_for("Server ready", count=2)
    proc.wait_for(r"Adopted inherited socket \d+ named 'web' for 127\.0\.0\.1:9/tcp")
    proc.wait_for(r"HUP: pid \d+ stopped accepting")  # the drainer answers no more
    assert ask(port) == f"{proc.pid} {seen}\n"
    proc.send(signal.SIGTERM)
    assert proc.wait_exit() == 0


def test_mismatch_stops_the_start_naming_both_sides(spawn: Callable[..., Any]) -> None:
    passed, configured = free_port(), free_port()
    proc = activate(spawn, [f"127.0.0.1:{passed}"], "-m", "gnetserver",
                    "--port", f"127.0.0.1:{configured}/tcp")
    with pytest.raises(OSError):  # the server exits without accepting: the peer sees a reset
        ask(passed)
    assert proc.wait_exit() != 0
    message = proc.wait_for("socket activation:").string
    assert f"port 127.0.0.1:{configured}/tcp (127.0.0.1:{configured}) is served by none" in message
    assert f"fd 3 (127.0.0.1:{passed}) serves no configured port" in message
    assert proc.count("Server ready") == 0


def test_datagram_socket_is_refused(spawn: Callable[..., Any]) -> None:
    port = free_port(socket.SOCK_DGRAM)
    proc = activate(spawn, [f"127.0.0.1:{port}"], "-m", "gnetserver",
                    "--port", f"127.0.0.1:{port}/tcp", extra=("--datagram",))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.sendto(b"wake up", ("127.0.0.1", port))  # the tool execs on the first datagram
    assert proc.wait_exit() != 0
    assert "is not a listening stream socket" in proc.wait_for("socket activation:").string


def test_unix_socket_file_stays_systemds(spawn: Callable[..., Any]) -> None:
    with tempfile.TemporaryDirectory(prefix="gn") as folder:  # short: sun_path is 108 bytes
        path = f"{folder}/gnet.sock"
        proc = activate(spawn, [path], "-m", "gnetserver", "--port", f"{path}|unix",
                        "--graceful_timeout", "1")
        for generation in (1, 2):
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(15)
                sock.connect(path)
                assert sock.makefile("rb").readline().startswith(b"Welcome to")
            proc.wait_for("Server ready", count=generation)
            if generation == 1:
                proc.send(signal.SIGHUP)  # the new image gets it as systemd's too
        proc.send(signal.SIGTERM)
        assert proc.wait_exit() == 0
        # The socket unit owns the file: the server neither removed it, nor took it over.
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
