"""Reading a PROXY header off an accepted socket: exactly the header, within one deadline.

Rules of this module (behaviour: spec/fleet.md section 1.3):

* The header is read from the raw accepted socket before anything else, TLS included: OpenSSL
  then reads the ClientHello from the socket itself, so no byte past the header may be
  consumed. Each round peeks (``MSG_PEEK``) at what has arrived, asks the pure parser
  (:func:`gnetserver.proxyproto.measure`) how long the header is, and then receives exactly
  that many bytes; while the length is not known yet, every byte peeked is header, so it is
  consumed and the next peek waits for more (a second peek without consuming would return at
  once and spin).
* One deadline (``timeout_proxy_header``) covers the whole header, however slowly it comes.
* It knows neither the server nor the client: the server calls :func:`read_header` with the
  socket and the port's :class:`~gnetserver.proxyproto.ProxySettings`.
"""

from __future__ import annotations

import socket
import time
from typing import Any

from .proxyproto import V1_MAX_LENGTH, ProxyHeader, ProxyHeaderError, measure, parse

__all__ = ["ProxyHeaderError", "ProxyHeaderTimeout", "read_header"]


class ProxyHeaderTimeout(ProxyHeaderError):
    """The whole header did not arrive within ``timeout_proxy_header``."""


def read_header(sock: Any, mode: str, timeout: float) -> ProxyHeader:
    """Read one PROXY header of a version ``mode`` takes from ``sock`` (a gevent socket),
    consuming exactly its bytes, within ``timeout`` seconds in all; the socket's own timeout
    is put back afterwards.

    Raises :class:`~gnetserver.proxyproto.ProxyHeaderError` for a header that must not be
    accepted, the end of the stream before the header's end ("truncated"), and
    :class:`ProxyHeaderTimeout` when the deadline passes; OSError (a reset) passes through."""
    deadline = time.monotonic() + timeout
    saved = sock.gettimeout()
    buf = bytearray()
    total: int | None = None
    try:
        while total is None:  # the length is not known yet: every byte peeked is header
            _until(sock, deadline, len(buf))
            # Less than V1_MAX_LENGTH is buffered here (measure refuses more without a CRLF).
            peeked = sock.recv(V1_MAX_LENGTH - len(buf), socket.MSG_PEEK)
            if not peeked:
                raise _truncated(buf)
            total = measure(bytes(buf) + peeked, mode)
            take = len(peeked) if total is None else min(len(peeked), total - len(buf))
            buf += sock.recv(take)  # peeked bytes are there already: this does not wait
        while len(buf) < total:  # the rest of a header whose length is known
            _until(sock, deadline, len(buf))
            chunk = sock.recv(total - len(buf))
            if not chunk:
                raise _truncated(buf)
            buf += chunk
        return parse(bytes(buf), mode)
    except TimeoutError:
        raise ProxyHeaderTimeout(f"no complete PROXY header within timeout_proxy_header "
                                 f"({timeout:g} s; {len(buf)} bytes received)") from None
    finally:
        sock.settimeout(saved)


def _until(sock: Any, deadline: float, have: int) -> None:
    """Set the socket's timeout to what is left of the deadline; past it, raise."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{have} bytes received")
    sock.settimeout(left)


def _truncated(buf: bytearray) -> ProxyHeaderError:
    return ProxyHeaderError(f"truncated PROXY header: the peer closed after {len(buf)} bytes")
