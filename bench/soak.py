"""A bounded soak of gnetserver: a mixed load for ``--duration``, the server sampled every 10 s.

Run it from the checkout (Linux only: it reads ``/proc``)::

    python bench/soak.py                       # 10 minutes
    python bench/soak.py --duration 1800 --out /tmp/soak30

The server is :class:`SoakServer` (below) in a subprocess (``soak.py --serve``): a TLS line
echo on port A, a TLS port B that requires a client certificate (``SSL_verify_mode`` 3), and a
plain control port on which a connection sends one command and reads one answer line:

* ``STATUS``: ``greenlets N`` -- the live greenlets of the server process (``gc.collect()``,
  then every ``greenlet.greenlet`` object that ``gc.get_objects()`` holds and that is not dead:
  the hub, the main greenlet, the acceptors, every connection; the control connection itself
  counts, in every sample alike);
* ``RELOAD``: calls ``reload_tls()`` and answers ``reloaded True`` (or ``False``).

RSS and open descriptors come from ``/proc/PID/status`` and ``/proc/PID/fd``, CPU from
``/proc/PID/stat`` (utime + stime between two samples over the wall time between them).

The load runs in cycles of ``--cycle`` (60) seconds: for the first three quarters of a cycle,
``--keepalive`` (4) clients each do 20 echo round trips per connection, ``--handshakers`` (2)
clients a full handshake and one echo per connection (good requests: every answer is checked),
and one client each keeps opening stalled connections (silent before the handshake, or silent
after it), garbage connections (random bytes instead of a ClientHello) and client-certificate
failures (port B without a certificate). A quarter into each cycle the control port asks for
``reload_tls()``, half way the server gets a HUP (it re-executes itself in place, handing its
listening sockets on; a drainer process finishes the connections in flight). In the last
quarter the load rests; before the cycle ends, the server's descriptors and greenlets must be
back to their baseline (taken before the load started).

Pass criteria, printed at the end (exit status 0 when all hold):

* RSS growth under 5 %: the highest RSS sample of the last cycle against the highest of the
  second (the first cycle warms up). Each HUP re-executes the server, so a leak shows as growth
  within a cycle and from cycle to cycle in the plot; ``--hup 0`` keeps one image for the whole
  run (then the comparison spans the run);
* descriptors and greenlets back to baseline at the end of every cycle;
* 0 failed good requests (stalled, garbage and certificate-failure connections are expected to
  be cut; one that is not cut is counted as ``not_cut``, reported, and fails the run).

Outputs: ``OUT.csv`` (one row per sample) and ``OUT.png`` (matplotlib: RSS, descriptors,
greenlets, CPU over time, the HUPs marked).
"""

from __future__ import annotations

import argparse
import csv
import gc
import os
import random
import signal
import socket
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servers import REPO, ServerProcess, free_ports, positive, stop_process, write_certificate

SAMPLE_SECONDS = 10.0
ROUNDS_PER_CONNECTION = 20
CLIENT_TIMEOUT = 15.0  # longer than any server-side cut, so a cut is seen as a cut


# -- inside the server subprocess ---------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """Run the soak server until terminated (HUP: re-executed in place, same arguments)."""
    import greenlet

    from gnetserver import Client, GServer

    class SoakServer(GServer):
        """A TLS line echo on every TLS port; the tcp port is the control port."""

        def process_request(self, client: Client) -> None:
            if client.proto != "tcp":
                for line in client.makefile("rb"):
                    client.sendall(line)
                return
            command = client.readline().strip()
            if command == b"STATUS":
                gc.collect()
                live = sum(1 for obj in gc.get_objects()
                           if isinstance(obj, greenlet.greenlet) and not obj.dead)
                client.sendall(f"greenlets {live}\n".encode())
            elif command == b"RELOAD":
                client.sendall(f"reloaded {self.reload_tls()}\n".encode())

    tls = {"SSL_cert_file": args.cert, "SSL_key_file": args.key}
    ports = [{"host": "127.0.0.1", "port": args.ports[0], "proto": "ssl", **tls},
             {"host": "127.0.0.1", "port": args.ports[1], "proto": "ssl", **tls,
              "SSL_verify_mode": 3, "SSL_ca_file": args.cert},
             {"host": "127.0.0.1", "port": args.ports[2], "proto": "tcp"}]
    SoakServer(commandline=[], port=ports, max_servers=200, max_handshakes=100,
               timeout_handshake=3, timeout_idle=5, graceful_timeout=10,
               log_level=2).run()


# -- the driver ---------------------------------------------------------------------------------


