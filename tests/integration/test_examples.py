"""The examples, run as real programs: each starts as a subprocess on a kernel-chosen port
(learnt from its "Server ready: ..." log line on stderr) and is spoken to by real stdlib
TCP/TLS clients; the locustfile in a real, bounded headless locust run."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from support.process import FINGERPRINT, REPO, ServerProcess, python_env
from support.tls import unverified

pytestmark = pytest.mark.timeout(30)

EXAMPLES = REPO / "examples"


def example_env() -> dict[str, str]:
    """The environment of an example: this checkout's gnetserver first on the path."""
    return python_env(REPO)


class Example(ServerProcess):
    """One example running as a subprocess (see ServerProcess), stopped with SIGTERM."""

    def __init__(self, script: str, *args: str) -> None:
        super().__init__([sys.executable, str(EXAMPLES / script), *args], env=example_env(),
                         cwd=REPO, terminate=True)

    def wait_ready(self) -> dict[str, tuple[str, int]]:
        """Block until "Server ready"; return {proto: (host, port)} of its listeners."""
        return {proto: (host, port) for host, port, proto in self.ports()}

    def fingerprint(self) -> str:
        """The SHA-256 fingerprint the example logged for its generated certificate."""
        match = FINGERPRINT.search(self.log)
        assert match, f"no fingerprint logged:\n{self.log}"
        return match[1]


@pytest.fixture
def run_example(spawn: Callable[..., Example]) -> Callable[..., Example]:
    """Start examples; every one is stopped at teardown."""
    return lambda script, *args: spawn(script, *args, factory=Example)


def tls_client(where: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(where, timeout=10)
    try:
        return context.wrap_socket(raw, server_hostname="localhost")
    except BaseException:
        raw.close()
        raise


def fingerprint_of(sock: ssl.SSLSocket) -> str:
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return hashlib.sha256(der).hexdigest().upper()


def exchange(sock: socket.socket, lines: list[bytes]) -> list[bytes]:
    """Send each line and read one line back per line sent."""
    answers = []
    with sock.makefile("rb") as reader:
        for line in lines:
            sock.sendall(line)
            answers.append(reader.readline())
    return answers


# -- echo_server.py -----------------------------------------------------------------------------

# The long one (partial writes, several TLS records) is the longest line max_line_length lets
# through by default: 64 KiB with its end.
LINES = [b"hello\n", b"second line\r\n", b"x" * (64 * 1024 - 1) + b"\n"]


def test_echo_server_self_signed(run_example: Callable[..., Example]) -> None:
    """With no certificate, the echo server makes one, logs its fingerprint and echoes lines."""
    echo = run_example("echo_server.py", "--port", "127.0.0.1:0/ssl")
    ports = echo.wait_ready()
    with tls_client(ports["ssl"], unverified()) as sock:
        assert fingerprint_of(sock) == echo.fingerprint().replace(":", "")
        assert exchange(sock, LINES) == LINES


def test_echo_server_with_certificate_files(
    run_example: Callable[..., Example], certs: dict[str, str], client_context: ssl.SSLContext
) -> None:
    """The documented command line: the given certificate is served and verifies."""
    echo = run_example("echo_server.py", "--port", "127.0.0.1:0/ssl",
                       "--SSL_cert_file", certs["SSL_cert_file"],
                       "--SSL_key_file", certs["SSL_key_file"])
    ports = echo.wait_ready()
    with tls_client(ports["ssl"], client_context) as sock:
        assert exchange(sock, LINES[:2]) == LINES[:2]
    assert "self-signed" not in echo.log


def test_echo_server_bad_certificate_path(tmp_path: Path) -> None:
    """A missing certificate stops the start with a message naming the option and the file."""
    missing = str(tmp_path / "missing.pem")
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "echo_server.py"), "--port", "127.0.0.1:0/ssl",
         "--SSL_cert_file", missing], env=example_env(), capture_output=True, timeout=20,
    )
    assert done.returncode != 0
    assert "SSL_cert_file" in done.stderr.decode() and missing in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


# -- two_port_server.py -------------------------------------------------------------------------


