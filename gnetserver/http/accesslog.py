"""The access log: Apache's log format compiled once, lines written off the hub.

Rules of this module:

* :func:`compile_format` turns an ``access_log_format`` into a list of pieces once, at start
  (an unknown directive is a ConfigError naming it); :meth:`AccessLog.line` only runs them.
* Values that come from the peer (the request line, headers, the user) are escaped as
  Apache does: ``"``, ``\\`` and every byte outside printable ASCII become ``\\xNN``, so a
  peer cannot forge a line.
* :class:`AccessLog` never blocks the hub: a request's line is appended to a buffer, and one
  short-lived greenlet at a time writes the buffer out through the hub's thread pool (a slow
  disk or a full pipe stalls that thread, not the connections). :meth:`AccessLog.close`
  writes what is left and waits for it (bounded).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from ..errors import ConfigError

if TYPE_CHECKING:
    from .exchange import Exchange

__all__ = ["AccessLog", "Entry", "compile_format", "escape"]

_UNSAFE = re.compile(r'[^\x20-\x7e]|["\\]')


def escape(text: str) -> str:
    """A peer's text as Apache logs it: ``"``, ``\\`` and non-printables as ``\\xNN``."""
    return _UNSAFE.sub(lambda m: "".join(f"\\x{b:02x}" for b in m[0].encode("utf-8")), text)


class Entry:
    """What one log line is made of: the exchange (None for a request refused before its head
    was read), the client, the status, when it started, how long it took."""

    __slots__ = ("exchange", "client", "status", "started", "duration", "request_line")

    def __init__(self, exchange: Exchange | None, client: Any, status: int, started: float,
                 duration: float, request_line: str) -> None:
        self.exchange, self.client, self.status = exchange, client, status
        self.started, self.duration, self.request_line = started, duration, request_line


Piece = Callable[[Entry], str]


def _header_in(name: str) -> Piece:
    def piece(entry: Entry) -> str:
        if entry.exchange is None:
            return "-"
        value = entry.exchange.request.header(name)
        return "-" if value is None else escape(value)
    return piece


def _header_out(name: str) -> Piece:
    wanted = name.lower()

    def piece(entry: Entry) -> str:
        if entry.exchange is None:
            return "-"
        for key, value in entry.exchange.response_headers:
            if key.lower() == wanted:
                return escape(value)
        return "-"
    return piece


def _note(name: str) -> Piece:
    return lambda entry: escape(entry.exchange.notes.get(name, "-")) if entry.exchange else "-"


def _strftime(fmt: str) -> Piece:
    return lambda entry: time.strftime(fmt, time.localtime(entry.started))


def _request(attribute: str) -> Piece:
    def piece(entry: Entry) -> str:
        if entry.exchange is None:
            return "-"
        return escape(str(getattr(entry.exchange.request, attribute)))
    return piece


def _bytes(clf: bool) -> Piece:
    def piece(entry: Entry) -> str:
        sent = 0 if entry.exchange is None else entry.exchange.body_bytes
        return "-" if clf and not sent else str(sent)
    return piece


def _host(entry: Entry) -> str:
    if entry.exchange is None:
        return "-"
    host = entry.exchange.request.header("host")
    return escape(host.rsplit(":", 1)[0]) if host else str(entry.client.sockaddr or "-")


_SIMPLE: dict[str, Piece] = {
    "h": lambda e: str(e.client.peerhost or e.client.peeraddr or "-"),
    "a": lambda e: str(e.client.peeraddr or "-"),
    "A": lambda e: str(e.client.sockaddr or "-"),
    "p": lambda e: str(e.client.sockport or "-"),
    "l": lambda e: "-",
    "u": lambda e: escape(e.exchange.env.get("REMOTE_USER", "-")) if e.exchange else "-",
    "t": lambda e: time.strftime("[%d/%b/%Y:%H:%M:%S %z]", time.localtime(e.started)),
    "r": lambda e: escape(e.request_line),
    "m": _request("method"),
    "U": _request("path"),
    "q": lambda e: f"?{escape(e.exchange.request.query)}"
                   if e.exchange and e.exchange.request.query else "",
    "H": lambda e: f"HTTP/{e.exchange.request.version}" if e.exchange else "-",
    "s": lambda e: str(e.status),
    "b": _bytes(True),
    "B": _bytes(False),
    "D": lambda e: str(int(e.duration * 1_000_000)),
    "T": lambda e: str(int(e.duration)),
    "P": lambda e: str(os.getpid()),
    "v": _host,
    "V": _host,
    "X": lambda e: "+" if e.exchange is not None and e.exchange.keep_alive else "-",
    "%": lambda e: "%",
}
_BRACED = {"i": _header_in, "o": _header_out, "n": _note, "t": _strftime}
_DIRECTIVE = re.compile(r"%(?:\{([^}]*)\})?[<>]?([A-Za-z%])")