class SoakProcess(ServerProcess):
    """The soak server subprocess; its facts from /proc (``rss_kb`` and ``cpu_seconds`` are
    :class:`ServerProcess`'s) and its control port."""

    def __init__(self, cert: str, key: str, ports: list[int]) -> None:  # not echo_tls.py's
        self.kind = "soak"
        self.tree = REPO
        self.ports = ports
        self._spawn([sys.executable, str(Path(__file__).resolve()), "--serve", "--cert", cert,
                     "--key", key, "--ports", *map(str, ports)], REPO)

    def wait_ready(self, timeout: float = 30.0) -> tuple[str, int]:
        """Block until the control port answers; raise with the server's stderr if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.command("STATUS")
                return ("127.0.0.1", self.ports[2])
            except OSError:
                if self.proc.poll() is not None:
                    break
                time.sleep(0.2)
        raise RuntimeError("the soak server did not start:\n" + "\n".join(self.lines))

    def command(self, text: str) -> str:
        """One control connection: send ``text``, return the answer line."""
        with socket.create_connection(("127.0.0.1", self.ports[2]), timeout=10) as sock:
            sock.sendall(text.encode() + b"\n")
            return sock.makefile("r").readline().strip()

    def greenlets(self) -> int:
        return int(self.command("STATUS").split()[1])

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        """TERM, with time for the drain (graceful_timeout 10) before a KILL."""
        stop_process(self.proc, 15)
        self._reader.join(5)


@dataclass
class Counters:
    """What the load did (threads add under ``lock``)."""

    good: int = 0
    failed: int = 0
    handshakes: int = 0
    stalled: int = 0
    garbage: int = 0
    certfail: int = 0
    not_cut: int = 0
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, name: str, count: int = 1, why: str | None = None) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + count)
            if why is not None and len(self.failures) < 50:
                self.failures.append(f"{time.strftime('%H:%M:%S')} {name}: {why}")


class Load:
    """The client threads (stdlib ssl, blocking sockets with timeouts), on while ``on`` is
    set, stopping for good at ``stop``."""

    def __init__(self, server: SoakProcess, args: argparse.Namespace, cert: str) -> None:
        self.server = server
        self.args = args
        self.counters = Counters()
        self.on = threading.Event()
        self.stop = threading.Event()
        self.context = ssl.create_default_context(cafile=cert)
        self.context.check_hostname = False  # the certificate names localhost and 127.0.0.1
        self.threads: list[threading.Thread] = []
        kinds = ([self.keepalive] * args.keepalive + [self.handshake] * args.handshakers
                 + [self.stalled, self.stalled_after_handshake, self.garbage, self.certfail])
        for kind in kinds:
            thread = threading.Thread(target=self._loop, args=(kind,), daemon=True)
            self.threads.append(thread)

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        self.on.set()
        for thread in self.threads:
            thread.join(CLIENT_TIMEOUT + 5)

    def _loop(self, kind: Any) -> None:
        while not self.stop.is_set():
            self.on.wait()
            if self.stop.is_set():
                return
            kind()
            time.sleep(self.args.pause)

    def _connect(self, port: int) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)

    def _tls(self, port: int) -> ssl.SSLSocket:
        raw = self._connect(port)
        try:
            return self.context.wrap_socket(raw, server_hostname="localhost")
        except BaseException:
            raw.close()
            raise

    def _echo(self, tls: ssl.SSLSocket, reader: Any) -> None:
        line = f"{random.getrandbits(64):016x}\n".encode()
        tls.sendall(line)
        answer = reader.readline()
        if answer != line:
            raise OSError(f"echo mismatch: {answer[:40]!r}")

    def keepalive(self) -> None:
        done = 0
        try:
            with self._tls(self.server.ports[0]) as tls, tls.makefile("rb") as reader:
                for _ in range(ROUNDS_PER_CONNECTION):
                    self._echo(tls, reader)
                    done += 1
        except OSError as exc:
            self.counters.add("failed", why=f"keep-alive after {done}: {exc!r}")
        self.counters.add("good", done)

    def handshake(self) -> None:
        try:
            with self._tls(self.server.ports[0]) as tls, tls.makefile("rb") as reader:
                self._echo(tls, reader)
        except OSError as exc:
            self.counters.add("failed", why=f"handshake: {exc!r}")
            return
        self.counters.add("good")
        self.counters.add("handshakes")

    def _expect_cut(self, sock: socket.socket, name: str) -> None:
        """Wait for the server to close ``sock`` (EOF or reset) within CLIENT_TIMEOUT."""
        try:
            while sock.recv(4096):
                pass
            self.counters.add(name)
        except TimeoutError:
            self.counters.add("not_cut", why=f"{name}: not cut within {CLIENT_TIMEOUT} s")
        except (OSError, ssl.SSLError):
            self.counters.add(name)
        finally:
            sock.close()

    def stalled(self) -> None:
        self._expect_cut(self._connect(self.server.ports[0]), "stalled")

    def stalled_after_handshake(self) -> None:
        try:
            tls = self._tls(self.server.ports[0])
        except OSError as exc:
            self.counters.add("failed", why=f"stalled handshake: {exc!r}")
            return
        self._expect_cut(tls, "stalled")

    def garbage(self) -> None:
        sock = self._connect(self.server.ports[0])
        try:
            sock.sendall(os.urandom(random.randrange(1, 2048)))
        except OSError:
            pass
        self._expect_cut(sock, "garbage")

    def certfail(self) -> None:
        try:
            with self._tls(self.server.ports[1]) as tls:
                tls.sendall(b"hello\n")
                if tls.recv(64):
                    self.counters.add("not_cut", why="port B answered a client without a "
                                                     "certificate")
                    return
        except (OSError, ssl.SSLError):
            pass
        self.counters.add("certfail")


@dataclass
class Sample:
    t: float
    phase: str
    rss_kb: int
    fds: int
    greenlets: int
    cpu_pct: float


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="soak-")
    cert, key = write_certificate(Path(folder), "ecdsa")
    server = SoakProcess(cert, key, free_ports(3))
    samples: list[Sample] = []
    checks: list[str] = []  # failed end-of-cycle checks
    hups: list[float] = []
    load: Load | None = None
    try:
        server.wait_ready()
        time.sleep(1)
        base_fds, base_greenlets = server.fds(), server.greenlets()
        print(f"soak: server pid {server.pid}, baseline {base_fds} fds, {base_greenlets} "
              f"greenlets, {server.rss_kb()} kB RSS; {args.duration:.0f} s in cycles of "
              f"{args.cycle:.0f} s", flush=True)
        load = Load(server, args, cert)
        load.start()
        start = time.monotonic()
        last_cpu, last_at = server.cpu_seconds(), start
        next_sample = start + SAMPLE_SECONDS
        cycle = 0
        while (cycle_start := start + cycle * args.cycle) < start + args.duration:
            events = [(cycle_start, "load"), (cycle_start + args.cycle * 0.25, "reload"),
                      (cycle_start + args.cycle * 0.5, "hup"),
                      (cycle_start + args.cycle * 0.75, "rest"),
                      (cycle_start + args.cycle * 0.9, "check")]
            phase = "load"
            for when, event in events:
                while (now := time.monotonic()) < when:
                    if now >= next_sample:
                        cpu, at = server.cpu_seconds(), now
                        samples.append(Sample(now - start, phase, server.rss_kb(), server.fds(),
                                              server.greenlets(),
                                              100 * (cpu - last_cpu) / (at - last_at)))
                        last_cpu, last_at = cpu, at
                        next_sample += SAMPLE_SECONDS
                        s = samples[-1]
                        print(f"  t={s.t:6.0f}s {s.phase:5} rss={s.rss_kb} kB fds={s.fds} "
                              f"greenlets={s.greenlets} cpu={s.cpu_pct:.0f}% "
                              f"good={load.counters.good} failed={load.counters.failed}",
                              flush=True)
                    time.sleep(min(0.2, max(0.0, when - now)))
                if event == "load":
                    load.on.set()
                elif event == "reload":
                    answer = server.command("RELOAD")
                    if answer != "reloaded True":
                        checks.append(f"cycle {cycle}: reload_tls answered {answer!r}")
                elif event == "hup" and args.hup:
                    os.kill(server.pid, signal.SIGHUP)
                    hups.append(time.monotonic() - start)
                elif event == "rest":
                    load.on.clear()
                    phase = "rest"
                elif event == "check":
                    checks.extend(back_to_baseline(server, cycle, base_fds, base_greenlets,
                                                   cycle_start + args.cycle))
            cycle += 1
        load.join()
    finally:
        if load is not None:
            load.stop.set()
            load.on.set()
        server.stop()
    write_csv(out.with_suffix(".csv"), samples)
    plotted = plot(out.with_suffix(".png"), samples, hups)
    return verdict(args, samples, checks, load, server, plotted)


def back_to_baseline(server: SoakProcess, cycle: int, fds: int, greenlets: int,
                     until: float) -> list[str]:
    """Poll until ``until`` for the server's descriptors and greenlets to be back at the
    baseline; the failure, if they are not."""
    seen = (0, 0)
    while True:
        seen = (server.fds(), server.greenlets())
        if seen == (fds, greenlets):
            return []
        if time.monotonic() >= until:
            return [f"cycle {cycle}: {seen[0]} fds (baseline {fds}), {seen[1]} greenlets "
                    f"(baseline {greenlets})"]
        time.sleep(1)


def write_csv(path: Path, samples: list[Sample]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["t_s", "phase", "rss_kb", "fds", "greenlets", "cpu_pct"])
        for s in samples:
            writer.writerow([f"{s.t:.1f}", s.phase, s.rss_kb, s.fds, s.greenlets,
                             f"{s.cpu_pct:.1f}"])


def plot(path: Path, samples: list[Sample], hups: list[float]) -> bool:
    """The PNG plot; False (said on stderr) when matplotlib is missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("soak: no matplotlib (pip install '.[bench]'): no plot", file=sys.stderr)
        return False
    t = [s.t / 60 for s in samples]
    series = [("RSS (MiB)", [s.rss_kb / 1024 for s in samples]),
              ("open descriptors", [s.fds for s in samples]),
              ("greenlets", [s.greenlets for s in samples]),
              ("CPU (%)", [s.cpu_pct for s in samples])]
    figure, axes = plt.subplots(len(series), 1, sharex=True, figsize=(9, 9))
    for axis, (label, values) in zip(axes, series, strict=True):
        axis.plot(t, values, marker=".")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        for hup in hups:
            axis.axvline(hup / 60, color="grey", linewidth=0.5)
    axes[-1].set_xlabel("minutes (grey lines: HUP)")
    figure.suptitle("gnetserver soak")
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return True


