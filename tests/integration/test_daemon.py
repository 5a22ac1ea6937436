"""Daemon mode (issue 4, point 3): pid_file, background, setsid and the standard streams,
checked on real processes (``python -m gnetserver``) found through their pid file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.net import open_stream, wait_until
from support.process import alive, gnetserver_to_files, read_pid

from gnetserver import ConfigError, GServer
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(30)


@dataclass
class Exited:
    """How a ``python -m gnetserver`` process ended: its pid, exit code and stderr."""

    pid: int
    returncode: int
    stderr: str


def gnetserver(*args: str, folder: Path) -> Exited:
    """Run ``python -m gnetserver ARGS`` until it exits (the parent of a daemon exits at once);
    its stdout/stderr go to files so that a daemon child holds no pipe of ours."""
    proc = gnetserver_to_files(*args, folder=folder)
    try:
        returncode = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    return Exited(proc.pid, returncode, (folder / "err.txt").read_text())


def session_of(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[3])


def fd_target(pid: int, fd: int) -> str:
    return os.readlink(f"/proc/{pid}/fd/{fd}")


def welcome(where: Any) -> str:
    with open_stream(where, 5) as sock:
        line = sock.makefile("rb").readline().decode()
        sock.sendall(b"quit\r\n")
        return line


def first_welcome(sock_path: str) -> str | None:
    """The welcome line once the daemon listens: its socket file appears at bind, a moment
    before listen(), and a connect in between is refused."""
    try:
        return welcome(sock_path)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


def stop_daemon(pid: int) -> None:
    os.kill(pid, signal.SIGTERM)
    wait_until(lambda: not alive(pid), what=f"daemon {pid} to exit")


def test_background_daemon(tmp_path: Path, daemons: list[int]) -> None:
    pid_file, log_file = tmp_path / "server.pid", tmp_path / "server.log"
    started = time.monotonic()
    result = gnetserver("--background", "--pid_file", str(pid_file), "--log_file",
                        str(log_file), "--port", "127.0.0.1:0/tcp", folder=tmp_path)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 10  # the parent exits at once
    pid = wait_until(lambda: read_pid(pid_file), what="the pid file")
    daemons.append(pid)
    assert pid != result.pid and alive(pid)
    log = wait_until(
        lambda: re.search(r"Server ready: 127\.0\.0\.1:(\d+)/tcp", log_file.read_text()),
        what="Server ready in the log")
    text = log_file.read_text()
    assert text.index("Process Backgrounded") < text.index(f"starting! pid({pid})")
    assert welcome(("127.0.0.1", int(log.group(1)))).startswith(f'Welcome to "DemoServer" ({pid})')
    # Net::Server's streams with a log_file: stdin/stdout on /dev/null, stderr into the log.
    assert fd_target(pid, 0) == fd_target(pid, 1) == "/dev/null"
    assert fd_target(pid, 2) == str(log_file)
    assert session_of(pid) == os.getsid(0)  # background alone keeps the session
    stop_daemon(pid)
    assert not pid_file.exists()  # removed at exit
    assert "Server closing!" in log_file.read_text()


def test_setsid_daemon_without_log_file(tmp_path: Path, daemons: list[int]) -> None:
    pid_file, sock_path = tmp_path / "server.pid", str(tmp_path / "echo.sock")
    result = gnetserver("--setsid", "--pid_file", str(pid_file), "--port",
                        f"{sock_path}|unix", folder=tmp_path)
    assert result.returncode == 0, result.stderr
    pid = wait_until(lambda: read_pid(pid_file), what="the pid file")
    daemons.append(pid)
    line = wait_until(lambda: first_welcome(sock_path), what="the daemon to listen")
    assert line.startswith(f'Welcome to "DemoServer" ({pid})')
    assert session_of(pid) == pid  # its own session
    assert fd_target(pid, 0) == fd_target(pid, 1) == fd_target(pid, 2) == "/dev/null"
    stop_daemon(pid)
    assert not pid_file.exists() and not os.path.exists(sock_path)


def test_pid_file_of_a_running_process_refuses_the_start(tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(f"{os.getpid()}\n")  # this test's own process: alive, not the server
    result = gnetserver("--pid_file", str(pid_file), "--port", "127.0.0.1:0/tcp",
                        folder=tmp_path)
    assert result.returncode == 2
    assert "pid_file" in result.stderr and str(pid_file) in result.stderr
    assert f"pid {os.getpid()}" in result.stderr
    assert pid_file.read_text() == f"{os.getpid()}\n"  # untouched


def test_stale_pid_file_is_overwritten_with_a_warning(tmp_path: Path, daemons: list[int]) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, timeout=10)
    dead_pid = int(dead.stdout)
    pid_file, log_file = tmp_path / "server.pid", tmp_path / "server.log"
    pid_file.write_text(f"{dead_pid}\n")
    result = gnetserver("--background", "1", "--pid_file", str(pid_file), "--log_file",
                        str(log_file), "--port", "127.0.0.1:0/tcp", folder=tmp_path)
    assert result.returncode == 0, result.stderr
    pid = wait_until(lambda: read_pid(pid_file) if read_pid(pid_file) != dead_pid else None,
                     what="the new pid in the pid file")
    daemons.append(pid)
    wait_until(lambda: "Server ready" in log_file.read_text(), what="Server ready")
    assert (f'Pid_file "{pid_file}" already exists for dead process {dead_pid}.  Overwriting!'
            in log_file.read_text())
    stop_daemon(pid)
    assert not pid_file.exists()


def test_pid_file_is_kept_across_a_hup_restart(tmp_path: Path, daemons: list[int]) -> None:
    pid_file, log_file = tmp_path / "server.pid", tmp_path / "server.log"
    result = gnetserver("--background", "--pid_file", str(pid_file), "--log_file",
                        str(log_file), "--port", "127.0.0.1:0/tcp", folder=tmp_path)
    assert result.returncode == 0, result.stderr
    pid = wait_until(lambda: read_pid(pid_file), what="the pid file")
    daemons.append(pid)
    wait_until(lambda: "Server ready" in log_file.read_text(), what="Server ready")
    os.kill(pid, signal.SIGHUP)
    wait_until(lambda: log_file.read_text().count("Server ready") == 2,
               what="the restarted server")
    assert read_pid(pid_file) == pid and alive(pid)  # same process, same file
    assert "Overwriting" not in log_file.read_text()
    stop_daemon(pid)
    assert not pid_file.exists()


def run_in_thread(**options: Any) -> GServer:
    server = GServer(port="127.0.0.1:0/tcp", **options)
    ServerThread(server).start().stop()
    return server


def test_keep_pid_file_keeps_it_and_an_own_pid_is_accepted(tmp_path: Path) -> None:
    """What a HUP re-exec relies on: the old image keeps the file, the new one (same pid)
    accepts a file holding its own pid and removes it when it finally closes."""
    pid_file = tmp_path / "server.pid"
    server = GServer(port="127.0.0.1:0/tcp", pid_file=str(pid_file))
    server.keep_pid_file = True
    thread = ServerThread(server).start()
    assert read_pid(pid_file) == os.getpid()
    thread.stop()
    assert read_pid(pid_file) == os.getpid()  # kept
    run_in_thread(pid_file=str(pid_file))
    assert not pid_file.exists()


@pytest.mark.parametrize(("content", "pattern"), [
    ("not a pid\n", r"holds no pid"),
    ("", r"holds no pid"),  # empty and fresh: another server may be writing it
])
def test_unreadable_pid_file_refuses_the_start(tmp_path: Path, content: str,
                                               pattern: str) -> None:
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(content)
    with pytest.raises(ConfigError, match=rf"'pid_file'.*server\.pid.*{pattern}"):
        run_in_thread(pid_file=str(pid_file))
    assert pid_file.read_text() == content


def test_background_needs_the_main_thread(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"'background'/'setsid'.*main thread"):
        run_in_thread(background=True, pid_file=str(tmp_path / "x.pid"))
    assert not (tmp_path / "x.pid").exists()
