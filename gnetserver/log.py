"""Net::Server's five log levels and its log targets: stderr, a file, syslog.

Rules of this module:

* ``log_level`` 0-4 is Net::Server's scale: 0 fatal, 1 errors and warnings, 2 notices (the
  default), 3 per-connection information, 4 debug. A message is emitted when its level is at or
  below ``log_level``; with ``log_level`` 0 nothing at all is emitted (as in Net::Server).
* Without ``log_file``, messages go to the ``gnetserver`` logger at the stdlib level of
  :data:`STDLIB_LEVELS`, so users configure handlers and formats the usual way, at any time
  (before or after the server starts). No handler is ever attached to a shared logger: while
  no logger on the way to the root has one, a message is written by a module-level stderr
  handler in Net::Server's ``YYYY/MM/DD-HH:MM:SS msg`` format instead (as stdlib's
  ``logging.lastResort``, which would drop messages below WARNING).
* A ``log_file`` target (a path, or ``Sys::Syslog``) belongs to one server: its handler is never
  attached to a shared logger, so two servers in one process never write to each other's files.
* A log file is created ``0o640`` and opened for appending; :meth:`LogTargets.reopen` closes and
  opens it again by name (logrotate renames the file, then the server reopens on HUP).
* Every message is escaped by :func:`escape` (one line of printable ASCII, ``%XX`` for the
  rest and ``%25`` for ``%`` itself) before any target sees it, so that a peer's bytes in a
  message cannot forge a log line or send a terminal escape, nor pass a literal ``%0A`` off as
  an escaped newline, whichever the target: file, stderr, the ``gnetserver`` logger, syslog
  (and ``log_function``: the server escapes before calling it). Escaped text is an
  :class:`Escaped` ``str``, which the later stages (the sink, the stderr fallback) do not
  escape again.
* The log file is opened as root, in a directory the service user may own, by
  :func:`gnetserver.daemon.open_safely`: a symbolic link on the way (a directory, or the last
  name) is followed only when root or the server owns it, and the last name may be a link
  only to what is not a regular file (``/dev/stdout``, a tty or a pipe: nothing there to
  chown or rotate). Anything else is refused (a ConfigError at start, a log line on reopen,
  the old file kept), and so is a regular file with more than one hard link (another file
  may be linked in). The file is handed to ``user`` by its descriptor (``fchown``), never by
  its name; a device or a pipe is not handed over, nor reopened (there is nothing to rotate:
  after the start ``/dev/stdout`` would name ``/dev/null``).
* Nothing here raises or waits at run time: a failed write is reported on stderr (once until
  writing works again) and the server goes on; syslog never blocks the hub
  (:mod:`gnetserver.syslog_socket` drops, counts and reports what syslog does not take).
* ``log_format json`` writes each line as one JSON object (:func:`json_line`: ``time``,
  ``level``, ``pid``, ``message``, and the connection's facts when the line is logged in a
  connection's greenlet) instead of Net::Server's ``time message``, to the file, to syslog
  (after the ident) and to stderr; the ``gnetserver`` logger's own handlers get the JSON text
  as the record's message. The message is escaped first, as for every sink, and JSON's own
  escaping keeps the line one line of ASCII.
* The logging options' converters and syslog's address live in :mod:`gnetserver.log_options`
  (pure); they are re-exported here, so ``gnetserver.log.syslog_facility`` and the like work.
"""

from __future__ import annotations

import datetime
import errno
import json
import logging
import logging.handlers
import os
import re
import stat
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO

from .conf import Conf
from .daemon import open_safely, stderr_to
from .errors import ConfigError
from .log_options import LOCAL_SYSLOG_PATHS as LOCAL_SYSLOG_PATHS
from .log_options import SYSLOG_LOGOPTS as SYSLOG_LOGOPTS
from .log_options import SYSLOG_LOGSOCKS as SYSLOG_LOGSOCKS
from .log_options import facility_number, logopt_words, syslog_address
from .log_options import log_function as log_function
from .log_options import resolve_log_function as resolve_log_function
from .log_options import syslog_facility as syslog_facility
from .log_options import syslog_logopt as syslog_logopt
from .log_options import syslog_logsock as syslog_logsock
from .syslog_socket import SyslogSocket, drop_text, report_failure

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

