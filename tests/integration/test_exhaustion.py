"""Issue 15, exhaustion: out of descriptors, clients that never read, handlers that run out of
memory or stack, and a handler that blocks the hub.

Out of descriptors: a server in a subprocess whose open-file limit (RLIMIT_NOFILE) is set a
few descriptors above what it holds once bound; a burst of connections past the limit makes
``accept()`` fail with EMFILE. The server logs one line for the burst (not one per failure,
no traceback), pauses accepting with back-off instead of spinning (its CPU time over the
stalled period is measured from /proc), and serves again as soon as descriptors free up.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from support.net import address, free_port, read_line, read_until_eof, wait_until
from support.process import REPO, python_env
from support.prometheus import samples

from gnetserver import ConfigError, GServer
from gnetserver.conf import plan_conf
from gnetserver.options import OPTIONS, table

TICKS = os.sysconf("SC_CLK_TCK")

#: The server of the descriptor test: a line echo on a plain TCP port; once bound (in
#: pre_loop_hook) it sets its soft RLIMIT_NOFILE to what it holds plus HEADROOM.
FD_SERVER = """
import os, resource, sys
from gnetserver import ConfigError, GServer
from gnetserver.conf import plan_conf
from gnetserver.options import OPTIONS, table

class Echo(GServer):
    def pre_loop_hook(self):
        held = len(os.listdir("/proc/self/fd"))
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (held + int(sys.argv[1]), hard))
        print(f"limit set: {held} held + {sys.argv[1]}", file=sys.stderr, flush=True)

    def process_request(self, client):
        for line in client:
            client.sendall(line)

Echo(commandline=[], port="127.0.0.1:0/tcp", max_servers=100, log_level=2,
     metrics_port=sys.argv[2]).run()
"""
HEADROOM = 8
BURST = 30


def cpu_seconds(pid: int) -> float:
    """utime + stime of the process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def echo(where: tuple[str, int], timeout: float = 10.0) -> bytes:
    with socket.create_connection(where, timeout=timeout) as sock:
        sock.sendall(b"ping\n")
        return read_line(sock)


def test_out_of_descriptors_one_line_per_burst_back_off_and_recovery(
        spawn: Callable[..., Any]) -> None:
    metrics = free_port()
    server = spawn([sys.executable, "-c", FD_SERVER, str(HEADROOM), str(metrics)],
                   env=python_env(REPO))
    host, port, _ = server.ports()[0]
    where = (host, port)
    server.wait_for("limit set")
    assert echo(where) == b"ping\n"

    held: list[socket.socket] = []
    try:
        for _ in range(BURST):  # the kernel completes them all: the backlog holds the rest
            held.append(socket.create_connection(where, timeout=10))
        server.wait_for(r"accept on .* failed: EMFILE")
        # Stalled: descriptors are all taken and the backlog holds connections, so the
        # listening socket stays readable. A busy loop would burn a CPU here.
        cpu, wall = cpu_seconds(server.pid), time.monotonic()
        time.sleep(1.5)
        cpu, wall = cpu_seconds(server.pid) - cpu, time.monotonic() - wall
        assert wall >= 1.0
        assert cpu < 0.3 * wall, f"server CPU {cpu:.2f} s over {wall:.2f} s while stalled"
        # A client queued behind the limit: not served yet.
        late = socket.create_connection(where, timeout=10)
        late.sendall(b"late\n")
    finally:
        for sock in held:
            sock.close()
    # Descriptors free up: the queued connections (all closed but `late`) are accepted and
    # end, and `late` is served.
    assert read_line(late) == b"late\n"
    late.close()
    assert echo(where) == b"ping\n"
    server.wait_for(r"accept on .* works again after \d+ failed attempt")
    assert server.count("failed: EMFILE") == 1, server.log
    assert "Traceback" not in server.log

    # A second burst, after a pause longer than AcceptBackoff.BURST_GAP, is a second line.
    time.sleep(2.5)
    held = []
    try:
        for _ in range(BURST):
            held.append(socket.create_connection(where, timeout=10))
        wait_until(lambda: server.count("failed: EMFILE") == 2, 10, "a second EMFILE line")
    finally:
        for sock in held:
            sock.close()
    assert echo(where) == b"ping\n"
    assert server.count("failed: EMFILE") == 2
    # Every failed accept is counted (the lines are per burst, the counter per failure).
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as answer:
        found = samples(answer.read())
    failures = found[f'gnetserver_accept_failures_total{{port="{port}",proto="tcp"}}']
    assert failures >= 2, found


