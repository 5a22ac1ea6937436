"""The server as a process: its log (:class:`ServerLog`), and its pid file, background and
privileges (:class:`ProcessControl`).

Rules of this module (behaviour: spec/netserver.md, logging and process sections):

* Every message goes through the server's ``log``: filtered by ``log_level`` (a caller about
  to build a costly message asks ``log_enabled`` first), then :meth:`ServerLog.write` hands it
  to ``log_function`` (a broken one is reported and bypassed), else to ``write_to_log_hook``,
  the one sink users override. Every sink gets the message escaped (one line of printable
  ASCII, :func:`gnetserver.log.escape`): a peer's bytes in it cannot forge a log line.
  Logging never raises (a sink that raises or re-enters the log gets the message written to
  stderr instead) and never blocks the hub (syslog included).
* The steps run in Net::Server's order, called by the server (server.py): the log targets
  then ``daemonize`` in post_configure (before binding), ``drop_privileges`` in post_bind
  (after binding), the pid file's removal at the end of server_close and at exit. The
  mechanics are helpers elsewhere: :mod:`gnetserver.log`, :mod:`gnetserver.daemon`,
  :mod:`gnetserver.privileges`; this module only sequences them.
* The process's standard streams are touched only when the server may own them
  (``redirect_std_streams``; by default only in the main thread).
* Bad options are ConfigErrors at start; failures at run time (reopening a log, removing a
  pid file) are logged and the server goes on.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import resource
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import gevent

from . import daemon, log, privileges, restart, signals, stdio
from .conf import Conf
from .errors import ConfigError


class ServerLog:
    """Where a server's messages go (see the module rules): the targets ``log_file`` names,
    the resolved ``log_function``, and the guards that keep logging from raising or recursing.

    Args:
        sink: the server's ``write_to_log_hook`` (the default sink, overridable).
        on_error: the server's ``handle_log_error``, called with the exception and
            ``(level, message)`` when ``log_function`` raised (default:
            :meth:`report_function_error`).
    """

    def __init__(self, sink: Callable[[int, str], None],
                 on_error: Callable[[BaseException, tuple[int, str]], None] | None = None
                 ) -> None:
        self._sink = sink
        self._on_error = on_error or (lambda error, record: self.report_function_error(error))
        self._muted = False  # the HUP dry run: its start-up says nothing
        self._targets: log.LogTargets | None = None
        self._function: Callable[[int, str], Any] | None = None
        self._inside: set[Any] = set()  # greenlets inside a sink: never recurse into it
        self._drops: Callable[[int], None] | None = None  # count_drops' callback
        # log_format json: the client of each connection greenlet (connection())
        self._clients: dict[Any, Any] = {}
        #: True with ``log_format json`` (open targets writing JSON lines): only then does
        #: :meth:`connection` do anything, and the server skips it otherwise.
        self.binds_connections = False
        self._sink_failing = False  # the sink raised and that was said on stderr

    @property
    def targets(self) -> log.LogTargets | None:
        """The open targets (None before :meth:`open`: the ``gnetserver`` logger)."""
        return self._targets

    @property
    def is_muted(self) -> bool:
        """True inside :meth:`muted`: nothing is written."""
        return self._muted

    @contextmanager
    def muted(self) -> Iterator[None]:
        """Say nothing meanwhile (the HUP dry run: the new image logs it all again)."""
        before, self._muted = self._muted, True
        try:
            yield
        finally:
            self._muted = before

    @property
    def function(self) -> Callable[[int, str], Any] | None:
        """The resolved ``log_function`` (None without one)."""
        return self._function

    def open(self, conf: Conf, owner: object) -> None:
        """Open the target ``log_file`` names (a path, ``Sys::Syslog``, or stderr when unset)
        and resolve ``log_function`` (a callable, or the name of a method of ``owner``);
        targets opened before are closed. ConfigError for a file that cannot be opened, an
        unreachable syslog (unless ``nofatal``) or an unknown method name."""
        function = log.resolve_log_function(conf.log_function, owner)
        targets = log.LogTargets.from_conf(conf)
        self.close()
        self._targets, self._function = targets, function
        self.binds_connections = bool(targets.json_lines)
        if self._drops is not None:
            targets.count_drops(self._drops)

    def count_drops(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(count)`` whenever syslog drops messages (the metrics)."""
        self._drops = callback
        if self._targets is not None:
            self._targets.count_drops(callback)

    def connection(self, client: Any) -> contextlib.AbstractContextManager[Any]:
        """Held by a connection's greenlet for its whole life: with ``log_format json``,
        the lines it logs carry ``client``'s facts (:func:`connection_facts`); else
        nothing is done."""
        targets = self._targets
        if targets is None or not targets.json_lines:
            return _NULL
        return self._bound(client)

    @contextmanager
    def _bound(self, client: Any) -> Iterator[None]:
        me = gevent.getcurrent()
        self._clients[me] = client
        try:
            yield
        finally:
            self._clients.pop(me, None)

    def write(self, level: int, message: str) -> None:
        """Pass one message (already filtered by level) on: to ``log_function`` when one is
        set, else (or when it raises) to the sink. Never raises; see the module rules.
        The message is escaped first (:func:`gnetserver.log.escape`: one line, printable
        ASCII), so every sink gets the same safe text, log_function and an overridden
        write_to_log_hook included."""
        message = log.escape(message)
        me = gevent.getcurrent()
        if me in self._inside:  # a sink or log_function that logs: never recurse into it
            log.write_fallback(message)
            return
        self._inside.add(me)
        try:
            with stdio.unbound():  # tie_client_stdout: a handler on sys.stdout stays real
                self._write(level, message)
        finally:
            self._inside.discard(me)

    def _write(self, level: int, message: str) -> None:
        """:meth:`write`'s work, re-entry excluded: ``log_function``; when it raises, the
        error handler (``handle_log_error``; when that raises too, the built-in report), then
        the sink, as Net::Server's ``log`` does."""
        function = self._function
        if function is not None:
            try:
                function(level, message)
                return
            except Exception as exc:  # a broken log function must not break the server
                try:
                    self._on_error(exc, (level, message))
                except Exception:
                    self.report_function_error(exc)
        self._to_sink(level, message)

    def report_function_error(self, error: BaseException) -> None:
        """The default handling of a ``log_function`` that raised: one level-1 line on the
        sink naming the error (the message itself then goes to the sink too)."""
        self._to_sink(1, f"Error in log_function: {type(error).__name__}: {error}")

    def _to_sink(self, level: int, message: str) -> None:
        """The sink, guarded: when it raises, the reason (once, until it works again) and
        the message go to stderr."""
        try:
            self._sink(level, message)
        except Exception as exc:
            reason = None
            if not self._sink_failing:
                reason = (f"write_to_log_hook failed: {type(exc).__name__}: {exc} (messages "
                          "go to stderr until it works again)")
            self._sink_failing = True
            log.write_fallback(message, reason)
        else:
            self._sink_failing = False

    def emit(self, level: int, message: str) -> None:
        """The default sink's work: write to the open targets (or the ``gnetserver`` logger);
        ``log_format json``: with the facts of the connection whose greenlet logs."""
        targets = self._targets or log.LOGGER_TARGETS
        facts = None
        if targets.json_lines and self._clients:
            client = self._clients.get(gevent.getcurrent())
            facts = None if client is None else connection_facts(client)
        targets.emit(level, message, facts)

    def reopen(self) -> str | None:
        """Reopen the log file by its name, reconnect to syslog; the failure text, or None."""
        if self._targets is None:
            return None
        try:
            self._targets.reopen()
        except OSError as exc:
            return f"Couldn't reopen the log ({self._targets.path or 'syslog'}): {exc}"
        return None

    def close(self) -> None:
        """Close the log file or syslog socket; never raises."""
        if self._targets is not None:
            try:
                self._targets.close()
            except OSError as exc:  # the last flush of a log file on a full disk
                log.write_fallback(f"Couldn't close the log: {exc}")


