"""GServer: Net::Server's lifecycle and hooks over gevent.

Rules of this module:

* :meth:`GServer.run`, :meth:`GServer.run_client_connection` and :meth:`GServer.server_close`
  are the one place that knows the hook order; each reads as a table of contents, one call per
  line.
* Hooks named ``*_hook`` are empty, for users. Methods without the suffix are framework steps:
  override them only with ``super()``.
* The server holds no protocol, TLS, access, log or process mechanics: it owns collaborators
  that do, each with its own state and public methods: ``lifecycle``
  (:class:`~gnetserver.lifecycle.Lifecycle`: the one state, stop, close, drain, signals),
  ``personality`` (:mod:`gnetserver.personality`: how connections are accepted, from
  ``server_type``), ``listeners`` (built by :mod:`gnetserver.listen`), ``tls_contexts``
  (:class:`~gnetserver.tls.TLSContexts`), ``access`` (:class:`~gnetserver.access_control.
  AccessPolicy`), ``logs`` and ``process`` (:mod:`gnetserver.operations`), ``acme``
  (:class:`~gnetserver.acme.AcmeManager`, with ``SSL_acme_domains``).
* Server-wide hooks run in the greenlet that called ``run()``/``start()``. Per-connection hooks
  run in the connection's own greenlet and receive the :class:`~gnetserver.client.Client`;
  many connections share the server object, so keep per-connection state on the client.
* An exception in a per-connection hook ends that connection only: it is logged (level 1 with
  a traceback; timeouts and disconnects at level 3 without) and the client is closed. So do
  MemoryError and RecursionError (Exceptions, on purpose not fatal to the server): one
  oversized allocation or one runaway recursion is undone as the connection's greenlet
  unwinds, and the other connections never saw it; a process really out of memory is ended by
  the kernel's OOM killer, which no handler code could prevent.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

from . import acme_plan, blocking, inet, listen, log, proxyproto, restart, stdio, tls_setup
from .access import AccessRules
from .access_control import AccessPolicy
from .client import Client
from .conf import Conf, plan_conf
from .errors import (
    ConfigError,
    Fatal,
    HandshakeTimeout,
    LineTooLong,
    SessionWaitTimeout,
    TLSError,
)
from .lifecycle import Lifecycle
from .listener import Listener
from .metrics import Metrics, ServedCertificate, answer_scrape, expiring, failure_reason
from .operations import ProcessControl, ServerLog, check_process_options, raise_open_file_limit
from .options import DEFAULT_PORT, NETSERVER_COMPAT, OPTIONS, PREFORK, Option, table
from .periodic import Periodic
from .personality import (
    DEFAULT_PERSONALITY,
    PERSONALITIES,
    Evicted,
    Personality,
    PreFork,
    ProcessHooks,
    personality_name,
)
from .ports import PortSpec
from .proto import Datagram, StreamProtocol
from .proxy_reader import ProxyHeaderError, ProxyHeaderTimeout, read_header
from .signals import SIGNALS
from .systemd import Notifier
from .tls import TLSContexts

if TYPE_CHECKING:
    from .acme import AcmeManager

#: The longest line the default echo (``process_request``) reads, its end included.
ECHO_LINE_LIMIT = 64 * 1024

#: Seconds the default echo waits for a line before it says "Timed Out." (Net::Server's
#: ``alarm 30``); a shorter ``timeout_idle`` wins.
ECHO_TIMEOUT = 30.0

#: Net::Server PreFork keys that size one-connection children: no meaning for gevent workers.
SPARE_SERVER_OPTIONS = ("min_servers", "min_spare_servers", "max_spare_servers")

#: Options a PreFork HUP (which reloads in place, without a re-exec) cannot apply: the
#: listeners, the process and the log targets were set up once, and the TLS contexts are
#: rebuilt from the options they were built with (their files are read again).
RELOAD_NEEDS_RESTART = frozenset({
    "conf_file", "port", "host", "proto", "ipv", "listen", "unix_mode", "pid_file",
    "background", "setsid", "user", "group", "chroot", "chroot_as_root", "log_file",
    "log_function", "syslog_logsock", "syslog_ident", "syslog_logopt", "syslog_facility",
    "server_type", "self_signed", "metrics_port", "log_format",
})


#: The context of a connection with nothing to set up (one shared object, reentrant).
_NO_CONTEXT = contextlib.nullcontext()


@dataclass(frozen=True)
class DryRun:
    """What the HUP preflight planned: the new image's options and port specs."""

    conf: Conf
    port_specs: list[PortSpec]


