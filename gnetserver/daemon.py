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
* Files that root opens by a name others may control (the pid file, the log file) are
  reached by :func:`open_safely` and :func:`unlink_safely`: the path is walked one directory
  at a time (:class:`PathWalk`), a symbolic link on the way is followed only when root or the
  server's euid owns it (a service user owning a directory on the way cannot swap a
  subdirectory for a link to ``/etc``), and the last name is opened with ``O_NOFOLLOW``: a
  pid file that is a symbolic link is refused. The pid file is read without waiting (a FIFO
  is refused, not waited on) and its contents are never quoted in a message (it may be a
  link to any file).
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
import pwd
import re
import stat
import sys
import time
from dataclasses import dataclass
from types import TracebackType

from .errors import ConfigError

#: Net::Server treats an empty pid file older than 0.01 day as stale (a crash while writing).
EMPTY_PID_FILE_GRACE = 864.0

_PID = re.compile(r"\s*(\d{1,10})\b")


#: Symbolic links followed in one path at most (Linux's own MAXSYMLINKS), then ELOOP.
MAX_SYMLINKS = 40

_O_PATH: int = getattr(os, "O_PATH", 0)
#: A directory of the walk: never a symbolic link, only searched (O_PATH needs no read right).
_DIR_FLAGS = _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def open_safely(path: str, flags: int, mode: int = 0o600, *,
                through_link: bool = False) -> int:
    """``os.open`` for a file root opens by a name others may control: the path is walked
    component by component (:class:`PathWalk`: a symbolic link is followed only when root or
    the current euid owns it), the last name is opened relative to its directory with
    ``O_NOFOLLOW``, without waiting on a FIFO (``O_NONBLOCK``, then made blocking again),
    close-on-exec. Returns the descriptor.

    A last name that is a symbolic link is refused, unless ``through_link`` (the log file)
    and the link is root's or the euid's: it is then followed (with the same rules, at most
    :data:`MAX_SYMLINKS`) without ``O_CREAT``, and the file reached must not be a regular
    file. That lets ``/dev/stdout`` (``/proc/self/fd/1``, a tty or a pipe) be a log file,
    while a link to a regular file, which root would append to, stays refused whoever made it.
    A link of the process's own ``/proc/<pid>/fd`` is opened by the kernel (it names an open
    file, not a path: no walk happens).

    Raises:
        OSError: as os.open, with ``path`` as its filename; ELOOP "is a symbolic link
            (refused: ...)" for a refused last link; EACCES "... is a symbolic link owned by
            ... (refused: ...)" for a link of someone else's on the way.
    """
    followed = False
    with PathWalk(path) as walk:
        name = walk.last()
        while True:
            try:
                fd = os.open(name, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode,
                             dir_fd=walk.fd)
                break
            except OSError as exc:
                if exc.errno != errno.ELOOP or (target := walk.link(name, through_link)) is None:
                    raise
                if not through_link:
                    raise OSError(errno.ELOOP, "is a symbolic link (refused: root would "
                                  "follow it to whatever file it names)", path) from None
            flags &= ~(os.O_CREAT | os.O_EXCL)  # through a link: only what exists already
            followed = True
            if walk.in_procfs():  # /proc/self/fd/1: the kernel opens that very file
                fd = os.open(name, flags | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=walk.fd)
                break
            walk.follow(target)
            name = walk.last()
    if followed and stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.ELOOP, "is a symbolic link to a regular file (refused: root would "
                      "append to whatever file it names; name the file itself)", path)
    os.set_blocking(fd, True)
    return fd


def unlink_safely(path: str) -> None:
    """``os.unlink`` of a name others may control: the directories are walked as by
    :func:`open_safely` and the last name is removed relative to its directory (a symbolic
    link there is removed itself, never followed). OSError as os.unlink, with ``path``."""
    with PathWalk(path) as walk:
        os.unlink(walk.last(), dir_fd=walk.fd)


