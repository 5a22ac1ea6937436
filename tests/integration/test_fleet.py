"""A fleet that loses nothing (issue 10): a real HAProxy running examples/haproxy.cfg (its
addresses rewritten to loopback ports) in front of two gnetserver instances (real
subprocesses, TLS ports with ``proxy_protocol v2``), under a bounded load of TLS round-trips
through the balancer, one new connection per request.

(a) QUIT one instance: it stops accepting first, finishes its sessions in flight; HAProxy
    redispatches the refused connects and marks it DOWN; the instance is started again on the
    same port and HAProxy marks it UP and sends it traffic: 0 failed requests.
(b) HUP one instance: it never stops accepting, HAProxy never marks it DOWN, the new image
    serves: 0 failed requests.

The servers are support.sigserver's (``<delay> <payload>`` -> ``<pid> <token> <payload>``; the
token changes with each process image), so every response says who served it.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.haproxy import HAProxy
from support.load import Load, Record
from support.net import free_port, wait_until
from support.process import REPO, alive
from support.sigserver import SignalServerProcess

pytestmark = pytest.mark.timeout(60)

EXAMPLE = REPO / "examples" / "haproxy.cfg"
CLIENTS = 8
DELAY = 0.1  # seconds each request is held in the server: a QUIT always finds some in flight
RESPONSE = re.compile(r"(\d+) (\w+) (\S+)\n")


def fleet_config(folder: Path, front: int, ports: tuple[int, int]) -> str:
    """examples/haproxy.cfg for loopback: frontend on ``front``, g1 and g2 on ``ports``, the
    log on stderr, the stats socket in ``folder``. Each rewrite must apply exactly once, so
    the example cannot drift away from what is tested."""
    text = EXAMPLE.read_text()
    rewrites = [
        (r"^(\s+)log /dev/log ", r"\1log stderr format short "),
        (r"^(\s+stats socket )/run/haproxy/admin\.sock", rf"\g<1>{folder}/admin.sock"),
        (r"^(\s+bind ):443$", rf"\g<1>127.0.0.1:{front}"),
        (r"^(\s+server g1 )10\.0\.0\.5:8443$", rf"\g<1>127.0.0.1:{ports[0]}"),
        (r"^(\s+server g2 )10\.0\.0\.6:8443$", rf"\g<1>127.0.0.1:{ports[1]}"),
    ]
    for pattern, replacement in rewrites:
        text, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
        assert count == 1, f"examples/haproxy.cfg: {pattern!r} matched {count} times"
    return text


def served_by(load: Load, token: str) -> int:
    """How many complete responses so far came from the process image ``token``."""
    return load.count(lambda r: bool((m := RESPONSE.fullmatch(r.response or ""))
                                     and m[2] == token and m[3] == r.payload))


def unusual(log: str) -> str:
    """HAProxy's log lines other than sessions that ended normally (termination flags --)."""
    return "\n".join(line for line in log.splitlines() if " -- " not in line)


def assert_none_failed(records: list[Record], pids: set[int], balancer: HAProxy) -> None:
    """Every request got its complete response from one of ``pids``; else the failures and
    HAProxy's unusual log lines (a connection it had to close shows its termination flags)."""
    bad = []
    for record in records:
        match = RESPONSE.fullmatch(record.response or "")
        if not (match and int(match[1]) in pids and match[3] == record.payload):
            bad.append(f"{record.payload}: {record.error!r} {record.response!r}")
    assert not bad, (f"{len(bad)} of {len(records)} requests failed: {bad[:5]}\n"
                     f"{unusual(balancer.log)}")


@dataclass
class Fleet:
    """Two instances behind a balancer, and the load running through it."""

    start_instance: Callable[[int], SignalServerProcess]
    ports: tuple[int, int]
    g1: SignalServerProcess
    g2: SignalServerProcess
    balancer: HAProxy
    load: Load


