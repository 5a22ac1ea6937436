"""New certificates on HUP (issue 3 point 6, issue 4 point 6), against a real subprocess.

``python -m gnetserver`` (the demo's echo) serves a TLS port with certificate A from the test
CA. A client connects and keeps its connection open; the certificate and key files are then
replaced on disk by certificate B (same CA, other subject and serial) and the server gets a
SIGHUP. What the code does (gnetserver/server.py ``handle_hup`` and ``restart_in_place``,
restart.py): the listening socket is dup'ed and kept open, a drainer child is forked and the
process re-executes itself at once (same pid); the new image adopts the socket and builds its
TLS contexts from the files again. The drainer keeps accepting (certificate A) until the new
image accepts, then stops; its established connections get ``graceful_timeout`` seconds to end
by themselves (they are cut, without a close_notify, when it runs out). None is refused;
connections made once the drainer has stopped get certificate B. (Before the drainer, the
old image drained first and connections made meanwhile waited in the listen backlog.)

The twin: the files are replaced by a broken key. ``handle_hup`` first runs the new image's
start-up without its effects (``restart_problem``, ``dry_run_start``: options from every
source including the conf file, ports, the TLS contexts of ssl and ssleay ports from the
files on disk); here it fails, so the HUP is refused with a level-1 log line and the server
keeps serving with its current contexts, as ``reload_tls()`` does (see test_tls_reload.py).
Net::Server would re-exec and die; a botched certificate renewal must not take a TLS daemon
down. The same holds for a conf file edited into one the server cannot start with (a bad
value, a certificate path that does not exist, an option the ssleay port refuses): refused,
still serving; once the file is fixed, the next HUP restarts.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import trustme
from support.net import HOSTS, wait_until
from support.process import READY, REPO, ServerProcess, Where, python_env, read_pid
from support.sigserver import refused

pytestmark = pytest.mark.timeout(30)

GRACEFUL = 3.0  # graceful_timeout of the server under test, in seconds


def der_of(leaf: trustme.LeafCert) -> bytes:
    """The DER bytes of a leaf certificate (what a client receives)."""
    return ssl.PEM_cert_to_DER_cert(leaf.cert_chain_pems[0].bytes().decode("ascii"))


def install(cert: Path, key: Path, cert_pem: bytes, key_pem: bytes) -> None:
    """Replace both files on disk the way a deployment does: write aside, then rename."""
    for path, data in ((cert, cert_pem), (key, key_pem)):
        aside = path.with_suffix(".new")
        aside.write_bytes(data)
        os.replace(aside, path)


def install_leaf(cert: Path, key: Path, leaf: trustme.LeafCert) -> None:
    install(cert, key, b"".join(blob.bytes() for blob in leaf.cert_chain_pems),
            leaf.private_key_pem.bytes())


class Session:
    """One TLS connection to the echo server, kept open: its certificate and welcome line."""

    def __init__(self, where: Where, context: ssl.SSLContext, timeout: float = 10.0) -> None:
        raw = socket.create_connection(where[:2], timeout=timeout)
        try:  # ragged EOFs raise: a cut (no close_notify) must be told from a clean close
            self.tls = context.wrap_socket(raw, server_hostname="localhost",
                                           suppress_ragged_eofs=False)
        except BaseException:
            raw.close()
            raise
        self.der = self.tls.getpeercert(binary_form=True)
        self.reader = self.tls.makefile("rb")
        self.welcome = self.reader.readline().decode()

    def say(self, text: str) -> str:
        """One echo round trip: the server's answer line."""
        self.tls.sendall(f"{text}\r\n".encode())
        return self.reader.readline().decode()

    def end(self) -> tuple[str, float]:
        """Wait for the server to end the connection: how ("close_notify", "cut" for a TCP
        EOF or reset without close_notify, or the unexpected data) and when."""
        try:
            data = self.tls.recv(1024)  # b"" only after a close_notify (ragged EOFs raise)
            how = f"data {data!r}" if data else "close_notify"
        except ssl.SSLZeroReturnError:
            how = "close_notify"
        except (ssl.SSLEOFError, ConnectionResetError):
            how = "cut"
        return how, time.monotonic()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        self.reader.close()
        self.tls.close()


def probe(where: Where, context: ssl.SSLContext) -> tuple[bytes | None, str]:
    """A new connection: the certificate it gets and the welcome line (which names the pid)."""
    session = Session(where, context)
    try:
        return session.der, session.welcome
    finally:
        session.close()


class Knocker(threading.Thread):
    """Plain TCP connects in a loop (connect, close) until stopped: counts every attempt and
    keeps the ones that failed, so a refused connection during a restart cannot hide."""

    def __init__(self, where: Where, limit: int = 1000) -> None:
        super().__init__(daemon=True)
        self.where, self.limit = where, limit
        self.attempts = 0
        self.failures: list[BaseException] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and self.attempts < self.limit:
            self.attempts += 1
            try:
                socket.create_connection(self.where[:2], timeout=5).close()
            except OSError as exc:
                self.failures.append(exc)
            self.done.wait(0.01)  # paces the loop; the attempts are the measurement

    def finish(self) -> tuple[int, list[BaseException]]:
        """Stop knocking (idempotent): how many attempts were made, and the failed ones."""
        self.done.set()
        self.join(10)
        assert not self.is_alive()
        return self.attempts, self.failures


