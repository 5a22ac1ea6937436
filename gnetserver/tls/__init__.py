"""TLS for gnetserver: pyOpenSSL contexts built from IO::Socket::SSL options, driven by gevent.

* :func:`build_context` turns one port's ``SSL_*`` options into an ``OpenSSL.SSL.Context``
  (:data:`SUPPORTED_SSL_OPTIONS` lists the names it accepts).
* :class:`TLSConnection` runs the server side of one connection cooperatively over a gevent
  socket: handshake with a deadline, recv/send with timeouts, one-way close_notify.
* :func:`make_self_signed` / :func:`fingerprint_sha256` give an in-memory certificate for
  development and tests.
"""

from .connection import TLSConnection, describe_ssl_error
from .context import DEFAULT_CIPHER_LIST, SUPPORTED_SSL_OPTIONS, build_context, parse_ssl_version
from .selfsigned import fingerprint_sha256, make_self_signed

__all__ = [
    "DEFAULT_CIPHER_LIST",
    "SUPPORTED_SSL_OPTIONS",
    "TLSConnection",
    "build_context",
    "describe_ssl_error",
    "fingerprint_sha256",
    "make_self_signed",
    "parse_ssl_version",
]
