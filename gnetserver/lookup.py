"""Reverse and double-reverse lookups of peer addresses that never block other clients.

Rules of this module:

* Every lookup goes through the gevent hub's resolver (``gevent.get_hub().resolver``, by way of
  :func:`gevent.socket.getnameinfo` / :func:`gevent.socket.getaddrinfo`). With gevent's default
  thread-pool resolver the blocking libc call runs in a worker thread while the hub keeps
  serving every other connection; the ``ares`` and ``dnspython`` resolvers are cooperative by
  design. Only the greenlet of the connection being looked up waits.
* Every lookup is bounded by ``timeout`` (default :data:`LOOKUP_SECONDS`): a slow or dead DNS
  server delays that one connection, by at most that much per lookup.
* Failures are not errors: no name, no addresses, a timeout all give ``None``, and the access
  rules decide what that means (spec/netserver.md section 1.6 steps 2 and 4).
"""

from __future__ import annotations

import socket

import gevent
import gevent.socket

from .access import normalise_address

#: Seconds one reverse or forward lookup may take before it counts as "no answer".
LOOKUP_SECONDS = 5.0


def reverse_lookup(address: str, timeout: float = LOOKUP_SECONDS) -> str | None:
    """The host name of ``address`` (``getnameinfo`` with NI_NAMEREQD), or None.

    An IPv4-mapped address (``::ffff:a.b.c.d``) is looked up as the IPv4 address it carries.
    Runs in the calling greenlet; other greenlets keep running while it waits.
    """
    address = normalise_address(address)
    sockaddr: tuple[str, int] | tuple[str, int, int, int]
    sockaddr = (address, 0, 0, 0) if ":" in address else (address, 0)
    timer = gevent.Timeout(timeout)
    try:
        with timer:
            try:
                host, _ = gevent.socket.getnameinfo(sockaddr, socket.NI_NAMEREQD)
            except (OSError, UnicodeError, ValueError):
                return None
            return str(host) or None
    except gevent.Timeout as expired:
        if expired is not timer:  # someone else's timeout: not ours to swallow
            raise
    return None  # timed out


def forward_addresses(host: str, timeout: float = LOOKUP_SECONDS) -> set[str] | None:
    """The addresses ``host`` resolves to (IPv4 and IPv6, IPv4-mapped ones normalised), or None
    when it resolves to nothing in time. Cooperative, like :func:`reverse_lookup`."""
    timer = gevent.Timeout(timeout)
    try:
        with timer:
            try:
                infos = gevent.socket.getaddrinfo(host, None, 0, socket.SOCK_STREAM)
            except (OSError, UnicodeError, ValueError):
                return None
            found = {normalise_address(str(info[4][0]).split("%", 1)[0]) for info in infos}
            return found or None
    except gevent.Timeout as expired:
        if expired is not timer:  # someone else's timeout: not ours to swallow
            raise
    return None  # timed out
