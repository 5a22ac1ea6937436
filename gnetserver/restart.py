"""HUP: re-execute the server in place, keeping its listening sockets (spec 6.2).

Rules of this module:

* The hand-over is Net::Server's ``BOUND_SOCKETS`` environment variable: entries joined by
  ``"; "``, each ``fd|host|port|PROTO|ipv<x>[|orig_port]`` (host and port as resolved and bound,
  ``orig_port`` when the configured port was ``0`` or a service name), UNIX sockets as
  ``fd|*|/path|UNIX|*``. :func:`encode` and :func:`decode` are pure.
* Old process (:func:`detach_listeners`, :func:`reexec`): every listening socket is dup'ed, the
  dup made inheritable (FD_CLOEXEC cleared), the originals are closed by the caller; then
  ``os.execv`` of ``sys.executable`` with the interpreter's original argv (``sys.orig_argv``),
  from the directory the process started in. The pid does not change.
* The previous generation (:func:`fork_drainer`): right before the exec, with nothing that
  yields in between, the old image forks a *drainer* that keeps the in-flight connections and
  keeps accepting until the new image says it accepts (:func:`announce_ready` closes the write
  end of a pipe the drainer reads: EOF, also when the new image dies); the drainer then stops
  accepting, finishes its sessions within ``graceful_timeout`` and exits. So accepting never
  stops, and the pid (pid file, systemd's main pid) stays the new image's. The new image
  learns the drainer's pid (:data:`CHILDREN`, :func:`take_inherited`) and reaps it
  (:class:`Children`); a personality with worker processes passes its own children the same
  way.
* New process (:func:`bind_ports`, called by ``GServer.bind``): a configured address whose
  ``host|orig_port-or-port|PROTO|ipv`` matches an inherited entry adopts its fd; the others are
  bound fresh ("Added new port configuration"); inherited fds no longer configured are closed
  ("Closing un-mapped port"). ``BOUND_SOCKETS`` is then removed from the environment. TLS
  contexts are rebuilt by the new image, so new certificates take effect on HUP.
* Sockets systemd passed (socket activation, :mod:`gnetserver.systemd`) are adopted by
  :func:`bind_ports` before any of this; those a port claimed by its ``name`` key are handed
  over with that name (:data:`gnetserver.systemd.FDNAMES_ENV`) and found by name again.
* A malformed entry is logged and ignored; an fd below 3 is never adopted nor closed.
* ``BOUND_SOCKETS`` is only trusted with the marker the re-exec sets next to it
  (:data:`MARKER`: the pid of the process that exec'ed, which the new image keeps). A first
  start that finds the variable without a matching marker (a stray variable in a service
  manager's environment, or one set by someone who hands the server sockets of their own)
  ignores it (level 2), removes both and binds every port itself. The fds it names are left
  alone: a stray variable may name descriptors this process holds for something else (its
  log file is open by then). The marker guards against a stray variable, not against whoever
  starts the server: that one can set both (``X=$$; exec ...``) and could hand over any fd
  anyway; socket activation is the interface for handing sockets to a first start.
* :data:`CHILDREN` and :data:`READY_FD` are trusted with the same marker only.
* The HUP preflight (:func:`exec_problems`, :func:`as_the_reexec_sees_it`) checks what the
  exec needs as the user the process now is (after a privilege drop: the service user), so a
  HUP that could only end in a failed exec and a shutdown is refused instead.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import gevent
from gevent.os import fork_gevent, make_nonblocking, nb_read

from . import systemd
from .daemon import flush_std_streams
from .errors import ConfigError
from .options import DEFAULT_UNIX_MODE
from .resolve import BindAddress, bind_all, resolve
from .signals import in_main_thread

#: The environment variable carrying the inherited sockets across the exec.
ENV = "BOUND_SOCKETS"

#: Set by the re-exec next to :data:`ENV`: the pid of the exec'ing process (the new image has
#: the same pid). Without it, or with another pid, :data:`ENV` is not trusted.
MARKER = "GNETSERVER_REEXEC_PID"

#: Set by the re-exec next to :data:`ENV`: the pids of child processes the exec'ing image
#: leaves to the new one (HUP drainers; a worker personality's workers), comma-separated.
CHILDREN = "GNETSERVER_CHILDREN"

#: Set by the re-exec next to :data:`ENV`: an inherited fd, the write end of the pipe the
#: previous generation (the drainer) reads; the new image closes it once it accepts.
READY_FD = "GNETSERVER_READY_FD"

#: Seconds between two looks for ended children (:class:`Children`): how long at most an
#: ended drainer stays a zombie while the server runs.
REAP_INTERVAL = 0.2


#: Every variable of the hand-over.
HANDOVER_ENV = (ENV, MARKER, systemd.FDNAMES_ENV, CHILDREN, READY_FD)

#: Where the process started: the exec runs from here, so relative script paths still work.
START_CWD = os.getcwd()

Log = Callable[[int, str], None]
Pair = tuple[BindAddress, socket.socket]


@dataclass(frozen=True)
class BoundSocket:
    """One ``BOUND_SOCKETS`` entry.

    Attributes:
        fd: the inherited file descriptor.
        host: the bound address text (``*`` for UNIX sockets).
        port: the bound port number as text, or the UNIX socket path.
        proto: the protocol in upper case (``TCP``, ``SSL``, ``UNIX``).
        ipv: ``ipv4``, ``ipv6``, ``ipv*``; ``*`` for UNIX sockets.
        orig_port: the configured port text when it was ``0`` or a service name.
        fdname: the port's ``name`` key when systemd passed the socket by that name (not part
            of the Net::Server entry: handed on in :data:`systemd.FDNAMES_ENV`).
        passed: systemd passed the socket (handed on there too, with an empty name).
    """

    fd: int
    host: str
    port: str
    proto: str
    ipv: str
    orig_port: str | None = None
    fdname: str | None = None
    passed: bool = False

    @property
    def key(self) -> str:
        """What a configured address must match to adopt this fd."""
        return f"{self.host}|{self.orig_port or self.port}|{self.proto}|{self.ipv}"

    def __str__(self) -> str:
        fields = [str(self.fd), self.host, self.port, self.proto, self.ipv]
        return "|".join(fields + ([self.orig_port] if self.orig_port else []))


def encode(entries: Iterable[BoundSocket]) -> str:
    """The ``BOUND_SOCKETS`` value for ``entries``.

    Raises:
        ValueError: a field contains ``|`` or ``;`` (it could not be read back).
    """
    texts = []
    for entry in entries:
        fields = (entry.host, entry.port, entry.proto, entry.ipv, entry.orig_port or "")
        if any("|" in field or ";" in field for field in fields):
            raise ValueError(f"cannot pass {entry} in {ENV}: '|' or ';' in a field")
        texts.append(str(entry))
    return "; ".join(texts)


def decode(text: str) -> tuple[list[BoundSocket], list[str]]:
    """Parse a ``BOUND_SOCKETS`` value: the entries, and the pieces that were malformed."""
    entries: list[BoundSocket] = []
    bad: list[str] = []
    for piece in (p.strip() for p in text.split(";")):
        if not piece:
            continue
        fields = piece.split("|")
        if len(fields) not in (5, 6) or not fields[0].isdigit() or int(fields[0]) < 3:
            bad.append(piece)
            continue
        orig = fields[5] if len(fields) == 6 and fields[5] else None
        fd, host, port, proto, ipv = int(fields[0]), fields[1], fields[2], fields[3], fields[4]
        entries.append(BoundSocket(fd, host, port, proto, ipv, orig))
    return entries, bad


def entry_for(fd: int, address: BindAddress) -> BoundSocket:
    """The entry describing a bound address (its ``sockaddr`` carries the real port)."""
    spec = address.spec
    if spec.is_unix:
        return BoundSocket(fd, "*", str(address.sockaddr), spec.proto.upper(), "*",
                           fdname=address.fdname, passed=address.passed)
    host, port = address.sockaddr[0], address.sockaddr[1]
    return BoundSocket(fd, str(host), str(port), spec.proto.upper(), _ipv_field(address),
                       spec.orig_port, address.fdname, address.passed)


def _ipv_field(address: BindAddress) -> str:
    """``ipv*`` for a dual-stack socket, else ``ipv4``/``ipv6`` by family (as Net::Server)."""
    if address.family == socket.AF_INET6:
        return "ipv*" if address.v6only is False else "ipv6"
    return "ipv4"


def reexecuted() -> bool:
    """True in the image a HUP re-exec started (it inherits :data:`ENV` with the
    :data:`MARKER` of this very pid), until :func:`bind_ports` took the sockets back."""
    return bool(os.environ.get(ENV)) and os.environ.get(MARKER) == str(os.getpid())


def _set_handover(entries: Sequence[BoundSocket], children: Sequence[int] = (),
                  ready_fd: int | None = None) -> None:
    """Set :data:`ENV` for ``entries``, its :data:`MARKER` (this pid: the exec keeps it), the
    names of the sockets systemd passed by name (:data:`systemd.FDNAMES_ENV`), and the
    children and ready pipe passed on, if any."""
    os.environ[ENV] = encode(entries)
    os.environ[MARKER] = str(os.getpid())
    names = systemd.encode_names((entry.fd, entry.fdname or "")
                                 for entry in entries if entry.passed)
    if names:
        os.environ[systemd.FDNAMES_ENV] = names
    else:
        os.environ.pop(systemd.FDNAMES_ENV, None)
    if children:
        os.environ[CHILDREN] = ",".join(map(str, children))
    if ready_fd is not None:
        os.environ[READY_FD] = str(ready_fd)


def _clear_handover() -> None:
    """Remove every hand-over variable: a child process of ours must not inherit them."""
    for name in HANDOVER_ENV:
        os.environ.pop(name, None)


@dataclass(frozen=True)
class Inherited:
    """What the previous image of this pid left besides its sockets (:func:`take_inherited`).

    Attributes:
        children: pids of its child processes, now ours to reap (its drainer, its workers).
        ready_fd: the write end of the previous generation's ready pipe: close it
            (:func:`announce_ready`) once this image accepts; None when there is none.
    """

    children: tuple[int, ...] = ()
    ready_fd: int | None = None


def take_inherited() -> Inherited:
    """Take :data:`CHILDREN` and :data:`READY_FD` out of the environment (first thing in the
    start-up, before the sockets are taken back): trusted only with the re-exec's
    :data:`MARKER` for this pid; otherwise (a first start) removed and ignored. The ready fd
    is made close-on-exec again (a later exec must not leak it)."""
    children_text = os.environ.pop(CHILDREN, "")
    ready_text = os.environ.pop(READY_FD, "")
    if os.environ.get(MARKER) != str(os.getpid()):
        return Inherited()
    children = tuple(int(pid) for pid in children_text.split(",") if pid.strip().isdigit())
    ready_fd = int(ready_text) if ready_text.isdigit() and int(ready_text) > 2 else None
    if ready_fd is not None:
        try:
            os.set_inheritable(ready_fd, False)
        except OSError:
            ready_fd = None  # not open: nobody waits on it
    return Inherited(children, ready_fd)


def announce_ready(ready_fd: int | None) -> None:
    """This image accepts: close the ready pipe, so the previous generation (reading its other
    end) stops accepting and drains. Idempotent through the caller (pass None afterwards)."""
    if ready_fd is not None:
        with contextlib.suppress(OSError):
            os.close(ready_fd)


def key_for(address: BindAddress) -> str:
    """The key of a freshly resolved address (port 0 or a service: its ``orig_port``)."""
    return entry_for(-1, address).key


# -- old process: hand the sockets over -------------------------------------------------------


def listener_entries(listeners: Sequence[Any],
                     log: Log | None = None) -> list[tuple[Any, BoundSocket]]:
    """The ``BOUND_SOCKETS`` entry of every listener that can be passed on, with the
    listener's own fd, paired with its listener: what :func:`detach_listeners` hands over and
    what the HUP dry run sets. A listener whose entry could not be read back (a ``|`` or
    ``;`` in a field) is left out, and said at level 1 when ``log`` is given: the new image
    binds it again. Pure: nothing is dup'ed or closed."""
    entries = []
    for listener in listeners:
        try:
            entry = entry_for(listener.sock.fileno(), listener.address)
            encode([entry])
        except (ValueError, OSError) as exc:
            _not_passed_on(log, listener, exc)
            continue
        entries.append((listener, entry))
    return entries


