"""The one table of gnetserver's options.

Rules of this module:

* Every option is declared once, here, as an :class:`Option`: name (Net::Server's, verbatim),
  default, converter, section, whether it is a list, and its documentation. The command line,
  the conf file, ``run()``/constructor arguments, ``--help`` and README.rst's option table are
  all derived from :data:`OPTIONS`; nothing else lists options.
* A converter takes the raw value (a string from the command line or a conf file, or any Python
  value from code) and returns the typed value, raising ``ValueError``/``TypeError`` with a short
  reason. :mod:`gnetserver.config` turns that into a :class:`~gnetserver.errors.ConfigError`
  naming the option and the value.
* ``SSL_*`` options come from :data:`gnetserver.ssl_names.SUPPORTED_SSL_OPTIONS`, which the
  TLS layer (:mod:`gnetserver.tls.context`) reads too, so that the two can never disagree.
* Pure: this module (and every converter it uses) imports neither gevent, OpenSSL nor
  cryptography, so that ``--help``, the conf file parser and :mod:`gnetserver.conf` load no
  network or TLS library (``tests/unit/test_conf.py`` checks it in a fresh interpreter).
* On the command line a bare ``--name`` (no value) means ``1`` only for on/off options
  (:attr:`Option.flag`, automatic for :func:`as_bool` options), as Net::Server's
  ``--setsid``; every other option then needs a value, and a bare one is a ConfigError naming
  it (a bare ``--port`` used to bind port 1).
* An option whose value only code can give (a callable, a certificate or key object:
  :data:`CODE_ONLY_SSL_OPTIONS`) has ``cli=False``: it is left out of the command line and
  ``--help``, and naming it on the command line or in a conf file (which hold text only) is a
  ConfigError saying it is for code only. Constructor and ``run()`` arguments,
  ``default_values()``, port dicts and server methods give it.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from . import access, log_options, proxyproto
from .acme_plan import ACME_SSL_OPTIONS
from .ssl_names import SUPPORTED_SSL_OPTIONS
from .truth import perl_truth


@dataclass(frozen=True)
class Option:
    """One configurable option of a server.

    Attributes:
        name: the option name, as in Net::Server (``port``, ``log_level``, ``SSL_cert_file``).
        default: the value used when no source sets the option.
        convert: turns a raw value into the typed value; raises ValueError/TypeError.
        doc: documentation; the first sentence is the ``--help`` line.
        section: the README/--help section the option belongs to.
        multi: True for list options (``port``, ``host``...): repeated values accumulate.
        cli: False for options only code can give (a callable or an in-memory object): hidden
            from the command line and ``--help``, refused with a "for code only" ConfigError
            on the command line and in a conf file.
        flag: True for on/off options: a bare ``--name`` on the command line (followed by
            another option or by nothing) means ``1``, as Net::Server's ``--setsid``. Options
            converted by :func:`as_bool` are flags whatever this says (see :attr:`bare_flag`).
            Any other option needs a value, and a bare ``--name`` is a ConfigError.
        shown_default: the default as ``--help`` and README show it, when ``default`` is not
            what a user gets: ``port``'s ``[]`` means :data:`DEFAULT_PORT` (pre_bind), and
            ``listen``'s value depends on the machine. None: shown from ``default``
            (:func:`default_text`).
    """

    name: str
    default: Any
    convert: Callable[[Any], Any]
    doc: str
    section: str = "Server"
    multi: bool = False
    cli: bool = True
    flag: bool = False
    shown_default: str | None = None

    @property
    def bare_flag(self) -> bool:
        """True when a bare ``--name`` on the command line means ``1`` (an on/off option:
        :attr:`flag`, or converted by :func:`as_bool`). Read by the command-line parser."""
        return self.flag or self.convert is as_bool


# -- converters --------------------------------------------------------------------------------


def as_str(value: Any) -> str:
    """Any scalar as text."""
    if isinstance(value, (list, tuple, dict)):
        raise TypeError("expects one value, not a list")
    return str(value)


def as_optional_str(value: Any) -> str | None:
    """Text, or None for an empty value."""
    return None if value is None or value == "" else as_str(value)


def as_bool(value: Any) -> bool:
    """Perl-style truth: 1/0, yes/no, true/false, on/off (case-insensitive)."""
    return perl_truth(value if isinstance(value, (bool, int)) else as_str(value))


def int_in(low: int, high: int | None = None) -> Callable[[Any], int]:
    """A converter to an integer in [low, high]."""

    def convert(value: Any) -> int:
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ValueError("expected an integer")
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise ValueError("expected an integer") from None
        if number < low or (high is not None and number > high):
            if high is None:
                raise ValueError(f"expected an integer of at least {low}")
            raise ValueError(f"expected an integer from {low} to {high}")
        return number

    return convert


def log_line_format(value: Any) -> str:
    """``log_format``: ``netserver`` or ``json`` (case-insensitive)."""
    text = as_str(value).strip().lower()
    if text not in LOG_LINE_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_LINE_FORMATS)}")
    return text


#: The values of ``log_format``.
LOG_LINE_FORMATS = ("netserver", "json")


def metrics_port(value: Any) -> Any:
    """``metrics_port``: a port spec (text, number or dict, as ``port`` takes; parsed by
    :func:`gnetserver.listen.plan_metrics_port`), or None/empty for none."""
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int, dict)):
        raise ValueError("expected a port spec: `9100`, `127.0.0.1:9100`, "
                         "`[::1]:9100/ssl` or a dict")
    return value


def expiry_days(value: Any) -> float:
    """``SSL_cert_expiry_warning``: days, a number of at least 0 (0: no warning)."""
    if isinstance(value, bool):
        raise ValueError("expected a number of days")
    days = float(value)
    if not days >= 0 or days == float("inf"):
        raise ValueError("expected a number of days of at least 0")
    return days


def log_level(value: Any) -> int:
    """``log_level``: an integer of at least 0; above 4 it means 4 (Net::Server clamps it the
    same way: level 4, debug, is the most there is)."""
    return min(int_in(0)(value), 4)


def seconds(value: Any) -> float:
    """A duration in seconds, > 0."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError("expected a number of seconds") from None
    if not number > 0:
        raise ValueError("expected a number of seconds greater than 0")
    return number