def compile_format(fmt: str) -> list[Piece | str]:
    """The pieces of an access log format; ConfigError for an unknown directive."""
    pieces: list[Piece | str] = []
    position = 0
    for match in _DIRECTIVE.finditer(fmt):
        if match.start() > position:
            pieces.append(fmt[position:match.start()])
        argument, letter = match.group(1), match.group(2)
        if argument is not None and letter in _BRACED:
            pieces.append(_BRACED[letter](argument))
        elif argument is None and letter in _SIMPLE:
            pieces.append(_SIMPLE[letter])
        else:
            raise ConfigError(f"option 'access_log_format': unknown directive "
                              f"{match.group(0)!r} in {fmt!r}")
        position = match.end()
    if "%" in fmt[position:]:
        raise ConfigError(f"option 'access_log_format': a lone % in {fmt!r}")
    pieces.append(fmt[position:])
    return pieces


class AccessLog:
    """One server's access log: a file (appended to) or stdout/stderr.

    :meth:`write` may be called from any greenlet of the server's hub; it never blocks.
    """

    def __init__(self, target: str, fmt: str,
                 report: Callable[[int, str], None]) -> None:
        """Open ``target`` (a path, ``STDOUT`` or ``STDERR``); ConfigError when it cannot be.
        ``report(level, message)`` logs a failed write (once until writing works again)."""
        self.pieces = compile_format(fmt)
        self.target = target
        self._report = report
        self._pending: list[str] = []
        self._writer: Any = None
        self._failing = False
        self._owned = False
        self.fd = self._open()

    def _open(self) -> int:
        upper = self.target.upper()
        if upper in ("STDOUT", "/DEV/STDOUT"):
            return 1
        if upper in ("STDERR", "/DEV/STDERR"):
            return 2
        try:
            fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                         0o640)
        except OSError as exc:
            raise ConfigError(f"option 'access_log_file': cannot open {self.target!r}: "
                              f"{exc.strerror}") from None
        self._owned = True
        return fd

    def line(self, entry: Entry) -> str:
        """The log line of one request (without its newline)."""
        return "".join(piece if isinstance(piece, str) else piece(entry)
                       for piece in self.pieces)

    def write(self, entry: Entry) -> None:
        """Queue the line of ``entry``; a greenlet writes it soon, off the hub."""
        self._pending.append(self.line(entry) + "\n")
        if self._writer is None:
            self._writer = gevent.spawn(self._drain)

    def _drain(self) -> None:
        """Write everything pending through the hub's thread pool, then end."""
        try:
            pool = gevent.get_hub().threadpool
            while self._pending:
                data = "".join(self._pending).encode("utf-8", "replace")
                self._pending.clear()
                try:
                    pool.apply(_write_all, (self.fd, data))
                    self._failing = False
                except OSError as exc:
                    if not self._failing:
                        self._failing = True
                        self._report(1, f"access log {self.target}: write failed: {exc}")
        finally:
            self._writer = None

    def reopen(self) -> None:
        """Open the file again by its name (after logrotate); the old one is kept on error."""
        if not self._owned:
            return
        try:
            fd = self._open()
        except ConfigError as exc:
            self._report(1, str(exc))
            return
        old, self.fd = self.fd, fd
        os.close(old)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is pending (waiting at most ``timeout``), then close the file."""
        writer = self._writer
        if writer is not None:
            writer.join(timeout)
            if not writer.dead:
                writer.kill(block=False)
        if self._pending:  # no hub left to help (or the writer was stuck): write here
            data = "".join(self._pending).encode("utf-8", "replace")
            self._pending.clear()
            try:
                _write_all(self.fd, data)
            except OSError:
                pass
        if self._owned and self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written (in a thread of the pool)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
