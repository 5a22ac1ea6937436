"""Personalities: how connections are accepted and by which processes (Net::Server's
``server_type``).

Rules of this package:

* A personality owns the loop: it starts accepting on the listeners the server bound, runs each
  accepted connection through the server's ``handle`` callable (the hooks, in the server's
  order), and waits in its loop until the server's :class:`~gnetserver.lifecycle.Lifecycle`
  says stop. It knows nothing of hooks, protocols or TLS: the server hands it listeners and
  one callable, and it hands back connection counts (:class:`~gnetserver.lifecycle.Connections`).
* :data:`PERSONALITIES` maps a ``server_type`` name to its class. ``Single`` (one process, one
  gevent hub, a greenlet per connection) is the default; ``PreFork`` (:mod:`.prefork`: a
  supervising parent, forked workers each running a Single over the inherited listeners)
  plugs in here without touching hooks, protocols or TLS: what it needs of the server comes
  as :class:`ProcessHooks`, and the signals it handles itself through
  :meth:`Personality.handle_signal`. ``INET`` (:mod:`.inet`, Net::Server::INET) serves the
  one connection inetd gave on stdin/stdout, then stops.
* The connection budget is the personality's (it owns accepting): at most ``max_servers``
  sessions and ``max_handshakes`` pending connections on top. A pending connection still in
  its handshake may be evicted (:class:`Evicted` is thrown into its greenlet) to make room for
  a new one, and the wait for a session slot is bounded (``timeout_session_wait``:
  :class:`~gnetserver.errors.SessionWaitTimeout`); see :mod:`.pending`. The server only
  enters :meth:`Personality.session_slot` and handles those two exceptions.
* Nothing here imports the server or the client: a personality sees listeners and greenlets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any, ClassVar, Protocol

from ..conf import Conf
from ..lifecycle import Connections, Dispatch, Lifecycle
from ..listener import Listener
from .hooks import ProcessHooks
from .inet import Inet
from .pending import Evicted, PendingBudget
from .prefork import PreFork
from .single import Single

#: What a personality calls for each accepted connection: ``handle(listener, sock, address)``,
#: in the connection's own greenlet (the server's ``run_client_connection`` path).
Handle = Callable[[Listener, Any, Any], None]


class Personality(Connections, Protocol):
    """The interface of a personality (see the package rules); the connection counts the
    drain reads come from :class:`~gnetserver.lifecycle.Connections`."""

    #: The ``server_type`` name it answers to.
    name: ClassVar[str]
    #: Signals it handles itself (:meth:`handle_signal`), which the server's process queues on
    #: top of TERM/INT/QUIT/HUP (PreFork: CHLD, TTIN, TTOU).
    signals: ClassVar[tuple[str, ...]]
    #: True when it needs the server's own loop (``run()``) in the main thread: it forks and
    #: supervises (PreFork). Started otherwise, the server serves as Single and says so.
    needs_main_loop: ClassVar[bool]

    @property
    def evictions(self) -> int:
        """Connections evicted from their handshake to make room for newer ones (each got
        :class:`Evicted` in its greenlet)."""
        ...

    @property
    def session_wait_timeouts(self) -> int:
        """Connections that waited ``timeout_session_wait`` for a session slot in vain."""
        ...

    def start(self, listeners: Sequence[Listener], handle: Handle,
              hooks: ProcessHooks | None = None) -> None:
        """Start accepting on ``listeners``; each connection runs ``handle`` in a greenlet
        (of this process, or of a worker process: ``hooks`` are the server's callbacks for
        workers, :class:`ProcessHooks`)."""
        ...

    def handle_signal(self, name: str) -> bool:
        """Called by the server's ``dispatch_signals`` first for each signal: True when the
        personality handled ``name`` itself (the server's ``handle_<name>`` then does not
        run)."""
        ...

    def loop(self, lifecycle: Lifecycle, dispatch: Dispatch) -> None:
        """Serve until ``lifecycle`` says stop, handing signals to ``dispatch``."""
        ...

    def stop_accepting(self, take_queued: bool = False) -> None:
        """Stop accepting; running connections go on (the drain waits for them). With
        ``take_queued`` (the server's last close, when its listeners close for good), the
        connections the kernel already queued are accepted first where the personality
        closes the listeners, so none of them is reset."""
        ...

    def session_slot(self) -> AbstractContextManager[Any]:
        """A context manager held while a connection runs its session (``max_servers``).
        Entering it ends the connection's handshake stage (it can no longer be evicted) and
        waits for a slot at most ``timeout_session_wait`` seconds, then raises
        :class:`~gnetserver.errors.SessionWaitTimeout`. Cheap when a slot is free (no timer)."""
        ...

    def greenlets(self) -> list[Any]:
        """The live greenlets of running connections."""
        ...


#: ``server_type`` name -> personality class, built as ``cls(conf)`` when accepting starts.
PERSONALITIES: dict[str, Callable[[Conf], Personality]] = {Single.name: Single,
                                                          PreFork.name: PreFork,
                                                          Inet.name: Inet}

#: The personality used when no ``server_type`` names a known one.
DEFAULT_PERSONALITY = Single.name


def personality_name(server_types: Sequence[str]) -> str:
    """The first of ``server_types`` (Net::Server's MultiType order) that names a personality
    gnetserver has, else :data:`DEFAULT_PERSONALITY`."""
    return next((name for name in server_types if name in PERSONALITIES), DEFAULT_PERSONALITY)


__all__ = ["DEFAULT_PERSONALITY", "PERSONALITIES", "Evicted", "Handle", "Inet", "PendingBudget",
           "Personality", "PreFork", "ProcessHooks", "Single", "personality_name"]