def seconds_or_zero(value: Any) -> float:
    """A duration in seconds; 0 means no limit."""
    return 0.0 if str(value).strip() in ("0", "0.0") else seconds(value)


def file_mode(value: Any) -> int:
    """A file mode from 0 to 0777: text is octal (``0660``, ``660``, ``0o660``); an int from
    code is taken as it is (write ``0o660``)."""
    if isinstance(value, bool):
        raise TypeError("expected an octal mode such as 0660")
    if isinstance(value, int):
        number = value
    else:
        text = as_str(value).strip().lower().removeprefix("0o")
        if not text or any(char not in "01234567" for char in text):
            raise ValueError("expected an octal mode such as 0660")
        number = int(text, 8)
    if not 0 <= number <= 0o777:
        raise ValueError("expected a mode from 0 to 0777 (permission bits only)")
    return number


def group_names(value: Any) -> str | None:
    """The ``group`` option: text, or a list of names/gids joined by spaces; None if empty.
    (The names are resolved at start, by :func:`gnetserver.privileges.resolve`.)"""
    if isinstance(value, (list, tuple)):
        value = " ".join(str(item) for item in value)
    text = "" if value is None else str(value).strip()
    return text or None


def passthrough(value: Any) -> Any:
    """Values checked later, by the code that understands them (ports, SSL_* objects)."""
    return value


def optional_callable(value: Any) -> Callable[..., Any] | None:
    """A callable given by code, or None for an empty value."""
    if value is None or value == "":
        return None
    if not callable(value):
        raise TypeError("expected a callable (code only)")
    return value  # type: ignore[no-any-return]


def as_list(value: Any) -> list[Any]:
    """List options: a scalar becomes a one-element list."""
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


# -- the table ---------------------------------------------------------------------------------

DEFAULT_PORT = 20203

#: The mode of a unix socket file unless ``unix_mode`` says otherwise: the owner and the group
#: (``user``/``group``, to whom the file is handed) may connect, nobody else.
DEFAULT_UNIX_MODE = 0o660

_SERVER: Sequence[Option] = (
    Option("conf_file", None, as_optional_str,
           "Path of a Net::Server style conf file (`key value` lines, `#` comments), read with "
           "lower precedence than the command line and run() arguments.", "Server"),
    Option("port", [], passthrough,
           "Port spec(s) to listen on: `8443`, `host:port/proto`, `[::1]:443/ssl`, "
           "`5353/udp`, `/path|unix`, `/path|unixdgram`, or a dict from code. Repeat for "
           "several ports.",
           "Server Socket", multi=True, shown_default=str(DEFAULT_PORT)),
    Option("host", ["*"], passthrough,
           "Default bind host for port specs without one (`*` = all interfaces); a list aligns "
           "with `port`, the last element reused.", "Server Socket", multi=True),
    Option("proto", ["tcp"], passthrough,
           "Default protocol for port specs without one: tcp, ssl, ssleay, unix, udp or "
           "unixdgram; a list aligns with `port`.", "Server Socket", multi=True),
    Option("ipv", ["*"], passthrough,
           "IP version(s): 4, 6, `*` (one dual-stack socket where the OS allows) or 46 (two "
           "sockets); a list aligns with `port`. When no source sets it, the environment "
           "variable IPV gives the default, as in Net::Server (then `*`).", "Server Socket",
           multi=True),
    Option("listen", socket.SOMAXCONN, int_in(1),
           "Listen backlog of each socket (a per-port dict may override it).", "Server Socket",
           shown_default="SOMAXCONN"),
    Option("unix_mode", DEFAULT_UNIX_MODE, file_mode,
           "Permissions of each unix socket file, in octal, set right after it is bound "
           "whatever the umask (connecting needs write permission): by default its owner and "
           "group only. A per-port dict may override it (`unix_mode` key).", "Server Socket",
           shown_default="0660"),
)

#: Net::Server's ``udp_recv_len`` is 4096 (longer datagrams are cut); gnetserver reads any
#: datagram whole by default (65535 is the most an IPv4 or IPv6 UDP datagram carries).
DEFAULT_UDP_RECV_LEN = 65536

#: The ``recv`` flags ``udp_recv_flags`` refuses, with why: each would break the receive loop.
_BAD_RECV_FLAGS = {
    "MSG_PEEK": "the datagram would stay queued and be read again forever",
    "MSG_TRUNC": "recv would report lengths longer than the buffer it fills",
    "MSG_ERRQUEUE": "it reads the error queue, not datagrams",
}


