"""The exceptions gnetserver raises to its users.

Every error that stops a server at start is a :class:`ConfigError` whose message names the
option (or port) and the offending value; errors of a single connection are :class:`TLSError`
(or plain ``OSError``/``TimeoutError``) and never escape the connection's greenlet.
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
