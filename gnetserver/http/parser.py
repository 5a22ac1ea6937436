"""Reading HTTP/1.1 requests off one connection, with httptools (llhttp).

Why httptools and not h11 (measured by ``bench/http_parsers.py``, on this project's 2-core VM,
µs per request, best of 3: an 85-byte GET 39.9 vs 2.7, a 446-byte browser GET 72.9 vs 3.5, a
POST with a body 48.4 vs 3.2: 15-21x): h11 is pure Python and costs 40-100 µs per request,
which alone caps one core near 10-20k requests per second, while httptools costs about a
greenlet switch. httptools is "Production/Stable" and strict on the framing ambiguities that
lead to request smuggling (bare LF, obs-fold, Content-Length with Transfer-Encoding, duplicate
Content-Length, unknown transfer codings). What it lacks, this module adds: byte limits
(llhttp has none: ``max_header_size``, ``max_request_size``), the header timeout, a FIFO of
pipelined requests (llhttp parses every request in a buffer at once: it cannot pause), the
HTTP version check, and the mapping of its errors to statuses.

Rules of this module:

* One :class:`RequestReader` per connection, used by that connection's greenlet only. It
  reads only when the caller needs bytes (the next request's head, or body the application
  asks for), at most :data:`READ_SIZE` at a time, so pipelined requests are buffered at most
  one read ahead.
* Every refusal is an :class:`HTTPError` carrying the status to answer and a reason for the
  log (never for the client): 400 malformed, 408 late headers, 413 body too large, 414 target
  too long, 417 unknown expectation, 431 headers too large, 501 unknown method or transfer
  coding, 505 HTTP version not 1.x. After any of them the connection is closed.
* Header names and values are text decoded as latin-1 (bytes as they came, PEP 3333's
  "native strings").
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

import httptools

__all__ = ["READ_SIZE", "HTTPError", "Request", "RequestReader"]

#: Bytes read from the connection at a time.
READ_SIZE = 64 * 1024

#: Marks the end of a request's body in the event queue.
_END = object()


class HTTPError(Exception):
    """A request the server refuses: ``status`` is answered, ``reason`` is logged."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class Request:
    """The head of one request, as parsed.

    Attributes:
        method: ``"GET"``, ``"POST"``... (as sent; llhttp knows the registered methods only).
        target: the request target as sent (path and query, percent-encoded).
        path, query: the target split at the first ``?`` (query ``""`` when none).
        version: ``"1.1"`` or ``"1.0"`` (``1.x`` with x > 1 is answered as 1.1).
        headers: ``(name, value)`` pairs in order, latin-1 text, names as sent.
        keep_alive: whether the client allows another request on the connection.
        content_length: the Content-Length, None when there is none (chunked or no body).
        chunked: True when the body comes in chunks.
        expect_continue: ``Expect: 100-continue`` from an HTTP/1.1 client.
        started: ``time.time()`` when its head was complete (for the access log).
    """

    __slots__ = ("method", "target", "path", "query", "version", "headers", "keep_alive",
                 "content_length", "chunked", "expect_continue", "started", "_url")

    def __init__(self) -> None:
        self.method = ""
        self.target = ""
        self.path = ""
        self.query = ""
        self.version = "1.1"
        self.headers: list[tuple[str, str]] = []
        self.keep_alive = True
        self.content_length: int | None = None
        self.chunked = False
        self.expect_continue = False
        self.started = 0.0
        self._url = bytearray()

    def header(self, name: str, default: str | None = None) -> str | None:
        """The value of the header ``name`` (any case); repeated ones joined by ``", "``."""
        wanted = name.lower()
        values = [value for key, value in self.headers if key.lower() == wanted]
        return ", ".join(values) if values else default

    @property
    def has_body(self) -> bool:
        """True when a body follows the head (chunked, or a Content-Length above 0)."""
        return self.chunked or bool(self.content_length)


