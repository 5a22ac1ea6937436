"""PreFork benchmark: workers = 1 against workers = 2 (and Single), with wrk and h2load.

Run from the repository root (about two minutes with the defaults; Linux only: it pins CPUs and
reads ``/proc``; needs ``wrk`` and ``h2load``, Debian packages ``wrk`` and
``nghttp2-client``)::

    python bench/prefork.py                 # 3 rounds: 1, 2, Single / Single, 2, 1 / 1, 2, Single
    python bench/prefork.py --rounds 1 --duration 2 --handshakes 1000   # a quick look
    python bench/prefork.py --help

The server under test is bench/httpok.py's ``HttpOk``, a fixed ``HTTP/1.1 200`` answer over TLS
with an ECDSA P-256 certificate, run in a subprocess three times at once: ``server_type
PreFork`` with ``workers`` 1, with ``workers`` 2, and ``Single`` as the reference. They are
measured in turn by external load generators, each run bounded in time and count:

* **keep-alive requests/s**: ``wrk -t1 -c50 -d5s https://127.0.0.1:PORT/`` (50 persistent
  connections, one request in flight on each);
* **full TLS handshakes/s**: ``h2load --h1 -n 4000 -c 16 -t1 -m 1 -H 'Connection: close'``:
  the server answers ``Connection: close`` and closes, and h2load opens a new connection for
  each request; h2load offers no session from an earlier connection, so each is a full
  handshake. The server counts its connections and resumed sessions (bench/httpok.py) and the
  table shows both: connections must equal requests, resumed must be 0.

For each: the server's CPU per operation, utime + stime from ``/proc/PID/stat`` of the server
process, its reaped children and its living children (the PreFork workers) summed, which is
the robust figure; the rate depends on the load generator and the machine's other load too.

CPUs: every server process may run on ``--server-cpus`` (0,1: both cores, so that 2 workers
can use them) and the load generator is pinned to ``--client-cpu`` (1). On a 2-core machine
the server with 2 workers therefore shares core 1 with the load generator, which limits the
throughput ratio; the table shows the CPU the load generator used, and bench/README.md says
what that means for the goals.

The table prints as Markdown: medians, then ratios of medians with their spread in brackets
(the lowest and highest per-round ratio, round r against round r).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # servers, httpok beside this file

from servers import REPO, TICKS, WatchedStderr, positive, stop_process, write_certificate  # noqa: E402

#: The configurations measured, in the order of the first round: (label, server_type, workers).
CONFIGS = (("workers=1", "PreFork", 1), ("workers=2", "PreFork", 2), ("Single", "Single", 0))
START_TIMEOUT = 30.0

#: Ratio columns: (numerator, denominator) labels.
RATIOS = (("workers=2", "workers=1"), ("workers=1", "Single"), ("workers=2", "Single"))
GOALS = {
    "keep-alive requests/s": "2/1 ≥ 1.6",
    "full handshakes/s, ECDSA P-256": "2/1 ≥ 1.6",
    "server CPU per request (µs)": "x/Single ≤ 1.10",
    "server CPU per handshake (µs)": "x/Single ≤ 1.10",
}


# -- inside a server subprocess ----------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """Run HttpOk on 127.0.0.1, kernel-chosen port, until terminated."""
    import gevent
    import OpenSSL
    from httpok import HttpOk, no_resumption
    from OpenSSL import SSL

    import gnetserver

    package = Path(gnetserver.__file__ or "?").resolve()
    if not package.is_relative_to(REPO):
        sys.exit(f"bench: gnetserver came from {package}, not from {REPO}")
    if args.cpus:
        os.sched_setaffinity(0, parse_cpus(args.cpus))  # inherited by the workers
    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    print(f"bench-version: gevent {gevent.__version__}, pyOpenSSL {OpenSSL.__version__} over "
          f"{openssl}; gnetserver from {package}", file=sys.stderr, flush=True)
    options: dict[str, object] = {"server_type": args.server_type}
    if args.server_type == "PreFork":
        options["workers"] = args.workers
    if not args.resumption:
        options["SSL_create_ctx_callback"] = no_resumption
    HttpOk(stats_dir=args.stats, port="127.0.0.1:0/ssl", SSL_cert_file=args.cert,
           SSL_key_file=args.key, max_servers=4096, **options).run()


# -- seen from the benchmark -------------------------------------------------------------------


def parse_cpus(text: str) -> set[int]:
    """"0,1" -> {0, 1}."""
    return {int(part) for part in text.split(",") if part.strip()}


def _proc_times(pid: int) -> tuple[float, float]:
    """(utime + stime, cutime + cstime) of one process in seconds; (0, 0) once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0.0
    own = (int(fields[11]) + int(fields[12])) / TICKS  # stat fields 14, 15
    reaped = (int(fields[13]) + int(fields[14])) / TICKS  # 16, 17: children waited for
    return own, reaped


