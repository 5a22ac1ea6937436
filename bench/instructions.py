"""User-space instructions per full TLS handshake and per keep-alive request (callgrind).

Timed CPU drifts 2x between days on this shared machine and its per-round spread is wider
than a 5 % goal; an instruction count does not drift: the same binary, inputs and
environment give the same count whatever else the machine does. So this script counts, for
each server of bench/side_by_side.py (the same ``--serve`` processes: gnetserver from a
source tree, the bare pyOpenSSL loop), under ``valgrind --tool=callgrind`` with
instrumentation off at start:

* **handshake**: a warm-up (``h2load -c4 -n40``, not counted), then instrumentation on for
  ``h2load --h1 -m1 -cC -nN -H 'Connection: close'`` (every connection a full handshake, one
  request and the close), off, dump: the total divided by N;
* **keep-alive**: ``h2load --h1 -m1 -c10`` for R1 requests and then R2 requests, each counted
  alone; (I(R2) - I(R1)) / (R2 - R1) is the cost of one request, the ten handshakes of each
  run cancelling out.

Run from the repository root::

    python bench/instructions.py                               # gnetserver (this tree), bare
    python bench/instructions.py --before ../tree              # also gnetserver from ../tree
    python bench/instructions.py --keys ecdsa --measures handshake

About 30 s per server, key and measure (the server runs some 50 times slower under
valgrind). Needs valgrind (``callgrind_control``) and h2load (nghttp2-client).
"""

from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # servers beside this file

from servers import REPO, free_ports, write_certificate  # noqa: E402

SIDE_BY_SIDE = Path(__file__).resolve().parent / "side_by_side.py"
#: A server under valgrind starts in tens of seconds.
START_TIMEOUT = 180.0