def verdict(args: argparse.Namespace, samples: list[Sample], checks: list[str],
            load: Load | None, server: SoakProcess, plotted: bool) -> int:
    counters = load.counters if load is not None else Counters()
    cycle = args.cycle
    second = [s.rss_kb for s in samples if cycle <= s.t < 2 * cycle]
    last_start = (max((s.t for s in samples), default=0) // cycle) * cycle
    last = [s.rss_kb for s in samples if s.t >= last_start and s.t >= 2 * cycle]
    growth = (max(last) / max(second) - 1) * 100 if second and last else float("nan")
    print(f"\nsoak: {len(samples)} samples; good requests {counters.good} "
          f"({counters.handshakes} full handshakes), failed good {counters.failed}; cut as "
          f"expected: stalled {counters.stalled}, garbage {counters.garbage}, certificate "
          f"failures {counters.certfail}; not cut {counters.not_cut}")
    for line in counters.failures:
        print("  " + line)
    ok_rss = growth == growth and growth < 5.0  # NaN (too short a run) is no pass
    print(f"[{'PASS' if ok_rss else 'FAIL'}] RSS growth, last cycle against the second: "
          f"{growth:.1f} % (< 5 %)")
    print(f"[{'PASS' if not checks else 'FAIL'}] descriptors and greenlets back to baseline "
          f"after every cycle" + "".join(f"\n  {c}" for c in checks))
    ok_good = counters.failed == 0 and counters.not_cut == 0 and counters.good > 0
    print(f"[{'PASS' if ok_good else 'FAIL'}] 0 failed good requests, every bad one cut")
    print(f"soak: wrote {Path(args.out).with_suffix('.csv')}"
          + (f" and {Path(args.out).with_suffix('.png')}" if plotted else ""))
    ready = sum("Server ready" in line for line in server.lines)
    print(f"soak: the server started {ready} time(s) (1 + each HUP's re-exec; "
          f"{len(server.lines)} stderr lines)")
    trouble = [line for line in server.lines if "Error" in line or "Traceback" in line]
    for line in trouble[:20]:
        print("  server: " + line)
    return 0 if ok_rss and not checks and ok_good else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=600.0, help="seconds (default 600)")
    parser.add_argument("--cycle", type=float, default=60.0,
                        help="seconds per cycle: load, reload_tls, HUP, rest (default 60)")
    parser.add_argument("--keepalive", type=positive, default=4,
                        help="keep-alive clients (default 4)")
    parser.add_argument("--handshakers", type=positive, default=2,
                        help="full-handshake clients (default 2)")
    parser.add_argument("--pause", type=float, default=0.05,
                        help="seconds each client rests between connections (default 0.05)")
    parser.add_argument("--hup", type=int, default=1, help="1: HUP every cycle (default); 0: no")
    parser.add_argument("--out", default="soak", help="output path without suffix")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cert", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--ports", type=int, nargs=3, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
