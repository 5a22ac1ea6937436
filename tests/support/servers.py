"""Small servers that hand what they saw to the test."""

from __future__ import annotations

import queue
from typing import Any

from gnetserver import GServer
from gnetserver.client import Client


class QueueServer(GServer):
    """Puts what :meth:`observe` returns for each connection on ``self.seen`` (a thread-safe
    queue: the server runs in its own thread), then sends :meth:`reply` and returns."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.seen: queue.Queue[Any] = queue.Queue()

    def observe(self, client: Client) -> Any:
        """What the test gets for this connection (runs in process_request)."""
        return None

    def reply(self, client: Client) -> bytes:
        """The one answer sent after :meth:`observe`."""
        return b"ok\n"

    def process_request(self, client: Client) -> None:
        """Record, answer, return (the connection is then closed)."""
        self.seen.put(self.observe(client))
        client.sendall(self.reply(client))
