"""GServer: Net::Server's lifecycle and hooks over gevent.

Rules of this module:

* :meth:`GServer.run` and :meth:`GServer.run_client_connection` are the one place that knows
  the hook order; each reads as a table of contents, one call per line.
* Hooks named ``*_hook`` are empty, for users. Methods without the suffix are framework steps:
  override them only with ``super()``.
* Server-wide hooks run in the greenlet that called ``run()``/``start()``. Per-connection hooks
  run in the connection's own greenlet and receive the :class:`~gnetserver.client.Client`;
  many connections share the server object, so keep per-connection state on the client.
* An exception in a per-connection hook ends that connection only: it is logged (level 1 with
  a traceback; timeouts and disconnects at level 3 without) and the client is closed.
"""

from __future__ import annotations

import atexit
import functools
import os
import resource
import sys
import threading
import traceback
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from gevent.pool import Pool
from gevent.server import StreamServer

from . import access, config, daemon, log, lookup, privileges, restart, signals
from .client import Client
from .errors import ConfigError, HandshakeTimeout, TLSError
from .listener import Listener
from .options import DEFAULT_PORT, OPTIONS, Option, table
from .ports import PortSpec, parse_ports, split_duplicates
from .proto import PROTOCOLS
from .tls import TLSContexts, tls_library_versions

#: Per-port dict keys that are port-spec fields rather than protocol options.
_SPEC_KEYS = frozenset({"port", "host", "proto", "ipv", "listen", "unix_type"})