def start_server(spawn: Any, folder: Path, cert: Path, key: Path, *args: str) -> ServerProcess:
    """``python -m gnetserver`` on 127.0.0.1:0/ssl with the given files, its stderr collected."""
    env = python_env(REPO)
    env.pop("BOUND_SOCKETS", None)
    return spawn([sys.executable, "-m", "gnetserver", "--port", "127.0.0.1:0/ssl",
                  "--SSL_cert_file", str(cert), "--SSL_key_file", str(key),
                  "--graceful_timeout", f"{GRACEFUL:g}", *args],
                 env=env, cwd=folder, terminate=True)


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """Where the server reads its certificate and key (replaced on disk by the tests)."""
    return tmp_path / "server.crt", tmp_path / "server.key"


@pytest.fixture
def pool() -> Iterator[ThreadPoolExecutor]:
    """Threads for clients that wait (every socket in them has a timeout)."""
    with ThreadPoolExecutor(max_workers=6) as executor:
        yield executor


@pytest.fixture
def cleanup(pool: ThreadPoolExecutor) -> Iterator[ExitStack]:
    """Sessions and the knocker a test opens, closed at teardown (before the pool joins)."""
    with ExitStack() as stack:
        yield stack


def opened(cleanup: ExitStack, where: Where, context: ssl.SSLContext) -> Session:
    """A Session closed at teardown whatever happens."""
    session = Session(where, context)
    cleanup.callback(session.close)
    return session


def test_hup_serves_new_certificate_without_refusing_or_cutting_early(
        spawn: Any, ca: trustme.CA, client_context: ssl.SSLContext, tmp_path: Path,
        files: tuple[Path, Path], pool: ThreadPoolExecutor, cleanup: ExitStack) -> None:
    cert, key = files
    leaf_a = ca.issue_cert(*HOSTS, common_name="cert A", organization_unit_name="before HUP")
    leaf_b = ca.issue_cert(*HOSTS, common_name="cert B", organization_unit_name="after HUP")
    assert der_of(leaf_a) != der_of(leaf_b)
    install_leaf(cert, key, leaf_a)
    server = start_server(spawn, tmp_path, cert, key)
    where = server.ports()[0]
    pid = server.pid
    busy, idle = opened(cleanup, where, client_context), opened(cleanup, where, client_context)
    assert busy.der == idle.der == der_of(leaf_a)
    assert busy.welcome == f'Welcome to "DemoServer" ({pid})\r\n'
    assert busy.say("before") == f'DemoServer:{pid}: You said "before"\r\n'

    install_leaf(cert, key, leaf_b)
    knocker = Knocker(where)
    knocker.start()
    cleanup.callback(knocker.finish)
    idle_end: Future[tuple[str, float]] = pool.submit(idle.end)
    hup_at = time.monotonic()
    server.send(signal.SIGHUP)
    server.wait_for(rf"Waiting up to {GRACEFUL:g}s for \d+ connection\(s\) to finish")  # 2 + knocks
    # The drainer logs that wait once the new image accepts: it alone accepts from now on.
    probes = [pool.submit(probe, where, client_context)]
    # The established connection keeps working through the drain, until it ends itself.
    assert busy.der == der_of(leaf_a)
    assert busy.say("during the HUP") == f'DemoServer:{pid}: You said "during the HUP"\r\n'
    assert busy.say("quit") == f'DemoServer:{pid}: You said "quit"\r\n'
    assert busy.end()[0] == "close_notify"  # closed by the server after quit, as always
    busy.close()
    server.wait_for("Re-exec server during HUP")
    probes.append(pool.submit(probe, where, client_context))
    assert server.ports(2) == [where]
    probes.append(pool.submit(probe, where, client_context))
    # The idle connection was cut (no close_notify) once graceful_timeout ran out, not before.
    how, ended_at = idle_end.result(15)
    idle.close()
    assert how == "cut" and GRACEFUL - 0.2 <= ended_at - hup_at < GRACEFUL + 5, (how, ended_at)
    attempts, failures = knocker.finish()
    for future in probes:
        der, welcome = future.result(15)
        assert der == der_of(leaf_b)
        assert welcome == f'Welcome to "DemoServer" ({pid})\r\n'  # same pid
    assert attempts > 20 and failures == [], (attempts, failures)
    assert server.proc.poll() is None and server.count(READY.pattern) == 2
    server.send(signal.SIGTERM)
    assert server.wait_exit(10) == 0
    assert refused(where)


