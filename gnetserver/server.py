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

import functools
import os
import resource
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import gevent
from gevent.event import Event
from gevent.lock import BoundedSemaphore
from gevent.pool import Pool
from gevent.server import StreamServer

from . import config, log
from .client import Client
from .errors import ConfigError, HandshakeTimeout, TLSError
from .listener import Listener
from .options import DEFAULT_PORT, OPTIONS, Option, table
from .ports import PortSpec, parse_ports, split_duplicates
from .proto import PROTOCOLS
from .resolve import bind_all

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
        """Framework step (in post_configure): set up the log targets named by the options."""

    def daemonize(self) -> None:
        """Framework step (in post_configure): background, setsid and the pid file."""

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
        protocols = {id(spec): self.make_protocol(spec) for spec in self.port_specs}
        if any(spec.proto == "ssl" for spec in self.port_specs):
            from OpenSSL import SSL

            version = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
            self.log(2, f"TLS by pyOpenSSL over {version}")
        for address, sock in bind_all(self.port_specs, self.conf["listen"]):
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
        options = self.ssl_options(spec) if spec.proto == "ssl" else dict(spec.opts)
        return PROTOCOLS[spec.proto](spec, options, self)

    def ssl_options(self, spec: PortSpec) -> dict[str, Any]:
        """The SSL_* options of one port: the per-port dict, else the server-wide option, else a
        method (called with host, port, proto) or attribute of that name on the server."""
        names = {o.name for o in self.options() if o.name.startswith("SSL_")}
        names |= {k for k in spec.opts if k.startswith("SSL_")}
        resolved: dict[str, Any] = {}
        for name in sorted(names):
            if name in spec.opts:
                value = spec.opts[name]
            elif self.conf.get(name) is not None:
                value = self.conf[name]
            else:
                value = getattr(self, name, None)
                if callable(value):
                    value = value(spec.host, spec.port, spec.proto)
            if value is not None:
                resolved[name] = value
        if not ({"SSL_cert_file", "SSL_cert"} & resolved.keys()) and self.conf["self_signed"]:
            resolved["SSL_cert"], resolved["SSL_key"] = self.self_signed_certificate()
        return resolved

    def self_signed_certificate(self) -> tuple[Any, Any]:
        """A self-signed certificate and key, made once per server, fingerprint logged."""
        if self._self_signed is None:
            from .tls.selfsigned import fingerprint_sha256, make_self_signed

            self._self_signed = make_self_signed()
            fingerprint = fingerprint_sha256(self._self_signed[0])
            self.log(2, f"Generated a self-signed certificate, SHA-256 fingerprint {fingerprint}")
        return self._self_signed

    def post_bind_hook(self) -> None:
        """Hook: after every port is bound, with the privileges the server started with."""

    def post_bind(self) -> None:
        """Framework step after binding: drop privileges, then install signal handlers."""
        self.drop_privileges()  # chroot, group, user
        self.register_signals()  # TERM/INT/QUIT/HUP handled in the hub

    def drop_privileges(self) -> None:
        """Framework step (in post_bind): chroot, then become ``group`` and ``user``."""

    def register_signals(self) -> None:
        """Framework step (in post_bind): queue signals and handle them in the hub."""

    def pre_loop_hook(self) -> None:
        """Hook: right before the server starts accepting connections."""

    # == the loop ===============================================================================

    def loop(self) -> None:
        """Accept on every listener (in the hub) until :meth:`stop` is called."""
        self._start_accepting()
        self._looping = True
        try:
            self._stop_requested.wait()
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
        """The life of one connection, in its own greenlet (Net::Server's order)."""
        if not self._negotiate(client):  # post_accept: the TLS handshake
            return
        assert self._slots is not None
        with self._slots:  # at most max_servers sessions; others wait here
            try:
                self.get_client_info(client)  # peer/local addresses, CONNECT log line
                self.post_accept_hook(client)  # user
                client.allowed = bool(self.allow_deny(client) and self.allow_deny_hook(client))
                if client.allowed:
                    self.process_request(client)  # user: the protocol
                else:
                    self.request_denied_hook(client)  # user
                self.post_process_request_hook(client)  # user: before the client is closed
            except Exception as exc:
                self.connection_error(client, exc)
            finally:
                self._guarded(self.post_process_request, client)  # closes the client
            self._guarded(self.post_client_connection_hook, client)  # user: after close

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
        """Framework step: access rules; True allows. (No rules yet: everyone is allowed.)"""
        return True

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
        """Stop accepting, let connections finish (bounded), close listeners. Idempotent."""
        if self._closed.is_set():
            return
        self.pre_server_close_hook()
        self.log(2, "Server closing!")
        timeout = self._stop_timeout
        if timeout is None:
            timeout = self.conf.get("graceful_timeout", 0)
        for listener in self.listeners:
            if listener.stream_server is not None:
                listener.stream_server.close()
        if self._pool is not None:
            self._pool.join(timeout=timeout)
            self._pool.kill(block=True, timeout=1)
        self._release_listeners()
        self._closed.set()

    def _release_listeners(self) -> None:
        for listener in self.listeners:
            listener.protocol.close_listener(listener)

    # == logging ================================================================================

    def log(self, level: int, message: str) -> None:
        """Log ``message`` at Net::Server ``level`` (0-4) if ``log_level`` allows it."""
        if log.should_log(level, self.conf.get("log_level", 2)):
            self._logger.log(log.STDLIB_LEVELS[level], message)


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