def recv_flags(value: Any) -> int:
    """``udp_recv_flags``: the flags of the datagram ``recvfrom`` (a number, as Net::Server's;
    ``0x40`` and ``0o100`` spellings too), without MSG_PEEK, MSG_TRUNC or MSG_ERRQUEUE."""
    if isinstance(value, bool):
        raise TypeError("expected a number of recv flags, e.g. 0")
    if isinstance(value, int):
        number = value
    else:
        try:
            number = int(as_str(value).strip(), 0)
        except ValueError:
            raise ValueError("expected a number of recv flags, e.g. 0") from None
    if number < 0:
        raise ValueError("expected a number of recv flags of at least 0")
    for name, why in _BAD_RECV_FLAGS.items():
        flag = getattr(socket, name, 0)
        if flag and number & flag:
            raise ValueError(f"{name} ({flag:#x}) is refused: {why}")
    return number


_DATAGRAMS: Sequence[Option] = (
    Option("udp_recv_len", DEFAULT_UDP_RECV_LEN, int_in(1, 1 << 20),
           "Datagram ports (udp, unixdgram): the largest datagram read, in bytes; a longer "
           "one is cut to this length (logged at level 3). Net::Server's default is 4096; "
           "gnetserver's reads every UDP datagram whole (set 4096 for Net::Server's "
           "behaviour). A per-port dict may override it (`udp_recv_len` key).", "Datagrams"),
    Option("udp_recv_flags", 0, recv_flags,
           "Datagram ports: the flags of each recvfrom, a number (see recv(2)); MSG_PEEK, "
           "MSG_TRUNC and MSG_ERRQUEUE are refused. A per-port dict may override it.",
           "Datagrams"),
    Option("udp_broadcast", False, as_bool,
           "udp ports: set SO_BROADCAST, so that handlers may answer to a broadcast address. "
           "A per-port dict may override it.", "Datagrams"),
)

_LIMITS: Sequence[Option] = (
    Option("max_servers", 256, int_in(1),
           "Maximum number of established sessions served at once, across all ports; further "
           "connections wait (they are not refused) until a slot frees, for at most "
           "timeout_session_wait. Under PreFork, per worker: the server serves up to "
           "workers x max_servers sessions (each worker is one hub with its own pool).",
           "Limits"),
    Option("max_handshakes", 1000, int_in(1),
           "Maximum number of pending connections (in their TLS handshake, or waiting for a "
           "session slot) at once, on top of max_servers. When all are taken, a new "
           "connection evicts the oldest one still in its handshake (logged at level 3), so "
           "silent sockets cannot lock real clients out; when every pending connection waits "
           "for a session, the kernel backlog holds new connections.", "Limits"),
    Option("timeout_handshake", 10.0, seconds,
           "Seconds a client gets to complete its TLS handshake before it is dropped.", "Limits"),
    Option("timeout_session_wait", 30.0, seconds,
           "Seconds a connection that finished its handshake may wait for a session slot "
           "(max_servers busy) before it is closed (logged at level 3).", "Limits"),
    Option("timeout_idle", 60.0, seconds_or_zero,
           "Seconds a read or a write on an established connection may wait for the peer "
           "(data to read, room to write) before the connection is closed (0 = no limit).",
           "Limits"),
    Option("graceful_timeout", 5.0, seconds_or_zero,
           "Seconds stop() lets in-flight connections finish before they are cut.", "Limits"),
    Option("max_line_length", 64 * 1024, int_in(1),
           "Longest line, in bytes with its end, that client.readline(), iteration over the "
           "client and readline/iteration on client.makefile() read when no limit is given; "
           "a longer one raises LineTooLong (logged at level 3, the connection ends), so a "
           "peer cannot make the server buffer without bound.", "Limits"),
)

