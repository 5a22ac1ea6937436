"""Servers run as real subprocesses: their stderr is read line by line by a thread, and the
listeners are learnt from the "Server ready: ..." line (ports are always kernel-chosen)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
#: The checkout's README.rst. Tests read it from here, never through ``gnetserver.docs``: the
#: package under test may be installed in site-packages, away from the checkout.
README = REPO / "README.rst"
READY = re.compile(r"Server ready: (.*)$")
FINGERPRINT = re.compile(r"SHA-256 fingerprint ([0-9A-F:]{95})")

#: One listener as the "Server ready:" line names it: (host, port, proto), or ("", path,
#: "unix") for a UNIX socket.
Where = tuple[str, Any, str]


def python_env(*paths: str | Path, inherit: bool = True) -> dict[str, str]:
    """This environment with ``paths`` in front of PYTHONPATH (only them unless ``inherit``)."""
    kept = [os.environ.get("PYTHONPATH", "")] if inherit else []
    joined = os.pathsep.join(str(p) for p in [*paths, *kept] if p)
    return dict(os.environ, PYTHONPATH=joined)


def parse_ready(listed: str) -> list[Where]:
    """The listeners of a "Server ready: a:1/ssl, [::1]:2/tcp, /x.sock|unix" line."""
    found: list[Where] = []
    for item in listed.split(", "):
        where, proto = item.rsplit("|" if item.endswith("|unix") else "/", 1)
        if proto == "unix":
            found.append(("", where, proto))
        else:
            host, port = where.rsplit(":", 1)
            found.append((host.strip("[]"), int(port), proto))
    return found


class ServerProcess:
    """A command run as a subprocess whose stderr lines are collected by a reader thread.

    Always :meth:`stop` it (the ``spawn`` fixture does): it is killed, or with ``terminate``
    sent SIGTERM first, then reaped, bounded.
    """

    def __init__(self, argv: list[str], env: dict[str, str] | None = None,
                 cwd: Path | str | None = None, terminate: bool = False) -> None:
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True, encoding="utf-8", errors="replace")
        self.pid = self.proc.pid
        self.terminate = terminate
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    @property
    def log(self) -> str:
        """Every stderr line so far."""
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: re.Pattern[str] | str, count: int = 1,
                 timeout: float = 15.0) -> re.Match[str]:
        """The ``count``-th stderr line matching ``pattern``; fails if the process ends first."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in map(regex.search, self.lines) if m]
                if len(found) >= count:
                    return found[count - 1]
                left = deadline - time.monotonic()
                if left <= 0 or not self._reader.is_alive():
                    pytest.fail(f"no line #{count} matching {regex.pattern!r}; "
                                f"stderr: {self.lines}")
                self._changed.wait(left)

    def count(self, pattern: str) -> int:
        """How many stderr lines so far match ``pattern``."""
        with self._changed:
            return sum(1 for line in self.lines if re.search(pattern, line))

    def ports(self, generation: int = 1) -> list[Where]:
        """Every listener, from the ``generation``-th "Server ready:" line (a HUP re-exec
        logs a new one)."""
        return parse_ready(self.wait_for(READY, generation).group(1))

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def wait_exit(self, timeout: float = 15.0) -> int:
        return self.proc.wait(timeout)

    def stop(self) -> None:
        """End the process if it still runs and reap it, bounded; close the pipe."""
        if self.proc.poll() is None:
            if self.terminate:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            else:
                self.proc.kill()
        self.proc.wait(10)
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


def gnetserver_to_files(*args: str, folder: Path) -> subprocess.Popen[bytes]:
    """Start ``python -m gnetserver ARGS`` from this checkout with stdout on /dev/null and
    stderr into ``folder/err.txt``: files, so that a daemon child holds no pipe of ours."""
    with open(folder / "err.txt", "wb") as err:
        return subprocess.Popen([sys.executable, "-m", "gnetserver", *args], cwd=REPO,
                                env=python_env(REPO, inherit=False), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)


def end(proc: subprocess.Popen[Any], grace: float = 5.0) -> None:
    """SIGTERM a process that still runs, SIGKILL it after ``grace`` seconds; reaped either
    way."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def alive(pid: int) -> bool:
    """True while the process exists and is not a zombie (a daemon's parent is gone, so
    whoever adopted it may reap it late)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def read_pid(pid_file: Path) -> int | None:
    """The pid in a pid file, or None while it is missing or not completely written."""
    try:
        text = pid_file.read_text()
    except FileNotFoundError:
        return None
    return int(text) if text.endswith("\n") and text.strip().isdigit() else None


def process_ids(pid: int) -> dict[str, list[int]]:
    """Uid, Gid (real, effective, saved, fs) and Groups of a live process."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("Uid", "Gid", "Groups"):
            fields[key] = [int(v) for v in value.split()]
    return fields
