"""The HTTP-01 responder (RFC 8555 section 8.3): ``GET /.well-known/acme-challenge/<token>``.

A minimal HTTP/1.x server of its own (a gevent ``StreamServer`` on ``SSL_acme_http_listen``),
bound at the server's bind (port 80 needs the start's privileges) and answering while the
server serves: the key authorization of a pending token (200, application/octet-stream as in
RFC 8555 section 8.3, like the HTTP personality's answer), 404 for anything else. One request
per connection, the request head read within 10 seconds and at most 8 KiB; then
``Connection: close``.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import gevent
import gevent.socket
from gevent.server import StreamServer

from ..acme_plan import HTTP01_PREFIX as PREFIX

__all__ = ["Http01Responder"]

_HEAD_LIMIT = 8192
_TIMEOUT = 10.0


class Http01Responder:
    """Answers the CA's HTTP-01 requests for the tokens added (see the module docstring).

    Args:
        where: (host, port); host '' = every address (IPv4 and IPv6 where possible).
        log: the server's log.
        lookup: the key authorization of a token, or None (default: the tokens added here).
    """

    def __init__(self, where: tuple[str, int], log: Callable[[int, str], None],
                 lookup: Callable[[str], str | None] | None = None) -> None:
        self.where = where
        self._log = log
        self._tokens: dict[str, str] = {}
        self._lookup = self._tokens.get if lookup is None else lookup
        self._sock: gevent.socket.socket | None = None
        self._server: StreamServer | None = None

    def bind(self) -> None:
        """Bind and listen (OSError when the address is taken or privileged)."""
        host, port = self.where
        family = socket.AF_INET6 if ":" in host or not host else socket.AF_INET
        sock = gevent.socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and not host:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            try:
                sock.bind((host or "::", port))
            except OSError:
                if host:
                    raise
                sock.close()  # no IPv6 here: IPv4 only
                sock = gevent.socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(("0.0.0.0", port))
            sock.listen(64)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    @property
    def address(self) -> tuple[str, int]:
        """The bound (host, port)."""
        assert self._sock is not None, "bind() first"
        host, port = self._sock.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> None:
        """Answer requests from now on (in the hub)."""
        if self._sock is not None and self._server is None:
            self._server = StreamServer(self._sock, self._handle)
            self._server.start()
            self._log(2, f"ACME: HTTP-01 responder on {self.where[0] or '*'}:{self.address[1]}")

    def stop(self) -> None:
        """Close the responder (its socket too)."""
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def add(self, token: str, key_authorization: str) -> None:
        """Answer ``token`` with its key authorization from now on."""
        self._tokens[token] = key_authorization

    def remove(self, token: str) -> None:
        """Stop answering ``token``."""
        self._tokens.pop(token, None)

    def _handle(self, sock: Any, address: Any) -> None:
        try:
            with gevent.Timeout(_TIMEOUT, TimeoutError):
                head = b""
                while b"\r\n\r\n" not in head and b"\n\n" not in head:
                    data = sock.recv(4096)
                    if not data:
                        break
                    head += data
                    if len(head) > _HEAD_LIMIT:
                        break
                sock.sendall(self.answer(head))
        except OSError:  # TimeoutError too
            pass  # the CA went away or was too slow: nothing to answer
        finally:
            sock.close()

    def answer(self, head: bytes) -> bytes:
        """The whole HTTP answer to one request head."""
        line = head.split(b"\n", 1)[0].decode("latin-1").strip()
        parts = line.split()
        body, status = b"not found\n", "404 Not Found"
        if len(parts) == 3 and parts[0] in ("GET", "HEAD") and parts[1].startswith(PREFIX):
            found = self._lookup(parts[1][len(PREFIX):])
            if found is not None:
                body, status = found.encode("ascii"), "200 OK"
                self._log(2, f"ACME: HTTP-01 challenge answered for token "
                             f"{parts[1][len(PREFIX):]}")
        elif len(parts) != 3:
            body, status = b"bad request\n", "400 Bad Request"
        kind = "application/octet-stream" if status == "200 OK" else "text/plain"  # RFC 8555 8.3
        text = (f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode("ascii")
        return text + (b"" if parts[:1] == ["HEAD"] else body)
