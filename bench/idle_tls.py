"""Memory per idle TLS connection, and many idle TLS connections in one process.

Run from the repository root (Linux only: reads ``/proc``)::

    python bench/idle_tls.py                          # 2,000 idle connections, every server
    python bench/idle_tls.py --count 19000 --servers gnetserver   # as many as the fd limit allows
    python bench/idle_tls.py --before ../old-tree     # also gnetserver from another source tree
    python bench/idle_tls.py --python ../venv-sysssl/bin/python   # servers in another venv

The servers are bench/side_by_side.py's (the same HTTP 200 responder, started the same way,
pinned to ``--server-cpu``), plus ``bare-rb``: the bare loop with ``MODE_RELEASE_BUFFERS``, as
gnetserver sets it, and waiting outside its ``except`` clause (the floor to compare gnetserver
with), and ``bare-idle`` (bench/idle_servers.py): the same without a greenlet parked per
idle connection (an io watcher starts one when the socket turns readable), the floor of that
design. ``--python`` runs the Python servers with another interpreter: a venv whose pyOpenSSL
runs over another OpenSSL (bench/system_openssl_venv.py makes one over the system's OpenSSL
3.0); the table's header gives each library's version. For each server in turn, ``--clients``
client processes (stdlib ``ssl``, blocking sockets, each bound to its own source address
127.0.0.2, 127.0.0.3... so that the connections do not exhaust one address's ephemeral ports)
open ``--count`` connections in all, each doing one request, and keep them open and idle. The
table gives, per server:

* **kB per idle connection**: the growth of the server's resident memory (VmRSS of the server
  process and its children) from before the connections to when they are all open, divided by
  their number (the server answered 50 requests first, so that lazy start-up allocations are
  not counted);
* **seconds to open them all** (wall time, client side: the clients' handshakes count too) and
  the server's CPU time meanwhile;
* **RSS** of the server with all of them open.

Repeated ``--rounds`` times (a fresh server each time, the order reversed every round): medians
and spread. The descriptor limit is raised to the hard limit (``ulimit -Hn``), and the hard limit
to what ``--count`` needs where the process may (with CAP_SYS_RESOURCE, up to
``/proc/sys/fs/nr_open``); that limit bounds the count: one process cannot hold more
connections than that (the script says why when it cannot be raised).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # side_by_side, servers beside this

from servers import positive, raise_fd_limit, write_certificate  # noqa: E402
from side_by_side import BEFORE, Server  # noqa: E402

CLIENT = r"""
import resource, socket, ssl, sys
host, port, count, source = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
kept = []
for _ in range(count):
    raw = socket.create_connection((host, port), 60, source_address=(source, 0))
    tls = context.wrap_socket(raw)
    tls.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    answer = b""
    while not answer.endswith(b"ok"):
        part = tls.recv(4096)
        if not part:
            sys.exit("closed by the server")
        answer += part
    kept.append(tls)
print("READY", flush=True)
sys.stdin.read()  # until the benchmark closes our stdin
"""


def measure(server: Server, args: argparse.Namespace) -> dict[str, float]:
    """Open ``args.count`` idle connections to ``server``; its memory and CPU meanwhile."""
    share = [args.count // args.clients + (i < args.count % args.clients)
             for i in range(args.clients)]
    warm = subprocess.run([sys.executable, "-c", CLIENT, *map(str, server.address), "50",
                           "127.0.0.1"], input="", text=True, capture_output=True, timeout=60,
                          check=False)
    if warm.returncode:
        raise RuntimeError(f"{server.label}: warm-up failed: {warm.stderr[-500:]}")
    time.sleep(0.5)
    rss, cpu, started = server.rss_kb(), server.cpu(), time.monotonic()
    pin = ["taskset", "-c", str(args.client_cpu)] if args.client_cpu >= 0 else []
    clients = [subprocess.Popen([*pin, sys.executable, "-c", CLIENT, *map(str, server.address),
                                 str(count), f"127.0.0.{2 + i}"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
               for i, count in enumerate(share) if count]
    try:
        for client in clients:
            assert client.stdout is not None
            if client.stdout.readline().strip() != "READY":
                raise RuntimeError(f"{server.label}: a client failed")
        seconds, spent = time.monotonic() - started, server.cpu() - cpu
        time.sleep(1.0)  # let the last greenlets park
        now = server.rss_kb()
        return {"kB per idle connection": (now - rss) / args.count,
                "seconds to open them": seconds,
                "server CPU seconds meanwhile": spent,
                "server RSS with all open (MB)": now / 1024}
    finally:
        for client in clients:
            assert client.stdin is not None
            client.stdin.close()
            client.wait(30)


def raise_hard_fd_limit(wanted: int) -> int:
    """Raise the descriptor limit (soft and hard, inherited by the servers) to ``wanted`` if
    it is lower: only a process with CAP_SYS_RESOURCE may raise a hard limit, and never above
    ``/proc/sys/fs/nr_open``. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
        except (ValueError, OSError):
            pass
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def why_not(limit: int) -> str:
    """Why the hard descriptor limit could not be raised past ``limit``, as far as /proc says."""
    try:
        nr_open = int(Path("/proc/sys/fs/nr_open").read_text())
        caps = next(int(line.split()[1], 16) for line in
                    Path("/proc/self/status").read_text().splitlines()
                    if line.startswith("CapEff:"))
    except (OSError, StopIteration, ValueError):
        return "it cannot be raised here"
    if not caps & (1 << 24):  # CAP_SYS_RESOURCE
        return (f"raising the hard limit needs CAP_SYS_RESOURCE, which this process lacks "
                f"(CapEff {caps:x}; a user namespace does not help: rlimits are checked "
                f"against the initial namespace's capabilities)")
    return f"the kernel caps it at /proc/sys/fs/nr_open ({nr_open})"


