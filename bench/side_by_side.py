"""Side-by-side HTTPS benchmark: gnetserver, the bare pyOpenSSL loop, gevent + stdlib ssl,
Perl's Net::Server::PreFork and nginx, driven by wrk and h2load.

Run from the repository root (Linux only: it pins CPUs and reads ``/proc``)::

    python bench/side_by_side.py --quick            # about 6 minutes: 3 rounds, short runs,
                                                    # growth at 50 and 500 connections only
    python bench/side_by_side.py                    # the full run (about 20 minutes)
    python bench/side_by_side.py --before ../tree   # also gnetserver from another source tree
    python bench/side_by_side.py --handshakes-only --servers gnetserver,bare --before ../tree
                                                    # the full-handshake rows alone (printed,
                                                    # never written)
    python bench/side_by_side.py --help

It installs what it misses first (``apt-get install`` of wrk, nghttp2-client, nginx-light,
libnet-server-perl, libio-socket-ssl-perl; ``pip install matplotlib``) unless ``--no-install``.

Every server answers the same fixed ``HTTP/1.1 200`` (``Content-Length: 2``, ``ok``) to every
request head, keeps the connection open until the client closes it, and answers
``Connection: close`` (then closes) when the request says so:

* **gnetserver**: a ``GServer`` whose ``process_request`` runs :func:`answer_heads` over the
  client (``client.recv``/``client.sendall``), default options but ``max_servers`` 6000 and
  ``log_level`` 1; with ``--before PATH`` also **gnetserver-before**, the same server from the
  gnetserver of another source tree;
* **bare**: gevent's ``StreamServer``, the accepted socket wrapped in
  ``OpenSSL.SSL.Connection``, and on ``WantReadError``/``WantWriteError``
  ``gevent.socket.wait_read``/``wait_write``: no timeouts, no client object, no hooks (the
  floor of this design), running the same :func:`answer_heads`;
* **stdlib**: gevent's ``StreamServer`` with ``gevent.ssl`` (stdlib ``ssl``), the same
  :func:`answer_heads`;
* **perl**: Net::Server::PreFork with ``proto ssl`` (IO::Socket::SSL), the same logic in Perl
  (``sysread`` until a blank line), one process per connection: ``--perl-servers`` (64)
  processes, so it only runs the measures with at most that many connections;
* **nginx**: one worker (``worker_processes 1``, not a daemon, a generated config in a
  temporary directory), ``return 200 "ok"``.

bench/idle_tls.py (and idle_heap.py) also start ``--serve bare-rb`` (the bare loop with
``MODE_RELEASE_BUFFERS``, waiting outside its ``except`` clause) and ``--serve bare-idle``
(bench/idle_servers.py: no greenlet kept per idle connection); not among this
benchmark's defaults.

Every TLS server refuses session resumption (session tickets off and no session cache, or
stateful tickets that cannot resume), checked once per server with ``openssl s_client
-sess_out``/``-sess_in``: every h2load connection is a full handshake.

The servers (every process of each) are pinned to ``--server-cpu`` (0) and the load generator
to ``--client-cpu`` (1). Measured in turn, the order reversed every round (A B C / C B A / ...),
for each server:

* **keep-alive**: ``wrk -t1 -c50 -dD`` (keep-alive connections, one request in flight each):
  server CPU per request (utime + stime of the server process, its living and its reaped
  children, from ``/proc``);
* **growth**: ``h2load --h1 -t1 -m1 -cN -D D --warm-up-time W`` with N = 50, 500, 5000
  keep-alive connections: the server's CPU is sampled when the warm-up ends (the connections
  are set up by then: W grows with N) and at the end, so the CPU per request excludes the
  handshakes;
* **handshakes**: ``h2load --h1 -t1 -m1 -cC -n COUNT -H 'Connection: close'`` with C = 16 and
  256 concurrent clients, for an ECDSA P-256 and an RSA-2048 certificate: server CPU per full
  handshake (each connection is one handshake, one request and the close).

The table gives medians, the spread (lowest-highest) and ratios to the bare loop; it is
printed and, unless ``--no-write``, written into bench/README.md (between the
``side-by-side`` markers) with the versions and the machine, and plotted
(bench/side_by_side.png).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # servers, prefork beside this file

from prefork import _proc_times, children_cpu, tool_versions  # noqa: E402
from servers import (  # noqa: E402
    BENCH,
    KEY_TYPES,
    REPO,
    descendants,
    free_ports,
    positive,
    raise_fd_limit,
    stop_process,
    write_certificate,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
OK_CLOSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
MAX_HEAD = 8192
SERVERS = ("gnetserver", "bare", "stdlib", "perl", "nginx")
BEFORE = "gnetserver-before"
APT = {"wrk": "wrk", "h2load": "nghttp2-client", "nginx": "nginx-light",
       "taskset": "util-linux", "openssl": "openssl"}
PERL_MODULES = {"Net::Server::PreFork": "libnet-server-perl",
                "IO::Socket::SSL": "libio-socket-ssl-perl"}
START_TIMEOUT = 30.0
README = BENCH / "README.md"
PLOT = BENCH / "side_by_side.png"
MARK_BEGIN, MARK_END = "<!-- side-by-side begin -->", "<!-- side-by-side end -->"


# -- the one responder of the Python servers ------------------------------------------------


def answer_heads(recv: Callable[[int], bytes], sendall: Callable[[bytes], Any]) -> None:
    """Answer every request head (up to a blank line) with :data:`OK`, until the client
    closes; after a head with ``Connection: close``, answer :data:`OK_CLOSE` and return.
    A head longer than :data:`MAX_HEAD` ends the connection. Bodies are never read (the
    load generators send GETs)."""
    buf = b""
    while True:
        data = recv(65536)
        if not data:
            return
        buf = buf + data if buf else data
        while (end := buf.find(b"\r\n\r\n")) >= 0:
            head, buf = buf[:end], buf[end + 4:]
            if b"lose" in head and re.search(rb"(?im)^connection:[ \t]*close", head):
                sendall(OK_CLOSE)
                return
            sendall(OK)
        if len(buf) > MAX_HEAD:
            return


# -- inside a server subprocess ------------------------------------------------------------


def _no_resumption(context: Any) -> None:
    """pyOpenSSL: stateful tickets only, and no session cache for them to refer to."""
    from OpenSSL import SSL

    context.set_options(SSL.OP_NO_TICKET)
    context.set_session_cache_mode(SSL.SESS_CACHE_OFF)


def serve_gnetserver(port: int, cert: str, key: str, tree: Path, max_servers: int = 6000
                     ) -> None:
    """gnetserver from ``tree`` (first on PYTHONPATH; checked)."""
    import gevent
    import OpenSSL

    import gnetserver
    from gnetserver import GServer

    package = Path(gnetserver.__file__ or "?").resolve()
    if not package.is_relative_to(tree.resolve()):
        sys.exit(f"bench: gnetserver came from {package}, not from {tree}")

    class Ok(GServer):
        def process_request(self, client: Any) -> None:
            try:
                answer_heads(client.recv, client.sendall)
            except OSError:
                pass  # idle too long, or the peer went away

    print(f"bench-version: gnetserver from {package}, gevent {gevent.__version__}, pyOpenSSL "
          f"{OpenSSL.__version__}", file=sys.stderr, flush=True)
    Ok(commandline=[], port=f"127.0.0.1:{port}/ssl", SSL_cert_file=cert, SSL_key_file=key,
       SSL_create_ctx_callback=_no_resumption, max_servers=max_servers, log_level=1).run()


def serve_bare(port: int, cert: str, key: str, release_buffers: bool = False) -> None:
    """The floor: StreamServer, SSL.Connection, wait_read/wait_write; no timeouts.

    ``release_buffers``: set ``MODE_RELEASE_BUFFERS`` as gnetserver does (an idle connection
    then holds no record buffers), for the idle-memory comparison of bench/idle_tls.py."""
    from gevent.server import StreamServer
    from gevent.socket import wait_read, wait_write
    from OpenSSL import SSL

    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.use_certificate_chain_file(cert)
    context.use_privatekey_file(key)
    _no_resumption(context)
    if release_buffers:
        context.set_mode(SSL.MODE_RELEASE_BUFFERS)

    class BareIO:
        __slots__ = ("conn", "fd")

        def __init__(self, conn: SSL.Connection, fd: int) -> None:
            self.conn, self.fd = conn, fd

        def call(self, op: Callable[..., Any], *args: Any) -> Any:
            while True:
                try:
                    return op(*args)
                except SSL.WantReadError:
                    wait_read(self.fd)
                except SSL.WantWriteError:
                    wait_write(self.fd)

        def recv(self, size: int) -> bytes:
            try:
                return bytes(self.call(self.conn.recv, size))
            except SSL.ZeroReturnError:
                return b""

        def sendall(self, data: bytes) -> None:
            view = memoryview(data)
            while view:
                view = view[self.call(self.conn.send, view):]

    class ReleasingBareIO(BareIO):
        """bare-rb: waits outside the ``except`` clause. Inside it, the exception's traceback
        keeps pyOpenSSL's ``recv`` frame, and so its 64 KiB read buffer, alive for as long as
        the connection is idle (part of the bare loop's memory per idle connection)."""

        __slots__ = ()

        def call(self, op: Callable[..., Any], *args: Any) -> Any:
            while True:
                try:
                    return op(*args)
                except SSL.WantReadError:
                    wait = wait_read
                except SSL.WantWriteError:
                    wait = wait_write
                wait(self.fd)

    def handle(sock: Any, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = SSL.Connection(context, sock)
        conn.set_accept_state()
        tls = (ReleasingBareIO if release_buffers else BareIO)(conn, sock.fileno())
        try:
            tls.call(conn.do_handshake)
            answer_heads(tls.recv, tls.sendall)
            tls.call(conn.shutdown)
        except (SSL.Error, OSError):
            pass
        finally:
            sock.close()

    StreamServer(("127.0.0.1", port), handle).serve_forever()


def serve_stdlib(port: int, cert: str, key: str) -> None:
    """gevent's StreamServer with gevent.ssl (the stdlib ssl module)."""
    from gevent import ssl as gssl
    from gevent.server import StreamServer

    context = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.options |= gssl.OP_NO_TICKET
    context.num_tickets = 0  # ssl caches sessions (id context "Python"): send no ticket at all

    def handle(sock: Any, address: Any) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            with context.wrap_socket(sock, server_side=True) as tls:
                answer_heads(tls.recv, tls.sendall)
        except OSError:
            pass

    StreamServer(("127.0.0.1", port), handle).serve_forever()


PERL = r"""
package OkServer;
use strict; use warnings;
use base 'Net::Server::PreFork';
use Net::SSLeay;
use IO::Socket::SSL;
IO::Socket::SSL::set_server_defaults(SSL_create_ctx_callback => sub {
    my $ctx = shift;
    Net::SSLeay::CTX_set_options($ctx, Net::SSLeay::OP_NO_TICKET());
    Net::SSLeay::CTX_set_session_cache_mode($ctx, 0);  # SSL_SESS_CACHE_OFF
});
sub process_request {
    my $self = shift;
    my $c = $self->{server}{client};
    my $buf = '';
    while (1) {
        my $n = sysread($c, $buf, 65536, length $buf);
        return unless $n;
        while ((my $i = index($buf, "\r\n\r\n")) >= 0) {
            my $head = substr($buf, 0, $i + 4, '');
            if ($head =~ /^connection:[ \t]*close/im) {
                syswrite($c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
                return;
            }
            syswrite($c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        }
        return if length $buf > 8192;
    }
}
my ($port, $cert, $key, $n) = @ARGV;
OkServer->run(
    port => "127.0.0.1:$port/ssl",
    SSL_cert_file => $cert, SSL_key_file => $key,
    min_servers => $n, max_servers => $n, min_spare_servers => 0, max_spare_servers => $n - 1,
    max_requests => 1000000000, log_level => 1, background => 0, setsid => 0,
    listen => 1024, serialize => 'flock',
);
"""

NGINX = """
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile 19000;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log error;
events {{ worker_connections 12000; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_session_tickets off;
        ssl_session_cache off;
        location / {{ return 200 "ok"; }}
    }}
}}
"""


def serve(args: argparse.Namespace) -> None:
    """Be one Python server (``--serve KIND``) on ``--port`` until terminated."""
    raise_fd_limit()
    if args.serve.startswith("gnetserver"):
        serve_gnetserver(args.port, args.cert, args.key, Path(args.tree), args.max_servers)
    elif args.serve in ("bare", "bare-rb"):  # bare-rb: idle_tls.py's bare loop, buffers released
        serve_bare(args.port, args.cert, args.key, release_buffers=args.serve == "bare-rb")
    elif args.serve == "bare-idle":  # idle_tls.py: no greenlet kept per idle connection
        from idle_servers import serve_bare_idle
        serve_bare_idle(args.port, args.cert, args.key)
    else:
        serve_stdlib(args.port, args.cert, args.key)


# -- seen from the benchmark ---------------------------------------------------------------


class Server:
    """One server under test: a process tree pinned to the server CPU, on a known port."""

    def __init__(self, label: str, cert: str, key: str, tmp: Path, args: argparse.Namespace
                 ) -> None:
        self.label = label
        self.port = free_ports(1)[0]
        self.address = ("127.0.0.1", self.port)
        self.max_connections = args.perl_servers if label == "perl" else 1 << 30
        pin = ["taskset", "-c", str(args.server_cpu)]
        env = dict(os.environ)
        if label == "nginx":
            folder = tmp / f"nginx-{self.port}"
            folder.mkdir()
            (folder / "nginx.conf").write_text(NGINX.format(tmp=folder, port=self.port,
                                                            cert=cert, key=key))
            command = [*pin, "nginx", "-p", str(folder), "-c", str(folder / "nginx.conf")]
        elif label == "perl":
            script = tmp / "ok_server.pl"
            script.write_text(PERL)
            command = [*pin, "perl", str(script), str(self.port), cert, key,
                       str(args.perl_servers)]
        else:
            tree = Path(args.before) if label == BEFORE else REPO
            env["PYTHONPATH"] = os.pathsep.join(
                p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
            python = getattr(args, "python", None) or sys.executable  # idle_tls.py --python
            command = [*pin, python, str(Path(__file__).resolve()), "--serve", label,
                       "--port", str(self.port), "--cert", cert, "--key", key,
                       "--tree", str(tree), "--max-servers",
                       str(getattr(args, "max_servers", 6000))]
        self.log = open(tmp / f"{label}-{self.port}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid

    def wait_ready(self) -> None:
        """Until the port accepts (and a PreFork server has its processes)."""
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(self.address, 1).close()
                if self.label != "perl" or len(self.descendants()) >= 1:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        text = Path(self.log.name).read_text()
        raise RuntimeError(f"{self.label} did not start:\n{text[-3000:]}")

    def descendants(self) -> list[int]:
        return descendants(self.pid)

    def cpu(self) -> float:
        """CPU seconds of the whole tree so far: the process, its reaped and living children."""
        own, reaped = _proc_times(self.pid)
        return own + reaped + sum(sum(_proc_times(pid)) for pid in self.descendants())

    def rss_kb(self) -> int:
        total = 0
        for pid in [self.pid, *self.descendants()]:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def version(self) -> str:
        self.log.flush()
        text = Path(self.log.name).read_text()
        found = re.search(r"bench-version: (.*)", text)
        return found[1] if found else ""

    def stop(self) -> None:
        kids = self.descendants()
        stop_process(self.proc, 10)
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.log.close()


def resumption_refused(server: Server, tmp: Path) -> bool | None:
    """One connection saves its session, a second offers it: True when it was not resumed
    (None when openssl could not tell)."""
    session = tmp / f"session-{server.port}"
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    target = f"127.0.0.1:{server.port}"
    try:
        subprocess.run(["openssl", "s_client", "-connect", target, "-sess_out", str(session),
                        "-quiet"], input=request, capture_output=True, timeout=10, check=False)
        done = subprocess.run(["openssl", "s_client", "-connect", target, "-sess_in",
                               str(session)], input=request, capture_output=True, timeout=10,
                              check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = done.stdout.decode(errors="replace")
    if not session.exists() or not session.stat().st_size:
        return True  # the server sent no ticket at all: nothing to offer
    if "Reused," in text:
        return False
    return True if "New," in text else None


def run_tool(server: Server, command: list[str], timeout: float,
             sample_after: float | None = None) -> tuple[str, float, float]:
    """Run a load generator; returns its output, the server's CPU seconds over the run (or,
    with ``sample_after``, from that many seconds after the start to the end) and the load
    generator's CPU seconds."""
    marks: list[float] = []
    timer = None
    if sample_after is not None:
        timer = threading.Timer(sample_after, lambda: marks.append(server.cpu()))
    before, client = server.cpu(), children_cpu()
    if timer is not None:
        timer.start()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        output = f"TIMEOUT after {timeout} s: {exc.stdout!r}"
    after = server.cpu()
    if timer is not None:
        timer.cancel()
        before = marks[0] if marks else float("nan")
    return output, after - before, children_cpu() - client


class Results:
    """Samples: {measure: {server: [values]}}, plus notes."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.notes: list[str] = []
        self.versions: dict[str, str] = {}
        #: What each server negotiated with h2load (``TLSv1.3 <suite>, key exchange ...``):
        #: a different suite is different work, so the report says it per server.
        self.negotiated: dict[str, str] = {}

    def add(self, measure: str, label: str, value: float) -> None:
        self.samples.setdefault(measure, {}).setdefault(label, []).append(value)

    def values(self, measure: str, label: str) -> list[float]:
        return [v for v in self.samples.get(measure, {}).get(label, []) if v == v]

    def median(self, measure: str, label: str) -> float | None:
        values = self.values(measure, label)
        return statistics.median(values) if values else None


def keepalive(server: Server, args: argparse.Namespace, results: Results) -> None:
    """wrk -c50: server CPU per keep-alive request."""
    if server.max_connections < args.connections:
        return
    command = [*args.client_pin, "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
               f"https://127.0.0.1:{server.port}/"]
    output, cpu, _ = run_tool(server, command, args.duration + 30)
    found = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", output)
    problems = re.findall(r"(Socket errors: .*|Non-2xx or 3xx responses: \d+)", output)
    if not found or problems:
        results.notes.append(f"{server.label} wrk: {problems or output.strip()[-300:]}")
    if found:
        ops = int(found[1])
        results.add(f"keep-alive request, wrk -c{args.connections} (µs)", server.label,
                    cpu / ops * 1e6 if ops else float("nan"))


def growth(server: Server, args: argparse.Namespace, results: Results, clients: int) -> None:
    """h2load keep-alive with ``clients`` connections, CPU sampled after the warm-up."""
    if server.max_connections < clients:
        return
    warm = math.ceil(args.warmup + clients * args.warmup_per_conn)
    command = [*args.client_pin, "h2load", "--h1", "-t1", "-m1", f"-c{clients}",
               f"-D{args.growth_duration}", f"--warm-up-time={warm}",
               f"https://127.0.0.1:{server.port}/"]
    output, cpu, _ = run_tool(server, command, warm + args.growth_duration + 60,
                              sample_after=warm + 0.2)
    found = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored", output)
    if not found or int(found[3]) or int(found[4]):
        results.notes.append(f"{server.label} h2load -c{clients} keep-alive: "
                             f"{found[0] if found else output.strip()[-300:]}")
    if found and int(found[2]):
        results.add(f"keep-alive request, {clients} conns (µs)", server.label,
                    cpu / int(found[2]) * 1e6)


def handshakes(server: Server, args: argparse.Namespace, results: Results, key: str,
               clients: int) -> None:
    """h2load, a new connection (full handshake) per request."""
    if server.max_connections < clients:
        return
    count = max(args.handshakes, 4 * clients)
    command = [*args.client_pin, "h2load", "--h1", "-t1", "-m1", f"-c{clients}", f"-n{count}",
               "-H", "Connection: close", f"https://127.0.0.1:{server.port}/"]
    output, cpu, _ = run_tool(server, command, 120)
    found = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                      r"(\d+) failed, (\d+) errored", output)
    if found is None or int(found[2]) != count:
        results.notes.append(f"{server.label} h2load -c{clients} {key}: "
                             f"{found[0] if found else output.strip()[-300:]}")
    if tls := re.search(r"TLS Protocol: (\S+)\s+Cipher: (\S+)\s+Server Temp Key: (.*)", output):
        results.negotiated[server.label] = f"{tls[1]} {tls[2]}, key exchange {tls[3].strip()}"
    if found and int(found[2]):
        results.add(f"full handshake {KEY_TYPES[key]}, {clients} clients (µs)", server.label,
                    cpu / int(found[2]) * 1e6)


def run_benchmark(args: argparse.Namespace) -> Results:
    results = Results()
    labels = list(args.servers)
    with tempfile.TemporaryDirectory(prefix="gnetbench-side-") as tmpdir:
        tmp = Path(tmpdir)
        for key in args.keys:
            cert, keyfile = write_certificate(tmp, key)
            servers = [Server(label, cert, keyfile, tmp, args) for label in labels]
            try:
                for server in servers:
                    server.wait_ready()
                    refused = resumption_refused(server, tmp)
                    if refused is not True:
                        results.notes.append(f"{server.label}: resumption refused? {refused}")
                    results.versions.setdefault(server.label, server.version())
                    handshakes(server, args, Results(), key, 16)  # warm-up, not recorded
                for round_number in range(args.rounds):
                    order = servers if round_number % 2 == 0 else servers[::-1]
                    for server in order:
                        if key == args.keys[0] and not args.handshakes_only:
                            keepalive(server, args, results)
                            for clients in args.growth:
                                growth(server, args, results, clients)
                        for clients in args.concurrency:
                            handshakes(server, args, results, key, clients)
                        print(f"  {key} round {round_number + 1}/{args.rounds} "
                              f"{server.label}: ok", file=sys.stderr, flush=True)
            finally:
                for server in servers:
                    server.stop()
    return results


# -- the report ------------------------------------------------------------------------------


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def machine() -> str:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}, "
            f"load average before the run {os.getloadavg()[0]:.2f}")


def versions(results: Results) -> str:
    found = [f"Python {platform.python_version()}", tool_versions()]
    for command in (["nginx", "-v"], ["perl", "-MNet::Server", "-MIO::Socket::SSL", "-e",
                                      "print qq(Net::Server $Net::Server::VERSION, "
                                      "IO::Socket::SSL $IO::Socket::SSL::VERSION)"],
                    ["openssl", "version"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10,
                                  check=False)
            found.append((done.stdout + done.stderr).strip().splitlines()[0])
        except (OSError, IndexError):
            pass
    for label, text in results.versions.items():
        if text:
            found.append(f"{label}: {text}")
    return "; ".join(found)


def negotiated(results: Results) -> str:
    """The TLS parameters h2load negotiated: once when every server agreed, else per server."""
    texts = set(results.negotiated.values())
    if len(texts) == 1:
        return f"{texts.pop()} (every server)"
    return "; ".join(f"{label} {text}" for label, text in results.negotiated.items()) or "?"


def format_table(results: Results, args: argparse.Namespace) -> str:
    labels = list(args.servers)
    head = ["server CPU per operation: median (lowest-highest)", *labels,
            *(f"{label}/bare" for label in labels if label.startswith("gnetserver"))]
    lines = [
        f"| {' | '.join(head)} |",
        "|---|" + "---:|" * (len(head) - 1),
    ]
    for measure in results.samples:
        cells = []
        for label in labels:
            values = results.values(measure, label)
            median = results.median(measure, label)
            cells.append("-" if median is None else
                         f"{_num(median)} ({_num(min(values))}-{_num(max(values))})")
        for label in labels:
            if label.startswith("gnetserver"):
                top, bottom = results.median(measure, label), results.median(measure, "bare")
                tops, bottoms = results.values(measure, label), results.values(measure, "bare")
                text = "-" if top is None or not bottom else f"{top / bottom:.2f}"
                if text != "-" and len(tops) == len(bottoms) > 1:
                    rounds = [a / b for a, b in zip(tops, bottoms, strict=True)]
                    text += f" ({min(rounds):.2f}-{max(rounds):.2f})"
                cells.append(text)
        lines.append(f"| {measure} | {' | '.join(cells)} |")
    return "\n".join(lines)


def report(results: Results, args: argparse.Namespace, seconds: float, argv: list[str]) -> str:
    table = format_table(results, args)
    text = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} with `python "
        f"bench/side_by_side.py {' '.join(argv)}` ({seconds:.0f} s): {args.rounds} rounds, "
        f"server order reversed every round; servers pinned to CPU {args.server_cpu}, load "
        f"generator to CPU {args.client_cpu}.",
        "",
        f"Machine: {machine()}.",
        "",
        f"Versions: {versions(results)}.",
        "",
        f"Negotiated (h2load): {negotiated(results)}.",
        "",
        table,
        "",
        ("Handshakes" if args.handshakes_only else  # --handshakes-only: the rest did not run
         f"Keep-alive: `wrk -t1 -c{args.connections} -d{args.duration}s`; growth: `h2load --h1 "
         f"-t1 -m1 -cN -D{args.growth_duration} --warm-up-time=W` (CPU sampled after the "
         f"warm-up); handshakes")
        + f": `h2load --h1 -t1 -m1 -cC -n{args.handshakes}` (at least 4 per "
        f"client) `-H 'Connection: close'`. perl runs {args.perl_servers} processes: no figure "
        f"past that many connections.",
    ]
    if results.notes:
        text += ["", "Problems seen:", *[f"* {note}" for note in results.notes]]
    return "\n".join(text)


def plot(results: Results, args: argparse.Namespace) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("no matplotlib: no plot", file=sys.stderr)
        return
    measures = list(results.samples)
    labels = list(args.servers)
    fig, axes = plt.subplots(len(measures), 1, figsize=(9, 2.2 * len(measures)), squeeze=False)
    for ax, measure in zip(axes[:, 0], measures, strict=True):
        medians = [results.median(measure, label) or 0.0 for label in labels]
        lows = [min(results.values(measure, label) or [0.0]) for label in labels]
        highs = [max(results.values(measure, label) or [0.0]) for label in labels]
        err = [[m - lo for m, lo in zip(medians, lows, strict=True)],
               [hi - m for m, hi in zip(medians, highs, strict=True)]]
        ax.barh(labels, medians, xerr=err, color="#4477aa")
        ax.set_title(measure, fontsize=9)
        ax.tick_params(labelsize=8)
        ax.invert_yaxis()
    axes[-1, 0].set_xlabel("server CPU per operation (µs), median and spread")
    fig.tight_layout()
    fig.savefig(PLOT, dpi=80)
    plt.close(fig)


def write_readme(text: str) -> None:
    old = README.read_text()
    block = f"{MARK_BEGIN}\n{text}\n\n![server CPU per operation](side_by_side.png)\n{MARK_END}"
    if MARK_BEGIN in old and MARK_END in old:
        start, end = old.index(MARK_BEGIN), old.index(MARK_END) + len(MARK_END)
        README.write_text(old[:start] + block + old[end:])
    else:
        README.write_text(old.rstrip("\n") + "\n\n## `side_by_side.py`: latest results\n\n"
                          + block + "\n")


def install_missing(servers: list[str]) -> None:
    """apt-get install the missing tools and Perl modules; pip install matplotlib."""
    needed = {tool: package for tool, package in APT.items()
              if shutil.which(tool) is None and (tool != "nginx" or "nginx" in servers)}
    packages = set(needed.values())
    if "perl" in servers:
        for module, package in PERL_MODULES.items():
            if subprocess.run(["perl", f"-M{module}", "-e1"], capture_output=True,
                              check=False).returncode:
                packages.add(package)
    if packages:
        print(f"installing {' '.join(sorted(packages))}", file=sys.stderr, flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-q"], env=env, check=False)
        subprocess.run(["apt-get", "install", "-y", "-q", *sorted(packages)], env=env,
                       check=True)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"],
                       check=False)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--quick", action="store_true", help="short runs (a few minutes in all)")
    add("--rounds", type=positive, default=3, help="rounds, order reversed each (3)")
    add("--servers", default=",".join(SERVERS), help=f"which ({','.join(SERVERS)})")
    add("--before", help="also gnetserver from this source tree (gnetserver-before)")
    add("--keys", default="ecdsa,rsa", help="certificate key types (ecdsa,rsa)")
    add("--duration", type=positive, default=5, help="seconds of each wrk run (5)")
    add("--connections", type=positive, default=50, help="wrk's connections (50)")
    add("--growth", default=None,
        help="keep-alive connection counts (50,500,5000; with --quick 50,500)")
    add("--growth-duration", type=positive, default=4, help="h2load -D seconds (4)")
    add("--handshakes", type=positive, default=2000, help="h2load -n for handshakes (2000)")
    add("--concurrency", default="16,256", help="concurrent fresh clients (16,256)")
    add("--perl-servers", type=positive, default=64, help="Perl PreFork processes (64)")
    add("--server-cpu", type=int, default=0, help="CPU of the servers (0)")
    add("--client-cpu", type=int, default=1, help="CPU of the load generators (1)")
    add("--no-install", action="store_true", help="do not apt-get/pip install what is missing")
    add("--no-write", action="store_true", help="print only; leave README.md and the plot")
    add("--handshakes-only", action="store_true",
        help="only the full-handshake measures (no keep-alive, no growth); implies --no-write")
    add("--serve", help=argparse.SUPPRESS)
    add("--port", type=int, help=argparse.SUPPRESS)
    add("--cert", help=argparse.SUPPRESS)
    add("--key", help=argparse.SUPPRESS)
    add("--tree", help=argparse.SUPPRESS)
    add("--max-servers", type=int, default=6000, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.growth_duration, args.handshakes = 2, 2, 1500
    if args.growth is None:
        args.growth = "50,500" if args.quick else "50,500,5000"
    if args.handshakes_only:
        args.no_write = True  # a partial table must not replace the README's
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.before and BEFORE not in args.servers:
        args.servers.insert(1, BEFORE)
    args.keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    args.growth = [int(n) for n in args.growth.split(",") if n.strip()]
    args.concurrency = [int(n) for n in args.concurrency.split(",") if n.strip()]
    args.warmup, args.warmup_per_conn = 1.0, 0.0015
    args.client_pin = ["taskset", "-c", str(args.client_cpu)] if args.client_cpu >= 0 else []
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    if not args.no_install:
        install_missing(args.servers)
    raise_fd_limit()
    started = time.monotonic()
    results = run_benchmark(args)
    text = report(results, args, time.monotonic() - started, argv)
    print(text)
    if not args.no_write:
        write_readme(text)
        plot(results, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
