"""A Net::Server daemon's conf file runs a real gnetserver daemon unchanged (issue 4, point 1).

tests/data/netserver_daemon.conf is written the way a Perl Net::Server operator writes one for a
TLS daemon: ``key value`` and ``key = value`` lines, ``#`` comments (also after a value),
repeated ``port``/``allow`` lines, IO::Socket::SSL option names, and the operator lines: log
file, log level, syslog_ident, pid file, setsid/background, user/group, allow/deny/cidr rules.

The test copies it under a temporary directory with its placeholders filled in, starts
``gnetserver --conf_file that.conf`` (the parent exits at once, the daemon goes on), finds the
daemon through its pid file and its ports through the log file, talks TLS (and plain TCP) to
it, checks the log, the session and (as root) the user it runs as, and that a denied address
gets no TLS session; then TERM: the process ends, its pid file is removed, its ports close.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.net import read_line, wait_until
from support.process import REPO, Where, alive, parse_ready, python_env, read_pid
from support.sigserver import refused

pytestmark = pytest.mark.timeout(30)

CONF = Path(__file__).resolve().parent.parent / "data" / "netserver_daemon.conf"
IS_ROOT = os.geteuid() == 0
DENIED_SOURCE = "127.0.0.66"  # the conf file's "deny ^127\.0\.0\.66$"


def account(user: str, group: str) -> tuple[int, int] | None:
    """(uid, gid) of the conf file's user and group, or None when this machine lacks one."""
    try:
        return pwd.getpwnam(user).pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        return None


NOBODY = account("nobody", "nogroup")


def proc_field(pid: int, index: int) -> int:
    """A numeric field of /proc/<pid>/stat after the command name (3: the session id)."""
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[index])