_LOGGING: Sequence[Option] = (
    Option("log_level", 2, log_level,
           "Net::Server log level: 0 nothing, 1 errors, 2 notices, 3 per-connection info, "
           "4 debug. A value above 4 means 4, as in Net::Server.", "Logging"),
    Option("log_file", None, as_optional_str,
           "Where the log goes: a file path (appended to, created mode 0640, reopened by "
           "reopen_logs() for logrotate; stderr is pointed at it too), or `Sys::Syslog`. "
           "Default: stderr, through the stdlib logger `gnetserver`. The file is opened as "
           "the starting user (root) and handed to user by its descriptor; a symbolic link in "
           "its path (a directory or the file's own name) is followed only when owned by root "
           "or by the user the server runs as when it opens the file (root at start: a link "
           "planted by the service user stops the start; user for reopen_logs() after the "
           "switch); the file's own name may be such a link only to what is not a regular "
           "file (a tty or a pipe: `/dev/stdout` and `/dev/stderr` work; they are neither "
           "handed to user nor reopened); a file with more than one hard link is refused. "
           "Under systemd, whose stdout is a socket that cannot be opened by name, leave "
           "log_file unset: the log goes to stderr.", "Logging"),
    Option("log_function", None, log_options.log_function,
           "A callable (level, msg), or the name of a method of the server, that receives every "
           "log message instead of the log_file/stderr sink (write_to_log_hook), escaped as "
           "every sink gets it (one line; characters outside printable ASCII, newlines "
           "included, as `%XX`, and `%` as `%25`; Net::Server passes it raw). The command "
           "line and conf files give a method name; a callable comes from code. A name must "
           "be a public method your server class adds (not one gnetserver defines, such as "
           "handle_term or log, nor one starting with `_`) that takes (level, msg); anything "
           "else stops the start.", "Logging"),
    Option("log_format", "netserver", log_line_format,
           "How each log line is written to log_file, syslog or stderr: `netserver` (Net::"
           "Server's `YYYY/MM/DD-HH:MM:SS message`) or `json` (one JSON object per line, for "
           "log pipelines: `time` (UTC, ISO 8601), `level` (0-4), `pid`, `message` (escaped "
           "as every sink gets it), and in a connection's greenlet its facts: `peer_addr`, "
           "`peer_port`, `port`, `proto`, and on TLS ports once known `tls_version`, "
           "`cipher`, `sni`). log_function and an overridden write_to_log_hook get the "
           "message alone, as always.", "Logging"),
    Option("syslog_logsock", "native", log_options.syslog_logsock,
           "With log_file Sys::Syslog: `native`/`unix` (the local syslog socket, the default: "
           "/dev/log, else /var/run/syslog or /var/run/log), "
           "`stream`, `tcp`/`inet` or `udp` (localhost:514), or the absolute path of a unix "
           "socket. Sending never makes the server wait: messages syslog has no room for are "
           "dropped, counted, and the count logged (level 1) once syslog takes messages again, "
           "or at close.", "Logging"),
    Option("syslog_ident", "net_server", as_str,
           "With log_file Sys::Syslog: the ident put before each message.", "Logging"),
    Option("syslog_logopt", "pid,nofatal", log_options.syslog_logopt,
           "With log_file Sys::Syslog: openlog options, comma separated: `pid` (add the pid to "
           "the ident), `nofatal` (start even when syslog is unreachable), `cons` (write to "
           "/dev/console when sending fails), `ndelay` and `nowait` (accepted; the socket is "
           "always opened at start).", "Logging"),
    Option("syslog_facility", "daemon", log_options.syslog_facility,
           "With log_file Sys::Syslog: the facility name (daemon, user, local0-local7...) or "
           "number.", "Logging"),
)

#: Section of the PreFork personality's options (``workers``, ``max_requests``, and
#: ``server_type`` which chooses it): the first two are reported at start when the
#: personality is not PreFork (GServer.warn_inert_options).
PREFORK = "PreFork"


def server_type_name(value: Any) -> str:
    """One ``server_type`` value: a personality name (Single, PreFork; other Net::Server
    names are accepted and reported at start)."""
    text = as_str(value).strip()
    if not text:
        raise ValueError("expected a personality name such as Single or PreFork")
    return text


def _cpu_count() -> int:
    """The number of CPUs (``workers``' default); 1 when the OS does not say."""
    return os.cpu_count() or 1


_PREFORK: Sequence[Option] = (
    Option("server_type", [], server_type_name,
           "The personality: `Single` (the default: one process, a greenlet per connection) "
           "or `PreFork` (a parent binds every port, builds the TLS contexts, then forks "
           "`workers` worker processes, each a Single over the inherited listening sockets; "
           "the parent supervises them). Several values are Net::Server's MultiType order: "
           "the first one gnetserver has is used, the others are reported at start. PreFork "
           "needs run() in the main thread; started with start() or in another thread it "
           "serves as Single (said at level 1). `INET` is Net::Server::INET: serve the one "
           "connection inetd (or socat, or a systemd `Accept=yes` socket unit) gave on "
           "stdin/stdout, with the protocol of the first port spec (`proto ssl` for TLS), "
           "then exit; nothing is bound.", PREFORK, multi=True),
    Option("workers", _cpu_count(), int_in(1),
           "PreFork: the number of worker processes (each one gevent hub, so one core). "
           "TTIN adds one, TTOU removes one. Net::Server's min_servers, min_spare_servers "
           "and max_spare_servers do not apply: each worker serves many connections at once. "
           "Under PreFork, max_servers and max_handshakes are per worker.", PREFORK,
           shown_default="the number of CPUs"),
    Option("max_requests", 0, int_in(0),
           "PreFork: connections a worker accepts before it stops accepting, finishes its "
           "sessions and exits, replaced by a new one (0: no limit). Net::Server's option "
           "(its default 1000 applies only when a conf file gives it).", PREFORK),
)

#: Section of the aids for programs ported from Perl's Net::Server.
PORTING = "Porting aids"

