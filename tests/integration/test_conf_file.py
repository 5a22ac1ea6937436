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
from pathlib import Path
from typing import Any

import pytest
from support.net import address, tls_connect

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


#: The one line the PreFork keys of the conf file give (never silently ignored).
IGNORED_LINE = (
    "ignored Net::Server options (no effect here): min_servers=4, min_spare_servers=2, "
    "max_spare_servers=8, max_requests=1000, serialize=flock, "
    "lock_file=/var/lock/netserver_tls.lock, server_type=PreFork, check_for_dead=30")


def test_keys_of_other_personalities_are_logged_not_fatal(
    serve: Any, certs: dict[str, str], client_context: ssl.SSLContext, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The conf file's PreFork keys start the server anyway, create no lock file, and give
    exactly one level-1 line at start naming them with their values."""
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    server = serve(GServer, conf_file=install_conf(tmp_path, certs), log_level=1)
    with tls_connect(server, client_context, 0) as conn:
        assert echo(conn, b"still TLS")[1].endswith(b'You said "still TLS"\r\n')
    ignored = [r for r in caplog.records if r.getMessage().startswith("ignored Net::Server")]
    assert [r.getMessage() for r in ignored] == [IGNORED_LINE]
    assert ignored[0].levelno == logging.ERROR  # Net::Server level 1: shown from log_level 1
    assert server.conf["max_servers"] == 16  # a real option beside them still applies
    assert not Path("/var/lock/netserver_tls.lock").exists()


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