def detach_listeners(listeners: Sequence[Any], log: Log) -> list[BoundSocket]:
    """Dup every listening socket into an inheritable fd, before the originals are closed.

    Resource handling:
        The returned entries own their fds: pass them to :func:`reexec` or :func:`close_fds`.
    """
    handed = []
    for listener, entry in listener_entries(listeners, log):
        try:
            fd = os.dup(entry.fd)
        except OSError as exc:
            _not_passed_on(log, listener, exc)
            continue
        os.set_inheritable(fd, True)
        handed.append(replace(entry, fd=fd))
    return handed


def _not_passed_on(log: Log | None, listener: Any, exc: Exception) -> None:
    """Say (level 1) that ``listener`` is not handed to the new image, which binds it again."""
    if log is not None:
        log(1, f"HUP: {listener} will be bound again, not passed on: {exc}")


def exec_argv() -> list[str]:
    """The command that started this interpreter, with ``sys.executable`` as its program."""
    return [sys.executable, *sys.orig_argv[1:]]


def reexec(entries: Sequence[BoundSocket], log: Log, children: Sequence[int] = (),
           fork: Callable[[], tuple[int, int]] | None = None,
           abandon: Callable[[], None] | None = None) -> list[int]:
    """Exec the server again with ``BOUND_SOCKETS`` set (and :data:`CHILDREN`: ``children``,
    the pids the new image is to reap). Returns only if the exec failed, after logging why
    and closing the entries' fds.

    ``fork`` (optional, :func:`fork_drainer` with the caller's drain): called after the last
    log line and flush, it forks the previous generation's drainer and returns its pid and
    the write end of its ready pipe, both passed to the new image; from then to the exec
    nothing yields (the drainer runs the connections now: a copy of them must not run here).
    An OSError from it propagates before anything changed (the caller may drain in place
    instead). If the exec then fails, ``abandon`` runs first (the caller drops its copies of
    the connections), the ready pipe is closed (the drainer stops accepting and drains) and
    the returned pids include the drainer's: the caller reaps them.

    HUP is ignored across the exec (an ignored signal stays ignored in the new image) so that a
    second HUP during the new image's start-up cannot kill it; its loop installs the handler.
    """
    argv = exec_argv()
    log(0, f"Re-exec server during HUP: {' '.join(argv)}")
    flush_std_streams()  # before the fork too: a buffer copied into the drainer prints twice
    pids, ready_fd = list(children), None
    if fork is not None:
        pid, ready_fd = fork()
        pids.append(pid)
    # No yield from here to the exec: not a log line, not a greenlet switch.
    _set_handover(entries, pids, ready_fd)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN) if in_main_thread() else None
    try:
        if not argv[0] or len(argv) < 2:  # an embedded interpreter, or a bare REPL
            raise OSError(f"no command line to run again: {sys.orig_argv!r}")
        os.chdir(START_CWD)
        os.execv(argv[0], argv)
    except OSError as exc:
        failure = exc
    if previous is not None:
        signal.signal(signal.SIGHUP, previous)
    _clear_handover()
    if abandon is not None and ready_fd is not None:
        abandon()
    announce_ready(ready_fd)  # the drainer stops accepting: nobody accepts here any more
    log(0, f"Re-exec failed, shutting down instead: {failure}")
    close_fds(entries)
    return pids


