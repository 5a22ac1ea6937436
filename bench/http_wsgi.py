"""Side-by-side benchmark (issue 11): keep-alive HTTPS requests for a trivial WSGI app.

Run from the repository root (about a minute and a half; Linux only: taskset, ``/proc``)::

    pip install gunicorn          # the third server; wrk must be on PATH (Debian: wrk)
    python bench/http_wsgi.py                     # 4 rounds of 5 s per server
    python bench/http_wsgi.py --rounds 2 --duration 3   # a quick look

Three servers answer ``200 hello`` (:mod:`wsgi_hello`) over TLS with the same ECDSA P-256
certificate, one process (one worker) each, all running at once, each pinned to CPU 0:

* **gnetserver**: ``GHTTPServer(wsgi_app=app, port="127.0.0.1:PORT/ssl")`` (pyOpenSSL,
  httptools), no access log, log level 1;
* **pywsgi**: ``gevent.pywsgi.WSGIServer`` with ``keyfile``/``certfile`` (gevent's stdlib
  ``ssl``), ``log=None`` (no access log);
* **gunicorn**: ``gunicorn -k gevent -w 1 --certfile --keyfile`` (gevent worker, stdlib
  ``ssl``; no access log by default);
* **pywsgi-nodelay**: pywsgi with ``TCP_NODELAY`` set on each accepted socket before the TLS
  wrap, as gnetserver and gunicorn set it. Not in the issue's goal, shown because pywsgi's
  default (Nagle on) makes it wait for the client's delayed ACKs: it is latency-bound at a
  low CPU load, where a request costs more CPU than under full load.

The load is ``wrk -t1 -c50 -dDs https://127.0.0.1:PORT/`` pinned to CPU 1 (50 keep-alive
connections; their 50 handshakes at the start of each measurement are part of it, about 1 %).
Servers are measured in turn, A B C / C B A / A B C..., after a 1 s warm-up each. Per
measurement: requests (wrk's count, which must come with no error and no non-2xx answer),
server CPU (utime + stime from ``/proc/PID/stat`` of the server and every live descendant:
gunicorn's master and its worker) and wrk's CPU (rusage of the reaped child). The table shows
medians, and the ratios of gnetserver's median to the others' with, in brackets, the lowest
and highest per-round ratio (round r against round r): its spread. The load average is shown
before and after, since other work may share the machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # servers beside this file

from servers import BENCH, REPO, TICKS, free_ports, stop_process, write_certificate  # noqa: E402

SERVERS = ("gnetserver", "pywsgi", "gunicorn", "pywsgi-nodelay")
REQUESTS = re.compile(r"(\d+) requests in ([\d.]+)(m?s)")


# -- inside a server subprocess ------------------------------------------------------------------


def serve(kind: str, port: int, cert: str, key: str) -> None:
    """Run one server in this process until it is terminated."""
    from wsgi_hello import app

    if kind == "gnetserver":
        from gnetserver.http import GHTTPServer

        GHTTPServer(commandline=[], wsgi_app=app, port=f"127.0.0.1:{port}/ssl",
                    SSL_cert_file=cert, SSL_key_file=key, log_level=1).run()
    elif kind in ("pywsgi", "pywsgi-nodelay"):
        from gevent.pywsgi import WSGIServer

        class NoDelay(WSGIServer):  # type: ignore[misc]
            def wrap_socket_and_handle(self, client_socket: Any, address: Any) -> Any:
                client_socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                return super().wrap_socket_and_handle(client_socket, address)

        cls = NoDelay if kind == "pywsgi-nodelay" else WSGIServer
        cls(("127.0.0.1", port), app, keyfile=key, certfile=cert, log=None).serve_forever()
    else:
        raise SystemExit(f"unknown server {kind!r}")


# -- seen from the benchmark -------------------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """``pid`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rpartition(")")[2].split()[1])
            except OSError:
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its live descendants."""
    total = 0
    for each in descendants(pid):
        try:
            with open(f"/proc/{each}/stat") as f:
                fields = f.read().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


class Server:
    """One server subprocess pinned to CPU 0."""

    def __init__(self, kind: str, cert: str, key: str, folder: str) -> None:
        self.kind = kind
        self.stderr_path = Path(folder) / f"{kind}.stderr"
        self.port = free_ports(1)[0]
        if kind == "gunicorn":
            command = [sys.executable, "-m", "gunicorn", "-k", "gevent", "-w", "1",
                       "--certfile", cert, "--keyfile", key, "-b", f"127.0.0.1:{self.port}",
                       "--log-level", "warning", "--chdir", str(BENCH), "wsgi_hello:app"]
        else:
            command = [sys.executable, str(BENCH / "http_wsgi.py"), "--serve", kind,
                       "--port", str(self.port), "--cert", cert, "--key", key]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (str(REPO), str(BENCH), os.environ.get("PYTHONPATH")) if p))
        with open(self.stderr_path, "w") as stderr:
            self.proc = subprocess.Popen(["taskset", "-c", "0", *command], env=env,
                                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=stderr)
        self.pid = self.proc.pid  # taskset execs the command: same pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until one HTTPS GET / answers 200 hello (the server's TLS and app both work)."""
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=5) as raw, \
                        context.wrap_socket(raw) as sock:
                    sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                    data = b""
                    while chunk := sock.recv(65536):
                        data += chunk
                if data.startswith(b"HTTP/1.1 200") and data.endswith(b"hello"):
                    return
                raise RuntimeError(f"{self.kind}: unexpected answer {data[:200]!r}")
            except (OSError, ssl.SSLError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{self.kind} did not start") from None
                time.sleep(0.2)

    def errors(self) -> list[str]:
        """The lines the server wrote on stderr that look like errors (tracebacks...)."""
        text = self.stderr_path.read_text(errors="replace")
        return [line for line in text.splitlines() if "Error" in line or "failed" in line]

    def stop(self) -> None:
        stop_process(self.proc, 10)


def wrk(port: int, duration: float, connections: int) -> tuple[int, float, float, str]:
    """One wrk run on CPU 1: (requests, seconds, wrk CPU seconds, its output)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", f"-c{connections}",
                           f"-d{duration:g}s", f"https://127.0.0.1:{port}/"],
                          capture_output=True, text=True, timeout=duration + 60)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = done.stdout
    match = REQUESTS.search(out)
    if done.returncode or match is None or "Non-2xx" in out or "Socket errors" in out:
        raise RuntimeError(f"wrk failed or saw errors:\n{out}\n{done.stderr}")
    seconds = float(match[2]) / (1000 if match[3] == "ms" else 1)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return int(match[1]), seconds, used, out


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def ratio_text(samples: dict[str, list[float]], a: str, b: str) -> str:
    per_round = [x / y for x, y in zip(samples[a], samples[b], strict=True) if y]
    median = statistics.median(samples[a]) / statistics.median(samples[b])
    return f"{median:.2f} ({min(per_round):.2f}-{max(per_round):.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", choices=("gnetserver", "pywsgi", "pywsgi-nodelay"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4, help="rounds (A B C / C B A...)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c")
    parser.add_argument("--samples", action="store_true", help="print every round's values")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.cert, args.key)
        return

    started = time.monotonic()
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as folder:
        cert, key = write_certificate(Path(folder), "ecdsa")
        servers = {kind: Server(kind, cert, key, folder) for kind in SERVERS}
        try:
            for server in servers.values():
                server.wait_ready()
            for server in servers.values():
                wrk(server.port, 1, args.connections)  # warm-up
            measures: dict[str, dict[str, list[float]]] = {
                name: {kind: [] for kind in SERVERS} for name in (
                    "requests/s", "server CPU per request (µs)", "server CPU busy (%)",
                    "wrk CPU busy (%)")}
            for number in range(args.rounds):
                order = SERVERS if number % 2 == 0 else SERVERS[::-1]
                for kind in order:
                    server = servers[kind]
                    cpu = cpu_seconds(server.pid)
                    count, seconds, wrk_cpu, _ = wrk(server.port, args.duration,
                                                     args.connections)
                    used = cpu_seconds(server.pid) - cpu
                    measures["requests/s"][kind].append(count / seconds)
                    measures["server CPU per request (µs)"][kind].append(used / count * 1e6)
                    measures["server CPU busy (%)"][kind].append(used / seconds * 100)
                    measures["wrk CPU busy (%)"][kind].append(wrk_cpu / seconds * 100)
        finally:
            for server in servers.values():
                server.stop()
        errors = {kind: server.errors() for kind, server in servers.items()}
    import gevent
    from OpenSSL import SSL

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, "
          f"{platform.platform()}, Python {platform.python_version()}")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout
    print(f"gevent {gevent.__version__}; gnetserver: pyOpenSSL over "
          f"{SSL.SSLeay_version(SSL.SSLEAY_VERSION).decode()}; pywsgi/gunicorn: stdlib ssl over "
          f"{ssl.OPENSSL_VERSION}; {wrk_version.splitlines()[0] if wrk_version else 'wrk'}")
    print(f"load average before: {load_before}, after: {loadavg()}; "
          f"{args.rounds} rounds x {args.duration:g} s, wrk -t1 -c{args.connections}; "
          f"whole run {time.monotonic() - started:.0f} s")
    print()
    others = SERVERS[1:]
    print(f"| measure | {' | '.join(SERVERS)} | "
          + " | ".join(f"gnetserver/{kind} (spread)" for kind in others) + " |")
    print("|---|" + "---:|" * (len(SERVERS) + len(others)))
    for name, samples in measures.items():
        cells = [f"{statistics.median(samples[kind]):,.1f}" for kind in SERVERS]
        cells += [ratio_text(samples, "gnetserver", kind) for kind in others]
        print(f"| {name} | {' | '.join(cells)} |")
    for kind, lines in errors.items():
        if lines:
            print(f"\n{kind} wrote {len(lines)} error line(s) on stderr, the first: {lines[0]}")
    if args.samples:
        print()
        for name, samples in measures.items():
            for kind in SERVERS:
                print(f"{name} {kind}: " + ", ".join(f"{v:,.1f}" for v in samples[kind]))


if __name__ == "__main__":
    main()