class GServer:
    """A Net::Server style server: subclass it, override hooks, call :meth:`run`.

    Methods for the caller: ``run(**options)`` (Net::Server style: reads the command line, runs
    until stopped), ``serve_forever()`` (the same without reading the command line),
    ``start()`` / ``stop(timeout)`` (embed the server in another program or a test), and the
    ``listeners`` attribute (the bound sockets: find kernel-chosen ports there).

    Hooks for users (no-ops by default): ``configure_hook``, ``post_configure_hook``,
    ``post_bind_hook``, ``pre_loop_hook``, ``pre_server_close_hook``, and per connection
    ``post_accept_hook``, ``allow_deny_hook``, ``request_denied_hook``,
    ``post_process_request_hook``, ``post_client_connection_hook``. The main one to override is
    ``process_request(client)``; its default is Net::Server's echo.

    Framework steps (override only with ``super()``): ``options``, ``default_values``,
    ``configure``, ``post_configure``, ``pre_bind``, ``bind``, ``post_bind``, ``loop``,
    ``server_close``, ``post_accept``, ``get_client_info``, ``allow_deny``,
    ``post_process_request``.

    Args:
        commandline: the words to read options from in ``run()``; default ``sys.argv[1:]``.
        **options: options with the highest precedence (see :mod:`gnetserver.options`).
    """

    def __init__(self, commandline: Sequence[str] | None = None, **options: Any) -> None:
        self.new_args: dict[str, Any] = options
        self.commandline: list[str] | None = None if commandline is None else list(commandline)
        self.run_args: dict[str, Any] = {}
        self.conf: dict[str, Any] = {}
        self.port_specs: list[PortSpec] = []
        self.listeners: list[Listener] = []
        self.requests = 0
        self.argv_unused: list[str] = []
        self._logger = log.get_logger()
        self._pool: Pool | None = None
        self._slots: BoundedSemaphore | None = None
        self._stop_requested = Event()
        self._closed = Event()
        self._stop_timeout: float | None = None
        self._looping = False
        self._self_signed: tuple[Any, Any] | None = None

    # == entry points ===========================================================================

    def run(self, **run_args: Any) -> None:
        """Run the server's whole life, Net::Server's ``run()``; returns once it is closed."""
        self.run_args = run_args
        if self.commandline is None:
            self.commandline = sys.argv[1:]
        self._start_up()
        try:
            self.loop()  # serve until stop() (or Ctrl-C)
        except KeyboardInterrupt:
            self.log(2, "Received INT: stopping")
        self.server_close()  # stop accepting, finish connections, release ports

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
        self._start_accepting()
        return self

    def stop(self, timeout: float | None = None) -> None:
        """Stop accepting, let connections finish for ``timeout`` seconds (default
        ``graceful_timeout``), then cut them and close every listener."""
        self._stop_timeout = timeout
        if not self._looping:
            self.server_close()
            return
        self._stop_requested.set()
        if self._pool is None or gevent.getcurrent() not in self._pool:
            self._closed.wait()

    def _start_up(self) -> None:
        """Everything before the loop; on failure, whatever was bound is released."""
        try:
            self.configure_hook()  # user: set up state before parsing
            self.configure()  # options from every source, with Net::Server's precedence
            self.post_configure()  # logging, limits
            self.post_configure_hook()  # user: validate custom options
            self.pre_bind()  # port options -> port specs
            self.bind()  # one listening socket per address, TLS contexts built
            self.post_bind_hook()  # user: runs with the privileges the server started with
            self.post_bind()  # (privileges, signals: later)
            self.pre_loop_hook()  # user: last preparation before serving
        except BaseException:
            self._release_listeners()
            raise

    # == configuration ==========================================================================

    def options(self) -> list[Option]:
        """The option table. Subclasses add their own: ``return super().options() + [...]``."""
        return list(OPTIONS)

    def default_values(self) -> dict[str, Any]:
        """Lowest-precedence values (Net::Server's ``default_values``); override to set defaults."""
        return {}

    def configure_hook(self) -> None:
        """Hook: first thing in :meth:`run`, before any option is read. May set attributes."""

    def configure(self) -> None:
        """Read options: constructor > command line > run() arguments > conf_file >
        default_values(); fill ``self.conf``. Raises ConfigError naming a bad option."""
        known = table(self.options())
        new = config.from_mapping(self.new_args, known, "constructor arguments")
        argv, self.argv_unused = config.from_command_line(self.commandline or [], known, False)
        run = config.from_mapping(self.run_args, known, "run() arguments")
        defaults = config.from_mapping(self.default_values(), known, "default_values()")
        conf_file = next((s["conf_file"][-1] for s in (new, argv, run, defaults)
                          if s.get("conf_file")), None)
        conf: config.Source = {}
        if conf_file:
            conf = config.from_conf_file(conf_file, known)
        sources = [("constructor arguments", new), ("command line", argv),
                   ("run() arguments", run), (f"conf_file {conf_file!r}", conf),
                   ("default_values()", defaults)]
        self.conf = config.merge(sources, known)

    def post_configure(self) -> None:
        """Apply what the options ask for before binding: log unused command-line words, raise
        the open-file limit so the pools fit."""
        if self.argv_unused:
            self.log(2, f"Command-line words not used by the server: {' '.join(self.argv_unused)}")
        needed = 2 * (self.conf["max_servers"] + self.conf["max_handshakes"]) + 64
        raise_open_file_limit(needed)
        self.initialize_logging()  # log_file, syslog, log_function
        self.daemonize()  # background/setsid, pid_file

    def initialize_logging(self) -> None:
        """Framework step (in post_configure): open the target ``log_file`` names (a file
        path, ``Sys::Syslog``, or stderr when unset) and resolve ``log_function`` (a callable,
        or the name of a method of the server). Raises ConfigError for a file that cannot be
        opened, an unreachable syslog (unless ``nofatal``) or an unknown method name."""
        function = self.conf.get("log_function")
        if isinstance(function, str):
            method = getattr(self, function, None)
            if not callable(method):
                raise ConfigError(f"option 'log_function': {function!r} is not a method of "
                                  f"{type(self).__name__}")
            function = method
        targets = log.LogTargets.from_conf(self.conf)
        if self.log_targets is not None:
            self.log_targets.close()
        self.log_targets, self._log_callable = targets, function

    #: The pid file written by daemonize (None without ``pid_file``).
    pid_file: daemon.PidFile | None = None
    #: True keeps the pid file when the server closes (a HUP re-exec keeps pid and file).
    keep_pid_file: bool = False
    #: Whether daemonize may point the process's stdin/stdout/stderr elsewhere, as Net::Server
    #: does under ``setsid`` or ``log_file``. None (default): only when the server runs in the
    #: main thread (a server in a ServerThread leaves the host program's streams alone).
    redirect_std_streams: bool | None = None

    def daemonize(self) -> None:
        """Framework step (in post_configure, before binding), in Net::Server's order: check
        ``pid_file`` (ConfigError while a live process owns it; a stale one is overwritten
        with a warning), point stdin/stdout at /dev/null (``setsid`` or ``log_file``), fork
        for ``background``/``setsid`` (the parent exits 0; not after a HUP re-exec), setsid,
        point stderr at the log file (or /dev/null under ``setsid``), write the pid file."""
        c = self.conf
        main = threading.current_thread() is threading.main_thread()
        if (c["background"] or c["setsid"]) and not main:
            raise ConfigError("options 'background'/'setsid': the server must run in the "
                              "main thread to fork into the background")
        pid_file = daemon.PidFile.from_option(c["pid_file"]) if c["pid_file"] else None
        if pid_file is not None and (warning := pid_file.check()):
            self.log(1, warning)
        redirect = main if self.redirect_std_streams is None else self.redirect_std_streams
        if redirect and (c["setsid"] or c["log_file"]):
            daemon.stdin_stdout_to_devnull()
        if (c["background"] or c["setsid"]) and not daemon.restarting():
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

    def post_configure_hook(self) -> None:
        """Hook: after options are read (``self.conf`` is complete). Validate custom options."""

    # == binding ================================================================================

    def pre_bind(self) -> None:
        """Turn the ``port``/``host``/``proto``/``ipv`` options into ``self.port_specs``."""
        self.log(2, f"{type(self).__name__} starting! pid({os.getpid()})")
        ports = self.conf["port"]
        if not ports:
            self.log(2, f"Port Not Defined.  Defaulting to '{DEFAULT_PORT}'")
            ports = [DEFAULT_PORT]
        c = self.conf
        specs = parse_ports(ports, host=c["host"], proto=c["proto"], ipv=c["ipv"],
                            keep_duplicates=True)
        self.port_specs, dropped = split_duplicates(specs)
        for spec in dropped:
            self.log(2, f"Duplicate configuration (port {spec}) - skipping")
        for spec in self.port_specs:
            if spec.proto not in PROTOCOLS:
                raise ConfigError(f"port {spec}: proto {spec.proto!r} is not supported "
                                  f"(supported: {', '.join(PROTOCOLS)})")

    def bind(self) -> None:
        """Build every protocol (TLS contexts: fail before binding anything), then bind and
        listen on every resolved address of every port spec."""
        # One TLSContexts per server: ssl ports with equal SSL_* options share a context, so
        # sessions resume across listeners; reload_tls() rebuilds them all.
        self.tls_contexts = TLSContexts(lambda text: self.log(1, text))
        protocols = {id(spec): self.make_protocol(spec) for spec in self.port_specs}
        if any(spec.proto == "ssl" for spec in self.port_specs):
            self.log(2, f"TLS by {tls_library_versions()}")
        # After a HUP re-exec (BOUND_SOCKETS set): restart_open_hook, then matching specs adopt
        # their inherited sockets and only the others are bound (gnetserver.restart).
        bound = restart.bind_ports(self.port_specs, self.conf["listen"], self.log,
                                   self.restart_open_hook)
        for address, sock in bound:
            sock.setblocking(False)
            listener = Listener(address.spec, address, sock, protocols[id(address.spec)])
            self.listeners.append(listener)
            self.log(2, f"Binding to {listener}")

    def make_protocol(self, spec: PortSpec) -> Any:
        """The protocol object for one port spec, with its options resolved."""
        unknown = sorted(k for k in spec.opts if k not in _SPEC_KEYS and not k.startswith("SSL_"))
        if unknown:
            raise ConfigError(f"port {spec}: unknown per-port key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(_SPEC_KEYS))}, SSL_*)")
        options = self.ssl_options(spec) if spec.proto in ("ssl", "ssleay") else dict(spec.opts)
        return PROTOCOLS[spec.proto](spec, options, self)

    def ssl_options(self, spec: PortSpec) -> dict[str, Any]:
        """The SSL_* options of one port: the per-port dict, else the server-wide option, else a
        method (called with host, port, proto) or attribute of that name on the server."""
        names = {o.name for o in self.options() if o.name.startswith("SSL_")}
        names |= {k for k in spec.opts if k.startswith("SSL_")}
        # Methods/attributes of any SSL_* name count too: an unsupported one is then refused
        # at start (tls.context.check_names) instead of being silently ignored.
        names |= {k for k in dir(self) if k.startswith("SSL_")}
        resolved: dict[str, Any] = {}
        for name in sorted(names):
            if name in spec.opts:
                value = spec.opts[name]
            elif self.conf.get(name) is not None:
                value = self.conf[name]
            else:
                value = getattr(self, name, None)
                if callable(value):
                    value = self._ssl_method_value(name, value, spec)
            if value is not None:
                resolved[name] = value
        if not ({"SSL_cert_file", "SSL_cert"} & resolved.keys()) and self.conf["self_signed"]:
            resolved["SSL_cert"], resolved["SSL_key"] = self.self_signed_certificate()
        return resolved

    def _ssl_method_value(self, name: str, method: Any, spec: PortSpec) -> Any:
        """Net::Server calls an SSL_* method with (host, port, proto) and uses what it returns
        (for callback options: the callback itself)."""
        try:
            return method(spec.host, spec.port, spec.proto)
        except TypeError as exc:
            raise ConfigError(f"port {spec}: {name} is called as {name}(host, port, proto) and "
                              f"must return the option's value: {exc}") from exc

    def self_signed_certificate(self) -> tuple[Any, Any]:
        """A self-signed certificate and key, made once per server, fingerprint logged."""
        if self._self_signed is None:
            from .tls.selfsigned import fingerprint_sha256, make_self_signed

            self._self_signed = make_self_signed()
            fingerprint = fingerprint_sha256(self._self_signed[0])
            self.log(2, f"Generated a self-signed certificate, SHA-256 fingerprint {fingerprint}")
        return self._self_signed

    def reload_tls(self) -> bool:
        """Rebuild every TLS context from its options, reading certificates, keys, CAs, CRLs,
        DH and OCSP files again; all contexts or none.

        New connections get the new contexts; established ones keep theirs. Session tickets
        and cached sessions of the old contexts no longer resume (one full handshake each). If
        any context fails to build, the old ones all stay and the reason is logged at level 1.
        Call it in the server's hub thread (a connection greenlet, a signal handler,
        ``ServerThread.call``). Returns True when the new contexts are in use.
        """
        contexts: TLSContexts | None = getattr(self, "tls_contexts", None)
        if contexts is None or not contexts.handles:
            self.log(2, "TLS reload: no TLS port to reload")
            return False
        try:
            contexts.reload()
        except ConfigError as exc:
            self.log(1, f"TLS reload failed, still serving the previous certificates: {exc}")
            return False
        ports = ", ".join(port for handle in contexts.handles for port in handle.ports)
        self.log(2, f"TLS reloaded: {ports}")
        return True

    def post_bind_hook(self) -> None:
        """Hook: after every port is bound, with the privileges the server started with."""

    def post_bind(self) -> None:
        """Framework step after binding: drop privileges, then install signal handlers."""
        self.drop_privileges()  # chroot, group, user
        self.register_signals()  # TERM/INT/QUIT/HUP handled in the hub

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

    def register_signals(self) -> None:
        """Framework step (in post_bind): set up Net::Server's signals (spec 6.1): TERM and INT
        stop at once, QUIT stops gracefully, HUP re-executes the server keeping its sockets.

        The handlers only queue the signal; :meth:`loop` installs them when it starts (so a
        server embedded with :meth:`start` leaves the program's signals alone) and runs
        ``handle_<name>`` in its own greenlet. Only the main thread may install handlers:
        elsewhere (a ServerThread) this is a no-op, logged at level 4.
        """
        if not signals.in_main_thread():
            self.log(4, "Not in the main thread: signal handlers not installed")
            return
        self._signal_queue = signals.SignalQueue()

    def pre_loop_hook(self) -> None:
        """Hook: right before the server starts accepting connections."""

    # == the loop ===============================================================================

    def loop(self) -> None:
        """Accept on every listener (in the hub) until :meth:`stop` is called or a signal's
        ``handle_<name>`` ends the loop; queued signals are dispatched here, in this greenlet."""
        queue = self._signal_queue
        if queue is not None:
            queue.install()
        self._start_accepting()
        self._looping = True
        try:
            wake = [self._stop_requested] + ([queue.event] if queue is not None else [])
            while not self._stop_requested.is_set():
                gevent.wait(wake, count=1)
                if queue is not None:
                    self.dispatch_signals(queue.pop_all())
        finally:
            self._looping = False

    def _start_accepting(self) -> None:
        """One StreamServer per listener, all spawning into one pool of connection greenlets."""
        self._pool = Pool(self.conf["max_servers"] + self.conf["max_handshakes"])
        self._slots = BoundedSemaphore(self.conf["max_servers"])
        for listener in self.listeners:
            handle = functools.partial(self._on_connection, listener)
            listener.stream_server = StreamServer(listener.sock, handle=handle, spawn=self._pool)
            listener.stream_server.start()
        self.log(2, "Server ready: " + ", ".join(str(listener) for listener in self.listeners))

    def _on_connection(self, listener: Listener, sock: Any, address: Any) -> None:
        """Greenlet body for one accepted socket (gevent closes ``sock`` afterwards)."""
        self.run_client_connection(Client(sock, address, listener, self))

    # == one connection =========================================================================

    def run_client_connection(self, client: Client) -> None:
        """The life of one connection, in its own greenlet (Net::Server's order).

        An exception in a hook is logged and ends this connection only. When :meth:`stop` runs
        out of time it kills the greenlet (GreenletExit): the client is then cut at once."""
        try:
            if not self._address_allowed(client):  # allow/deny/cidr on the address, before TLS
                return
            if not self._negotiate(client):  # post_accept: the TLS handshake
                return
            assert self._slots is not None
            with self._slots:  # at most max_servers sessions; others wait here
                try:
                    self.get_client_info(client)  # peer/local addresses, CONNECT log line
                    self.post_accept_hook(client)  # user
                    client.allowed = bool(self.allow_deny(client)
                                          and self.allow_deny_hook(client))
                    if client.allowed:
                        self.process_request(client)  # user: the protocol
                    else:
                        self.request_denied_hook(client)  # user
                    self.post_process_request_hook(client)  # user: before the client is closed
                except Exception as exc:
                    self.connection_error(client, exc)
                self._guarded(self.post_process_request, client)  # closes the client
            self._guarded(self.post_client_connection_hook, client)  # user: after close
        except BaseException:
            client.abort()  # killed by stop(): no close_notify, no lingering (no-op if closed)
            raise

    def _negotiate(self, client: Client) -> bool:
        """Run post_accept; log and drop the client on failure."""
        try:
            self.post_accept(client)
            return True
        except HandshakeTimeout:
            self.log(3, f"TLS handshake timed out from {_peer(client)}")
            client.abort()
        except (TLSError, OSError) as exc:
            self.log(3, f"TLS handshake failed from {_peer(client)}: {exc}")
            client.close()
        except Exception as exc:
            self.connection_error(client, exc)
            client.close()
        return False

    def _guarded(self, hook: Any, client: Client) -> None:
        """Call a cleanup hook; an exception is logged, never propagated."""
        try:
            hook(client)
        except Exception as exc:
            self.connection_error(client, exc)

    def connection_error(self, client: Client, exc: BaseException) -> None:
        """Log an exception of one connection: disconnects and timeouts at level 3, others at
        level 1 with the traceback."""
        if isinstance(exc, (TimeoutError, ConnectionError, TLSError)):
            self.log(3, f"Connection {client.peer_text()} ended: {type(exc).__name__}: {exc}")
        else:
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.log(1, f"Error in connection {client.peer_text()}: {text.rstrip()}")

    def post_accept(self, client: Client) -> None:
        """Framework step, first per connection: count it and let the protocol negotiate (TLS:
        the handshake, bounded by ``timeout_handshake``). Raising drops the connection."""
        self.requests += 1
        client.listener.protocol.post_accept(client, self.conf["timeout_handshake"])
        client.settimeout(self.conf["timeout_idle"] or None)

    def get_client_info(self, client: Client) -> None:
        """Framework step: fill ``peeraddr``/``peerport``/``sockaddr``/``sockport`` and log the
        CONNECT line (level 3)."""
        if client.proto == "unix":
            client.sockport = str(client.listener.address.sockaddr)
            client.peeraddr = "localhost"
        else:
            local = client.sock.getsockname()
            client.sockaddr, client.sockport = local[0], local[1]
            client.peeraddr, client.peerport = client.address[0], client.address[1]
        self.log(3, f'CONNECT {client.proto.upper()} Peer: "{client.peer_text()}" '
                    f'Local: "{client.local_text()}"')

    def post_accept_hook(self, client: Client) -> None:
        """Hook: after get_client_info, before access checks. May read and write the client."""

    def allow_deny(self, client: Client) -> bool:
        """Framework step: Net::Server's access rules, after the handshake; True allows.

        Unix-socket clients are always allowed. With ``reverse_lookups`` the peer's host name
        is looked up first, cooperatively (``client.peerhost``; with double-reverse lookups
        also ``client.peerhost_rev``, the addresses that name resolves to), and a
        double-reverse failure denies. Then ``allow``/``deny``/``cidr_allow``/``cidr_deny``
        decide (:mod:`gnetserver.access`: deny wins; any rule makes the default deny).

        A denied client gets ``request_denied_hook`` instead of ``process_request`` (the TLS
        session is up, so the hook may write a refusal), then the usual closing hooks. On ssl
        ports a peer whose *address* alone is denied never gets here: it is closed before the
        TLS handshake, and no per-connection hook runs for it (see ``_address_allowed``).
        """
        if client.proto == "unix" or client.peeraddr is None:
            return True
        c = self.conf
        mode = access.lookup_mode(c["reverse_lookups"], c["double_reverse_lookups"])
        address = access.normalise_address(client.peeraddr)
        host, forward = self._lookup_peer(client, mode)
        if mode.double:
            passed, message = access.double_reverse_check(
                address, client.peeraddr, host, forward, mode.flags)
            if message:
                self.log(3, message)
            if not passed:
                return False
        if self.access_rules().allowed(address, host):
            return True
        self.log(3, f"Denied {client.peer_text()}{f' ({host})' if host else ''} "
                    f"by the allow/deny rules")
        return False

    def access_rules(self) -> access.AccessRules:
        """The compiled allow/deny/cidr_allow/cidr_deny rules of ``self.conf`` (cached)."""
        c = self.conf
        return access.rules_from_options(c["allow"], c["deny"], c["cidr_allow"], c["cidr_deny"])

    def _lookup_peer(self, client: Client, mode: access.LookupMode
                     ) -> tuple[str | None, set[str] | None]:
        """Reverse (and forward) lookups the options ask for, once per client, cooperative."""
        client.peerhost = client.peerhost_rev = None  # type: ignore[attr-defined]
        if not mode.reverse or client.peeraddr is None:
            return None, None
        host = lookup.reverse_lookup(client.peeraddr)
        forward = lookup.forward_addresses(host) if host and mode.double else None
        client.peerhost, client.peerhost_rev = host, forward  # type: ignore[attr-defined]
        return host, forward

    def _address_allowed(self, client: Client) -> bool:
        """The cheap check before any TLS work: on ssl ports, close a peer that the address
        rules deny whatever its host name (a deny or cidr_deny match; without reverse lookups,
        no allow or cidr_allow match either), so that a denied peer costs no handshake.

        None of the per-connection hooks runs for such a peer (there is no TLS session for
        ``request_denied_hook`` to write to); a level-3 log line says it was denied. Plain tcp
        ports keep Net::Server's order: the decision is made in :meth:`allow_deny` and
        ``request_denied_hook`` runs. Host-name rules and ``allow_deny_hook`` always run after
        the handshake.
        """
        c = self.conf
        if client.proto not in ("ssl", "ssleay") or not isinstance(client.address, tuple) \
                or not (c["allow"] or c["deny"] or c["cidr_allow"] or c["cidr_deny"]):
            return True  # nothing to check (the common case costs four truth tests)
        mode = access.lookup_mode(c["reverse_lookups"], c["double_reverse_lookups"])
        if self.access_rules().address_verdict(client.address[0], host_pending=mode.reverse):
            return True
        self.log(3, f"Denied {_peer(client)} by the allow/deny rules, before the TLS handshake")
        client.abort()  # no TLS alert, no drain: the cheapest way out
        return False

    def allow_deny_hook(self, client: Client) -> bool:
        """Hook: an extra access check after allow_deny; return False to deny the client."""
        return True

    def request_denied_hook(self, client: Client) -> None:
        """Hook: runs instead of process_request for a denied client; may write a refusal."""

    def process_request(self, client: Client) -> None:
        """Hook: serve one connection. The default is Net::Server's echo: a welcome line, each
        line answered with ``You said "..."``, ``quit`` closes the connection."""
        name, pid = type(self).__name__, os.getpid()
        client.sendall(f'Welcome to "{name}" ({pid})\r\n'.encode())
        for raw in client:
            line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
            client.sendall(f'{name}:{pid}: You said "{line}"\r\n'.encode())
            if line.strip() == "quit":
                break

    def post_process_request_hook(self, client: Client) -> None:
        """Hook: after process_request (or request_denied_hook), before the client is closed;
        ``client.allowed`` tells which ran."""

    def post_process_request(self, client: Client) -> None:
        """Framework step: close the client (TLS close_notify, half-close, short drain)."""
        client.close()

    def post_client_connection_hook(self, client: Client) -> None:
        """Hook: last per connection, after the client is closed. Do not do I/O on it."""

    # == closing ================================================================================

    def pre_server_close_hook(self) -> None:
        """Hook: first thing in server_close, while connections may still be running."""

    def server_close(self) -> None:
        """Stop accepting, let connections finish (bounded), close listeners. Idempotent.

        After a HUP (``restarting``) the listening sockets are handed over instead of closed:
        they are dup'ed for the new image, connections get ``graceful_timeout`` to finish,
        then ``restart_close_hook`` runs and the server re-executes itself (same pid); this
        returns only if that exec failed, and the server then closes as usual.
        """
        if self._closed.is_set():
            return
        self.pre_server_close_hook()
        self.log(2, "Server closing!")
        timeout = self._stop_timeout
        if timeout is None:
            timeout = self.conf.get("graceful_timeout", 0)
        handed = restart.detach_listeners(self.listeners, self.log) if self.restarting else []
        for listener in self.listeners:
            if listener.stream_server is not None:
                listener.stream_server.close()
        if self._pool is not None:
            self._drain(timeout)  # a TERM or INT meanwhile cuts it short
            self._pool.kill(block=True, timeout=1)
        if self.restarting:
            self.restart_close_hook()  # user: last thing before the exec
            restart.reexec(handed, self.log)  # returns only if the exec failed
        else:
            restart.close_fds(handed)  # a TERM during a HUP's drain: no restart after all
        self.restarting = False
        self._release_listeners()
        if self._signal_queue is not None:
            self._signal_queue.uninstall()
        self._closed.set()
        self.remove_pid_file()  # unless keep_pid_file (HUP re-exec)

    def _release_listeners(self) -> None:
        for listener in self.listeners:
            listener.protocol.close_listener(listener)

    # == signals and restart (gnetserver.signals, gnetserver.restart) ==========================

    #: True once a HUP asked for a re-exec: server_close hands the sockets to the new image
    #: (the exec never returns, so the pid file stays).
    restarting: bool = False
    #: The queue the signal handlers fill (main thread only; set by register_signals).
    _signal_queue: signals.SignalQueue | None = None

    def dispatch_signals(self, names: Sequence[str]) -> None:
        """Framework step (in loop): call ``handle_<name>`` for each queued signal, in order."""
        for name in names:
            handler = getattr(self, f"handle_{name.lower()}", None)
            if handler is None:
                self.log(2, f"Received a SIG {name}: no handle_{name.lower()}, ignored")
            else:
                handler()

    def handle_term(self) -> None:
        """SIGTERM (run by the loop, not the OS handler): stop at once, in-flight connections
        are cut (a HUP restart in progress is abandoned)."""
        self.log(2, "Received a SIG TERM: stopping now")
        self._stop_now()

    def handle_int(self) -> None:
        """SIGINT (run by the loop): like TERM, stop at once."""
        self.log(2, "Received a SIG INT: stopping now")
        self._stop_now()

    def handle_quit(self) -> None:
        """SIGQUIT (run by the loop): stop accepting; in-flight connections get
        ``graceful_timeout`` seconds to finish, then they are cut and the server exits."""
        self.log(2, "Received a SIG QUIT: stopping after in-flight connections finish")
        self._stop_requested.set()

    def handle_hup(self) -> None:
        """SIGHUP (run by the loop): re-execute the server in place, keeping its listening
        sockets (Net::Server's ``BOUND_SOCKETS``), so that the conf file, certificates and code
        are read again with no connection refused. In-flight connections get
        ``graceful_timeout`` to finish first; the pid and the pid file stay. Log files are
        reopened at once (logrotate)."""
        self.log(2, "Received a SIG HUP: restarting in place")
        self.reopen_logs()  # messages until the exec go to the new file
        self.restarting = True
        self._stop_requested.set()

    def restart_open_hook(self) -> None:
        """Hook: in the re-executed server after a HUP, in bind, before the inherited sockets
        are adopted (options are read; nothing is bound yet)."""

    def restart_close_hook(self) -> None:
        """Hook: on HUP, in server_close, after connections finished and right before the exec
        (the listening sockets are still open, handed to the new image)."""

    def _stop_now(self) -> None:
        self._stop_timeout = 0
        self.restarting = False
        self._stop_requested.set()

    def _drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the connection pool to empty. A TERM or INT
        received meanwhile ends the wait at once; other signals are ignored while closing."""
        assert self._pool is not None
        if timeout <= 0 or not len(self._pool):
            return
        self.log(2, f"Waiting up to {timeout:g}s for {len(self._pool)} connection(s) to finish")
        queue = self._signal_queue
        waiter = gevent.spawn(self._pool.join)
        wake = [waiter] + ([queue.event] if queue is not None else [])
        with gevent.Timeout(timeout, False):
            while not waiter.dead:
                gevent.wait(wake, count=1)
                if queue is not None and self._signals_while_closing(queue.pop_all()):
                    break
        waiter.kill()

    def _signals_while_closing(self, names: Sequence[str]) -> bool:
        """True when one of ``names`` is TERM or INT (handled: stop now)."""
        cut = False
        for name in names:
            if name in ("TERM", "INT"):
                self.dispatch_signals([name])
                cut = True
            else:
                self.log(2, f"Received a SIG {name} while closing: ignored")
        return cut

    # == logging ================================================================================

    #: This server's log target (set by initialize_logging); None: the ``gnetserver`` logger.
    log_targets: log.LogTargets | None = None
    #: The resolved ``log_function`` (set by initialize_logging).
    _log_callable: Callable[[int, str], Any] | None = None

    def log(self, level: int, message: str) -> None:
        """Log ``message`` at Net::Server ``level`` (0-4) if ``log_level`` allows it: to
        ``log_function`` when one is set, else (or when it raises) to write_to_log_hook."""
        if not log.should_log(level, self.conf.get("log_level", 2)):
            return
        function = self._log_callable
        if function is not None:
            try:
                function(level, message)
                return
            except Exception as exc:  # a broken log function must not break the server
                self.write_to_log_hook(1, f"Error in log_function: {type(exc).__name__}: {exc}")
        self.write_to_log_hook(level, message)

    def write_to_log_hook(self, level: int, message: str) -> None:
        """Hook: the default log sink, called by log() for every message that passes
        ``log_level``: the log file (one ``YYYY/MM/DD-HH:MM:SS msg`` line, bytes outside
        printable ASCII escaped as ``%XX``), syslog, or the ``gnetserver`` stdlib logger
        (stderr unless configured otherwise). Runs in whatever greenlet logs; must not block
        for long. Override to send the log elsewhere."""
        if self.log_targets is None:
            self._logger.log(log.STDLIB_LEVELS[level], message)
        else:
            self.log_targets.emit(level, message)

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


def _peer(client: Client) -> str:
    """The peer of a client before get_client_info ran."""
    address = client.address
    return f"[{address[0]}]:{address[1]}" if isinstance(address, tuple) else "unix socket"


def raise_open_file_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE toward ``needed`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def _remove_pid_file_at_exit(server_ref: weakref.ref[GServer]) -> None:
    """atexit: remove the pid file of a server that exited without server_close (a failed
    start, an exception); a HUP re-exec never gets here (exec runs no atexit handlers)."""
    server = server_ref()
    if server is not None and server.pid_file is not None and not server.keep_pid_file:
        server.pid_file.remove()
