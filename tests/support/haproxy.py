"""A real HAProxy (Debian's ``haproxy``) started by a test: a generated configuration on
loopback ports, run in the foreground (``-db``), stopped with SIGTERM (then KILL) at the end.

Its frontend port is chosen free beforehand; readiness is read from /proc/net/tcp (the port
in LISTEN state), so no probe connection reaches the server behind it.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
from pathlib import Path

from .net import wait_until
from .process import end

HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"

DEFAULTS = """\
global
    log stderr format short local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 2s
    timeout client 10s
    timeout server 10s
"""


def listening(port: int) -> bool:
    """True when some socket of this host listens on the IPv4 ``port``."""
    with open("/proc/net/tcp") as table:
        for line in table.readlines()[1:]:
            fields = line.split()
            if int(fields[1].split(":")[1], 16) == port and fields[3] == "0A":
                return True
    return False


class HAProxy:
    """One haproxy process running ``config`` (written to ``folder/haproxy.cfg``, after
    :data:`DEFAULTS` unless ``complete``: then it has its own ``global`` and ``defaults``),
    whose frontend listens on ``port``; ``log`` is what it wrote to stderr so far."""

    def __init__(self, config: str, folder: Path, port: int, complete: bool = False) -> None:
        self.port = port
        path = folder / "haproxy.cfg"
        path.write_text(config if complete else DEFAULTS + config)
        check = subprocess.run([HAPROXY, "-c", "-q", "-f", str(path)], capture_output=True,
                               text=True, timeout=30, check=False)
        assert check.returncode == 0, f"haproxy -c: {check.stdout}{check.stderr}"
        self._lines: list[str] = []
        self.proc = subprocess.Popen([HAPROXY, "-db", "-f", str(path)],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            wait_until(lambda: listening(port) or self.proc.poll() is not None, 10,
                       "haproxy to listen")
            assert self.proc.poll() is None, f"haproxy exited: {self.log}"
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self._lines)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s; idempotent."""
        end(self.proc)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
