"""The servers of bench/echo_tls.py, their certificates, and their subprocesses.

``serve(kind, cert, key)`` runs inside a server subprocess (``echo_tls.py --serve KIND``); a
:class:`ServerProcess` starts one, learns its address from its "Server ready: HOST:PORT/ssl"
line on stderr, and reads its CPU time and memory from ``/proc``.

A gnetserver server runs from one source tree: this checkout, or with ``echo_tls.py --before
PATH`` another one ("gnetserver-before"). Its subprocess gets that tree first on
``PYTHONPATH`` (ahead of any installed or editable gnetserver) and loads that tree's
``examples/echo_server.py``; it checks that ``gnetserver`` really came from the tree and reports
``gnetserver.__file__`` on its version line.

The other benchmarks share its helpers too: certificates, free ports, stopping a subprocess,
a process's descendants (:func:`descendants`) and the malloc heap in use
(:func:`malloc_in_use`).
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import ipaddress
import os
import re
import resource
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
KEY_TYPES = {"ecdsa": "ECDSA P-256", "rsa": "RSA-2048"}
READY = re.compile(r"Server ready: \[?([^\s\]]+?)\]?:(\d+)/ssl")
VERSION = re.compile(r"^bench-version: (.*)$")
START_TIMEOUT = 30.0
TICKS = os.sysconf("SC_CLK_TCK")


# -- certificates ------------------------------------------------------------------------------


def write_certificate(folder: Path, key_type: str) -> tuple[str, str]:
    """A self-signed certificate for localhost/127.0.0.1 with a fresh key; returns the paths."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    if key_type == "rsa":
        key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(san), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{key_type}-cert.pem", folder / f"{key_type}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


# -- inside a server subprocess ----------------------------------------------------------------


def raise_fd_limit(wanted: int = 65536) -> None:
    """Raise the soft open-file limit toward ``wanted`` (never above the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def serve(kind: str, cert: str, key: str, nodelay: bool = True,
          tree: Path | None = None) -> None:
    """Serve the line echo on 127.0.0.1, kernel-chosen port, until terminated.

    ``tree``: the gnetserver source tree of a gnetserver server (default: this checkout).
    """
    raise_fd_limit()  # room for the idle-memory measurement
    if kind.startswith("gnetserver"):
        # gnetserver-metrics: the same server counting its Prometheus metrics (issue 14)
        metrics = {"metrics_port": "127.0.0.1:0"} if kind == "gnetserver-metrics" else {}
        serve_gnetserver(cert, key, tree or REPO, **metrics)
    else:
        serve_baseline(cert, key, nodelay)


def serve_gnetserver(cert: str, key: str, tree: Path = REPO, **options: Any) -> None:
    """The Echo class of ``TREE/examples/echo_server.py``, as users would run it, with the
    gnetserver of ``TREE`` (which the parent put first on PYTHONPATH; checked here);
    ``options``: more options of the server (``metrics_port``)."""
    import importlib.util

    import gevent
    import OpenSSL
    from OpenSSL import SSL

    import gnetserver

    tree = tree.resolve()
    package = Path(gnetserver.__file__ or "?").resolve()
    if not package.is_relative_to(tree):
        sys.exit(f"bench: gnetserver came from {package}, not from {tree}")
    spec = importlib.util.spec_from_file_location("echo_server", tree / "examples/echo_server.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    print(f"bench-version: gevent {gevent.__version__}, pyOpenSSL {OpenSSL.__version__} over "
          f"{openssl}; gnetserver from {package}", file=sys.stderr, flush=True)
    module.Echo(port="127.0.0.1:0/ssl", SSL_cert_file=cert, SSL_key_file=key,
                max_servers=4096, **options).serve_forever()


def serve_baseline(cert: str, key: str, nodelay: bool = True) -> None:
    """gevent's StreamServer, the stdlib ssl module through gevent.ssl, the same echo.

    With ``nodelay`` the accepted socket gets TCP_NODELAY, as nginx's ``tcp_nodelay on``:
    without it the first answer after a TLS 1.3 handshake waits for the client's delayed ACK
    (about 40 ms) behind the session tickets, and the handshake rate measures that wait.
    """
    import socket

    import gevent
    from gevent import ssl as gssl
    from gevent.server import StreamServer

    context = gssl.SSLContext(gssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)

    def handle(sock: Any, address: Any) -> None:
        if nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        tls = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        try:
            tls.settimeout(10)
            tls.do_handshake()
            with tls.makefile("rb") as reader:
                for line in reader:
                    tls.sendall(line)
        except OSError:
            pass  # the peer went away or sent garbage: nothing to report in a benchmark
        finally:
            tls.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    print(f"bench-version: gevent {gevent.__version__}, stdlib ssl over {gssl.OPENSSL_VERSION}",
          file=sys.stderr, flush=True)
    print(f"Server ready: 127.0.0.1:{server.server_port}/ssl", file=sys.stderr, flush=True)
    server.serve_forever()


# -- seen from the benchmark -------------------------------------------------------------------


def positive(text: str) -> int:
    """An argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def free_ports(count: int) -> list[int]:
    """Ports the kernel has free now (bound, read, closed: a tiny race, fine on loopback)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """TERM a subprocess, KILL it when it has not ended ``grace`` seconds later; reap it."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def descendants(pid: int) -> list[int]:
    """The children of ``pid`` (forked by its main thread), theirs, and so on, from ``/proc``."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        try:
            text = Path(f"/proc/{parent}/task/{parent}/children").read_text()
        except OSError:  # gone meanwhile
            continue
        kids = [int(p) for p in text.split()]
        found += kids
        todo += kids
    return found


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def malloc_in_use() -> int:
    """Bytes in use in this process's malloc heap, small blocks and mmapped ones (glibc's
    ``mallinfo2``)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