class Counted:
    """One server process under callgrind, instrumentation off until :meth:`count`."""

    def __init__(self, label: str, tree: Path, cert: str, key: str, folder: Path) -> None:
        self.port = free_ports(1)[0]
        self.out = folder / f"{label}-{self.port}.cg"
        env = dict(os.environ, PYTHONPATH=str(tree))
        serve = "gnetserver" if label.startswith("gnetserver") else label
        self.log = open(folder / f"{label}-{self.port}.log", "w+")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no",
             f"--callgrind-out-file={self.out}.%p", sys.executable, str(SIDE_BY_SIDE),
             "--serve", serve, "--port", str(self.port), "--cert", cert, "--key", key,
             "--tree", str(tree)],
            env=env, stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", self.port), 1).close()
                return
            except OSError:
                time.sleep(0.5)
        self.stop()  # (closes the log: read it again by name)
        text = Path(self.log.name).read_text(errors="replace")
        sys.exit(f"bench: {label} did not start under valgrind:\n{text[-2000:]}")

    def h2load(self, count: int, clients: int, close: bool) -> None:
        """``h2load`` against this server; exits when a request failed."""
        command = ["h2load", "--h1", "-t1", "-m1", f"-c{clients}", f"-n{count}"]
        if close:
            command += ["-H", "Connection: close"]
        done = subprocess.run([*command, f"https://127.0.0.1:{self.port}/"],
                              capture_output=True, text=True, timeout=600)
        match = re.search(r"(\d+) succeeded", done.stdout)
        if not match or int(match.group(1)) != count:
            sys.exit(f"bench: h2load did not complete {count} requests:\n{done.stdout}"
                     f"{done.stderr[-2000:]}")

    def count(self, run: int, clients: int, close: bool) -> int:
        """Instructions of this process while ``run`` requests are served."""
        pid = str(self.proc.pid)
        subprocess.run(["callgrind_control", "-z", pid], capture_output=True, check=True)
        subprocess.run(["callgrind_control", "-i", "on", pid], capture_output=True, check=True)
        self.h2load(run, clients, close)
        time.sleep(1.0)  # the last closes (the lingering close) are the server's work too
        subprocess.run(["callgrind_control", "-i", "off", pid], capture_output=True,
                       check=True)
        before = set(glob.glob(f"{self.out}.*"))
        subprocess.run(["callgrind_control", "-d", pid], capture_output=True, check=True)
        dumps = sorted(set(glob.glob(f"{self.out}.*")) - before)
        if not dumps:
            sys.exit("bench: callgrind wrote no dump")
        text = Path(dumps[-1]).read_text(errors="replace")
        # (a dump's "summary:" line may read 0 where its "totals:" line has the count)
        match = re.search(r"^totals: (\d+)", text, re.MULTILINE)
        if not match:
            sys.exit(f"bench: no totals in {dumps[-1]}")
        return int(match.group(1))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def measure(label: str, tree: Path, cert: str, key: str, folder: Path,
            args: argparse.Namespace) -> dict[str, float]:
    """k instructions per handshake and per keep-alive request of one server."""
    server = Counted(label, tree, cert, key, folder)
    result: dict[str, float] = {}
    try:
        server.h2load(40, 4, close=True)  # warm-up: imports, first-connection work
        if "handshake" in args.measures:
            total = server.count(args.handshakes, args.concurrency, close=True)
            result["handshake"] = total / args.handshakes / 1000
        if "keepalive" in args.measures:
            small, large = args.requests
            first = server.count(small, 10, close=False)
            second = server.count(large, 10, close=False)
            result["keepalive"] = (second - first) / (large - small) / 1000
    finally:
        server.stop()
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--before", help="also gnetserver from this source tree (gnetserver-before)")
    add("--servers", default="gnetserver,bare", help="which (gnetserver,bare)")
    add("--keys", default="ecdsa,rsa", help="certificate key types (ecdsa,rsa)")
    add("--measures", default="handshake,keepalive", help="handshake,keepalive")
    add("--handshakes", type=int, default=300, help="counted handshakes (300)")
    add("--concurrency", type=int, default=16, help="concurrent fresh clients (16)")
    add("--requests", default="2000,6000",
        help="the two keep-alive request counts whose difference is counted (2000,6000)")
    args = parser.parse_args(argv)
    args.measures = args.measures.split(",")
    args.requests = tuple(int(n) for n in args.requests.split(","))
    if len(args.requests) != 2 or not 10 <= args.requests[0] < args.requests[1]:
        parser.error("--requests takes two counts, the second larger, both at least 10 "
                     "(h2load -c10)")
    if args.handshakes < args.concurrency:  # h2load refuses -n below -c
        parser.error("--handshakes must be at least --concurrency")
    for tool in ("valgrind", "callgrind_control", "h2load"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is missing (apt-get install valgrind nghttp2-client)")
    labels = [s for s in args.servers.split(",") if s]
    trees = {label: REPO for label in labels}
    if args.before:
        labels.insert(1, "gnetserver-before")
        trees["gnetserver-before"] = Path(args.before).resolve()
    # each gnetserver against the bare loop, as side_by_side.py's table does
    ratios = ([label for label in labels if label.startswith("gnetserver")]
              if "bare" in labels else [])
    rows: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-instr-") as tmp:
        folder = Path(tmp)
        for key_type in args.keys.split(","):
            cert, key = write_certificate(folder, key_type)
            results = {}
            for label in labels:
                results[label] = measure(label, trees[label], cert, key, folder, args)
                print(f"  {key_type} {label}: {results[label]}", file=sys.stderr, flush=True)
            for measure_name in args.measures:
                cells = [f"{results[label][measure_name]:,.1f}" for label in labels]
                for label in ratios:
                    ratio = results[label][measure_name] / results["bare"][measure_name]
                    cells.append(f"{ratio:.3f}")
                rows.append(f"| {measure_name}, {key_type} | " + " | ".join(cells) + " |")
    header = "| k instructions per operation | " + " | ".join(
        [*labels, *(f"{label}/bare" for label in ratios)])
    print(f"\nCommand: python bench/instructions.py {' '.join(argv or sys.argv[1:])}\n")
    print(header + " |")
    print("|---|" + "---:|" * (header.count("|") - 1))
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