_PORTING: Sequence[Option] = (
    Option("tie_client_stdout", False, as_bool,
           "Inside a connection's greenlet, `print()`, `sys.stdout.write`, `input()` and "
           "`sys.stdin.readline` talk to that client, as Net::Server's tied STDIN/STDOUT do; "
           "every other greenlet, thread and the server's own log keep the real streams "
           "(sys.stdout/sys.stdin become dispatching proxies while the server runs). The "
           "binding spans post_accept_hook to post_process_request_hook; greenlets a handler "
           "spawns are not bound. Text is UTF-8.", PORTING),
    Option("tied_stdout_callback", None, optional_callable,
           "With tie_client_stdout: called as `callback(client, method, *args)` instead of "
           "writing to the client (`method`: `write`, `writelines` or `flush`), as "
           "Net::Server's; its return value is the call's. Code only.", PORTING, cli=False),
    Option("tied_stdin_callback", None, optional_callable,
           "With tie_client_stdout: called as `callback(client, method, *args)` instead of "
           "reading from the client (`method`: `readline`, `read` or `readlines`), as "
           "Net::Server's; its return value is the call's. Code only.", PORTING, cli=False),
    Option("check_for_dequeue", 0.0, seconds_or_zero,
           "Seconds between runs of the `run_dequeue` hook (0: never), as Net::Server's "
           "Fork/PreFork: a greenlet of the server's process (under PreFork, the parent's) "
           "calls it every interval; a run never overlaps the next (a late one skips the "
           "ticks it missed), an exception is logged (level 1) and the schedule kept. "
           "Net::Server's `max_dequeue` has no meaning: there is only ever one run.",
           PORTING),
    Option("monkey_patch", False, as_bool,
           "Apply `gevent.monkey.patch_all()` at start (before the conf is used), so blocking "
           "libraries (time.sleep, socket, DNS, threading) cooperate; a no-op when the process "
           "is patched already. Refused (ConfigError) where patching would be unsafe: not in "
           "the main thread, other threads running, or modules already holding the stdlib "
           "ssl classes: then patch at the very top of the program (`from gevent import "
           "monkey; monkey.patch_all()`) or run `gnetserver --monkey-patch`. "
           "See also run_blocking().", PORTING),
    Option("max_blocking_time", 0.0, seconds_or_zero,
           "Seconds the gevent hub may run one greenlet without a switch before it is "
           "reported (0: off, the default): a handler that calls blocking code without "
           "monkey patching (time.sleep, a stdlib socket) or computes for long stops every "
           "connection of its process meanwhile. On, gevent's monitor thread watches the hub "
           "of each serving process (Single, each PreFork worker) and each blocking episode "
           "gives one level-1 log line, written when the hub runs again, naming the code that "
           "blocked (its innermost frames) and how long at least; the server carries on. "
           "Costs a trace call per greenlet switch (so off by default); try 0.5 while "
           "porting blocking code. While the server serves, sets gevent.config.monitor_thread "
           "and max_blocking_time (process-wide) and turns gevent's own blocking reports on "
           "stderr off; put back as they were when it stops.", PORTING),
)

_TLS: Sequence[Option] = (
    Option("self_signed", False, as_bool,
           "When an ssl port has no certificate, generate a self-signed one in memory at start "
           "(for demos and tests; its SHA-256 fingerprint is logged).", "TLS"),
)

#: Section of the monitoring options (README's "Monitoring" says more).
MONITORING = "Monitoring"

_MONITORING: Sequence[Option] = (
    Option("metrics_port", None, metrics_port,
           "Serve Prometheus metrics (`GET /metrics`, plain HTTP unless the spec says `/ssl`) "
           "on this port spec: `9100` is `127.0.0.1:9100` (loopback unless a host is given); "
           "tcp, ssl or ssleay. TLS options, the access rules and proxy_protocol apply as to "
           "any port. Served by the same hub (under PreFork by any worker, the figures of "
           "every process merged). Off by default.", MONITORING),
    Option("SSL_cert_expiry_warning", 14.0, expiry_days,
           "Days: a served certificate that expires within them is said at level 1 and "
           "flagged by the gnetserver_certificate_expiring metric; checked at start, on "
           "reload and daily. 0: no check. Server-wide (not a per-port key).", MONITORING),
)

_ACCESS: Sequence[Option] = (
    Option("allow", [], access.regex_rule,
           "Regular expression a peer must fully match to be let in, matched case-insensitively. "
           "A regex that writes a `:`, or no letter at all, is an address rule, matched against "
           "the peer address only (an IPv4-mapped `::ffff:a.b.c.d` as `a.b.c.d`): `10\\..*`, "
           "`::1`, `fe80:.*`, `.*`. A regex that writes a letter and no `:` is a host-name "
           "rule, matched against the host name only (lower case, trailing dot dropped; needs "
           "reverse_lookups, and double_reverse_lookups to be trusted: a level-1 warning says "
           "so): `.*\\.example\\.org`. Negated characters (`[^:]`) and lookarounds (`(?!:)`) "
           "do not count. Each `|` alternative is classified on its own, and a regex mixing "
           "address and name alternatives (`10\\..*|.*\\.lan`) is refused: write two rules. "
           "Write IPv6 rules with a colon: a rule whose only letters are hex digits (`fe80.*`) "
           "is a name rule, and a level-1 warning at start says so. Repeat for several. Any "
           "allow/deny/cidr rule makes the default deny; deny rules win.", "Access", multi=True),
    Option("deny", [], access.regex_rule,
           "Regular expression (full match, case-insensitive) that refuses the peer: an "
           "address rule or a host-name rule, classified as for allow. Repeat for several; a "
           "match wins over every allow rule. On TLS ports (ssl and ssleay) a peer that the "
           "address rules alone deny is closed before the TLS handshake and no per-connection "
           "hook runs for it (not even request_denied_hook). Host-name rules and "
           "allow_deny_hook run after the handshake; a peer they deny, or any denied peer of a "
           "tcp port, gets request_denied_hook instead of process_request.", "Access",
           multi=True),
    Option("cidr_allow", [], access.cidr_rule,
           "CIDR block of peers let in: `10.0.0.0/8`, `::1/128`, an address or a range `a-b` "
           "(several per value with commas). Repeat for several.", "Access", multi=True),
    Option("cidr_deny", [], access.cidr_rule,
           "CIDR block of peers refused (same forms as cidr_allow). Repeat for several; a match "
           "wins over every allow rule.", "Access", multi=True),
    Option("reverse_lookups", False, access.reverse_lookups_setting,
           "Look up the peer's host name (client.peerhost) so that allow/deny host-name rules "
           "can match it (the peer's own DNS answers: see double_reverse_lookups). "
           "Lookups are cooperative and bounded (5 s); `double` also turns on "
           "double_reverse_lookups.", "Access", flag=True),
    Option("double_reverse_lookups", False, access.double_reverse_setting,
           "Deny peers whose host name does not resolve back to their address (implies "
           "reverse_lookups). Flags: `detail` logs the addresses of a mismatch, `autofail` "
           "denies even a match, `debug` logs matches.", "Access", flag=True),
)

