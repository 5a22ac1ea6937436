"""Logging (issue 2, point 12): Net::Server's log_level 0-4 over stdlib logging, default 2, one
CONNECT line per connection at level 3 with the peer and local addresses."""

from __future__ import annotations

import logging
import re
import socket
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support.net import address, poll, read_until_eof, tls_connect
from support.process import README, REPO, python_env

from gnetserver import GServer
from gnetserver.docs import default_text
from gnetserver.log import LOCAL_SYSLOG_PATHS, LOGGER_NAME, NOTICE, STDLIB_LEVELS, syslog_address
from gnetserver.options import OPTIONS
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(20)

OPTIONS_BY_NAME = {option.name: option for option in OPTIONS}
EXPECTED_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: NOTICE, 3: logging.INFO,
                   4: logging.DEBUG}


@pytest.fixture
def records(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    """Captures every record of the gnetserver logger (from any thread) during the test."""
    caplog.set_level(logging.DEBUG, logger=LOGGER_NAME)
    return caplog


def ours(records: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The gnetserver records of the test's call phase so far."""
    return [r for r in records.records if r.name == LOGGER_NAME]


def configured(**options: object) -> GServer:
    server = GServer(commandline=[], **options)
    server.configure()
    return server


def test_levels_map_onto_stdlib() -> None:
    assert STDLIB_LEVELS == EXPECTED_LEVELS
    assert NOTICE == 25 and logging.getLevelName(NOTICE) == "NOTICE"
    assert logging.INFO < NOTICE < logging.WARNING


@pytest.mark.parametrize("log_level", range(5))
def test_log_level_filters_messages(log_level: int, records: pytest.LogCaptureFixture) -> None:
    """A message of level n is emitted when 0 < n <= log_level (Net::Server: nothing at 0)."""
    server = configured(log_level=log_level)
    for level in range(5):
        server.log(level, f"message at {level}")
    emitted = [(r.getMessage(), r.levelno) for r in ours(records)]
    expected = [(f"message at {level}", EXPECTED_LEVELS[level])
                for level in range(5) if log_level and level <= log_level]
    assert emitted == expected


def test_default_log_level_is_2(records: pytest.LogCaptureFixture) -> None:
    server = GServer()
    server.log(2, "before configure")
    server.log(3, "hidden before configure")
    server = configured()
    assert server.conf["log_level"] == 2
    server.log(2, "notice")
    server.log(3, "hidden")
    assert [r.getMessage() for r in ours(records)] == ["before configure", "notice"]


def test_connect_line_per_connection_at_level_3(
    records: pytest.LogCaptureFixture, tmp_path: Path, certs: dict[str, str],
    client_context: ssl.SSLContext,
) -> None:
    path = str(tmp_path / "log.sock")
    server = GServer(port=["127.0.0.1:0/tcp", "127.0.0.1:0/ssl", f"{path}|unix"], log_level=3,
                     **certs)
    peers = []
    with ServerThread(server):
        local_tcp, local_ssl = address(server, 0), address(server, 1)
        for _ in range(2):
            with socket.create_connection(local_tcp, timeout=5) as sock:
                peers.append(("TCP", sock.getsockname(), local_tcp))
                assert sock.recv(100).startswith(b"Welcome")  # logged before the welcome
        with tls_connect(server, client_context, 1) as tls:
            peers.append(("SSL", tls.getsockname(), local_ssl))
            assert tls.recv(100).startswith(b"Welcome")
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(path)
            assert sock.recv(100).startswith(b"Welcome")
    connects = [r for r in ours(records) if "CONNECT" in r.getMessage()]
    assert all(r.levelno == logging.INFO for r in connects)
    expected = [f'CONNECT {proto} Peer: "[{peer[0]}]:{peer[1]}" Local: "[{local[0]}]:{local[1]}"'
                for proto, peer, local in peers]
    messages = [r.getMessage() for r in connects]
    assert messages[:3] == expected
    assert len(messages) == 4 and messages[3] == f'CONNECT UNIX Socket: "{path}"'  # Net::Server's


@pytest.mark.parametrize("log_level", [0, 1, 2])
def test_no_connect_line_below_level_3(log_level: int,
                                       records: pytest.LogCaptureFixture) -> None:
    with ServerThread(GServer(port="127.0.0.1:0/tcp", log_level=log_level)) as running:
        with socket.create_connection(address(running.server), timeout=5) as sock:
            assert sock.recv(100).startswith(b"Welcome")
    messages = [r.getMessage() for r in ours(records)]
    assert not any("CONNECT" in m for m in messages)
    if log_level == 0:
        assert messages == []
    else:
        assert all(r.levelno >= EXPECTED_LEVELS[log_level] for r in ours(records))
    if log_level == 2:
        assert any(m.startswith("Server ready: 127.0.0.1:") for m in messages)


@pytest.mark.parametrize("log_level", range(5))
def test_log_enabled_says_what_log_would_emit(log_level: int,
                                              records: pytest.LogCaptureFixture) -> None:
    server = configured(log_level=log_level)
    for level in range(5):
        server.log(level, f"message at {level}")
    emitted = {int(r.getMessage().rsplit(" ", 1)[1]) for r in ours(records)}
    assert {level for level in range(5) if server.log_enabled(level)} == emitted


class Telling(Exception):
    """Counts how often its text was built (a log message or a traceback made from it)."""

    built: list[str] = []

    def __str__(self) -> str:
        type(self).built.append(type(self).__name__)
        return "told"


class TellingTimeout(Telling, TimeoutError):
    """A timeout: logged at level 3, without a traceback."""


class RaisingTelling(GServer):
    """process_request raises TellingTimeout or Telling, as the client asks."""

    def process_request(self, client: Any) -> None:
        raise TellingTimeout() if client.readline(100).strip() == b"timeout" else Telling()


@pytest.mark.parametrize(("log_level", "word"), [(2, b"timeout"), (0, b"bug")])
def test_connection_errors_are_not_formatted_when_their_level_is_off(
        log_level: int, word: bytes, records: pytest.LogCaptureFixture) -> None:
    """A timeout (level 3) at log_level 2 and a bug (level 1, with its traceback) at log_level
    0: the message is never built. At log_level 3 both are (the counter works)."""
    Telling.built.clear()
    for level, expected in ((log_level, 0), (3, 1)):
        with ServerThread(RaisingTelling(port="127.0.0.1:0/tcp", log_level=level)) as running:
            with socket.create_connection(address(running.server), timeout=5) as sock:
                sock.sendall(word + b"\n")
                assert read_until_eof(sock) == b""
        assert len(Telling.built) == expected, Telling.built
    assert any("told" in r.getMessage() for r in ours(records))


class Failing(GServer):
    def process_request(self, client: object) -> None:
        raise RuntimeError("boom")


def test_log_level_0_is_silent_even_on_errors(records: pytest.LogCaptureFixture,
                                              certs: dict[str, str]) -> None:
    server = Failing(port=["127.0.0.1:0/tcp", "127.0.0.1:0/ssl"], log_level=0, **certs)
    with ServerThread(server):
        with socket.create_connection(address(server, 0), timeout=5) as sock:
            assert sock.recv(100) == b""  # the failing handler's connection is closed
        with socket.create_connection(address(server, 1), timeout=5) as sock:
            sock.sendall(b"not a ClientHello\r\n\r\n")
            sock.recv(100)
    assert ours(records) == []


def test_default_handler_writes_net_server_format_to_stderr() -> None:
    """With no logging configured at all, messages go to stderr as ``YYYY/MM/DD-HH:MM:SS msg``."""
    code = ("from gnetserver import GServer\n"
            "s = GServer(commandline=[], log_level=3)\n"
            "s.configure()\n"
            "s.log(3, 'shown at 3')\n"
            "s.log(4, 'hidden at 4')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d shown at 3\n", result.stderr)


LOGGING_CONFIGURED_AFTER_START = """
import logging, socket
from gnetserver import GServer
from gnetserver.testing import ServerThread

with ServerThread(GServer(commandline=[], port="127.0.0.1:0/tcp", log_level=3)) as running:
    logging.basicConfig(format="configured: %(message)s")  # after the server started
    for _ in range(2):
        with socket.create_connection(running.server.listeners[0].bound[:2], timeout=5) as sock:
            assert sock.recv(100).startswith(b"Welcome")  # the CONNECT line came first
"""


def test_logging_configured_after_start_gets_each_line_once() -> None:
    """A program that configures logging after start() gets each line once, in its format;
    before that, lines went to stderr in Net::Server's format (nothing was left attached)."""
    result = subprocess.run([sys.executable, "-c", LOGGING_CONFIGURED_AFTER_START],
                            capture_output=True, text=True, timeout=20,
                            env=python_env(REPO))
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    connects = [line for line in lines if "CONNECT TCP" in line]
    assert len(connects) == 2, lines
    assert all(line.startswith("configured: CONNECT TCP Peer: ") for line in connects), lines
    ready = [line for line in lines if "Server ready: 127.0.0.1:" in line]
    assert len(ready) == 1 and re.match(r"\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d Server", ready[0])


# -- what the docs say about logging is what the server does ------------------------------------


class RaisingOnRequest(GServer):
    """process_request raises the exception the client names: timeout, reset or bug."""

    def process_request(self, client: Any) -> None:
        word = client.readline(100).strip()
        raise {b"timeout": TimeoutError("slow peer"), b"reset": ConnectionResetError("gone"),
               b"bug": RuntimeError("a bug")}[word]


def readme_text() -> str:
    return " ".join(README.read_text(encoding="utf-8").split())


def test_hook_exceptions_are_logged_as_the_readme_says(
    records: pytest.LogCaptureFixture,
) -> None:
    with ServerThread(RaisingOnRequest(port="127.0.0.1:0/tcp", log_level=3)) as running:
        for word in (b"timeout", b"reset", b"bug"):
            with socket.create_connection(address(running.server), timeout=5) as sock:
                sock.sendall(word + b"\n")
                assert read_until_eof(sock) == b""
    ended = {r.getMessage().rsplit(": ", 1)[-1]: r for r in ours(records)
             if r.getMessage().startswith(("Connection ", "Error in connection "))}
    for quiet in ("slow peer", "gone"):
        assert ended[quiet].levelno == logging.INFO and "Traceback" not in ended[quiet].msg
    bug = next(r for r in ours(records) if "RuntimeError: a bug" in r.getMessage())
    assert bug.levelno == logging.ERROR and "Traceback (most recent call last)" in bug.msg
    assert ("It is logged at level 1 with its traceback, except timeouts, disconnects and TLS "
            "errors") in readme_text()
    assert "logged at level 3 in one line, without a traceback" in readme_text()


class Flooding(GServer):
    """Writes until the peer, which never reads, makes a write wait longer than timeout_idle."""

    def process_request(self, client: Any) -> None:
        chunk = b"x" * 65536
        for _ in range(10_000):  # bounded: 640 MB, far more than any socket buffer
            client.sendall(chunk)


def test_timeout_idle_bounds_writes_as_documented(records: pytest.LogCaptureFixture) -> None:
    with ServerThread(Flooding(port="127.0.0.1:0/tcp", log_level=3, timeout_idle=0.3)) as running:
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(5)
            sock.connect(address(running.server))
            assert poll(lambda: any("ended: TimeoutError" in r.getMessage()
                                    for r in ours(records)), 5.0)
    doc = OPTIONS_BY_NAME["timeout_idle"].doc
    assert "a read or a write" in doc and "room to write" in doc


def test_syslog_logsock_default_is_native_as_documented(tmp_path: Path) -> None:
    server = configured()
    assert server.conf["syslog_logsock"] == "native"
    option = OPTIONS_BY_NAME["syslog_logsock"]
    assert default_text(option) == "``native``"
    assert "| ``syslog_logsock`` | ``native`` |" in " | ".join(
        line.strip(" *-") for line in README.read_text(encoding="utf-8").splitlines())
    path, kind = syslog_address(server.conf["syslog_logsock"])
    assert path in LOCAL_SYSLOG_PATHS and kind is None  # /dev/log, datagram first
