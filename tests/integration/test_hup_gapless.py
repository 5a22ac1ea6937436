"""A HUP that never stops accepting (issue 9), against a real subprocess on a TLS port.

On HUP the server forks a drainer child and re-executes itself at once (same pid): the drainer
keeps the previous generation's connections and keeps accepting until the new image accepts,
then stops accepting and gives its sessions ``graceful_timeout``; the new image reaps it.

(a) Under a small load (a few client threads, one TLS request per connection), every
    connection started after the HUP gets its first byte while a session opened before the
    HUP is still open, long before that session's end (the drainer's deadline): nobody waits
    for the drain any more (the old HUP made them wait ``graceful_timeout``: 5.1 s measured).
    The times to first byte are printed (``pytest -s``) and bounded by 1 s.
(b) No session younger than ``graceful_timeout`` is cut: an idle session opened before the
    HUP sends its request after the new image accepts and gets its answer (from the
    drainer, with the old image's token); a silent one is closed by the drainer's deadline
    only, ``graceful_timeout`` after the HUP or later.
(c) The pid and the pid file do not change; the drainer is reaped (no zombie left), and after
    a second HUP the third image reaps the drainer the first HUP left; TERM to the server
    cuts what a drainer still runs.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from support.net import read_until_eof, wait_until
from support.process import REPO, Where, python_env, read_pid
from support.sigserver import SignalServerProcess, connect, refused

pytestmark = pytest.mark.timeout(40)

GRACE = 3  # the server's graceful_timeout, seconds
CLIENTS = 4  # a small load: the machine's 2 cores are shared


@dataclass
class Timed:
    """One request on its own connection: when it started, when its first byte came, what
    came back (or the error)."""

    started: float
    first_byte: float | None = None
    response: str = ""
    error: BaseException | None = None


def timed_request(where: Where, context: ssl.SSLContext, payload: str) -> Timed:
    """Connect, handshake, send ``0 payload``, read the whole response; timed."""
    record = Timed(time.monotonic())
    try:
        with connect(where, context) as sock:
            sock.sendall(f"0 {payload}\n".encode())
            first = sock.recv(1)
            record.first_byte = time.monotonic()
            record.response = (first + read_until_eof(sock)).decode()
    except (OSError, ssl.SSLError) as exc:
        record.error = exc
    return record


class Load:
    """``CLIENTS`` threads doing timed requests in a loop until :meth:`finish`."""

    def __init__(self, where: Where, context: ssl.SSLContext) -> None:
        self.records: list[Timed] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(where, context, i),
                                          daemon=True) for i in range(CLIENTS)]
        for thread in self._threads:
            thread.start()

    def _client(self, where: Where, context: ssl.SSLContext, index: int) -> None:
        number = 0
        while not self._stop.is_set():
            number += 1
            record = timed_request(where, context, f"c{index}-{number}")
            with self._lock:
                self.records.append(record)

    def count(self) -> int:
        with self._lock:
            return len(self.records)

    def finish(self) -> list[Timed]:
        self._stop.set()
        for thread in self._threads:
            thread.join(20)
        assert not any(thread.is_alive() for thread in self._threads)
        return self.records


class Idle:
    """A TLS session opened now (handshake done) that sends nothing until told."""

    def __init__(self, where: Where, context: ssl.SSLContext) -> None:
        self.sock = connect(where, context, timeout=30)
        self.opened = time.monotonic()

    def ask(self, payload: str) -> str:
        self.sock.sendall(f"0 {payload}\n".encode())
        return read_until_eof(self.sock).decode()

    def wait_end(self) -> tuple[str, float]:
        """Wait for the server to end the session: what came (b"" or a reset) and when."""
        try:
            data = self.sock.recv(100)
            how = f"data {data!r}" if data else "eof"
        except (ssl.SSLError, ConnectionResetError) as exc:
            how = f"cut ({type(exc).__name__})"
        return how, time.monotonic()

    def close(self) -> None:
        self.sock.close()


def start(start_sigserver: Any, tmp_path: Path, grace: int = GRACE,
          ) -> tuple[SignalServerProcess, Path, Where, str]:
    pid_file = tmp_path / "server.pid"
    server = start_sigserver("--port", "127.0.0.1:0/ssl", "--graceful_timeout", str(grace),
                             "--pid_file", str(pid_file), "--log_level", "2")
    return server, pid_file, server.ports()[0], server.token()


def gone(pid: int) -> bool:
    """True once no process (not even a zombie) has this pid: it was reaped."""
    return not Path(f"/proc/{pid}").exists()


def test_hup_keeps_accepting_and_cuts_no_young_session(
        start_sigserver: Any, client_context: ssl.SSLContext, tmp_path: Path) -> None:
    server, pid_file, where, first = start(start_sigserver, tmp_path)
    assert read_pid(pid_file) == server.pid
    asks, silent = Idle(where, client_context), Idle(where, client_context)
    ender: list[tuple[str, float]] = []  # how and when the silent session ended
    waiter = threading.Thread(target=lambda: ender.append(silent.wait_end()), daemon=True)
    waiter.start()
    load = Load(where, client_context)
    try:
        wait_until(lambda: load.count() >= 10, 20, "10 requests before the HUP")
        hup_at = time.monotonic()
        server.send(signal.SIGHUP)
        second = server.token(2)
        drainer = server.drainer_stopped()
        # The idle session, opened before the HUP, is served after it by the drainer.
        assert asks.ask("late") == f"{drainer} {first} late\n"
        wait_until(lambda: sum(second in r.response for r in load.records) >= 10, 20,
                   "10 requests answered by the new image")
    finally:
        records = load.finish()
        asks.close()
    waiter.join(GRACE + 10)
    silent.close()
    how, silent_end = ender[0]
    # (b) the silent session was ended by the drainer's deadline, not before.
    assert how in ("eof", "cut (SSLEOFError)", "cut (ConnectionResetError)"), how
    assert silent_end - hup_at >= GRACE - 0.2, silent_end - hup_at
    # (a) every connection started after the HUP: a full answer, from the new image or from
    # the drainer, its first byte before the silent session (opened before the HUP) ended.
    after = [r for r in records if r.started >= hup_at]
    assert len(after) >= 10
    failures = [r for r in after if r.error is not None or r.first_byte is None]
    assert not failures, failures[:3]
    for record in after:
        pid, token, _ = record.response.split(" ", 2)
        # The old image itself (its pid, the first token) may still answer a connection it
        # accepted between the kill() above and its signal handler running: the HUP is
        # delivered asynchronously, and that connection is then served in full.
        assert (int(pid), token) in ((server.pid, second), (drainer, first),
                                     (server.pid, first)), record
    waits = sorted(r.first_byte - r.started for r in after if r.first_byte is not None)
    print(f"\ntime to first byte after the HUP, {len(waits)} connections: "
          f"median {waits[len(waits) // 2] * 1000:.0f} ms, max {waits[-1] * 1000:.0f} ms")
    assert all(r.first_byte is not None and r.first_byte < silent_end for r in after)
    assert waits[-1] < 1.0, waits  # a sanity bound; the order above is the measurement
    by_drainer = [r for r in after if r.response.startswith(f"{drainer} ")]
    by_new = [r for r in after if r.response.startswith(f"{server.pid} ")]
    assert by_new, "the new image answered while the old session was still open"
    print(f"answered after the HUP: {len(by_drainer)} by the drainer, {len(by_new)} by the "
          "new image")
    # (c) same pid, same pid file; the drainer reaped by the new image: no zombie.
    server.wait_for(rf"HUP: drainer {drainer} of a previous generation exited with status 0")
    assert gone(drainer)
    assert server.proc.poll() is None and read_pid(pid_file) == server.pid
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert refused(where) and not pid_file.exists()


def test_second_hup_passes_the_first_drainer_on_and_term_cuts_it(
        start_sigserver: Any, client_context: ssl.SSLContext, tmp_path: Path) -> None:
    server, pid_file, where, _ = start(start_sigserver, tmp_path, grace=20)
    silent = Idle(where, client_context)
    try:
        server.send(signal.SIGHUP)
        first_drainer = server.drainer_stopped(1)  # keeps the silent session up to 20 s
        server.send(signal.SIGHUP)
        second_drainer = server.drainer_stopped(2)
        assert server.token(3)
        # The third image reaps the second drainer (no session: it ends at once)...
        server.wait_for(rf"HUP: drainer {second_drainer} of a previous generation exited")
        assert gone(second_drainer) and not gone(first_drainer)
        # ...and the first one, passed on by the second image, on TERM: cut now.
        term_at = time.monotonic()
        server.send(signal.SIGTERM)
        how, ended = silent.wait_end()
        assert server.wait_exit() == 0
    finally:
        silent.close()
    assert how != "data", how
    assert ended - term_at < 10  # not the drainer's 20 s
    server.wait_for(rf"HUP: drainer {first_drainer} of a previous generation exited")
    assert gone(first_drainer)
    assert read_pid(pid_file) is None and refused(where)


def test_a_stray_children_variable_is_ignored(spawn: Any, tmp_path: Path) -> None:
    """GNETSERVER_CHILDREN and GNETSERVER_READY_FD without the re-exec's marker for this pid
    (a first start) are ignored: no pid of someone else's is reaped or signalled."""
    sleeper = spawn([sys.executable, "-c", "import time; time.sleep(30)"])
    env = python_env(REPO)
    env.update(GNETSERVER_CHILDREN=str(sleeper.pid), GNETSERVER_READY_FD="7")
    server = spawn([sys.executable, "-m", "gnetserver", "--port", "127.0.0.1:0/tcp",
                    "--graceful_timeout", "0"], env=env, cwd=tmp_path)
    where = server.ports()[0]
    with socket.create_connection(where[:2], timeout=10) as sock:
        assert sock.recv(100).startswith(b"Welcome")
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert sleeper.proc.poll() is None and "drainer" not in server.log
    os.kill(sleeper.pid, signal.SIGKILL)
