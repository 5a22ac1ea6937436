"""HUP and the hand-over of sockets, against attacks and privilege drops (issue 16, points 8
and 12), with the server as a real subprocess.

* Point 12: ``BOUND_SOCKETS`` is only trusted with the marker the re-exec sets (the pid of the
  exec'ing process): a first start with the variable planted (here by a wrapper that opens a
  listening socket, names it in the variable and execs the server, as a service manager's
  stray environment or a hostile parent could) binds its own ports. The real HUP path still
  adopts (test_signals.py, test_hup_reload.py).
* Point 8 (as root, the server dropping to ``nobody``): the HUP preflight checks, as the user
  the process now is, what the re-exec needs: a root-only key, an interpreter that user cannot
  run, a chroot: the HUP is refused with a level-1 line naming the file and why, and the
  server keeps serving. Ticket-key rotation with a root-only key keeps the current context and
  says why at level 1.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import site
import ssl
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from support.net import echo_line, wait_until
from support.process import REPO, ServerProcess, python_env

pytestmark = pytest.mark.timeout(40)

REFUSED = r"HUP ignored, still serving with the current configuration: (.*)$"

#: Opens a listening socket, names it in BOUND_SOCKETS (no marker) and execs the server.
PLANTER = textwrap.dedent('''
    import os, socket, sys
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    os.set_inheritable(sock.fileno(), True)
    port = sock.getsockname()[1]
    os.environ["BOUND_SOCKETS"] = f"{sock.fileno()}|127.0.0.1|{port}|TCP|ipv4|0"
    marker = sys.argv[1]
    if marker:
        os.environ["GNETSERVER_REEXEC_PID"] = marker
    print(f"planted port {port}", file=sys.stderr, flush=True)
    os.execv(sys.executable, [sys.executable, "-m", "gnetserver", *sys.argv[2:]])
''')


@pytest.mark.parametrize("marker", ["", "1"], ids=["no-marker", "another-pid"])
def test_planted_bound_sockets_is_not_adopted(spawn: Any, tmp_path: Path, marker: str) -> None:
    env = python_env(REPO)
    env.pop("BOUND_SOCKETS", None)
    server = spawn([sys.executable, "-c", PLANTER, marker, "--port", "127.0.0.1:0/tcp",
                    "--log_level", "2"], env=env, cwd=tmp_path, terminate=True)
    planted = int(server.wait_for(r"planted port (\d+)$").group(1))
    ((host, port, _),) = server.ports()
    assert port != planted  # bound its own socket, not the one it was handed
    assert server.count("BOUND_SOCKETS is set, but not by a HUP re-exec") == 1
    assert "You said" in echo_line((host, port))


# -- as root, dropping to nobody ------------------------------------------------------------------

IS_ROOT = os.geteuid() == 0


def _nobody() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        return None


NOBODY = _nobody()
NOBODY_UID = NOBODY.pw_uid if NOBODY is not None else -1
needs_root_and_nobody = pytest.mark.skipif(
    not IS_ROOT or NOBODY is None, reason="needs root and a 'nobody' user: drops privileges")


@pytest.fixture
def shared_dir(certs: dict[str, str]) -> Iterator[Path]:
    """A folder nobody may enter, with the test certificate (world-readable) and its key
    (root only, 0600): the key a root start reads and the service user cannot."""
    folder = Path(tempfile.mkdtemp(prefix="gnetserver-hup-"))
    folder.chmod(0o755)
    shutil.copy(certs["SSL_cert_file"], folder / "cert.pem")
    shutil.copy(certs["SSL_key_file"], folder / "key.pem")
    (folder / "cert.pem").chmod(0o644)
    (folder / "key.pem").chmod(0o600)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def as_nobody(spawn: Any, shared_dir: Path) -> Callable[..., ServerProcess]:
    """``as_nobody(*args, python=..., packages=...)``: ``python -m gnetserver --user nobody
    ARGS`` started as root in ``shared_dir``, ``packages`` (folders) in front of PYTHONPATH;
    stopped (TERM, then KILL) at teardown."""

    def start(*args: str, python: str = sys.executable,
              packages: Sequence[str] = ()) -> ServerProcess:
        env = python_env(REPO, *packages)
        env.pop("BOUND_SOCKETS", None)
        return spawn([python, "-m", "gnetserver", "--user", "nobody", "--log_level", "3",
                      *args], env=env, cwd=shared_dir, terminate=True)

    return start


def tls_args(folder: Path, *extra: str) -> tuple[str, ...]:
    return ("--port", "127.0.0.1:0/ssl", "--SSL_cert_file", str(folder / "cert.pem"),
            "--SSL_key_file", str(folder / "key.pem"), *extra)


@needs_root_and_nobody
def test_hup_with_a_root_only_key_is_refused_and_the_server_keeps_serving(
        as_nobody: Any, shared_dir: Path, client_context: ssl.SSLContext) -> None:
    server = as_nobody(*tls_args(shared_dir))
    (where,) = server.ports()
    assert "You said" in echo_line(where[:2], client_context)
    server.send(signal.SIGHUP)
    refusal = server.wait_for(REFUSED).group(1)
    key = str(shared_dir / "key.pem")
    assert f"SSL_key_file '{key}': cannot read (Permission denied)" in refusal, refusal
    assert f"read as uid {NOBODY_UID} ('nobody')" in refusal, refusal
    assert server.count("Re-exec server during HUP") == 0
    assert server.proc.poll() is None
    assert "You said" in echo_line(where[:2], client_context)  # still serving, same listener


@needs_root_and_nobody
def test_hup_with_an_interpreter_nobody_cannot_run_is_refused(
        as_nobody: Any, shared_dir: Path) -> None:
    """The interpreter is reached through a root-only folder (as one under /root): the exec as
    nobody would fail and end the server; the preflight refuses the HUP instead."""
    private = Path(tempfile.mkdtemp(prefix="gnetserver-python-"))  # mode 0700
    try:
        python = private / "python"
        python.symlink_to(os.path.realpath(sys.executable))
        # The real interpreter, started outside a venv, does not see the venv's packages
        # (gevent...): name them, as a venv would.
        packages = site.getsitepackages() if sys.prefix != sys.base_prefix else []
        server = as_nobody("--port", "127.0.0.1:0/tcp", python=str(python), packages=packages)
        (where,) = server.ports()
        server.send(signal.SIGHUP)
        refusal = server.wait_for(REFUSED).group(1)
        assert f"the re-exec would fail: the interpreter '{python}' cannot be reached by uid " \
               f"{NOBODY_UID} ('nobody')" in refusal, refusal
        assert server.count("Re-exec server during HUP") == 0
        assert "You said" in echo_line(where[:2])
    finally:
        shutil.rmtree(private, ignore_errors=True)


@needs_root_and_nobody
def test_hup_inside_a_chroot_is_refused(as_nobody: Any, shared_dir: Path) -> None:
    server = as_nobody("--port", "127.0.0.1:0/tcp", "--chroot", str(shared_dir))
    (where,) = server.ports()
    server.send(signal.SIGHUP)
    refusal = server.wait_for(REFUSED).group(1)
    assert f"cannot re-execute the server inside its chroot '{shared_dir}'" in refusal, refusal
    assert server.count("Re-exec server during HUP") == 0
    assert "You said" in echo_line(where[:2])


@needs_root_and_nobody
def test_ticket_rotation_with_a_root_only_key_keeps_serving_and_says_why(
        as_nobody: Any, shared_dir: Path, client_context: ssl.SSLContext) -> None:
    server = as_nobody(*tls_args(shared_dir, "--SSL_ticket_key_rotation", "1"))
    (where,) = server.ports()
    said = server.wait_for(r"SSL_ticket_key_rotation will not rotate.*$").group(0)
    assert f"read as uid {NOBODY_UID}" in said  # said at start, not only at each rotation

    def rotation_tried() -> bool:
        assert "You said" in echo_line(where[:2], client_context)  # every client is served
        return server.count("session-ticket key rotation failed") > 0

    wait_until(rotation_tried, 15, "a rotation to be tried")
    line = server.wait_for(r"session-ticket key rotation failed.*$").group(0)
    assert "keeping the current keys and certificates" in line
    assert f"SSL_key_file '{shared_dir / 'key.pem'}': cannot read (Permission denied)" in line
    assert f"read as uid {NOBODY_UID}" in line
    assert "You said" in echo_line(where[:2], client_context)
    assert server.proc.poll() is None