def libraries(python: str) -> str:
    """The interpreter and the TLS libraries it gives the servers: pyOpenSSL's OpenSSL (the one
    its ``cryptography`` links) and the ``ssl`` module's."""
    probe = ("import sys, ssl, gevent, greenlet, OpenSSL; from OpenSSL import SSL; "
             "print(f'{sys.executable} (Python {sys.version.split()[0]}), gevent "
             "{gevent.__version__}, greenlet {greenlet.__version__}; pyOpenSSL "
             "{OpenSSL.__version__} over {SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()}; "
             "ssl over {ssl.OPENSSL_VERSION}')")
    done = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=60,
                          check=False)
    return done.stdout.strip() or f"{python}: {done.stderr.strip()[-300:]}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--count", type=positive, default=2000, help="idle connections (2000)")
    add("--clients", type=positive, default=4, help="client processes (4)")
    add("--rounds", type=positive, default=3, help="rounds, order reversed each (3)")
    add("--servers", default="gnetserver,bare,bare-rb,stdlib",
        help="which (gnetserver,bare,bare-rb,stdlib; also bare-idle)")
    add("--python", default=sys.executable,
        help="interpreter of the Python servers (this one)")
    add("--before", help="also gnetserver from this source tree")
    add("--server-cpu", type=int, default=0, help="CPU of the server (0)")
    add("--client-cpu", type=int, default=1, help="CPU of the clients (1; -1 any)")
    args = parser.parse_args(argv)
    labels = [s.strip() for s in args.servers.split(",") if s.strip()]
    if args.before:
        labels.insert(1, BEFORE)
    args.perl_servers = 64
    args.max_servers = args.count + 100  # gnetserver: every connection gets a session
    raise_fd_limit(1 << 20)
    limit = raise_hard_fd_limit(args.count + 100)
    if args.count + 100 > limit:
        sys.exit(f"--count {args.count}: the descriptor limit is {limit}, and {why_not(limit)}: "
                 f"at most about {limit - 100} connections")
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory(prefix="gnetbench-idle-") as tmpdir:
        tmp = Path(tmpdir)
        cert, key = write_certificate(tmp, "ecdsa")
        for round_number in range(args.rounds):
            for label in labels if round_number % 2 == 0 else labels[::-1]:
                server = Server(label, cert, key, tmp, args)
                try:
                    server.wait_ready()
                    for measure_name, value in measure(server, args).items():
                        results.setdefault(measure_name, {}).setdefault(label, []).append(value)
                finally:
                    server.stop()
                print(f"  round {round_number + 1}/{args.rounds} {label}: ok", file=sys.stderr,
                      flush=True)
    print(f"{args.count} idle TLS connections (ECDSA P-256, TLS 1.3, one request each), "
          f"{args.rounds} rounds, medians (lowest-highest); fd limit {limit}; command: python "
          f"bench/idle_tls.py {' '.join(sys.argv[1:] if argv is None else argv)}")
    print(f"servers' interpreter: {libraries(args.python)}")
    print(f"\n| measure | {' | '.join(labels)} |\n|---|" + "---:|" * len(labels))
    for measure_name, by_label in results.items():
        cells = []
        for label in labels:
            values = by_label.get(label, [])
            cells.append(f"{statistics.median(values):,.1f} ({min(values):,.1f}-"
                         f"{max(values):,.1f})" if values else "-")
        print(f"| {measure_name} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
