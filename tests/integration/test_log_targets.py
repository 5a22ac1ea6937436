"""Log targets (issue 4, point 2): a real log file (append, mode 0640, reopened after a
logrotate-style rename), syslog over a real AF_UNIX datagram socket owned by the test,
log_function (callable or method name) and an overridden write_to_log_hook."""

from __future__ import annotations

import logging
import os
import re
import socket
import ssl
import stat
import time
from pathlib import Path
from typing import Any

import pytest
from support.net import address, poll, tls_connect

from gnetserver import ConfigError, GServer
from gnetserver.log import LOGGER_NAME
from gnetserver.syslog_socket import SyslogSocket, drop_text

pytestmark = pytest.mark.timeout(20)

LOCAL = "127.0.0.1:0/tcp"


def wait_for_text(path: Path, pattern: str, timeout: float = 5.0) -> str:
    """The file's text once ``pattern`` appears in it (polled, bounded)."""
    text = ""

    def found() -> re.Match[str] | None:
        nonlocal text
        text = path.read_text(encoding="utf-8") if path.exists() else ""
        return re.search(pattern, text)

    if not poll(found, timeout):
        raise AssertionError(f"{pattern!r} not in {path}: {text!r}")
    return text


def say_hello(server: GServer, timeout: float = 5.0) -> bytes:
    """One real connection to the echo server: the welcome line."""
    with socket.create_connection(address(server), timeout=timeout) as sock:
        welcome = sock.makefile("rb").readline()
        sock.sendall(b"quit\r\n")
        return welcome


def receive_until(sock: socket.socket, needle: str, limit: int = 50) -> list[str]:
    """Datagrams received until one contains ``needle`` (bounded by count and the timeout)."""
    seen = []
    for _ in range(limit):
        seen.append(sock.recv(65536).decode("utf-8"))
        if needle in seen[-1]:
            return seen
    raise AssertionError(f"{needle!r} not received in {seen}")