def fork_drainer(drain: Callable[[int], object]) -> tuple[int, int]:
    """Fork the previous generation's drainer (see the module rules); call it from the
    main thread, at a point where only connection greenlets wait (they go on in the child).

    In the child, ``drain(ready_fd)`` runs (``ready_fd``: the read end of the ready pipe; see
    :func:`wait_for_eof`), then the child ends with ``os._exit``: 0, or 1 when ``drain``
    raised (its traceback on stderr). It never returns, so nothing after the fork in the
    caller (the exec, atexit handlers, the code after ``run()``) runs there. The child asks
    for SIGTERM when its parent thread dies (``PR_SET_PDEATHSIG``, Linux, main thread only:
    an exec keeps the parent; its death cuts the drainer as TERM would).

    Returns:
        In the parent: the child's pid and the write end of the ready pipe (inheritable, for
        the new image).

    Raises:
        OSError: the pipe or the fork failed; nothing is left open.
    """
    read_fd, write_fd = os.pipe()
    parent = os.getpid()
    try:
        pid = fork_gevent()
    except OSError:
        os.close(read_fd)
        os.close(write_fd)
        raise
    if pid:
        os.close(read_fd)
        os.set_inheritable(write_fd, True)
        return pid, write_fd
    status = 1
    try:
        os.close(write_fd)
        _die_with_parent(parent)
        drain(read_fd)
        status = 0
    except BaseException:  # the child must never unwind into the parent's code
        traceback.print_exc()
    finally:
        flush_std_streams()
        os._exit(status)


