"""The exceptions gnetserver raises to its users.

Every error that stops a server at start is a :class:`ConfigError` whose message names the
option (or port) and the offending value; errors of a single connection are :class:`TLSError`,
:class:`SessionWaitTimeout`, :class:`LineTooLong` (or plain ``OSError``/``TimeoutError``) and
never escape the connection's greenlet.
"""

from __future__ import annotations


class GNetServerError(Exception):
    """Base class of every exception defined by gnetserver."""


class ConfigError(GNetServerError, ValueError):
    """A bad option, port spec, certificate or key, detected while the server starts."""


class TLSError(GNetServerError, OSError):
    """A TLS protocol failure on one connection (handshake or record layer)."""


class HandshakeTimeout(TLSError, TimeoutError):
    """The TLS handshake did not finish within ``timeout_handshake`` seconds."""


class SessionWaitTimeout(GNetServerError, TimeoutError):
    """A connection finished its handshake but no session slot (``max_servers``) freed within
    ``timeout_session_wait`` seconds; the server closes it (logged at level 3)."""

    def __init__(self, waited: float) -> None:
        super().__init__(f"no session slot freed within {waited:g}s (max_servers busy; "
                         f"timeout_session_wait)")
        #: The seconds the connection waited.
        self.waited = waited


class LineTooLong(GNetServerError):
    """A line read without an explicit limit (``client.readline()``, iteration over the client
    or over a file from ``client.makefile()``) is longer than ``max_line_length`` bytes, its
    end included: no line end came within them, so a peer cannot make the server buffer
    without bound. The server logs it at level 3, without a traceback, and the connection ends
    (unless the handler catches it). An explicit limit (``readline(n)``) keeps the usual
    meaning instead: at most ``n`` bytes are returned, no error.

    It is not a ValueError, so that a handler catching parse errors does not swallow it by
    accident; and once raised, unbounded line reads of that client (or file) raise it again:
    the rest of the long line is never taken for a new line."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"no line end within {limit} bytes (max_line_length)")
        #: The bound that was exceeded (``max_line_length``).
        self.limit = limit


class Fatal(GNetServerError):
    """Raised by ``GServer.fatal(message)`` once it has logged the message and asked the
    server to stop: it unwinds the caller (a hook, a connection, a periodic run) as Perl's
    ``fatal`` never returns. ``run()`` catches it and ends with exit status 1
    (``server_exit(1)``); from ``start()`` it reaches the caller."""