# -- clients that never read --------------------------------------------------------------------

#: A TLS server whose "BIG" request answers RESPONSE bytes (one shared object, so the server's
#: own buffering is what its memory shows) and whose other lines are echoed.
SLOW_READER_SERVER = """
import sys
from gnetserver import ConfigError, GServer
from gnetserver.conf import plan_conf
from gnetserver.options import OPTIONS, table

RESPONSE = b"x" * (4 << 20)

class Big(GServer):
    def process_request(self, client):
        for line in client:
            client.sendall(RESPONSE if line == b"BIG\\n" else line)

Big(commandline=[], port="127.0.0.1:0/ssl", SSL_cert_file=sys.argv[1],
    SSL_key_file=sys.argv[2], max_servers=300, max_handshakes=50, timeout_idle=2,
    log_level=3).run()
"""
STALLED_READERS = 200


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_clients_that_never_read_are_cut_at_timeout_idle(
        spawn: Callable[..., Any], certs: dict[str, str],
        client_context: ssl.SSLContext) -> None:
    """200 TLS clients ask for 4 MiB and never read: each write stalls on a full socket buffer
    and the connection is cut when timeout_idle (2 s) passes without room to write; the
    server's memory stays bounded and a well-behaved client is served throughout."""
    server = spawn([sys.executable, "-c", SLOW_READER_SERVER, certs["SSL_cert_file"],
                    certs["SSL_key_file"]], env=python_env(REPO))
    host, port, _ = server.ports()[0]
    where = (host, port)

    def good_round_trip() -> None:
        with socket.create_connection(where, timeout=10) as raw, \
                client_context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping\n")
            assert read_line(tls) == b"ping\n"

    good_round_trip()
    base_rss, base_fds = rss_kb(server.pid), fds(server.pid)
    stalled: list[ssl.SSLSocket] = []
    peak = base_rss
    try:
        for index in range(STALLED_READERS):
            raw = socket.socket()
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # full at once
            raw.settimeout(10)
            raw.connect(where)
            tls = client_context.wrap_socket(raw, server_hostname="localhost")
            tls.sendall(b"BIG\n")
            stalled.append(tls)
            if index % 20 == 0:
                good_round_trip()  # served while the stalled ones pile up
                peak = max(peak, rss_kb(server.pid))

        def all_cut() -> bool:
            nonlocal peak
            peak = max(peak, rss_kb(server.pid))
            good_round_trip()  # and while they are cut
            return server.count(r"ended: TimeoutError") >= STALLED_READERS

        wait_until(all_cut, 30, f"{STALLED_READERS} stalled writers cut at timeout_idle")
    finally:
        for tls in stalled:
            tls.close()
    good_round_trip()
    # Bounded: the server buffers one TLS record or so per stalled connection, never the
    # response (measured about 10 kB per connection; the bound leaves room for heap noise).
    assert peak - base_rss < 100 * STALLED_READERS, (base_rss, peak)
    wait_until(lambda: fds(server.pid) <= base_fds, 10, "the server's descriptors to go back")
    assert "Traceback" not in server.log


# -- handlers that run out of memory or stack, or block the hub ---------------------------------


class Faults(GServer):
    """Each line names what the handler does: ``memory`` (a MemoryError from a real, too large
    allocation), ``recursion`` (a RecursionError from unbounded recursion), ``block`` (sleeps
    2 s in the hub: time.sleep without monkey patching); any other line is echoed."""

    def process_request(self, client: Any) -> None:
        for line in client:
            command = line.strip()
            if command == b"memory":
                client.data["buffer"] = bytearray(1 << 60)
            elif command == b"recursion":
                def deeper(depth: int) -> int:
                    return deeper(depth + 1) + 1
                deeper(0)
            elif command == b"block":
                time.sleep(2)  # blocks the whole hub: nothing else runs for 2 s
            client.sendall(line)