def set_parent_death_signal(signum: int) -> bool:
    """In a forked child (a HUP's drainer, a PreFork worker): have the kernel send
    ``signum`` when the parent thread dies (``prctl`` ``PR_SET_PDEATHSIG``, Linux); True when
    it was set, False elsewhere or when ``prctl`` is not to be had."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signum, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False
    return True


def _die_with_parent(parent: int) -> None:
    """In a drainer: SIGTERM when the parent thread dies (Linux); if it died already, now."""
    if not in_main_thread() or not set_parent_death_signal(signal.SIGTERM):
        return
    if os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def wait_for_eof(fd: int) -> None:
    """Read ``fd`` (a pipe's read end) cooperatively until EOF, then close it: in a drainer,
    the wait for the new image to accept (or to die)."""
    try:
        make_nonblocking(fd)
        while nb_read(fd, 512):
            pass
    except OSError:
        pass  # a broken pipe ends the wait too
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


class Children:
    """Child processes a server reaps that are not connections: the drainers its HUPs forked
    and those an earlier image of this pid left (:func:`take_inherited`); a worker
    personality may add its own. Reaped with ``os.waitpid(pid, WNOHANG)`` on a timer
    (:data:`REAP_INTERVAL`) while :meth:`watch` runs, never by gevent's child watchers (the
    forks use ``fork_gevent``). Each end is logged: level 2 for exit status 0, else 1.

    Args:
        log: the server's log.
    """

    def __init__(self, log: Log) -> None:
        self._log = log
        self._pids: dict[int, str] = {}
        self._watcher: Any = None

    @property
    def pids(self) -> list[int]:
        """The children not reaped yet."""
        return list(self._pids)

    def add(self, pid: int, what: str = "drainer") -> None:
        """Reap ``pid`` (``what`` names it in the log) from now on."""
        self._pids[pid] = what

    def reap(self) -> None:
        """Reap every child that ended (logs its status); forget pids that are not our
        children (ECHILD)."""
        for pid, what in list(self._pids.items()):
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                del self._pids[pid]
                continue
            if done:
                del self._pids[pid]
                self._log(2 if status == 0 else 1,
                          f"HUP: {what} {pid} of a previous generation {describe(status)}")

    def watch(self) -> None:
        """Reap on a timer while children remain (a greenlet; :meth:`finish` ends it)."""
        if self._pids and self._watcher is None:
            self._watcher = gevent.spawn(self._watch)

    def _watch(self) -> None:
        while self._pids:
            gevent.sleep(REAP_INTERVAL)
            self.reap()
        self._watcher = None

    def forget(self) -> None:
        """In a forked child: these are not its children; stop watching, drop them."""
        self._pids.clear()
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.kill(block=False)

    def finish(self, timeout: float) -> None:
        """At the close: wait up to ``timeout`` seconds for the children to end (a drainer
        ends by its own deadline), then SIGTERM those left (cut now) and wait up to 2 s more;
        one still running then is logged (level 1) and left to whoever adopts it."""
        self.reap()
        for wait, term in ((timeout, True), (2.0, False)):
            deadline = time.monotonic() + wait
            while self._pids and time.monotonic() < deadline:
                gevent.sleep(min(0.05, REAP_INTERVAL))
                self.reap()
            if not term:
                break
            for pid in self._pids:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGTERM)
        for pid, what in self._pids.items():
            self._log(1, f"HUP: {what} {pid} of a previous generation still runs: left")
        self.forget()


def describe(status: int) -> str:
    """A wait status in words, for the log lines of ended children (HUP drainers, PreFork
    workers): ``exited with status N``, or ``killed by SIGNAME`` (SIGKILL with a hint)."""
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        extra = " (often the OOM killer or a watchdog)" if signum == signal.SIGKILL else ""
        return f"killed by {name}{extra}"
    if os.WIFEXITED(status):
        return f"exited with status {os.WEXITSTATUS(status)}"
    return f"ended (wait status {status})"


def close_fds(entries: Iterable[BoundSocket]) -> None:
    """Close the fds of entries that will not be passed on."""
    for entry in entries:
        with contextlib.suppress(OSError):
            os.close(entry.fd)


# -- new process: take the sockets back -------------------------------------------------------


def bind_ports(specs: Sequence[Any], backlog: int, log: Log,
               open_hook: Callable[[], None], *, unix_mode: int = DEFAULT_UNIX_MODE,
               broadcast: bool = False) -> list[Pair]:
    """``bind_all`` for a server that may have been socket-activated, or re-executed by a HUP.

    When systemd passed sockets to this pid (``LISTEN_FDS``, :func:`gnetserver.systemd.
    listen_fds`; the variables are removed in any case), every spec is served by them
    (:func:`gnetserver.systemd.adopt_passed`: nothing is bound, a mismatch is a ConfigError).
    Without ``BOUND_SOCKETS`` this is :func:`gnetserver.resolve.bind_all`. With it and the
    re-exec's :data:`MARKER` for this pid: ``open_hook`` (the server's ``restart_open_hook``)
    runs, matching specs adopt their inherited fds, the others are bound fresh, and both
    variables are removed from the environment. With it but no matching marker (not a HUP
    re-exec of this process), it is ignored (level 2) and removed, and every spec is bound.

    Returns:
        ``(address, socket)`` pairs in the order of ``specs``, as ``bind_all`` returns them.

    Resource handling:
        The caller owns the returned sockets; on failure none is left open.
    """
    passed = systemd.listen_fds()
    text = os.environ.get(ENV)
    if passed:
        if text is not None:
            log(2, f"{ENV} is set, but systemd passed sockets: {ENV} ignored")
            _clear_handover()
        return systemd.adopt_passed(specs, passed, log)
    if text is not None and not reexecuted():
        log(2, f"{ENV} is set, but not by a HUP re-exec of this process (no {MARKER} "
               f"for pid {os.getpid()}): ignored, binding every port")
        _clear_handover()
        text = None
    if text is None:
        return bind_all(specs, backlog, unix_mode=unix_mode, broadcast=broadcast)
    open_hook()
    entries, bad = decode(text)
    for piece in bad:
        log(1, f"{ENV}: ignoring malformed entry {piece!r}")
    names = systemd.decode_names(os.environ.get(systemd.FDNAMES_ENV, ""))
    _clear_handover()  # a child process of ours must not inherit them
    # Sockets systemd passed by a port's name find that port by name again, wherever the
    # unit file bound them; the others match by their BOUND_SOCKETS key.
    named, specs_left, entries = _adopt_named(specs, entries, names, log)
    adopted, fresh = adopt(specs_left, entries, log)
    # systemd's sockets stay systemd's (their unix socket files are not ours to remove)
    adopted = named + [(replace(address, passed=sock.fileno() in names), sock)
                       for address, sock in adopted]
    try:
        pairs = adopted + bind_all(fresh, backlog, unix_mode=unix_mode, broadcast=broadcast)
    except BaseException:
        for _, sock in adopted:
            sock.close()
        raise
    order = {id(spec): index for index, spec in enumerate(specs)}
    return sorted(pairs, key=lambda pair: order[id(pair[0].spec)])


def _adopt_named(specs: Sequence[Any], entries: Sequence[BoundSocket], names: dict[int, str],
                 log: Log) -> tuple[list[Pair], list[Any], list[BoundSocket]]:
    """The inherited entries :data:`systemd.FDNAMES_ENV` names go to the ports with that
    ``name`` key (:func:`gnetserver.systemd.adopt_named`). Returns the pairs, the specs left
    and the entries left (named ones no port claims included: they match by key)."""
    passed = [systemd.PassedSocket(entry.fd, names[entry.fd])
              for entry in entries if names.get(entry.fd)]
    if not passed:
        return [], list(specs), list(entries)
    pairs, specs_left, left = systemd.adopt_named(specs, passed, log)
    tried = {item.fd for item in passed}
    left_fds = {item.fd for item in left}
    kept = [entry for entry in entries if entry.fd not in tried or entry.fd in left_fds]
    return pairs, specs_left, kept


def adopt(specs: Sequence[Any], entries: Sequence[BoundSocket],
          log: Log) -> tuple[list[Pair], list[Any]]:
    """Adopt the inherited fds of every spec whose addresses all match an entry.

    Returns:
        The adopted pairs and the specs left to bind. Every entry not adopted is closed.
    """
    waiting: dict[str, list[BoundSocket]] = {}
    for entry in entries:
        waiting.setdefault(entry.key, []).append(entry)
    adopted: list[Pair] = []
    fresh = []
    for spec in specs:
        addresses = resolve(spec)
        keys = [key_for(address) for address in addresses]
        if not all(waiting.get(key) for key in keys) or len(set(keys)) < len(keys):
            log(2, f"Added new port configuration: {spec}")
            fresh.append(spec)
            continue
        found = [(addr, waiting[key].pop(0)) for addr, key in zip(addresses, keys, strict=True)]
        pairs = _adopt_spec(found, log)
        if pairs is None:
            fresh.append(spec)
        adopted += pairs or []
    for entry in (entry for left in waiting.values() for entry in left):
        log(2, f"Closing un-mapped port {entry}")
        _close_socket_fd(entry.fd)
    return adopted, fresh


def _adopt_spec(found: list[tuple[BindAddress, BoundSocket]], log: Log) -> list[Pair] | None:
    """Adopt every fd of one spec, or none: then all its fds are closed (it is bound fresh)."""
    pairs: list[Pair] = []
    for index, (address, entry) in enumerate(found):
        try:
            pairs.append(adopt_fd(entry, address))
        except OSError as exc:
            log(1, f"{ENV}: cannot adopt {entry}, binding {address.spec} again: {exc}")
            for _, sock in pairs:
                sock.close()
            for _, untried in found[index + 1:]:
                _close_socket_fd(untried.fd)
            return None
    for address, sock in pairs:
        log(3, f"Adopted inherited socket {sock.fileno()} for {address.spec}")
    return pairs


def adopt_fd(entry: BoundSocket, address: BindAddress) -> Pair:
    """Wrap an inherited fd as the listening socket of ``address``, after checking it is one.

    Returns:
        The address with the socket's real port, and the socket (FD_CLOEXEC set again).

    Raises:
        OSError: the fd is closed, not a listening stream socket (a bound datagram socket for
            a datagram port), or bound elsewhere. A socket that does not fit is closed.
    """
    sock = socket.socket(fileno=entry.fd)  # EBADF/ENOTSOCK: raised, nothing taken over
    try:
        bound = sock.getsockname()
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        wanted = address.sockaddr if isinstance(address.sockaddr, str) else int(entry.port)
        got = bound if isinstance(bound, str) else bound[1]
        datagram = address.spec.is_datagram
        kind = socket.SOCK_DGRAM if datagram else socket.SOCK_STREAM
        if sock.family != address.family or sock.type != kind or not (listening or datagram):
            what = "a datagram" if datagram else "a listening stream"
            raise OSError(f"fd {entry.fd} is not {what} socket of the right family")
        if got != wanted:
            raise OSError(f"fd {entry.fd} is bound to {bound!r}, not {wanted!r}")
        os.set_inheritable(entry.fd, False)
    except BaseException:
        sock.close()
        raise
    if not isinstance(bound, str):
        sockaddr = address.sockaddr
        address = replace(address, sockaddr=(sockaddr[0], bound[1], *sockaddr[2:]))
    return address, sock


def _close_socket_fd(fd: int) -> None:
    """Close an inherited fd, but only if it is a socket (never someone else's file)."""
    try:
        socket.socket(fileno=fd).close()
    except OSError:
        pass  # closed already, or not a socket: leave it alone


# -- the HUP preflight: the environment the new image will see ---------------------------------


def who() -> str:
    """The user the process runs as now (the one the re-exec runs as): ``uid 65534
    ('nobody')``."""
    uid = os.geteuid()
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name!r})"
    except KeyError:
        return f"uid {uid}"


