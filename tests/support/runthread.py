"""``server.run()`` for real, in a thread with its own gevent hub (ServerThread uses start())."""

from __future__ import annotations

import threading
from typing import Any

import gevent

from gnetserver import GServer


class RunThread:
    """``server.run()`` in a thread with its own hub; ``stop()`` wakes the hub through an async
    watcher (the one thread-safe way in) and runs ``server.stop`` in a greenlet there.

    Off the main thread the server installs no signal handlers, so the server-wide order is
    run()'s own (loop, then server_close) without any signal.
    """

    def __init__(self, server: GServer) -> None:
        self.server = server
        self.error: BaseException | None = None
        self._watcher: Any = None
        self._lock = threading.Lock()  # the watcher is closed under it when run() returns
        self._armed = threading.Event()
        self._thread = threading.Thread(target=self._body, daemon=True)

    def _body(self) -> None:
        hub = gevent.get_hub()
        self._watcher = hub.loop.async_()
        self._watcher.start(lambda: gevent.spawn(self.server.stop, 1.0))
        self._armed.set()
        try:
            self.server.run()
        except BaseException as exc:  # reported by stop()
            self.error = exc
        finally:
            with self._lock:
                self._watcher.close()
                self._watcher = None
            hub.destroy(destroy_loop=True)

    def start(self) -> RunThread:
        self._thread.start()
        assert self._armed.wait(10)
        return self

    def returned(self, timeout: float) -> bool:
        """True once run() has returned (by itself: nothing here stops it), within ``timeout``."""
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def stop(self) -> None:
        """Stop the server, wait (bounded) for run() to return, re-raise what it raised."""
        with self._lock:
            if self._watcher is not None:
                self._watcher.send()
        self._thread.join(10)
        assert not self._thread.is_alive(), "run() did not return"
        if self.error is not None:
            raise self.error
