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
import sys
import traceback
from collections.abc import Sequence
from typing import Any

import gevent
from gevent.lock import BoundedSemaphore
from gevent.pool import Pool
from gevent.server import StreamServer

from . import restart
from .access_control import AccessControlMixin
from .binding import BindingMixin
from .client import Client
from .closing import ClosingMixin
from .errors import HandshakeTimeout, TLSError
from .listener import Listener
from .operations import OperationsMixin, raise_open_file_limit
from .option_sources import OptionSourcesMixin
from .ports import PortSpec
from .signal_handling import SignalHandlingMixin
from .tls_setup import TLSSetupMixin

#: The longest line the default echo (``process_request``) reads, its end included.
ECHO_LINE_LIMIT = 64 * 1024


class GServer(OptionSourcesMixin, BindingMixin, TLSSetupMixin, AccessControlMixin,
              OperationsMixin, SignalHandlingMixin, ClosingMixin):
    """A Net::Server style server: subclass it, override hooks, call :meth:`run`.

    Methods for the caller: ``run(**options)`` (Net::Server style: reads the command line, runs
    until stopped), ``serve_forever()`` (the same without reading the command line),
    ``start()`` / ``stop(timeout)`` (embed the server in another program or a test),
    ``reload_tls()`` (new certificates for new connections), ``reopen_logs()`` (after
    logrotate), ``log(level, message)``; attributes ``listeners`` (the bound sockets: find
    kernel-chosen ports there), ``conf`` (the option values) and ``requests`` (a count).

    Hooks for users (no-ops by default): ``configure_hook``, ``post_configure_hook``,
    ``post_bind_hook``, ``pre_loop_hook``, ``pre_server_close_hook``, ``restart_open_hook``
    and ``restart_close_hook`` (HUP re-exec), ``write_to_log_hook`` (the default log sink),
    and per connection ``post_accept_hook``, ``allow_deny_hook``, ``request_denied_hook``,
    ``post_process_request_hook``, ``post_client_connection_hook``. The main one to override is
    ``process_request(client)``; its default is Net::Server's echo.

    Framework steps (override only with ``super()``): ``options``, ``default_values``,
    ``configure``, ``post_configure`` (``initialize_logging``, ``daemonize``), ``pre_bind``,
    ``bind`` (``make_protocol``, ``ssl_options``, ``self_signed_certificate``), ``post_bind``
    (``drop_privileges``, ``register_signals``), ``loop`` (``dispatch_signals`` ->
    ``handle_term``, ``handle_int``, ``handle_quit``, ``handle_hup``), ``server_close``
    (``remove_pid_file``), and per connection ``post_accept``, ``get_client_info``,
    ``allow_deny`` (``access_rules``; ``prepare_access`` compiles them when accepting starts),
    ``post_process_request``, ``connection_error``.

    Class attributes that may be overridden: ``redirect_std_streams``, ``keep_pid_file``.

    The steps live in mixins, one idea each: :mod:`gnetserver.option_sources` (options and
    their precedence), :mod:`gnetserver.binding` (ports to sockets),
    :mod:`gnetserver.tls_setup` (SSL_* options, TLS reload), :mod:`gnetserver.access_control`
    (allow/deny, peer lookups), :mod:`gnetserver.operations` (log, pid file, background,
    privileges), :mod:`gnetserver.signal_handling` (signals, HUP restart),
    :mod:`gnetserver.closing` (``stop``, one close, the bounded drain). This class keeps the
    order in which everything runs, ``server_close``'s steps included.

    Args:
        commandline: the words to read options from in ``run()``; default ``sys.argv[1:]``.
        **options: options with the highest precedence (see :mod:`gnetserver.options`).
    """

    def __init__(self, commandline: Sequence[str] | None = None, **options: Any) -> None:
        self.new_args: dict[str, Any] = options
        self.commandline: list[str] | None = None if commandline is None else list(commandline)
        self.run_args: dict[str, Any] = {}
        self.conf: dict[str, Any] = {}
        self.conf_sources: dict[str, str] = {}  # option name -> the source that set it
        self.port_specs: list[PortSpec] = []
        self.listeners: list[Listener] = []
        self.requests = 0
        self.argv_unused: list[str] = []
        self._pool: Pool | None = None
        self._slots: BoundedSemaphore | None = None
        self._init_closing()  # stop/close state, shared by every caller (gnetserver.closing)

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
        if not self._closing:  # stop() in a start-up hook has closed everything already
            self._start_accepting()
        return self

    def _start_up(self) -> None:
        """Everything before the loop; on failure, whatever was bound is released and a pid
        file this process wrote is removed."""
        try:
            self.configure_hook()  # user: set up state before parsing
            self.configure()  # options from every source, with Net::Server's precedence
            self.post_configure()  # open-file limit, logging, background, pid file
            self.post_configure_hook()  # user: validate custom options
            self.pre_bind()  # port options -> port specs
            self.bind()  # one listening socket per address, TLS contexts built
            self.post_bind_hook()  # user: runs with the privileges the server started with
            self.post_bind()  # drop privileges, prepare signal handlers
            self.pre_loop_hook()  # user: last preparation before serving
        except BaseException:
            self._release_listeners()
            self.remove_pid_file()
            raise

    # == configuration (options, default_values, configure: gnetserver.option_sources) ========

    def configure_hook(self) -> None:
        """Hook: first thing in :meth:`run`, before any option is read. May set attributes."""

    def post_configure(self) -> None:
        """Apply what the options ask for before binding: raise the open-file limit so the
        pools fit, open the log targets, then report (there) the command-line words and the
        Net::Server options that have no effect, then background and write the pid file."""
        needed = 2 * (self.conf["max_servers"] + self.conf["max_handshakes"]) + 64
        raise_open_file_limit(needed)
        self.initialize_logging()  # log_file, syslog, log_function
        if self.argv_unused:
            self.log(2, f"Command-line words not used by the server: {' '.join(self.argv_unused)}")
        self.warn_inert_options()  # Net::Server keys with no effect here: one level-1 line
        self.daemonize()  # background/setsid, pid_file

    def post_configure_hook(self) -> None:
        """Hook: after options are read (``self.conf`` is complete). Validate custom options."""

    # == binding (pre_bind, bind: gnetserver.binding) ===========================================

    def post_bind_hook(self) -> None:
        """Hook: after every port is bound, with the privileges the server started with."""

    def post_bind(self) -> None:
        """Framework step after binding: drop privileges, then install signal handlers."""
        self.drop_privileges()  # chroot, group, user
        self.register_signals()  # TERM/INT/QUIT/HUP handled in the hub

    def pre_loop_hook(self) -> None:
        """Hook: right before the server starts accepting connections."""

    # == the loop ===============================================================================

    def loop(self) -> None:
        """Accept on every listener (in the hub) until :meth:`stop` is called or a signal's
        ``handle_<name>`` ends the loop; queued signals are dispatched here, in this greenlet.
        Returns at once when the server was stopped before (e.g. ``stop()`` in pre_loop_hook)."""
        if self._stop_requested.is_set() or self._closing:
            return  # the listeners may be closed already: nothing to accept on
        queue = self._signal_queue
        if queue is not None:
            queue.install()
        self._start_accepting()
        self._looping, self._looper = True, gevent.getcurrent()
        try:
            wake = [self._stop_requested] + ([queue.event] if queue is not None else [])
            while not self._stop_requested.is_set():
                gevent.wait(wake, count=1)
                if queue is not None:
                    self.dispatch_signals(queue.pop_all())
        finally:
            self._looping, self._looper = False, None

    def _start_accepting(self) -> None:
        """One StreamServer per listener, all spawning into one pool of connection greenlets."""
        self.prepare_access()  # allow/deny rules and lookup mode, compiled once per start
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

        An exception in a hook is logged and ends this connection only. The session slot is
        released before post_process_request, so the lingering close (up to a few seconds
        with a peer that does not close) never holds a ``max_servers`` slot. When :meth:`stop`
        runs out of time it kills the greenlet (GreenletExit): the client is cut at once."""
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
            self._guarded(self.post_process_request, client)  # closes the client (slot free)
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
            if self.log_enabled(3):
                self.log(3, f"TLS handshake timed out from {client.peer_text()}")
            client.abort()
        except (TLSError, OSError) as exc:
            if self.log_enabled(3):
                self.log(3, f"TLS handshake failed from {client.peer_text()}: {exc}")
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
        level 1 with the traceback (formatted only when that level is logged)."""
        if isinstance(exc, (TimeoutError, ConnectionError, TLSError)):
            if self.log_enabled(3):
                self.log(3, f"Connection {client.peer_text()} ended: {type(exc).__name__}: "
                            f"{exc}")
        elif self.log_enabled(1):
            text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            self.log(1, f"Error in connection {client.peer_text()}: {text.rstrip()}")

    def post_accept(self, client: Client) -> None:
        """Framework step, first per connection: count it and let the protocol negotiate (TLS:
        the handshake, bounded by ``timeout_handshake``). Raising drops the connection."""
        self.requests += 1
        client.attach(client.listener.protocol.post_accept(client.sock,
                                                           self.conf["timeout_handshake"]))
        client.settimeout(self.conf["timeout_idle"] or None)

    def get_client_info(self, client: Client) -> None:
        """Framework step: fill ``peeraddr``/``peerport``/``sockaddr``/``sockport``; with
        ``reverse_lookups``, ``peerhost`` (and ``peerhost_rev``) by cooperative, bounded
        lookups; then log the CONNECT line (level 3). On a unix socket, as in Net::Server,
        there is no peer (``peeraddr``/``peerport``/``sockaddr`` stay None), ``sockport`` is the
        socket path and the line reads ``CONNECT UNIX Socket: "<path>"``."""
        if client.proto == "unix":
            client.sockport = str(client.listener.address.sockaddr)
            if self.log_enabled(3):
                self.log(3, f'CONNECT UNIX Socket: "{client.sockport}"')
            return
        local = client.sock.getsockname()
        client.sockaddr, client.sockport = local[0], local[1]
        client.peeraddr, client.peerport = client.address[0], client.address[1]
        self._lookup_peer(client)  # only with reverse_lookups
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
        line answered with ``You said "..."``, ``quit`` closes the connection.

        A line is read with a bound, ``ECHO_LINE_LIMIT`` bytes (64 KiB) with its end, so a peer
        cannot make the server buffer without limit: a longer line is answered with
        ``Line too long`` and ends the connection (logged at level 3)."""
        name, pid = type(self).__name__, os.getpid()
        client.sendall(f'Welcome to "{name}" ({pid})\r\n'.encode())
        while raw := client.readline(ECHO_LINE_LIMIT):
            if len(raw) == ECHO_LINE_LIMIT and not raw.endswith(b"\n"):
                self.log(3, f"Line longer than {ECHO_LINE_LIMIT} bytes from "
                            f"{client.peer_text()}: connection ended")
                client.sendall(f"{name}:{pid}: Line too long\r\n".encode())
                break
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

        The steps, in order, are here; their parts and the rules of one close (later callers
        wait, a close asked for by a connection runs elsewhere) are in :mod:`gnetserver.closing`.

        After a HUP (``restarting``) the listening sockets are handed over instead of closed:
        they are dup'ed for the new image, connections get ``graceful_timeout`` to finish,
        then ``restart_close_hook`` runs and the server re-executes itself (same pid); this
        returns only if that exec failed, and the server then closes as usual.
        """
        if not self._claim_close():  # a close runs or ran (waited for), or was handed on
            return
        try:
            self.pre_server_close_hook()  # user: connections may still be running
            self.log(2, "Server closing!")
            handed = self._stop_accepting()  # on HUP the listening sockets are dup'ed first
            self._drain()  # graceful_timeout or stop(timeout); TERM/INT cut it short
            if self.restarting:
                self.restart_close_hook()  # user: last thing before the exec
                restart.reexec(handed, self.log)  # returns only if the exec failed
            else:
                restart.close_fds(handed)  # a stop/TERM during a HUP's drain: no restart
            self.restarting = False
            self._release_listeners()  # close the listening sockets
            self._unregister_signals()  # the program's own signal handlers apply again
            self.remove_pid_file()  # unless keep_pid_file (HUP re-exec)
            self.close_logs()  # last: syslog reports what it had to drop
        finally:
            self._closed.set()  # also after a failing hook: nobody waits forever