class Server(WatchedStderr):
    """One HttpOk subprocess of one configuration; its CPU and its workers from /proc."""

    def __init__(self, label: str, server_type: str, workers: int, cert: str, key: str,
                 cpus: str, stats: Path, resumption: bool = False) -> None:
        self.label, self.server_type, self.workers = label, server_type, workers
        self.stats = stats
        stats.mkdir()
        self._spawn([sys.executable, str(Path(__file__).resolve()), "--serve", "--server-type",
                     server_type, "--workers", str(workers), "--cert", cert, "--key", key,
                     "--server-cpus", cpus, "--stats", str(stats),
                     *(["--resumption"] if resumption else [])], REPO)

    def wait_ready(self) -> tuple[str, int]:
        """Block until the server listens and has its workers; raise with its stderr if not."""
        self._ready.wait(START_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while self.address is not None and len(self.children()) < self.workers:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                break
            time.sleep(0.05)
        if self.address is None or len(self.children()) < self.workers:
            self.stop()
            raise RuntimeError(f"{self.label} server did not start:\n" + "\n".join(self.lines))
        return self.address

    def children(self) -> list[int]:
        """The server process's children now (a PreFork parent's workers)."""
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(pid) for pid in text.split()]

    def cpu(self) -> tuple[float, dict[int, float]]:
        """CPU seconds of the whole server so far (the process, its reaped children, its
        living children), and of each living child."""
        own, reaped = _proc_times(self.pid)
        per_child = {pid: sum(_proc_times(pid)) for pid in self.children()}
        return own + reaped + sum(per_child.values()), per_child

    def connections(self) -> tuple[int, int]:
        """(full handshakes, resumed sessions) counted by the server so far."""
        try:
            data = (self.stats / "connections").read_bytes()
        except FileNotFoundError:
            return 0, 0
        return data.count(b"F"), data.count(b"R")

    def stop(self) -> None:
        """TERM (a PreFork parent passes it to its workers), then KILL the rest."""
        workers = self.children()
        stop_process(self.proc, 10)
        for pid in workers:  # normally gone already (TERM from the parent, or PDEATHSIG)
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self._reader.join(5)


@dataclass
class Run:
    """One load-generator run against one server: operations, time, CPU on both sides."""

    ops: int
    seconds: float  # as the load generator reports it (its measuring time)
    server_cpu: float
    client_cpu: float
    busiest_share: float  # the busiest worker's share of the workers' CPU (%), 100 if one
    machine: tuple[float, float]  # the machine's idle time (% of all CPUs), busy CPU seconds
    output: str
    errors: str = ""
    handshakes: tuple[int, int] = (0, 0)  # (full, resumed) counted by the server

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds else 0.0

    @property
    def cpu_per_op_us(self) -> float:
        return self.server_cpu / self.ops * 1e6 if self.ops else float("nan")


def machine_times() -> list[int]:
    """The whole machine's CPU times (ticks) from /proc/stat: user, nice, system, idle,
    iowait, irq, softirq, steal."""
    with open("/proc/stat") as f:
        return [int(v) for v in f.readline().split()[1:9]]


def idle_and_busy(before: list[int], after: list[int]) -> tuple[float, float]:
    """The machine's idle time between two samples (% of all its CPUs), and its busy CPU
    seconds (every process, interrupts, stolen time)."""
    spent = [b - a for a, b in zip(before, after, strict=True)]
    idle = spent[3] + spent[4]
    return 100 * idle / (sum(spent) or 1), (sum(spent) - idle) / TICKS