def test_two_port_server_generated_certificate(run_example: Callable[..., Example]) -> None:
    """A TLS port with a certificate made at start and a plain TCP port, both answering."""
    server = run_example("two_port_server.py", "--tls-port", "0", "--tcp-port", "0")
    ports = server.wait_ready()
    with tls_client(ports["ssl"], unverified()) as sock:
        assert fingerprint_of(sock) == server.fingerprint().replace(":", "")
        assert exchange(sock, [b"over tls\n"]) == [b"[ssl] over tls\n"]
    with socket.create_connection(ports["tcp"], timeout=10) as sock:
        assert exchange(sock, [b"in clear\n", b"again\n"]) == [b"[tcp] in clear\n",
                                                              b"[tcp] again\n"]


def test_two_port_server_given_certificate(
    run_example: Callable[..., Example], certs: dict[str, str], client_context: ssl.SSLContext
) -> None:
    """--cert/--key go into the TLS port's dict; that port presents them, TCP stays plain."""
    server = run_example("two_port_server.py", "--tls-port", "0", "--tcp-port", "0",
                         "--cert", certs["SSL_cert_file"], "--key", certs["SSL_key_file"])
    ports = server.wait_ready()
    with tls_client(ports["ssl"], client_context) as sock:
        assert exchange(sock, [b"verified\n"]) == [b"[ssl] verified\n"]
    with socket.create_connection(ports["tcp"], timeout=10) as sock:
        assert exchange(sock, [b"plain\n"]) == [b"[tcp] plain\n"]
    assert "Generated" not in server.log


# -- monkey_patched_legacy.py -------------------------------------------------------------------

DELAY = 0.5
CLIENTS = 40


def test_monkey_patched_legacy_serves_clients_concurrently(
    run_example: Callable[..., Example],
) -> None:
    """Blocking time.sleep and socket code in process_request: 40 clients, each delayed 0.5 s,
    finish together (serially they would need 20 s)."""
    legacy = run_example("monkey_patched_legacy.py", "--port", "127.0.0.1:0/ssl",
                         "--legacy_delay", str(DELAY))
    where = legacy.wait_ready()["ssl"]
    assert "monkey-patched: socket, ssl, time, threading" in legacy.log
    answers: dict[int, list[bytes]] = {}
    context = unverified()

    def client(number: int) -> None:
        with tls_client(where, context) as sock:
            answers[number] = exchange(sock, [f"client {number}\n".encode()])

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    elapsed = time.monotonic() - started
    assert answers == {n: [f"CLIENT {n}\n".encode()] for n in range(CLIENTS)}
    assert elapsed < CLIENTS * DELAY / 4, f"{CLIENTS} clients took {elapsed:.2f} s"


def test_monkey_patched_legacy_clients_mode(run_example: Callable[..., Example]) -> None:
    """The example's own client mode: blocking client code, concurrent under the patch."""
    legacy = run_example("monkey_patched_legacy.py", "--port", "127.0.0.1:0/ssl",
                         "--legacy_delay", "0.2")
    host, port = legacy.wait_ready()["ssl"]
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "monkey_patched_legacy.py"), "clients", "20",
         f"{host}:{port}"], env=example_env(), capture_output=True, timeout=20,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout.decode().startswith("20 answers from 20 clients in ")


# -- locustfile.py ------------------------------------------------------------------------------


def test_locustfile_bounded_headless_run(run_example: Callable[..., Example],
                                         tmp_path: Path) -> None:
    """A real, bounded locust run (3 users, 3 s) against the echo example: requests of every
    kind are recorded and none fails."""
    # Only look the package up: importing locust would monkey-patch the test process.
    if importlib.util.find_spec("locust") is None:
        pytest.skip("locust is in the test extras: pip install '.[test]'")
    echo = run_example("echo_server.py", "--port", "127.0.0.1:0/ssl")
    host, port = echo.wait_ready()["ssl"]
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(EXAMPLES / "locustfile.py"), "--headless",
         "-u", "3", "-r", "3", "-t", "3s", "--stop-timeout", "2", "--host", f"{host}:{port}",
         "--csv", str(tmp_path / "run"), "--only-summary", "--loglevel", "WARNING"],
        env=example_env(), capture_output=True, timeout=40,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    with open(tmp_path / "run_stats.csv", newline="") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    assert int(rows["echo"]["Request Count"]) > 0, rows
    assert int(rows["connect"]["Request Count"]) > 0, rows
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), rows


# -- bench/echo_tls.py --------------------------------------------------------------------------


