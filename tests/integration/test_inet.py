"""inetd mode, ``server_type INET`` (issue 12), under the real super-servers: systemd's
``systemd-socket-activate --accept`` (the connection on stdin with ``--inetd``, as inetd and
``StandardInput=socket`` units give it; on fd 3 with ``LISTEN_FDS=1`` without, as an
``Accept=yes`` unit gives it) and ``socat ... EXEC:`` (a socketpair on stdin/stdout: no peer
address), plain and TLS. Each accepted connection runs one server process, which serves it
and exits."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.net import free_port, read_line, read_until_eof
from support.process import REPO, ServerProcess, python_env
from support.tls import unverified

pytestmark = [
    pytest.mark.timeout(40),
    pytest.mark.skipif(shutil.which("systemd-socket-activate") is None
                       or shutil.which("socat") is None,
                       reason="systemd-socket-activate or socat missing (.ci/run installs them)"),
]

#: The server each connection runs: Net::Server's echo, or with ``tie`` the same through
#: print()/input() (tie_client_stdout), Net::Server::INET's STDIN/STDOUT style.
SERVER = """
import sys
from gnetserver import GServer

class Tied(GServer):
    def process_request(self, client):
        line = input()
        print(f"tied {line} from {client.peeraddr}")

cls = Tied if "tie" in sys.argv[1:2] else GServer
cls(commandline=sys.argv[2:]).run()
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "inet_server.py"
    path.write_text(SERVER, encoding="utf-8")
    return path


def activate(spawn: Callable[..., ServerProcess], port: int, *argv: str,
             inetd: bool = True) -> ServerProcess:
    command = ["systemd-socket-activate", "--accept", *(["--inetd"] if inetd else []),
               f"-l127.0.0.1:{port}", "-E", "PYTHONPATH", sys.executable, *argv]
    proc: ServerProcess = spawn(command, env=python_env(REPO), cwd=REPO, terminate=True)
    proc.wait_for(f"Listening on 127.0.0.1:{port} as ")
    return proc


def echo(sock: socket.socket | ssl.SSLSocket) -> bytes:
    assert read_line(sock).startswith(b'Welcome to "GServer"')
    sock.sendall(b"hello\r\nquit\r\n")
    return read_until_eof(sock)


@pytest.mark.parametrize("inetd", [True, False], ids=["stdin", "fd3"])
def test_inet_serves_one_connection_per_process_under_systemd(
        spawn: Callable[..., ServerProcess], script: Path, inetd: bool) -> None:
    port = free_port()
    proc = activate(spawn, port, str(script), "plain", "--server_type", "INET",
                    "--log_level", "3", inetd=inetd)
    pids = set()
    for _ in range(2):  # each connection: a process of its own, which exits after it
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            answer = echo(sock)
            local = sock.getsockname()
        assert b'You said "hello"' in answer and b'You said "quit"' in answer
        proc.wait_for(rf'CONNECT TCP Peer: "\[127\.0\.0\.1\]:{local[1]}" '
                      rf'Local: "\[127\.0\.0\.1\]:{port}"')
        pids.add(answer.split(b":")[1])
    assert len(pids) == 2
    proc.wait_for(r"died with code 0", count=2)
    assert "Binding to" not in proc.log and "Port Not Defined" not in proc.log


def test_inet_tls_under_socat_with_the_client_on_stdout(
        spawn: Callable[..., ServerProcess], script: Path,
        pem_files: dict[str, str]) -> None:
    port = free_port()
    server = (f"{sys.executable} {script} tie --server_type INET --proto ssl --log_level 3 "
              f"--tie_client_stdout 1 --SSL_cert_file {pem_files['SSL_cert_file']} "
              f"--SSL_key_file {pem_files['SSL_key_file']}")
    proc: ServerProcess = spawn(
        ["socat", "-d", "-d", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
         f"EXEC:{server}"], env=python_env(REPO), cwd=REPO, terminate=True)
    proc.wait_for("listening on")
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    with unverified().wrap_socket(raw) as sock:
        assert sock.version() in ("TLSv1.2", "TLSv1.3")
        sock.sendall(b"ping\n")
        assert read_until_eof(sock) == b"tied ping from 0.0.0.0\n"  # a socketpair: no peer
    proc.wait_for(r'CONNECT SSL Peer: "\[0\.0\.0\.0\]:0"')
    proc.wait_for("Server closing!")


def test_inet_refuses_a_stdin_that_is_no_connection(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(script), "plain", "--server_type", "INET"],
        stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30,
        env=python_env(REPO), cwd=REPO)
    assert result.returncode != 0
    assert "server_type INET: standard input is not a socket" in result.stderr
