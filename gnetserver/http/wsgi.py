"""PEP 3333 over an :class:`~gnetserver.http.exchange.Exchange`: gnetserver as a WSGI server.

Rules of this module (the duties of PEP 3333 a server most often misses):

* The environ is Net::Server::HTTP's CGI environment (see
  :func:`gnetserver.http.server.cgi_environ`) with PATH_INFO percent-decoded as latin-1
  text, and the ``wsgi.*`` keys: ``wsgi.version`` (1, 0), ``wsgi.url_scheme`` (``https`` on
  TLS ports), ``wsgi.input`` (stops at the end of the body: Content-Length or the last
  chunk; ``wsgi.input_terminated`` is True), ``wsgi.errors`` (stderr),
  ``wsgi.multithread`` False (greenlets, one thread), ``wsgi.multiprocess`` (True under
  PreFork), ``wsgi.run_once`` False, ``wsgi.file_wrapper`` (:class:`FileWrapper`).
* ``start_response`` may be called again only with ``exc_info``; once the head went out,
  that re-raises the application's exception. It returns ``write()``.
* The head goes out with the first non-empty piece of body (or at the end); a list or tuple
  result is sent as one response with its Content-Length; pieces of any other iterable are
  sent as they come (chunked on HTTP/1.1). HEAD, 204 and 304 responses carry no body
  whatever the application yields, and never more than a Content-Length it declared.
* The result's ``close()`` is called whatever happens.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from urllib.parse import unquote_to_bytes

from .exchange import Exchange

__all__ = ["FileWrapper", "Input", "run", "unquote_latin1"]


def unquote_latin1(path: str) -> str:
    """A percent-encoded path as PEP 3333 wants it: the bytes decoded as latin-1."""
    return unquote_to_bytes(path).decode("latin-1") if "%" in path else path


class Input:
    """``wsgi.input``: the request body, ending where the body ends (never past it)."""

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (the rest with -1 or None); ``b""`` at the end."""
        return self._exchange.read(-1 if size is None else size)

    def readline(self, size: int | None = -1) -> bytes:
        """One line with its ``\\n``, at most ``size`` bytes when given."""
        return self._exchange.readline(-1 if size is None else size)

    def readlines(self, hint: int | None = -1) -> list[bytes]:
        """The lines left (about ``hint`` bytes of them when given)."""
        lines, total = [], 0
        while line := self.readline():
            lines.append(line)
            total += len(line)
            if hint is not None and 0 < hint <= total:
                break
        return lines

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class FileWrapper:
    """``wsgi.file_wrapper``: a file-like object's blocks as an iterable; ``close()`` closes
    the file. (No sendfile: the bytes go through TLS.)"""

    def __init__(self, filelike: Any, block_size: int = 64 * 1024) -> None:
        self.filelike, self.block_size = filelike, block_size

    def __iter__(self) -> Iterator[bytes]:
        while data := self.filelike.read(self.block_size):
            yield data

    def close(self) -> None:
        """Close the file (when it can be)."""
        if hasattr(self.filelike, "close"):
            self.filelike.close()


def environ_of(exchange: Exchange, multiprocess: bool) -> dict[str, Any]:
    """The WSGI environ of one exchange."""
    environ = dict(exchange.env)
    environ["PATH_INFO"] = unquote_latin1(environ["PATH_INFO"])
    environ.update({
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "https" if environ.get("HTTPS") == "on" else "http",
        "wsgi.input": Input(exchange),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": multiprocess,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
    })
    return environ


def run(app: Callable[..., Iterable[bytes]], exchange: Exchange, multiprocess: bool = False
        ) -> None:
    """Call ``app`` for one request and send what it answers through ``exchange``; the caller
    finishes the exchange. Exceptions of the application propagate (the server answers 500
    when no head went out)."""
    started = False

    def start_response(status: str, headers: list[tuple[str, str]],
                       exc_info: Any = None) -> Callable[[bytes], None]:
        nonlocal started
        if exc_info:
            try:
                if exchange.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no cycle through the traceback
        elif started:
            raise AssertionError("start_response called a second time without exc_info")
        code, _, reason = status.partition(" ")
        if len(code) != 3 or not code.isdigit():
            raise ValueError(f"invalid WSGI status {status!r}")
        exchange.response_headers = []
        exchange.send_status(int(code), reason or None)
        exchange.send_headers(headers)
        started = True
        return write

    def write(data: bytes) -> None:
        if not started:
            raise AssertionError("write() before start_response")
        exchange.send_body(data)
        exchange.flush()

    result = app(environ_of(exchange, multiprocess), start_response)
    try:
        whole = isinstance(result, (list, tuple))
        for data in result:
            if not started:
                raise AssertionError("the application yielded body before start_response")
            if data:
                exchange.send_body(data)
                if not whole:
                    exchange.flush()
        if not started:
            raise AssertionError("the application returned without calling start_response")
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
