"""SignalHandlingMixin: what the server does on TERM, INT, QUIT and HUP, and the HUP restart.

Rules of this module (behaviour: spec/netserver.md section 6):

* The OS-level handlers only queue the signal's name (:class:`gnetserver.signals.SignalQueue`);
  every ``handle_<name>`` here runs later, in the greenlet of the server's loop (or of
  server_close while it drains), so it may log and touch server state freely.
* A handler never closes anything itself: it sets the stop request (and, for HUP, the
  ``restarting`` flag); server_close does the closing, in one place. TERM and INT stop at once
  (no drain), QUIT drains for ``graceful_timeout``, HUP drains then re-executes the server
  keeping its listening sockets (:mod:`gnetserver.restart`).
* While server_close drains, only TERM and INT act (they cut the drain short); other signals
  are logged and ignored.
* The restart hooks (``restart_open_hook``, ``restart_close_hook``) are empty, for users; the
  lifecycle calls them (``bind`` in the new image, ``server_close`` in the old one).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import gevent

from . import config, signals
from .errors import ConfigError
from .options import Option, table

if TYPE_CHECKING:
    from gevent.event import Event
    from gevent.pool import Pool

    from .tls import TLSContexts


class SignalHandlingMixin:
    """The signal steps of :class:`~gnetserver.server.GServer`: ``register_signals``,
    ``dispatch_signals``, ``handle_term``/``int``/``quit``/``hup``, and the restart hooks."""

    #: True once a HUP asked for a re-exec: server_close hands the sockets to the new image
    #: (the exec never returns, so the pid file stays).
    restarting: bool = False
    #: The queue the signal handlers fill (main thread only; set by register_signals).
    _signal_queue: signals.SignalQueue | None = None

    if TYPE_CHECKING:  # provided by the server class
        _pool: Pool | None
        _stop_requested: Event
        _stop_timeout: float | None
        conf: dict[str, Any]
        tls_contexts: TLSContexts | None

        def options(self) -> list[Option]: ...

        def log(self, level: int, message: str) -> None: ...
        def reopen_logs(self) -> None: ...

    def register_signals(self) -> None:
        """Framework step (in post_bind): set up Net::Server's signals (spec 6.1): TERM and INT
        stop at once, QUIT stops gracefully, HUP re-executes the server keeping its sockets.

        The handlers only queue the signal; ``loop`` installs them when it starts (so a
        server embedded with ``start`` leaves the program's signals alone) and runs
        ``handle_<name>`` in its own greenlet. Only the main thread may install handlers:
        elsewhere (a ServerThread) this is a no-op, logged at level 4.
        """
        if not signals.in_main_thread():
            self.log(4, "Not in the main thread: signal handlers not installed")
            return
        self._signal_queue = signals.SignalQueue()

    def dispatch_signals(self, names: Sequence[str]) -> None:
        """Framework step (in loop): call ``handle_<name>`` for each queued signal, in order."""
        for name in names:
            handler = getattr(self, f"handle_{name.lower()}", None)
            if handler is None:
                self.log(2, f"Received a SIG {name}: no handle_{name.lower()}, ignored")
            else:
                handler()

    def handle_term(self) -> None:
        """SIGTERM (run by the loop, not the OS handler): stop at once, in-flight connections
        are cut (a HUP restart in progress is abandoned)."""
        self.log(2, "Received a SIG TERM: stopping now")
        self._stop_now()

    def handle_int(self) -> None:
        """SIGINT (run by the loop): like TERM, stop at once."""
        self.log(2, "Received a SIG INT: stopping now")
        self._stop_now()

    def handle_quit(self) -> None:
        """SIGQUIT (run by the loop): stop accepting; in-flight connections get
        ``graceful_timeout`` seconds to finish, then they are cut and the server exits."""
        self.log(2, "Received a SIG QUIT: stopping after in-flight connections finish")
        self._stop_requested.set()

    def handle_hup(self) -> None:
        """SIGHUP (run by the loop): re-execute the server in place, keeping its listening
        sockets (Net::Server's ``BOUND_SOCKETS``), so that the conf file, certificates and code
        are read again with no connection refused. In-flight connections get
        ``graceful_timeout`` to finish first; the pid and the pid file stay. Log files are
        reopened at once (logrotate)."""
        self.log(2, "Received a SIG HUP: restarting in place")
        self.reopen_logs()  # messages until the exec go to the new file
        problem = self.restart_problem()
        if problem is not None:
            self.log(1, f"HUP ignored, still serving with the current configuration: {problem}")
            return
        self.restarting = True
        self._stop_requested.set()

    def restart_problem(self) -> str | None:
        """What would make the re-executed server fail to start, found before exec: the conf
        file must parse and every TLS context must build from the files now on disk (a
        renewed certificate with the wrong key must not take the server down). None if none.
        """
        try:
            conf_file = self.conf.get("conf_file")
            if conf_file:
                config.from_conf_file(conf_file, table(self.options()))
            if self.tls_contexts is not None:
                self.tls_contexts.check()
        except ConfigError as exc:
            return str(exc)
        return None

    def restart_open_hook(self) -> None:
        """Hook: in the re-executed server after a HUP, in bind, before the inherited sockets
        are adopted (options are read; nothing is bound yet)."""

    def restart_close_hook(self) -> None:
        """Hook: on HUP, in server_close, after connections finished and right before the exec
        (the listening sockets are still open, handed to the new image)."""

    def _stop_now(self) -> None:
        self._stop_timeout = 0
        self.restarting = False
        self._stop_requested.set()

    def _drain(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the connection pool to empty. A TERM or INT
        received meanwhile ends the wait at once; other signals are ignored while closing."""
        assert self._pool is not None
        if timeout <= 0 or not len(self._pool):
            return
        self.log(2, f"Waiting up to {timeout:g}s for {len(self._pool)} connection(s) to finish")
        queue = self._signal_queue
        waiter = gevent.spawn(self._pool.join)
        wake = [waiter] + ([queue.event] if queue is not None else [])
        with gevent.Timeout(timeout, False):
            while not waiter.dead:
                gevent.wait(wake, count=1)
                if queue is not None and self._signals_while_closing(queue.pop_all()):
                    break
        waiter.kill()

    def _signals_while_closing(self, names: Sequence[str]) -> bool:
        """True when one of ``names`` is TERM or INT (handled: stop now)."""
        cut = False
        for name in names:
            if name in ("TERM", "INT"):
                self.dispatch_signals([name])
                cut = True
            else:
                self.log(2, f"Received a SIG {name} while closing: ignored")
        return cut
