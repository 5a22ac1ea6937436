"""UNIX-domain stream sockets: TCP's behaviour, plus the socket file's lifetime.

Datagram unix sockets (proto unixdgram, ``unix_type`` sock_dgram) are
:class:`~gnetserver.proto.datagram.UnixDatagramProtocol`'s.
"""

from __future__ import annotations

import os
import stat
from typing import Any, ClassVar

from .stream import PlainStream, Stream
from .tcp import TCPProtocol


class UnixProtocol(TCPProtocol):
    """A stream over a UNIX-domain socket; the socket file is removed when the port closes.

    Like tcp, it refuses ``SSL_*`` options at bind.
    """

    name: ClassVar[str] = "unix"

    def post_accept(self, sock: Any, timeout: float) -> Stream:
        """Per connection: nothing to negotiate, and no Nagle on a unix socket."""
        return PlainStream(sock)

    def close_listener(self, sock: Any) -> None:
        """Close the listening socket and remove its file, the port spec's path (only if it is
        still a socket); idempotent."""
        sock.close()
        remove_socket_file(str(self.spec.port))


def remove_socket_file(path: str) -> None:
    """Remove the socket file at ``path`` if it is still a socket; never raises."""
    try:
        if path and stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    except OSError:
        pass  # already gone: nothing to clean up