class GServer:
    """A Net::Server style server: subclass it, override hooks, call :meth:`run`.

    Methods for the caller: ``run(**options)`` (Net::Server style: reads the command line, runs
    until stopped), ``serve_forever()`` (the same without reading the command line),
    ``start()`` / ``stop(timeout)`` (embed the server in another program or a test),
    ``reload_tls()`` (new certificates for new connections), ``reopen_logs()`` (after
    logrotate), ``log(level, message, *args)``, ``fatal(message)``, ``run_blocking(fn,
    *args)`` (a blocking call in gevent's thread pool); attributes ``listeners`` (the bound
    sockets: find kernel-chosen ports there), ``conf`` (the option values), ``requests`` (a count),
    ``lifecycle`` (``lifecycle.state``: where the server is), ``personality`` and
    ``notifier`` (:class:`~gnetserver.systemd.Notifier`: systemd's sd_notify; READY=1 in
    ``start_accepting``, RELOADING=1 in ``handle_hup``, STOPPING=1 in ``server_close``).

    Hooks for users (no-ops by default): ``configure_hook``, ``post_configure_hook``,
    ``post_bind_hook``, ``pre_loop_hook``, ``pre_server_close_hook``, ``restart_open_hook``
    and ``restart_close_hook`` (HUP re-exec), ``write_to_log_hook`` (the default log sink),
    under PreFork ``child_init_hook``, ``child_finish_hook``, ``run_n_children_hook`` and
    ``idle_loop_hook``, ``run_dequeue``/``dequeue`` (``check_for_dequeue``), ``fatal_hook``,
    ``server_exit``, ``handle_log_error``, ``post_child_cleanup_hook``, and per connection
    ``post_accept_hook``, ``allow_deny_hook``, ``request_denied_hook``,
    ``post_process_request_hook``, ``post_client_connection_hook``. The main one to override is
    ``process_request(client)``; its default is Net::Server's echo.

    Framework steps (override only with ``super()``): ``options``, ``default_values``,
    ``configure``, ``post_configure`` (``initialize_logging``, ``daemonize``), ``pre_bind``,
    ``bind`` (``make_protocol``, ``ssl_options``, ``self_signed_certificate``), ``post_bind``
    (``drop_privileges``, ``register_signals``), ``loop`` (``make_personality``,
    ``dispatch_signals`` -> ``handle_term``, ``handle_int``, ``handle_quit``, ``handle_hup``),
    ``server_close`` (``remove_pid_file``), and per connection ``read_proxy_header`` (on
    ``proxy_protocol`` ports; ``proxy_settings`` plans them), ``post_accept``,
    ``get_client_info``, ``allow_deny`` (``access_rules``; ``prepare_access`` compiles them
    when accepting starts), ``post_process_request``, ``connection_error``.

    Class attributes that may be overridden: ``redirect_std_streams``, ``keep_pid_file``.

    Args:
        commandline: the words to read options from in ``run()``; default ``sys.argv[1:]``.
        **options: options with the highest precedence (see :mod:`gnetserver.options`).
    """

    #: Whether daemonize may point the process's stdin/stdout/stderr elsewhere, as Net::Server
    #: does under ``setsid`` or ``log_file``. None (default): only when the server runs in the
    #: main thread (a server in a ServerThread leaves the host program's streams alone).
    redirect_std_streams: bool | None = None
    #: True keeps the pid file when the server closes (a HUP re-exec keeps pid and file).
    keep_pid_file: bool = False

    def __init__(self, commandline: Sequence[str] | None = None, **options: Any) -> None:
        self.new_args: dict[str, Any] = options
        self.commandline: list[str] | None = None if commandline is None else list(commandline)
        self.run_args: dict[str, Any] = {}
        self.conf: Conf = Conf()  # the table's defaults until configure
        self.argv_unused: list[str] = []
        self.port_specs: list[PortSpec] = []
        self.listeners: list[Listener] = []
        self.requests = 0
        self.lifecycle = Lifecycle()
        self.personality: Personality | None = None  # made when accepting starts
        self.tls_contexts: TLSContexts | None = None  # made by bind
        # SSL_acme_domains: made by the first port that asks (ssl_options), started with
        # accepting, stopped in server_close.
        self.acme: AcmeManager | None = None
        # Collaborators call back through methods that look the hook up at each call
        # (_say and the lambdas): a hook replaced on the instance counts.
        self.access = AccessPolicy(self._say)
        self.logs = ServerLog(lambda level, message: self.write_to_log_hook(level, message),
                              lambda error, record: self.handle_log_error(error, record))
        self.process = ProcessControl(lambda: self.keep_pid_file)
        # Child processes to reap: the drainers of HUPs (this image's, or an earlier one's).
        self.children = restart.Children(self._say)
        self._ready_fd: int | None = None  # the previous generation's ready pipe (after HUP)
        # sd_notify (READY/RELOADING/STOPPING) when NOTIFY_SOCKET is set; else every call no-ops
        self.notifier = Notifier.from_environment(self._say)
        self._self_signed = tls_setup.SelfSigned()
        self.exit_status = 0  # server_exit's argument at the end of run(): 1 after fatal()
        self.dequeue_timer: Periodic | None = None  # check_for_dequeue's, while serving
        # Records nothing until make_metrics (metrics_port set) gives the real one.
        self.metrics: Metrics = Metrics()
        self.metrics_spec: PortSpec | None = None  # metrics_port's, planned by pre_bind
        self.expiry_timer: Periodic | None = None  # the daily certificate check, serving
        self._served: list[ServedCertificate] | None = None  # read at start and reload
        self._tied = False  # tie_client_stdout: this server installed the stdio proxies
        # Set at the first connection (_detect_hooks); until then every hook is called and
        # every metric recorded.
        self._hooked = False
        self._noop_hooks: frozenset[str] = frozenset()
        self._metrics_on = True

    def _say(self, level: int, message: str) -> None:
        """:meth:`log`, looked up at each call: what collaborators are given to log with."""
        self.log(level, message)

    # == entry points ===========================================================================

    def run(self, **run_args: Any) -> None:
        """Run the server's whole life, Net::Server's ``run()``; returns once it is closed."""
        self.run_args = run_args
        if self.commandline is None:
            self.commandline = sys.argv[1:]
        try:
            self._start_up()
            self.loop()  # serve until stop() (or Ctrl-C)
        except KeyboardInterrupt:
            self.log(2, "Received INT: stopping")
        except Fatal:  # fatal() logged it and asked for the stop
            self.exit_status = self.exit_status or 1
        self.server_close()  # stop accepting, finish connections, release ports
        self.server_exit(self.exit_status)  # Net::Server's: the default exits on a failure

    def serve_forever(self) -> None:
        """Like :meth:`run`, without reading options from the command line."""
        if self.commandline is None:
            self.commandline = []
        self.run()

    def start(self) -> GServer:
        """Configure, bind and start accepting, then return (the hub serves in the background).

        Call :meth:`stop` to close. Reads no command line unless ``commandline`` was given.
        """
        if self.commandline is None:
            self.commandline = []
        self._start_up()
        if not self.lifecycle.closing:  # stop() in a start-up hook has closed everything
            self.start_accepting()
        return self

    def _start_up(self) -> None:
        """Everything before the loop; on failure, whatever was bound is released and a pid
        file this process wrote is removed."""
        inherited = restart.take_inherited()  # after a HUP: the drainer to reap and tell
        self._ready_fd = inherited.ready_fd
        for pid in inherited.children:
            self.children.add(pid)
        steps = (
            self.configure_hook,  # user: set up state before parsing
            self.configure,  # options from every source, with Net::Server's precedence
            self.post_configure,  # open-file limit, logging, background, pid file
            self.post_configure_hook,  # user: validate custom options
            self.pre_bind,  # port options -> port specs
            self.bind,  # one listening socket per address, TLS contexts built (-> BOUND)
            self.post_bind_hook,  # user: runs with the privileges the server started with
            self.post_bind,  # drop privileges, prepare signal handlers
            self.pre_loop_hook,  # user: last preparation before serving
        )
        try:
            for step in steps:
                step()
                if self.lifecycle.closing:  # stop() in a step: what it closed stays closed
                    self.release_listeners()
                    return
        except BaseException:
            self.release_listeners()
            self.remove_pid_file()
            self.metrics.close()  # PreFork: its directory
            if not self.lifecycle.closing:
                self.lifecycle.start_failed()
            raise

    # == configuration (gnetserver.conf: one pure plan of every source) ========================

    def configure_hook(self) -> None:
        """Hook: first thing in :meth:`run`, before any option is read. May set attributes."""

    def options(self) -> list[Option]:
        """The option table. Subclasses add their own: ``return super().options() + [...]``.

        :meth:`option_table` (the ``gnetserver`` command, ``--help``) calls it on an instance
        whose ``__init__`` has not run (so that ``--help`` works for any class): it must not
        depend on state ``__init__`` sets.
        """
        return list(OPTIONS)

    @classmethod
    def option_table(cls) -> dict[str, Option]:
        """The option table of this class, by name: the one place that reads a class's table
        before any server of it exists. Called by the ``gnetserver`` command (``--help``, its
        check of the command line); :meth:`configure` reads its own instance's table instead
        (a hook may have set state that ``options()`` reads).

        ``options()`` is an instance hook (Net::Server's, overridable with ``super()``), so it
        is called on a bare ``cls.__new__(cls)``: ``__init__`` does not run, since a user's
        class may need constructor arguments the command cannot give. Raises ValueError when
        the table declares a name twice."""
        return table(cls.__new__(cls).options())

    def default_values(self) -> dict[str, Any]:
        """Lowest-precedence values (Net::Server's ``default_values``); override to set defaults."""
        return {}

    def configure(self) -> None:
        """Framework step (first in run(), after configure_hook): plan the configuration from
        the server's sources (:meth:`plan_options`) and set ``self.conf`` (the frozen
        :class:`~gnetserver.conf.Conf`; ``conf.sources``: the source of every option one set)
        and ``self.argv_unused`` (command-line words no option took). Raises ConfigError
        naming a bad option."""
        self.conf, self.argv_unused = self.plan_options()

    @property
    def conf_sources(self) -> Mapping[str, str]:
        """Where each option some source set came from (``self.conf.sources``)."""
        return self.conf.sources

    def plan_options(self) -> tuple[Conf, list[str]]:
        """The options from every source (constructor, command line, ``run()``, conf file,
        ``default_values()``, the IPV variable), planned by the one pure function
        :func:`gnetserver.conf.plan_conf` that ``configure``, ``gnetserver --help`` and the
        HUP preflight share; returns the configuration and the command-line words no option
        took. Changes nothing."""
        return plan_conf(table(self.options()), constructor=self.new_args,
                         commandline=self.commandline or [], run_args=self.run_args,
                         default_values=self.default_values(), environ=os.environ)

    def warn_inert_options(self) -> None:
        """Framework step, in post_configure once the log targets are open: one level-1 log
        line naming, with their values, the options of the "Net::Server compatibility" section
        that some source set (other personalities' keys, such as ``serialize``: accepted, no
        effect here; ``server_type`` values that name no personality gnetserver has;
        ``workers`` and ``max_requests`` when the personality is not PreFork). Under PreFork,
        ``min_servers``/``min_spare_servers``/``max_spare_servers`` get one more level-1 line
        saying what gnetserver does instead. Logs nothing when there is none. Reads
        ``self.conf``; touches nothing else."""
        given = []
        prefork = personality_name(self.conf["server_type"]) == PreFork.name
        for option in self.options():
            value = self.conf.get(option.name, option.default)
            if option.name == "server_type":
                value = [name for name in value if name not in PERSONALITIES]
                inert = bool(value)
            elif option.section == PREFORK:  # workers, max_requests: PreFork's only
                inert = not prefork and option.name in self.conf.sources
            else:
                inert = option.section == NETSERVER_COMPAT and value != option.default
            if inert:
                shown = ",".join(map(str, value)) if option.multi else value
                given.append(f"{option.name}={shown}")
        if given:
            self.log(1, f"ignored Net::Server options (no effect here): {', '.join(given)}")
        spare = [name for name in SPARE_SERVER_OPTIONS if self.conf.get(name) is not None]
        if prefork and spare:
            self.log(1, f"PreFork: {', '.join(spare)} size Net::Server's one-connection "
                        f"children; gnetserver runs a fixed set of workers={self.conf.workers} "
                        f"processes, each serving up to max_servers={self.conf.max_servers} "
                        "sessions at once (set workers instead; TTIN/TTOU add or remove one)")

    def post_configure(self) -> None:
        """Apply what the options ask for before binding: raise the open-file limit so the
        pools fit, open the log targets, then report (there) the command-line words and the
        Net::Server options that have no effect, then background and write the pid file,
        then make the metrics (:meth:`make_metrics`)."""
        needed = 2 * (self.conf.max_servers + self.conf.max_handshakes) + 64
        raise_open_file_limit(needed)
        self.initialize_logging()  # log_file, syslog, log_function
        if self.conf.monkey_patch:
            self.monkey_patch()  # before anything else of the start makes sockets or threads
        if self.argv_unused:
            self.log(2, f"Command-line words not used by the server: {' '.join(self.argv_unused)}")
        self.warn_inert_options()  # Net::Server keys with no effect here: one level-1 line
        self.daemonize()  # background/setsid, pid_file
        # After the background fork (the process that closes owns PreFork's directory),
        # before anything counts and before any worker is forked.
        self.metrics = self.make_metrics()
        self.logs.count_drops(self.metrics.log_dropped)

    def post_configure_hook(self) -> None:
        """Hook: after options are read (``self.conf`` is complete). Validate custom options."""

    # == metrics (gnetserver.metrics) ===========================================================

    def make_metrics(self) -> Metrics:
        """Framework step (last in post_configure, after daemonize): the metrics collaborator.
        Without ``metrics_port``, :class:`~gnetserver.metrics.Metrics`, which records nothing;
        with it, prometheus-client's (:mod:`gnetserver.metrics_prometheus`; under PreFork in
        multiprocess mode, so that one scrape sees every process). ConfigError when
        prometheus-client cannot be imported."""
        self.metrics.close()  # a second start of the same server
        if self.conf.metrics_port is None:
            return Metrics()
        try:
            from .metrics_prometheus import PrometheusMetrics
        except ImportError as exc:
            raise ConfigError(f"option 'metrics_port' = {self.conf.metrics_port!r} needs the "
                              f"prometheus-client package (pip install prometheus-client): "
                              f"{exc}") from None
        if personality_name(self.conf["server_type"]) == PreFork.name:
            return PrometheusMetrics.for_prefork()
        return PrometheusMetrics()

    def check_certificates(self, daily: bool = False) -> list[ServedCertificate]:
        """Framework step (when accepting starts, after a TLS reload, then daily in a
        greenlet of this process; under PreFork the parent's): read the leaf certificate each
        TLS port serves (per SNI name; the files its context was built from, read again at
        start and after a reload only: the ``daily`` check reuses what they said, so a
        passphrase callback of a PKCS#12 file is not called daily), set the expiry metrics,
        and log at level 1 each one that expires within ``SSL_cert_expiry_warning`` days.
        One that has expired already is flagged too, and said by the ``daily`` check (at
        start and reload the TLS layer said it while loading it). A certificate that cannot
        be read is said at level 1 and skipped. Returns those expiring or expired. Any
        greenlet of the hub may call it (it reads small files)."""
        if not daily or self._served is None:
            self._served = self._served_certificates()
        served = self._served
        days = float(self.conf.get("SSL_cert_expiry_warning", 0) or 0)
        soon = expiring(served, days)
        for cert in soon:
            left = (cert.not_after - time.time()) / 86400
            if left < 0 and not daily:
                continue  # the TLS layer said it when it loaded the certificate
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(cert.not_after))
            state = f"expired on {when} UTC" if left < 0 else \
                f"expires on {when} UTC, in {left:.1f} days"
            sni = f" (SNI name {cert.sni!r})" if cert.sni else ""
            self.log(1, f"WARNING: the certificate of port {cert.port}{sni}, {cert.subject}, "
                        f"{state} (SSL_cert_expiry_warning {days:g} days)")
        self.metrics.certificates(served, soon)
        return soon

    def _served_certificates(self) -> list[ServedCertificate]:
        """The leaf certificates of every TLS listener, read from its resolved options."""
        served: list[ServedCertificate] = []
        done: set[tuple[int, str]] = set()
        for listener in self.listeners:
            port = str(listener.port)
            if not listener.protocol.is_tls or (id(listener.spec), port) in done:
                continue
            done.add((id(listener.spec), port))
            where = f"port {listener.spec}"
            # The handle's options: the bind's, or those ACME reconfigured it with since.
            handle = getattr(listener.protocol, "tls_handle", None)
            try:
                leaves = tls_setup.served_certificates(handle.options if handle else {}, where)
            except ConfigError as exc:
                self.log(1, f"Certificate expiry check: {exc}")
                continue
            served += [ServedCertificate(port, name, cert.not_valid_after_utc.timestamp(),
                                         cert.subject.rfc4514_string())
                       for name, cert in leaves]
        return served

    def serve_metrics(self, client: Client) -> None:
        """Framework step, for a connection of the ``metrics_port`` listener, after its PROXY
        header, address check and TLS handshake: the peer facts and the access rules (a
        denied peer is closed, counted, no hook runs), then one HTTP request answered with
        the exposition (:func:`gnetserver.metrics.answer_scrape`), then the close. No user
        hook runs and no ``max_servers`` slot is taken."""
        try:
            self.get_client_info(client)
            if not self.access.allows(client):
                self.metrics.denied(client.listener)
                return
            answer_scrape(client, self.metrics)
        except Exception as exc:
            self.connection_error(client, exc)
        finally:
            client.close()

    # == blocking code (gnetserver.blocking) ====================================================

    def monkey_patch(self) -> None:
        """Framework step (in post_configure, with the ``monkey_patch`` option): apply
        ``gevent.monkey.patch_all()`` unless the process is patched already. ConfigError
        where patching this late is unsafe (not the main thread, other threads running,
        modules holding the stdlib ssl classes): see :mod:`gnetserver.blocking`."""
        blocking.monkey_patch(self.log)

    def run_blocking(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` in a thread of gevent's pool and return its value (or
        raise its exception): the calling greenlet waits, every other connection is served
        meanwhile. For a blocking call monkey patching does not reach (a C library, a
        driver); the pool has ``gevent.get_hub().threadpool.maxsize`` threads (10 by
        default), further calls wait for one. ``fn`` runs in another thread: it must not
        touch the client or other greenlets' objects. Any greenlet of the server may call it."""
        return blocking.run_blocking(fn, *args, **kwargs)

    # == logging and the process (gnetserver.operations) ========================================

    def initialize_logging(self) -> None:
        """Framework step (in post_configure): open the target ``log_file`` names (a file
        path, ``Sys::Syslog``, or stderr when unset) and resolve ``log_function`` (a callable,
        or the name of a method of the server). Raises ConfigError for a file that cannot be
        opened, an unreachable syslog (unless ``nofatal``) or an unknown method name."""
        self.logs.open(self.conf, self)

    def log(self, level: int, message: str, *args: Any) -> None:
        """Log ``message`` at Net::Server ``level`` if ``log_level`` allows it: to
        ``log_function`` when one is set, else (or when it raises: ``handle_log_error``
        first) to write_to_log_hook, escaped for either (:func:`gnetserver.log.escape`: a
        peer cannot forge a line). Never raises: a sink that raises, or logs from inside
        itself, gets the message written to stderr instead.

        As Net::Server's ``log(level, format, @args)``: with ``args``, ``message`` is a
        format, ``message % args`` (Python's %-formatting, Perl's sprintf; formatted only
        when the level is logged; a format that does not fit its arguments is logged as
        it is, with them). A level above 4 is never logged (``log_level`` is at most 4, as
        in Perl: ``log(5, ...)`` is the "very verbose" level nobody sees); one below 0
        counts as 0."""
        if self.log_enabled(level):
            if args:
                message = log.format_message(message, args)
            self.logs.write(min(max(level, 0), 4), message)

    def log_enabled(self, level: int) -> bool:
        """Whether :meth:`log` would pass a message of ``level`` on (``log_level`` allows it,
        and the log is not muted by the HUP dry run). Cheap: ask it before building a message
        that costs something (a traceback, an f-string per connection). Any greenlet may call
        it; it touches nothing."""
        return log.should_log(max(level, 0), self.conf.log_level) and not self.logs.is_muted

    def handle_log_error(self, error: BaseException, record: tuple[int, str]) -> None:
        """Hook (Net::Server's): ``log_function`` raised ``error`` while logging
        ``record`` (``(level, message)``). The default logs one level-1 line naming the error
        on write_to_log_hook; the message then goes there too, as it always does after a
        failed ``log_function``. Unlike Perl's default (``die``), nothing is re-raised: a
        log call never raises. If this hook raises, the default report is made instead."""
        self.logs.report_function_error(error)

    def write_to_log_hook(self, level: int, message: str) -> None:
        """Hook: the default log sink, called by log() for every message that passes
        ``log_level``, already escaped (one line: every character outside printable ASCII,
        newlines included, is ``%XX``, and ``%`` is ``%25``): the log file (one
        ``YYYY/MM/DD-HH:MM:SS msg`` line), syslog, or the ``gnetserver`` stdlib logger
        (stderr unless configured otherwise). Runs in whatever greenlet logs; must not block
        for long. Override to send the log elsewhere. If it raises, log() writes the message
        to stderr instead (and the reason, once until it works again); a message it logs
        itself through log() goes straight to stderr."""
        self.logs.emit(level, message)

    def reopen_logs(self) -> None:
        """Reopen the log file by its name (logrotate renamed it; HUP calls this), pointing
        stderr at the new file if it pointed at the old one; reconnect to syslog. A failure
        is logged and the old target kept; never raises."""
        if self.logs.targets is None:
            return
        problem = self.logs.reopen()
        if problem is not None:
            self.log(1, problem)
        else:
            self.log(3, "Reopened the log")

    def close_logs(self) -> None:
        """Framework step, last in server_close: close the log file or syslog socket (syslog
        first reports the messages it had to drop). A message logged afterwards opens the
        target again. Never raises."""
        self.logs.close()

    def daemonize(self) -> None:
        """Framework step (in post_configure, before binding), in Net::Server's order: check
        ``pid_file`` (ConfigError while a live process owns it; a stale one is overwritten
        with a warning), point stdin/stdout at /dev/null (``setsid`` or ``log_file``), fork
        for ``background``/``setsid`` (the parent exits 0; not after a HUP re-exec), setsid,
        point stderr at the log file (or /dev/null under ``setsid``), write the pid file."""
        self.process.daemonize(self.conf, self.logs, self.redirect_std_streams, self.log)

    def remove_pid_file(self) -> None:
        """Remove the pid file this process wrote, unless ``keep_pid_file`` is set (a HUP
        re-exec keeps it: same pid). Called at the end of server_close and at exit; a file
        that no longer holds our pid is left alone. Never raises (problems are logged)."""
        self.process.remove_pid_file(self.log)

    def drop_privileges(self) -> None:
        """Framework step (in post_bind: every port is bound, the loop has not started), in
        Net::Server's order: hand the files the server keeps writing (the log file by its
        descriptor, unix socket files without following links; the pid file stays root's) to
        ``user``/``group``, ``chroot``, then setgid and setuid. Unknown names, a missing
        chroot, ``user``/``group`` on a start that is not root's, ``chroot`` leaving uid 0
        without ``chroot_as_root``, a refused or failed chown and a failed switch are
        ConfigErrors (see :mod:`gnetserver.privileges`)."""
        unix = [str(lst.address.sockaddr) for lst in self.listeners
                if lst.spec.is_unix and not lst.address.passed]  # systemd's are its own
        self.process.drop_privileges(self.conf, unix, self.logs, self.log)

    # == binding (gnetserver.listen) ============================================================

    def pre_bind(self) -> None:
        """Framework step: turn the ``port``/``host``/``proto``/``ipv`` options into
        ``self.port_specs`` (duplicates are logged and skipped); refuse server-wide SSL_*
        options a user gave when no port is TLS."""
        self.log(2, f"{type(self).__name__} starting! pid({os.getpid()})")
        inetd = getattr(self.personality_class(), "serves_inherited_connection", False)
        if not self.conf.port and not inetd:  # INET binds nothing: its port is inetd's
            self.log(2, f"Port Not Defined.  Defaulting to '{DEFAULT_PORT}'")
        self.port_specs, dropped = listen.plan_ports(self.conf)
        for spec in dropped:
            self.log(2, f"Duplicate configuration (port {spec}) - skipping")
        self.metrics_spec = listen.plan_metrics_port(self.conf, self.port_specs)
        if self.metrics_spec is not None:  # bound like any port, served by serve_metrics
            self.port_specs.append(self.metrics_spec)
        self.check_ssl_options_used()  # SSL_* given with no TLS port: refused, not ignored
        for spec in self.port_specs:  # proxy_protocol without proxy_protocol_from: refused
            self.proxy_settings(spec)

    def proxy_settings(self, spec: PortSpec) -> proxyproto.ProxySettings | None:
        """Framework step (pre_bind checks every port, bind gives each listener its own):
        how the connections of one port send their PROXY header (the per-port dict's
        ``proxy_protocol``/``proxy_protocol_from``, else the server-wide options, and
        ``timeout_proxy_header``); None when they send none. ConfigError when the option is
        on without ``proxy_protocol_from``, or on a unix port."""
        return proxyproto.port_settings(spec.proto, spec.opts, self.conf, str(spec))

    def check_ssl_options_used(self) -> None:
        """Framework step (end of pre_bind, so the HUP dry run does it too): when no port is
        TLS, refuse the server-wide SSL_* options that a user gave; ConfigError naming them
        and where they came from. Values from default_values() and SSL_* methods/attributes
        are the program's own and are left alone."""
        tls_setup.check_ssl_options_used(self.port_specs, self.conf)

    def bind(self) -> None:
        """Framework step: build every protocol (TLS contexts: fail before binding anything),
        log each TLS library once, then bind and listen on every resolved address of every
        port spec (after a HUP re-exec, adopting the inherited sockets)."""
        # One TLSContexts per server: TLS ports with equal SSL_* options (and backend) share a
        # context, so sessions resume across listeners; reload_tls() rebuilds them all.
        self.tls_contexts = TLSContexts(lambda text: self.log(1, text))
        inetd = getattr(self.personality_class(), "serves_inherited_connection", False)
        specs = self.port_specs[:1] if inetd else self.port_specs  # INET: the first one's
        protocols = [self.make_protocol(spec) for spec in specs]
        if self.acme is not None and not inetd:  # INET orders none: start_accepting
            self.acme.bind()  # the HTTP-01 responder, with the start's privileges
        libraries = (protocol.tls_library() for protocol in protocols)
        for library in dict.fromkeys(text for text in libraries if text):  # once each, in order
            self.log(2, f"TLS by {library}")
        if inetd:  # server_type INET: the connection inetd gave is the one "listener"
            self.listeners = [inet.take_connection(specs[0], protocols[0], os.environ)]
            self.lifecycle.bound()
            return
        self.listeners = listen.bind_listeners(protocols, self.conf.listen, self.log,
                                               self.restart_open_hook,
                                               unix_mode=self.conf.unix_mode,
                                               broadcast=self.conf.udp_broadcast)
        for listener in self.listeners:
            listener.proxy = self.proxy_settings(listener.spec)
            listener.serves_metrics = listener.spec is self.metrics_spec
            self.log(2, f"Binding to {listener}"
                        f"{f' (PROXY protocol {listener.proxy.mode})' if listener.proxy else ''}")
        self.lifecycle.bound()

    def make_protocol(self, spec: PortSpec) -> StreamProtocol:
        """Framework step: the protocol object of one port spec, with its options resolved
        (at bind, and in the HUP preflight); its TLS context comes from ``tls_contexts``.
        ConfigError for a bad per-port key or TLS option."""
        if self.tls_contexts is None:
            raise RuntimeError("make_protocol: bind() creates the TLS registry first")
        options = self.ssl_options(spec) if listen.is_tls(spec) \
            else listen.port_options(spec, self.conf)
        protocol = listen.make_protocol(spec, options, self.tls_contexts)
        handle = getattr(protocol, "tls_handle", None)
        if self.acme is not None and handle is not None:
            self.acme.attach(f"port {spec}", handle)  # its certificates arrive later
        return protocol

    def ssl_options(self, spec: PortSpec) -> dict[str, Any]:
        """Framework step: the SSL_* options of one TLS port: the per-port dict, else the
        server-wide option, else a method (called with host, port, proto) or attribute of that
        name on the server; with ``self_signed`` and no certificate, a self-signed one."""
        options = tls_setup.resolve_ssl_options(spec, self.conf, self,
                                                self.self_signed_certificate)
        if not acme_plan.wants_acme(options):
            return options
        if self.acme is None:
            from .acme import AcmeManager  # josepy and friends: only for servers that use it
            self.acme = AcmeManager(self._say, self.acme_event)
        return self.acme.plan_port(f"port {spec}", spec.proto, options)

    def acme_event(self, event: str) -> None:
        """Framework step, in the ACME manager's greenlet (the ordering process: under
        PreFork the parent) once its ports serve the outcome: an order ended (``issued``,
        ``renewed``, ``failed``: counted) or a fresh interim certificate is served
        (``interim``); after a new certificate, :meth:`check_certificates` again, so that the
        expiry gauges and warning follow the certificate served now."""
        if event != "interim":
            self.metrics.acme_order(event)
        if event != "failed":
            self.check_certificates()

    def self_signed_certificate(self) -> tuple[Any, Any]:
        """Framework step: a self-signed certificate and key, made once per server, its
        fingerprint logged."""
        return self._self_signed.get(self.log)

    def reload_tls(self) -> bool:
        """Rebuild every TLS context, of ssl and ssleay ports alike, from its options, reading
        certificates, keys, CAs, CRLs, DH and OCSP files again; all contexts or none.
        New connections get the new contexts; established ones keep theirs. Session tickets
        and cached sessions of the old contexts no longer resume (one full handshake each). If
        any context fails to build, the old ones all stay and the reason is logged at level 1.
        Call it in the server's hub thread (a connection greenlet, a signal handler,
        ``ServerThread.call``). Returns True when the new contexts are in use.
        """
        ok = tls_setup.reload(self.tls_contexts, self.log)
        self.metrics.reloaded(ok)
        if ok:
            self.check_certificates()
        return ok

    def check_ticket_rotation(self) -> None:
        """Framework step (in post_bind, after the privilege drop): with
        ``SSL_ticket_key_rotation``, say at start (level 1) when a rotation could not read the
        TLS files as the user the server now runs as (a root-only key): the session-ticket
        keys would then never rotate, the current ones staying in use."""
        for handle in self.tls_contexts.handles if self.tls_contexts is not None else []:
            problem = handle.rotation_problem()
            if problem is not None:
                self.log(1, f"SSL_ticket_key_rotation will not rotate the session-ticket keys "
                            f"(the current ones stay in use): {problem}")

    def post_bind_hook(self) -> None:
        """Hook: after every port is bound, with the privileges the server started with."""

    def post_bind(self) -> None:
        """Framework step after binding: drop privileges, then prepare signal handlers."""
        self.drop_privileges()  # chroot, group, user
        self.check_ticket_rotation()  # as the user the server now runs as
        self.register_signals()  # TERM/INT/QUIT/HUP handled in the hub

    def pre_loop_hook(self) -> None:
        """Hook: right before the server starts accepting connections."""

    # == the loop ===============================================================================

    def loop(self) -> None:
        """Framework step: start accepting (the personality's work), then run the
        personality's loop until :meth:`stop` is called or a signal's ``handle_<name>`` ends
        it; queued signals are dispatched in this greenlet. Returns at once when the server
        was stopped before (e.g. ``stop()`` in pre_loop_hook)."""
        if self.lifecycle.stop_requested or self.lifecycle.closing:
            return  # the listeners may be closed already: nothing to accept on
        self.lifecycle.install_signals()
        personality = self.start_accepting()
        with self.lifecycle.looping():
            personality.loop(self.lifecycle, self.dispatch_signals)

    def personality_class(self) -> Any:
        """The personality class ``server_type`` names (the first one gnetserver has,
        Net::Server's MultiType order; default ``Single``)."""
        return PERSONALITIES[personality_name(self.conf["server_type"])]

    def make_personality(self) -> Personality:
        """Framework step: the personality ``server_type`` names, built from the
        configuration. One that forks and supervises (PreFork) needs the server's own loop
        in the main thread (``run()``, signals installed): started with ``start()`` or in
        another thread, the server serves as Single and says so at level 1."""
        cls = self.personality_class()
        if cls.needs_main_loop and not self.lifecycle.signals_installed:
            self.log(1, f"server_type {cls.name}: worker processes need run() in the main "
                        f"thread; serving in this process ({DEFAULT_PERSONALITY})")
            cls = PERSONALITIES[DEFAULT_PERSONALITY]
        personality: Personality = cls(self.conf)
        return personality

    def start_accepting(self) -> Personality:
        """Framework step: compile the access rules, make the personality and let it accept
        on every listener; each connection runs :meth:`run_client_connection`. Then the
        "Server ready" log line and, under systemd, READY=1 (with MAINPID)."""
        self.prepare_access()  # allow/deny rules and lookup mode, compiled once per start
        personality = self.personality = self.make_personality()
        if self.conf.tie_client_stdout and not self._tied:
            stdio.install()  # sys.stdout/sys.stdin dispatch on the greenlet from now on
            self._tied = True
        personality.start(self.listeners, self._on_connection, self.process_hooks())
        self.lifecycle.serving(personality)
        self.start_dequeue()
        if self.acme is not None and getattr(personality, "serves_inherited_connection", False):
            # One process per connection: ordering (and binding port 80) in each would race
            # and hit the CA's rate limits. The files in SSL_acme_dir are served as they are.
            self.log(2, "ACME: INET serves the certificates in SSL_acme_dir and orders none (a "
                        "long-running server with the same SSL_acme_* options does)")
        elif self.acme is not None:
            self.acme.start()  # order or renew in the background (this process's hub)
        self.start_certificate_check()
        serving = ", ".join(str(listener) for listener in self.listeners)
        self.log(2, "Server ready: " + serving)
        self.notifier.ready(f"Serving {serving}")  # systemd: READY=1, MAINPID (also after HUP)
        # After a HUP: this image accepts, so the previous generation stops accepting now.
        restart.announce_ready(self._ready_fd)
        self._ready_fd = None
        self.children.watch()  # reap the drainers as they end
        return personality

    def start_dequeue(self) -> None:
        """Framework step (end of start_accepting, with ``check_for_dequeue``): a greenlet
        of this process (under PreFork, the parent's) calls :meth:`run_dequeue` every
        ``check_for_dequeue`` seconds, one run at a time, a failure logged at level 1 and the
        schedule kept (:class:`~gnetserver.periodic.Periodic`). server_close stops it."""
        if self.conf.check_for_dequeue and self.dequeue_timer is None:
            self.dequeue_timer = Periodic(self.conf.check_for_dequeue, self.run_dequeue,
                                          self.log, "run_dequeue")
            self.dequeue_timer.start()

    def start_certificate_check(self) -> None:
        """Framework step (end of start_accepting): :meth:`check_certificates` now, then
        daily in a greenlet of this process (:class:`~gnetserver.periodic.Periodic`; under
        PreFork the parent's); server_close stops it. Nothing when no port is TLS."""
        if not any(listener.protocol.is_tls for listener in self.listeners):
            return
        self.check_certificates()
        if self.expiry_timer is None:
            self.expiry_timer = Periodic(86400.0, lambda: self.check_certificates(daily=True),
                                         self.log, "the certificate expiry check")
            self.expiry_timer.start()

    def run_dequeue(self) -> None:
        """Hook: every ``check_for_dequeue`` seconds, in the server's dequeue greenlet (not a
        connection's): Net::Server's periodic work (flush a queue, expire sessions). The
        default calls :meth:`dequeue`, as Net::Server's forks a child that does: override
        either. It shares the hub with every connection: yield (gevent I/O, ``gevent.sleep``)
        or use :meth:`run_blocking` for long blocking work. The next run starts only after
        this one returned."""
        self.dequeue()

    def dequeue(self) -> None:
        """Hook: the work :meth:`run_dequeue` does by default (Net::Server's name). Empty."""

    def idle_loop_hook(self) -> None:
        """Hook (PreFork): in the parent, each time its supervision loop wakes (at least once
        a second, and after signals), as Net::Server's PreFork parent calls it each time its
        wait for its children ends. Keep it short: the parent supervises meanwhile. Other
        personalities have no idle loop (their hub waits on the sockets): use
        ``check_for_dequeue`` for periodic work there."""

    def _on_connection(self, listener: Listener, sock: Any, address: Any) -> None:
        """Greenlet body for one accepted socket (gevent closes ``sock`` afterwards); counted
        by the metrics meanwhile, its facts in ``log_format json`` lines."""
        client = Client(sock, address, listener, self, self.conf.max_line_length)
        if not self._hooked:  # the first connection of this server object: see _hooked
            self._detect_hooks()
        if self._metrics_on or self.logs.binds_connections:
            with self.metrics.connection(listener), self.logs.connection(client):
                self.run_client_connection(client)
        else:  # both contexts would do nothing (measured: six Python calls per connection)
            self.run_client_connection(client)

    #: The per-connection hooks that :meth:`run_client_connection` skips while they are
    #: GServer's own empty ones (:meth:`_detect_hooks`).
    _SKIPPABLE_HOOKS = ("post_accept_hook", "allow_deny_hook", "post_process_request_hook",
                        "post_client_connection_hook")

    def _detect_hooks(self) -> None:
        """Once, at the first connection: which per-connection hooks are GServer's empty ones
        (neither a subclass nor the instance replaced them), so that each connection skips
        the calls that would do nothing (measured: a few µs of every full handshake's cost).
        A hook counts as replaced when the bound method's function is not GServer's."""
        base = GServer.__dict__
        self._noop_hooks = frozenset(
            name for name in self._SKIPPABLE_HOOKS
            if getattr(getattr(self, name), "__func__", None) is base[name])
        self._metrics_on = self.metrics.enabled  # made at configure, before any connection
        self._hooked = True

    # == worker processes (server_type PreFork: gnetserver.personality.prefork) ================

    def process_hooks(self) -> ProcessHooks:
        """Framework step: what a worker-process personality calls back (PreFork): the
        hooks below, the log, and :meth:`reload_in_place` for HUP."""
        return ProcessHooks(
            name=type(self).__name__,
            log=self._say,
            child_init=self._child_init,
            child_finish=lambda: self.child_finish_hook(),
            run_n_children=lambda count: self.run_n_children_hook(count),
            reload=self.reload_in_place,
            close_logs=self.close_logs,
            worker_ended=lambda pid: self.metrics.worker_ended(pid),
            accept_failed=lambda listener: self.metrics.accept_failed(listener),
            idle_loop=lambda: self.idle_loop_hook(),
        )

    def _child_init(self) -> None:
        """What a worker runs right after the fork: the framework's, then the user's hook."""
        self.acme_worker()
        self.child_init_hook()

    def acme_worker(self) -> None:
        """Framework step (PreFork), in each worker right after the fork, before
        ``child_init_hook``: the parent orders the ACME certificates, the worker watches for
        them (:meth:`AcmeManager.become_worker <gnetserver.acme.AcmeManager.become_worker>`)."""
        if self.acme is not None:
            self.acme.become_worker()

    def child_init_hook(self) -> None:
        """Hook (PreFork): in each worker right after the fork, before it accepts: its own
        signals are set, the process title too. Open per-worker resources here (database
        connections, clients): never share such a connection across the fork. Raising ends
        the worker (exit status 3); the parent backs off before it forks the next one."""

    def child_finish_hook(self) -> None:
        """Hook (PreFork): in a worker after its last connection ended, right before it exits
        (``max_requests``, QUIT, HUP, TERM, the parent's stop). Close per-worker resources.
        The server's close does not run in a worker (the pid file, listeners and logs are
        the parent's)."""

    def run_n_children_hook(self, count: int) -> None:
        """Hook (PreFork): in the parent, after it forked ``count`` workers (at start, to
        replace dead ones, on TTIN or during a HUP's replacement)."""

    def reload_in_place(self) -> Conf | None:
        """Framework step, PreFork's HUP in the parent (the personality calls it; no re-exec,
        the workers are replaced instead): reopen the logs, run the HUP preflight
        (:meth:`restart_problem`; a problem refuses the HUP at level 1), take the planned
        configuration (options in :data:`RELOAD_NEEDS_RESTART` that changed keep their value
        and are named at level 1: they need a restart), rebuild the TLS contexts from their
        files (:meth:`reload_tls`: new certificates; all or none) and recompile the access
        rules. Returns the configuration new workers get, or None when refused. The code is
        not reloaded: the workers are forks of this parent."""
        self.log(2, "Received a SIG HUP: reloading, then replacing the workers")
        self.notifier.reloading("Reloading (HUP): replacing the workers")
        self.reopen_logs()
        problem = self.restart_problem()
        if problem is not None:
            self.log(1, f"HUP ignored, the workers keep the current configuration: {problem}")
            self.metrics.reloaded(False)
            self.notifier.ready(f"HUP refused, still serving: {problem}")
            return None
        planned = self.dry_run_start().conf
        changed = sorted(name for name in planned if planned[name] != self.conf.get(name)
                         and (name in RELOAD_NEEDS_RESTART or name.startswith("SSL_")))
        if changed:
            self.log(1, f"HUP: changes of {', '.join(changed)} need a restart (stop, then "
                        "start): not applied")
        values = {name: self.conf[name] if name in changed else planned[name]
                  for name in planned}
        conf = Conf(values, sources=planned.sources, known=planned.options)
        tls = self.tls_contexts
        if tls is None or not tls.handles:
            self.metrics.reloaded(True)  # else reload_tls counts
        elif not self.reload_tls():
            self.notifier.ready("HUP refused (TLS reload failed), still serving")
            return None  # the reason is logged; the workers keep the current contexts
        self.conf = conf
        self.prepare_access()
        self.notifier.ready("Serving (workers being replaced after HUP)")
        return conf

    # == signals (gnetserver.lifecycle; the OS handlers only queue) =============================

    def register_signals(self) -> None:
        """Framework step (in post_bind): set up Net::Server's signals (spec 6.1): TERM and INT
        stop at once, QUIT stops gracefully, HUP re-executes the server keeping its sockets.
        The handlers only queue the signal; ``loop`` installs them when it starts (so a
        server embedded with ``start`` leaves the program's signals alone) and runs
        ``handle_<name>`` in its own greenlet. Only the main thread may install handlers:
        elsewhere (a ServerThread) this is a no-op, logged at level 4.
        """
        names = SIGNALS + tuple(self.personality_class().signals)  # PreFork: CHLD, TTIN, TTOU
        if not self.lifecycle.register_signals(names):
            self.log(4, "Not in the main thread: signal handlers not installed")

    def dispatch_signals(self, names: Sequence[str]) -> None:
        """Framework step (in the loop, and in server_close while it drains): for each queued
        signal, in order, the personality's own handling first (PreFork: CHLD, TTIN, TTOU,
        HUP in the parent), else ``handle_<name>``."""
        for name in names:
            personality = self.personality
            if personality is not None and personality.handle_signal(name):
                continue
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
        self.lifecycle.request_stop()

    def handle_hup(self) -> None:
        """SIGHUP (run by the loop): re-execute the server in place, keeping its listening
        sockets (Net::Server's ``BOUND_SOCKETS``), so that the conf file, certificates and code
        are read again with no connection refused and no pause in accepting. Log files are
        reopened at once (logrotate). First a dry run of the new image's start-up
        (``restart_problem``): if it fails, the HUP is refused (level 1) and nothing changes.
        While the server closes already (a drain runs), logged and ignored.

        The design is "same pid, fork a drainer" (:meth:`restart_in_place`): the loop ends,
        ``restart_close_hook`` runs, then the process forks a drainer child and execs at
        once. The exec keeps the pid, so the pid file and a service manager's main pid stay
        right, and nothing has to be handed over or renamed. The drainer keeps the in-flight
        connections *and keeps accepting* until the new image accepts (it closes a pipe the
        drainer reads), then stops accepting and gives its connections ``graceful_timeout``
        (:meth:`drain_previous_generation`); the new image reaps it. Accepting therefore
        never pauses: the new image's start-up (about 0.3 s of imports alone on a busy
        machine, more than the 200 ms a client may wait) is covered by the old generation,
        as it is by nginx's and gunicorn's overlapping generations. The other design, a new
        generation with a new pid, needs the pid file and systemd's ``MAINPID`` handed over
        and a readiness channel anyway; this one needs neither. Under systemd: RELOADING=1
        first, then READY=1 from the new image, or at once when the HUP is refused."""
        if self._ignored_while_closing("HUP"):
            return
        self.log(2, "Received a SIG HUP: restarting in place")
        self.notifier.reloading("Reloading (HUP)")  # READY=1 comes from the new image
        self.reopen_logs()  # messages until the exec go to the new file
        problem = self.restart_problem()
        if problem is not None:
            self.log(1, f"HUP ignored, still serving with the current configuration: {problem}")
            self.metrics.reloaded(False)
            self.notifier.ready(f"HUP refused, still serving: {problem}")
            return
        self.lifecycle.request_restart()

    def _ignored_while_closing(self, name: str) -> bool:
        """True (and said at level 2) when server_close runs already: a signal that asks for
        a close, or a restart, has nothing left to do."""
        if self.lifecycle.closing:
            self.log(2, f"Received a SIG {name} while closing: ignored")
        return self.lifecycle.closing

    def restart_problem(self) -> str | None:
        """What would make the re-executed server fail to start, found before the exec; None
        if nothing. Run by handle_hup; a problem makes it refuse the HUP (level 1), so a bad
        edit of the conf file or a botched certificate renewal cannot take the server down.

        Checked as the user the process now is, which is the user the exec runs as (after a
        privilege drop: the service user): the exec itself (:func:`gnetserver.restart.
        exec_problems`: the interpreter executable, the script readable), then the dry run of
        the start-up (:meth:`dry_run_start`: the conf file and TLS files read again, by that
        user). Every problem found is named, joined by ``"; "``; a file that cannot be read
        for lack of permission is said with the user that tried. A server inside its
        ``chroot`` is always refused: the interpreter, the code and the files outside the jail
        cannot be reached any more (Net::Server's limit too); restart it instead."""
        if self.conf.chroot:
            return (f"a HUP cannot re-execute the server inside its chroot "
                    f"{self.conf.chroot!r}: the interpreter, the code and the files outside "
                    "it are out of reach (restart the server to reload)")
        problems = []
        try:
            with restart.as_the_reexec_sees_it(self.listeners):
                problems += restart.exec_problems()
                self.dry_run_start()
        except ConfigError as exc:
            problems.append(restart.read_as(exc))
        except Exception as exc:  # the new image runs the same code: it would fail there too
            problems.append(f"{type(exc).__name__}: {restart.read_as(exc)}")
        return "; ".join(problems) or None

    def dry_run_start(self) -> DryRun:
        """The start-up the re-executed server will run, minus every effect outside the objects
        it makes (raises what the start would raise): the framework steps ``configure`` (every
        source read again: constructor, command line, ``run()``, conf file,
        ``default_values()``), ``pre_bind`` (port specs, SSL_* options no port uses) and
        ``make_protocol`` for every port (TLS contexts built from the files now on disk, in a
        scratch registry), then the process options that can be checked without acting (user
        and group names, log_function, log_file's folder). The steps run on this server with
        its log muted, and its ``conf``, ``argv_unused``, ``port_specs`` and ``tls_contexts``
        are put back afterwards: the server is left as it was. The dry run does not yield, so
        no connection sees the planned values meanwhile.

        Not foreseen: binding (a new port already taken, or below 1024 once privileges are
        dropped, fails in the new image only), anything the user hooks do or raise (they are
        not run: they may have effects), the fork, the pid file, a syslog that cannot be
        reached, chown/chroot/setuid. Nothing is bound, forked, written or opened for writing,
        no signal is touched, and nothing is logged (the new image logs it all again)."""
        saved = (self.conf, self.argv_unused, self.port_specs, self.tls_contexts,
                 self.metrics_spec)
        saved_acme, self.acme = self.acme, None  # a scratch one: nothing ordered or bound
        try:
            with self.logs.muted():
                self.configure()
                self.pre_bind()
                self.tls_contexts = TLSContexts(_discard)
                for spec in self.port_specs:
                    self.make_protocol(spec)
                check_process_options(self.conf, self)
                return DryRun(self.conf, list(self.port_specs))
        finally:
            (self.conf, self.argv_unused, self.port_specs, self.tls_contexts,
             self.metrics_spec) = saved
            self.acme = saved_acme

    def restart_open_hook(self) -> None:
        """Hook: in the re-executed server after a HUP, in bind, before the inherited sockets
        are adopted (options are read; nothing is bound yet)."""

    def restart_close_hook(self) -> None:
        """Hook: on HUP, in server_close, right before the exec (the listening sockets are
        still open, handed to the new image). In-flight connections may still be running:
        they go on in the drainer forked right after this hook (which runs no restart hook);
        do not start greenlets or I/O here that must outlive it in this process."""

    # == access (gnetserver.access_control) =====================================================

    def prepare_access(self) -> Any:
        """Framework step, once per start when the server starts accepting (after every
        start-up hook): compile the allow/deny/cidr_allow/cidr_deny rules and the lookup mode
        of ``self.conf`` for the connections to read (so a rule a start-up hook sets with
        ``self.conf = self.conf.replace(...)`` counts). Returns the plan."""
        return self.access.prepare(self.conf)

    def access_rules(self) -> AccessRules:
        """The compiled allow/deny/cidr_allow/cidr_deny rules of this start (empty rules when
        none is set), as :meth:`prepare_access` compiled them."""
        return self.access.rules

    def allow_deny(self, client: Client) -> bool:
        """Framework step: Net::Server's access rules, after the handshake; True allows.
        Unix-socket clients are always allowed. With ``reverse_lookups`` the peer's host name
        was looked up in ``get_client_info`` (``client.peerhost``; with double-reverse lookups
        also ``client.peerhost_rev``, the addresses that name resolves to), and a
        double-reverse failure denies. Then ``allow``/``deny``/``cidr_allow``/``cidr_deny``
        decide (:mod:`gnetserver.access`: deny wins; any rule makes the default deny).
        A denied client gets ``request_denied_hook`` instead of ``process_request`` (the TLS
        session is up, so the hook may write a refusal), then the usual closing hooks. On TLS
        ports (ssl, ssleay) a peer whose *address* alone is denied never gets here: it is
        closed before the TLS handshake, and no per-connection hook runs for it."""
        return self.access.allows(client)

    # == one connection =========================================================================

    def run_client_connection(self, client: Client) -> None:
        """The life of one connection, in its own greenlet (Net::Server's order).

        An exception in a hook is logged and ends this connection only. The session slot is
        released before post_process_request, so the lingering close (up to a few seconds
        with a peer that does not close) never holds a ``max_servers`` slot. When :meth:`stop`
        runs out of time it kills the greenlet (GreenletExit): the client is cut at once.

        The budget is the personality's: a connection still in its handshake may be evicted
        to make room for a newer one (``Evicted``: aborted, logged at level 3), and one that
        finds no session slot within ``timeout_session_wait`` is closed (``SessionWaitTimeout``,
        logged at level 3); no per-connection hook runs for either."""
        try:
            tls = client.listener.protocol.is_tls
            if not self.read_proxy_header(client):  # proxy_protocol ports: before anything
                return
            if not self.access.address_allowed(client, tls):  # address rules, before TLS
                self.metrics.denied(client.listener)
                if tls:
                    self.metrics.handshake_failed(client.listener, "denied_before_tls")
                return
            if not self._negotiate(client):  # post_accept: the TLS handshake
                return
            if client.listener.serves_metrics:  # metrics_port: the exposition, no hook
                self.serve_metrics(client)
                return
            assert self.personality is not None, "connections come from the personality"
            noop = self._noop_hooks  # GServer's empty hooks: not called (same result)
            slot = self.personality.session_slot()
            if self._metrics_on or self._tied:
                with self.metrics.session(slot), self._client_stdio(client):
                    self._run_session(client, noop)
            else:  # neither wrapper would do anything: the slot alone
                with slot:
                    self._run_session(client, noop)
            if self._metrics_on:
                self.metrics.session_ended(client)  # bytes in and out: TCP_INFO, before close
            self._guarded(self.post_process_request, client)  # closes the client (slot free)
            if "post_client_connection_hook" not in noop:
                self._guarded(self.post_client_connection_hook, client)  # user: after close
        except Evicted:  # the personality made room for a newer connection
            if tls and client.tls is None:
                self.metrics.handshake_failed(client.listener, "evicted")
            self._dropped(client, "evicted from its handshake: the pending budget "
                                  "(max_handshakes) is full")
            client.abort()
        except SessionWaitTimeout as exc:  # entering session_slot(): no hook ran yet
            self._dropped(client, f"closed: {exc}")
            client.close()
        except BaseException:
            client.abort()  # killed by stop(): no close_notify, no lingering (no-op if closed)
            raise

    def _run_session(self, client: Client, noop: frozenset[str]) -> None:
        """The session's hooks, in Net::Server's order, holding the session slot (see
        :meth:`run_client_connection`); ``noop``: the hooks to skip (GServer's empty ones).
        An exception of a hook is logged and ends the session."""
        try:
            self.get_client_info(client)  # peer/local addresses, CONNECT log line
            if "post_accept_hook" not in noop:
                self.post_accept_hook(client)  # user
            client.allowed = bool(self.allow_deny(client)
                                  and ("allow_deny_hook" in noop
                                       or self.allow_deny_hook(client)))
            if client.allowed:
                self.process_request(client)  # user: the protocol
            else:
                self.metrics.denied(client.listener)
                self.request_denied_hook(client)  # user
            if "post_process_request_hook" not in noop:
                self.post_process_request_hook(client)  # user: before the close
        except Exception as exc:
            self.connection_error(client, exc)

    def _client_stdio(self, client: Client) -> Any:
        """With ``tie_client_stdout``: this greenlet's stdin/stdout are the client's while the
        session's hooks run (Net::Server ties them in post_accept, unties them in
        post_process_request); else nothing."""
        if not self._tied:
            return _NO_CONTEXT
        return stdio.bound(client, self.conf.tied_stdout_callback,
                           self.conf.tied_stdin_callback)

    def read_proxy_header(self, client: Client) -> bool:
        """Framework step, first per connection on a ``proxy_protocol`` port (before the
        address rules and the TLS handshake): check that the socket's peer is a trusted
        balancer (``proxy_protocol_from``), read its PROXY header (exactly its bytes, within
        ``timeout_proxy_header``) and record it on the client (``client.proxy``,
        ``client.proxy_peer``; a relayed client's address becomes ``client.address``, so the
        access rules, reverse lookups and get_client_info see the client). True to go on.

        An untrusted peer, or a header that is malformed, truncated, oversized, of a version
        the port does not take or late: a level-3 line naming the reason, the connection is
        closed at once with nothing sent, and no hook runs. A LOCAL (v2) or UNKNOWN (v1)
        header is the balancer speaking for itself (a health check): accepted, the
        connection keeps its real addresses and is served as usual."""
        settings = client.listener.proxy
        if settings is None or not isinstance(client.address, tuple):
            return True
        balancer = (str(client.address[0]), int(client.address[1]))
        why = None
        if not settings.trusts(balancer[0]):
            why = "the peer is not in proxy_protocol_from"
        else:
            try:
                header = read_header(client.sock, settings.mode, settings.timeout)
            except ProxyHeaderTimeout as exc:
                why = str(exc)
            except ProxyHeaderError as exc:
                why = f"bad PROXY header: {exc}"
            except OSError as exc:  # a reset: a balancer's probe may do that
                why = f"reset while reading the PROXY header: {exc}"
        if why is not None:
            if self.log_enabled(3):
                self.log(3, f"Connection {client.peer_text()} refused: {why}")
            client.abort()  # nothing was sent; no hook has run
            return False
        if not header.proxied and settings.local == "refuse":
            if self.log_enabled(3):
                self.log(3, f"Connection {client.peer_text()} refused: a PROXY header naming "
                            f"no client ({header.command} {header.family}) where a relayed "
                            "client is required (proxy_protocol_local refuse)")
            client.abort()
            return False
        client.take_proxy_header(header, balancer)
        if self.log_enabled(4):
            self.log(4, f"PROXY v{header.version} {header.command} {header.family} from "
                        f"balancer [{balancer[0]}]:{balancer[1]} for {client.peer_text()}")
        return True

    def _negotiate(self, client: Client) -> bool:
        """Run post_accept; log and drop the client on failure (a TLS port's
        ``SSL_error_trap`` is then called, see :meth:`tls_error_trap`)."""
        metrics_on = self._metrics_on
        started = time.perf_counter() if metrics_on else 0.0
        try:
            self.post_accept(client)
            if metrics_on:
                self.metrics.handshake_done(client, started)
            if self.acme is not None and client.alpn_protocol == "acme-tls/1":
                # RFC 8737: the CA's validation handshake; it sends nothing more.
                if self.log_enabled(3):
                    self.log(3, f"TLS-ALPN-01 validation handshake from {client.peer_text()}")
                client.close()
                return False
            return True
        except HandshakeTimeout as exc:
            self.metrics.handshake_failed(client.listener, "timeout")
            if self.log_enabled(3):
                self.log(3, f"TLS handshake timed out from {client.peer_text()}")
            client.abort()
            self.tls_error_trap(client, exc)
        except (TLSError, OSError) as exc:
            self.metrics.handshake_failed(client.listener, failure_reason(exc))
            if self.log_enabled(3):
                self.log(3, f"TLS handshake failed from {client.peer_text()}: {exc}")
            client.close()
            self.tls_error_trap(client, exc)
        except Exception as exc:
            self.connection_error(client, exc)
            client.close()
        return False

    def tls_error_trap(self, client: Client, exc: BaseException) -> None:
        """Framework step, after a failed or timed-out TLS handshake (logged, the connection
        already closed): call the port's ``SSL_error_trap(client, exc)`` if it has one
        (IO::Socket::SSL's name; per port, server-wide, or a method returning the callable).
        The trap runs in the connection's greenlet and may log, count or ban the peer
        (``client.peer_text()``, ``client.address``; no other hook has run, so ``peeraddr``
        and friends are not filled); it cannot answer on the connection. What it raises is
        logged (level 1, with the traceback) and goes no further."""
        trap = getattr(client.listener.protocol, "error_trap", None)
        if trap is None:
            return
        try:
            trap(client, exc)
        except Exception as trap_exc:
            if self.log_enabled(1):
                text = "".join(traceback.format_exception(type(trap_exc), trap_exc,
                                                          trap_exc.__traceback__))
                self.log(1, f"SSL_error_trap failed for {client.peer_text()}: {text.rstrip()}")

    def _dropped(self, client: Client, why: str) -> None:
        """Log (level 3) a pending connection the budget ended."""
        if self.log_enabled(3):
            self.log(3, f"Connection {client.peer_text()} {why}")

    def _guarded(self, hook: Any, client: Client) -> None:
        """Call a cleanup hook; an exception is logged, never propagated."""
        try:
            hook(client)
        except Exception as exc:
            self.connection_error(client, exc)

    def connection_error(self, client: Client, exc: BaseException) -> None:
        """Log an exception of one connection: disconnects, timeouts and over-long lines
        (:class:`~gnetserver.errors.LineTooLong`) at level 3, others at level 1 with the
        traceback (formatted only when that level is logged)."""
        if isinstance(exc, Fatal):  # fatal() logged it at level 0 already
            return
        if isinstance(exc, (TimeoutError, ConnectionError, TLSError, LineTooLong)):
            if self.log_enabled(3):
                self.log(3, f"Connection {client.peer_text()} ended: {type(exc).__name__}: "
                            f"{exc}")
        elif self.log_enabled(1):
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.log(1, f"Error in connection {client.peer_text()}: {text.rstrip()}")

    def post_accept(self, client: Client) -> None:
        """Framework step, first per connection: count it and let the protocol negotiate (TLS:
        the handshake, bounded by ``timeout_handshake``; a datagram has none, its stream
        answers the sender). Raising drops the connection."""
        self.requests += 1
        packet = client.sock
        if isinstance(packet, Datagram) and packet.truncated and self.log_enabled(3):
            self.log(3, f"Datagram from {client.peer_text()} cut to udp_recv_len "
                        f"({len(packet.data)} bytes)")
        protocol = client.listener.protocol
        client.attach(protocol.post_accept(packet, self.conf.timeout_handshake))
        client.settimeout(self.conf.timeout_idle or None)

    def get_client_info(self, client: Client) -> None:
        """Framework step: fill ``peeraddr``/``peerport``/``sockaddr``/``sockport`` (on a
        ``proxy_protocol`` port, from a header that relays a client); with
        ``reverse_lookups``, ``peerhost`` (and ``peerhost_rev``) by cooperative, bounded
        lookups; then log the CONNECT line (level 3). On a unix socket, as in Net::Server,
        there is no peer (``peeraddr``/``peerport``/``sockaddr`` stay None), ``sockport`` is the
        socket path and the line reads ``CONNECT UNIX Socket: "<path>"``; on a unix datagram
        port ``peeraddr`` is the sender's socket path, if it bound one. On a udp port
        ``sockaddr``/``sockport`` are the port's bound address (``0.0.0.0`` for every
        interface)."""
        if client.listener.is_unix:
            client.sockport = str(client.listener.address.sockaddr)
            if client.udp_data is not None and client.address:
                client.peeraddr = str(client.address)
            if self.log_enabled(3):
                self.log(3, f'CONNECT UNIX Socket: "{client.sockport}"')
            return
        # A relayed client's; else the listener's own address when it is bound to one (every
        # connection it accepts has it: no getsockname per connection); else the socket's.
        header = client.proxy
        local = (header.dest if header is not None and header.proxied else None) \
            or client.listener.local_address or client.sock.getsockname()
        if not isinstance(local, tuple):  # INET over a socketpair (socat): no address here
            local = inet.UNKNOWN_PEER
        client.sockaddr, client.sockport = local[0], local[1]
        client.peeraddr, client.peerport = client.address[0], client.address[1]
        if self.access.looks_up:  # only with reverse_lookups
            self.access.lookup_peer(client)
        if self.log_enabled(3):  # once per connection: built only when it is logged
            self.log(3, f'CONNECT {client.proto.upper()} Peer: "{client.peer_text()}" '
                        f'Local: "{client.local_text()}"')

    def post_accept_hook(self, client: Client) -> None:
        """Hook: after get_client_info, before access checks. May read and write the client."""

    def allow_deny_hook(self, client: Client) -> bool:
        """Hook: an extra access check after allow_deny; return False to deny the client."""
        return True

    def request_denied_hook(self, client: Client) -> None:
        """Hook: runs instead of process_request for a denied client; may write a refusal.

        It does not run for an ssl peer denied by its address before the TLS handshake (no
        per-connection hook does: there is no session to write to; see allow_deny)."""

    def process_request(self, client: Client) -> None:
        """Hook: serve one connection. The default is Net::Server's echo: a welcome line, each
        line answered with ``You said "..."``; a line containing ``quit`` anywhere ends the
        connection (Perl's ``/quit/``), and a client silent for 30 seconds (or
        ``timeout_idle``, when shorter) gets ``Timed Out.`` and is closed, as Perl's
        ``alarm 30`` does. A datagram is answered once, ``You said "<datagram>"``, as
        Net::Server does.

        Net::Server's echo also answers ``get <name>`` with a property of the server,
        ``dump`` with the whole server object, and ``exit`` by closing the server: they are
        left out on purpose, since any client of a demo left running could read the
        server's state (paths, options, certificates' locations) or stop it.

        A line is read with a bound, ``ECHO_LINE_LIMIT`` bytes (64 KiB) with its end, so a peer
        cannot make the server buffer without limit: a longer line is answered with
        ``Line too long`` and ends the connection (logged at level 3)."""
        if client.udp_data is not None:  # a datagram: one answer, as Net::Server's
            client.send(b'You said "' + client.udp_data + b'"')
            return
        name, pid = type(self).__name__, os.getpid()
        client.sendall(f'Welcome to "{name}" ({pid})\r\n'.encode())
        idle = self.conf.timeout_idle
        client.settimeout(min(idle, ECHO_TIMEOUT) if idle else ECHO_TIMEOUT)
        while True:
            try:
                raw = client.readline(ECHO_LINE_LIMIT)
            except TimeoutError:
                client.sendall(b"Timed Out.\r\n")
                return
            if not raw:
                return
            if len(raw) == ECHO_LINE_LIMIT and not raw.endswith(b"\n"):
                self.log(3, f"Line longer than {ECHO_LINE_LIMIT} bytes from "
                            f"{client.peer_text()}: connection ended")
                client.sendall(f"{name}:{pid}: Line too long\r\n".encode())
                return
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            client.sendall(f'{name}:{pid}: You said "{line}"\r\n'.encode())
            if "quit" in line:
                return

    def post_process_request_hook(self, client: Client) -> None:
        """Hook: after process_request (or request_denied_hook), before the client is closed;
        ``client.allowed`` tells which ran."""

    def post_process_request(self, client: Client) -> None:
        """Framework step: close the client (TLS close_notify, half-close, short drain)."""
        client.close()

    def post_client_connection_hook(self, client: Client) -> None:
        """Hook: last per connection, after the client is closed. Do not do I/O on it."""

    # == closing ================================================================================

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let connections finish for ``timeout`` seconds (default
        ``graceful_timeout``), then cut them and close every listener; returns once closed.
        Any greenlet of the server's hub may call it, any number of times: a later call waits
        for the close already running, and its ``timeout`` can only bring that close's end
        closer. An explicit stop also cancels a HUP restart still draining. Called from a
        connection's own greenlet (an ``exit`` command), it returns at once: the server closes
        in another greenlet and drains this connection like the others, so return promptly.
        """
        lifecycle = self.lifecycle
        lifecycle.cancel_restart()
        lifecycle.request_stop(timeout)
        if not lifecycle.in_loop:
            self.server_close()
        elif lifecycle.may_wait():  # the loop ends and run() closes the server
            lifecycle.wait_closed()

    def pre_server_close_hook(self) -> None:
        """Hook: first thing in server_close, while connections may still be running."""

    def server_close(self) -> None:
        """Stop accepting, let connections finish (bounded), close listeners. Idempotent.

        One close only (:meth:`Lifecycle.claim_close <gnetserver.lifecycle.Lifecycle.
        claim_close>`): later callers wait, a close asked for by a connection runs elsewhere.

        After a HUP (``lifecycle.restarting``) the server re-executes itself at once (same
        pid, :meth:`restart_in_place`): the listening sockets are handed to the new image and
        a drainer child finishes the connections; this returns only if no exec happened (a
        TERM came first, or the exec failed), and the server then closes as usual. At the
        end, drainers of earlier HUPs still running get what is left of the drain's time.
        Under systemd, STOPPING=1 is sent when the close is a real one (not a HUP's hand-over).
        """
        lifecycle = self.lifecycle
        if not lifecycle.claim_close(self.server_close):  # a close runs, ran, or was handed on
            return
        try:
            self.pre_server_close_hook()  # user: connections may still be running
            self.log(2, "Server closing!")
            if lifecycle.restarting:
                self.restart_in_place()  # execs; returns if a stop came first or it failed
            self.notifier.stopping("Stopping")  # a real close (a HUP's hand-over execs above)
            self.stop_dequeue()
            self.stop_acme()
            self.stop_certificate_check()
            self.stop_accepting(take_queued=True)  # the queued ones are served, not reset
            self.drain()  # graceful_timeout or stop(timeout); TERM/INT cut it short
            lifecycle.cancel_restart()
            self.finish_children()  # drainers of earlier HUPs: the time the drain had left
            self._guarded_hook(self.post_child_cleanup_hook)  # user: no connection, no child
            self.untie_client_stdout()
            self.release_listeners()  # close the listening sockets
            lifecycle.uninstall_signals()  # the program's own signal handlers apply again
            self.remove_pid_file()  # unless keep_pid_file (HUP re-exec)
            self.metrics.close()  # PreFork: the processes' files (the workers are gone)
            self.close_logs()  # last: syslog reports what it had to drop
        finally:
            lifecycle.close_ended()  # also after a failing hook: nobody waits forever

    def post_child_cleanup_hook(self) -> None:
        """Hook: in server_close once every connection has ended (drained or cut) and every
        child process is gone (PreFork's workers, HUP drainers), before the listening
        sockets are closed, as Net::Server calls it after closing its children."""

    def stop_dequeue(self) -> None:
        """Framework step, first in server_close: stop the ``check_for_dequeue`` greenlet (a
        run in progress is killed, unless it is the caller)."""
        if self.dequeue_timer is not None:
            self.dequeue_timer.stop()
            self.dequeue_timer = None

    def stop_acme(self) -> None:
        """Framework step in server_close (and when a start fails): stop ordering and close
        the HTTP-01 responder; the served certificates stay until the close."""
        if self.acme is not None:
            self.acme.stop()

    def stop_certificate_check(self) -> None:
        """Framework step of server_close: stop the daily certificate check."""
        if self.expiry_timer is not None:
            self.expiry_timer.stop()
            self.expiry_timer = None

    def untie_client_stdout(self) -> None:
        """Framework step of server_close: with ``tie_client_stdout``, give up this server's
        hold on the stdio proxies (the last server to let go restores the real streams)."""
        if self._tied:
            self._tied = False
            stdio.uninstall()

    def _guarded_hook(self, hook: Any) -> None:
        """Call a server-wide hook during the close; an exception is logged (level 1)."""
        try:
            hook()
        except Exception:
            self.log(1, f"{getattr(hook, '__name__', hook)} failed: "
                        f"{traceback.format_exc().rstrip()}")

    def fatal(self, message: str) -> NoReturn:
        """Net::Server's ``fatal``: something the server cannot go on with. Calls
        :meth:`fatal_hook` with the message and the caller's module, file and line, logs
        ``message`` at level 0 with where it came from, asks the server to stop at once
        (``stop(0)``; from a connection the close runs elsewhere) and raises
        :class:`~gnetserver.errors.Fatal`, so the caller does not go on. ``run()`` then
        ends with :meth:`server_exit` (1). Any greenlet of the server may call it."""
        frame = sys._getframe(1)
        module = frame.f_globals.get("__name__", "?")
        file, line = frame.f_code.co_filename, frame.f_lineno
        try:
            self.fatal_hook(message, module, file, line)
        except Exception:
            self.log(1, f"fatal_hook failed: {traceback.format_exc().rstrip()}")
        self.log(0, f"{message}\n  at line {line} in file {file}")
        self.exit_status = 1
        self.stop(0)
        raise Fatal(message)

    def fatal_hook(self, message: str, module: str, file: str, line: int) -> None:
        """Hook: first in :meth:`fatal`, with its message and where it was called (module
        name, file, line), as Net::Server's ``fatal_hook($error, $package, $file, $line)``.
        Runs in the greenlet that called fatal(); the server is still running."""

    def server_exit(self, status: int) -> None:
        """Hook: last in :meth:`run`, after the close, with the exit status (1 after
        :meth:`fatal`, else 0). Net::Server's default exits the process; here a status of 0
        returns (``run()`` returns to the program), any other raises ``SystemExit(status)``.
        Not called by :meth:`start`/:meth:`stop` (a server embedded in a program)."""
        if status:
            raise SystemExit(status)

    def stop_accepting(self, take_queued: bool = False) -> None:
        """Framework step of server_close (and of a HUP's drainer once the new image
        accepts): the personality stops accepting. ``take_queued`` (server_close): the
        connections already in the kernel's listen queue are accepted and served first,
        since closing the listener would reset them (a balancer in front could not retry
        them)."""
        if self.personality is not None:
            self.personality.stop_accepting(take_queued)

    def restart_in_place(self) -> None:
        """Framework step of server_close after a HUP: re-execute the server keeping its pid
        and its listening sockets, with no pause in accepting (see :meth:`handle_hup`).

        Signals queued meanwhile are handled first (a TERM wins: no restart), then
        ``restart_close_hook`` runs (connections may still be running; a TERM queued during
        the hook wins too), then the listening sockets are dup'ed for the new image, a
        drainer child is forked (:meth:`drain_previous_generation`: the connections, and
        accepting until the new image accepts, are its) and this process execs at once, with
        nothing that yields in between. Returns only if no exec happened: a stop came first
        (the dups are closed), the fork failed (logged; the old way then: stop accepting,
        drain, exec), or the exec failed (this process's copies of the connections are
        dropped, the drainer finishes them and is reaped by the close; the server closes)."""
        lifecycle = self.lifecycle
        lifecycle.dispatch_pending(self.dispatch_signals)  # a TERM that came with the HUP
        if lifecycle.restarting:
            self.restart_close_hook()  # user: right before the fork and the exec
            # The new image binds the HTTP-01 responder again and orders itself: the drainer
            # must neither hold that socket nor go on with an order.
            self.stop_acme()
            lifecycle.dispatch_pending(self.dispatch_signals)
        if not lifecycle.restarting:
            return
        handed = restart.detach_listeners(self.listeners, self.log)
        self.children.reap()
        try:
            left = restart.reexec(handed, self.log, self.children.pids,
                                  fork=lambda: restart.fork_drainer(
                                      lambda ready: self.drain_previous_generation(ready,
                                                                                    handed)),
                                  abandon=self._abandon_connections)
        except OSError as exc:  # no drainer: drain here first, then exec (accepting pauses)
            self.log(1, f"HUP: cannot fork a drainer ({exc}): draining before the exec")
            self.stop_accepting()
            self.drain()
            if not lifecycle.restarting:  # a TERM during the drain
                restart.close_fds(handed)
                return
            left = restart.reexec(handed, self.log, self.children.pids)
        for pid in left:
            self.children.add(pid)

    def _abandon_connections(self) -> None:
        """After a failed exec, a drainer has the connections: this process's copies must
        neither read nor write. Accepting stops and their greenlets are killed (GreenletExit:
        the clients are aborted, which closes this process's fds only)."""
        self.stop_accepting()
        if self.personality is not None:
            self.personality.kill_connections()

    def drain_previous_generation(self, ready_fd: int,
                                  handed: Sequence[restart.BoundSocket]) -> None:
        """The body of a HUP's drainer, the child forked right before the exec (never called
        in the server's own process): it keeps the connections of the previous generation
        and keeps accepting until the new image accepts (``ready_fd`` reads EOF), then stops
        accepting, lets the connections finish within ``graceful_timeout`` and returns (the
        child then exits). Signals here: TERM and INT cut at once (``handle_term``/
        ``handle_int``), QUIT stops accepting now (the drain follows), HUP is ignored. It
        closes every listening fd it holds (the dups for the new image at once), never
        touches the pid file (it names the new image) and runs no restart hook."""
        lifecycle = self.lifecycle
        lifecycle.become_drainer()  # the parent's signal queue out, the drainer's in
        restart.close_fds(handed)  # the new image's copies
        self.process.forget_pid_file()
        self.children.forget()  # an earlier drainer is not our child
        self.log(2, f"HUP: pid {os.getpid()} serves the previous generation until the new "
                    "one accepts")
        lifecycle.wait_for_handover(ready_fd, self._drainer_signals)
        self.stop_accepting()
        for listener in self.listeners:  # not close_listener: a unix socket file stays
            listener.sock.close()
        self.log(2, f"HUP: pid {os.getpid()} stopped accepting (the new image accepts)")
        self.drain()
        self.close_logs()

    def _drainer_signals(self, names: Sequence[str]) -> None:
        """A drainer's signals: TERM and INT as always (``stop(0)``: cut now), QUIT stops
        accepting now, HUP is ignored (the new image is the one to reload)."""
        for name in names:
            if name == "QUIT":
                self.log(2, "Received a SIG QUIT in a HUP drainer: not accepting any more")
                self.lifecycle.end_overlap()
            elif name == "HUP":
                self.log(2, "Received a SIG HUP in a HUP drainer: ignored")
            else:
                self.dispatch_signals([name])

    def finish_children(self) -> None:
        """Framework step of server_close: wait for the drainers still running (those of
        earlier HUPs, or the one of a failed exec) up to the drain's deadline (at once after
        TERM/INT: they are sent SIGTERM), then reap them."""
        lifecycle = self.lifecycle
        if lifecycle.drain_deadline != float("inf"):
            left = max(0.0, lifecycle.drain_deadline - time.monotonic())
        else:  # no drain ran (nothing was ever accepted)
            left = lifecycle.stop_timeout if lifecycle.stop_timeout is not None \
                else self.conf.graceful_timeout
        self.children.finish(left)

    def drain(self) -> None:
        """Framework step of server_close: let the running connections finish until the
        drain's deadline (the shortest ``stop(timeout)``, else ``graceful_timeout``), then cut
        those left. Signals received meanwhile are dispatched (TERM and INT end it)."""
        self.lifecycle.drain(self.conf.graceful_timeout, self.dispatch_signals, self.log)

    def release_listeners(self) -> None:
        """Close every listening socket (also when a start-up step failed). Idempotent. A
        socket systemd passed is only closed: its unix socket file stays, systemd's."""
        self.stop_acme()  # the HTTP-01 responder's socket too
        for listener in self.listeners:
            if listener.address.passed:
                listener.sock.close()
            else:
                listener.protocol.close_listener(listener.sock)


def _discard(*args: Any) -> None:
    """The HUP dry run's TLS warnings: the new image logs them again."""
