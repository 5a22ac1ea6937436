"""What the metrics (issue 14) cost per connection, measured on a real connection.

Run from the repository root::

    python bench/metrics_cost.py              # 20000 rounds
    python bench/metrics_cost.py --rounds 5000

A gnetserver with one TLS port and ``metrics_port`` set serves one real TLS connection (a
stdlib client). Inside that connection's greenlet, on its real ``Client`` (its TLS facts, its
socket for TCP_INFO) and the personality's real session slot, it times the calls the server
makes once per connection: ``connection()`` entered and left, ``handshake_done()``,
``session()`` entered and left, ``session_ended()``; once with the prometheus-client
collaborator (metrics on) and once with the base :class:`~gnetserver.metrics.Metrics`
(metrics off: what every server without ``metrics_port`` pays), alternated A/B/A over
``--batches`` batches; prints the medians and spread in µs per connection. Nothing is counted
per read or write, so a keep-alive request costs nothing more: this is the whole cost, to be
set against a connection's handshake (hundreds of µs) and its requests.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's gnetserver

from servers import write_certificate  # noqa: E402

from gnetserver import GServer  # noqa: E402
from gnetserver.metrics import Metrics  # noqa: E402
from gnetserver.testing import ServerThread  # noqa: E402


class Timed(GServer):
    """Times the per-connection metrics calls inside its one connection."""

    rounds = 20000
    batches = 7
    results: dict[str, list[float]] = {}

    def process_request(self, client: Any) -> None:
        free = _Free()  # one object, as the server passes the one slot object each time
        results: dict[str, list[float]] = {"on": [], "off": []}
        collaborators = {"on": self.metrics, "off": Metrics()}
        for batch in range(self.batches):
            for name in ("on", "off") if batch % 2 == 0 else ("off", "on"):
                metrics = collaborators[name]
                listener = client.listener
                started = time.perf_counter()
                for _ in range(self.rounds):
                    with metrics.connection(listener):
                        metrics.handshake_done(client, started)
                        with metrics.session(free):
                            metrics.session_ended(client)
                took = time.perf_counter() - started
                results[name].append(took / self.rounds * 1e6)
        type(self).results = results
        client.sendall(b"done\n")


class _Free:
    """A session slot that never waits: the real one is held by this very connection."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20000, help="calls per batch (20000)")
    parser.add_argument("--batches", type=int, default=7, help="batches per mode, A/B/A (7)")
    args = parser.parse_args(argv)
    Timed.rounds, Timed.batches = args.rounds, args.batches
    with tempfile.TemporaryDirectory(prefix="gnetbench-") as tmp:
        cert, key = write_certificate(Path(tmp), "ecdsa")
        server = Timed(port="127.0.0.1:0/ssl", metrics_port="127.0.0.1:0", SSL_cert_file=cert,
                       SSL_key_file=key, log_level=1)
        with ServerThread(server):
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            port = server.listeners[0].port
            with socket.create_connection(("127.0.0.1", port), timeout=600) as raw, \
                    context.wrap_socket(raw) as tls:
                assert tls.recv(10) == b"done\n"
    for name, values in Timed.results.items():
        print(f"metrics {name}: {statistics.median(values):.2f} µs per connection "
              f"(median of {len(values)} batches of {args.rounds}; "
              f"spread {min(values):.2f}-{max(values):.2f})")
    on, off = (statistics.median(Timed.results[name]) for name in ("on", "off"))
    print(f"cost of the metrics: {on - off:.2f} µs per connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
