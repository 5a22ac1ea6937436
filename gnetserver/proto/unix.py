"""UNIX-domain stream sockets: TCP's behaviour, plus the socket file's lifetime.

Datagram unix sockets (proto unixdgram, ``unix_type`` sock_dgram) never get here: the server
refuses them in ``pre_bind`` (:attr:`~gnetserver.ports.PortSpec.is_datagram`).
"""

from __future__ import annotations

import os
import stat
from typing import TYPE_CHECKING, ClassVar

from .tcp import TCPProtocol

if TYPE_CHECKING:
    from ..client import Client
    from ..listener import Listener


class UnixProtocol(TCPProtocol):
    """A stream over a UNIX-domain socket; the socket file is removed when the port closes.

    Like tcp, it refuses ``SSL_*`` options at bind.
    """

    name: ClassVar[str] = "unix"

    def post_accept(self, client: Client, timeout: float) -> None:
        """Nothing to negotiate, and no Nagle on a unix socket."""

    def close_listener(self, listener: Listener) -> None:
        """Close the socket and remove its file (only if it is still a socket)."""
        path = listener.address.sockaddr
        listener.sock.close()
        try:
            if isinstance(path, str) and path and stat.S_ISSOCK(os.lstat(path).st_mode):
                os.unlink(path)
        except OSError:
            pass  # already gone: nothing to clean up
