"""sslyze's own virtual environment, kept apart from the environment under test.

sslyze pins an older cryptography than gnetserver needs, so it is installed in a venv of its
own under the user's cache folder, one per sslyze version. ``.ci/run`` prepares it before the
tests (``PYTHONPATH=tests python -m support.sslyze``) so that the suite's time does not include
the download; the test's fixture creates it on first use otherwise.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

SSLYZE_VERSION = "6.3.1"
VENV_SECONDS = 600  # creating the venv: pip downloads and installs sslyze, nassl, cryptography...


def sslyze_venv_path() -> Path:
    """Where the sslyze venv lives: the user's cache folder, one venv per sslyze version."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / f"gnetserver-sslyze-venv-{SSLYZE_VERSION}"


def ensure_sslyze_venv(venv: Path) -> Path:
    """Create the venv with sslyze unless it is complete already; return its python.

    A lock file serialises concurrent creators; a marker written last tells a complete venv
    from one interrupted half-way (which is removed and made again).
    """
    python, marker = venv / "bin" / "python", venv / ".complete"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f"{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)
        steps = ([sys.executable, "-m", "venv", str(venv)],
                 [str(python), "-m", "pip", "install", "--quiet", f"sslyze=={SSLYZE_VERSION}"])
        for step in steps:
            done = subprocess.run(step, capture_output=True, text=True, timeout=VENV_SECONDS)
            if done.returncode != 0:
                raise RuntimeError(f"{' '.join(step)} failed ({done.returncode}):\n"
                                   f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
        marker.write_text(f"sslyze {SSLYZE_VERSION}\n")
    return python



if __name__ == "__main__":
    print(f"sslyze venv ready: {ensure_sslyze_venv(sslyze_venv_path())}")
