"""Side-by-side benchmark: gnetserver's TLS echo against a gevent StreamServer with stdlib TLS.

Run from the repository root (about a minute with the defaults; Linux only: it pins CPUs and
reads ``/proc``)::

    python bench/echo_tls.py                       # all measures, both key types
    python bench/echo_tls.py --rounds 1 --keys ecdsa --requests 100   # a quick look
    python bench/echo_tls.py --help                # sizes, rounds, time caps
    python bench/echo_tls.py --before ../old-tree  # also gnetserver from another source tree
    python bench/echo_tls.py --metrics             # also gnetserver counting its metrics

Both servers run at once, each in its own subprocess pinned to CPU 0, and are measured in turn
(A, B / B, A...) by one load generator pinned to CPU 1 (a gevent client with the stdlib ``ssl``
module, one process; its own CPU use is reported, so a saturated client would show):

* **gnetserver**: the ``Echo`` class of ``examples/echo_server.py`` (pyOpenSSL, cooperative
  handshake in the connection greenlet, close_notify + lingering close);
* **baseline**: ``gevent.server.StreamServer`` whose handler wraps the socket with
  ``gevent.ssl`` (``do_handshake_on_connect=False``, then ``do_handshake()`` under a 10 s
  socket timeout) and echoes lines through ``makefile("rb")`` the same way; it sets
  TCP_NODELAY on accepted sockets as nginx does (``--baseline-nagle`` leaves Nagle on);
* **gnetserver-before**, only with ``--before PATH``: the same gnetserver server, run from
  another gnetserver source tree (for example a git worktree of an older commit, to check a
  change for regressions): its subprocess has PATH first on ``PYTHONPATH`` and loads
  ``PATH/examples/echo_server.py``. The three are then measured A, B, C / C, B, A...
* **gnetserver-metrics**, only with ``--metrics``: the same gnetserver server with
  ``metrics_port`` set (prometheus-client counting every connection, handshake and session;
  nobody scrapes), to measure what the metrics cost (issue 14: within 5 % of metrics off).

Each gnetserver server checks that it imported the tree it claims (this checkout's gnetserver,
not an installed or editable one) and the table's header shows its ``gnetserver.__file__``.

Measures (medians over the rounds; server CPU is utime+stime from ``/proc/PID/stat``, which
depends far less on the client and the machine's other load than the rates do):

a. keep-alive: N persistent TLS connections, each doing M line round-trips -> requests/s and
   server CPU per request;
b. full handshakes: C concurrent clients, each connecting, handshaking (no session resumption:
   a fresh stdlib connection never offers a session), echoing one line and closing -> handshakes/s
   and server CPU per connection, for an ECDSA P-256 and an RSA-2048 certificate;
c. memory per idle TLS connection: K connections opened (each after one echo), server RSS growth
   divided by K (first round only, while the heap is still growing).

The table prints as Markdown with the ratios gnetserver/baseline and, with ``--before``,
gnetserver/gnetserver-before: the ratio of the medians, then in brackets the lowest and highest
of the per-round ratios (round r of one server against round r of the other), its spread.
bench/README.md holds the latest results measured on the project's machine and the command used.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # loadgen, servers beside this file

from loadgen import Load, LoadGenerator  # noqa: E402
from servers import KEY_TYPES, REPO, ServerProcess, positive, write_certificate  # noqa: E402

SERVERS = ("gnetserver", "baseline")
BEFORE = "gnetserver-before"  #: the third server, with --before PATH
METRICS = "gnetserver-metrics"  #: another one, with --metrics

#: gnetserver's targets from design.md section 5 (server CPU per operation, memory).
GOALS = {
    "server CPU per request (µs)": "≤ 15",
    "server CPU per handshake, ECDSA P-256 (µs)": "≤ 310",
    "server CPU per handshake, RSA-2048 (µs)": "≤ 620",
    "memory per idle TLS connection (kB)": "≤ 20",
}


@dataclass
class Results:
    """Every sample of every measure, per server: {measure: {server: [values]}}."""

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    session: str = "?"

    def add(self, measure: str, server: str, value: float) -> None:
        self.samples.setdefault(measure, {}).setdefault(server, []).append(value)

    def median(self, measure: str, server: str) -> float | None:
        values = self.samples.get(measure, {}).get(server)
        return statistics.median(values) if values else None

    def ratio(self, measure: str, server: str, other: str, spread: bool = False) -> str:
        """``server``'s median over ``other``'s; with ``spread``, then the lowest and highest
        per-round ratio (the samples of both are appended round by round)."""
        top, bottom = self.median(measure, server), self.median(measure, other)
        if top is None or not bottom:
            return "-"
        text = f"{top / bottom:.2f}"
        if spread:
            tops, bottoms = self.samples[measure][server], self.samples[measure][other]
            if len(tops) != len(bottoms):  # not paired round by round
                return text + " (?)"
            rounds = [a / b for a, b in zip(tops, bottoms, strict=True) if b]
            text += (f" ({min(rounds):.2f}-{max(rounds):.2f})" if len(rounds) > 1
                     else " (1 round)")
        return text


def server_kinds(args: argparse.Namespace) -> tuple[str, ...]:
    """The servers of this run, in the order of the first round (A, B[, C])."""
    return (*SERVERS, *([BEFORE] if args.before else []), *([METRICS] if args.metrics else []))


def source_tree(text: str) -> Path:
    """An argparse type: a gnetserver source tree (gnetserver/ and examples/echo_server.py)."""
    tree = Path(text).resolve()
    for needed in ("gnetserver/__init__.py", "examples/echo_server.py"):
        if not (tree / needed).is_file():
            raise argparse.ArgumentTypeError(f"{text}: no {needed} there")
    return tree


def describe_tree(tree: Path) -> str:
    """``git describe --always --dirty`` of a source tree, or "" outside git."""
    try:
        done = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"],
                              capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return ""
    return done.stdout.strip()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The sizes of the run (see ``--help``), plus the hidden flags of a server subprocess."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add = parser.add_argument
    add("--rounds", type=positive, default=3, help="measurements per server, alternated (3)")
    add("--connections", type=positive, default=50, help="keep-alive connections N (50)")
    add("--requests", type=positive, default=400,
        help="round-trips per keep-alive connection M (400)")
    add("--payload", type=positive, default=64, help="bytes per line, newline included (64)")
    add("--depth", type=positive, default=1,
        help="lines in flight per keep-alive connection, one TLS record each (1)")
    add("--handshakes", type=positive, default=1500, help="full handshakes per measurement (1500)")
    add("--concurrency", type=positive, default=16, help="concurrent handshaking clients C (16)")
    add("--idle", type=int, default=1000, help="idle connections K for memory, 0 skips (1000)")
    add("--keys", default="ecdsa,rsa", help="certificate key types for handshakes (ecdsa,rsa)")
    add("--phase-timeout", type=float, default=8.0,
        help="seconds any one measurement may run before it stops early (8)")
    add("--no-pin", action="store_true", help="do not pin server and client to CPUs")
    add("--samples", action="store_true", help="also print every round's value")
    add("--baseline-nagle", action="store_true",
        help="leave Nagle on in the baseline (default: it sets TCP_NODELAY, as nginx does)")
    add("--before", type=source_tree, metavar="PATH",
        help="also measure gnetserver run from the source tree PATH (e.g. a git worktree of an "
             "older commit) as a third server, gnetserver-before")
    add("--metrics", action="store_true",
        help="also measure gnetserver with metrics_port set, as gnetserver-metrics")
    add("--serve", choices=(*SERVERS, BEFORE, METRICS), help=argparse.SUPPRESS)  # a server
    add("--tree", type=Path, help=argparse.SUPPRESS)
    add("--cert", help=argparse.SUPPRESS)
    add("--key", help=argparse.SUPPRESS)
    add("--cpu", type=int, default=-1, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def pin(cpu: int) -> bool:
    """Pin this process to one CPU; False when that CPU is not available."""
    if cpu < 0 or cpu not in os.sched_getaffinity(0):
        return False
    os.sched_setaffinity(0, {cpu})
    return True


def measure_keepalive(gen: LoadGenerator, proc: ServerProcess, args: argparse.Namespace,
                      results: Results, idle: bool) -> None:
    """Measures (a), and (c) when ``idle``, of one server; samples go to ``results``."""
    load = gen.keepalive(proc, args.connections, args.requests, args.phase_timeout, args.depth)
    results.add("keep-alive requests/s", proc.kind, load.rate)
    results.add("server CPU per request (µs)", proc.kind, load.cpu_per_op_us)
    results.add("server CPU busy, keep-alive (%)", proc.kind, load.server_busy)
    results.add("load generator CPU busy, keep-alive (%)", proc.kind, load.client_busy)
    if idle and args.idle:
        kb = gen.idle_memory(proc, args.idle, args.phase_timeout)
        results.add("memory per idle TLS connection (kB)", proc.kind, kb)


def measure_handshakes(gen: LoadGenerator, proc: ServerProcess, key: str,
                       args: argparse.Namespace, results: Results) -> None:
    """Measure (b) of one server with one key type; samples go to ``results``."""
    load: Load = gen.handshakes(proc, args.handshakes, args.concurrency, args.phase_timeout)
    label = KEY_TYPES[key]
    results.add(f"full handshakes/s, {label}", proc.kind, load.rate)
    results.add(f"server CPU per handshake, {label} (µs)", proc.kind, load.cpu_per_op_us)
    if load.resumed:
        results.add(f"resumed sessions, {label} (must be 0)", proc.kind, load.resumed)


def run_benchmark(args: argparse.Namespace) -> Results:
    """Per key type: start the servers, measure them in alternating order, stop them."""
    results = Results()
    keys = [k.strip() for k in args.keys.split(",") if k.strip()]
    for key in keys:
        if key not in KEY_TYPES:
            sys.exit(f"--keys: unknown key type {key!r} (known: {', '.join(KEY_TYPES)})")
    gen = LoadGenerator(args.payload)
    with tempfile.TemporaryDirectory(prefix="gnetbench-") as tmp:
        for index, key in enumerate(keys):
            cert, keyfile = write_certificate(Path(tmp), key)
            extra = ("--baseline-nagle",) if args.baseline_nagle else ()
            procs = [ServerProcess(kind, cert, keyfile, -1 if args.no_pin else 0, extra,
                                   args.before if kind == BEFORE else REPO)
                     for kind in server_kinds(args)]
            try:
                for proc in procs:
                    proc.wait_ready()
                    described = describe_tree(proc.tree) if proc.kind != "baseline" else ""
                    results.versions[proc.kind] = proc.version + (
                        f" (git {described})" if described else "")
                for round_number in range(args.rounds):
                    order = procs if round_number % 2 == 0 else procs[::-1]
                    for proc in order:
                        if index == 0:
                            measure_keepalive(gen, proc, args, results, round_number == 0)
                        measure_handshakes(gen, proc, key, args, results)
                        print(f"  {key} round {round_number + 1}/{args.rounds} {proc.kind}: ok",
                              file=sys.stderr)
            finally:
                for proc in procs:
                    proc.stop()
    results.session = gen.session_facts
    return results


def format_table(results: Results, args: argparse.Namespace, pinned: bool) -> str:
    """The run's conditions, then a Markdown table of medians, ratios and goals."""
    kinds = server_kinds(args)
    lines = [
        f"{' vs '.join(kinds)}, one run: {args.rounds} round(s), medians; "
        f"keep-alive {args.connections} conns x {args.requests} round-trips of "
        f"{args.payload} B; handshakes {args.handshakes} per measurement, {args.concurrency} "
        f"concurrent; idle memory over {args.idle} conns.",
        f"Pinned: {'servers CPU 0, load generator CPU 1' if pinned else 'no'}. "
        f"Python {sys.version.split()[0]}.",
    ]
    for kind in kinds:
        lines.append(f"{kind}: {results.versions.get(kind, '?')}")
    lines.append(f"Negotiated: {results.session}")
    before = f" gnetserver/{BEFORE} (spread) |" if args.before else ""
    before += f" {METRICS}/gnetserver (spread) |" if args.metrics else ""
    extra = bool(args.before) + bool(args.metrics)
    lines += ["", f"| measure | {' | '.join(kinds)} | gnetserver/baseline |{before} goal |",
              "|---|" + "---:|" * (len(kinds) + 2 + extra)]
    for measure, by_server in results.samples.items():
        medians = " | ".join(_num(results.median(measure, kind)) for kind in kinds)
        ratio = results.ratio(measure, "gnetserver", "baseline")
        if args.before:
            ratio += f" | {results.ratio(measure, 'gnetserver', BEFORE, spread=True)}"
        if args.metrics:
            ratio += f" | {results.ratio(measure, METRICS, 'gnetserver', spread=True)}"
        goal = GOALS.get(measure, "")
        lines.append(f"| {measure} | {medians} | {ratio} | {goal} |")
        if args.samples:
            shown = "; ".join(f"{kind} {', '.join(_num(v) for v in by_server.get(kind, []))}"
                              for kind in kinds)
            lines.append(f"|   samples: {shown} |" + " |" * (len(kinds) + 2 + extra))
    lines += ["", "Ratios: above 1 is better for rates, below 1 is better for CPU and memory. "
              "Goal: gnetserver's target in design.md section 5."]
    if args.before:
        lines.append(f"{BEFORE}: from {args.before}. Spread: the lowest and highest per-round "
                     "ratio; memory is measured in the first round only.")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:,.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or, with the hidden ``--serve``, be one of its servers)."""
    args = parse_args(argv)
    if args.serve:
        from servers import serve

        pin(args.cpu)
        serve(args.serve, args.cert, args.key, nodelay=not args.baseline_nagle, tree=args.tree)
        return 0
    if not sys.platform.startswith("linux"):
        sys.exit("bench/echo_tls.py needs Linux (/proc, sched_setaffinity)")
    pinned = not args.no_pin and len(os.sched_getaffinity(0)) >= 2 and pin(1)
    if not pinned:
        args.no_pin = True
    started = time.monotonic()
    results = run_benchmark(args)
    print(format_table(results, args, pinned))
    print(f"\n(whole run: {time.monotonic() - started:.0f} s; command: python bench/echo_tls.py "
          f"{' '.join(argv if argv is not None else sys.argv[1:])})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