def test_bench_echo_tls_smoke() -> None:
    """The benchmark runs end to end at a tiny size and prints its comparison table (a smoke
    test: the numbers of such a short run mean nothing)."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "echo_tls.py"), "--no-pin", "--rounds", "1",
         "--keys", "ecdsa", "--connections", "4", "--requests", "20", "--handshakes", "10",
         "--concurrency", "2", "--idle", "10", "--phase-timeout", "5"],
        env=example_env(), capture_output=True, timeout=25,
    )
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "| server CPU per request (µs) |" in out
    assert "| server CPU per handshake, ECDSA P-256 (µs) |" in out
    assert "Negotiated: TLSv1.3" in out


# -- the HTTP examples -------------------------------------------------------------------------


def https_get(where: tuple[str, int], path: str, body: bytes | None = None) -> tuple[str, str]:
    """One HTTP/1.1 request over TLS (certificate not checked: self-signed); (head, body)."""
    method = "GET" if body is None else "POST"
    extra = "" if body is None else (f"Content-Type: application/x-www-form-urlencoded\r\n"
                                     f"Content-Length: {len(body)}\r\n")
    with tls_client(where, unverified()) as sock:
        sock.sendall(f"{method} {path} HTTP/1.1\r\nHost: localhost\r\n{extra}"
                     "Connection: close\r\n\r\n".encode() + (body or b""))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.decode().partition("\r\n\r\n")
    return head, rest


def test_https_app_example(run_example: Callable[..., Example]) -> None:
    """The Net::Server::HTTP style example: its routes answer; the access log is on stdout."""
    server = run_example("https_app.py", "--port", "127.0.0.1:0/ssl")
    where = server.wait_ready()["ssl"]
    head, body = https_get(where, "/hello/ana")
    assert head.startswith("HTTP/1.1 200 OK") and body == "Hello, ana!\n"
    head, body = https_get(where, "/echo", b"name=ana")
    assert body == "name=ana"
    head, body = https_get(where, "/env")
    assert "<td>HTTPS</td><td>on</td>" in body


def test_flask_app_with_the_wsgi_flag(spawn: Callable[..., ServerProcess]) -> None:
    """``gnetserver --wsgi examples.flask_app:app``: a Flask app's routes over TLS."""
    pytest.importorskip("flask")
    server = spawn([sys.executable, "-m", "gnetserver", "--wsgi", "examples.flask_app:app",
                    "--port", "127.0.0.1:0/ssl", "--self_signed", "1"], env=example_env(),
                   cwd=REPO, terminate=True)
    host, port, _ = server.ports()[0]
    head, body = https_get((host, port), "/")
    assert head.startswith("HTTP/1.1 200 OK") and '"scheme":"https"' in body.replace(" ", "")
    head, body = https_get((host, port), "/items", b"item=pen")
    assert '"pen"' in body
    head, body = https_get((host, port), "/count/3")
    assert "Transfer-Encoding: chunked" in head


def test_locustfile_http_bounded_headless_run(run_example: Callable[..., Example],
                                              tmp_path: Path) -> None:
    """A real, bounded locust run (3 users, 3 s) with HttpUser against the Flask example:
    requests of every kind recorded, none failed."""
    if importlib.util.find_spec("locust") is None or importlib.util.find_spec("flask") is None:
        pytest.skip("locust and flask are in the test extras: pip install '.[test]'")
    server = run_example("flask_app.py", "--port", "127.0.0.1:0/ssl")
    host, port = server.wait_ready()["ssl"]
    done = subprocess.run(
        [sys.executable, "-m", "locust", "-f", str(EXAMPLES / "locustfile_http.py"),
         "--headless", "-u", "3", "-r", "3", "-t", "3s", "--stop-timeout", "2", "--host",
         f"https://{host}:{port}", "--csv", str(tmp_path / "run"), "--only-summary",
         "--loglevel", "WARNING"],
        env=example_env(), capture_output=True, timeout=40,
    )
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    with open(tmp_path / "run_stats.csv", newline="") as stats:
        rows = {row["Name"]: row for row in csv.DictReader(stats)}
    for name in ("index", "items POST", "count (streamed)"):
        assert int(rows[name]["Request Count"]) > 0, rows
    assert all(int(row["Failure Count"]) == 0 for row in rows.values()), rows
