"""A Net::Server conf file for a TLS server works unchanged (issue 4, point 1).

tests/data/netserver_tls.conf is written the way Perl Net::Server operators write theirs
(``key value``, ``key = value``, ``#`` comments, repeated keys for list options, IO::Socket::SSL
option names, and keys of the PreFork personality that have no effect in gnetserver). The test
fills in its certificate placeholders, starts a real server from it, and talks TLS (and plain
TCP) to it.
"""

from __future__ import annotations

import logging
import re
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
from support.net import address, tls_connect
from support.process import REPO, python_env

from gnetserver import GServer
from gnetserver.errors import ConfigError

pytestmark = pytest.mark.timeout(30)

CONF = Path(__file__).resolve().parent.parent / "data" / "netserver_tls.conf"


def install_conf(tmp_path: Path, certs: dict[str, str], extra: str = "") -> str:
    """A copy of the shipped conf file with its @name@ placeholders filled from ``certs``."""
    text = re.sub(r"@(\w+)@", lambda m: certs[m.group(1)], CONF.read_text(encoding="utf-8"))
    path = tmp_path / "netserver_tls.conf"
    path.write_text(text + extra, encoding="utf-8")
    return str(path)


def echo(conn: Any, line: bytes) -> list[bytes]:
    """Net::Server's echo dialogue: welcome, one line answered, ``quit``."""
    with conn.makefile("rwb") as stream:
        welcome = stream.readline()
        stream.write(line + b"\r\n" + b"quit\r\n")
        stream.flush()
        return [welcome, stream.readline(), stream.readline()]


