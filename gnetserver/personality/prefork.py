"""The ``PreFork`` personality: a parent that binds and supervises, N forked worker processes
that each serve as a :class:`~.single.Single` over the inherited listening sockets.

Rules of this module (engineering note: spec/prefork.md):

* **The parent** binds every port, builds the TLS contexts and writes the pid file (all done by
  the server before the loop), then forks ``workers`` workers with ``gevent.os.fork_gevent``
  (a fork plus ``gevent.reinit`` in the child; never ``gevent.os.fork``, whose libev child
  watcher would reap our workers first). It forks only from its main greenlet, in its loop,
  at a quiet point: it runs no connection greenlet and holds no TLS connection, so a fork
  copies nothing a worker could misuse. It accepts nothing itself.
* **Accepting:** every worker waits on the same inherited listening sockets (one kernel
  queue per port, as gunicorn's gevent worker does), taking one connection per wake-up
  (``max_accept = 1`` when there are several workers) so that one woken worker does not take
  a burst its idle siblings would serve sooner. Not SO_REUSEPORT: a reuseport socket has its
  own queue, and closing it (a worker stopping, a HUP, a TTOU) resets the connections queued
  on it; with a shared socket the parent holds the queue open and nothing queued is lost
  when a worker goes. A worker whose pool is full stops watching the sockets and the others
  take over. No Net::Server ``serialize`` lock: a blocking lock would stall every connection
  of the worker's hub.
* **TLS:** contexts built in the parent before the fork are copied into every worker with the
  same session-ticket keys, so a ticket one worker issued resumes on any other. This holds
  until something rebuilds a context in one worker only: ``SSL_ticket_key_rotation`` (it
  rotates lazily, per process) and ``reload_tls()`` called in a worker. A HUP rebuilds the
  contexts in the parent (:meth:`handle_signal`), so each generation of workers shares one
  set of keys; a ticket of the previous generation costs one full handshake on a new worker.
* **Supervision:** the parent queues CHLD, TTIN and TTOU on top of the server's signals and
  handles them in its loop (:meth:`handle_signal`): it reaps with ``waitpid(-1, WNOHANG)``
  until nothing is left (after each SIGCHLD, and every second), logs each death with its exit
  status or signal name (level 1 when it was not asked for, level 2 when it was: a QUIT, a
  HUP, ``max_requests``), and replaces a worker that was not asked to stop, backing off
  exponentially (0.1 s doubling to 10 s) while workers keep dying young or failing.
  TTIN adds a worker, TTOU removes one (QUIT: it finishes its sessions), never below one.
* **Stopping** (the server's close runs in the parent): :meth:`stop_accepting` sends QUIT to
  every worker (each accepts what the kernel queued, stops accepting and finishes its
  sessions within ``graceful_timeout``) and closes the parent's copies of the listening
  sockets, so a port refuses connections as soon as its last worker stopped accepting;
  the drain waits for the workers to exit (:meth:`wait_idle`); :meth:`kill_connections` sends
  TERM to those left, then KILL, and reaps them all. TERM and INT to the parent shorten the
  drain to nothing: workers get TERM at once. So the parent exits after its last worker, and
  leaves no zombie.
* **HUP** (the parent): the server reads its configuration again and rebuilds the TLS
  contexts from the certificate files now on disk (``ProcessHooks.reload``, refused with a
  level-1 line when the new configuration would not start); then a new generation of
  workers replaces the old one worker by worker: a new worker is forked first, then one old
  worker gets QUIT and finishes its sessions. The listening sockets stay open in the parent
  throughout, so no connection is refused or cut. The code is not reloaded (it is the
  parent's, copied by fork); changes of ports, user, chroot or log_file need a restart (the
  server says which).
* **A worker** first drops what it inherited of the parent's role: the parent's signal
  handlers (a HUP there would re-exec the whole server from inside a worker), its siblings'
  records. Then: its own signals (TERM/INT: stop now, cutting its connections; QUIT: stop
  accepting and finish within ``graceful_timeout``; HUP: the same, as Net::Server children
  do), ``PR_SET_PDEATHSIG`` (TERM when the parent dies) and a ``getppid`` check every second
  (portable; and PDEATHSIG is lost on some credential changes), its process title,
  ``child_init_hook``; then it serves as a Single. It ends with its drain,
  ``child_finish_hook``, closing its copy of the logs and ``os._exit``: never the server's
  close (the pid file, the listeners and the logs are the parent's), no atexit handler.
  ``stop()`` called in a worker (an ``exit`` command) ends that worker only; the parent
  replaces it.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import gevent
import setproctitle
from gevent.os import fork_gevent

from .. import restart
from ..conf import Conf
from ..lifecycle import Dispatch, Lifecycle
from ..listener import Listener
from ..signals import SIGNALS, SUPERVISOR_SIGNALS
from .hooks import ProcessHooks
from .single import Single

__all__ = ["BOOT_FAILED", "PreFork"]

#: A worker's exit status when it could not start (``child_init_hook`` raised, or an error
#: before it accepted): the parent backs off before the next fork.
BOOT_FAILED = 3

#: Seconds between two rounds of the parent's supervision when nothing happens (a reap in
#: case a SIGCHLD was lost) and between two ``getppid`` checks in a worker.
ROUND = 1.0
#: The back-off after a worker died young or failed: 0.1 s, doubled each time, 10 s at most.
BACKOFF_FIRST, BACKOFF_MAX = 0.1, 10.0
#: A worker that lived less than this (seconds) and was not asked to stop "died young".
YOUNG = 5.0
#: Seconds workers get to exit after TERM in :meth:`PreFork.kill_connections`, before KILL.
TERM_GRACE = 3.0

_PR_SET_NAME = 15


@dataclass
class _Worker:
    """One forked worker, as the parent knows it."""

    pid: int
    generation: int
    started: float
    retiring: bool = False  # the parent sent it QUIT (HUP, TTOU, stopping): a planned exit


class PreFork:
    """A supervising parent and its worker processes (see the module rules).

    Args:
        conf: the server's configuration: ``workers`` processes, each a :class:`Single` of
            ``max_servers`` sessions (plus ``max_handshakes`` pending), ``max_requests``
            connections per worker (0: no limit), ``graceful_timeout`` for a worker's drain.
    """

    name: ClassVar[str] = "PreFork"
    #: The parent queues these on top of the server's TERM/INT/QUIT/HUP.
    signals: ClassVar[tuple[str, ...]] = SUPERVISOR_SIGNALS
    #: Forking and supervising need the server's own loop in the main thread.
    needs_main_loop: ClassVar[bool] = True

    def __init__(self, conf: Conf) -> None:
        self._conf = conf
        self._target = conf.workers
        self._listeners: list[Listener] = []
        self._handle: Callable[[Listener, Any, Any], None] | None = None
        self._hooks = ProcessHooks()
        self._workers: dict[int, _Worker] = {}
        self._generation = 0
        self._stopping = False
        self._failures = 0  # workers in a row that died young or failed to boot
        self._next_fork = 0.0  # monotonic time before which no worker is forked (back-off)
        self._parent_pid = os.getpid()
        self._lifecycle: Lifecycle | None = None
        # -- in a worker only
        self._single: Single | None = None
        self._accepted = 0

    # == what the server and the lifecycle see ====================================================

    @property
    def workers(self) -> list[int]:
        """The pids of the live (not yet reaped) workers; empty in a worker."""
        return list(self._workers)

    @property
    def evictions(self) -> int:
        """In a worker: its evictions (see :class:`Single`); 0 in the parent."""
        return self._single.evictions if self._single is not None else 0

    @property
    def session_wait_timeouts(self) -> int:
        """In a worker: its session-wait timeouts; 0 in the parent."""
        return self._single.session_wait_timeouts if self._single is not None else 0

    def start(self, listeners: Sequence[Listener],
              handle: Callable[[Listener, Any, Any], None],
              hooks: ProcessHooks | None = None) -> None:
        """Remember the listeners, the connection callable and the server's hooks; the
        workers are forked by :meth:`loop` (from the parent's main greenlet)."""
        self._listeners = list(listeners)
        self._handle = handle
        self._hooks = hooks or ProcessHooks()

    def loop(self, lifecycle: Lifecycle, dispatch: Dispatch) -> None:
        """The parent's supervision: fork the workers, then reap, replace, roll and resize
        until a stop is asked for; signals go to ``dispatch`` (the server's, which hands
        CHLD/TTIN/TTOU/HUP back to :meth:`handle_signal`). In a worker this never returns:
        the worker's life ends in ``os._exit``."""
        self._lifecycle = lifecycle
        self._parent_pid = os.getpid()
        while not lifecycle.stop_requested:
            self._supervise()
            lifecycle.wait_for_stop(dispatch, timeout=self._nap())
            self._idle_loop()

    def _idle_loop(self) -> None:
        """The parent's ``idle_loop_hook``, guarded: a failure is logged, supervision goes on."""
        try:
            self._hooks.idle_loop()
        except Exception:
            self._hooks.log(1, f"idle_loop_hook failed: {traceback.format_exc().rstrip()}")

    def stop_accepting(self, take_queued: bool = False) -> None:
        """Parent: QUIT every worker (each stops accepting, finishes its sessions within
        ``graceful_timeout`` and exits), close the parent's copies of the listening sockets
        (so the ports refuse once the workers closed theirs); nothing is forked any more.
        Worker: its Single stops accepting. ``take_queued`` is not used here: a worker
        takes its queued connections itself when it stops (its loop's end)."""
        if self._single is not None:
            self._single.stop_accepting()
            return
        self._stopping = True
        if self._workers:
            self._hooks.log(2, f"Stopping {len(self._workers)} worker(s): "
                               f"{' '.join(map(str, self._workers))}")
        self._send_all(signal.SIGQUIT)
        # The parent's copies of the listening sockets close now (the server's release does
        # nothing more), so each port closes once its last worker stopped accepting (each
        # takes what the kernel queued first). Kept open, the kernel would go on completing
        # connections nobody accepts during the drain, reset them at the end, and a
        # balancer's health check would see the instance up.
        for listener in self._listeners:
            listener.sock.close()

    def handle_signal(self, name: str) -> bool:
        """Parent: CHLD (reap), TTIN/TTOU (one worker more or less) and HUP (reload and
        replace the workers) are the personality's; True when ``name`` was handled here.
        A HUP while stopping goes to the server (which says it is ignored)."""
        if self._single is not None:
            return False
        if name == "CHLD":
            self._reap()
        elif name == "TTIN":
            self._target += 1
            self._hooks.log(2, f"Received a SIG TTIN: workers {self._target}")
        elif name == "TTOU":
            if self._target > 1:
                self._target -= 1
            self._hooks.log(2, f"Received a SIG TTOU: workers {self._target}"
                               f"{'' if self._target > 1 else ' (at least one)'}")
        elif name == "HUP" and not self._stopping:
            self._reload()
        else:
            return False
        return True

    def session_slot(self) -> Any:
        """A worker's session slot (its Single's budget). Connections run in workers only."""
        if self._single is None:
            raise RuntimeError("PreFork: connections are served by workers, not the parent")
        return self._single.session_slot()

    def in_connection(self) -> bool:
        """True in a connection's greenlet (in a worker)."""
        return self._single is not None and self._single.in_connection()

    def active_connections(self) -> int:
        """Worker: its running connections. Parent: its live workers (what its drain waits
        for)."""
        if self._single is not None:
            return self._single.active_connections()
        return len(self._workers)

    def greenlets(self) -> list[Any]:
        """A worker's connection greenlets; none in the parent."""
        return self._single.greenlets() if self._single is not None else []

    def wait_idle(self) -> gevent.Greenlet[[], Any]:
        """Worker: ends once its pool is empty. Parent: ends once every worker was reaped."""
        if self._single is not None:
            return self._single.wait_idle()
        return gevent.spawn(self._wait_workers)

    def kill_connections(self) -> None:
        """Worker: cut its connections. Parent: TERM the workers left, KILL those still there
        after :data:`TERM_GRACE` seconds, and reap them all."""
        if self._single is not None:
            self._single.kill_connections()
            return
        self._stopping = True
        self._send_all(signal.SIGTERM)
        deadline = time.monotonic() + TERM_GRACE
        while self._workers and time.monotonic() < deadline:
            gevent.sleep(0.05)
            self._reap()
        for pid in list(self._workers):
            self._hooks.log(1, f"Worker {pid} did not stop after TERM: killed")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        while self._workers:
            pid, status = _wait_blocking(next(iter(self._workers)))
            self._ended(pid, status)

    # == the parent ==============================================================================

    def _nap(self) -> float:
        """How long the loop may wait for a signal before the next round."""
        if self._rolling() or self._short():
            return max(0.01, min(0.05, self._next_fork - time.monotonic()))
        return ROUND

    def _current(self) -> list[_Worker]:
        """The workers of the current generation that were not asked to stop."""
        return [w for w in self._workers.values()
                if w.generation == self._generation and not w.retiring]

    def _old(self) -> list[_Worker]:
        """The workers of older generations that still accept (not asked to stop yet)."""
        return [w for w in self._workers.values()
                if w.generation < self._generation and not w.retiring]

    def _rolling(self) -> bool:
        return bool(self._old())

    def _short(self) -> bool:
        return len(self._current()) < self._target

    def _supervise(self) -> None:
        """One round: reap; fork the workers missing (one per round while a HUP rolls, all
        at once otherwise, never during a back-off); retire old and surplus workers, never
        more than the new ones that replace them."""
        self._reap()
        if self._stopping:
            return
        forked = 0
        while self._short() and time.monotonic() >= self._next_fork:
            self._fork()  # returns in the parent only
            forked += 1
            if self._rolling():
                break  # one by one: the next round retires an old worker first
        # Old workers go as new ones come: at most `target` accept at any time, at least
        # every new one plus the old ones it does not replace yet.
        for worker in self._old():
            if len(self._current()) + len(self._old()) <= self._target:
                break
            self._retire(worker)
        surplus = len(self._current()) - self._target
        for worker in sorted(self._current(), key=lambda w: w.started)[:max(0, surplus)]:
            self._retire(worker)  # TTOU: the oldest goes
        if forked:
            self._hooks.run_n_children(forked)

    def _retire(self, worker: _Worker) -> None:
        """Ask ``worker`` to finish its sessions and exit (QUIT); it is not replaced."""
        worker.retiring = True
        self._hooks.log(2, f"Worker {worker.pid}: QUIT (finishing its sessions)")
        with contextlib.suppress(ProcessLookupError):
            os.kill(worker.pid, signal.SIGQUIT)

    def _fork(self) -> None:
        """Fork one worker of the current generation. In the child this never returns."""
        pid = fork_gevent()
        if pid == 0:
            self._become_worker()
        self._workers[pid] = _Worker(pid, self._generation, time.monotonic())
        self._hooks.log(2, f"Started worker {pid}")

    def _reap(self) -> None:
        """Collect every ended child (``waitpid(-1, WNOHANG)`` until none is left)."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self._ended(pid, status)

    def _ended(self, pid: int, status: int) -> None:
        """Log a child's end; back off when a worker died young or failed to boot."""
        worker = self._workers.pop(pid, None)
        how = restart.describe(status)
        if worker is not None:
            self._hooks.worker_ended(pid)
        if worker is None:
            self._hooks.log(3, f"Reaped child {pid} ({how})")
            return
        planned = worker.retiring or self._stopping
        clean = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        if planned or clean:
            self._hooks.log(2, f"Worker {pid} {how}")
            self._failures = 0 if clean else self._failures
            return
        young = time.monotonic() - worker.started < YOUNG
        booted = not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == BOOT_FAILED)
        self._failures = self._failures + 1 if young or not booted else 1
        delay = min(BACKOFF_FIRST * 2 ** (self._failures - 1), BACKOFF_MAX)
        self._next_fork = time.monotonic() + delay
        self._hooks.log(1, f"Worker {pid} {how}; replaced in {delay:g}s")

    def _send_all(self, signum: int) -> None:
        """Send ``signum`` to every live worker."""
        for worker in list(self._workers.values()):
            worker.retiring = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker.pid, signum)

    def _wait_workers(self) -> None:
        """The parent's drain: until every worker was reaped (SIGCHLD reaps too)."""
        while self._workers:
            self._reap()
            if self._workers:
                gevent.sleep(0.05)

    def _reload(self) -> None:
        """HUP: the server reads its configuration and certificates again; then a new
        generation replaces the workers one by one (:meth:`_supervise`)."""
        conf = self._hooks.reload()
        if conf is None:
            return  # refused: the server said why; the workers stay
        self._conf, self._target = conf, conf.workers
        self._generation += 1
        self._next_fork = 0.0
        self._failures = 0
        self._hooks.log(2, f"Replacing the workers one by one: generation {self._generation}, "
                           f"{self._target} worker(s)")

    # == a worker ================================================================================

    def _become_worker(self) -> None:
        """The child's whole life (see the module rules); ends the process."""
        code = BOOT_FAILED
        try:
            code = self._serve_as_worker()
        except BaseException:  # the child must never unwind into the parent's code
            with contextlib.suppress(BaseException):
                self._hooks.log(1, f"Worker {os.getpid()} failed: "
                                   f"{traceback.format_exc().rstrip()}")
            code = 1 if self._single is not None else BOOT_FAILED
        finally:
            with contextlib.suppress(BaseException):
                self._hooks.close_logs()
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _serve_as_worker(self) -> int:
        """Set the worker up, serve until told to stop, drain; the exit status."""
        lifecycle = self._lifecycle
        assert lifecycle is not None and self._handle is not None
        self._workers.clear()  # the siblings are the parent's business
        lifecycle.uninstall_signals()  # the parent's handlers (HUP would re-exec the server)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        lifecycle.register_signals(SIGNALS)
        lifecycle.install_signals()
        restart.set_parent_death_signal(signal.SIGTERM)  # and getppid each second
        if os.getppid() != self._parent_pid:
            return 0  # the parent died before PDEATHSIG was set: nothing to serve for
        _set_title(f"gnetserver: worker [{self._hooks.name}]", "gns-worker")
        try:
            self._hooks.child_init()
        except Exception:
            self._hooks.log(1, f"child_init_hook failed in worker {os.getpid()}: "
                               f"{traceback.format_exc().rstrip()}")
            return BOOT_FAILED
        conf = self._conf
        self._single = Single(conf, max_accept=1 if self._target > 1 else None)
        self._single.start(self._listeners, self._counted, self._hooks)  # log: datagram drops
        while not lifecycle.stop_requested:
            lifecycle.wait_for_stop(self._worker_signals, timeout=ROUND)
            if os.getppid() != self._parent_pid:
                self._hooks.log(1, f"Worker {os.getpid()}: the parent is gone, stopping")
                lifecycle.request_stop()
        self._single.stop_accepting(take_queued=True)  # its queued share served, not reset
        lifecycle.drain(conf.graceful_timeout, self._worker_signals, self._hooks.log)
        try:
            self._hooks.child_finish()
        except Exception:
            self._hooks.log(1, f"child_finish_hook failed in worker {os.getpid()}: "
                               f"{traceback.format_exc().rstrip()}")
        return 0

    def _counted(self, listener: Listener, sock: Any, address: Any) -> None:
        """A worker's connection: counted for ``max_requests``; the last one allowed stops
        the accepting at once (it is served, and the worker exits once it ended)."""
        assert self._handle is not None and self._lifecycle is not None
        self._accepted += 1
        limit = self._conf.max_requests
        if limit and self._accepted == limit:
            self._hooks.log(2, f"Worker {os.getpid()}: max_requests ({limit}) reached")
            assert self._single is not None
            self._single.stop_accepting()
            self._lifecycle.request_stop()
        self._handle(listener, sock, address)

    def _worker_signals(self, names: Sequence[str]) -> None:
        """A worker's signals: TERM/INT stop now (connections are cut), QUIT and HUP stop
        accepting and let the connections finish within ``graceful_timeout``."""
        lifecycle = self._lifecycle
        assert lifecycle is not None
        for name in names:
            now = name in ("TERM", "INT")
            self._hooks.log(3, f"Worker {os.getpid()}: received a SIG {name}: "
                               f"{'stopping now' if now else 'finishing its sessions'}")
            lifecycle.request_stop(0 if now else None)


def _wait_blocking(pid: int) -> tuple[int, int]:
    """Reap ``pid`` (just sent KILL), cooperatively; (pid, status)."""
    while True:
        try:
            done, status = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return pid, 0
        if done:
            return done, status
        gevent.sleep(0.02)


def _libc() -> Any:
    """The C library through ctypes, or None (not Linux-like, not found)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def _set_title(title: str, short: str) -> None:
    """The process title ``ps`` shows: the whole command line (``setproctitle``, a
    dependency); on Linux also the 15-byte name ``top`` and ``ps -o comm`` show."""
    setproctitle.setproctitle(title)
    if sys.platform.startswith("linux"):
        libc = _libc()
        if libc is not None:
            libc.prctl(_PR_SET_NAME, ctypes.c_char_p(short.encode()[:15]), 0, 0, 0)
