"""What a server left behind after a test: listening sockets, socket descriptors, greenlets.

The autouse fixture ``no_server_leftovers`` (tests/conftest.py) records every GServer built
during a test and, after the test, waits (bounded) until each started one is fully gone:

- every listener's socket is closed (``listener.sock.fileno() == -1``);
- the process's socket descriptors (``/proc/self/fd`` entries reading ``socket:[inode]``) are
  the ones it had before the test (new ones the test opened and closed do not count; one that
  the test opened and still holds does);
- no live gevent greenlet belongs to the server: the live ones ``server.personality.greenlets()``
  lists, when the server has a personality, and any not-dead Greenlet whose function, arguments
  or suspended frames refer to the server, its personality, its ACME manager or one of its
  clients.

Only public names of the server are read. Subprocess servers are out of scope (their
descriptors are another process's).
"""

from __future__ import annotations

import functools
import gc
import itertools
import os
import time
import types
from collections.abc import Iterable, Iterator
from typing import Any

import gevent

from gnetserver.lifecycle import State

#: How long leftovers get to go away once the test is over (closing runs in server threads).
SETTLE_SECONDS = 3.0


def socket_descriptors() -> dict[int, str]:
    """This process's open socket descriptors: fd -> 'socket:[inode]'."""
    found = {}
    for name in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # closed meanwhile (or the listing's own descriptor)
            continue
        if target.startswith("socket:"):
            found[int(name)] = target
    return found


def started(server: Any) -> bool:
    """True once the server was started (its lifecycle left IDLE), or bound a port."""
    try:
        return bool(server.listeners) or server.lifecycle.state is not State.IDLE
    except Exception:  # an object half built by a failing constructor
        return False


def open_listeners(server: Any) -> list[str]:
    return [str(listener) for listener in server.listeners if listener.sock.fileno() != -1]


def _owners(server: Any) -> list[Any]:
    """The server and the collaborators that run greenlets of their own."""
    helpers = (server.personality, getattr(server, "acme", None))  # acme: ordering greenlets
    return [server, *(helper for helper in helpers if helper is not None)]


def _refers_to(value: Any, owners: list[Any], depth: int = 3) -> bool:
    """True if ``value`` is one of ``owners`` or leads to one: through a partial, a bound
    method, a tuple/list, or an object whose ``server`` attribute is the server (a Client)."""
    if any(value is owner for owner in owners):
        return True
    if depth == 0:
        return False
    if getattr(value, "server", None) is owners[0] and not isinstance(value, type):
        return True
    children: Iterable[Any]
    if isinstance(value, functools.partial):
        children = (value.func, *value.args, *value.keywords.values())
    elif isinstance(value, types.MethodType):
        children = (value.__self__,)
    elif isinstance(value, (tuple, list)):
        children = value
    else:
        return False
    return any(_refers_to(child, owners, depth - 1) for child in children)


def _frames(glet: Any) -> Iterator[types.FrameType]:
    frame = glet.gr_frame  # None unless suspended
    while frame is not None:
        yield frame
        frame = frame.f_back


def _belongs(glet: gevent.Greenlet, owners: list[Any]) -> bool:
    roots = [getattr(glet, "_run", None), *glet.args, *glet.kwargs.values()]
    if any(_refers_to(root, owners) for root in roots):
        return True
    return any(_refers_to(value, owners, 1)
               for frame in _frames(glet) for value in frame.f_locals.values())


def _greenlet_classes() -> set[type]:
    classes, todo = set(), [gevent.Greenlet]
    while todo:
        cls = todo.pop()
        classes.add(cls)
        todo.extend(cls.__subclasses__())
    return classes


def all_live_greenlets() -> list[gevent.Greenlet]:
    """Every gevent Greenlet of the process (any thread) that is not dead."""
    objects = gc.get_objects()
    is_greenlet = map(_greenlet_classes().__contains__, map(type, objects))  # C-speed filter
    return [glet for glet in itertools.compress(objects, is_greenlet) if not glet.dead]


def live_greenlets(server: Any, candidates: list[gevent.Greenlet]) -> list[gevent.Greenlet]:
    """The greenlets among ``candidates`` (and the personality's own list) of ``server``."""
    owners = _owners(server)
    found: dict[int, gevent.Greenlet] = {}
    if server.personality is not None:  # the personality's own list
        found.update((id(g), g) for g in server.personality.greenlets() if not g.dead)
    found.update((id(g), g) for g in candidates if _belongs(g, owners))
    return list(found.values())


def leftovers(servers: list[Any], sockets_before: dict[int, str]) -> list[str]:
    """Descriptions of what is left now (empty: nothing)."""
    found = []
    for server in servers:
        for listener in open_listeners(server):
            found.append(f"{type(server).__name__}: listener still open: {listener}")
    opened = new_sockets(sockets_before)
    if opened:
        gc.collect()  # sockets only garbage keeps open are not leaks of the server
        opened = new_sockets(sockets_before)
    for fd, target in opened:
        found.append(f"socket descriptor {fd} ({target}) opened during the test is open")
    candidates = all_live_greenlets()
    for server in servers:
        for glet in live_greenlets(server, candidates):
            found.append(f"{type(server).__name__}: greenlet still alive: {glet!r}")
    return found


def new_sockets(before: dict[int, str]) -> list[tuple[int, str]]:
    return [(fd, target) for fd, target in sorted(socket_descriptors().items())
            if before.get(fd) != target]


def wait_for_no_leftovers(servers: list[Any], sockets_before: dict[int, str],
                          timeout: float = SETTLE_SECONDS) -> list[str]:
    """Poll (backing off) until nothing is left or ``timeout`` runs out; what is left."""
    deadline = time.monotonic() + timeout
    interval = 0.005  # nothing to wait on: closing ends in the servers' own threads and hubs
    while True:
        found = leftovers(servers, sockets_before)
        if not found or time.monotonic() >= deadline:
            return found
        # gevent.sleep: a server started in this thread's hub goes on closing meanwhile.
        gevent.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        interval = min(interval * 2, 0.2)