_PROXY: Sequence[Option] = (
    Option("proxy_protocol", None, proxyproto.proxy_mode,
           "Read a PROXY protocol header (HAProxy's `send-proxy`, `send-proxy-v2`) first on "
           "every tcp, ssl and ssleay port: `v1`, `v2` or `any` (off by default; a per-port "
           "dict key of the same name overrides it, `off` included). The header is read "
           "before anything else, TLS included, only from peers in proxy_protocol_from; a "
           "connection without a valid one is closed (level-3 log line). The client's "
           "peeraddr/peerport/sockaddr/sockport, the access rules and reverse lookups then "
           "use the addresses of the header; client.proxy_peer is the balancer. A LOCAL (v2) "
           "or UNKNOWN (v1) header (a health check) keeps the real addresses.",
           "PROXY protocol", shown_default="off"),
    Option("proxy_protocol_from", [], access.cidr_rule,
           "CIDR block(s) of the balancers allowed to send a PROXY header (same forms as "
           "cidr_allow; a per-port dict key of the same name overrides it). Required when "
           "proxy_protocol is on: a connection from any other peer is closed before a byte is "
           "read (level-3 log line), so nobody can claim another client's address.",
           "PROXY protocol", multi=True),
    Option("proxy_protocol_local", "serve", proxyproto.local_policy,
           "What a LOCAL (v2) or UNKNOWN (v1) PROXY header gets: `serve` (the balancer's own "
           "connection, a health check: served with the real addresses) or `refuse` (closed "
           "with a level-3 log line, no hook run: a port where a PROXY command is required, "
           "every connection being a relayed client's).", "PROXY protocol"),
    Option("timeout_proxy_header", 3.0, seconds,
           "Seconds a connection on a proxy_protocol port gets to send its whole PROXY header "
           "(the specification suggests at least 3: one TCP retransmit).", "PROXY protocol"),
)

_PROCESS: Sequence[Option] = (
    Option("pid_file", None, as_optional_str,
           "File to write the server's pid to. A file holding the pid of a running process "
           "stops the start; a stale one is overwritten with a warning; a symbolic link or a "
           "file that is not a regular file is refused, and a symbolic link on its path (a "
           "directory) is followed only when owned by root or by the user the server runs as "
           "(e.g. /var/run -> /run), so a service user owning a directory on the path cannot "
           "swap a subdirectory for a link. "
           "Removed at exit, kept across a HUP restart. It is not handed to user: started as "
           "root, it stays owned by root, so "
           "the service user cannot point root's `kill $(cat pidfile)` at another process "
           "(keep it in a directory only root may write; the server then cannot remove it "
           "at exit once it runs as user, and the next start overwrites the stale file).",
           "Process"),
    Option("background", False, as_bool,
           "Fork into the background before binding (the parent exits 0).", "Process"),
    Option("setsid", False, as_bool,
           "Like background, then leave the terminal's session (setsid) and point stdin, stdout "
           "and stderr at /dev/null (stderr at log_file when there is one).", "Process"),
    Option("user", None, as_optional_str,
           "User name or uid to run as after binding (ports below 1024 are bound first); the "
           "log file and unix socket files are handed to it first. Only a server started as "
           "root can switch: on any other start, a user (or group) other than the current "
           "one stops the start (Net::Server logs and goes on as the starting user). "
           "Default: stay who started the server.", "Process"),
    Option("group", None, group_names,
           "Group name(s) or gid(s) to run as after binding, separated by spaces or commas; the "
           "first is the primary group. Default: the primary group of user, when user is given. "
           "Required with a bare numeric user that has no passwd entry (it has no primary "
           "group, and root's gid 0 must not stay behind it).", "Process"),
    Option("chroot", None, as_optional_str,
           "Directory to chroot into after binding, before switching user. Requires user (a "
           "process still running as root can leave a chroot), unless chroot_as_root is set.",
           "Process"),
    Option("chroot_as_root", False, as_bool,
           "Accept chroot without user: the server then runs as root (uid 0) inside the "
           "chroot, which root can leave; logged at level 1 at each start.", "Process"),
)

#: SSL_* options whose values are Python objects (callables, certificate and key objects or
#: PEM bytes) that a command line or conf file cannot give: ``cli=False``. PEM text of a key on
#: a command line would also show in ``ps``; SSL_cert_file/SSL_key_file take paths instead.
CODE_ONLY_SSL_OPTIONS = frozenset({
    "SSL_cert", "SSL_key", "SSL_passwd_cb", "SSL_verify_callback", "SSL_ocsp_staple_callback",
    "SSL_create_ctx_callback", "SSL_client_ca", "SSL_error_trap",
})

