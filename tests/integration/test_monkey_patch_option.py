"""The ``monkey_patch`` option (issue 12): patch_all() applied at start from code, so a
handler's plain ``time.sleep`` no longer stalls the other clients; refused with a clear
message where patching that late is unsafe. Each server is a real subprocess (patching the
test process would change every other test)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from support.net import read_line
from support.process import REPO, ServerProcess, python_env

pytestmark = pytest.mark.timeout(30)

SERVER = """
import sys, threading, time
from gnetserver import GServer

class Slow(GServer):
    def process_request(self, client):
        line = client.readline().strip()
        if line == b"slow":
            time.sleep(2)  # blocking unless monkey-patched
        client.sendall(b"done " + line + b"\\n")

if sys.argv[1] == "thread":  # a thread running before the start: patching is unsafe
    threading.Thread(target=time.sleep, args=(20,), daemon=True).start()
elif sys.argv[1] == "ssl":  # a module holding the stdlib SSLContext before the start
    from ssl import SSLContext
Slow(commandline=sys.argv[2:]).run()
"""


@pytest.fixture
def script(tmp_path: Path) -> Path:
    path = tmp_path / "slow_server.py"
    path.write_text(SERVER, encoding="utf-8")
    return path


def test_monkey_patch_option_makes_blocking_sleep_cooperative(
        spawn: Callable[..., ServerProcess], script: Path) -> None:
    proc: ServerProcess = spawn([sys.executable, str(script), "plain", "--port",
                                 "127.0.0.1:0", "--monkey_patch", "1"],
                                env=python_env(REPO), cwd=REPO, terminate=True)
    [(host, port, _)] = proc.ports()
    assert "monkey_patch: gevent.monkey.patch_all() applied" in proc.log
    assert "gevent warns" not in proc.log
    with socket.create_connection((host, port), timeout=10) as slow, \
            socket.create_connection((host, port), timeout=10) as fast:
        slow.sendall(b"slow\n")
        fast.sendall(b"fast\n")
        assert read_line(fast) == b"done fast\n"  # served while the slow one sleeps
        slow.setblocking(False)
        with pytest.raises(BlockingIOError):
            slow.recv(1)
        slow.settimeout(10)
        assert read_line(slow) == b"done slow\n"


@pytest.mark.parametrize("case, reason", [
    ("thread", "other threads run already"),
    ("ssl", "modules hold the stdlib ssl classes already (__main__)"),
])
def test_monkey_patch_refused_where_unsafe(script: Path, case: str, reason: str) -> None:
    result = subprocess.run([sys.executable, str(script), case, "--port", "127.0.0.1:0",
                             "--monkey_patch", "1"], capture_output=True, text=True,
                            timeout=20, env=python_env(REPO), cwd=REPO,
                            stdin=subprocess.DEVNULL)
    assert result.returncode != 0
    assert "option 'monkey_patch': cannot patch at start: " + reason in result.stderr
    assert "monkey.patch_all()" in result.stderr  # says what to do instead