class PathWalk:
    """A path walked from ``/`` (or the cwd for a relative path) one component at a time,
    through directory descriptors opened ``O_PATH|O_DIRECTORY|O_NOFOLLOW``.

    Why: ``O_NOFOLLOW`` guards only the last name. A service user owning a directory on the
    way could swap a subdirectory for a link to ``/etc`` and have root create, append to and
    chown a file there. A link met on the way is therefore followed only when root or the
    current euid owns it (nobody else can make a link owned by them: a planted link is the
    planter's), by reading it and walking its target (absolute: from ``/``; relative: from the
    directory holding it), at most :data:`MAX_SYMLINKS` links. That keeps root's own links
    working (``/var/run -> /run``, ``/dev/stdout``) and refuses planted ones.

    Attributes:
        fd: the descriptor of the current directory (owned by the walk: :meth:`close`).
        where: the current directory as text, for messages.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self.links = 0
        self.fd = -1
        self.where = ""
        self.parts: list[str] = []  # still to walk, the next one last
        self.follow(path)

    def follow(self, target: str) -> None:
        """Walk ``target`` next (from ``/`` when absolute), then what was left to walk."""
        if target.startswith("/"):
            self._enter_fd(os.open("/", _DIR_FLAGS), "/")
        elif self.fd < 0:
            self._enter_fd(os.open(".", _DIR_FLAGS), "")
        self.parts.extend(reversed([p for p in target.split("/") if p not in ("", ".")]))

    def last(self) -> str:
        """Walk every component but the last one; return that last name (:attr:`fd` is its
        directory)."""
        while len(self.parts) > 1:
            self._enter(self.parts.pop())
        if not self.parts:
            raise OSError(errno.EISDIR, "names a directory, not a file", self.path)
        return self.parts.pop()

    def link(self, name: str, refuse_others: bool = True) -> str | None:
        """The target of the symbolic link ``name`` in the current directory, or None when it
        is not a link. The link is opened itself (``O_PATH|O_NOFOLLOW``) so that its owner and
        its target are read from the same inode. When ``refuse_others``, OSError (EACCES) for
        a link owned by someone but root and the euid, or with several hard links (where
        ``fs.protected_hardlinks`` is off, anyone may hard-link root's ``/var/run`` link into
        a directory of theirs); ELOOP past :data:`MAX_SYMLINKS`."""
        shown = os.path.join(self.where, name)
        if _O_PATH:
            link_fd = os.open(name, _O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self.fd)
            try:
                info = os.fstat(link_fd)
                target = os.readlink("", dir_fd=link_fd) if stat.S_ISLNK(info.st_mode) else ""
            finally:
                os.close(link_fd)
        else:  # no O_PATH: lstat, read, lstat again (the same inode, or refused)
            info = os.lstat(name, dir_fd=self.fd)
            target = os.readlink(name, dir_fd=self.fd) if stat.S_ISLNK(info.st_mode) else ""
            if os.lstat(name, dir_fd=self.fd).st_ino != info.st_ino:
                raise OSError(errno.EAGAIN, f"{shown!r} changed while being read", self.path)
        if not stat.S_ISLNK(info.st_mode):
            return None
        euid = os.geteuid()
        if refuse_others and info.st_uid not in (0, euid):
            raise OSError(errno.EACCES, f"{shown!r} is a symbolic link owned by "
                          f"{_user_text(info.st_uid)} (refused: only links owned by root or "
                          f"by {_user_text(euid)}, the server, are followed)", self.path)
        if refuse_others and info.st_nlink > 1:  # root's link hard-linked in by someone else
            raise OSError(errno.EACCES, f"{shown!r} is a symbolic link with {info.st_nlink} "
                          "hard links (refused: it may be root's link linked in by someone "
                          "else)", self.path)
        self.links += 1
        if self.links > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, f"more than {MAX_SYMLINKS} symbolic links", self.path)
        return target

    def in_procfs(self) -> bool:
        """Whether the current directory is in /proc (links there may name open files)."""
        try:
            return os.fstat(self.fd).st_dev == os.stat("/proc").st_dev
        except OSError:
            return False

    def close(self) -> None:
        """Close the current directory's descriptor."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PathWalk:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        """Close the walk; an OSError raised inside names :attr:`path` as its filename."""
        self.close()
        if isinstance(exc, OSError) and exc.filename != self.path:
            raise OSError(exc.errno, exc.strerror, self.path) from None

    def _enter(self, name: str) -> None:
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            # A symbolic link: O_NOFOLLOW with O_DIRECTORY says ENOTDIR (or ELOOP).
            if exc.errno not in (errno.ENOTDIR, errno.ELOOP):
                raise OSError(exc.errno, exc.strerror, self.path) from None
            target = self.link(name)
            if target is None:
                raise OSError(exc.errno, exc.strerror, self.path) from None
            self.follow(target)
            return
        self._enter_fd(fd, os.path.join(self.where, name))

    def _enter_fd(self, fd: int, where: str) -> None:
        self.close()
        self.fd, self.where = fd, where


def _user_text(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


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
        fd = open_safely(self.path, os.O_RDONLY)
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
        try:
            try:  # O_EXCL: two servers starting at once cannot both believe they own it
                fd = open_safely(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
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
        try:
            text, _ = self._read()
        except FileNotFoundError:
            return None
        except OSError:
            text = ""
        match = _PID.match(text)
        if (int(match.group(1)) if match else None) != os.getpid():
            return f'Pid_file "{self.path}" no longer holds pid {os.getpid()}: left in place'
        try:
            self._unlink()
        except ConfigError as exc:
            return str(exc)
        return None

    def _unlink(self) -> None:
        try:
            unlink_safely(self.path)
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
