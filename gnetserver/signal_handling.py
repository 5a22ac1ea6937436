"""SignalHandlingMixin: what the server does on TERM, INT, QUIT and HUP, and the HUP restart.

Rules of this module (behaviour: spec/netserver.md section 6):

* The OS-level handlers only queue the signal's name (:class:`gnetserver.signals.SignalQueue`);
  every ``handle_<name>`` here runs later, in the greenlet of the server's loop (or of
  server_close while it drains), so it may log and touch server state freely.
* A handler never closes anything itself: TERM and INT call ``stop(0)`` (no drain, or the
  running drain ends now), QUIT sets the stop request (a drain of ``graceful_timeout``), HUP
  sets the ``restarting`` flag and the stop request (a drain, then a re-exec keeping the
  listening sockets: :mod:`gnetserver.restart`); server_close does the closing, in one place.
* While server_close drains, signals still go to their ``handle_<name>``, which knows what it
  means then: TERM and INT end the drain (through ``stop(0)``, so an override that does not
  call it keeps the drain running); QUIT and HUP are logged and ignored (a close is running).
* The restart hooks (``restart_open_hook``, ``restart_close_hook``) are empty, for users; the
  lifecycle calls them (``bind`` in the new image, ``server_close`` in the old one).
* Before a HUP restarts anything, :func:`dry_run_start` runs the new image's start-up without
  its effects (options from every source, ports, TLS contexts of ssl and ssleay ports, user
  and group names, log_function, log_file's folder) in the environment the exec will give it;
  if that fails the HUP is refused and the server goes on as it was. What it cannot foresee
  (binding, user hooks...) is listed in :func:`dry_run_start`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from . import log, privileges, restart, signals
from .errors import ConfigError
from .options import Option
from .tls import TLSContexts

if TYPE_CHECKING:
    from gevent.event import Event

    from .listener import Listener


class SignalHandlingMixin:
    """The signal steps of :class:`~gnetserver.server.GServer`: ``register_signals``,
    ``dispatch_signals``, ``handle_term``/``int``/``quit``/``hup``, and the restart hooks."""

    #: True once a HUP asked for a re-exec: server_close hands the sockets to the new image
    #: (the exec never returns, so the pid file stays).
    restarting: bool = False
    #: The queue the signal handlers fill (main thread only; set by register_signals).
    _signal_queue: signals.SignalQueue | None = None

    if TYPE_CHECKING:  # provided by the server class
        _stop_requested: Event
        _closing: bool
        conf: dict[str, Any]
        listeners: list[Listener]
        tls_contexts: TLSContexts | None

        def options(self) -> list[Option]: ...

        def log(self, level: int, message: str) -> None: ...
        def reopen_logs(self) -> None: ...
        def stop(self, timeout: float | None = None) -> None: ...

    def register_signals(self) -> None:
        """Framework step (in post_bind): set up Net::Server's signals (spec 6.1): TERM and INT
        stop at once, QUIT stops gracefully, HUP re-executes the server keeping its sockets.

        The handlers only queue the signal; ``loop`` installs them when it starts (so a
        server embedded with ``start`` leaves the program's signals alone) and runs
        ``handle_<name>`` in its own greenlet. Only the main thread may install handlers:
        elsewhere (a ServerThread) this is a no-op, logged at level 4.
        """
        if not signals.in_main_thread():
            self.log(4, "Not in the main thread: signal handlers not installed")
            return
        self._signal_queue = signals.SignalQueue()

    def dispatch_signals(self, names: Sequence[str]) -> None:
        """Framework step (in loop, and in server_close while it drains): call
        ``handle_<name>`` for each queued signal, in order."""
        for name in names:
            handler = getattr(self, f"handle_{name.lower()}", None)
            if handler is None:
                self.log(2, f"Received a SIG {name}: no handle_{name.lower()}, ignored")
            else:
                handler()

    def handle_term(self) -> None:
        """SIGTERM (run by the loop, or by server_close while it drains; not the OS handler):
        ``stop(0)``: stop at once, in-flight connections are cut (a running drain ends, a HUP
        restart in progress is abandoned)."""
        self.log(2, "Received a SIG TERM: stopping now")
        self.stop(0)

    def handle_int(self) -> None:
        """SIGINT (run by the loop, or while draining): like TERM, ``stop(0)``."""
        self.log(2, "Received a SIG INT: stopping now")
        self.stop(0)

    def handle_quit(self) -> None:
        """SIGQUIT (run by the loop): stop accepting; in-flight connections get
        ``graceful_timeout`` seconds to finish, then they are cut and the server exits.
        While the server closes already, logged and ignored."""
        if self._ignored_while_closing("QUIT"):
            return
        self.log(2, "Received a SIG QUIT: stopping after in-flight connections finish")
        self._stop_requested.set()

    def handle_hup(self) -> None:
        """SIGHUP (run by the loop): re-execute the server in place, keeping its listening
        sockets (Net::Server's ``BOUND_SOCKETS``), so that the conf file, certificates and code
        are read again with no connection refused. In-flight connections get
        ``graceful_timeout`` to finish first; the pid and the pid file stay. Log files are
        reopened at once (logrotate). First a dry run of the new image's start-up
        (``restart_problem``): if it fails, the HUP is refused (level 1) and nothing changes.
        While the server closes already (a drain runs), logged and ignored."""
        if self._ignored_while_closing("HUP"):
            return
        self.log(2, "Received a SIG HUP: restarting in place")
        self.reopen_logs()  # messages until the exec go to the new file
        problem = self.restart_problem()
        if problem is not None:
            self.log(1, f"HUP ignored, still serving with the current configuration: {problem}")
            return
        self.restarting = True
        self._stop_requested.set()

    def restart_problem(self) -> str | None:
        """What would make the re-executed server fail to start, found before the exec by a
        dry run (:func:`dry_run_start`); None if nothing. Run by handle_hup; a problem makes
        it refuse the HUP (level 1), so a bad edit of the conf file or a botched certificate
        renewal cannot take the server down.
        """
        try:
            with _as_the_reexec_sees_it(self.listeners):
                dry_run_start(self)
        except ConfigError as exc:
            return str(exc)
        except Exception as exc:  # the new image runs the same code: it would fail there too
            return f"{type(exc).__name__}: {exc}"
        return None

    def restart_open_hook(self) -> None:
        """Hook: in the re-executed server after a HUP, in bind, before the inherited sockets
        are adopted (options are read; nothing is bound yet)."""

    def restart_close_hook(self) -> None:
        """Hook: on HUP, in server_close, after connections finished and right before the exec
        (the listening sockets are still open, handed to the new image)."""

    def _unregister_signals(self) -> None:
        """In server_close: cancel the handlers ``loop`` installed (the program's own signal
        handlers apply again)."""
        if self._signal_queue is not None:
            self._signal_queue.uninstall()

    def _ignored_while_closing(self, name: str) -> bool:
        """True (and said at level 2) when server_close runs already: a signal that asks for
        a close, or a restart, has nothing left to do."""
        if self._closing:
            self.log(2, f"Received a SIG {name} while closing: ignored")
        return self._closing


# -- the HUP preflight --------------------------------------------------------------------------


def dry_run_start(server: Any) -> Any:
    """The start-up the re-executed server will run, minus every effect outside the objects it
    makes (called by ``restart_problem``; raises what the start would raise).

    On a new instance of the server's class (:func:`_fresh_instance`): ``configure`` (every
    source read again: constructor options, command line, ``run()`` options, conf file,
    ``default_values()``), ``pre_bind`` (port specs, SSL_* options that no port uses) and
    ``make_protocol`` for every port (the TLS contexts of ssl and ssleay ports built from the
    files now on disk, per-port keys checked); then the process options that can be checked
    without acting on them (:func:`_check_process_options`).

    Not foreseen: binding (a new port already taken, or below 1024 once privileges are
    dropped, fails in the new image only), anything the user hooks do or raise
    (``configure_hook``, ``post_configure_hook``... are not run: they may have effects), the
    fork, the pid file, a syslog that cannot be reached, chown/chroot/setuid. Nothing is
    bound, forked, written or opened for writing, no signal is touched, and nothing is logged
    (the new image logs it all again).

    Returns:
        The dry-run instance (its ``conf`` and ``port_specs``), for tests.
    """
    fresh = _fresh_instance(server)
    fresh.configure()
    fresh.pre_bind()
    for spec in fresh.port_specs:
        fresh.make_protocol(spec)
    _check_process_options(fresh)
    return fresh


def _discard(*args: Any) -> None:
    """The dry run's log and TLS warnings: the new image logs them again."""


def _fresh_instance(server: Any) -> Any:
    """A new, unstarted instance of the server's class with the same constructor options,
    command line and ``run()`` options.

    Attributes the program or its hooks set on the running server (a path that an
    ``SSL_cert_file`` method returns...) are carried over, shallowly: the re-executed script
    sets them again, and without them the dry run would refuse a HUP the new image survives.
    The framework's own state is new (``GServer.__init__``): no options, ports or listeners,
    a TLS registry of its own, and a log that discards (``__init__`` of a subclass is not run:
    its signature is the program's business).
    """
    from .server import GServer  # server.py imports this module

    cls = type(server)
    fresh = cls.__new__(cls)
    fresh.__dict__.update(server.__dict__)
    GServer.__init__(fresh, server.commandline, **server.new_args)
    fresh.run_args = dict(server.run_args)
    fresh.log = _discard
    fresh.tls_contexts = TLSContexts(_discard)
    return fresh


def _check_process_options(fresh: Any) -> None:
    """What post_configure and post_bind would refuse that can be checked without acting:
    ``user``/``group`` names, ``log_function`` naming no method, a ``log_file`` path that
    cannot be written (looked up, not opened). ConfigError as the start would raise it."""
    conf = fresh.conf
    privileges.resolve(conf.get("user"), conf.get("group"))
    log.resolve_log_function(conf.get("log_function"), fresh)
    target = conf.get("log_file")
    if not target or target == "Sys::Syslog" or conf.get("chroot"):
        return
    path = os.path.abspath(target)
    probe = path if os.path.exists(path) else os.path.dirname(path)
    effective = os.access in os.supports_effective_ids
    if not os.access(probe, os.W_OK, effective_ids=effective):
        raise ConfigError(f"option 'log_file': cannot open {target!r}: {probe!r} is not "
                          "writable")


@contextmanager
def _as_the_reexec_sees_it(listeners: Sequence[Listener]) -> Iterator[None]:
    """For the dry run: ``BOUND_SOCKETS`` set as the exec will set it, and the directory the
    exec starts in (:data:`gnetserver.restart.START_CWD`); both put back afterwards. The dry
    run does not yield to other greenlets, so only other threads could see them meanwhile.
    Raises ConfigError when that directory is gone (the exec would fail)."""
    # Those the exec will not pass on are left out: the new image binds them again.
    entries = [entry for _, entry in restart.listener_entries(listeners)]
    saved_env = os.environ.get(restart.ENV)
    try:  # by fd: the way back even if its path changed (O_PATH: no read permission needed)
        here: int | None = os.open(".", getattr(os, "O_PATH", os.O_RDONLY))
    except OSError:
        here = None  # cannot come back: stay here, relative paths may then be misjudged
    os.environ[restart.ENV] = restart.encode(entries)
    try:
        if here is not None:
            try:
                os.chdir(restart.START_CWD)
            except OSError as exc:
                raise ConfigError(f"the server would restart in {restart.START_CWD!r}, "
                                  f"where it started: {exc.strerror}") from None
        yield
    finally:
        if here is not None:
            os.fchdir(here)
            os.close(here)
        if saved_env is None:
            os.environ.pop(restart.ENV, None)
        else:
            os.environ[restart.ENV] = saved_env