@pytest.fixture
def fleet(spawn: Callable[..., Any], tmp_path: Path, certs: dict[str, str],
          client_context: ssl.SSLContext) -> Iterator[Fleet]:
    """g1 and g2 on free loopback ports, HAProxy in front (both UP), the load started and
    served by both. At teardown: the load stops, haproxy and every instance are stopped by
    pid (spawn's teardown), drainers a HUP forked too."""
    ports = (free_port(), free_port())

    def start_instance(port: int) -> SignalServerProcess:
        folder = tmp_path / f"g{port}-{time.monotonic_ns()}"
        folder.mkdir()
        instance: SignalServerProcess = spawn(
            folder, certs, "--port", f"127.0.0.1:{port}/ssl", "--proxy_protocol", "v2",
            "--proxy_protocol_from", "127.0.0.1/32", "--graceful_timeout", "10",
            "--log_level", "2", factory=SignalServerProcess)
        instance.terminate = True
        instance.ports()  # ready
        return instance

    g1, g2 = start_instance(ports[0]), start_instance(ports[1])
    front = free_port()
    balancer = HAProxy(fleet_config(tmp_path, front, ports), tmp_path, front, complete=True)
    load = None
    try:
        load = Load(("127.0.0.1", front), client_context, DELAY, clients=CLIENTS).start()
        wait_until(lambda: served_by(load, g1.token()) >= 5 and served_by(load, g2.token()) >= 5,
                   20, "both instances to serve through the balancer")
        yield Fleet(start_instance, ports, g1, g2, balancer, load)
    finally:
        if load is not None:
            load.finish()
        balancer.stop()
        drainers = [int(m[1]) for m in re.finditer(r"HUP: pid (\d+) serves", g1.log)]
        for pid in drainers:  # a drainer is the instance's child: stopped by its pid
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_quit_and_restart_of_one_instance_loses_nothing(fleet: Fleet) -> None:
    g1, g2, balancer, load = fleet.g1, fleet.g2, fleet.balancer, fleet.load
    quit_at = time.monotonic()
    g1.send(signal.SIGQUIT)
    assert g1.wait_exit(15) == 0
    wait_until(lambda: "gnetservers/g1 is DOWN" in balancer.log, 15, "HAProxy to mark g1 DOWN")
    served_by_g2 = served_by(load, g2.token())
    again = fleet.start_instance(fleet.ports[0])  # the same port
    wait_until(lambda: "gnetservers/g1 is UP" in balancer.log.split("g1 is DOWN", 1)[1], 15,
               "HAProxy to mark g1 UP again")
    wait_until(lambda: served_by(load, again.token()) >= 10, 20, "the new g1 to serve")
    assert served_by(load, g2.token()) > served_by_g2  # g2 served meanwhile
    records = load.finish()
    assert_none_failed(records, {g1.pid, g2.pid, again.pid}, balancer)
    # The QUIT let the sessions in flight finish: g1 answered after it was sent.
    assert [r for r in records if r.ended > quit_at and (r.response or "").startswith(
        f"{g1.pid} ")], "no session of g1 was in flight at the QUIT"
    assert g1.count("Received a SIG QUIT") == 1


def test_hup_of_one_instance_loses_nothing(fleet: Fleet) -> None:
    g1, g2, balancer, load = fleet.g1, fleet.g2, fleet.balancer, fleet.load
    g1.send(signal.SIGHUP)
    second = g1.token(2)
    drainer = g1.drainer()
    wait_until(lambda: served_by(load, second) >= 10, 20, "g1's new image to serve")
    records = load.finish()
    assert_none_failed(records, {g1.pid, g2.pid, drainer}, balancer)
    assert g1.proc.poll() is None and "is DOWN" not in balancer.log  # HAProxy saw nothing
    g1.drainer_stopped()
    wait_until(lambda: not alive(drainer), 15, "the drainer to finish and exit")
