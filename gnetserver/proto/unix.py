"""UNIX-domain stream sockets: TCP's behaviour, plus the socket file's lifetime."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from .tcp import TCPProtocol


class UnixProtocol(TCPProtocol):
    """A stream over a UNIX-domain socket; the socket file is removed when the port closes."""

    name = "unix"

    def __init__(self, spec: Any, options: Mapping[str, Any], server: Any) -> None:
        """Refuse what a unix stream port cannot do (TLS options, datagram sockets)."""
        super().__init__(spec, options, server)
        if options.get("unix_type") == "sock_dgram":
            raise ConfigError(f"port {spec}: datagram unix sockets are not supported")

    def post_accept(self, client: Any, timeout: float) -> None:
        """Nothing to negotiate, and no Nagle on a unix socket."""

    def close_listener(self, listener: Any) -> None:
        """Close the socket and remove its file (only if it is still a socket)."""
        path = listener.address.sockaddr
        listener.sock.close()
        try:
            if isinstance(path, str) and path and stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass  # already gone: nothing to clean up
