"""Run a server in a background thread, for tests and for embedding in blocking programs.

Each thread has its own gevent hub, so a :class:`ServerThread` serves while the calling thread
uses ordinary blocking sockets (stdlib ``socket``/``ssl``, ``openssl s_client``...). The only
cross-thread calls are made through a libev/libuv async watcher, which is thread-safe.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import gevent
from gevent.event import Event

from .server import GServer


class ServerThread:
    """A started server running in its own thread and hub.

    Usage::

        with ServerThread(MyServer(port="127.0.0.1:0/ssl", ...)) as st:
            host, port = st.server.listeners[0].bound[:2]
            ...

    The thread ends after :meth:`stop`, or by itself when the server closes on its own (a
    handler called ``server.stop()``): :meth:`ended` tells.

    Args:
        server: a GServer that has not been started.
        stop_timeout: seconds connections get to finish when the thread stops the server.
    """

    def __init__(self, server: GServer, stop_timeout: float = 1.0) -> None:
        self.server = server
        self.stop_timeout = stop_timeout
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._wakeup: Any = None
        self._calls: Any = None
        self._jobs: list[_Job] = []
        self._jobs_lock = threading.Lock()
        self._thread = threading.Thread(target=self._body, name="gnetserver", daemon=True)

    def start(self, timeout: float = 10.0) -> ServerThread:
        """Start the server; re-raise in the caller whatever stopped it from starting."""
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("server thread did not start in time")
        if self.error is not None:
            self._thread.join(timeout)
            raise self.error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and wait for its thread to end (at once if the server already
        closed itself, e.g. a handler called ``server.stop()``)."""
        with self._jobs_lock:  # the thread closes the watcher under this lock when it ends
            if self._wakeup is not None:
                self._wakeup.send()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("server thread did not stop in time")

    def ended(self, timeout: float) -> bool:
        """True once the thread has ended, waiting up to ``timeout`` seconds for it. It ends
        after :meth:`stop`, or by itself when the server closes (a handler called
        ``server.stop()``, or a start-up hook stopped it before it served)."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 10.0) -> Any:
        """Run ``fn(*args)`` in the server's thread, in a greenlet of its hub, and return its
        result (or raise its exception) here; e.g. ``st.call(st.server.reload_tls)``.

        Raises:
            RuntimeError: the server is not running.
            TimeoutError: ``fn`` did not finish within ``timeout`` seconds.
        """
        job = _Job(fn, args)
        with self._jobs_lock:
            if self._calls is None:
                raise RuntimeError("the server thread is not running")
            self._jobs.append(job)
            self._calls.send()  # thread-safe: wakes the server's hub
        if not job.done.wait(timeout):
            raise TimeoutError(f"{fn!r} did not finish within {timeout} s in the server thread")
        if job.error is not None:
            raise job.error
        return job.result

    def _run_jobs(self) -> None:
        """In the hub (async watcher callback): start every queued call in its own greenlet,
        since a callback of the hub itself must not block or switch."""
        with self._jobs_lock:
            jobs, self._jobs = self._jobs, []
        for job in jobs:
            gevent.spawn(job.run)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _body(self) -> None:
        hub = gevent.get_hub()
        try:
            self.server.start()
        except BaseException as exc:  # handed to the caller of start()
            self.error = exc
            self._ready.set()
            hub.destroy(destroy_loop=True)
            return
        stop = Event()
        self._wakeup = hub.loop.async_()
        self._wakeup.start(stop.set)
        self._calls = hub.loop.async_()
        self._calls.start(self._run_jobs)
        self._ready.set()
        # stop() here, or the server's own close
        gevent.wait([stop, self.server.lifecycle.closed_event()], count=1)
        try:
            self.server.stop(self.stop_timeout)  # waits for a close already running
        finally:
            with self._jobs_lock:
                self._wakeup.close()
                self._calls.close()
                self._wakeup = self._calls = None
            hub.destroy(destroy_loop=True)


class _Job:
    """One :meth:`ServerThread.call`: the function, then its outcome."""

    def __init__(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args
        self.result: Any = None
        self.error: BaseException | None = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            self.result = self.fn(*self.args)
        except BaseException as exc:  # handed to the calling thread
            self.error = exc
        finally:
            self.done.set()