#: SSL_* options that are on/off (0 or 1): a bare ``--name`` on the command line means 1.
FLAG_SSL_OPTIONS = frozenset({"SSL_honor_cipher_order", "SSL_check_crl"})

_SSL: Sequence[Option] = tuple(
    Option(name, None, passthrough, doc, "TLS", cli=name not in CODE_ONLY_SSL_OPTIONS,
           flag=name in FLAG_SSL_OPTIONS)
    for name, doc in sorted({**SUPPORTED_SSL_OPTIONS, **ACME_SSL_OPTIONS}.items())
)

#: Section of the options Net::Server conf files carry for other personalities or protocols:
#: accepted from every source so such files work unchanged, without effect, and named in one
#: level-1 log line at start (GServer.warn_inert_options). Subclasses may add theirs.
NETSERVER_COMPAT = "Net::Server compatibility"

_ONE_PROCESS = ("gnetserver serves every connection in a greenlet of one process: there are no "
                "child processes.")
_FIXED_WORKERS = ("gnetserver's PreFork keeps a fixed set of `workers` processes, each serving "
                  "many connections at once (no idle children to count); TTIN/TTOU add or "
                  "remove one.")
_ONE_ACCEPTOR = ("PreFork workers do not take turns: each waits on the shared listening sockets "
                 "in its own hub (a blocking lock would stall all of a worker's connections).")
_SUPERVISED = "The PreFork parent reaps its workers when SIGCHLD comes (and each second)."
_NO_DEQUEUE = "check_for_dequeue runs run_dequeue in a greenlet, one run at a time."
_NO_STDIO = ("One process serves many connections at once, so the process's standard streams "
             "are never the client's: handlers use the client object, or tie_client_stdout.")


def _compat(name: str, meaning: str, why: str, multi: bool = False, flag: bool = False) -> Option:
    """An option accepted for Net::Server compatibility; ``meaning`` says what it did there;
    ``flag``: an on/off option there (a bare ``--name`` means 1)."""
    return Option(name, [] if multi else None, as_str,
                  f"Net::Server {meaning}; no effect here. {why}", NETSERVER_COMPAT, multi,
                  flag=flag)


_NETSERVER_COMPAT: Sequence[Option] = (
    _compat("min_servers", "PreFork: child processes always kept running", _FIXED_WORKERS),
    _compat("min_spare_servers", "PreFork: idle children kept waiting for connections",
            _FIXED_WORKERS),
    _compat("max_spare_servers", "PreFork: idle children above which some are stopped",
            _FIXED_WORKERS),
    _compat("serialize", "PreFork/PreForkSimple: how children take turns to accept (flock, "
            "semaphore, pipe, none)", _ONE_ACCEPTOR),
    _compat("lock_file", "PreFork/PreForkSimple: the file of serialize flock",
            f"No file is created. {_ONE_ACCEPTOR}"),
    _compat("check_for_dead", "Fork/PreFork: seconds between checks that children are alive",
            _SUPERVISED),
    _compat("check_for_waiting", "PreFork: seconds the parent waits for news from its children",
            _SUPERVISED),
    _compat("check_for_spawn", "PreFork: seconds between recounts of the children",
            _FIXED_WORKERS),
    _compat("min_child_ttl", "PreFork: seconds after a spawn before idle children may be "
            "stopped", _FIXED_WORKERS),
    _compat("child_communication", "PreFork: a socketpair between the parent and each child",
            "Workers do not talk to the parent; hooks in a worker see that worker's server "
            "object only.", flag=True),
    _compat("max_dequeue", "Fork/PreFork: the most children running the dequeue hook at once",
            _NO_DEQUEUE),
    _compat("sig_passthrough", "Fork/PreFork: signals the parent forwards to its children",
            _ONE_PROCESS, multi=True),
    _compat("leave_children_open_on_hup", "base: on HUP, let forked children finish "
            "instead of stopping them", f"{_ONE_PROCESS} On HUP, connections in flight get "
            "graceful_timeout to finish.", flag=True),
    _compat("no_close_by_child", "base: forbid a forked child from shutting the whole server down",
            _ONE_PROCESS, flag=True),
    _compat("no_client_stdout", "base: do not connect STDIN/STDOUT to the client", _NO_STDIO,
            flag=True),
    _compat("ipv6_package", "base: the Perl module for IPv6 sockets (IO::Socket::IP or "
            "IO::Socket::INET6)", "Python's socket module does IPv6 itself; see ipv."),
    _compat("unix_type", "Proto::UNIX: legacy server-wide socket type (SOCK_STREAM or "
            "SOCK_DGRAM)", "Name the socket type in the port spec instead: `/path|unix` (stream), "
            "`/path|unixdgram` (datagram), or a dict's `unix_type` key."),
    _compat("unix_path", "Proto::UNIX: legacy server-wide socket path",
            "Name the socket in the port spec instead: `/path|unix`."),
)

#: The section of the HTTP personality's options (:class:`gnetserver.http.GHTTPServer`).
HTTP = "HTTP (GHTTPServer)"

#: Net::Server::HTTP's default access log format: NCSA combined.
COMBINED_LOG_FORMAT = '%h %l %u %t "%r" %>s %b "%{Referer}i" "%{User-Agent}i"'