def test_netserver_conf_file_runs_a_tls_server(
    serve: Any, certs: dict[str, str], client_context: ssl.SSLContext, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gnetserver")
    server = serve(GServer, conf_file=install_conf(tmp_path, certs))
    assert [listener.proto for listener in server.listeners] == ["ssl", "tcp"]
    assert all(listener.host == "127.0.0.1" for listener in server.listeners)

    with tls_connect(server, client_context, 0) as conn:
        assert conn.version() in ("TLSv1.2", "TLSv1.3")
        welcome, answer, bye = echo(conn, b"hello over TLS")
    assert welcome.startswith(b'Welcome to "GServer"')
    assert answer.endswith(b'You said "hello over TLS"\r\n')
    assert bye.endswith(b'You said "quit"\r\n')

    with socket.create_connection(address(server, 1), timeout=5) as conn:
        assert echo(conn, b"plain")[1].endswith(b'You said "plain"\r\n')

    conf = server.conf
    assert conf["allow"] == ["localhost", r"127\.0\.0\.1"]
    assert conf["deny"] == [r"10\.0\.0\.\d+", r".*\.example\.net"]
    assert conf["cidr_allow"] == ["127.0.0.0/8", "::1/128"]
    assert conf["cidr_deny"] == ["192.0.2.0/24"]
    assert (conf["log_level"], conf["max_servers"], conf["listen"]) == (3, 16, 64)
    assert conf["reverse_lookups"] is False
    assert conf["SSL_version"] == "SSLv23:!SSLv3:!TLSv1:!TLSv1_1"
    assert any(m.startswith('CONNECT SSL Peer: "[127.0.0.1]:') for m in caplog.messages)


#: The line the PreFork keys without effect give (never silently ignored): server_type
#: PreFork and max_requests are real options now; the spare-server keys get SPARE_LINE.
IGNORED_LINE = (
    "ignored Net::Server options (no effect here): min_servers=4, min_spare_servers=2, "
    "max_spare_servers=8, serialize=flock, lock_file=/var/lock/netserver_tls.lock, "
    "check_for_dead=30")
#: What gnetserver's PreFork does instead of Net::Server's spare-server logic.
SPARE_LINE = (
    "PreFork: min_servers, min_spare_servers, max_spare_servers size Net::Server's "
    "one-connection children; gnetserver runs a fixed set of workers={workers} processes, "
    "each serving up to max_servers=16 sessions at once (set workers instead; TTIN/TTOU add "
    "or remove one)")
#: Said when a server of a PreFork conf file is embedded (start(), a thread): no workers.
AS_SINGLE = ("server_type PreFork: worker processes need run() in the main thread; serving "
             "in this process (Single)")


def test_keys_of_other_personalities_are_logged_not_fatal(
    serve: Any, certs: dict[str, str], client_context: ssl.SSLContext, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The conf file's PreFork keys start the server anyway, create no lock file, and give
    level-1 lines at start: one naming the keys without effect with their values, one saying
    what PreFork does instead of spare servers; embedded in a thread, the server cannot fork
    workers and says it serves as Single."""
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    server = serve(GServer, conf_file=install_conf(tmp_path, certs), log_level=1)
    with tls_connect(server, client_context, 0) as conn:
        assert echo(conn, b"still TLS")[1].endswith(b'You said "still TLS"\r\n')
    level1 = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    expected = [IGNORED_LINE, SPARE_LINE.format(workers=server.conf["workers"]), AS_SINGLE]
    assert [message for message in level1 if message in expected] == expected
    assert server.personality is not None and server.personality.name == "Single"
    assert server.conf["max_servers"] == 16  # a real option beside them still applies
    assert server.conf["max_requests"] == 1000
    assert not Path("/var/lock/netserver_tls.lock").exists()


def test_a_prefork_conf_file_runs_prefork(spawn: Any, certs: dict[str, str],
                                          client_context: ssl.SSLContext,
                                          tmp_path: Path) -> None:
    """Run by the gnetserver command (run() in the main thread), the Perl conf file's
    ``server_type PreFork`` forks workers that serve the TLS port."""
    conf_file = install_conf(tmp_path, certs)
    server = spawn([sys.executable, "-m", "gnetserver", "--conf_file", conf_file,
                    "--workers", "2"], env=python_env(REPO, inherit=False))
    where = server.ports()[0]
    server.wait_for(r"Started worker \d+$", 2)
    assert server.count(re.escape(SPARE_LINE.format(workers=2))) == 1
    assert server.count("serving in this process") == 0
    with socket.create_connection(where[:2], timeout=5) as raw, \
            client_context.wrap_socket(raw, server_hostname="localhost") as conn:
        welcome, answer, _ = echo(conn, b"worker")
    assert answer.endswith(b'You said "worker"\r\n')
    worker = int(welcome.split(b"(")[1].split(b")")[0])
    assert worker != server.pid and worker in [
        int(pid) for pid in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text()
        .split()]


class Defaults(GServer):
    def default_values(self) -> dict[str, Any]:
        return {"log_level": 1, "allow": ["default"], "max_servers": 2}


@pytest.mark.parametrize(("new", "argv", "run", "expected"), [
    # nothing above the conf file: its values (conf > default_values)
    ({}, [], {}, (3, [r"localhost", r"127\.0\.0\.1"], 16)),
    # run() arguments beat the conf file, a list option as a whole
    ({}, [], {"log_level": 2, "allow": "run"}, (2, ["run"], 16)),
    # the command line beats run() and the conf file
    ({}, ["--log_level=4", "--allow", "cli", "allow=cli2"], {"log_level": 2},
     (4, ["cli", "cli2"], 16)),
    # constructor arguments beat everything
    ({"log_level": 0, "max_servers": 5}, ["--log_level=4"], {"max_servers": 9},
     (0, [r"localhost", r"127\.0\.0\.1"], 5)),
])
def test_precedence_over_the_conf_file(
    tmp_path: Path, certs: dict[str, str], new: dict[str, Any], argv: list[str],
    run: dict[str, Any], expected: tuple[Any, ...],
) -> None:
    """constructor > command line > run() > conf_file > default_values(), per option."""
    server = Defaults(commandline=argv, conf_file=install_conf(tmp_path, certs), **new)
    server.run_args = run
    server.configure()
    assert (server.conf["log_level"], server.conf["allow"], server.conf["max_servers"]) == expected


@pytest.mark.parametrize(("line", "words", "value"), [
    ("cidr_allow 10.0.0.0/33", ["'cidr_allow'", "bad CIDR block"], "10.0.0.0/33"),
    ("deny (unclosed", ["'deny'", "bad regular expression"], "(unclosed"),
    ("log_level loud", ["'log_level'", "expected an integer"], "loud"),
    ("no_such_option 123", ["'no_such_option'"], "123"),
])
def test_bad_line_names_option_line_and_file_not_value(
    tmp_path: Path, certs: dict[str, str], line: str, words: list[str], value: str
) -> None:
    """Issue 16 point 11: a conf file's values are never quoted in errors (the file may be
    anything root can read); the option, the file and the line number are."""
    conf_file = install_conf(tmp_path, certs, extra=line + "\n")
    server = GServer(conf_file=conf_file)
    with pytest.raises(ConfigError) as info:
        server.configure()
    text = str(info.value)
    number = Path(conf_file).read_text().splitlines().index(line) + 1
    for word in [*words, "netserver_tls.conf", f"line {number}"]:
        assert word in text
    assert value not in text


@pytest.mark.parametrize(("line", "value"), [
    ("cidr_allow ::1/128", "::1/128"),  # Net::Server's own regex would read ":1/128"
    ("cidr_allow=::1", "::1"),
    ("cidr_allow: ::ffff:127.0.0.0/104", "::ffff:127.0.0.0/104"),
    ("cidr_allow = 127.0.0.1", "127.0.0.1"),
    ("  --cidr_allow   10.0.0.0/8   # trailing comment", "10.0.0.0/8"),
])
def test_separators_and_ipv6_values(tmp_path: Path, line: str, value: str) -> None:
    """`key value`, `key=value`, `key: value`: an IPv6 value's `::` is never a separator."""
    path = tmp_path / "one.conf"
    path.write_text(line + "\n", encoding="utf-8")
    server = GServer(conf_file=str(path))
    server.configure()
    assert server.conf["cidr_allow"] == [value]
