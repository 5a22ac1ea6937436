"""The ``gnetserver`` command and ``python -m gnetserver`` (issue 2, point 2), as subprocesses.

The demo's fixed ports (8443/8080) may be taken on a shared machine, so the demo's defaults are
checked through ``--help`` and ``DemoServer.default_values()``, and serving is checked with
``--port 127.0.0.1:0/...``; the bound ports are read from the "Server ready:" log line.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from support.process import FINGERPRINT
from support.tls import unverified

from gnetserver import GServer, config
from gnetserver.__main__ import DEMO_PORTS, DemoServer
from gnetserver.errors import ConfigError
from gnetserver.options import CODE_ONLY_SSL_OPTIONS, OPTIONS, table
from gnetserver.tls.context import SUPPORTED_SSL_OPTIONS

pytestmark = pytest.mark.timeout(30)

PYTHON_M = [sys.executable, "-m", "gnetserver"]
SCRIPT = shutil.which("gnetserver")
needs_script = pytest.mark.skipif(SCRIPT is None, reason="gnetserver script not installed "
                                                         "(pip install -e .)")


def run_to_end(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run a command that must exit by itself (help, errors), bounded."""
    return subprocess.run(argv, capture_output=True, text=True, timeout=20, env=env,
                          stdin=subprocess.DEVNULL)


def echo_session(sock: Any, server_name: str = "DemoServer") -> None:
    """Net::Server's echo: welcome line, ``You said "..."``, ``quit`` closes."""
    reader = sock.makefile("rb")
    welcome = reader.readline()
    assert welcome.startswith(f'Welcome to "{server_name}" ('.encode()), welcome
    sock.sendall(b"hello world\r\n")
    assert reader.readline().endswith(b': You said "hello world"\r\n')
    sock.sendall(b"quit\r\n")
    assert reader.readline().endswith(b': You said "quit"\r\n')
    assert reader.read() == b""  # the server closed the connection after quit
    reader.close()


# -- the demo ------------------------------------------------------------------------------------


def test_demo_defaults() -> None:
    """With no arguments the demo serves TLS on 127.0.0.1:8443 (self-signed) and TCP on :8080."""
    assert DEMO_PORTS == ["127.0.0.1:8443/ssl", "127.0.0.1:8080/tcp"]
    assert DemoServer().default_values() == {"port": DEMO_PORTS, "self_signed": True}
    result = run_to_end([*PYTHON_M, "--help"])
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:8443" in result.stdout and "127.0.0.1:8080" in result.stdout
    for name in ("--port", "--proto", "--log_level", "--max_servers", "--SSL_cert_file",
                 "--SSL_key_file", "--server", "--monkey-patch"):
        assert name in result.stdout


def _free(port: int) -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_demo_without_arguments_when_its_ports_are_free(spawn: Any) -> None:
    """The real no-argument demo, when 8443 and 8080 are free on this machine right now."""
    if not (_free(8443) and _free(8080)):
        pytest.skip("127.0.0.1:8443 or :8080 is in use")
    server = spawn(PYTHON_M)
    try:
        ports = server.ports()
    except pytest.fail.Exception:
        if any("in use" in line for line in server.lines):
            pytest.skip("8443/8080 was taken meanwhile")
        raise
    assert ports == [("127.0.0.1", 8443, "ssl"), ("127.0.0.1", 8080, "tcp")]
    raw = socket.create_connection(("127.0.0.1", 8443), timeout=5)
    with unverified().wrap_socket(raw) as tls:
        echo_session(tls)
    with socket.create_connection(("127.0.0.1", 8080), timeout=5) as plain:
        echo_session(plain)


def test_conf_file_and_command_line(spawn: Any, tmp_path: Path) -> None:
    """Ports from a conf file; the command line's log_level wins over the conf file's."""
    conf = tmp_path / "demo.conf"
    conf.write_text("port 127.0.0.1:0/tcp\nlog_level 1\n")
    server = spawn([*PYTHON_M, "--conf_file", str(conf), "--log_level=3"])
    [(host, port, proto)] = server.ports()  # "Server ready" is a level-2 line
    assert proto == "tcp"
    with socket.create_connection((host, port), timeout=5) as plain:
        echo_session(plain)
    server.wait_for(re.compile(r'CONNECT TCP Peer: "\[127\.0\.0\.1\]:\d+" Local: '))


