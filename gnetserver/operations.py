"""OperationsMixin: the server as a process: its log, pid file, background and privileges.

Rules of this module (behaviour: spec/netserver.md, logging and process sections):

* Every message goes through :meth:`OperationsMixin.log`: filtered by ``log_level`` (a
  caller about to build a costly message asks :meth:`OperationsMixin.log_enabled` first), then to
  ``log_function`` (a broken one is reported and bypassed), else to ``write_to_log_hook``, the
  one sink users override. Logging never raises (a sink that raises or re-enters log() gets
  the message written to stderr instead) and never blocks the hub (syslog included).
* The steps run in Net::Server's order, called by the server's lifecycle (server.py):
  ``initialize_logging`` then ``daemonize`` in post_configure (before binding),
  ``drop_privileges`` in post_bind (after binding), ``remove_pid_file`` at the end of
  server_close and at exit. The mechanics are pure helpers elsewhere: :mod:`gnetserver.log`,
  :mod:`gnetserver.daemon`, :mod:`gnetserver.privileges`; this mixin only sequences them.
* The process's standard streams are touched only when the server may own them
  (``redirect_std_streams``; by default only in the main thread).
* Bad options are ConfigErrors at start; failures at run time (reopening a log, removing a
  pid file) are logged and the server goes on.
"""

from __future__ import annotations

import atexit
import os
import resource
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from . import daemon, log, privileges, restart, signals
from .errors import ConfigError

if TYPE_CHECKING:

    from .listener import Listener


