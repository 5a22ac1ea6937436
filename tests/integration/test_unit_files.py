"""The systemd unit files in examples/ pass ``systemd-analyze verify`` (systemd 252; no
systemd needs to run as PID 1 for it). Their ``ExecStart=`` names ``/usr/local/bin/gnetserver``
(where ``pip install`` puts the command), which verify requires to exist: the copies verified
here point at this interpreter instead, nothing else is changed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.process import REPO

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                       reason="systemd-analyze missing (.ci/run installs systemd)"),
]


def test_unit_files_verify(tmp_path: Path) -> None:
    service = (REPO / "examples" / "gnetserver.service").read_text()
    assert "ExecStart=/usr/local/bin/gnetserver " in service
    (tmp_path / "gnetserver.service").write_text(
        service.replace("/usr/local/bin/gnetserver", sys.executable))
    shutil.copy(REPO / "examples" / "gnetserver.socket", tmp_path)
    done = subprocess.run(["systemd-analyze", "verify", "gnetserver.service",
                           "gnetserver.socket"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=20)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")
