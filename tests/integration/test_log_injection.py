"""Log injection (issue 16, point 7): bytes a peer sends that end up in a log message (a
newline and a forged "Received a SIG TERM" line, a carriage return, terminal escapes, and a
literal ``%0A`` posing as an escaped newline) are escaped in every sink: the log file,
stderr, syslog, the ``gnetserver`` logger and log_function. Each message stays one line of
printable ASCII, escaped exactly once (``%`` is ``%25``, never ``%2525``).

The peer is real (a TCP client); the server is a tcp server whose process_request logs what
the client sent, as application code does.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
from support.net import address, poll
from support.process import REPO, python_env

from gnetserver import GServer
from gnetserver.log import LOGGER_NAME, Escaped, escape

pytestmark = pytest.mark.timeout(20)

LOCAL = "127.0.0.1:0/tcp"

#: What a hostile peer sends: a newline and a whole forged log line, a carriage return, an
#: "erase line" escape and an OSC sequence that retitles a terminal, then the end marker.
FORGED = (b"hi\n2030/01/01-00:00:00 Received a SIG TERM: stopping now\r\x1b[2K"
          b"\x1b]0;pwned\x07 caf\xc3\xa9 fake%0Anewline 100%<end>")

#: How the server must log it: escaped, on the line of the message that carries it.
ESCAPED = ("client said: hi%0A2030/01/01-00:00:00 Received a SIG TERM: stopping now%0D%1B[2K"
           "%1B]0;pwned%07 caf%C3%A9 fake%250Anewline 100%25")


class Parrot(GServer):
    """Logs what the client sent (up to ``<end>``, at most 64 KiB), then says ``logged``."""

    def process_request(self, client: Any) -> None:
        data = b""
        while b"<end>" not in data and len(data) < 65536:
            chunk = client.recv(4096)
            if not chunk:
                break
            data += chunk
        said = data.split(b"<end>", 1)[0].decode("utf-8", "replace")
        self.log(2, f"client said: {said}")
        client.sendall(b"logged\n")


def send_forged(where: tuple[Any, ...]) -> None:
    """One real client: send the forged bytes, wait until the server logged them."""
    with socket.create_connection(where, timeout=5) as sock:
        sock.sendall(FORGED)
        assert sock.makefile("rb").readline() == b"logged\n"


def assert_one_escaped_line(text: str) -> None:
    """The message is one line holding the escaped bytes; nothing forged a line or a
    terminal escape."""
    said = [line for line in text.splitlines() if "client said" in line]
    assert len(said) == 1 and ESCAPED in said[0], said
    forged = re.compile(r"^(<\d+>[^:]*: )?(\d{4}/\d\d/\d\d-\d\d:\d\d:\d\d )?Received a SIG",
                        re.M)
    assert not forged.search(text), text
    assert "\x1b" not in text and "\r" not in text and "\x07" not in text
    assert "%2525" not in text  # escaped once, whatever the stages
    assert unquote(said[0]).endswith(FORGED.split(b"<end>")[0].decode("utf-8"))


def test_the_log_file(serve: Any, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    server = serve(Parrot, port=LOCAL, log_file=str(log_file))
    send_forged(address(server))
    assert poll(lambda: "client said" in log_file.read_text(encoding="utf-8"))
    assert_one_escaped_line(log_file.read_text(encoding="utf-8"))


def test_syslog(serve: Any, syslog_socket: tuple[str, socket.socket]) -> None:
    path, receiver = syslog_socket
    server = serve(Parrot, port=LOCAL, log_file="Sys::Syslog", syslog_logsock=path)
    send_forged(address(server))
    for _ in range(50):  # datagrams until the message (bounded by count and the timeout)
        message = receiver.recv(65536).decode("utf-8")
        if "client said" in message:
            break
    assert message == f"<29>net_server[{os.getpid()}]: {ESCAPED}"
    assert_one_escaped_line(message)


STDERR_SCRIPT = """
from gnetserver.testing import ServerThread
from test_log_injection import Parrot, send_forged

with ServerThread(Parrot(commandline=[], port="127.0.0.1:0/tcp")) as running:
    send_forged(running.server.listeners[0].bound[:2])
"""


def test_stderr() -> None:
    """With no log_file and no logging configured, the lines go to stderr (a real process's)."""
    here = Path(__file__).parent
    result = subprocess.run([sys.executable, "-c", STDERR_SCRIPT], capture_output=True,
                            timeout=20, env=python_env(REPO, here, here.parent))
    err = result.stderr.decode("utf-8")
    assert result.returncode == 0, err
    assert re.search(rf"^\d{{4}}/\d\d/\d\d-\d\d:\d\d:\d\d {re.escape(ESCAPED)}$", err, re.M)
    assert_one_escaped_line(err)


def test_the_gnetserver_logger_and_log_function(serve: Any,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A handler configured on the ``gnetserver`` logger and a log_function get the same
    escaped text (documented: Net::Server passes log_function the raw message)."""
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)
    server = serve(Parrot, port=LOCAL)
    send_forged(address(server))
    assert poll(lambda: [r for r in caplog.records if "client said" in r.getMessage()])
    assert_one_escaped_line("\n".join(r.getMessage() for r in caplog.records))
    calls: list[str] = []
    server = serve(Parrot, port=LOCAL, log_function=lambda level, msg: calls.append(msg))
    send_forged(address(server))
    assert poll(lambda: [m for m in calls if "client said" in m])
    assert_one_escaped_line("\n".join(calls))


def test_a_traceback_is_one_line() -> None:
    """A multi-line message (a traceback whose text a peer may have chosen) is one line."""
    text = "Error in connection: Traceback (most recent call last):\n  File \"x\"\nValueError"
    assert escape(text) == ("Error in connection: Traceback (most recent call last):%0A  "
                            "File \"x\"%0AValueError")
    assert escape(escape(text)) == escape(text)


@pytest.mark.parametrize(("text", "escaped"), [
    ("fake%0Anewline", "fake%250Anewline"),  # a literal %0A is not an escaped newline
    ("100%", "100%25"), ("%%", "%25%25"), ("%1B[2J", "%251B[2J"),
    ("a\nb", "a%0Ab"), ("plain text", "plain text"),
])
def test_percent_is_escaped(text: str, escaped: str) -> None:
    assert escape(text) == escaped
    assert unquote(escape(text)) == text  # the log line decodes back to the message


def test_escaping_is_done_once_per_message() -> None:
    """escape() returns an Escaped str that it leaves alone (the sink, the stderr fallback
    after log()); text built from it is plain str and escaped again."""
    once = escape("a%b\n")
    assert isinstance(once, Escaped) and escape(once) is once and once == "a%25b%0A"
    assert escape("x " + once) == "x a%2525b%250A"