def http_route(value: Any) -> tuple[tuple[str, Any], ...]:
    """One item of Net::Server::HTTP's ``app`` option, as ``(prefix, target)`` pairs: text
    ``"/path target"``, ``"/path=target"`` or a bare ``"/path"`` (the path is the target too);
    a ``(path, target)`` pair; a dict of them; or a callable alone (mounted at ``/``). A target
    is a callable or the name of a method of the server (checked at start)."""
    if callable(value):
        return (("/", value),)
    if isinstance(value, dict):
        return tuple(pair for key, target in value.items() for pair in http_route((key, target)))
    if isinstance(value, (list, tuple)):
        if len(value) != 2 or not isinstance(value[0], str):
            raise ValueError("expected a (path, target) pair")
        path, target = value
    else:
        text = as_str(value).strip()
        path, _, target = text.replace("=", " ", 1).partition(" ")
        target = target.strip() or path
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("the path of an app route must start with /")
    if not (callable(target) or isinstance(target, str) and target):
        raise TypeError("the target of an app route is a callable or a method name")
    return ((path, target),)


def wsgi_app_spec(value: Any) -> Any:
    """``wsgi_app``: a WSGI callable, or ``package.module:attribute`` naming one (imported at
    start, so that --help never imports an application); None or empty for none."""
    if value is None or value == "" or callable(value):
        return value or None
    text = as_str(value).strip()
    module, _, attribute = text.partition(":")
    if not module or not attribute:
        raise ValueError("expected a callable or 'package.module:attribute'")
    return text


def log_format(value: Any) -> str:
    """An access log format: Apache's ``%`` directives (checked when the server starts)."""
    text = as_str(value)
    if not text:
        raise ValueError("the access log format is empty")
    return text


#: The options of the HTTP personality (GHTTPServer.options() adds them to the base table).
HTTP_OPTIONS: tuple[Option, ...] = (
    Option("app", [], http_route,
           "Net::Server::HTTP's dispatch: `/path target` (or `/path=target`) sends requests "
           "whose PATH_INFO starts with `/path` to `target`, a method of the server (or, from "
           "code, a callable) called with the client; the prefix moves to SCRIPT_NAME. Tried "
           "in order; the first route also serves `/` when no route is `/`. Used by the "
           "default process_http_request; no match is a 404.", HTTP, multi=True),
    Option("wsgi_app", None, wsgi_app_spec,
           "A WSGI application to serve (PEP 3333): `package.module:attribute`, or the "
           "callable itself from code; it replaces process_http_request. The gnetserver "
           "command's `--wsgi` sets it.", HTTP),
    Option("timeout_header", 15.0, seconds,
           "Seconds a client has to send a request's line and headers, from its first byte "
           "(from the connection's start for the first request); later it is answered 408 "
           "and closed (logged at level 3). Between keep-alive requests the connection may "
           "wait timeout_idle for the next one's first byte.", HTTP),
    Option("max_header_size", 100_000, int_in(256),
           "Largest request line plus headers, in bytes; larger is answered 431 (a request "
           "target alone that large, 414) and the connection closed.", HTTP),
    Option("max_request_size", 10 * 1024 * 1024, int_in(0),
           "Largest request body, in bytes (Content-Length, or chunks as they come); larger "
           "is answered 413 (before any `100 Continue`) and the connection closed. 0: no "
           "limit.", HTTP),
    Option("max_keepalive_requests", 0, int_in(0),
           "Requests served on one connection before it is closed (`Connection: close` on "
           "the last answer); 0: no limit.", HTTP),
    Option("server_revision", "gnetserver", as_str,
           "The Server header of every response (empty: none).", HTTP),
    Option("access_log_file", None, as_optional_str,
           "The access log: a file path (opened for appending, reopened on HUP), or `STDOUT`/"
           "`STDERR`. Lines are written by a greenlet through the hub's thread pool, never "
           "blocking the hub. None: no access log.", HTTP),
    Option("access_log_format", COMBINED_LOG_FORMAT, log_format,
           "The access log line, in Apache's format: `%h %a %A %p %l %u %t %r %m %U %q %H %s "
           "%>s %b %B %D %T %{Name}i %{Name}o %{format}t %P %v %V %%` (NCSA combined by "
           "default).", HTTP),
)

#: Every option of the base server, in documentation order.
OPTIONS: tuple[Option, ...] = (
    *_SERVER, *_DATAGRAMS, *_LIMITS, *_LOGGING, *_ACCESS, *_PROXY, *_PROCESS, *_PREFORK,
    *_PORTING, *_TLS, *_SSL, *_MONITORING, *_NETSERVER_COMPAT
)


def table(options: Sequence[Option]) -> dict[str, Option]:
    """Index a sequence of options by name, refusing duplicates."""
    by_name: dict[str, Option] = {}
    for option in options:
        if option.name in by_name:
            raise ValueError(f"option {option.name!r} declared twice")
        by_name[option.name] = option
    return by_name


def default_text(option: Option) -> str:
    """The default of an option as ``--help`` and README show it (plain text): its
    :attr:`~Option.shown_default`, else ``none``, ``on``/``off`` or the value (lists joined by
    ", "). Called by :func:`gnetserver.config.command_line_parser` and :mod:`gnetserver.docs`."""
    value = option.default
    if option.shown_default is not None:
        return option.shown_default
    if value is None or value == "" or value == []:
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value)
