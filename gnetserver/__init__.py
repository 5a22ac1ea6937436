"""gnetserver: Perl's Net::Server rebuilt for Python on gevent, with TLS first.

The public names are loaded lazily, so ``import gnetserver`` imports neither gevent nor
OpenSSL: a program (or ``gnetserver --monkey-patch``) can still monkey-patch first.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "GServer": "gnetserver.server",
    "Client": "gnetserver.client",
    "Listener": "gnetserver.listener",
    "Conf": "gnetserver.conf",
    "Option": "gnetserver.options",
    "OPTIONS": "gnetserver.options",
    "PortSpec": "gnetserver.ports",
    "parse_ports": "gnetserver.ports",
    "GNetServerError": "gnetserver.errors",
    "ConfigError": "gnetserver.errors",
    "TLSError": "gnetserver.errors",
    "HandshakeTimeout": "gnetserver.errors",
    "LineTooLong": "gnetserver.errors",
    "SessionWaitTimeout": "gnetserver.errors",
}

__all__ = [
    "OPTIONS", "Client", "Conf", "ConfigError", "GNetServerError", "GServer", "HandshakeTimeout",
    "LineTooLong", "Listener", "Option", "PortSpec", "SessionWaitTimeout", "TLSError",
    "__version__", "parse_ports",
]

if TYPE_CHECKING:
    from .client import Client
    from .conf import Conf
    from .errors import (
        ConfigError,
        GNetServerError,
        HandshakeTimeout,
        LineTooLong,
        SessionWaitTimeout,
        TLSError,
    )
    from .listener import Listener
    from .options import OPTIONS, Option
    from .ports import PortSpec, parse_ports
    from .server import GServer


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'gnetserver' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