#: Net::Server level -> stdlib logging level.
STDLIB_LEVELS: dict[int, int] = {
    0: logging.CRITICAL,
    1: logging.ERROR,
    2: NOTICE,
    3: logging.INFO,
    4: logging.DEBUG,
}

#: Net::Server level -> syslog priority (Net::Server::Log::Sys::Syslog's map).
SYSLOG_PRIORITIES: dict[int, str] = {0: "err", 1: "warning", 2: "notice", 3: "info", 4: "debug"}

LOGGER_NAME = "gnetserver"

#: The ``log_file`` value that selects syslog, as in Net::Server.
SYSLOG = "Sys::Syslog"

_PERL_PACKAGE = re.compile(r"^[A-Za-z]\w*(?:::[A-Za-z]\w*)+$")
# What escape() rewrites: outside printable ASCII, and '%' (the escape character itself).
_UNPRINTABLE = re.compile(r"[^ -$&-~]")
_TIME_FORMAT = "%Y/%m/%d-%H:%M:%S"


if TYPE_CHECKING:  # Any: the stream is whatever sys.stderr is at each record
    _StreamHandler = logging.StreamHandler[Any]
else:  # not subscriptable at run time before Python 3.11
    _StreamHandler = logging.StreamHandler


class _StderrFallback(_StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record comes (like ``logging.lastResort``:
    a test's capture or a redirect made after import is followed), in Net::Server's format."""

    def __init__(self) -> None:
        logging.Handler.__init__(self)  # not StreamHandler's: it would store one stream
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", _TIME_FORMAT))

    @property
    def stream(self) -> TextIO:
        """The current ``sys.stderr``."""
        return sys.stderr


#: Writes the ``gnetserver`` logger's records while no handler would take them (see to_logger).
_FALLBACK = _StderrFallback()
#: The same for ``log_format json``: the line is the JSON object alone.
_JSON_FALLBACK = _StderrFallback()
_JSON_FALLBACK.setFormatter(logging.Formatter("%(message)s"))


def json_line(level: int, message: str, facts: dict[str, Any] | None = None,
              now: float | None = None) -> Escaped:
    """One ``log_format json`` line: ``{"time": ISO 8601 UTC with milliseconds, "level":
    Net::Server's level, "pid", "message", **facts}`` on one line of ASCII (facts with a
    None value are left out)."""
    stamp = datetime.datetime.fromtimestamp(time.time() if now is None else now,
                                            datetime.timezone.utc)
    record: dict[str, Any] = {
        "time": stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": level, "pid": os.getpid(), "message": message,
    }
    if facts:
        record.update((name, value) for name, value in facts.items() if value is not None)
    return Escaped(json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str))


def get_logger() -> logging.Logger:
    """Return the ``gnetserver`` logger (never adds a handler: see :func:`to_logger`)."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.level == logging.NOTSET:
        # Filtering by log_level happens in should_log(); the logger itself lets all through.
        logger.setLevel(logging.DEBUG)
    return logger


def to_logger(level: int, message: str, raw: bool = False) -> None:
    """Log ``message`` at Net::Server ``level`` on the ``gnetserver`` logger; while no handler
    is configured on the way to the root, write it to stderr in Net::Server's format instead.
    Decided per message, so logging configured after the server started takes over at once
    (and each line is written once). ``raw``: ``message`` is a whole line (``log_format
    json``): stderr gets it without the time."""
    logger = get_logger()
    if logger.hasHandlers():
        logger.log(STDLIB_LEVELS[level], message)
    elif logger.isEnabledFor(STDLIB_LEVELS[level]):
        fallback = _JSON_FALLBACK if raw else _FALLBACK
        fallback.handle(logger.makeRecord(LOGGER_NAME, STDLIB_LEVELS[level], __file__, 0,
                                          message, (), None))


def should_log(level: int, log_level: int) -> bool:
    """Net::Server's rule: nothing at log_level 0, else every level up to log_level."""
    return log_level > 0 and level <= log_level


class Escaped(str):
    """A message :func:`escape` made safe: escaping it again returns it unchanged, so the
    stages of one message (log(), the sink, the stderr fallback) escape it exactly once. Text
    built from it (``"prefix " + message``) is a plain ``str`` and is escaped again."""

    __slots__ = ()


def escape(message: str) -> Escaped:
    """The one escaping of every log sink: each character outside printable ASCII (space to
    ``~``) becomes the ``%XX`` of its UTF-8 bytes, newlines, carriage returns and terminal
    escapes included, and ``%`` becomes ``%25``, so that a message is always one line, a peer
    cannot forge log lines or drive a terminal, and a peer's literal ``%0A`` reads ``%250A``,
    never as an escaped newline (decode with ``urllib.parse.unquote``). Net::Server escapes
    its file the same way but keeps ``\n`` and ``%`` raw: a multi-line message, a traceback,
    is one line with ``%0A`` here. An :class:`Escaped` message is returned as it is."""
    if isinstance(message, Escaped):
        return message
    if message.isascii() and message.isprintable() and "%" not in message:  # the common case
        return Escaped(message)
    return Escaped(_UNPRINTABLE.sub(
        lambda m: "".join(f"%{byte:02X}" for byte in m.group().encode("utf-8", "surrogatepass")),
        message,
    ))


def write_fallback(message: str, reason: str | None = None) -> None:
    """Last resort when a log sink failed or was re-entered: ``reason`` (when given) then the
    message, on stderr, in Net::Server's format. Never raises, never logs."""
    try:
        if reason:
            sys.stderr.write(f"gnetserver: {escape(reason)}\n")
        sys.stderr.write(f"{time.strftime(_TIME_FORMAT)} {escape(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


# -- targets ------------------------------------------------------------------------------------


class LogFileHandler(logging.FileHandler):
    """Append to a log file created ``0o640``, never through a symbolic link of someone but
    root's or the server's, never through a link to a regular file, nor to a file with several
    hard links; :meth:`reopen` follows a rename (logrotate)."""

    def __init__(self, path: str) -> None:
        super().__init__(os.path.abspath(path), mode="a", encoding="utf-8")
        self.setFormatter(logging.Formatter("%(asctime)s %(message)s", _TIME_FORMAT))
        self.failing = False  # a failure was said on stderr; said again only after a success
        self._error = False  # the current emit failed

    def _open(self) -> Any:
        # os.open so a new file gets 0o640, never the world-readable 0o644 of open();
        # open_safely: root must not append to whatever a planted link names (see the module).
        fd = open_safely(self.baseFilename, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640,
                          through_link=True)
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:  # another file linked in
            os.close(fd)
            raise OSError(errno.EMLINK, f"has {info.st_nlink} hard links (refused: it may be "
                          "another file linked in)", self.baseFilename)
        return os.fdopen(fd, "a", encoding="utf-8", errors="backslashreplace")

    def reopen(self) -> None:
        """Open the same path again (a fresh file if it was renamed), then close the old
        stream; if opening fails the old stream stays in use and OSError is raised. A log
        "file" that is a tty or a pipe (``/dev/stdout``) is kept: nothing rotates it, and its
        name may now lead elsewhere (the daemon points stdout at /dev/null)."""
        if self.stream is not None and not stat.S_ISREG(os.fstat(self.stream.fileno()).st_mode):
            return
        stream = self._open()
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        if old is not None:
            old.close()

    def emit(self, record: logging.LogRecord) -> None:
        """Write one record; a failure goes to handleError (never raises)."""
        self._error = False
        super().emit(record)
        if not self._error:
            self.failing = False

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (stdlib name)
        # Once per outage (a full disk must not double every log line on stderr).
        self._error = True
        if not self.failing:
            self.failing = True
            report_failure(f"cannot write log file {self.baseFilename} (said once until a "
                           "write works again)")


class SyslogHandler(logging.Handler):
    """Net::Server::Log::Sys::Syslog: ident, logopt, facility and Net::Server's level ->
    priority map, sent through a :class:`~gnetserver.syslog_socket.SyslogSocket`, which
    never makes the caller wait (a message syslog has no room for is dropped and counted,
    and the count reported to syslog later)."""

    def __init__(self, address: Any, facility: int, ident: str, logopt: frozenset[str],
                 socktype: int | None = None) -> None:
        super().__init__()
        self.address, self.facility, self.logopt = address, facility, logopt
        # The pid is read per record: the server may fork (background) after this is built.
        ident = ident.replace("%", "%%")
        fmt = f"{ident}[%(process)d]: %(message)s" if "pid" in logopt else f"{ident}: %(message)s"
        self.setFormatter(logging.Formatter(fmt))
        self.sender = SyslogSocket(address, socktype, self._notice)

    def emit(self, record: logging.LogRecord) -> None:
        """Send one record; never raises, never waits (see SyslogSocket)."""
        try:
            if not self.sender.send(self._encode(record.levelno, self.format(record))):
                if "cons" in self.logopt:  # openlog's LOG_CONS: the console gets it instead
                    _write_console(self.format(record))
        except Exception:
            self.handleError(record)

    def _encode(self, levelno: int, text: str) -> bytes:
        """``<priority>text`` as syslog(3) sends it (no trailing NUL: rsyslog logs "#000")."""
        ns_level = next((ns for ns, std in STDLIB_LEVELS.items() if std == levelno), 1)
        names = logging.handlers.SysLogHandler.priority_names
        return (f"<{(self.facility << 3) | names[SYSLOG_PRIORITIES[ns_level]]}>{text}"
                .encode("utf-8", "backslashreplace"))

    def _notice(self, count: int) -> bytes:
        """The warning (level 1) that reports ``count`` dropped messages."""
        record = logging.LogRecord(LOGGER_NAME, logging.ERROR, __file__, 0, drop_text(count),
                                   None, None)
        return self._encode(logging.ERROR, self.format(record))

    def connected(self) -> bool:
        """Whether a socket to the syslog daemon is open (unix sockets connect at start)."""
        return self.sender.socket is not None

    def dropped(self) -> int:
        """How many messages syslog did not take (since start)."""
        return self.sender.dropped

    def reconnect(self) -> None:
        """Reconnect (HUP: syslog may have been restarted), without waiting."""
        self.acquire()  # Handler.lock is typed Optional; acquire/release take it when set
        try:
            self.sender.connect()
        finally:
            self.release()

    def close(self) -> None:
        """Report drops not reported yet (to syslog or stderr) and close the socket."""
        self.acquire()
        try:
            self.sender.close()
        finally:
            self.release()
        super().close()

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (stdlib name)
        report_failure(f"cannot send to syslog at {self.address}")


def _write_console(text: str) -> None:
    """openlog's LOG_CONS: one line on /dev/console; stderr when that cannot be opened."""
    try:
        with open("/dev/console", "w", encoding="utf-8") as console:
            console.write(text + "\n")
    except OSError:
        report_failure("cannot write to /dev/console")




class LogTargets:
    """The log targets of one server, built from its options by :meth:`from_conf`.

    Attributes:
        path: the log file's absolute path, or None (stderr or syslog).
        handler: the file or syslog handler, or None for the shared ``gnetserver`` logger.
    """

    def __init__(self, handler: logging.Handler | None = None, json_lines: bool = False) -> None:
        self.handler = handler
        self.path = handler.baseFilename if isinstance(handler, LogFileHandler) else None
        self.stderr_follows = False
        #: ``log_format json``: each line a JSON object (:func:`json_line`).
        self.json_lines = json_lines
        if json_lines and isinstance(handler, LogFileHandler):
            handler.setFormatter(logging.Formatter("%(message)s"))

    @classmethod
    def from_conf(cls, conf: Conf) -> LogTargets:
        """Open what ``log_file`` names; raises ConfigError naming the option and value."""
        target = conf.log_file
        json_lines = conf.log_format == "json"
        if not target:
            return cls(json_lines=json_lines)
        if target == SYSLOG:
            return cls(open_syslog(conf), json_lines)
        if _PERL_PACKAGE.match(target):
            raise ConfigError(f"option 'log_file': log module {target!r} is not supported "
                              f"(use {SYSLOG!r} or a file path)")
        try:
            return cls(LogFileHandler(target), json_lines)
        except OSError as exc:
            raise ConfigError(f"option 'log_file': cannot open {target!r}: "
                              f"{exc.strerror}") from None

    def emit(self, level: int, message: str, facts: dict[str, Any] | None = None) -> None:
        """Write one message at Net::Server ``level`` to this server's target; ``facts``:
        the connection's, for ``log_format json`` (ignored otherwise)."""
        message = escape(message)  # every target: file, syslog, the logger (stderr)
        if self.json_lines:
            message = json_line(level, message, facts)
        if self.handler is None:
            to_logger(level, message, self.json_lines)
            return
        record = logging.LogRecord(LOGGER_NAME, STDLIB_LEVELS[level], __file__, 0, message,
                                   None, None)
        record.created = time.time()
        self.handler.handle(record)

    def reopen(self) -> None:
        """Reopen the log file (logrotate) and stderr with it, or reconnect to syslog."""
        if isinstance(self.handler, LogFileHandler):
            self.handler.reopen()
            if self.stderr_follows:
                self.point_stderr()
        elif isinstance(self.handler, SyslogHandler):
            self.handler.reconnect()

    def rebase(self, rebase: Callable[[str, str], str], root: str) -> None:
        """After a chroot: reopen_logs() must find the log file under its new name."""
        if isinstance(self.handler, LogFileHandler) and self.path is not None:
            self.path = self.handler.baseFilename = rebase(self.path, root)

    def point_stderr(self) -> None:
        """Point file descriptor 2 at the log file (Net::Server's STDERR redirect); reopen()
        keeps it pointed at the current file."""
        fd = self.fileno()
        if fd is None:
            return
        stderr_to(fd)
        self.stderr_follows = True

    def fileno(self) -> int | None:
        """The log file's descriptor (to point stderr at it), or None."""
        if isinstance(self.handler, LogFileHandler) and self.handler.stream is not None:
            return self.handler.stream.fileno()
        return None

    def count_drops(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(count)`` for the messages syslog drops from now on (no-op for
        other targets)."""
        if isinstance(self.handler, SyslogHandler):
            self.handler.sender.on_drop = callback

    def dropped(self) -> int:
        """How many messages syslog did not take (0 for other targets)."""
        return self.handler.dropped() if isinstance(self.handler, SyslogHandler) else 0

    def close(self) -> None:
        """Close the file or syslog socket (syslog: report drops not reported yet)."""
        if self.handler is not None:
            self.handler.close()


#: The targets of a server without ``log_file`` (and of one not configured yet): the shared
#: ``gnetserver`` logger. Holds no handler, so nothing to reopen or close.
LOGGER_TARGETS = LogTargets()


def open_syslog(conf: Conf) -> SyslogHandler:
    """The syslog handler for ``log_file Sys::Syslog``; unreachable syslog is a ConfigError
    unless ``syslog_logopt`` has ``nofatal`` (then each message tries to reconnect)."""
    logopt = logopt_words(conf.syslog_logopt)
    address, socktype = syslog_address(conf.syslog_logsock or "")
    ident = conf.syslog_ident or "net_server"
    facility = facility_number(conf.syslog_facility or "daemon")
    handler = SyslogHandler(address, facility, ident, logopt, socktype)
    if not handler.connected() and "nofatal" not in logopt:
        error = handler.sender.error
        handler.close()
        raise ConfigError(f"option 'syslog_logsock': cannot reach syslog at {address!r}: "
                          f"{error} (add 'nofatal' to syslog_logopt to start anyway)")
    return handler


def format_message(template: str, args: tuple[object, ...]) -> str:
    """``template % args`` (Net::Server's ``sprintf($msg, @args)``); when they do not fit, the
    template as it is, followed by the arguments, so that no log call fails. One mapping
    argument fills named fields (``"%(user)s"``)."""
    try:
        if len(args) == 1 and isinstance(args[0], dict):
            return template % args[0]
        return template % args
    except (TypeError, ValueError, KeyError) as exc:
        return f"{template} {args!r} (log format: {exc})"