@pytest.mark.parametrize("command", [
    pytest.param(PYTHON_M, id="python-m"),
    pytest.param([SCRIPT or "gnetserver"], id="script", marks=needs_script),
])
def test_demo_serves_echo_over_tls_and_tcp(command: list[str], spawn: Any) -> None:
    """The demo with its ports moved to kernel-chosen ones: same echo on both, and the
    logged fingerprint is the certificate's the TLS client receives."""
    server = spawn([*command, "--port=127.0.0.1:0/ssl", "--port", "127.0.0.1:0/tcp"])
    (tls_host, tls_port, tls_proto), (tcp_host, tcp_port, tcp_proto) = server.ports()
    assert (tls_host, tls_proto, tcp_host, tcp_proto) == ("127.0.0.1", "ssl", "127.0.0.1", "tcp")
    logged = server.wait_for(FINGERPRINT).group(1)

    raw = socket.create_connection((tls_host, tls_port), timeout=5)
    with unverified().wrap_socket(raw) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        assert hashlib.sha256(der).hexdigest() == logged.replace(":", "").lower()
        echo_session(tls)
    with socket.create_connection((tcp_host, tcp_port), timeout=5) as plain:
        echo_session(plain)


def test_cert_files_on_command_line(spawn: Any, certs: dict[str, str],
                                    client_context: ssl.SSLContext) -> None:
    """``--port H:P/ssl --SSL_cert_file c.pem --SSL_key_file k.pem`` serves that certificate
    (verified against the test CA), and no self-signed one is made."""
    server = spawn([*PYTHON_M, "--port", "127.0.0.1:0/ssl",
                    "--SSL_cert_file", certs["SSL_cert_file"],
                    f"--SSL_key_file={certs['SSL_key_file']}"])
    [(host, port, proto)] = server.ports()
    assert proto == "ssl"
    raw = socket.create_connection((host, port), timeout=5)
    with client_context.wrap_socket(raw, server_hostname="localhost") as tls:
        echo_session(tls)
    assert not any("self-signed" in line for line in server.lines)


USER_MODULE = '''
    """A user's server for ``--server``."""

    from gnetserver import GServer
    from gnetserver.options import Option, as_str


    class Shout(GServer):
        """Greets with the custom option ``greeting``, answers lines in upper case."""

        def options(self):
            return super().options() + [Option("greeting", "hi", as_str, "First line.")]

        def process_request(self, client):
            client.sendall(self.conf["greeting"].encode() + b"\\n")
            for line in client:
                client.sendall(line.upper())
'''


NEEDS_ARGUMENT_MODULE = '''
    """A user's server whose constructor needs an argument the command cannot give."""

    from gnetserver import GServer
    from gnetserver.options import Option, as_str


    class NeedsDb(GServer):
        """Built by its own script as NeedsDb(db, ...); still lists its options in --help."""

        def __init__(self, db, **options):
            super().__init__(**options)
            self.db = db

        def options(self):
            return super().options() + [Option("db_table", "t", as_str, "Table to read.")]
'''


@pytest.fixture
def user_env(tmp_path: Path) -> dict[str, str]:
    """An environment whose PYTHONPATH holds the package ``userpkg`` with ``Shout``."""
    package = tmp_path / "userpkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "servers.py").write_text(textwrap.dedent(USER_MODULE))
    (package / "needs.py").write_text(textwrap.dedent(NEEDS_ARGUMENT_MODULE))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    return env


@pytest.mark.parametrize("server_words", [
    pytest.param(["--server", "userpkg.servers:Shout"], id="space"),
    pytest.param(["--server=userpkg.servers:Shout"], id="equals"),
])
def test_server_option_runs_a_user_subclass(server_words: list[str], spawn: Any,
                                            user_env: dict[str, str]) -> None:
    server = spawn([*PYTHON_M, *server_words, "--port", "127.0.0.1:0/tcp",
                    "--greeting=ahoy", "--log_level", "3"], env=user_env)
    [(host, port, _)] = server.ports()
    with socket.create_connection((host, port), timeout=5) as sock:
        reader = sock.makefile("rb")
        assert reader.readline() == b"ahoy\n"
        sock.sendall(b"quiet please\n")
        assert reader.readline() == b"QUIET PLEASE\n"
        reader.close()
    server.wait_for(re.compile(r"Shout starting!"))
    server.wait_for(re.compile(r"CONNECT TCP Peer"))  # --log_level 3 took effect