def connection_facts(client: Any) -> dict[str, Any]:
    """What a ``log_format json`` line says of a connection (a
    :class:`~gnetserver.client.Client`): ``peer_addr``, ``peer_port``, ``port``, ``proto``,
    and on TLS ports once the handshake is done ``tls_version``, ``cipher``, ``sni``. Never
    raises (a fact that cannot be read is left out)."""
    facts: dict[str, Any] = {}
    try:
        address = client.address
        if client.peeraddr is not None:
            facts["peer_addr"], facts["peer_port"] = client.peeraddr, client.peerport
        elif isinstance(address, tuple):
            facts["peer_addr"], facts["peer_port"] = address[0], address[1]
        facts["port"] = client.listener.port
        facts["proto"] = client.listener.proto
        if client.tls is not None:
            facts["tls_version"] = client.tls_version
            facts["cipher"] = client.cipher
            facts["sni"] = client.server_name
    except Exception:  # a half-made connection: say what was read
        pass
    return facts


_NULL = contextlib.nullcontext()


class ProcessControl:
    """The server as a process: background, standard streams, pid file, privileges (see the
    module rules). Holds the pid file it wrote.

    Args:
        keep_pid_file: asked when the pid file would be removed (at close and at exit): True
            keeps it (the server's ``keep_pid_file``, set for a HUP re-exec).
    """

    def __init__(self, keep_pid_file: Callable[[], bool]) -> None:
        self._keep = keep_pid_file
        self._pid_file: daemon.PidFile | None = None

    @property
    def pid_file(self) -> daemon.PidFile | None:
        """The pid file written by :meth:`daemonize` (None without ``pid_file``)."""
        return self._pid_file

    def daemonize(self, conf: Conf, logs: ServerLog, redirect: bool | None,
                  say: Callable[[int, str], None]) -> None:
        """Net::Server's order: check ``pid_file`` (ConfigError while a live process owns
        it; a stale one is overwritten with a warning), point stdin/stdout at /dev/null
        (``setsid`` or ``log_file``), fork for ``background``/``setsid`` (the parent exits 0;
        not after a HUP re-exec), setsid, point stderr at the log file (or /dev/null under
        ``setsid``), write the pid file. ``redirect`` None: only in the main thread."""
        main = signals.in_main_thread()
        if (conf.background or conf.setsid) and not main:
            raise ConfigError("options 'background'/'setsid': the server must run in the "
                              "main thread to fork into the background")
        pid_file = daemon.PidFile.from_option(conf.pid_file) if conf.pid_file else None
        if pid_file is not None and (warning := pid_file.check()):
            say(1, warning)
        redirect = main if redirect is None else redirect
        if redirect and (conf.setsid or conf.log_file):
            daemon.stdin_stdout_to_devnull()
        if (conf.background or conf.setsid) and not restart.reexecuted():
            daemon.background(conf.setsid)  # the parent exits 0 in there
            say(2, "Process Backgrounded")
        targets = logs.targets
        if redirect and targets is not None and targets.fileno() is not None \
                and logs.function is None:
            targets.point_stderr()  # tracebacks and warnings land in the log too
        elif redirect and conf.setsid:
            daemon.stderr_to(1)
        if pid_file is not None:
            pid_file.write()
            self._pid_file = pid_file
            atexit.register(_remove_pid_file_at_exit, weakref.ref(self))

    def remove_pid_file(self, say: Callable[[int, str], None]) -> None:
        """Remove the pid file this process wrote, unless it is to be kept (a file that no
        longer holds our pid is left alone). Never raises (problems are said)."""
        if self._pid_file is None or self._keep():
            return
        problem = self._pid_file.remove()
        if problem:
            say(1, problem)

    def forget_pid_file(self) -> None:
        """In a HUP's drainer: the pid file names the new image (the drainer's parent), never
        this process; it is neither removed nor rewritten from here (not at exit either)."""
        self._pid_file = None

    def drop_privileges(self, conf: Conf, unix_paths: list[str], logs: ServerLog,
                        say: Callable[[int, str], None]) -> None:
        """Net::Server's order: hand the files the server keeps writing (the log file by its
        descriptor, unix socket files without following links) to ``user``/``group``,
        ``chroot``, then setgid and setuid. The pid file is not handed over: it stays owned
        by the user who started the server (root). Unknown names, a missing chroot, ``user``
        on a start that is not root's, ``chroot`` leaving uid 0 without ``chroot_as_root``,
        a refused or failed chown and a failed switch are ConfigErrors."""
        identity = privileges.resolve(conf.user, conf.group)
        if identity is None and os.geteuid() == 0:
            say(2, "Running as root: set 'user' (and 'group') to drop privileges")
        descriptors = []
        targets = logs.targets
        if targets is not None and targets.path and (fd := targets.fileno()) is not None:
            descriptors.append((targets.path, fd))
        privileges.drop(identity, conf.chroot, descriptors, unix_paths, say,
                        conf.chroot_as_root)
        if conf.chroot:  # the files the server still opens by name, seen from the new root
            if self._pid_file is not None:
                self._pid_file.path = privileges.rebase(self._pid_file.path, conf.chroot)
            if targets is not None:
                targets.rebase(privileges.rebase, conf.chroot)


