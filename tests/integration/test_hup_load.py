"""Measured, nothing lost (issue 4, point 7): HUP and QUIT under load, on a TLS port.

The server runs as a real subprocess (``python -m gnetserver --server ...``, see
support/sigserver.py) with a pid file. Twenty client threads (stdlib ssl, verified against the
test CA) each do request/response round-trips in a loop, one TLS connection per request, and every
request is recorded with the last stage it reached and what came back. Then:

(a) a HUP in the middle: every request gets its full response, none is refused, and the pid
    stays the same (responses come from both process images: their tokens differ; the old
    image's come from the server's pid, or from the drainer the HUP forked, which finishes
    the previous generation's connections and accepts until the new image does);
(b) a QUIT in the middle, with requests held 0.3 s in the server: every connection the server
    accepted (its log names the client's port) gets its full response, so a request started
    before the QUIT either completes or was never accepted (left in the listen backlog when
    the port closed); the others started after the QUIT;
(c) afterwards: after the HUP the pid file still holds the same pid and the port answers;
    after TERM or QUIT the process is gone, the port refuses and the pid file is removed.
"""

from __future__ import annotations

import re
import signal
import ssl
import time
from pathlib import Path
from typing import Any

import pytest
from support.load import Load, Record
from support.net import wait_until
from support.process import Where, read_pid
from support.sigserver import SignalServerProcess, refused

pytestmark = pytest.mark.timeout(40)

CLIENTS = 20


def full_response(record: Record, pid: int, *others: int) -> str | None:
    """The token of a complete, correct response from ``pid`` (or one of ``others``: a HUP's
    drainer), else None."""
    pids = "|".join(map(str, (pid, *others)))
    match = re.fullmatch(rf"(?:{pids}) (\w+) {re.escape(record.payload)}\n",
                         record.response or "")
    return match.group(1) if match else None


def summary(records: list[Record]) -> str:
    bad = [r for r in records if r.error is not None or r.response is None][:5]
    return f"{len(records)} requests; first failures: " + "; ".join(
        f"{r.payload} at {r.stage}: {r.error!r} {r.response!r}" for r in bad)


#: A client port in the server's log: its CONNECT line or a failed handshake.
SEEN_PEER = re.compile(r'(?:Peer: "|from )\[127\.0\.0\.1\]:(\d+)')


def start_with_pid_file(start_sigserver: Any, tmp_path: Path,
                        *args: str) -> tuple[SignalServerProcess, Path, Where, str]:
    """The server on a TLS port with a pid file: (server, pid file, port, first token)."""
    pid_file = tmp_path / "server.pid"
    server = start_sigserver("--port", "127.0.0.1:0/ssl", "--graceful_timeout", "10",
                             "--pid_file", str(pid_file), *args)
    return server, pid_file, server.ports()[0], server.token()


def test_hup_under_load_loses_and_refuses_nothing(
        start_sigserver: Any, client_context: ssl.SSLContext, tmp_path: Path) -> None:
    server, pid_file, where, first = start_with_pid_file(start_sigserver, tmp_path)
    assert read_pid(pid_file) == server.pid
    load = Load(where, client_context, delay=0.02, clients=CLIENTS).start()
    try:
        wait_until(lambda: load.count() >= 60, 20, "60 requests before the HUP")
        server.send(signal.SIGHUP)
        assert server.ports(2)[0] == where  # same port, same socket
        second = server.token(2)
        wait_until(lambda: load.count(lambda r: second in (r.response or "")) >= 60, 20,
                   "60 requests answered by the re-executed server")
    finally:
        records = load.finish()
    drainer = server.drainer()
    tokens = [full_response(r, server.pid, drainer) for r in records]
    assert all(tokens), summary(records)  # every request: a full response from our pid
    assert not [r for r in records if isinstance(r.error, ConnectionRefusedError)]
    assert set(tokens) == {first, second}, "responses from both images, one pid"
    # (c) after the HUP: same process, pid file kept with the same pid, port listening.
    assert server.proc.poll() is None and server.count("Re-exec server during HUP") == 1
    assert read_pid(pid_file) == server.pid
    assert full_response(Load(where, client_context, 0)._request("after"), server.pid)
    # (c) after TERM: the port is closed and the pid file removed.
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert refused(where) and not pid_file.exists()


def test_quit_under_load_finishes_every_started_request(
        start_sigserver: Any, client_context: ssl.SSLContext, tmp_path: Path) -> None:
    # Level 3: a CONNECT line (or a handshake failure) names every client port accepted.
    server, pid_file, where, token = start_with_pid_file(start_sigserver, tmp_path,
                                                         "--log_level", "3")
    load = Load(where, client_context, delay=0.3, stop_on_error=True, clients=CLIENTS).start()
    try:
        wait_until(lambda: load.count() >= 40, 20, "40 requests before the QUIT")
        quit_at = time.monotonic()
        server.send(signal.SIGQUIT)
        assert server.wait_exit(15) == 0
    finally:
        records = load.finish()
    started = [r for r in records if r.stage == "sent"]  # the TLS handshake completed
    assert all(full_response(r, server.pid) == token for r in started), summary(started)
    # Every connection the server accepted, before or after the QUIT, got its full response:
    # a request started before the QUIT failed only if it was never accepted (still in the
    # listen backlog when the port closed).
    accepted = {int(m.group(1)) for m in map(SEEN_PEER.search, server.log.splitlines()) if m}
    assert len(accepted) >= 40
    lost = [r for r in records if full_response(r, server.pid) != token]
    assert not [r for r in lost if r.port in accepted], summary(lost)
    assert lost, "no connection was refused: the load did not outlast the QUIT"
    in_flight = [r for r in started if r.started < quit_at < r.ended]
    assert len(in_flight) >= CLIENTS // 2, f"{len(in_flight)} requests were in flight"
    # (c) after QUIT: the port is closed and the pid file removed.
    assert refused(where) and not pid_file.exists()
