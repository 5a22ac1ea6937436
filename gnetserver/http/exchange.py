"""One request and its response: the CGI environment, the body reader, the response writer.

Rules of this module:

* An :class:`Exchange` is made per request by :class:`~gnetserver.http.GHTTPServer` and is
  what handlers use (``client.http`` in ``process_http_request``; the WSGI adapter too). It
  lives in the connection's greenlet only.
* The response is framed here, never by the application: Content-Length when the length is
  known (given, or the whole body was written before the end), chunked on HTTP/1.1 otherwise,
  close-delimited for HTTP/1.0 clients; no body at all for HEAD, 1xx, 204 and 304 (what the
  application writes then is dropped); never more than a declared Content-Length. Hop-by-hop
  headers from the application are dropped (``Connection: close`` from it is honoured), and
  Date and Server are added unless it gave them.
* Writes are buffered until the end of the response or :data:`FLUSH_SIZE` bytes, so a small
  response leaves in one write (one TLS record) with its Content-Length; ``flush()`` sends
  what is buffered at once (streaming).
* ``100 Continue`` is sent lazily: when the handler first reads a body the client is holding
  back (``Expect: 100-continue``), never when it answers without reading.
* Keep-alive is decided when the head is sent: the client's wish, the server's (not
  stopping, ``max_keepalive_requests``), a framing that ends (not close-delimited) and a
  request body that can still be read past (what is left of it at most :data:`DRAIN_LIMIT`,
  and no ``100 Continue`` owed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

from .parser import Request, RequestReader

__all__ = ["DRAIN_LIMIT", "FLUSH_SIZE", "HOP_BY_HOP", "Exchange", "http_date", "reason_of"]

#: Bytes of response body buffered before they are sent (chunked, as the length is unknown).
FLUSH_SIZE = 64 * 1024

#: Unread request body the server reads and drops to keep the connection; more, and it closes.
DRAIN_LIMIT = 64 * 1024

#: Headers that belong to one connection (RFC 9110 §7.6.1): the server's to set, not the app's.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "trailers", "transfer-encoding", "upgrade"})

_REASONS = {status.value: status.phrase for status in HTTPStatus}
_date_cache: list[Any] = [0, ""]


def reason_of(status: int) -> str:
    """The standard reason phrase of a status ("Unknown" for an unregistered one)."""
    return _REASONS.get(status, "Unknown")


def http_date() -> str:
    """Now as an IMF-fixdate (``Sun, 06 Nov 1994 08:49:37 GMT``), computed once a second."""
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0], _date_cache[1] = now, formatdate(now, usegmt=True)
    return str(_date_cache[1])


def _check_header(name: str, value: str) -> None:
    """Refuse a header that would split the response (CR, LF) or is not a token."""
    if not name or any(char in name for char in " \t\r\n:") or "\r" in value or "\n" in value:
        raise ValueError(f"invalid response header {name!r}: {value!r}")


class Exchange:
    """One request and its response, for the handler of that request.

    Reading: ``request`` (the parsed head: method, target, headers...), ``env`` (the
    CGI-style environment, Net::Server::HTTP's), :meth:`read` and :meth:`readline` (the
    body, bounded by ``max_request_size``; ``b""`` at its end).

    Writing: :meth:`send_status` then :meth:`send_header`/:meth:`send_headers` (before any
    body), :meth:`send_body` (any number of times; buffered), :meth:`flush` (send what is
    buffered now: streaming), :meth:`send_response` (all at once), :meth:`send_error`. The
    server calls :meth:`finish` after the handler returns (a handler may call it earlier).

    Facts for the access log and for handlers: ``status``, ``headers_sent``,
    ``body_bytes`` (body bytes sent), ``keep_alive``, ``notes`` (a dict, Net::Server's
    ``http_note``).
    """

    def __init__(self, request: Request, reader: RequestReader, send: Callable[[bytes], None],
                 env: dict[str, Any], server_revision: str, keep_alive: bool,
                 stopping: Callable[[], bool] | None = None) -> None:
        """Per request, by the server; ``send`` is the client's ``sendall``; ``keep_alive``:
        whether the server lets this connection carry another request; ``stopping``, asked
        when the head goes out: True once the server stops (the head then says
        ``Connection: close``, as the connection ends after this response)."""
        self.request = request
        self.env = env
        self._reader = reader
        self._send = send
        self._stopping = stopping
        self._server_revision = server_revision
        self.status = 200
        self.reason: str | None = None
        self.response_headers: list[tuple[str, str]] = []
        self.headers_sent = False
        self.finished = False
        self.keep_alive = keep_alive and request.keep_alive
        self.body_bytes = 0
        self.notes: dict[str, str] = {}
        self.continue_sent = False
        self._buffer = bytearray()
        self._framing = ""  # "length", "chunked", "close" or "none", once the head is sent
        self._left = 0  # body bytes a Content-Length still allows

    # -- reading the body ---------------------------------------------------------------------

    def _expect(self) -> None:
        """Send ``100 Continue`` once, before the first read of a body the client holds back."""
        if (self.request.expect_continue and not self.continue_sent and not self.headers_sent
                and not self._reader.body_complete):
            self.continue_sent = True
            self._send(b"HTTP/1.1 100 Continue\r\n\r\n")

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes of the request body (all of it with -1); ``b""`` at its end.
        Raises HTTPError (413 past max_request_size, 400 for malformed chunks),
        ConnectionError or TimeoutError."""
        self._expect()
        if size is None or size < 0:
            parts = []
            while chunk := self._reader.read_body(FLUSH_SIZE):
                parts.append(chunk)
            return b"".join(parts)
        if size == 0:
            return b""
        return self._reader.read_body(size)

    def readline(self, size: int = -1) -> bytes:
        """One line of the body with its ``\\n`` (at most ``size`` bytes when given)."""
        self._expect()
        return self._reader.read_body_line(size)

    @property
    def body_complete(self) -> bool:
        """Whether the request body was read to its end."""
        return self._reader.body_complete

    # -- writing the response -----------------------------------------------------------------

    def send_status(self, status: int, reason: str | None = None) -> None:
        """Set the status (and its reason phrase; the standard one by default). Before the
        body only: a RuntimeError once the head is sent."""
        if self.headers_sent:
            raise RuntimeError("the response head was sent already")
        self.status, self.reason = int(status), reason

    def send_header(self, name: str, value: Any) -> None:
        """Add a response header (before the body only)."""
        if self.headers_sent:
            raise RuntimeError("the response head was sent already")
        text = str(value)
        _check_header(name, text)
        self.response_headers.append((name, text))

    def send_headers(self, headers: Iterable[tuple[str, Any]] | dict[str, Any]) -> None:
        """Add several headers: ``(name, value)`` pairs or a dict."""
        items = headers.items() if isinstance(headers, dict) else headers
        for name, value in items:
            self.send_header(name, value)

    def send_body(self, data: bytes | str) -> None:
        """Write body bytes (text is encoded as UTF-8); buffered up to FLUSH_SIZE."""
        if self.finished:
            raise RuntimeError("the response is finished")
        self._buffer += data.encode() if isinstance(data, str) else data
        if len(self._buffer) >= FLUSH_SIZE:
            self.flush()

    write = send_body

    def send_response(self, status: int, body: bytes | str = b"",
                      headers: Iterable[tuple[str, Any]] | dict[str, Any] = (),
                      content_type: str = "text/plain; charset=utf-8") -> None:
        """A whole response at once: status, headers (a Content-Type unless they have one),
        body; then finish."""
        self.send_status(status)
        self.send_headers(headers)
        if not any(name.lower() == "content-type" for name, _ in self.response_headers):
            self.send_header("Content-Type", content_type)
        self.send_body(body)
        self.finish()

    def send_error(self, status: int, message: str | None = None) -> None:
        """An error response (a short text body: the reason phrase, or ``message``; never an
        exception's text) that closes the connection. When the head went out already, the
        connection is only marked to close."""
        self.keep_alive = False
        if self.headers_sent:
            return
        self.response_headers = [("Connection", "close")]
        self._buffer.clear()
        text = message or reason_of(status)
        self.send_response(status, f"{status} {text}\n")

    def flush(self) -> None:
        """Send the head (if not sent) and what is buffered, now."""
        if not self.headers_sent:
            self._send_head(final=False)
        elif self._buffer:
            data = self._frame(bytes(self._buffer))
            self._buffer.clear()
            if data:
                self._send(data)

    def finish(self) -> None:
        """End the response: send the head with the body when nothing went out yet (then with
        its Content-Length), else the rest and the last chunk. Idempotent."""
        if self.finished:
            return
        if not self.headers_sent:
            self._send_head(final=True)
        else:
            data = self._frame(bytes(self._buffer))
            self._buffer.clear()
            if self._framing == "chunked":
                data += b"0\r\n\r\n"
            if data:
                self._send(data)
        self.finished = True
        if self._framing == "length" and self._left:
            self.keep_alive = False  # fewer bytes than the Content-Length said: must close

    def _frame(self, data: bytes) -> bytes:
        """Body bytes as they go on the wire under the chosen framing."""
        if not data or self._framing == "none":
            return b""
        if self._framing == "length":
            data = data[:self._left]
            self._left -= len(data)
        self.body_bytes += len(data)
        if self._framing == "chunked":
            return b"%x\r\n%b\r\n" % (len(data), data)
        return data

    def _send_head(self, final: bool) -> None:
        """Choose the framing and keep-alive, send the head (with the buffered body)."""
        status, request = self.status, self.request
        no_body = request.method == "HEAD" or status in (204, 304) or status < 200
        headers: list[tuple[str, str]] = []
        length: int | None = None
        has_date = has_server = False
        for name, value in self.response_headers:
            lowered = name.lower()
            if lowered == "content-length":
                length = int(value)
                continue
            if lowered == "connection" and "close" in value.lower():
                self.keep_alive = False
            if lowered in HOP_BY_HOP:
                continue
            has_date = has_date or lowered == "date"
            has_server = has_server or lowered == "server"
            headers.append((name, value))
        if no_body:
            self._framing = "none"
            if length is None and final and request.method == "HEAD" and status >= 200:
                length = len(self._buffer)  # what a GET would have said
            if length is not None and status not in (204, 304) and status >= 200:
                headers.append(("Content-Length", str(length)))
        elif length is not None or final:
            self._framing = "length"
            self._left = len(self._buffer) if length is None else length
            headers.append(("Content-Length", str(self._left)))
        elif request.version == "1.1":
            self._framing = "chunked"
            headers.append(("Transfer-Encoding", "chunked"))
        else:
            self._framing = "close"
            self.keep_alive = False
        if self.keep_alive and self._stopping is not None and self._stopping():
            self.keep_alive = False  # the drain began during this request
        if self.keep_alive and not self._reader.body_complete:
            left = self._reader.body_left()
            if (request.expect_continue and not self.continue_sent) or left is None \
                    or left > DRAIN_LIMIT:
                self.keep_alive = False  # the unread body cannot be skipped cheaply
        if not self.keep_alive:
            headers.append(("Connection", "close"))
        elif request.version == "1.0":
            headers.append(("Connection", "keep-alive"))
        if not has_date:
            headers.append(("Date", http_date()))
        if not has_server and self._server_revision:
            headers.append(("Server", self._server_revision))
        reason = self.reason or reason_of(status)
        lines = [f"HTTP/1.1 {status} {reason}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers]
        lines.append("\r\n")
        head = "".join(lines).encode("latin-1")
        self.headers_sent = True
        body = self._frame(bytes(self._buffer))
        self._buffer.clear()
        if final and self._framing == "chunked":
            body += b"0\r\n\r\n"
        self._send(head + body)

