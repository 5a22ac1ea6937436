"""Which allocations an idle TLS connection keeps alive: heaptrack on a real server.

Runs one of bench/side_by_side.py's servers (default gnetserver) under ``heaptrack``, opens
``--count`` idle TLS connections to it as bench/idle_tls.py does (one request each), ends the
server with ``os._exit`` while they are open, and lists what is still allocated, per
connection: the C heap under pyOpenSSL's calls into OpenSSL by call path (the OpenSSL in the
``cryptography`` wheel resolves: its ``_rust.abi3.so`` keeps a symbol table), the greenlets'
saved C stacks, and the rest::

    python bench/idle_heap.py                       # gnetserver, 2,000 connections
    python bench/idle_heap.py --server bare-rb --count 1000
    python bench/idle_heap.py --python ../venv-sysssl/bin/python   # another OpenSSL

heaptrack sees malloc only: Python objects in pymalloc's arenas and the frames' data-stack
chunks (mmap) are not in it (tracemalloc and bench/parked_greenlets.py measure those).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from idle_tls import CLIENT  # noqa: E402
from servers import (  # noqa: E402
    REPO,
    descendants,
    free_ports,
    stop_process,
    write_certificate,
)

#: Runs the server; SIGUSR1 ends it at once (heaptrack then reports what is still allocated).
WRAPPER = r"""
import os, signal, sys
signal.signal(signal.SIGUSR1, lambda *_: os._exit(0))
sys.path.insert(0, sys.argv[1])
import side_by_side
sys.argv[0] = side_by_side.__file__
side_by_side.main(sys.argv[2:])
"""

_ALLOCATORS = {"CRYPTO_malloc", "CRYPTO_zalloc", "CRYPTO_realloc", "CRYPTO_clear_realloc",
               "CRYPTO_memdup", "CRYPTO_strdup", "CRYPTO_strndup", "malloc", "calloc",
               "realloc"}


def run_server(args: argparse.Namespace, tmp: Path) -> Path:
    """The server under heaptrack with ``args.count`` idle connections; the data file."""
    cert, key = write_certificate(tmp, "ecdsa")
    port = free_ports(1)[0]
    out = tmp / "heap"
    wrapper = tmp / "serve.py"
    wrapper.write_text(WRAPPER)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    server = subprocess.Popen(
        ["heaptrack", "-o", str(out), args.python, str(wrapper), str(REPO / "bench"),
         "--serve", args.server, "--port", str(port), "--cert", cert, "--key", key,
         "--tree", str(REPO), "--max-servers", str(args.count + 100)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    opened = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    sys.exit("the server did not start")
                time.sleep(0.2)
        for source, count in (("127.0.0.1", 50), ("127.0.0.2", args.count)):
            client = subprocess.Popen([sys.executable, "-c", CLIENT, "127.0.0.1", str(port),
                                       str(count), source],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            opened.append(client)
            assert client.stdout is not None
            if client.stdout.readline().strip() != "READY":
                sys.exit("a client failed")
            if source == "127.0.0.1":  # the warm-up connections close again
                assert client.stdin is not None
                client.stdin.close()
                client.wait(60)
                opened.remove(client)
        time.sleep(2.0)
        for pid in descendants(server.pid):
            if _is_python(pid):
                _kill(pid, signal.SIGUSR1)
        server.wait(300)
    finally:
        for client in opened:
            assert client.stdin is not None
            client.stdin.close()
            client.wait(60)
        if server.poll() is None:  # it failed on the way: no report, but nothing left running
            for pid in descendants(server.pid):
                _kill(pid, signal.SIGKILL)
            stop_process(server, 5)
    data = sorted(tmp.glob("heap*"))
    if not data:
        sys.exit("heaptrack wrote no data")
    return data[0]


def _kill(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.kill(pid, sig)


def _is_python(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/comm").read_text().startswith("python")
    except OSError:
        return False


def live_stacks(data: Path) -> list[tuple[list[str], int]]:
    """(frames, bytes still allocated at the end) per call stack, outermost frame first."""
    stacks = data.with_suffix(".stacks")
    subprocess.run(["heaptrack_print", "-f", str(data), "-p", "0", "-a", "0", "-T", "0",
                    "-l", "0", "--flamegraph-cost-type", "leaked", "-F", str(stacks)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    found = []
    for line in stacks.read_text().splitlines():
        stack, _, cost = line.rpartition(" ")
        if int(cost) > 0:
            found.append(([re.sub(r" \(.*\)$", "", f) for f in stack.split(";")], int(cost)))
    return found


def report(stacks: list[tuple[list[str], int]], count: int, top: int) -> None:
    kinds: collections.Counter[str] = collections.Counter()
    paths: collections.Counter[str] = collections.Counter()
    for frames, cost in stacks:
        calls = [i for i, f in enumerate(frames) if f.startswith("_cffi_f_")]
        if calls:
            kinds["OpenSSL (under pyOpenSSL's calls)"] += cost
            inner = [f for f in frames[calls[-1]:] if f and f not in _ALLOCATORS]
            paths[" > ".join(inner[-3:])] += cost
        elif any("copy_stack_to_heap" in f for f in frames):
            kinds["greenlets' saved C stacks"] += cost
        else:
            kinds["other"] += cost
    other = kinds.pop("other", 0)
    print(f"Still allocated with {count} idle connections open (heaptrack), per connection:\n")
    print("| part | bytes per connection |\n|---|---:|")
    for kind, cost in kinds.most_common():
        print(f"| {kind} | {cost / count:,.0f} |")
    print(f"\nThe rest (the interpreter, imports, start-up; not per connection): "
          f"{other / 1024:,.0f} kB in all")
    print(f"\nOpenSSL, by call path (the {top} largest):\n")
    print("| OpenSSL call path (innermost last) | bytes per connection |\n|---|---:|")
    for path, cost in paths.most_common(top):
        print(f"| {path} | {cost / count:,.0f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--server", default="gnetserver",
                        help="a side_by_side.py server: gnetserver (default), bare, bare-rb, "
                        "bare-idle, stdlib")
    parser.add_argument("--count", type=int, default=2000, help="idle connections (2000)")
    parser.add_argument("--python", default=sys.executable, help="the server's interpreter")
    parser.add_argument("--top", type=int, default=20, help="OpenSSL paths listed (20)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gnetbench-heap-") as tmp:
        report(live_stacks(run_server(args, Path(tmp))), args.count, args.top)


if __name__ == "__main__":
    main()