class RequestReader:
    """Reads the requests of one connection in order (pipelining included) with httptools.

    Args:
        recv: the connection's ``recv(size)`` (``b""`` at end of stream; raises
            TimeoutError when its timeout passes).
        settimeout: the connection's ``settimeout``.
        max_header_size: the largest request line plus headers, in bytes.
        max_request_size: the largest body, in bytes (0: no limit).
        timeout_header: seconds to complete a head, from its first byte (the first request's
            from the connection's start).
        timeout_idle: seconds each read may wait otherwise (0: no limit), between keep-alive
            requests too.
    """

    def __init__(self, recv: Callable[[int], bytes], settimeout: Callable[[float | None], None],
                 max_header_size: int, max_request_size: int, timeout_header: float,
                 timeout_idle: float) -> None:
        self._recv, self._settimeout = recv, settimeout
        self.max_header_size = max_header_size
        self.max_request_size = max_request_size
        self.timeout_header = timeout_header
        self.timeout_idle = timeout_idle or None
        self._parser = httptools.HttpRequestParser(self)
        self._events: deque[Any] = deque()
        self._building: Request | None = None
        self._head_size = 0  # bytes of the head being parsed that the callbacks saw
        self._head_fed = 0  # bytes fed while that head was incomplete
        self._head_started = 0.0  # time.monotonic() when the head's first byte arrived
        self._body_size = 0
        self._error: HTTPError | None = None  # raised by a callback, re-raised after feed
        self._connection_start = time.monotonic()
        self.received_any = False  # whether any byte of a new head was read
        self.body_complete = True  # whether the current request's body was read to its end
        self.eof = False
        self._current_length: int | None = None

    # -- httptools callbacks (inside feed_data) -----------------------------------------------

    def on_message_begin(self) -> None:
        self._building = Request()
        self._head_size = 0
        self._head_fed = 0
        self._body_size = 0
        self._head_started = time.monotonic()

    def on_url(self, url: bytes) -> None:
        request = self._building
        assert request is not None
        request._url += url
        self._head_size += len(url)
        if len(request._url) > self.max_header_size:
            self._fail(414, f"request target longer than max_header_size={self.max_header_size}")

    def on_header(self, name: bytes, value: bytes) -> None:
        request = self._building
        assert request is not None
        request.headers.append((name.decode("latin-1"), value.decode("latin-1")))
        self._head_size += len(name) + len(value) + 4
        if self._head_size > self.max_header_size:
            self._fail(431, f"request headers larger than max_header_size="
                            f"{self.max_header_size}")

    def on_headers_complete(self) -> None:
        request, parser = self._building, self._parser
        assert request is not None
        request.method = parser.get_method().decode("latin-1")
        major, _, minor = parser.get_http_version().partition(".")
        if major != "1":
            self._fail(505, f"HTTP version {major}.{minor} is not served")
        request.version = "1.0" if minor == "0" else "1.1"
        request.keep_alive = parser.should_keep_alive()
        target = request._url.decode("latin-1")
        request.target = target
        request.path, _, request.query = target.partition("?")
        for name, value in request.headers:
            lowered = name.lower()
            if lowered == "content-length":
                request.content_length = int(value)  # llhttp checked its digits
            elif lowered == "transfer-encoding":
                request.chunked = True  # llhttp refuses any final coding but chunked
            elif lowered == "expect":
                if value.strip().lower() != "100-continue":
                    self._fail(417, f"unsupported expectation {value!r}")
                request.expect_continue = request.version == "1.1"
        limit = self.max_request_size
        if limit and request.content_length is not None and request.content_length > limit:
            self._fail(413, f"Content-Length {request.content_length} above "
                            f"max_request_size={limit}")
        request.started = time.time()
        self._building = None
        self._events.append(request)

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self.max_request_size and self._body_size > self.max_request_size:
            self._fail(413, f"body above max_request_size={self.max_request_size}")
        self._events.append(body)

    def on_message_complete(self) -> None:
        self._events.append(_END)

    def _fail(self, status: int, reason: str) -> None:
        """Stop parsing: remember the refusal (re-raised once feed_data returns) and raise, so
        that llhttp stops where it is."""
        self._error = HTTPError(status, reason)
        raise self._error

    # -- reading --------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        """Parse ``data``; refusals become HTTPError."""
        in_head = self._building is not None
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            raise HTTPError(501, "protocol upgrades are not served") from None
        except httptools.HttpParserInvalidMethodError as exc:
            raise HTTPError(501, f"unknown method: {exc}") from None
        except httptools.HttpParserError as exc:
            if self._error is not None:
                raise self._error from None
            text = str(exc)
            status = 505 if "version" in text.lower() else 501 if "encoding" in text.lower() \
                else 400
            raise HTTPError(status, f"malformed request: {text}") from None
        # A head still incomplete: the bytes it took count against max_header_size even
        # before httptools hands them over (it buffers a partial header itself).
        if self._building is not None and in_head:
            self._head_fed += len(data)
            if self._head_fed > self.max_header_size:
                raise HTTPError(431, f"request head larger than max_header_size="
                                     f"{self.max_header_size}")

    def _fill(self, deadline: float | None) -> bool:
        """Read once and parse; False at end of stream. ``deadline``: a time.monotonic() the
        read must finish by (the header timeout), else the idle timeout bounds it."""
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("headers not complete within timeout_header")
            self._settimeout(left)
        else:
            self._settimeout(self.timeout_idle)
        data = self._recv(READ_SIZE)
        if not data:
            self.eof = True
            return False
        self._feed(data)
        return True

    def next_request(self, first: bool) -> Request | None:
        """The next request's head, in order; None when the client closed (or stayed silent
        past timeout_idle, between keep-alive requests) before sending one. Raises HTTPError
        (408 for a head late past timeout_header) and OSError. The previous request's body
        must have been read to its end (:meth:`discard_body`)."""
        self.received_any = False
        while True:
            if self._events:
                event = self._events.popleft()
                assert isinstance(event, Request), "the previous body was not read to its end"
                self.body_complete = not event.has_body
                self._current_length = event.content_length
                if self.body_complete and self._events and self._events[0] is _END:
                    self._events.popleft()
                return event
            if self._building is not None:
                self.received_any = True
                deadline: float | None = self._head_started + self.timeout_header
            elif first:
                deadline = self._connection_start + self.timeout_header
            else:
                deadline = None
            try:
                if not self._fill(deadline):
                    return None
            except TimeoutError:
                if self._building is None:  # silent: nothing of a request arrived
                    if first:
                        raise HTTPError(408, "no request within timeout_header") from None
                    return None
                raise HTTPError(408, "request headers not complete within timeout_header "
                                     f"({self.timeout_header:g} s)") from None

    @property
    def waiting_for_request(self) -> bool:
        """True when no byte of a next request has been read (nothing parsed or buffered)."""
        return self._building is None and not self._events

    def read_body(self, size: int) -> bytes:
        """Up to ``size`` bytes (at least 1) of the current request's body; ``b""`` at its end.
        Raises ConnectionError when the client closes in the middle, TimeoutError past
        timeout_idle, HTTPError for a body too large or malformed chunks."""
        event = self._body_event()
        if len(event) <= size:
            if event:
                self._events.popleft()
            return event
        self._events[0] = event[size:]
        return event[:size]

    def read_body_line(self, size: int) -> bytes:
        """Body bytes through the next ``\\n`` (at most ``size`` of them when ``size`` >= 0);
        ``b""`` at the body's end. Raises as :meth:`read_body` does."""
        line = bytearray()
        while size < 0 or len(line) < size:
            event = self._body_event()
            if not event:
                break
            end = event.find(b"\n") + 1 or len(event)
            if size >= 0:
                end = min(end, size - len(line))
            line += event[:end]
            if end == len(event):
                self._events.popleft()
            else:
                self._events[0] = event[end:]
            if line.endswith(b"\n"):
                break
        return bytes(line)

    def _body_event(self) -> bytes:
        """The body bytes at the head of the queue (left there), reading more as needed;
        ``b""`` at the body's end."""
        while not self.body_complete:
            if self._events:
                event = self._events[0]
                if event is _END:
                    self._events.popleft()
                    self.body_complete = True
                    break
                if isinstance(event, bytes):
                    return event
            if not self._fill(None):
                raise ConnectionError("the client closed the connection in the middle of "
                                      "the request body")
        return b""

    def body_left(self) -> int | None:
        """Body bytes of the current request not read off the connection yet; None when
        unknown (chunked)."""
        if self.body_complete:
            return 0
        request_length = self._current_length
        return None if request_length is None else max(0, request_length - self._body_size)

    def discard_body(self, limit: int) -> bool:
        """Read and drop what is left of the current body, at most ``limit`` bytes more; True
        when the body was read to its end (the connection can carry another request)."""
        dropped = 0
        while not self.body_complete:
            chunk = self.read_body(READ_SIZE)
            dropped += len(chunk)
            if dropped > limit:
                return False
        return True