def exec_problems() -> list[str]:
    """What would make the exec itself fail, checked as the user the process now is (after a
    privilege drop: the service user, who runs the re-exec): a command line to run again, the
    interpreter (``sys.executable``) executable, the script or ``-m`` module the interpreter
    was started with and gnetserver's own package readable. Call it inside
    :func:`as_the_reexec_sees_it` (relative paths are the exec's). Empty when nothing is found.

    Not foreseen: every other module the new image imports, the interpreter's shared
    libraries; the options' files (conf file, TLS files) are read by the dry run itself.
    """
    argv = exec_argv()
    if not argv[0] or len(argv) < 2:  # an embedded interpreter, or a bare REPL
        return [f"no command line to run again: {sys.orig_argv!r}"]
    problems = []
    if (why := _cannot(argv[0], os.X_OK)) is not None:
        problems.append(f"the interpreter {argv[0]!r} {why}")
    checked = set()
    for what, path in (("the script", _main_file()), ("gnetserver's package", __file__)):
        if path is None or path in checked:
            continue
        checked.add(path)
        if (why := _cannot(path, os.R_OK)) is not None:
            problems.append(f"{what} {path!r} {why}")
    return [f"the re-exec would fail: {problem}" for problem in problems]


def _main_file() -> str | None:
    """The file the interpreter ran as ``__main__`` (a script, or the ``-m`` module's file);
    None for ``-c`` and interactive sessions."""
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    origin = getattr(spec, "origin", None) or getattr(main, "__file__", None)
    if not isinstance(origin, str) or origin in ("built-in", "frozen"):
        return None
    return origin