def test_help_of_a_user_subclass_lists_its_options(user_env: dict[str, str]) -> None:
    result = run_to_end([*PYTHON_M, "--server", "userpkg.servers:Shout", "--help"], env=user_env)
    assert result.returncode == 0, result.stderr
    assert "--greeting" in result.stdout and "--port" in result.stdout


def test_help_does_not_construct_the_server_class(user_env: dict[str, str]) -> None:
    """The option table is read without calling __init__, so --help works for a class whose
    constructor needs arguments."""
    result = run_to_end([*PYTHON_M, "--server", "userpkg.needs:NeedsDb", "--help"], env=user_env)
    assert result.returncode == 0, result.stderr
    assert "--db_table" in result.stdout and "--port" in result.stdout


def test_server_class_the_command_cannot_construct(user_env: dict[str, str]) -> None:
    """Running it is a clear error naming the class and the missing argument, not a
    traceback; nothing is bound."""
    result = run_to_end([*PYTHON_M, "--server", "userpkg.needs:NeedsDb",
                         "--port", "127.0.0.1:0/tcp"], env=user_env)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gnetserver: --server 'userpkg.needs:NeedsDb': ")
    assert "NeedsDb" in last and "'db'" in last and "commandline" in last


@needs_script
def test_the_console_script_finds_a_server_module_in_the_current_directory(
        tmp_path: Path, spawn: Any) -> None:
    """``gnetserver --server mymod:Shout`` run beside mymod.py finds it, as
    ``python -m gnetserver`` does (issue 7: the console script only searched its own bin
    directory). --help and a real start, both from that directory."""
    (tmp_path / "mymod.py").write_text(textwrap.dedent(USER_MODULE))
    env = dict(os.environ)  # PYTHONPATH (the package under test) only, not tmp_path
    assert str(tmp_path) not in env.get("PYTHONPATH", "")
    shown = subprocess.run([str(SCRIPT), "--server", "mymod:Shout", "--help"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=20,
                           stdin=subprocess.DEVNULL)
    assert shown.returncode == 0, shown.stderr
    assert "--greeting" in shown.stdout
    server = spawn([str(SCRIPT), "--server", "mymod:Shout", "--port", "127.0.0.1:0/tcp",
                    "--greeting=ahoy"], env=env, cwd=tmp_path)
    [(host, port, _)] = server.ports()
    with socket.create_connection((host, port), timeout=5) as sock, sock.makefile("rb") as reader:
        assert reader.readline() == b"ahoy\n"


# -- bad command lines ---------------------------------------------------------------------------

ERROR_ROWS = [
    ("unknown-space", ["--bogus", "17"], ["bogus", "17"]),
    ("unknown-equals", ["--bogus=17"], ["bogus", "17"]),
    ("unknown-ssl", ["--SSL_bogus=1"], ["SSL_bogus", "SSL_cert_file"]),
    ("bad-level", ["--log_level=-3"], ["log_level", "-3"]),
    ("bare-port", ["--port"], ["option 'port'", "needs a value"]),
    ("bare-cert-before-port", ["--SSL_cert_file", "--port", "127.0.0.1:0/ssl"],
     ["option 'SSL_cert_file'", "needs a value"]),
    ("integer-at-least", ["--max_servers=0"], ["max_servers", "an integer of at least 1"]),
    ("bad-level-space", ["--log_level", "nine"], ["log_level", "nine"]),
    ("bad-seconds", ["--timeout_handshake", "-1"], ["timeout_handshake", "-1"]),
    ("bad-port", ["--port", "127.0.0.1:nosuchservice/tcp"],
     ["127.0.0.1:nosuchservice/tcp", "nosuchservice"]),
    ("bad-proto", ["--port", "127.0.0.1:0/sctp"], ["sctp"]),
    ("missing-cert", ["--port", "127.0.0.1:0/ssl", "--SSL_cert_file", "/nonexistent/c.pem"],
     ["/nonexistent/c.pem", "127.0.0.1:0/ssl"]),
    ("bad-server", ["--server", "no_such_module_xyz:Thing"], ["no_such_module_xyz"]),
    ("server-not-a-class-path", ["--server", "gnetserver"], ["gnetserver", "module:Class"]),
    ("server-not-a-gserver", ["--server", "collections:OrderedDict"], ["GServer"]),
]


@pytest.mark.parametrize("words, expected", [r[1:] for r in ERROR_ROWS],
                         ids=[r[0] for r in ERROR_ROWS])
def test_bad_command_line_exits_with_a_message(words: list[str], expected: list[str]) -> None:
    result = run_to_end([*PYTHON_M, *words])
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gnetserver: ")
    for word in expected:
        assert word in last
    assert "Traceback" not in result.stderr


# -- options only code can give (Option.cli False) -----------------------------------------------

CODE_ONLY = [option.name for option in OPTIONS if not option.cli]  # --help's order


def test_code_only_options_are_the_object_valued_ones() -> None:
    """Exactly the options whose values are Python objects (callables, certificate and key
    objects) are code only; every name of that list is a real option."""
    assert set(CODE_ONLY) == CODE_ONLY_SSL_OPTIONS | {"tied_stdout_callback",
                                                      "tied_stdin_callback"}
    assert CODE_ONLY_SSL_OPTIONS <= set(SUPPORTED_SSL_OPTIONS)
    assert table(OPTIONS)["log_function"].cli  # a method name is text


@pytest.mark.parametrize("name", CODE_ONLY)
@pytest.mark.parametrize("form", ["equals", "space", "key=value"])
@pytest.mark.parametrize("strict", [True, False], ids=["command", "run"])
def test_code_only_option_on_the_command_line(name: str, form: str, strict: bool) -> None:
    """The gnetserver command (strict) and run() reading sys.argv (not strict) alike refuse
    it with an error naming the option and its value and saying it is for code only."""
    words = {"equals": [f"--{name}=x"], "space": [f"--{name}", "x"],
             "key=value": [f"{name}=x"]}[form]
    with pytest.raises(ConfigError) as info:
        config.from_command_line(["--log_level=3", *words], table(OPTIONS), strict=strict)
    text = str(info.value)
    assert text.startswith(f"option {name!r} = 'x' (command line) is for code only: ")
    assert "constructor or run()" in text


def test_code_only_option_names_its_file_twin() -> None:
    with pytest.raises(ConfigError, match="for a file use SSL_key_file$"):
        config.from_command_line(["--SSL_key=PEM"], table(OPTIONS), strict=True)


def test_code_only_option_in_a_conf_file(tmp_path: Path) -> None:
    """A conf file holds text only: the same error, naming the file and the line (not the
    value: a conf file's values are never quoted, issue 16 point 11)."""
    conf = tmp_path / "server.conf"
    conf.write_text("log_level 3\nSSL_verify_callback check_peer\n")
    with pytest.raises(ConfigError) as info:
        GServer(conf_file=str(conf)).configure()
    assert str(info.value).startswith(
        f"option 'SSL_verify_callback' (conf_file {str(conf)!r} line 2) is for code only: ")
    assert "check_peer" not in str(info.value)


def test_code_only_option_from_code_is_accepted() -> None:
    """Constructor and run() arguments still give them (here, with a server method)."""
    def callback() -> str:
        return "secret"

    server = GServer(commandline=["--log_level=3"], SSL_passwd_cb=callback)
    server.configure()
    assert server.conf["SSL_passwd_cb"] is callback and server.conf["log_level"] == 3


def test_code_only_option_through_the_command() -> None:
    """``gnetserver --SSL_passwd_cb x``: exit 2 and one clear line; --help hides the option
    and its epilog names the code-only ones."""
    result = run_to_end([*PYTHON_M, "--port", "127.0.0.1:0/ssl", "--SSL_passwd_cb", "x"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("gnetserver: option 'SSL_passwd_cb' = 'x' (command line) is for "
                           "code only: ")
    shown = run_to_end([*PYTHON_M, "--help"])
    assert shown.returncode == 0, shown.stderr
    for name in CODE_ONLY:
        assert f"--{name} " not in shown.stdout
    flat = " ".join(shown.stdout.split())
    assert "For code only (constructor or run() arguments): " + ", ".join(CODE_ONLY) in flat
