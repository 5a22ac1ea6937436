"""Run a server in a background thread, for tests and for embedding in blocking programs.

Each thread has its own gevent hub, so a :class:`ServerThread` serves while the calling thread
uses ordinary blocking sockets (stdlib ``socket``/``ssl``, ``openssl s_client``...). The only
cross-thread calls are made through a libev/libuv async watcher, which is thread-safe.
"""

from __future__ import annotations

import threading
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
        """Stop the server and wait for its thread to end."""
        if self._wakeup is not None and self._thread.is_alive():
            self._wakeup.send()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError("server thread did not stop in time")

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
        self._ready.set()
        stop.wait()
        try:
            self.server.stop(self.stop_timeout)
        finally:
            self._wakeup.close()
            hub.destroy(destroy_loop=True)
