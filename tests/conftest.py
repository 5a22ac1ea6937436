"""Shared fixtures: a trustme CA, certificate files, servers in threads and in subprocesses.

The helpers the tests call (``address``, ``tls_connect``, ``read_until_eof``, ``needs_ipv6``...)
live in the ``support`` package beside this file: import them from there
(``from support.net import address``). They are re-exported here for older code, but
``from conftest import ...`` breaks as soon as a second conftest.py exists: pytest names every
conftest.py module ``conftest``, so such an import finds whichever was loaded last.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gevent.socket as gsocket
import pytest
import trustme

_TESTS = str(Path(__file__).resolve().parent)
if _TESTS not in sys.path:  # ``import support`` must work whatever pytest's import mode
    sys.path.insert(0, _TESTS)

from support.conformance import StartServer, make_starter  # noqa: E402
from support.handshake import Pems, write_pems  # noqa: E402
from support.leftovers import socket_descriptors, started, wait_for_no_leftovers  # noqa: E402
from support.net import (  # noqa: E402,F401  (re-exported for older imports from conftest)
    HOSTS,
    IPV6,
    address,
    needs_ipv6,
    read_until_eof,
    tls_connect,
    wait_until,
)
from support.process import ServerProcess, alive  # noqa: E402
from support.sigserver import SignalServerProcess  # noqa: E402
from support.tls import trusting, write_leaf  # noqa: E402

from gnetserver import GServer  # noqa: E402
from gnetserver.testing import ServerThread  # noqa: E402

# -- every server a test built is gone after it -------------------------------------------------


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the item (``item.rep_call``) for the fixtures below."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture(autouse=True)
def no_server_leftovers(request: pytest.FixtureRequest,
                        monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """After a test that started servers (in this process), fail unless each is fully gone:
    listeners closed, socket descriptors back to those before the test, no live greenlet of it
    (support.leftovers). Servers built before the test (module-scoped fixtures) are not
    watched; their descriptors are in the "before" set. Skipped when the test itself failed:
    its traceback keeps its sockets alive."""
    built: list[GServer] = []
    original = GServer.__init__

    @functools.wraps(original)
    def recording_init(self: GServer, *args: Any, **kwargs: Any) -> None:
        if not any(server is self for server in built):  # subclasses call it through super()
            built.append(self)
        original(self, *args, **kwargs)

    monkeypatch.setattr(GServer, "__init__", recording_init)
    sockets_before = socket_descriptors()
    yield
    servers = [server for server in built if started(server)]
    call = getattr(request.node, "rep_call", None)
    if not servers or call is None or not call.passed:
        return
    found = wait_for_no_leftovers(servers, sockets_before)
    if found:
        pytest.fail("the test left server resources behind:\n  " + "\n  ".join(found),
                    pytrace=False)


# -- certificates ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """The test CA: it issues every server and client certificate the tests trust."""
    return trustme.CA()


@pytest.fixture(scope="session")
def certs(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PEM files of a server certificate for localhost/127.0.0.1/::1: cert (with chain), key."""
    folder = tmp_path_factory.mktemp("certs")
    return write_leaf(ca.issue_cert(*HOSTS), folder / "cert.pem", folder / "key.pem")


@pytest.fixture(scope="session")
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    """A stdlib client context that trusts the test CA (and checks the host name)."""
    return trusting(ca)


@pytest.fixture
def pems(ca: trustme.CA, tmp_path: Path) -> Pems:
    """A leaf for localhost/127.0.0.1 as cert, key, combined and CA PEM files in tmp_path."""
    return write_pems(ca, tmp_path)


@pytest.fixture
def pem_files(pems: Pems) -> dict[str, Any]:
    """The ``pems`` leaf as the options SSL_cert_file and SSL_key_file."""
    return {"SSL_cert_file": str(pems.cert), "SSL_key_file": str(pems.key)}


# -- servers in threads ----------------------------------------------------------------------


@pytest.fixture
def serve() -> Iterator[Callable[..., GServer]]:
    """Start servers in background threads; every one is stopped at teardown."""
    threads: list[ServerThread] = []

    def start(server: GServer | type[GServer] = GServer, **options: Any) -> GServer:
        if isinstance(server, type):
            server = server(**options)
        thread = ServerThread(server).start()
        threads.append(thread)
        return server

    yield start
    for thread in reversed(threads):
        thread.stop()


@pytest.fixture
def short_tmp_path() -> Iterator[str]:
    """A short private folder (unix socket paths are limited to about 100 bytes)."""
    path = tempfile.mkdtemp(prefix="gns-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def listener() -> Iterator[Any]:
    """A gevent TCP socket listening on 127.0.0.1 (5 s timeout), for a test that accepts
    connections itself."""
    sock = gsocket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.settimeout(5.0)
    yield sock
    sock.close()


@pytest.fixture
def syslog_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A syslog daemon stand-in: an AF_UNIX datagram socket the server sends to."""
    path = str(tmp_path / "syslog.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    yield path, sock
    sock.close()


@pytest.fixture
def start_endpoint(proto: str, serve: Callable[..., GServer], ca: trustme.CA,
                   certs: dict[str, str], short_tmp_path: str) -> StartServer:
    """The conformance suite's starter: ConformanceServer (or a given class) on the proto of
    the module's ``proto`` fixture, returned as an Endpoint."""
    return make_starter(proto, serve, ca, certs, short_tmp_path)


# -- servers in subprocesses -----------------------------------------------------------------


@pytest.fixture
def daemons() -> Iterator[list[int]]:
    """Pids of daemons a test started; each is TERMed, then KILLed, at teardown."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        for signum in (signal.SIGTERM, signal.SIGKILL):
            if not alive(pid):
                break
            os.kill(pid, signum)
            try:
                wait_until(lambda pid=pid: not alive(pid), 5, f"pid {pid} to exit")
            except AssertionError:
                continue


@pytest.fixture
def spawn() -> Iterator[Callable[..., Any]]:
    """``spawn(*args, factory=ServerProcess, **kwargs)`` starts ``factory(*args, **kwargs)``, a
    ServerProcess (or subclass); every one is stopped at teardown."""
    started: list[ServerProcess] = []

    def start(*args: Any, factory: Callable[..., ServerProcess] = ServerProcess,
              **kwargs: Any) -> Any:
        started.append(factory(*args, **kwargs))
        return started[-1]

    yield start
    for proc in started:
        proc.stop()


@pytest.fixture
def start_sigserver(spawn: Callable[..., Any], tmp_path: Path,
                    certs: dict[str, str]) -> Callable[..., SignalServerProcess]:
    """``start_sigserver(*args)``: the signal tests' server (support.sigserver) started in
    tmp_path with the test certificate and the command line ``args``; killed at teardown."""
    return lambda *args: spawn(tmp_path, certs, *args, factory=SignalServerProcess)


# -- hypothesis (tests/unit/test_properties.py) -------------------------------------------------

from hypothesis import HealthCheck, settings  # noqa: E402

# "ci", the default: a fixed seed and few examples, so the suite stays fast and repeatable.
# "long": ``pytest --hypothesis-profile=long tests/unit/test_properties.py`` for a deeper run
# (a random seed each time, many more examples; a failure prints the seed to reproduce it).
settings.register_profile("ci", derandomize=True, max_examples=60, deadline=None, database=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=5000, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")