def ids(pid: int) -> dict[str, list[int]]:
    """Uid and Gid (real, effective, saved, fs) of a live process."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid"):
            found[key] = [int(v) for v in value.split()]
    return found


def install_conf(folder: Path, certs: dict[str, str], as_nobody: bool) -> Path:
    """The shipped conf file, placeholders filled; without its user/group lines unless
    ``as_nobody`` (only root may switch user)."""
    values = {**certs, "log_file": str(folder / "server.log"),
              "pid_file": str(folder / "server.pid")}
    text = re.sub(r"@(\w+)@", lambda m: values[m.group(1)], CONF.read_text(encoding="utf-8"))
    if not as_nobody:
        text = re.sub(r"(?m)^(user|group)\s.*$", r"# \g<0>  (not root: left out)", text)
    path = folder / "netserver_daemon.conf"
    path.write_text(text, encoding="utf-8")
    return path


def gnetserver_command() -> list[str]:
    """The installed ``gnetserver`` script, else ``python -m gnetserver``."""
    script = shutil.which("gnetserver")
    return [script] if script else [sys.executable, "-m", "gnetserver"]


@pytest.fixture
def folder() -> Iterator[Path]:
    """A directory the daemon may write in even as nobody (tmp_path's parents are private)."""
    path = Path(tempfile.mkdtemp(prefix="gns-daemon-"))
    if IS_ROOT and NOBODY is not None:
        os.chown(path, *NOBODY)  # the daemon removes its pid file as nobody
    yield path
    shutil.rmtree(path, ignore_errors=True)


def start_daemon(conf: Path, folder: Path, daemons: list[int]) -> tuple[int, str]:
    """``gnetserver --conf_file conf``: the parent must exit 0 at once; returns the daemon's pid
    (from the pid file) and the log once the daemon is ready."""
    with open(folder / "err.txt", "wb") as err:  # files: the daemon holds no pipe of ours
        parent = subprocess.Popen([*gnetserver_command(), "--conf_file", str(conf)],
                                  cwd=folder, env=python_env(REPO), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        assert parent.wait(20) == 0, (folder / "err.txt").read_text()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(5)
    pid_file, log_file = folder / "server.pid", folder / "server.log"
    pid = wait_until(lambda: read_pid(pid_file), 10, "the pid file")
    daemons.append(pid)
    assert pid != parent.pid

    def ready() -> str | None:
        assert alive(pid), log_file.read_text() if log_file.exists() else "no log file"
        text = log_file.read_text()
        return text if "Server ready" in text else None

    return pid, wait_until(ready, 10, "Server ready in the log file")


def echo(conn: socket.socket, text: str) -> tuple[bytes, bytes]:
    """Net::Server's echo: the welcome line and the answer to ``text``; then ``quit``."""
    welcome = read_line(conn)
    conn.sendall(f"{text}\r\nquit\r\n".encode())
    return welcome, read_line(conn)


def tls_to(where: Where, context: ssl.SSLContext, source: str = "127.0.0.1") -> ssl.SSLSocket:
    """A verified TLS connection from the loopback address ``source``."""
    raw = socket.create_connection(where[:2], timeout=5, source_address=(source, 0))
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


@pytest.mark.parametrize("as_nobody", [
    pytest.param(True, id="as-nobody", marks=pytest.mark.skipif(
        not IS_ROOT or NOBODY is None,
        reason="user/group lines need root and a nobody user with a nogroup group")),
    pytest.param(False, id="as-starting-user"),
])
def test_netserver_daemon_conf_runs_a_tls_daemon(
        folder: Path, certs: dict[str, str], client_context: ssl.SSLContext,
        daemons: list[int], as_nobody: bool) -> None:
    conf = install_conf(folder, certs, as_nobody)
    pid, log = start_daemon(conf, folder, daemons)
    assert re.search(rf"starting! pid\({pid}\)", log) and "Process Backgrounded" in log
    ready = re.search(r"Server ready: (.*)$", log, re.M)
    assert ready is not None
    ssl_port, tcp_port = parse_ready(ready.group(1))
    assert (ssl_port[0], ssl_port[2], tcp_port[0], tcp_port[2]) == (
        "127.0.0.1", "ssl", "127.0.0.1", "tcp")
    assert proc_field(pid, 3) == pid  # setsid: the daemon leads its own session

    with tls_to(ssl_port, client_context) as conn:
        assert conn.version() in ("TLSv1.2", "TLSv1.3")  # SSL_version: nothing older
        welcome, answer = echo(conn, "hello over TLS")
    assert welcome.startswith(f'Welcome to "DemoServer" ({pid})'.encode())
    assert answer == f'DemoServer:{pid}: You said "hello over TLS"\r\n'.encode()
    with socket.create_connection(tcp_port[:2], timeout=5) as conn:
        assert echo(conn, "plain")[1].endswith(b'You said "plain"\r\n')
    log_file = folder / "server.log"
    wait_until(lambda: re.search(r'CONNECT SSL Peer: "\[127\.0\.0\.1\]:\d+" Local: '
                                 rf'"\[127\.0\.0\.1\]:{ssl_port[1]}"', log_file.read_text()),
               5, "the CONNECT line in the log file")

    # deny wins over allow and cidr_allow, and costs no TLS handshake.
    with pytest.raises((ssl.SSLError, OSError)):
        tls_to(ssl_port, client_context, source=DENIED_SOURCE).close()
    wait_until(lambda: f"Denied [{DENIED_SOURCE}]:" in log_file.read_text(), 5,
               "the Denied line in the log file")

    if as_nobody:
        assert NOBODY is not None
        uid, gid = NOBODY
        status = ids(pid)
        assert status["Uid"] == [uid] * 4 and status["Gid"] == [gid] * 4
        # issue 16 point 6: the log file is handed over, the pid file stays root's
        assert (os.stat(log_file).st_uid, os.stat(folder / "server.pid").st_uid) == (uid, 0)
    else:
        assert ids(pid)["Uid"][1] == os.geteuid()

    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), 10, f"daemon {pid} to exit after TERM")
    assert not (folder / "server.pid").exists()
    assert refused(ssl_port) and refused(tcp_port)
    assert "Received a SIG TERM: stopping now" in log_file.read_text()
