"""inetd mode (Net::Server::INET): the one connection a super-server hands over.

Rules of this module:

* inetd (``nowait``), ``socat ... EXEC:``, ``systemd-socket-activate --inetd`` and a systemd
  socket unit with ``Accept=yes`` and ``StandardInput=socket`` give the accepted connection
  as standard input and output; a unit with ``Accept=yes`` alone gives it as fd 3
  (``LISTEN_FDS=1`` for this pid). :func:`take_connection` takes that socket (a dup of it)
  and turns it into a :class:`~gnetserver.listener.Listener` whose ``sock`` is the
  *connection*, not a listening socket: the INET personality serves it once.
* Standard input and output are then pointed at ``/dev/null`` (fd 3 is closed), so that a
  stray ``print`` cannot write into the connection (a TLS stream above all): with
  ``tie_client_stdout``, ``print`` reaches the client through the server instead.
* Only sockets: a pipe or a terminal on stdin is a ConfigError naming what to use. A
  listening socket too (that is socket activation: run Single or PreFork).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from .errors import ConfigError
from .listener import Listener
from .ports import PortSpec
from .proto import StreamProtocol
from .resolve import BindAddress

__all__ = ["connection_fd", "peer_of", "take_connection"]

#: The address Net::Server::INET reports for a peer it cannot know (a socketpair from socat).
UNKNOWN_PEER = ("0.0.0.0", 0)


def connection_fd(environ: Mapping[str, str]) -> int:
    """The descriptor of the connection: 3 when systemd passed one socket to this very
    process (``LISTEN_PID``/``LISTEN_FDS=1``: ``Accept=yes``), else 0 (standard input)."""
    if environ.get("LISTEN_FDS") == "1" and environ.get("LISTEN_PID") == str(os.getpid()):
        return 3
    return 0


def take_connection(spec: PortSpec, protocol: StreamProtocol,
                    environ: Mapping[str, str]) -> Listener:
    """The connection given to this process, as a listener for ``spec`` (served with
    ``protocol``). ConfigError when there is no connected socket there."""
    fd = connection_fd(environ)
    where = "standard input" if fd == 0 else "fd 3 (LISTEN_FDS)"
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError as exc:
        raise ConfigError(f"server_type INET: {where} is not a socket ({exc.strerror}): run "
                          "the server under inetd, socat (EXEC:) or systemd-socket-activate "
                          "--inetd, which give it the accepted connection") from None
    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.close()
        raise ConfigError(f"server_type INET: {where} is a listening socket, not a "
                          "connection: that is socket activation (use server_type Single or "
                          "PreFork), or give the unit Accept=yes")
    _release(fd)
    sockaddr = sock.getsockname() if sock.family != socket.AF_UNIX else "stdin"
    address = BindAddress(spec, sock.family, sockaddr or "stdin", None, passed=True)
    return Listener(spec, address, sock, protocol)


def peer_of(sock: socket.socket) -> tuple[str, int]:
    """The peer's ``(address, port)`` of a connection; Net::Server::INET's ``0.0.0.0``, 0 when
    it has none (a socketpair from socat)."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        try:
            name = sock.getpeername()
            return (str(name[0]), int(name[1]))
        except OSError:
            pass
    return UNKNOWN_PEER


def _release(fd: int) -> None:
    """Let go of the descriptors the connection came on (see the module rules)."""
    if fd == 3:
        os.close(3)
        return
    null = os.open(os.devnull, os.O_RDWR)
    try:
        os.dup2(null, 0)
        os.dup2(null, 1)
    finally:
        os.close(null)
