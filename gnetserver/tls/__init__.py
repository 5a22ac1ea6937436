"""TLS for gnetserver: pyOpenSSL contexts built from IO::Socket::SSL options, driven by gevent.

* :func:`build_context` turns one port's ``SSL_*`` options into an ``OpenSSL.SSL.Context``
  (:data:`SUPPORTED_SSL_OPTIONS` lists the names it accepts, :data:`REFUSED_SSL_OPTIONS` the
  IO::Socket::SSL names it cannot honour and why). The modules behind it: :mod:`.negotiation`
  (versions, ciphers, groups, DH, ALPN), :mod:`.certs`, :mod:`.sni`, :mod:`.ocsp`,
  :mod:`.verify` (client certificates, CRLs), :mod:`.tickets` (resumption).
* :class:`TLSContexts` holds a server's contexts: ports with equal options share one (sessions
  resume across them), ``reload()`` rebuilds them all or none.
* :class:`TLSConnection` runs the server side of one connection cooperatively over a gevent
  socket: handshake with a deadline, recv/send with timeouts, one-way close_notify, and the facts
  handlers read (version, cipher, SNI name, ALPN, resumption, peer certificate).
* :func:`make_self_signed` / :func:`fingerprint_sha256` give an in-memory certificate for
  development and tests.
"""

from .connection import TLSConnection, describe_ssl_error
from .context import (
    DEFAULT_CIPHER_LIST,
    REFUSED_SSL_OPTIONS,
    SUPPORTED_SSL_OPTIONS,
    build_context,
    parse_ssl_version,
)
from .registry import ContextHandle, TLSContexts
from .selfsigned import fingerprint_sha256, make_self_signed
from .util import tls_library_versions

__all__ = [
    "DEFAULT_CIPHER_LIST",
    "REFUSED_SSL_OPTIONS",
    "SUPPORTED_SSL_OPTIONS",
    "ContextHandle",
    "TLSConnection",
    "TLSContexts",
    "build_context",
    "describe_ssl_error",
    "fingerprint_sha256",
    "make_self_signed",
    "parse_ssl_version",
    "tls_library_versions",
]
