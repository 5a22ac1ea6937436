"""Files opened as root and privilege edge cases (issue 16, points 1, 2, 6 and 10).

Each test reproduces an attack of the issue's review: a service user that owns the log or pid
directory plants a symbolic link (before the start, or in the gap between creating the files
and handing them over), a pid file that is a link or a FIFO, a bare numeric ``user`` unknown to
passwd, ``user`` on a non-root start, ``chroot`` without ``user``. The root ones run real
``python -m gnetserver`` subprocesses that switch to ``nobody`` (or to a uid without a passwd
entry) and look at /proc/<pid>/status and at the files afterwards; they skip without root.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.net import poll
from support.process import REPO, end, process_ids, python_env

from gnetserver import ConfigError, GServer
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(40)

IS_ROOT = os.geteuid() == 0
SUPPORT = REPO / "tests"
SECRET = "root:$6$secret-hash:19000:0:99999:7:::\n"


def _nobody() -> tuple[int, int] | None:
    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        return None
    for name in ("nogroup", "nobody"):
        try:
            return uid, grp.getgrnam(name).gr_gid
        except KeyError:
            continue
    return None


NOBODY = _nobody()
as_root = pytest.mark.skipif(not IS_ROOT or NOBODY is None,
                             reason="needs root and a 'nobody' user and group")


def unknown_uid() -> int:
    """A uid without a passwd entry (and no group of that number either)."""
    for uid in range(47110, 60000):
        try:
            pwd.getpwuid(uid)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(uid)
        except KeyError:
            return uid
    pytest.skip("no free uid in 47110-59999")


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    """A root-only file (0600, owned by whoever runs the tests) that an attack aims at."""
    path = tmp_path / "shadow"
    path.write_text(SECRET)
    path.chmod(0o600)
    return path


def untouched(path: Path) -> None:
    """The attacked file kept its owner, mode and content."""
    info = path.lstat()
    assert (info.st_uid, info.st_gid) == (os.geteuid(), os.getegid()), "chowned"
    assert stat.S_IMODE(info.st_mode) == 0o600, "mode changed"
    assert path.read_text() == SECRET, "written to"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory owned by the service user (as the issue's attacker has one)."""
    folder = Path(tempfile.mkdtemp(prefix="gns-harden-"))
    if IS_ROOT and NOBODY is not None:
        os.chown(folder, *NOBODY)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def root_dir() -> Iterator[Path]:
    """A directory only root writes and everybody may enter (where a pid file belongs)."""
    folder = Path(tempfile.mkdtemp(prefix="gns-root-"))
    os.chmod(folder, 0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


class Started:
    """One ``python -m gnetserver`` subprocess; stderr goes to ``folder/err.txt``."""

    def __init__(self, args: list[str], folder: Path, env: dict[str, str] | None = None,
                 preamble: str = "") -> None:
        self.folder = folder
        code = (f"import sys; sys.argv = ['gnetserver', *{args!r}]; {preamble}\n"
                "from gnetserver.__main__ import main; sys.exit(main())")
        with open(folder / "err.txt", "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", code], cwd=folder,
                env={**python_env(REPO, SUPPORT, inherit=False), **(env or {})},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def output(self) -> str:
        """err.txt and every *.log* file of the folder (stderr follows the log file)."""
        texts = []
        for path in sorted(self.folder.iterdir()):
            if path.name == "err.txt" or (".log" in path.name and not path.is_symlink()):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def outcome(self) -> str:
        """"exit N: output" once it exited, or "ready: output" once it serves (bounded)."""
        def settled() -> str | None:
            if self.proc.poll() is not None:
                return f"exit {self.proc.returncode}: {self.output()}"
            text = self.output()
            return f"ready: {text}" if "Server ready" in text else None

        found = poll(settled, 20)
        assert found, f"neither exited nor ready: {self.output()}"
        return str(found)

    def stop(self) -> None:
        end(self.proc, 10)


@pytest.fixture
def start() -> Iterator[Callable[..., Started]]:
    started: list[Started] = []

    def run(*args: str, folder: Path, **kwargs: Any) -> Started:
        server = Started(list(args), folder, **kwargs)
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()


def run_in_thread(**options: Any) -> GServer:
    server = GServer(port="127.0.0.1:0/tcp", **options)
    ServerThread(server).start().stop()
    return server


# -- point 1: the log file is opened with O_NOFOLLOW, descriptors are fchowned ----------------


def test_a_log_file_that_is_a_symlink_stops_the_start(tmp_path: Path, secret: Path) -> None:
    log_file = tmp_path / "server.log"
    log_file.symlink_to(secret)
    with pytest.raises(ConfigError, match=r"'log_file'.*server\.log.*symbolic link"):
        run_in_thread(log_file=str(log_file))
    untouched(secret)


def test_a_log_file_hard_linked_to_another_file_stops_the_start(tmp_path: Path,
                                                                secret: Path) -> None:
    """Where fs.protected_hardlinks is off, a user may hard-link a file it cannot read."""
    log_file = tmp_path / "server.log"
    os.link(secret, log_file)
    with pytest.raises(ConfigError, match=r"'log_file'.*server\.log.*2 hard links"):
        run_in_thread(log_file=str(log_file))
    untouched(secret)


def test_reopen_refuses_a_planted_symlink_and_keeps_the_old_file(tmp_path: Path,
                                                                 secret: Path) -> None:
    log_file, rotated = tmp_path / "server.log", tmp_path / "server.log.1"
    server = GServer(port="127.0.0.1:0/tcp", log_file=str(log_file))
    with ServerThread(server):
        os.rename(log_file, rotated)
        log_file.symlink_to(secret)  # planted between the rotation and the HUP
        server.reopen_logs()
        server.log(2, "after the reopen")
    untouched(secret)
    text = rotated.read_text()
    assert "Couldn't reopen the log" in text and "symbolic link" in text
    assert "after the reopen" in text


@as_root
def test_root_start_does_not_follow_a_planted_log_symlink(shared_dir: Path, secret: Path,
                                                          start: Any) -> None:
    """The issue's probe: a root-owned 0600 file reached through a link the service user
    planted in its log directory keeps its owner and its content."""
    log_file = shared_dir / "server.log"
    log_file.symlink_to(secret)
    assert NOBODY is not None
    os.lchown(log_file, *NOBODY)
    server = start("--port", "127.0.0.1:0/tcp", "--user", "nobody", "--log_file",
                   str(log_file), folder=shared_dir)
    result = server.outcome()
    untouched(secret)
    assert result.startswith("exit 2") and "symbolic link" in result, result


@as_root
def test_files_swapped_for_symlinks_before_the_hand_over(shared_dir: Path, secret: Path,
                                                         start: Any) -> None:
    """The gap between creating the files as root and handing them over: a process running
    as the service user swaps the log and pid files for links to a root file. The log
    descriptor is fchowned, the pid file is not handed over at all: the target is intact."""
    log_file, pid_file = shared_dir / "server.log", shared_dir / "server.pid"
    assert NOBODY is not None
    pairs = f"{log_file}=>{secret};{pid_file}=>{secret}"
    server = start("--server", "support.swap_server:SwapServer", "--port", "127.0.0.1:0/tcp",
                   "--user", "nobody", "--log_file", str(log_file), "--pid_file",
                   str(pid_file), folder=shared_dir,
                   env={"GNS_SWAP": pairs, "GNS_SWAP_UID": str(NOBODY[0]),
                        "GNS_SWAP_GID": str(NOBODY[1])})
    result = server.outcome()
    untouched(secret)
    assert result.startswith("ready") and "Swapped the files" in result, result
    moved = Path(f"{log_file}.orig")  # the server's own log file, renamed by the attacker
    assert (moved.stat().st_uid, moved.stat().st_gid) == NOBODY
    assert process_ids(server.proc.pid)["Uid"] == [NOBODY[0]] * 4


@as_root
def test_a_unix_socket_swapped_for_a_symlink_is_not_followed(shared_dir: Path, secret: Path,
                                                             start: Any) -> None:
    sock_path = shared_dir / "echo.sock"
    assert NOBODY is not None
    server = start("--server", "support.swap_server:SwapServer", "--port",
                   f"{sock_path}|unix", "--user", "nobody", folder=shared_dir,
                   env={"GNS_SWAP": f"{sock_path}=>{secret}", "GNS_SWAP_UID": str(NOBODY[0]),
                        "GNS_SWAP_GID": str(NOBODY[1])})
    result = server.outcome()
    untouched(secret)
    assert result.startswith("exit 2") and "echo.sock" in result and "socket" in result, result


@as_root
def test_the_hand_over_as_root_keeps_the_pid_file_root_owned(shared_dir: Path,
                                                             start: Any) -> None:
    """Point 6: the service user must not own the file root's ``kill $(cat pidfile)`` reads;
    the log file and the unix socket are handed over (fchown, lchown)."""
    log_file, pid_file = shared_dir / "server.log", shared_dir / "server.pid"
    sock_path = shared_dir / "echo.sock"
    server = start("--port", "127.0.0.1:0/tcp", "--port", f"{sock_path}|unix", "--user",
                   "nobody", "--log_file", str(log_file), "--pid_file", str(pid_file),
                   folder=shared_dir)
    result = server.outcome()
    assert result.startswith("ready"), result
    assert (pid_file.stat().st_uid, pid_file.stat().st_gid) == (0, 0)
    for path in (log_file, sock_path):
        assert (path.lstat().st_uid, path.lstat().st_gid) == NOBODY, path
    with socket.socket(socket.AF_UNIX) as client:
        client.settimeout(5)
        client.connect(str(sock_path))
        assert client.makefile("rb").readline().startswith(b"Welcome")
    server.stop()
    assert server.proc.returncode == 0
    assert not pid_file.exists()  # the directory is the user's: it may still remove it


# -- point 6: the pid-file check -------------------------------------------------------------


def test_a_pid_file_that_is_a_symlink_is_refused_without_quoting_it(tmp_path: Path,
                                                                    secret: Path) -> None:
    pid_file = tmp_path / "server.pid"
    pid_file.symlink_to(secret)
    with pytest.raises(ConfigError, match=r"'pid_file'.*server\.pid.*symbolic link") as info:
        run_in_thread(pid_file=str(pid_file))
    assert "secret-hash" not in str(info.value) and "$6$" not in str(info.value)
    assert pid_file.is_symlink()
    untouched(secret)


def test_pid_file_contents_are_never_quoted(tmp_path: Path) -> None:
    pid_file = tmp_path / "server.pid"
    pid_file.write_text(SECRET)
    with pytest.raises(ConfigError, match=r"'pid_file'.*holds no pid") as info:
        run_in_thread(pid_file=str(pid_file))
    assert "secret-hash" not in str(info.value) and "$6$" not in str(info.value)


def test_a_pid_file_that_is_a_fifo_is_refused_at_once(tmp_path: Path) -> None:
    """Opening a FIFO for reading would wait for a writer forever."""
    pid_file = tmp_path / "server.pid"
    os.mkfifo(pid_file)
    with pytest.raises(ConfigError, match=r"'pid_file'.*server\.pid.*not a regular file"):
        run_in_thread(pid_file=str(pid_file))


# -- point 2: a bare numeric user unknown to passwd ------------------------------------------


@as_root
def test_a_numeric_user_without_passwd_entry_needs_a_group(tmp_path: Path, start: Any) -> None:
    """Before: the server ran with Gid 0 and Groups 0 behind the unprivileged uid."""
    uid = unknown_uid()
    server = start("--port", "127.0.0.1:0/tcp", "--user", str(uid), folder=tmp_path)
    result = server.outcome()
    if result.startswith("ready"):
        pytest.fail(f"started with {process_ids(server.proc.pid)}")
    assert result.startswith("exit 2"), result
    assert "'user'" in result and f"{uid}" in result and "'group'" in result, result


@as_root
def test_a_numeric_user_with_a_numeric_group_runs_with_that_gid(tmp_path: Path,
                                                                start: Any) -> None:
    uid = unknown_uid()
    server = start("--port", "127.0.0.1:0/tcp", "--user", str(uid), "--group", str(uid),
                   folder=tmp_path)
    result = server.outcome()
    assert result.startswith("ready"), result
    status = process_ids(server.proc.pid)
    assert status["Uid"] == [uid] * 4 and status["Gid"] == [uid] * 4
    assert status["Groups"] == [uid]


# -- point 10: user without root, chroot without user ----------------------------------------


def _drop_to_nobody() -> str:
    """Code run in the subprocess before main(): become nobody (when root), after importing
    what the server needs (the interpreter may live where nobody cannot read)."""
    if not IS_ROOT:
        return ""
    assert NOBODY is not None
    return ("import gnetserver.__main__, gnetserver.privileges, os; "
            "gnetserver.privileges.prepare(); os.setgroups([]); "
            f"os.setgid({NOBODY[1]}); os.setuid({NOBODY[0]})")


def test_user_on_a_non_root_start_stops_it(shared_dir: Path, start: Any) -> None:
    """Before: "Couldn't switch user" was logged and the server went on as the starting user."""
    if IS_ROOT and NOBODY is None:
        pytest.skip("no 'nobody' user to start as")
    server = start("--port", "127.0.0.1:0/tcp", "--user", "root", folder=shared_dir,
                   preamble=_drop_to_nobody())
    result = server.outcome()
    assert result.startswith("exit 2"), result
    assert "'user'" in result and "root" in result, result


def test_user_naming_the_current_user_on_a_non_root_start_is_fine(shared_dir: Path,
                                                                  start: Any) -> None:
    if IS_ROOT and NOBODY is None:
        pytest.skip("no 'nobody' user to start as")
    me = str(NOBODY[0]) if IS_ROOT and NOBODY is not None else str(os.geteuid())
    server = start("--port", "127.0.0.1:0/tcp", "--user", me, folder=shared_dir,
                   preamble=_drop_to_nobody())
    assert server.outcome().startswith("ready")


@as_root
def test_chroot_without_user_stops_the_start(shared_dir: Path, start: Any) -> None:
    """Before: the server ran as uid 0 inside the jail (root can leave a chroot)."""
    server = start("--port", "127.0.0.1:0/tcp", "--chroot", str(shared_dir),
                   folder=shared_dir)
    result = server.outcome()
    if result.startswith("ready"):
        pytest.fail(f"started in the jail with {process_ids(server.proc.pid)['Uid']}")
    assert result.startswith("exit 2"), result
    assert "'chroot'" in result and "'user'" in result and "chroot_as_root" in result, result


@as_root
def test_chroot_as_root_is_an_explicit_opt_in(shared_dir: Path, start: Any) -> None:
    server = start("--port", "127.0.0.1:0/tcp", "--chroot", str(shared_dir),
                   "--chroot_as_root", folder=shared_dir)
    result = server.outcome()
    assert result.startswith("ready"), result
    assert os.readlink(f"/proc/{server.proc.pid}/root") == str(shared_dir)
    assert process_ids(server.proc.pid)["Uid"] == [0] * 4
    assert poll(lambda: "root inside the chroot" in server.output(), 5), server.output()


@as_root
def test_the_re_executed_server_keeps_roots_pid_file(root_dir: Path) -> None:
    """After a HUP re-exec the server runs as the service user and finds root's pid file
    holding its own pid: it leaves the file as it is (it could not rewrite it) and starts."""
    assert NOBODY is not None
    path = root_dir / "server.pid"
    go_read, go_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the "re-executed" server: same pid as the file's, now the service user
        try:
            os.close(go_write)
            os.read(go_read, 1)
            os.setgid(NOBODY[1])
            os.setuid(NOBODY[0])
            from gnetserver.daemon import PidFile
            pid_file = PidFile(str(path))
            pid_file.write()
            os._exit(0 if pid_file.written and pid_file.check() is None else 1)
        except BaseException:
            os._exit(2)
    os.close(go_read)
    path.write_text(f"{pid}\n")  # root's file, 0644, as the first start left it
    os.chmod(path, 0o644)
    os.write(go_write, b"x")
    os.close(go_write)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert path.read_text() == f"{pid}\n" and path.stat().st_uid == 0


# -- point 1, every component: a directory on the way swapped for a link ---------------------


def foreign_link(link: Path, target: Path) -> None:
    """The attack on a directory of the path: ``link`` (in the service user's directory)
    is a symbolic link to ``target`` (root's), owned by the service user who planted it."""
    link.symlink_to(target)
    assert NOBODY is not None
    os.lchown(link, *NOBODY)


@as_root
def test_a_log_directory_swapped_for_a_link_stops_the_start(shared_dir: Path, secret: Path,
                                                            start: Any) -> None:
    """The reviewer's probe: the service user owns the log directory and swaps the
    subdirectory of the log file for a link to root's directory holding a file of the same
    name; root must neither append to that file nor hand it over."""
    foreign_link(shared_dir / "sub", secret.parent)
    server = start("--port", "127.0.0.1:0/tcp", "--user", "nobody", "--log_file",
                   str(shared_dir / "sub" / secret.name), folder=shared_dir)
    result = server.outcome()
    untouched(secret)
    assert result.startswith("exit 2"), result
    assert "'log_file'" in result and f"{shared_dir / 'sub'}" in result, result
    assert "symbolic link owned by uid" in result and "nobody" in result, result


@as_root
def test_a_pid_directory_swapped_for_a_link_creates_nothing(shared_dir: Path, root_dir: Path,
                                                            secret: Path) -> None:
    foreign_link(shared_dir / "sub", root_dir)
    with pytest.raises(ConfigError, match=r"'pid_file'.*sub.*symbolic link owned by uid"):
        run_in_thread(pid_file=str(shared_dir / "sub" / "server.pid"))
    assert list(root_dir.iterdir()) == []


@as_root
def test_a_pid_directory_swapped_for_a_link_removes_no_stale_file(shared_dir: Path,
                                                                  root_dir: Path) -> None:
    """A stale pid file (a dead pid) is removed before the start: through the link it would
    be root's file in root's directory."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    root_file = root_dir / "server.pid"
    root_file.write_text(f"{dead.pid}\n")
    root_file.chmod(0o600)
    foreign_link(shared_dir / "sub", root_dir)
    with pytest.raises(ConfigError, match=r"'pid_file'.*sub.*symbolic link owned by uid"):
        run_in_thread(pid_file=str(shared_dir / "sub" / "server.pid"))
    assert root_file.read_text() == f"{dead.pid}\n"
    assert stat.S_IMODE(root_file.stat().st_mode) == 0o600


@as_root
def test_reopen_refuses_a_log_directory_swapped_for_a_link(shared_dir: Path,
                                                           secret: Path) -> None:
    """After logrotate the directory is swapped before the HUP: the old file stays in use."""
    sub = shared_dir / "sub"
    sub.mkdir()
    log_file = sub / secret.name
    server = GServer(port="127.0.0.1:0/tcp", log_file=str(log_file))
    with ServerThread(server):
        sub.rename(shared_dir / "sub.1")
        foreign_link(sub, secret.parent)
        server.reopen_logs()
        server.log(2, "after the reopen")
    untouched(secret)
    text = (shared_dir / "sub.1" / secret.name).read_text()
    assert "Couldn't reopen the log" in text and "symbolic link owned by uid" in text, text
    assert "after the reopen" in text


def test_links_of_root_or_of_the_server_are_followed(root_dir: Path) -> None:
    """Root's own links (``/var/run -> /run``) keep working: a relative and an absolute link
    to a directory, made by whoever runs the server, lead to the log and the pid file."""
    real = root_dir / "real"
    real.mkdir()
    (root_dir / "rel").symlink_to("real")
    (root_dir / "abs").symlink_to(real)
    log_file, pid_file = root_dir / "rel" / "server.log", root_dir / "abs" / "server.pid"
    server = GServer(port="127.0.0.1:0/tcp", log_file=str(log_file), pid_file=str(pid_file))
    with ServerThread(server):
        assert (real / "server.pid").read_text() == f"{os.getpid()}\n"
    assert "Server closing" in (real / "server.log").read_text()
    assert not (real / "server.pid").exists()  # removed through the link too


def test_a_hard_linked_copy_of_roots_link_is_refused(tmp_path: Path, root_dir: Path) -> None:
    """Where fs.protected_hardlinks is off, anyone may hard-link root's own link (say
    ``/var/run -> /run``) into a directory of theirs: the copy is owned by root too."""
    (root_dir / "run").symlink_to(root_dir)
    os.link(root_dir / "run", tmp_path / "sub", follow_symlinks=False)
    with pytest.raises(ConfigError, match=r"'log_file'.*sub.*2 hard links"):
        run_in_thread(log_file=str(tmp_path / "sub" / "server.log"))
    assert sorted(p.name for p in root_dir.iterdir()) == ["run"]


def test_a_link_loop_on_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").symlink_to("b")
    (tmp_path / "b").symlink_to("a")
    with pytest.raises(ConfigError, match=r"'log_file'.*more than 40 symbolic links"):
        run_in_thread(log_file=str(tmp_path / "a" / "server.log"))


def test_log_file_dev_stdout_writes_to_stdout(tmp_path: Path) -> None:
    """``/dev/stdout`` (a root link to ``/proc/self/fd/1``, here a pipe) is a log file."""
    code = ("import sys; sys.argv = ['gnetserver', '--port', '127.0.0.1:0/tcp', "
            "'--log_file', '/dev/stdout']\n"
            "from gnetserver.__main__ import main; sys.exit(main())")
    with open(tmp_path / "err.txt", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path,
                                env=python_env(REPO, SUPPORT, inherit=False),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err)
    assert proc.stdout is not None
    os.set_blocking(proc.stdout.fileno(), False)
    seen = bytearray()

    def ready() -> bool:
        try:
            seen.extend(os.read(proc.stdout.fileno(), 65536) or b"")  # type: ignore[union-attr]
        except BlockingIOError:
            pass
        return b"Server ready" in seen or proc.poll() is not None

    try:
        assert poll(ready, 20), seen
        assert b"Server ready" in seen, (seen, (tmp_path / "err.txt").read_text())
    finally:
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=10)
    assert proc.returncode == 0
    assert b"Server closing" in seen + rest
    assert (tmp_path / "err.txt").read_text() == ""


def test_log_file_dev_stdout_to_a_regular_file_is_refused(tmp_path: Path) -> None:
    """Through a link, only a tty, a pipe or a device: a regular file would be root's to
    append to whatever the link names (name the file itself instead)."""
    code = ("import sys; sys.argv = ['gnetserver', '--port', '127.0.0.1:0/tcp', "
            "'--log_file', '/dev/stdout']\n"
            "from gnetserver.__main__ import main; sys.exit(main())")
    with open(tmp_path / "out.txt", "wb") as out, open(tmp_path / "err.txt", "wb") as err:
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, timeout=20,
                              env=python_env(REPO, SUPPORT, inherit=False),
                              stdin=subprocess.DEVNULL, stdout=out, stderr=err)
    err_text = (tmp_path / "err.txt").read_text()
    assert done.returncode == 2, err_text
    assert "'/dev/stdout'" in err_text and "symbolic link to a regular file" in err_text
    assert (tmp_path / "out.txt").read_text() == ""
