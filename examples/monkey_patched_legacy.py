"""Legacy blocking code served concurrently: ``gevent.monkey.patch_all()`` first, then a
``process_request`` that calls ``time.sleep`` and blocking stdlib sockets as if it were alone.

Run the server (TLS on 127.0.0.1:8444 with an in-memory self-signed certificate; give yours
with ``--SSL_cert_file cert.pem --SSL_key_file key.pem``, another port with ``--port``)::

    python examples/monkey_patched_legacy.py [--legacy_delay 0.5] [--log_level 3]

Each line a client sends is handled by ``legacy_lookup``: it sleeps ``legacy_delay`` seconds
(a slow computation or a slow remote), then asks a backend over a blocking
``socket.create_connection`` (the backend is a stdlib ``socketserver.ThreadingTCPServer`` that
upper-cases lines, started in the same process). Because everything is monkey-patched, a
sleeping or blocked request yields to the others: run many clients at once and they all finish
in about one ``legacy_delay``, not one after the other::

    python examples/monkey_patched_legacy.py clients 200 127.0.0.1:8444

(the ``clients`` mode is itself plain blocking code made concurrent by the same patch: N
"threads" that each connect over TLS, send one line and read the answer.)

The patch must be the first statement of the program, before anything imports ``ssl``,
``socket`` users or ``OpenSSL`` (imported earlier, ``ssl`` stays unpatched: gevent warns with
a ``MonkeyPatchWarning`` and ``SSLContext`` options fail with a ``RecursionError``).
gnetserver never patches by itself; its own
command offers the same with ``gnetserver --monkey-patch --server yourmodule:YourServer``.
"""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402
import socketserver  # noqa: E402
import ssl  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

from gnetserver import Client, GServer, Option  # noqa: E402
from gnetserver.options import seconds  # noqa: E402


class UpperHandler(socketserver.StreamRequestHandler):
    """The legacy backend: upper-cases every line (stands for a database, an SMTP relay...)."""

    def handle(self) -> None:
        for line in self.rfile:
            self.wfile.write(line.upper())


def legacy_lookup(backend: tuple[str, int], text: bytes, delay: float) -> bytes:
    """Blocking code written without gevent in mind: sleep, then a blocking socket round-trip."""
    time.sleep(delay)
    with socket.create_connection(backend, timeout=10) as sock:
        sock.sendall(text.rstrip(b"\r\n") + b"\n")
        with sock.makefile("rb") as answer:
            return answer.readline()


class Legacy(GServer):
    """Answers each line with the backend's answer, after ``legacy_delay`` seconds."""

    def options(self) -> list[Option]:
        """The base options plus this example's own, usable as ``--legacy_delay 0.2``."""
        return super().options() + [
            Option("legacy_delay", 0.5, seconds,
                   "Seconds legacy_lookup sleeps before asking the backend.", "Example"),
        ]

    def default_values(self) -> dict[str, Any]:
        return {"port": "127.0.0.1:8444/ssl", "self_signed": True}

    def pre_loop_hook(self) -> None:
        """Start the blocking backend in a (patched, hence green) thread before serving."""
        patched = [m for m in ("socket", "ssl", "time", "threading")
                   if monkey.is_module_patched(m)]
        self.log(2, f"monkey-patched: {', '.join(patched)}")
        self.backend = socketserver.ThreadingTCPServer(("127.0.0.1", 0), UpperHandler)
        self.backend.daemon_threads = True
        threading.Thread(target=self.backend.serve_forever, daemon=True).start()
        self.log(2, f"Backend on 127.0.0.1:{self.backend.server_address[1]}")

    def process_request(self, client: Client) -> None:
        """Runs in the connection's greenlet; the blocking calls below only block it."""
        for line in client:
            answer = legacy_lookup(self.backend.server_address, line, self.conf["legacy_delay"])
            client.sendall(answer)

    def pre_server_close_hook(self) -> None:
        """Stop the backend along with the server."""
        backend = getattr(self, "backend", None)
        if backend is not None:
            backend.shutdown()
            backend.server_close()


def run_clients(count: int, target: str) -> None:
    """N blocking clients at once (threads, green thanks to the patch); prints the total time.

    The certificate is not verified: the server's default one is self-signed.
    """
    host, _, port = target.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    answers: list[bytes] = []

    def one(number: int) -> None:
        with socket.create_connection((host, int(port)), timeout=30) as raw, \
                context.wrap_socket(raw, server_hostname=host) as tls:
            tls.sendall(f"client {number}\n".encode())
            answers.append(tls.makefile("rb").readline())

    started = time.monotonic()
    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(f"{len(answers)} answers from {count} clients in {time.monotonic() - started:.2f} s")


if __name__ == "__main__":
    if sys.argv[1:2] == ["clients"]:
        run_clients(int(sys.argv[2]), sys.argv[3] if len(sys.argv) > 3 else "127.0.0.1:8444")
    else:
        Legacy().run()