def _cannot(path: str, mode: int) -> str | None:
    """Why the current user cannot use ``path`` as ``mode`` asks (read, run), or None."""
    effective = os.access in os.supports_effective_ids
    if os.access(path, mode, effective_ids=effective):
        return None
    try:
        os.stat(path)
    except FileNotFoundError:
        return "does not exist"
    except PermissionError:
        return f"cannot be reached by {who()}: a folder on its path is not searchable"
    except OSError as exc:
        return f"cannot be reached: {exc.strerror}"
    return f"is not {'executable' if mode == os.X_OK else 'readable'} by {who()}"


def read_as(exc: BaseException) -> str:
    """``exc``'s text; when a file could not be read for lack of permission, followed by who
    tried (the re-executed server will read its files as that same user)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, PermissionError):
            return f"{exc} (read as {who()}, the user the re-executed server runs as)"
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return str(exc)


@contextmanager
def as_the_reexec_sees_it(listeners: Sequence[Any]) -> Iterator[None]:
    """For the HUP dry run: ``BOUND_SOCKETS`` set as the exec will set it, and the directory
    the exec starts in (:data:`START_CWD`); both put back afterwards. The dry run does not
    yield to other greenlets, so only other threads could see them meanwhile. Raises
    ConfigError when that directory is gone (the exec would fail)."""
    # Those the exec will not pass on are left out: the new image binds them again.
    entries = [entry for _, entry in listener_entries(listeners)]
    saved_env = {name: os.environ.get(name) for name in HANDOVER_ENV}
    try:  # by fd: the way back even if its path changed (O_PATH: no read permission needed)
        here: int | None = os.open(".", getattr(os, "O_PATH", os.O_RDONLY))
    except OSError:
        here = None  # cannot come back: stay here, relative paths may then be misjudged
    _set_handover(entries)
    try:
        if here is not None:
            try:
                os.chdir(START_CWD)
            except OSError as exc:
                raise ConfigError(f"the server would restart in {START_CWD!r}, "
                                  f"where it started: {exc.strerror}") from None
        yield
    finally:
        if here is not None:
            os.fchdir(here)
            os.close(here)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
