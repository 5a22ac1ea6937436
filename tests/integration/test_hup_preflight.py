"""The HUP preflight (server.py ``restart_problem``, ``dry_run_start``), in process.

Before a HUP re-executes the server, the new image's start-up is run without its effects (the
running server is left as it was): every option source read again (here: the conf file named
by a constructor option), the ports parsed, the TLS contexts of ssl and ssleay ports built from
the files on disk, user/group/log_function/log_file checked. Each case below is a conf file
edited into one the new image would die on, so restart_problem names the reason; the twins
(the same server, a valid edit) must give None. The dry run must leave the running server, the
process's environment and directory, and the disk as they were, and log nothing.

The subprocess side (the refusal logged, the server still serving, a fixed file restarting) is
in test_hup_reload.py.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from support.net import tls_connect

from gnetserver import GServer, restart
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(20)


def conf_text(certs: dict[str, str], *extra: str, ports: tuple[str, ...] = ("ssl", "ssleay"),
              cert: str | None = None) -> str:
    lines = [*(f"port 127.0.0.1:0/{proto}" for proto in ports),
             f"SSL_cert_file {cert or certs['SSL_cert_file']}",
             f"SSL_key_file {certs['SSL_key_file']}", *extra]
    return "\n".join(lines) + "\n"


@pytest.fixture
def running() -> Iterator[Callable[[GServer], ServerThread]]:
    threads: list[ServerThread] = []

    def start(server: GServer) -> ServerThread:
        threads.append(ServerThread(server).start())
        return threads[-1]

    yield start
    for thread in threads:
        thread.stop()


@pytest.fixture
def conf(tmp_path: Path, certs: dict[str, str]) -> Path:
    path = tmp_path / "server.conf"
    path.write_text(conf_text(certs))
    return path


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda c: conf_text(c, "log_level loud"), "option 'log_level': bad value (conf_file"),
        (lambda c: conf_text(c, "colour blue"), "unknown option 'colour'"),
        (lambda c: conf_text(c, cert="/nonexistent/cert.pem"),
         "port 127.0.0.1:0/ssl: SSL_cert_file '/nonexistent/cert.pem': cannot read"),
        (lambda c: conf_text(c, "SSL_ecdh_curve P-256:P-384"),
         "port 127.0.0.1:0/ssleay: SSL_ecdh_curve 'P-256:P-384'"),
        (lambda c: conf_text(c, ports=("tcp",)),
         "given, but no port uses TLS (proto ssl or ssleay): ports 127.0.0.1:0/tcp"),
        (lambda c: conf_text(c, "port 127.0.0.1:0/sctp"), "bad port spec '127.0.0.1:0/sctp'"),
        (lambda c: conf_text(c, "user no-such-user-gns"),
         "option 'user': no such user 'no-such-user-gns'"),
        (lambda c: conf_text(c, "log_function no_such_method"),
         "option 'log_function': 'no_such_method' is not a method of GServer"),
        (lambda c: conf_text(c, "log_file /nonexistent-gns/server.log"),
         "option 'log_file': cannot open '/nonexistent-gns/server.log'"),
    ],
    ids=["bad-value", "unknown-option", "missing-certificate", "ssleay-refuses",
         "ssl-options-no-tls-port", "bad-proto", "unknown-user", "log-function",
         "log-file-folder"],
)
def test_a_conf_file_that_cannot_start_is_found(running: Any, certs: dict[str, str], conf: Path,
                                                edit: Any, reason: str) -> None:
    st = running(GServer(conf_file=str(conf)))
    assert st.call(st.server.restart_problem) is None
    conf.write_text(edit(certs))
    problem = st.call(st.server.restart_problem)
    assert problem is not None and reason in problem, problem
    conf.write_text(conf_text(certs, "graceful_timeout 2"))  # the twin: a valid edit
    assert st.call(st.server.restart_problem) is None


def test_the_dry_run_changes_nothing(running: Any, certs: dict[str, str], conf: Path,
                                     tmp_path: Path, client_context: Any,
                                     caplog: pytest.LogCaptureFixture) -> None:
    """No log line, no file written, the running server's options, contexts and listeners
    untouched, the environment and the current directory put back; even when it fails."""
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    st = running(GServer(conf_file=str(conf)))
    server = st.server
    conf_before, contexts = server.conf, server.tls_contexts
    handles = [(handle, handle.context) for handle in contexts.handles]
    listeners = list(server.listeners)
    cwd, env = os.getcwd(), dict(os.environ)
    pid_file, log_file = tmp_path / "new.pid", tmp_path / "new.log"
    for extra in ((f"pid_file {pid_file}", f"log_file {log_file}"), ("log_level loud",)):
        conf.write_text(conf_text(certs, *extra))
        logged = len(caplog.records)
        st.call(server.restart_problem)
        assert len(caplog.records) == logged, caplog.messages[logged:]
        assert not pid_file.exists() and not log_file.exists()
        assert os.getcwd() == cwd and dict(os.environ) == env
        assert server.conf is conf_before and server.tls_contexts is contexts
        assert [(handle, handle.context) for handle in contexts.handles] == handles
        assert server.listeners == listeners
    with tls_connect(server, client_context, 1) as tls:  # still serving
        assert tls.recv(9) == b"Welcome t"


class SeesTheReexecEnvironment(GServer):
    """Records what default_values() sees: the dry run runs it as the new image will."""

    seen: list[tuple[str | None, str]] = []

    def default_values(self) -> dict[str, Any]:
        type(self).seen.append((os.environ.get("BOUND_SOCKETS"), os.getcwd()))
        return {}


def test_the_dry_run_sees_what_the_new_image_will_see(running: Any, certs: dict[str, str],
                                                       tmp_path: Path) -> None:
    """BOUND_SOCKETS set as the exec sets it (one entry per listener), the directory the
    process started in; and the state the program gave the server carried over (a path an
    SSL_* method returns), so that the dry run does not refuse a HUP the new image survives."""

    class FromAttributes(SeesTheReexecEnvironment):
        def SSL_cert_file(self, host: str, port: int, proto: str) -> str:  # noqa: N802
            return str(self.cert_path)

    server = FromAttributes(port=["127.0.0.1:0/ssl", "127.0.0.1:0/tcp"],
                            SSL_key_file=certs["SSL_key_file"])
    server.cert_path = certs["SSL_cert_file"]
    st = running(server)
    here = os.getcwd()
    FromAttributes.seen.clear()
    os.chdir(tmp_path)  # the exec goes back to where the process started
    try:
        assert st.call(server.restart_problem) is None
        assert os.getcwd() == str(tmp_path)  # and the dry run put this one back
    finally:
        os.chdir(here)
    (bound, cwd), = FromAttributes.seen
    ports = [listener.port for listener in server.listeners]
    assert bound is not None and f"|127.0.0.1|{ports[0]}|SSL|ipv4|0" in bound
    assert f"|127.0.0.1|{ports[1]}|TCP|ipv4|0" in bound
    assert cwd == restart.START_CWD and "BOUND_SOCKETS" not in os.environ
