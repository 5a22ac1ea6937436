"""Privileges (issue 4, point 4): a server started as root binds a port below 1024, then runs
as the named user and group (checked in /proc/<pid>/status of the real process), with the files
it keeps writing handed over first; chroot; unknown names stop the start."""

from __future__ import annotations

import grp
import os
import pwd
import random
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.net import echo_line, wait_until
from support.process import end, gnetserver_to_files, process_ids

from gnetserver import ConfigError, GServer
from gnetserver.privileges import rebase
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(30)

IS_ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(
    not IS_ROOT, reason="needs root: binds a port below 1024, then switches user and group")


def _nobody() -> tuple[str, int, str, int] | None:
    """(user, uid, group, gid) of the unprivileged account, or None when there is none."""
    try:
        user = pwd.getpwnam("nobody")
    except KeyError:
        return None
    for name in ("nogroup", "nobody"):
        try:
            return "nobody", user.pw_uid, name, grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return None


NOBODY = _nobody()
needs_nobody = pytest.mark.skipif(NOBODY is None, reason="no 'nobody' user/group here")


def free_low_port() -> int:
    """A free port in 600-999 on 127.0.0.1 (the server binds it again right after)."""
    for port in random.sample(range(600, 1000), 400):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port in 600-999 on 127.0.0.1")


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the unprivileged server may write in (tmp_path's parents are root-only)."""
    assert NOBODY is not None
    folder = Path(tempfile.mkdtemp(prefix="gnetserver-priv-"))
    os.chown(folder, NOBODY[1], NOBODY[3])
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def run_server() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -m gnetserver`` in the foreground; stopped (TERM, then KILL) at teardown."""
    procs: list[subprocess.Popen[bytes]] = []

    def start(*args: str, folder: Path) -> subprocess.Popen[bytes]:
        proc = gnetserver_to_files(*args, folder=folder)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        end(proc)


def wait_ready(proc: subprocess.Popen[bytes], log_file: Path) -> str:
    def ready() -> str | None:
        assert proc.poll() is None, (log_file.parent / "err.txt").read_text()
        text = log_file.read_text() if log_file.exists() else ""
        return text if "Server ready" in text else None

    return wait_until(ready, what="Server ready")


@needs_root
@needs_nobody
def test_root_binds_a_low_port_then_serves_as_nobody(shared_dir: Path, run_server: Any) -> None:
    assert NOBODY is not None
    user, uid, group, gid = NOBODY
    extra = grp.getgrnam("daemon").gr_gid if _has_group("daemon") else gid
    port, sock_path = free_low_port(), str(shared_dir / "echo.sock")
    log_file, pid_file = shared_dir / "server.log", shared_dir / "server.pid"
    proc = run_server("--port", f"127.0.0.1:{port}/tcp", "--port", f"{sock_path}|unix",
                      "--user", user, "--group", f"{group} {extra}", "--log_file", str(log_file),
                      "--pid_file", str(pid_file), folder=shared_dir)
    text = wait_ready(proc, log_file)
    assert f"Binding to 127.0.0.1:{port}/tcp" in text
    assert text.index("Binding to") < text.index("Setting gid") < text.index("Server ready")
    status = process_ids(proc.pid)
    assert status["Uid"] == [uid] * 4 and status["Gid"] == [gid] * 4
    assert sorted(status["Groups"]) == sorted({gid, extra})
    assert "You said" in echo_line(("127.0.0.1", port))
    assert "You said" in echo_line(sock_path)
    for path in (log_file, Path(sock_path)):  # handed over before the switch
        assert (path.stat().st_uid, path.stat().st_gid) == (uid, gid), path
    # issue 16 point 6: the pid file stays root's (nobody must not aim root's kill at others)
    assert (pid_file.stat().st_uid, pid_file.stat().st_gid) == (0, 0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    # removed as nobody (the directory is nobody's; the file's owner does not matter)
    assert not pid_file.exists() and not os.path.exists(sock_path)


@needs_root
@needs_nobody
def test_numeric_ids_and_chroot(shared_dir: Path, run_server: Any) -> None:
    assert NOBODY is not None
    _, uid, _, gid = NOBODY
    port = free_low_port()
    log_file, pid_file = shared_dir / "server.log", shared_dir / "server.pid"
    proc = run_server("--port", f"127.0.0.1:{port}/tcp", "--user", str(uid), "--group",
                      str(gid), "--chroot", str(shared_dir), "--log_file", str(log_file),
                      "--pid_file", str(pid_file), "--log_level", "3", folder=shared_dir)
    text = wait_ready(proc, log_file)
    assert f"Chrooting to {shared_dir}" in text
    assert os.readlink(f"/proc/{proc.pid}/root") == str(shared_dir)
    assert process_ids(proc.pid)["Uid"] == [uid] * 4 and process_ids(proc.pid)["Groups"] == [gid]
    assert "You said" in echo_line(("127.0.0.1", port))
    wait_until(lambda: "CONNECT TCP" in log_file.read_text(), what="the CONNECT line")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(10) == 0
    assert not pid_file.exists()  # found again inside the chroot and removed


def _has_group(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


@pytest.mark.parametrize(("options", "pattern"), [
    ({"user": "no-such-user-4711"}, r"'user'.*no-such-user-4711"),
    ({"group": "root no-such-group-4711"}, r"'group'.*no-such-group-4711"),
    ({"user": "root", "group": "no-such-group-4711"}, r"'group'.*no-such-group-4711"),
    ({"chroot": "/no/such/dir/4711"}, r"'chroot'.*/no/such/dir/4711"),
])
def test_unknown_names_stop_the_start_before_any_change(options: dict[str, str],
                                                        pattern: str) -> None:
    before = (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups())
    server = GServer(port="127.0.0.1:0/tcp", **options)
    with pytest.raises(ConfigError, match=pattern):
        ServerThread(server).start()
    assert (os.getuid(), os.geteuid(), os.getgid(), os.getegid(), os.getgroups()) == before
    assert server.listeners == [] or all(lst.sock.fileno() == -1 for lst in server.listeners)


def test_rebase_names_files_as_seen_from_the_new_root() -> None:
    assert rebase("/srv/jail/run/x.pid", "/srv/jail") == "/run/x.pid"
    assert rebase("/srv/jail/.x.log", "/srv/jail/") == "/.x.log"
    assert rebase("/srv/jail2/x.pid", "/srv/jail") == "/srv/jail2/x.pid"  # outside: unchanged