def test_hup_with_a_broken_key_keeps_serving_the_current_certificate(
        spawn: Any, ca: trustme.CA, client_context: ssl.SSLContext, tmp_path: Path,
        files: tuple[Path, Path], cleanup: ExitStack) -> None:
    """The twin: a renewed certificate with a broken key must not take the server down. The
    HUP is refused before any re-exec (logged, level 1); connections, the pid and the pid file
    are untouched, and new clients still get the current certificate. Once the files are
    fixed, the next HUP restarts as usual."""
    cert, key = files
    leaf = ca.issue_cert(*HOSTS)
    install_leaf(cert, key, leaf)
    pid_file = tmp_path / "server.pid"
    server = start_server(spawn, tmp_path, cert, key, "--pid_file", str(pid_file))
    where = server.ports()[0]
    assert read_pid(pid_file) == server.pid
    held = opened(cleanup, where, client_context)

    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    broken = b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n"
    install(cert, key, chain, broken)
    server.send(signal.SIGHUP)
    refusal = server.wait_for(r"HUP ignored, still serving with the current configuration: (.*)$")
    assert "SSL_key_file" in refusal.group(1) and str(key) in refusal.group(1), refusal.group(1)
    assert server.count("Re-exec server during HUP") == 0
    # The held connection was never disturbed; new clients get the current certificate.
    assert held.say("still here").endswith('You said "still here"\r\n')
    der, welcome = probe(where, client_context)
    assert der == der_of(leaf) and welcome == f'Welcome to "DemoServer" ({server.pid})\r\n'
    assert server.proc.poll() is None and read_pid(pid_file) == server.pid
    # Fixed files: the next HUP re-executes as usual, same pid, same port.
    install_leaf(cert, key, leaf)
    assert held.say("quit").endswith('You said "quit"\r\n')
    held.close()
    server.send(signal.SIGHUP)
    server.wait_for("Re-exec server during HUP")
    assert server.ports(2) == [where]
    assert probe(where, client_context)[0] == der_of(leaf)
    assert read_pid(pid_file) == server.pid
    server.send(signal.SIGTERM)
    assert server.wait_exit(10) == 0
    assert refused(where)
    wait_until(lambda: not pid_file.exists(), 5, "the pid file to be removed")


def conf_text(cert: Path | str, key: Path, *extra: str) -> str:
    """A conf file for an ssl and an ssleay port with these files, plus ``extra`` lines."""
    lines = ["port 127.0.0.1:0/ssl", "port 127.0.0.1:0/ssleay", f"SSL_cert_file {cert}",
             f"SSL_key_file {key}", "graceful_timeout 1", *extra]
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda cert, key: conf_text(cert, key, "log_level loud"),
         "option 'log_level': bad value (conf_file "),
        (lambda cert, key: conf_text("/nonexistent/cert.pem", key),
         "port 127.0.0.1:0/ssl: SSL_cert_file '/nonexistent/cert.pem': cannot read"),
        # Accepted by the ssl port (pyOpenSSL), refused by the ssleay port's stdlib context:
        (lambda cert, key: conf_text(cert, key, "SSL_ecdh_curve P-256:P-384"),
         "port 127.0.0.1:0/ssleay: SSL_ecdh_curve 'P-256:P-384': proto ssleay takes one"),
    ],
    ids=["bad-value", "missing-certificate", "ssleay-refuses"],
)
def test_hup_with_a_conf_file_that_cannot_start_keeps_serving(
        spawn: Any, ca: trustme.CA, client_context: ssl.SSLContext, tmp_path: Path,
        files: tuple[Path, Path], cleanup: ExitStack, edit: Any, reason: str) -> None:
    """The conf file is edited into one the new image would die on: the HUP is refused before
    any re-exec, both ports keep serving, the held connection is untouched. Fixed, the next
    HUP restarts in place as usual (the dry run refuses nothing it should not)."""
    cert, key = files
    leaf = ca.issue_cert(*HOSTS)
    install_leaf(cert, key, leaf)
    conf = tmp_path / "server.conf"
    conf.write_text(conf_text(cert, key))
    env = python_env(REPO)
    env.pop("BOUND_SOCKETS", None)
    server = spawn([sys.executable, "-m", "gnetserver", "--conf_file", str(conf)], env=env,
                   cwd=tmp_path, terminate=True)
    ports = server.ports()
    assert [proto for _, _, proto in ports] == ["ssl", "ssleay"]
    held = opened(cleanup, ports[1], client_context)

    conf.write_text(edit(cert, key))
    server.send(signal.SIGHUP)
    refusal = server.wait_for(r"HUP ignored, still serving with the current configuration: (.*)$")
    assert reason in refusal.group(1), refusal.group(1)
    assert server.count("Re-exec server during HUP") == 0
    assert held.say("still here").endswith('You said "still here"\r\n')
    for where in ports:
        der, welcome = probe(where, client_context)
        assert der == der_of(leaf) and welcome == f'Welcome to "DemoServer" ({server.pid})\r\n'
    assert server.proc.poll() is None

    conf.write_text(conf_text(cert, key))
    assert held.say("quit").endswith('You said "quit"\r\n')
    held.close()
    server.send(signal.SIGHUP)
    server.wait_for("Re-exec server during HUP")
    assert server.ports(2) == ports
    assert probe(ports[1], client_context)[0] == der_of(leaf)
    server.send(signal.SIGTERM)
    assert server.wait_exit(10) == 0