def children_cpu() -> float:
    """CPU seconds of this process's reaped children (the load generators run so far)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Driven:
    """What :func:`drive` saw around one load-generator run."""

    output: str
    server_cpu: float
    client_cpu: float
    busiest_share: float
    machine: tuple[float, float]
    handshakes: tuple[int, int]


def drive(server: Server, command: list[str], timeout: float) -> Driven:
    """Run one load generator against ``server``; returns its output and the CPU seconds of
    the server and of the load generator, the busiest worker's share, the machine's idle time
    and busy CPU, the handshakes seen."""
    before_machine = machine_times()
    before_cpu, before_children = server.cpu()
    before_hs = server.connections()
    before_client = children_cpu()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              check=False)  # the child is killed on timeout
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        output = f"TIMEOUT after {timeout} s: {exc.stdout!r}"
    after_cpu, after_children = server.cpu()
    after_machine = machine_times()
    after_hs = server.connections()
    client = children_cpu() - before_client
    spent = [after_children[pid] - before_children.get(pid, 0.0) for pid in after_children]
    share = 100 * max(spent) / sum(spent) if len(spent) > 1 and sum(spent) else 100.0
    if set(after_children) != set(before_children):
        output += f"\nWORKERS CHANGED: {sorted(before_children)} -> {sorted(after_children)}"
    handshakes = (after_hs[0] - before_hs[0], after_hs[1] - before_hs[1])
    return Driven(output, after_cpu - before_cpu, client, share,
                  idle_and_busy(before_machine, after_machine), handshakes)


def _seconds(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[unit]


def run_wrk(server: Server, args: argparse.Namespace) -> Run:
    """Keep-alive requests: ``wrk -t1 -cN -dDs``, pinned to the client CPU."""
    host, port = server.address or ("?", 0)
    command = [*client_pin(args), "wrk", "-t1", f"-c{args.connections}", f"-d{args.duration}s",
               f"https://{host}:{port}/"]
    seen = drive(server, command, args.duration + args.timeout)
    output = seen.output
    match = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", output)
    ops, seconds = (int(match[1]), _seconds(match[2], match[3])) if match else (0, 0.0)
    errors = []
    if sock := re.search(r"Socket errors: (.*)", output):
        errors.append(f"socket errors: {sock[1]}")
    if bad := re.search(r"Non-2xx or 3xx responses: (\d+)", output):
        errors.append(f"non-2xx: {bad[1]}")
    if not match:
        errors.append("no result: " + output.strip()[-300:])
    return Run(ops, seconds, seen.server_cpu, seen.client_cpu, seen.busiest_share,
               seen.machine, output, "; ".join(errors), seen.handshakes)


def run_h2load(server: Server, args: argparse.Namespace, count: int) -> Run:
    """Full handshakes: ``h2load --h1 -n N -c C -t1 -m1 -H 'Connection: close'``: a new TLS
    connection for every request (the server closes after each answer)."""
    host, port = server.address or ("?", 0)
    command = [*client_pin(args), "h2load", "--h1", "-n", str(count), "-c",
               str(args.concurrency), "-t1", "-m1", "-H", "Connection: close",
               f"https://{host}:{port}/"]
    seen = drive(server, command, args.timeout)
    output, hs = seen.output, seen.handshakes
    finished = re.search(r"finished in ([\d.]+)(us|ms|s|m),", output)
    requests = re.search(r"requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, "
                         r"(\d+) failed, (\d+) errored, (\d+) timeout", output)
    errors = []
    if not finished or not requests:
        errors.append("no result: " + output.strip()[-300:])
        return Run(0, 0.0, seen.server_cpu, seen.client_cpu, seen.busiest_share, seen.machine,
                   output, "; ".join(errors), hs)
    ops = int(requests[2])
    if ops != int(requests[1]):
        errors.append(f"{requests[0]}")
    if hs[0] + hs[1] != ops:
        errors.append(f"the server saw {hs[0] + hs[1]} connections for {ops} requests")
    if hs[1] and not args.resumption:
        errors.append(f"{hs[1]} resumed sessions")
    return Run(ops, _seconds(finished[1], finished[2]), seen.server_cpu, seen.client_cpu,
               seen.busiest_share, seen.machine, output, "; ".join(errors), hs)


def client_pin(args: argparse.Namespace) -> list[str]:
    return [] if args.client_cpu < 0 else ["taskset", "-c", str(args.client_cpu)]


class Results:
    """Every sample of every measure, per configuration: {measure: {label: [values]}}."""

    def __init__(self) -> None:
        self.samples: dict[str, dict[str, list[float]]] = {}
        self.versions: dict[str, str] = {}
        self.notes: list[str] = []
        self.tls = "?"

    def add(self, measure: str, label: str, value: float) -> None:
        self.samples.setdefault(measure, {}).setdefault(label, []).append(value)

    def median(self, measure: str, label: str) -> float | None:
        values = self.samples.get(measure, {}).get(label)
        return statistics.median(values) if values else None

    def ratio(self, measure: str, top_label: str, bottom_label: str) -> str:
        """Ratio of the medians, then the lowest and highest per-round ratio."""
        top, bottom = self.median(measure, top_label), self.median(measure, bottom_label)
        if top is None or not bottom:
            return "-"
        text = f"{top / bottom:.2f}"
        tops, bottoms = self.samples[measure][top_label], self.samples[measure][bottom_label]
        if len(tops) != len(bottoms):
            return text + " (?)"
        rounds = [a / b for a, b in zip(tops, bottoms, strict=True) if b]
        if len(rounds) > 1:
            text += f" ({min(rounds):.2f}-{max(rounds):.2f})"
        return text


def record(results: Results, server: Server, kind: str, run: Run, resumption: bool) -> None:
    """The samples of one run (kind: "keep-alive" or "handshakes")."""
    label = server.label
    full = "TLS connections (resumption allowed)" if resumption else "full handshakes"
    if kind == "keep-alive":
        results.add("keep-alive requests/s", label, run.rate)
        results.add("server CPU per request (µs)", label, run.cpu_per_op_us)
    else:
        results.add(f"{full}/s, ECDSA P-256", label, run.rate)
        results.add("server CPU per handshake (µs)", label, run.cpu_per_op_us)
        results.add("full handshakes seen by the server", label, run.handshakes[0])
        results.add("resumed sessions seen by the server", label, run.handshakes[1])
        if match := re.search(r"TLS Protocol: (\S+)\s+Cipher: (\S+)\s+Server Temp Key: (.*)",
                              run.output):
            results.tls = f"{match[1]} {match[2]}, key exchange {match[3].strip()}"
    seconds = run.seconds or 1.0
    results.add(f"server CPU busy, {kind} (% of a core)", label, 100 * run.server_cpu / seconds)
    results.add(f"load generator CPU busy, {kind} (% of a core)", label,
                100 * run.client_cpu / seconds)
    results.add(f"machine idle, {kind} (% of all CPUs)", label, run.machine[0])
    other = run.machine[1] - run.server_cpu - run.client_cpu
    results.add(f"other CPU use on the machine, {kind} (% of a core)", label,
                100 * other / seconds)
    if server.workers > 1:
        results.add(f"busiest worker's share of the server CPU, {kind} (%)", label,
                    run.busiest_share)
    if run.errors:
        results.notes.append(f"{label} {kind}: {run.errors}")


def run_benchmark(args: argparse.Namespace) -> Results:
    """Start the three servers, measure them in alternating order, stop them."""
    results = Results()
    with tempfile.TemporaryDirectory(prefix="gnetbench-prefork-") as tmp:
        cert, key = write_certificate(Path(tmp), "ecdsa")
        servers = [Server(label, server_type, workers, cert, key, args.server_cpus,
                          Path(tmp) / f"stats-{index}", args.resumption)
                   for index, (label, server_type, workers) in enumerate(CONFIGS)]
        try:
            for server in servers:
                server.wait_ready()
                results.versions[server.label] = server.version
                run_h2load(server, args, 16 * args.concurrency)  # warm-up, not recorded
            for round_number in range(args.rounds):
                order = servers if round_number % 2 == 0 else servers[::-1]
                for server in order:
                    record(results, server, "keep-alive", run_wrk(server, args), args.resumption)
                    record(results, server, "handshakes",
                           run_h2load(server, args, args.handshakes), args.resumption)
                    print(f"  round {round_number + 1}/{args.rounds} {server.label}: ok",
                          file=sys.stderr, flush=True)
        finally:
            for server in servers:
                server.stop()
    return results


def tool_versions() -> str:
    """wrk's and h2load's version lines."""
    found = []
    for command in (["wrk", "-v"], ["h2load", "--version"]):
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=10,
                                  check=False)
        except OSError:
            continue
        text = (done.stdout + done.stderr).strip().splitlines()
        found.append(text[0].split(" Copyright")[0] if text else command[0])
    return "; ".join(found)


def format_table(results: Results, args: argparse.Namespace) -> str:
    """The run's conditions, then a Markdown table of medians, ratios and goals."""
    labels = [label for label, _, _ in CONFIGS]
    lines = [
        f"{' vs '.join(labels)}, one run: {args.rounds} round(s), medians; keep-alive "
        f"wrk -t1 -c{args.connections} -d{args.duration}s; handshakes h2load --h1 -n "
        f"{args.handshakes} -c {args.concurrency} -t1 -m1 -H 'Connection: close'.",
        f"Server CPUs: {args.server_cpus or 'any'}; load generator CPU: "
        f"{args.client_cpu if args.client_cpu >= 0 else 'any'}. Python {sys.version.split()[0]}; "
        f"{tool_versions()}.",
        f"Server: {results.versions.get(labels[0], '?')}",
        f"Negotiated: {results.tls}",
        "",
        f"| measure | {' | '.join(labels)} | "
        + " | ".join(f"{a.split('=')[-1]}/{b.split('=')[-1]} (spread)" for a, b in RATIOS)
        + " | goal |",
        "|---|" + "---:|" * (len(labels) + len(RATIOS) + 1),
    ]
    for measure, by_label in results.samples.items():
        medians = " | ".join(_num(results.median(measure, label)) for label in labels)
        ratios = " | ".join(results.ratio(measure, a, b) for a, b in RATIOS)
        lines.append(f"| {measure} | {medians} | {ratios} | {GOALS.get(measure, '')} |")
        if args.samples:
            shown = "; ".join(f"{label} {', '.join(_num(v) for v in by_label.get(label, []))}"
                              for label in labels)
            lines.append(f"|   samples: {shown} |" + " |" * (len(labels) + len(RATIOS) + 1))
    lines += ["", "Ratios: 2/1 is workers=2 over workers=1, 1/Single and 2/Single a PreFork "
              "configuration over Single; spread: the lowest and highest per-round ratio."]
    if results.notes:
        lines += ["", "Problems seen:"] + [f"* {note}" for note in results.notes]
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 or value == int(value) else f"{value:,.1f}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The sizes of the run (see ``--help``), plus the hidden flags of a server subprocess."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    add = parser.add_argument
    add("--rounds", type=positive, default=3,
        help="measurements per configuration, alternated (3)")
    add("--duration", type=positive, default=5, help="seconds of each wrk run (5)")
    add("--connections", type=positive, default=50, help="wrk's keep-alive connections (50)")
    add("--handshakes", type=positive, default=4000,
        help="h2load's requests, each on a new connection (4000)")
    add("--concurrency", type=positive, default=16, help="h2load's concurrent clients (16)")
    add("--timeout", type=float, default=30.0,
        help="seconds any h2load run (or wrk beyond its duration) may take before it is "
             "killed (30)")
    add("--server-cpus", default="0,1", help="CPUs every server process may use (0,1; '' any)")
    add("--client-cpu", type=int, default=1, help="CPU of the load generator (1; -1 any)")
    add("--samples", action="store_true", help="also print every round's value")
    add("--resumption", action="store_true",
        help="let h2load resume TLS sessions (default: the server refuses, a full handshake "
             "per connection)")
    add("--serve", action="store_true", help=argparse.SUPPRESS)  # a server subprocess
    add("--server-type", help=argparse.SUPPRESS)
    add("--workers", type=int, default=0, help=argparse.SUPPRESS)
    add("--cert", help=argparse.SUPPRESS)
    add("--key", help=argparse.SUPPRESS)
    add("--stats", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.cpus = args.server_cpus
    if args.handshakes < args.concurrency:
        parser.error("--handshakes must be at least --concurrency")
    return args


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--serve``, be one of its servers)."""
    args = parse_args(argv)
    if args.serve:
        serve(args)
        return 0
    if not sys.platform.startswith("linux"):
        sys.exit("bench/prefork.py needs Linux (/proc, CPU affinity)")
    missing = [tool for tool in ("wrk", "h2load", "taskset") if shutil.which(tool) is None]
    if missing:
        sys.exit(f"bench/prefork.py needs {', '.join(missing)} (Debian: apt-get install wrk "
                 "nghttp2-client util-linux)")
    available = os.sched_getaffinity(0)
    for cpu in parse_cpus(args.server_cpus) | ({args.client_cpu} - {-1}):
        if cpu not in available:
            sys.exit(f"CPU {cpu} is not available here (available: {sorted(available)})")
    started = time.monotonic()
    results = run_benchmark(args)
    print(format_table(results, args))
    print(f"\n(whole run: {time.monotonic() - started:.0f} s; command: python bench/prefork.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