def test_log_file_is_created_0640_and_gets_every_line(serve: Any, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    umask = os.umask(0o022)
    try:
        server = serve(GServer, port=LOCAL, log_file=str(log_file), log_level=3)
    finally:
        os.umask(umask)
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o640
    assert say_hello(server).startswith(b"Welcome")
    text = wait_for_text(log_file, r"CONNECT TCP Peer")
    assert re.search(rf"^\d{{4}}/\d\d/\d\d-\d\d:\d\d:\d\d GServer starting! pid\({os.getpid()}\)",
                     text, re.M)
    assert "Server ready: 127.0.0.1:" in text


def test_log_file_is_appended_and_escapes_control_bytes(serve: Any, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    log_file.write_text("line from before\n")
    log_file.chmod(0o600)
    server = serve(GServer, port=LOCAL, log_file=str(log_file))
    server.log(2, "peer said \x1b[2J\rforged\x00 é")
    text = wait_for_text(log_file, "peer said")
    assert text.startswith("line from before\n")
    assert "peer said %1B[2J%0Dforged%00 %C3%A9" in text
    assert stat.S_IMODE(log_file.stat().st_mode) == 0o600  # an existing file keeps its mode


def test_reopen_logs_follows_a_logrotate_rename(serve: Any, tmp_path: Path) -> None:
    log_file, rotated = tmp_path / "server.log", tmp_path / "server.log.1"
    server = serve(GServer, port=LOCAL, log_file=str(log_file), log_level=3)
    server.log(2, "before rotation")
    os.rename(log_file, rotated)
    server.log(2, "still into the renamed file")
    server.reopen_logs()
    assert say_hello(server).startswith(b"Welcome")
    fresh = wait_for_text(log_file, "CONNECT TCP Peer")
    old = rotated.read_text()
    assert "before rotation" in old and "still into the renamed file" in old
    assert "Reopened the log" in fresh and "before rotation" not in fresh
    assert stat.S_IMODE(log_file.stat().st_mode) & 0o007 == 0


def test_syslog_to_a_local_unix_socket(serve: Any, syslog_socket: Any) -> None:
    path, receiver = syslog_socket
    server = serve(GServer, port=LOCAL, log_file="Sys::Syslog", syslog_logsock=path,
                   syslog_ident="gtest", syslog_facility="local3", syslog_logopt="pid",
                   log_level=3)
    startup = receive_until(receiver, "Server ready")
    local3 = 19 * 8
    pid = os.getpid()
    # Net::Server's map: 2 -> notice (5), 1 -> warning (4), 0 -> err (3), 3 -> info (6).
    assert f"<{local3 + 5}>gtest[{pid}]: GServer starting! pid({pid})" in startup
    server.log(1, "a warning")
    assert receive_until(receiver, "a warning")[-1] == f"<{local3 + 4}>gtest[{pid}]: a warning"
    server.log(0, "a fatal one")
    assert receive_until(receiver, "fatal")[-1] == f"<{local3 + 3}>gtest[{pid}]: a fatal one"
    say_hello(server)
    assert receive_until(receiver, "CONNECT")[-1].startswith(f"<{local3 + 6}>gtest[{pid}]: ")


def test_syslog_defaults_are_net_servers(serve: Any, syslog_socket: Any) -> None:
    path, receiver = syslog_socket
    server = serve(GServer, port=LOCAL, log_file="Sys::Syslog", syslog_logsock=path)
    assert server.conf["syslog_ident"] == "net_server"
    assert server.conf["syslog_logopt"] == "pid,nofatal"
    daemon_facility = 3 * 8
    ready = receive_until(receiver, "Server ready")[-1]
    assert ready.startswith(f"<{daemon_facility + 5}>net_server[{os.getpid()}]: Server ready")


def test_unreachable_syslog_fails_unless_nofatal(serve: Any, tmp_path: Path) -> None:
    path = str(tmp_path / "later.sock")
    with pytest.raises(ConfigError, match=r"syslog_logsock.*later\.sock.*nofatal"):
        serve(GServer, port=LOCAL, log_file="Sys::Syslog", syslog_logsock=path,
              syslog_logopt="pid")
    server = serve(GServer, port=LOCAL, log_file="Sys::Syslog", syslog_logsock=path,
                   syslog_logopt="nofatal")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as receiver:
        receiver.bind(path)  # the syslog daemon comes up after the server
        receiver.settimeout(5)
        server.log(2, "reconnected")
        assert receive_until(receiver, "reconnected")[-1] == "<29>net_server: reconnected"


def test_log_function_callable_replaces_the_sink(serve: Any, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    calls: list[tuple[int, str]] = []
    server = serve(GServer, port=LOCAL, log_file=str(log_file),
                   log_function=lambda level, msg: calls.append((level, msg)))
    server.log(1, "to the function")
    assert (1, "to the function") in calls
    assert any(msg.startswith("Server ready") and level == 2 for level, msg in calls)
    assert "to the function" not in log_file.read_text()


class Recording(GServer):
    """A server whose log goes to a list: through a log method, or through the sink hook."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.lines: list[tuple[str, int, str]] = []

    def my_log(self, level: int, message: str) -> None:
        if "explode" in message:
            raise RuntimeError("log backend down")
        self.lines.append(("my_log", level, message))

    def write_to_log_hook(self, level: int, message: str) -> None:
        self.lines.append(("hook", level, message))


def test_log_function_method_name_and_write_to_log_hook(serve: Any) -> None:
    server = serve(Recording, port=LOCAL, log_function="my_log", log_level=3)
    say_hello(server)
    server.log(2, "explode please")
    kinds = {(kind, msg.split(" ")[0]) for kind, _, msg in server.lines}
    assert ("my_log", "CONNECT") in kinds and ("my_log", "Server") in kinds
    assert ("hook", 1, "Error in log_function: RuntimeError: log backend down") in server.lines
    assert ("hook", 2, "explode please") in server.lines  # the message is not lost


def test_write_to_log_hook_is_the_default_sink(serve: Any) -> None:
    server = serve(Recording, port=LOCAL, log_level=4)
    server.log(4, "debug line")
    server.log(0, "fatal line")
    assert ("hook", 4, "debug line") in server.lines and ("hook", 0, "fatal line") in server.lines
    assert any(m.startswith("Recording starting! pid(") for _, _, m in server.lines)


@pytest.mark.parametrize(("options", "pattern"), [
    ({"log_file": "Log::Log4perl"}, r"'log_file'.*Log::Log4perl.*Sys::Syslog"),
    ({"log_file": "{tmp}/no/such/dir/x.log"}, r"'log_file'.*no/such/dir/x\.log"),
    ({"log_function": "no_such_method"}, r"'log_function'.*no_such_method.*GServer"),
    ({"log_function": 42}, r"'log_function'.*42"),
    ({"syslog_facility": "nope"}, r"'syslog_facility'.*nope.*local0"),
    ({"syslog_logopt": "pid,bogus"}, r"'syslog_logopt'.*bogus"),
    ({"syslog_logsock": "carrier-pigeon"}, r"'syslog_logsock'.*carrier-pigeon"),
])
def test_bad_log_options_stop_the_start(serve: Any, tmp_path: Path, options: dict[str, Any],
                                        pattern: str) -> None:
    options = {k: v.format(tmp=tmp_path) if isinstance(v, str) else v
               for k, v in options.items()}
    with pytest.raises(ConfigError, match=pattern):
        serve(GServer, port=LOCAL, **options)


# -- issue 16 point 11: log_function names a method meant for it -------------------------------


class Overriding(Recording):
    """Adds a log method taking the wrong arguments, and overrides framework methods."""

    def wrong_shape(self) -> None:
        """Takes no (level, msg)."""

    def process_request(self, client: Any) -> None:  # a framework step, even overridden
        super().process_request(client)


@pytest.mark.parametrize(("name", "why"), [
    ("handle_term", "method of gnetserver itself"),  # it was accepted: a HUP/TERM handler
    ("log", "method of gnetserver itself"),
    ("write_to_log_hook", "method of gnetserver itself"),  # overridden by Recording: still
    ("process_request", "method of gnetserver itself"),  # overridden by Overriding: still
    ("__class__", "private"),  # it was accepted: every log line made a new server
    ("__init__", "private"),
    ("_self_signed", "private"),
    ("requests", "not a method"),  # an instance attribute
    ("wrong_shape", "does not take (level, msg)"),
    ("no_such_method", "not a method of Overriding"),
])
def test_log_function_must_name_a_method_meant_for_it(name: str, why: str) -> None:
    """A method name from text must be a public method the server's class adds, taking
    (level, msg); anything else stops the start, naming the option and the value."""
    server = Overriding(commandline=[], log_function=name)
    server.configure()
    with pytest.raises(ConfigError) as info:
        server.initialize_logging()
    assert f"option 'log_function': {name!r}" in str(info.value) and why in str(info.value)
    ok = Overriding(commandline=[], log_function="my_log")
    ok.configure()
    ok.initialize_logging()
    ok.log(2, "through my_log")
    assert ("my_log", 2, "through my_log") in ok.lines
    ok.logs.close()


# -- a syslog that stops reading never stalls the server (datagram and stream) -------------------


def drain(sock: socket.socket) -> list[str]:
    """Everything already queued on a datagram socket, without waiting."""
    seen, timeout = [], sock.gettimeout()
    sock.setblocking(False)
    try:
        while True:
            seen.append(sock.recv(65536).decode("utf-8"))
    except BlockingIOError:
        return seen
    finally:
        sock.settimeout(timeout)


def hello_within(server: GServer, index: int, context: ssl.SSLContext | None,
                 budget: float) -> None:
    """One connection (TLS when ``context`` is given) answered within ``budget`` seconds."""
    started = time.monotonic()
    if context is None:
        assert say_hello(server, budget).startswith(b"Welcome")
    else:
        with tls_connect(server, context, index, timeout=budget) as tls:
            assert tls.recv(100).startswith(b"Welcome")
            tls.sendall(b"quit\r\n")
    assert time.monotonic() - started < budget, f"connection took {time.monotonic() - started}"


@pytest.mark.timeout(30)
def test_syslog_that_stops_reading_never_stalls_the_server(
    serve: Any, syslog_socket: Any, certs: dict[str, str], client_context: ssl.SSLContext,
) -> None:
    path, receiver = syslog_socket  # never read until the end: its queue fills at once
    server = serve(GServer, port=[LOCAL, "127.0.0.1:0/ssl"], log_file="Sys::Syslog",
                   syslog_logsock=path, log_level=3, **certs)
    for index in range(50):  # each one logs a CONNECT line (and more) while syslog is stuck
        hello_within(server, 1, client_context if index % 2 else None, budget=1.0)
    assert server.logs.targets.dropped() > 0
    seen = drain(receiver)  # syslog reads again: the next message first reports what was lost
    server.log(2, "syslog is back")
    seen += receive_until(receiver, "syslog is back")
    notice = [m for m in seen if "dropped" in m]
    assert len(notice) == 1
    assert re.fullmatch(rf"<28>net_server\[{os.getpid()}\]: \d+ log messages dropped "
                        r"\(syslog did not take them in time\)", notice[0])
    assert int(notice[0].split(": ")[1].split()[0]) == server.logs.targets.dropped()
    server.log(2, "and again")
    assert [m for m in receive_until(receiver, "and again") if "dropped" in m] == []


def test_drops_not_yet_reported_are_reported_on_stderr_at_close(
    syslog_socket: Any, capfd: pytest.CaptureFixture[str],
) -> None:
    path, receiver = syslog_socket
    server = GServer(commandline=[], log_file="Sys::Syslog", syslog_logsock=path)
    server.configure()
    server.initialize_logging()
    for index in range(30):  # a queue of max_dgram_qlen (10 by default) datagrams
        server.log(2, f"message {index}")
    dropped = server.logs.targets.dropped()
    assert dropped >= 30 - len(drain(receiver)) > 0
    receiver.close()  # syslog is gone: the count cannot go there
    server.logs.targets.close()
    expected = f"gnetserver: syslog: {dropped} log messages dropped (syslog did not take them"
    assert expected in capfd.readouterr().err


@pytest.mark.timeout(30)
def test_stream_syslog_that_stops_reading_never_stalls_the_server(
    serve: Any, short_tmp_path: str,
) -> None:
    path = os.path.join(short_tmp_path, "stream.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)  # syslog accepts the connection only at the end
        server = serve(GServer, port=LOCAL, log_file="Sys::Syslog", syslog_logsock=path,
                       log_level=3)
        filler = "x" * 16000
        for index in range(100):  # 1.6 MB: far beyond what the socket buffers hold
            started = time.monotonic()
            server.log(2, f"filler {index} {filler}")
            assert time.monotonic() - started < 1.0
        for _ in range(10):
            hello_within(server, 0, None, budget=1.0)
        assert server.logs.targets.dropped() > 0
        conn, _ = listener.accept()
        with conn:
            lines = read_stream_syslog(server, conn)
    notice = [line for line in lines if "dropped" in line]
    assert len(notice) == 1 and notice[0].startswith("<28>net_server[")
    fillers = [line for line in lines if " filler " in line]
    assert fillers and all(line.endswith(filler) for line in fillers)  # never a torn message


def read_stream_syslog(server: GServer, conn: socket.socket) -> list[str]:
    """Read a stream syslog connection (one message per line) while the server logs "tick"
    messages, until the drop notice and a later tick arrived (bounded)."""
    conn.settimeout(0.05)
    data = b""
    deadline = time.monotonic() + 10
    for tick in range(1000):
        server.log(2, f"tick {tick}")
        try:
            while chunk := conn.recv(1 << 20):
                data += chunk
        except TimeoutError:
            pass
        text = data.decode("utf-8")
        if "dropped" in text and re.search(r"tick \d+\n", text.split("dropped", 1)[1]):
            return text.splitlines()
        assert time.monotonic() < deadline, "no drop notice on the stream"
    raise AssertionError("no drop notice on the stream")


# -- a sink that raises never breaks the server ----------------------------------------------


class BrokenSink(GServer):
    """A write_to_log_hook that fails, after trying to log from inside itself."""

    def write_to_log_hook(self, level: int, message: str) -> None:
        self.log(1, "logging from inside the sink")  # must not recurse
        raise RuntimeError("sink down")


def test_a_raising_write_to_log_hook_never_breaks_the_server(
    serve: Any, capfd: pytest.CaptureFixture[str],
) -> None:
    server = serve(BrokenSink, port=LOCAL, log_level=3)
    for _ in range(3):
        assert say_hello(server).startswith(b"Welcome")
    err = poll(lambda: (text := capfd.readouterr().err).count("CONNECT TCP") >= 3 and text)
    assert err, "the messages did not fall back to stderr"
    assert err.count("write_to_log_hook failed: RuntimeError: sink down") == 1
    assert "logging from inside the sink" in err


class RaisingHandler(logging.Handler):
    """A log target whose emit raises (stdlib handlers catch their own errors; this one
    does not)."""

    def emit(self, record: logging.LogRecord) -> None:
        raise OSError("log service unreachable")


def test_a_raising_log_target_never_breaks_the_server(
    serve: Any, capfd: pytest.CaptureFixture[str],
) -> None:
    logger = logging.getLogger(LOGGER_NAME)
    saved = logger.handlers[:], logger.propagate
    logger.handlers, logger.propagate = [RaisingHandler()], False  # the only target
    try:
        server = serve(GServer, port=LOCAL, log_level=3)
        for _ in range(3):
            assert say_hello(server).startswith(b"Welcome")
        server.log(1, "after three")
    finally:
        logger.handlers, logger.propagate = saved
    err = capfd.readouterr().err
    assert err.count("write_to_log_hook failed: OSError: log service unreachable") == 1
    assert err.count("CONNECT TCP") == 3 and "after three" in err


def test_tcp_syslog_that_stops_reading_never_blocks() -> None:
    """The TCP transport (``syslog_logsock tcp`` sends to localhost:514; here the same
    socket class goes to a test-owned listener that accepts only at the end)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        sender = SyslogSocket(listener.getsockname(), socket.SOCK_STREAM,
                              lambda count: f"<28>test: {drop_text(count)}".encode())
        try:
            for index in range(200):  # 3.2 MB: far beyond what the socket buffers hold
                started = time.monotonic()
                sender.send(f"<29>test: filler {index} {'x' * 16000}".encode())
                assert time.monotonic() - started < 1.0
            assert sender.dropped > 0
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                data = b""
                for tick in range(1000):  # syslog reads again: the notice comes through
                    sender.send(f"<29>test: tick {tick}".encode())
                    data += conn.recv(1 << 20)
                    if re.search(rb"dropped.*\n(.*\n)*<29>test: tick", data):
                        break
                sender.send(b"<29>test: two\nlines")  # one message stays one line
                for _ in range(100):
                    if b"<29>test: two#012lines\n" in data:
                        break
                    data += conn.recv(1 << 20)
        finally:
            sender.close()
    lines = data.decode().splitlines()
    assert [line for line in lines if "dropped" in line] == [
        f"<28>test: {sender.dropped} log messages dropped (syslog did not take them in time)"]
    assert all(line.endswith("x" * 16000) for line in lines if " filler " in line)
    assert lines[-1] == "<29>test: two#012lines"
