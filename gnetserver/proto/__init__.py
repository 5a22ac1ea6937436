"""Protocols: one module each, behind one small interface (see :mod:`gnetserver.proto.tcp`).

``PROTOCOLS`` maps a port spec's proto name to the class that serves it.
"""

from __future__ import annotations

from .ssl import SSLProtocol
from .ssleay import SSLeayProtocol
from .tcp import TCPProtocol
from .unix import UnixProtocol

PROTOCOLS: dict[str, type[TCPProtocol]] = {
    "tcp": TCPProtocol,
    "ssl": SSLProtocol,
    "ssleay": SSLeayProtocol,
    "unix": UnixProtocol,
}

__all__ = ["PROTOCOLS", "SSLProtocol", "SSLeayProtocol", "TCPProtocol", "UnixProtocol"]