def connect(server: GServer) -> socket.socket:
    return socket.create_connection(address(server), timeout=10)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("fault", ["memory", "recursion"])
def test_memory_and_recursion_errors_end_that_connection_only(
        serve: Callable[..., GServer], caplog: pytest.LogCaptureFixture, fault: str) -> None:
    server = serve(Faults, port="127.0.0.1:0/tcp", log_level=3)
    with connect(server) as bystander, connect(server) as victim:
        bystander.sendall(b"before\n")
        assert read_line(bystander) == b"before\n"
        victim.sendall(fault.encode() + b"\n")
        assert read_until_eof(victim) == b""  # closed: that connection ends
        bystander.sendall(b"after\n")  # an established one goes on
        assert read_line(bystander) == b"after\n"
    with connect(server) as fresh:  # and new ones are served
        fresh.sendall(b"hello\n")
        assert read_line(fresh) == b"hello\n"
    name = {"memory": "MemoryError", "recursion": "RecursionError"}[fault]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and name in errors[0], errors
    assert errors[0].startswith("Error in connection")


@pytest.mark.timeout(30)
def test_a_handler_blocking_the_hub_is_reported_and_the_server_carries_on(
        serve: Callable[..., GServer], caplog: pytest.LogCaptureFixture) -> None:
    server = serve(Faults, port="127.0.0.1:0/tcp", log_level=3, max_blocking_time=0.5)
    with connect(server) as blocker, connect(server) as other:
        blocker.sendall(b"block\n")
        other.sendall(b"meanwhile\n")
        assert read_line(other) == b"meanwhile\n"  # served once the hub runs again
        assert read_line(blocker) == b"block\n"
    reports = wait_until(lambda: [r for r in caplog.records if "hub was blocked" in
                                  r.getMessage()], 10, "the blocking report")
    assert len(reports) == 1, [r.getMessage() for r in reports]  # one line per episode
    report = reports[0]
    assert report.levelno == logging.ERROR  # Net::Server level 1
    text = report.getMessage()
    assert "Faults.process_request" in text and "test_exhaustion.py" in text, text
    assert "max_blocking_time 0.5" in text
    with connect(server) as fresh:
        fresh.sendall(b"hello\n")
        assert read_line(fresh) == b"hello\n"


@pytest.mark.parametrize(("given", "expected"), [(None, 0.0), ("0", 0.0), ("0.25", 0.25),
                                                ("-1", "greater than 0"),
                                                ("abc", "number of seconds")])
def test_max_blocking_time_option(given: str | None, expected: float | str) -> None:
    """Off by default; bad values are ConfigErrors naming the option and the value."""
    known = table(OPTIONS)
    constructor = {} if given is None else {"max_blocking_time": given}

    def plan() -> float:
        conf, _ = plan_conf(known, constructor=constructor, commandline=[], run_args={},
                            default_values={}, environ={})
        return conf.max_blocking_time

    if isinstance(expected, float):
        assert plan() == expected
        return
    with pytest.raises(ConfigError, match=f"max_blocking_time.*{given}.*{expected}"):
        plan()


#: A PreFork server (one worker) whose handler blocks its worker's hub for 1.5 s.
PREFORK_BLOCKING_SERVER = """
import time
from gnetserver import GServer

class Blocking(GServer):
    def process_request(self, client):
        line = client.readline()
        time.sleep(1.5)
        client.sendall(line)

Blocking(commandline=[], port="127.0.0.1:0/tcp", server_type="PreFork", workers=1,
         max_blocking_time=0.5).run()
"""


@pytest.mark.timeout(30)
def test_max_blocking_time_in_a_prefork_worker(spawn: Callable[..., Any]) -> None:
    """The detector runs in each worker (the process whose hub serves): the report comes from
    the worker and names the handler."""
    server = spawn([sys.executable, "-c", PREFORK_BLOCKING_SERVER], env=python_env(REPO),
                   terminate=True)
    host, port, _ = server.ports()[0]
    assert echo((host, port)) == b"ping\n"
    report = server.wait_for(r"The hub was blocked for at least [\d.]+ s "
                             r"\(max_blocking_time 0\.5\).*Blocked in Blocking\.process_request")
    assert "<string>" in report.string
    assert server.count("hub was blocked") == 1
