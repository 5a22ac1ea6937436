"""Daemon mode as Net::Server does it: the pid file, background/setsid, the standard streams.

Rules of this module:

* Everything here runs in ``post_configure``, before any port is bound, in this order:
  check the pid file (a live owner stops the start), point stdin/stdout at /dev/null, fork
  (the parent exits 0), ``setsid``, point stderr at the log file (or /dev/null), write the pid
  file. Forking before binding is what Net::Server does, whatever its POD says.
* A pid file is only ever removed by the process whose pid it holds, so a second server that
  failed to start never deletes the first one's file.
* After a HUP re-exec (``BOUND_SOCKETS`` in the environment, see
  :func:`gnetserver.restart.reexecuted`) the process is already a daemon: no fork, no setsid,
  and a pid file holding its own pid is simply rewritten.
* Files that root opens by a name others may control (the pid file, the log file:
  :func:`open_no_follow`) are opened with ``O_NOFOLLOW``: a path whose last component is a
  symbolic link is refused, so a service user owning the directory cannot point root at
  another file. The pid file is read without waiting (a FIFO is refused, not waited on) and its
  contents are never quoted in a message (it may be a link to any file).
* The pid file stays owned by whoever wrote it (root when the server starts as root): it is
  never handed to ``user``, so the service user cannot point root's ``kill $(cat pidfile)``
  at another process (:mod:`gnetserver.privileges`).
* Whatever points a standard stream elsewhere (or forks, or execs: :mod:`gnetserver.restart`)
  first flushes Python's buffers with :func:`flush_std_streams`, so nothing written before
  lands in the wrong place or twice.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import sys
import time
from dataclasses import dataclass

from .errors import ConfigError

#: Net::Server treats an empty pid file older than 0.01 day as stale (a crash while writing).
EMPTY_PID_FILE_GRACE = 864.0

_PID = re.compile(r"\s*(\d{1,10})\b")


def open_no_follow(path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` that never follows a symbolic link in the last component of ``path``
    (``O_NOFOLLOW``) and never waits on a FIFO (opened ``O_NONBLOCK``, then made blocking
    again); close-on-exec. Returns the descriptor.

    Raises:
        OSError: as os.open; for a symbolic link, ELOOP with the text "is a symbolic link
            (refused: ...)" and the path.
    """
    flags |= os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP and os.path.islink(path):
            raise OSError(errno.ELOOP, "is a symbolic link (refused: root would follow it to "
                          "whatever file it names)", path) from None
        raise
    os.set_blocking(fd, True)
    return fd


def process_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class PidFile:
    """The ``pid_file`` of a server.

    Attributes:
        path: absolute path (taken at start, so a later chdir or chroot cannot move it).
        written: True once this process wrote its pid there, until it removed the file.
    """

    path: str
    written: bool = False

    @classmethod
    def from_option(cls, value: str) -> PidFile:
        """The pid file the ``pid_file`` option names (made absolute now, in daemonize, before
        any chdir or chroot). Reads and writes nothing: see :meth:`check` and :meth:`write`."""
        return cls(os.path.abspath(value))

    def check(self) -> str | None:
        """Before starting: raise ConfigError if a live process owns the file, or the path
        is a symbolic link or not a regular file; remove a stale file and return a warning to
        log; None when there is nothing to say. Never quotes what the file holds."""
        try:
            text, age = self._read()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ConfigError(f"option 'pid_file': cannot read {self.path!r}: {exc.strerror}") \
                from None
        match = _PID.match(text)
        pid = int(match.group(1)) if match else 0
        if pid == os.getpid():
            return None  # HUP re-exec: the same process, the same file
        if pid > 0 and process_alive(pid):
            raise ConfigError(f"option 'pid_file': {self.path!r} holds pid {pid}, a running "
                              f"process (is the server already running?); not starting")
        if pid <= 0 and (text.strip() or age < EMPTY_PID_FILE_GRACE):
            raise ConfigError(f"option 'pid_file': {self.path!r} holds no pid; remove it if "
                              "no server is running")
        self._unlink()
        what = f"dead process {pid}" if pid else "no process (empty file)"
        return f'Pid_file "{self.path}" already exists for {what}.  Overwriting!'

    def _read(self) -> tuple[str, float]:
        """The file's first 64 bytes as text and its age in seconds. OSError for a symbolic
        link (ELOOP), a file that is not a regular file (EINVAL), or a failed read."""
        fd = open_no_follow(self.path, os.O_RDONLY)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "not a regular file", self.path)
            data = os.read(fd, 64)
        finally:
            os.close(fd)
        return data.decode("ascii", "replace"), time.time() - info.st_mtime

    def write(self) -> None:
        """Write this process's pid (after the fork, so it is the daemon's pid)."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC
        try:
            try:  # O_EXCL: two servers starting at once cannot both believe they own it
                fd = os.open(self.path, flags | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            except FileExistsError:
                owner = self.read_pid()
                if owner != os.getpid():
                    raise ConfigError(f"option 'pid_file': {self.path!r} was just written by "
                                      f"another process (pid {owner}); not starting") from None
                # A HUP re-exec: the file holds our pid already. It is left as it is: it stays
                # root's, and a server running as the service user could not rewrite it.
                self.written = True
                return
            with os.fdopen(fd, "w", encoding="ascii") as file:
                file.write(f"{os.getpid()}\n")
        except OSError as exc:
            raise ConfigError(f"option 'pid_file': cannot write {self.path!r}: {exc.strerror}") \
                from None
        self.written = True

    def read_pid(self) -> int | None:
        """The pid the file holds, or None (no file, no pid in it, unreadable, a symbolic
        link, not a regular file)."""
        try:
            text, _ = self._read()
        except OSError:
            return None
        match = _PID.match(text)
        return int(match.group(1)) if match else None

    def remove(self) -> str | None:
        """Remove the file if it still holds our pid; return a problem to log, else None."""
        if not self.written:
            return None
        self.written = False
        if not os.path.exists(self.path):
            return None
        owner = self.read_pid()
        if owner != os.getpid():
            return f'Pid_file "{self.path}" no longer holds pid {os.getpid()}: left in place'
        try:
            self._unlink()
        except ConfigError as exc:
            return str(exc)
        return None

    def _unlink(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise ConfigError(f"option 'pid_file': cannot remove {self.path!r}: "
                              f"{exc.strerror}") from None


def background(setsid: bool) -> None:
    """Fork; the parent exits 0 at once, the child goes on (and leaves the session if
    ``setsid``). Uses gevent's fork so the child's hub works."""
    from gevent.os import fork_gevent

    flush_std_streams()
    pid = fork_gevent()
    if pid:
        os._exit(0)  # the parent: nothing of the server's life may run twice (no atexit)
    if setsid:
        os.setsid()


def stdin_stdout_to_devnull() -> None:
    """Point file descriptors 0 and 1 at /dev/null (``setsid`` or a ``log_file``)."""
    flush_std_streams()
    _point_at("/dev/null", 0, os.O_RDONLY)
    _point_at("/dev/null", 1, os.O_WRONLY)


def stderr_to(fd: int) -> None:
    """Point file descriptor 2 at ``fd`` (the log file, or /dev/null under ``setsid``)."""
    flush_std_streams()
    os.dup2(fd, 2)


def _point_at(path: str, target: int, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.dup2(fd, target)
    finally:
        os.close(fd)


def flush_std_streams() -> None:
    """Flush ``sys.stdout`` and ``sys.stderr`` before their file descriptors change (dup2,
    fork, exec). Never raises (a stream may be closed, replaced or None)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, OSError, ValueError):
            pass
