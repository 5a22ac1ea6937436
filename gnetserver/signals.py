"""Signals, Net::Server style, over gevent: the handler only queues, the server loop acts.

Rules of this module:

* The OS-level handler (a gevent signal watcher, run by the hub) does one thing: append the
  signal's name to a queue and wake whoever waits on :attr:`SignalQueue.event`. No logging,
  no I/O, no server state is touched there (Net::Server's "safe signals").
* The server's loop waits on that event, takes the names with :meth:`SignalQueue.pop_all` and
  calls ``handle_<name>`` (``handle_term``, ``handle_hup``...) in its own greenlet.
* Only the main thread may install handlers (a Python and a libev rule). Elsewhere
  :meth:`SignalQueue.install` does nothing and says so, so servers run in threads (tests,
  embedding) leave the process's signals alone.
* :meth:`SignalQueue.uninstall` puts back the handlers that were there before.

Net::Server's table (spec 6.1) for a single-process server: TERM and INT stop at once, QUIT
stops gracefully (in-flight connections get ``graceful_timeout``), HUP re-executes the server
keeping its listening sockets (:mod:`gnetserver.restart`). PIPE stays ignored (Python's
default), so a peer that vanishes makes a write fail with EPIPE instead of killing us.
"""

from __future__ import annotations

import functools
import signal
import threading
from collections import deque
from typing import Any

import gevent
from gevent.event import Event

#: The signals a server handles, in Net::Server's names (``SIG`` prefix dropped).
SIGNALS: tuple[str, ...] = ("TERM", "INT", "QUIT", "HUP")

#: The signals a supervising parent (the PreFork personality) queues on top of
#: :data:`SIGNALS`: a worker ended (CHLD), add a worker (TTIN), remove one (TTOU).
SUPERVISOR_SIGNALS: tuple[str, ...] = ("CHLD", "TTIN", "TTOU")

#: Signals installed with a plain ``signal.signal`` handler instead of a gevent watcher:
#: gevent's libev loop keeps SIGCHLD for its own child watchers, and a ``gevent.signal_handler``
#: for it never fires (checked with gevent 26.9). The plain handler runs in the hub's thread
#: between two bytecodes (it interrupts the hub's wait), and does the same one thing: queue.
_PLAIN = frozenset({"CHLD"})


def in_main_thread() -> bool:
    """True when the caller runs in the main thread (the only one that may install handlers)."""
    return threading.current_thread() is threading.main_thread()


class SignalQueue:
    """Names of received signals, waiting for the server loop.

    Attributes:
        event: set while names are queued; the loop waits on it.

    Resource handling:
        :meth:`install` creates gevent signal watchers; :meth:`uninstall` cancels them and
        restores the previous handlers. Both are idempotent.
    """

    def __init__(self, names: tuple[str, ...] = SIGNALS) -> None:
        self.names = names
        self.event = Event()
        self._queued: deque[str] = deque()
        self._watchers: list[Any] = []
        self._previous: dict[int, Any] = {}

    @property
    def installed(self) -> bool:
        """True while the handlers are installed."""
        return bool(self._watchers)

    def install(self) -> bool:
        """Install a queueing handler for every name; False (nothing done) off the main thread."""
        if self.installed:
            return True
        if not in_main_thread():
            return False
        for name in self.names:
            signum = getattr(signal, f"SIG{name}")
            self._previous[signum] = signal.getsignal(signum)
            if name in _PLAIN:
                signal.signal(signum, functools.partial(self._plain, name))
                self._watchers.append(_Plain())
            else:
                self._watchers.append(gevent.signal_handler(signum, self.queue, name))
        return True

    def _plain(self, name: str, signum: int, frame: Any) -> None:
        """The plain handler of a :data:`_PLAIN` signal: queue it, nothing else."""
        self.queue(name)

    def uninstall(self) -> None:
        """Cancel the handlers and put back the ones found at install (main thread only)."""
        watchers, self._watchers = self._watchers, []
        for watcher in watchers:
            watcher.cancel()
        previous, self._previous = self._previous, {}
        if not in_main_thread():
            return
        for signum, handler in previous.items():
            if handler is not None:  # None: set from C, cannot be restored from Python
                signal.signal(signum, handler)

    def queue(self, name: str) -> None:
        """The signal handler: remember ``name`` and wake the loop. Nothing else."""
        self._queued.append(name)
        self.event.set()

    def pop_all(self) -> list[str]:
        """Take every queued name, oldest first, and clear :attr:`event`."""
        names = list(self._queued)
        self._queued.clear()
        self.event.clear()
        return names


class _Plain:
    """Stands for a plain handler in the watcher list: uninstall restores the previous
    handler, so cancelling it has nothing to do."""

    def cancel(self) -> None:
        """Nothing: :meth:`SignalQueue.uninstall` puts the previous handler back."""