class OperationsMixin:
    """The process steps of :class:`~gnetserver.server.GServer`: ``initialize_logging``,
    ``daemonize``, ``drop_privileges``, ``remove_pid_file``, ``log``, ``write_to_log_hook``,
    ``reopen_logs``, ``close_logs``."""

    #: The pid file written by daemonize (None without ``pid_file``).
    pid_file: daemon.PidFile | None = None
    #: True keeps the pid file when the server closes (a HUP re-exec keeps pid and file).
    keep_pid_file: bool = False
    #: Whether daemonize may point the process's stdin/stdout/stderr elsewhere, as Net::Server
    #: does under ``setsid`` or ``log_file``. None (default): only when the server runs in the
    #: main thread (a server in a ServerThread leaves the host program's streams alone).
    redirect_std_streams: bool | None = None
    #: This server's log target (set by initialize_logging); None: the ``gnetserver`` logger.
    log_targets: log.LogTargets | None = None
    #: The resolved ``log_function`` (set by initialize_logging).
    _log_callable: Callable[[int, str], Any] | None = None
    #: write_to_log_hook raised and that was said on stderr (until it works again).
    _sink_failing: bool = False

    if TYPE_CHECKING:  # provided by the server class
        conf: dict[str, Any]
        listeners: list[Listener]

    # -- logging ---------------------------------------------------------------------------

    def initialize_logging(self) -> None:
        """Framework step (in post_configure): open the target ``log_file`` names (a file
        path, ``Sys::Syslog``, or stderr when unset) and resolve ``log_function`` (a callable,
        or the name of a method of the server). Raises ConfigError for a file that cannot be
        opened, an unreachable syslog (unless ``nofatal``) or an unknown method name."""
        function = log.resolve_log_function(self.conf.get("log_function"), self)
        targets = log.LogTargets.from_conf(self.conf)
        if self.log_targets is not None:
            try:
                self.log_targets.close()
            except OSError as exc:  # the last flush of a log file on a full disk
                log.write_fallback(f"Couldn't close the log: {exc}")
        self.log_targets, self._log_callable = targets, function

    def log(self, level: int, message: str) -> None:
        """Log ``message`` at Net::Server ``level`` (0-4) if ``log_level`` allows it: to
        ``log_function`` when one is set, else (or when it raises) to write_to_log_hook.
        Never raises: a sink that raises, or logs from inside itself, gets the message
        written to stderr instead (see _to_sink)."""
        if not self.log_enabled(level):
            return
        inside = self.__dict__.setdefault("_logging_greenlets", set())
        me = gevent.getcurrent()
        if me in inside:  # a sink or log_function that logs: never recurse into it
            log.write_fallback(message)
            return
        inside.add(me)
        try:
            function = self._log_callable
            if function is not None:
                try:
                    function(level, message)
                    return
                except Exception as exc:  # a broken log function must not break the server
                    self._to_sink(1, f"Error in log_function: {type(exc).__name__}: {exc}")
            self._to_sink(level, message)
        finally:
            inside.discard(me)

    def log_enabled(self, level: int) -> bool:
        """Whether :meth:`log` would pass a message of ``level`` on (``log_level`` allows it).
        Cheap: ask it before building a message that costs something (a traceback, an
        f-string per connection). Any greenlet may call it; it touches nothing."""
        return log.should_log(level, self.conf.get("log_level", 2))

    def _to_sink(self, level: int, message: str) -> None:
        """write_to_log_hook, guarded: when it raises, the reason (once, until it works
        again) and the message go to stderr."""
        try:
            self.write_to_log_hook(level, message)
        except Exception as exc:
            reason = None
            if not self._sink_failing:
                reason = (f"write_to_log_hook failed: {type(exc).__name__}: {exc} (messages "
                          "go to stderr until it works again)")
            self._sink_failing = True
            log.write_fallback(message, reason)
        else:
            self._sink_failing = False

    def write_to_log_hook(self, level: int, message: str) -> None:
        """Hook: the default log sink, called by log() for every message that passes
        ``log_level``: the log file (one ``YYYY/MM/DD-HH:MM:SS msg`` line, bytes outside
        printable ASCII escaped as ``%XX``), syslog, or the ``gnetserver`` stdlib logger
        (stderr unless configured otherwise). Runs in whatever greenlet logs; must not block
        for long. Override to send the log elsewhere. If it raises, log() writes the message
        to stderr instead (and the reason, once until it works again); a message it logs
        itself through log() goes straight to stderr."""
        # Before initialize_logging: the gnetserver logger, as without log_file.
        (self.log_targets or log.LOGGER_TARGETS).emit(level, message)

    def reopen_logs(self) -> None:
        """Reopen the log file by its name (logrotate renamed it; HUP calls this), pointing
        stderr at the new file if it pointed at the old one; reconnect to syslog. A failure
        is logged and the old target kept; never raises."""
        if self.log_targets is None:
            return
        try:
            self.log_targets.reopen()
        except OSError as exc:
            self.log(1, f"Couldn't reopen the log ({self.log_targets.path or 'syslog'}): {exc}")
            return
        self.log(3, "Reopened the log")

    def close_logs(self) -> None:
        """Framework step, last in server_close: close the log file or syslog socket (syslog
        first reports the messages it had to drop). A message logged afterwards opens the
        target again. Never raises."""
        if self.log_targets is not None:
            try:
                self.log_targets.close()
            except OSError as exc:  # the last flush of a log file on a full disk
                log.write_fallback(f"Couldn't close the log: {exc}")

    # -- the process -----------------------------------------------------------------------

    def daemonize(self) -> None:
        """Framework step (in post_configure, before binding), in Net::Server's order: check
        ``pid_file`` (ConfigError while a live process owns it; a stale one is overwritten
        with a warning), point stdin/stdout at /dev/null (``setsid`` or ``log_file``), fork
        for ``background``/``setsid`` (the parent exits 0; not after a HUP re-exec), setsid,
        point stderr at the log file (or /dev/null under ``setsid``), write the pid file."""
        c = self.conf
        main = signals.in_main_thread()
        if (c["background"] or c["setsid"]) and not main:
            raise ConfigError("options 'background'/'setsid': the server must run in the "
                              "main thread to fork into the background")
        pid_file = daemon.PidFile.from_option(c["pid_file"]) if c["pid_file"] else None
        if pid_file is not None and (warning := pid_file.check()):
            self.log(1, warning)
        redirect = main if self.redirect_std_streams is None else self.redirect_std_streams
        if redirect and (c["setsid"] or c["log_file"]):
            daemon.stdin_stdout_to_devnull()
        if (c["background"] or c["setsid"]) and not restart.reexecuted():
            daemon.background(c["setsid"])  # the parent exits 0 in there
            self.log(2, "Process Backgrounded")
        log_fd = self.log_targets.fileno() if self.log_targets is not None else None
        if redirect and log_fd is not None and self._log_callable is None:
            self.log_targets.point_stderr()  # tracebacks and warnings land in the log too
        elif redirect and c["setsid"]:
            daemon.stderr_to(1)
        if pid_file is not None:
            pid_file.write()
            self.pid_file = pid_file
            atexit.register(_remove_pid_file_at_exit, weakref.ref(self))

    def remove_pid_file(self) -> None:
        """Remove the pid file this process wrote, unless ``keep_pid_file`` is set (a HUP
        re-exec keeps it: same pid). Called at the end of server_close and at exit; a file
        that no longer holds our pid is left alone. Never raises (problems are logged)."""
        if self.pid_file is None or self.keep_pid_file:
            return
        problem = self.pid_file.remove()
        if problem:
            self.log(1, problem)

    def drop_privileges(self) -> None:
        """Framework step (in post_bind: every port is bound, the loop has not started), in
        Net::Server's order: hand the files the server keeps writing (log file, pid file, unix
        socket files) to ``user``/``group``, ``chroot``, then setgid and setuid. Unknown
        names, a missing chroot, a failed chown and a failed switch while root are
        ConfigErrors; a failed switch when not root is logged (level 1)."""
        c = self.conf
        identity = privileges.resolve(c["user"], c["group"])
        if identity is None and os.geteuid() == 0:
            self.log(2, "Running as root: set 'user' (and 'group') to drop privileges")
        files = [str(lst.address.sockaddr) for lst in self.listeners if lst.proto == "unix"]
        if self.pid_file is not None and self.pid_file.written:
            files.append(self.pid_file.path)
        if self.log_targets is not None and self.log_targets.path:
            files.append(self.log_targets.path)
        privileges.drop(identity, c["chroot"], files, self.log)
        if c["chroot"]:  # the files the server still opens by name, seen from the new root
            if self.pid_file is not None:
                self.pid_file.path = privileges.rebase(self.pid_file.path, c["chroot"])
            if self.log_targets is not None:
                self.log_targets.rebase(privileges.rebase, c["chroot"])


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE toward ``needed`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _remove_pid_file_at_exit(server_ref: weakref.ref[OperationsMixin]) -> None:
    """atexit: remove the pid file of a server that exited without server_close (a failed
    start, an exception); a HUP re-exec never gets here (exec runs no atexit handlers)."""
    server = server_ref()
    if server is not None and server.pid_file is not None and not server.keep_pid_file:
        server.pid_file.remove()