def check_process_options(conf: Conf, owner: object) -> None:
    """For the HUP preflight: what post_configure and post_bind would refuse that can be
    checked without acting: ``user``/``group`` names (and a switch only root could make),
    ``chroot`` leaving uid 0 without ``chroot_as_root``, ``log_function`` naming no method of
    ``owner``, a ``log_file`` path that cannot be written (looked up, not opened). ConfigError
    as the start would raise it."""
    identity = privileges.resolve(conf.user, conf.group)
    privileges.check(identity, conf.chroot, conf.chroot_as_root)
    log.resolve_log_function(conf.log_function, owner)
    target = conf.log_file
    if not target or target == "Sys::Syslog" or conf.chroot:
        return
    path = os.path.abspath(target)
    probe = path if os.path.exists(path) else os.path.dirname(path)
    effective = os.access in os.supports_effective_ids
    if not os.access(probe, os.W_OK, effective_ids=effective):
        raise ConfigError(f"option 'log_file': cannot open {target!r}: {probe!r} is not "
                          "writable")


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE toward ``needed`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _remove_pid_file_at_exit(ref: weakref.ref[ProcessControl]) -> None:
    """atexit: remove the pid file of a server that exited without server_close (a failed
    start, an exception); a HUP re-exec never gets here (exec runs no atexit handlers)."""
    process = ref()
    if process is not None:
        process.remove_pid_file(lambda level, message: None)