class WatchedStderr:
    """A server subprocess (``self.proc``, stderr piped as text) whose stderr a thread reads:
    :attr:`lines` (the first 1000: the start and any trouble matter), :attr:`version` (its
    ``bench-version:`` line) and :attr:`address` (its ready line)."""

    proc: subprocess.Popen[str]

    def _watch_stderr(self) -> None:
        """Start the reading thread (once ``self.proc`` runs)."""
        self.address: tuple[str, int] | None = None
        self.version = "?"
        self.lines: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()

    def _spawn(self, command: list[str], tree: Path) -> None:
        """Start ``command`` (a Python server subprocess) with ``tree`` first on PYTHONPATH,
        its stderr piped to the reading thread."""
        path = os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            command, env=dict(os.environ, PYTHONPATH=path), stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )
        self.pid = self.proc.pid
        self._watch_stderr()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            if len(self.lines) < 1000:  # bounded: only the start and any trouble matter
                self.lines.append(line.rstrip())
            if match := VERSION.search(line):
                self.version = match[1]
            if match := READY.search(line):
                self.address = (match[1], int(match[2]))
                self._ready.set()
        self._ready.set()


class ServerProcess(WatchedStderr):
    """One server subprocess (``echo_tls.py --serve KIND``), optionally pinned to ``cpu``."""

    def __init__(self, kind: str, cert: str, key: str, cpu: int,
                 extra: tuple[str, ...] = (), tree: Path = REPO) -> None:
        self.kind = kind
        self.tree = tree.resolve()
        self._spawn([sys.executable, str(BENCH / "echo_tls.py"), "--serve", kind, "--cert", cert,
                     "--key", key, "--cpu", str(cpu), "--tree", str(self.tree), *extra],
                    self.tree)

    def wait_ready(self) -> tuple[str, int]:
        """Block until the server listens; raise with its stderr if it does not."""
        self._ready.wait(START_TIMEOUT)
        if self.address is None:
            self.stop()
            raise RuntimeError(f"{self.kind} server did not start:\n" + "\n".join(self.lines))
        return self.address

    def cpu_seconds(self) -> float:
        """utime + stime of the server process so far (all its threads)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # stat fields 14 and 15

    def rss_kb(self) -> int:
        """Resident memory of the server process in kB."""
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def stop(self) -> None:
        stop_process(self.proc, 5)
        self._reader.join(5)
