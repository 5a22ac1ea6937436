"""A real Prometheus server and promtool for the metrics tests (Debian's ``prometheus``
package; ``.ci/run`` installs it when missing).

:class:`Prometheus` starts ``prometheus`` with a generated configuration (``scrape_interval``
1 s, its storage and its listening port private to the test), waits until it is ready and
queries its HTTP API; :meth:`Prometheus.stop` ends it (TERM, then KILL), bounded.
:func:`samples` reads a scraped exposition (for the tests that scrape a server directly).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .net import free_port
from .process import end

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
needs_prometheus = pytest.mark.skipif(PROMETHEUS is None or PROMTOOL is None,
                                      reason="prometheus/promtool not installed")


def samples(body: bytes) -> dict[str, float]:
    """``{'name{labels}': value}`` of a text exposition (labels as written)."""
    found = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            found[name] = float(value)
    return found


def promtool(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``promtool args`` (bounded); its completed process, output as text."""
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], input=None if stdin is None else stdin.decode(),
                          capture_output=True, text=True, timeout=30, check=False)


class Prometheus:
    """A Prometheus scraping ``targets`` (``host:port`` of metrics ports) every second."""

    def __init__(self, folder: Path, targets: list[str]) -> None:
        assert PROMETHEUS is not None
        self.port = free_port()
        config = folder / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: gnetserver\n    scrape_interval: 1s\n"
            f"    static_configs:\n      - targets: {json.dumps(targets)}\n")
        self.log = (folder / "prometheus.log").open("w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 20.0) -> None:
        """Until ``/-/ready`` answers 200; AssertionError (with the log) after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited: {self.proc.returncode}"
            try:
                with urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("prometheus did not become ready")

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of PromQL ``expr`` (``/api/v1/query``): its result list."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=5) as answer:
            body = json.load(answer)
        assert body["status"] == "success", body
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def values(self, expr: str, label: str) -> dict[str, float]:
        """``expr``'s samples as ``{value of label: number}``."""
        return {sample["metric"].get(label, ""): float(sample["value"][1])
                for sample in self.query(expr)}

    def stop(self) -> None:
        """TERM, then KILL after 5 s; reaped either way."""
        end(self.proc)
        self.log.close()
