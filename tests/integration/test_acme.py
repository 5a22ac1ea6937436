"""Issue 13: certificates from an ACME CA, against a real Pebble (Let's Encrypt's test CA).

One Pebble (and pebble-challtestsrv for DNS: every name is 127.0.0.1) per module; it validates
TLS-ALPN-01 on ``tls_port`` and HTTP-01 on ``http_port`` of 127.0.0.1, where the servers under
test listen. Covered: issuance by TLS-ALPN-01 and by HTTP-01, the chain verified against
Pebble's root, the interim certificate before issuance and the issued one after it with no
refused connection in between, an IP identifier (RFC 8738), the challenge certificate only for
``acme-tls/1`` handshakes (TLS 1.2 and 1.3), renewal under a connected client, a validation the
CA refuses and an unreachable directory (the served certificate stays, the reason is logged), a
restart that finds account and certificate on disk and orders nothing, renewal of a
certificate past two thirds of its life, PreFork (the parent orders, every worker serves),
HTTP-01 through the HTTP personality, External Account Binding.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from support.net import free_port, wait_until
from support.pebble import Pebble, needs_pebble
from support.process import REPO, ServerProcess, python_env
from support.prometheus import samples

from gnetserver import GServer
from gnetserver.acme import AcmeClient, AcmeProblem
from gnetserver.acme.store import AcmeStore
from gnetserver.acme_plan import acme_settings
from gnetserver.http import GHTTPServer
from gnetserver.testing import ServerThread
from gnetserver.tls.acme_alpn import ID_PE_ACME_IDENTIFIER, ChallengeFiles, challenge_certificate
from gnetserver.tls.selfsigned import make_self_signed

pytestmark = pytest.mark.timeout(60)


class Echo(GServer):
    def process_request(self, client: Any) -> None:
        for line in client:
            client.sendall(line)


class Lines:
    """A log_function keeping every line."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, level: int, message: str) -> None:
        self.lines.append(message)

    def count(self, text: str) -> int:
        return sum(text in line for line in self.lines)

    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture(scope="module")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    needs_pebble()
    ca = Pebble(tmp_path_factory.mktemp("pebble"), free_port(), free_port()).start()
    try:
        yield ca
    finally:
        ca.stop()


def acme_server(pebble: Pebble, folder: Path, log: Lines, domains: str = "a.test,b.test",
                port: int | None = None, **options: Any) -> Echo:
    settings = {"SSL_acme_directory": pebble.directory, "SSL_acme_ca_file": pebble.ca_file,
                **options}
    return Echo(port=f"127.0.0.1:{pebble.tls_port if port is None else port}/ssl",
                SSL_acme_domains=domains, SSL_acme_dir=str(folder),
                log_function=log, log_level=2, **settings)


def unverified(alpn: list[str] | None = None, version: ssl.TLSVersion | None = None
               ) -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    if alpn:
        context.set_alpn_protocols(alpn)
    if version is not None:
        context.minimum_version = context.maximum_version = version
    return context


def served(port: int, name: str, context: ssl.SSLContext | None = None
           ) -> tuple[x509.Certificate, str | None]:
    """The certificate a new connection for ``name`` gets, and the ALPN protocol."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, \
            (context or unverified()).wrap_socket(raw, server_hostname=name) as tls:
        der = tls.getpeercert(binary_form=True)
        assert der is not None
        return x509.load_der_x509_certificate(der), tls.selected_alpn_protocol()


def scrape(server: GServer) -> dict[str, float]:
    """The server's metrics (metrics_port): ``{'name{labels}': value}``."""
    listener = next(lst for lst in server.listeners if lst.serves_metrics)
    with urllib.request.urlopen(f"http://127.0.0.1:{listener.port}/metrics", timeout=5) as got:
        return samples(got.read())


def self_signed(cert: x509.Certificate) -> bool:
    return cert.issuer == cert.subject


def verify_with_root(pebble: Pebble, port: int, name: str) -> x509.Certificate:
    """Connect verifying the chain against Pebble's root and the name; the leaf."""
    context = ssl.create_default_context(cadata=pebble.root_pem().decode())
    cert, _ = served(port, name, context)
    return cert


class Prober(threading.Thread):
    """Connects again and again while issuance runs: every certificate seen, every error."""

    def __init__(self, port: int, name: str) -> None:
        super().__init__(daemon=True)
        self.port, self.name = port, name
        self.seen: list[bool] = []  # self-signed?
        self.errors: list[BaseException] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set() and len(self.seen) < 2000:
            try:
                self.seen.append(self_signed(served(self.port, self.name)[0]))
            except Exception as exc:
                self.errors.append(exc)


def test_tls_alpn_01_interim_then_issued_chain_verifies(pebble: Pebble, tmp_path: Path) -> None:
    log = Lines()
    server = acme_server(pebble, tmp_path / "acme", log)
    with ServerThread(server):
        first, _ = served(pebble.tls_port, "a.test")  # served at once, while the order runs
        assert self_signed(first) and log.count("certificate issued") == 0
        prober = Prober(pebble.tls_port, "a.test")
        prober.start()
        wait_until(lambda: log.count("certificate issued") or log.count("failed"), 30)
        wait_until(lambda: prober.seen and not prober.seen[-1], 10)  # an issued one seen
        prober.done.set()
        prober.join(10)
        assert log.count("certificate issued for a.test, b.test") == 1, log.text()
        assert log.count("tls-alpn-01 challenge for") >= 1
        assert log.count("TLS-ALPN-01 challenge certificate served") >= 1
        # Interim first, issued after it; never a refused or failed connection.
        assert prober.errors == []
        assert prober.seen[-1] is False
        assert prober.seen == sorted(prober.seen, reverse=True)  # never back to the interim
        for name in ("a.test", "b.test"):
            leaf = verify_with_root(pebble, pebble.tls_port, name)
            assert "Pebble" in leaf.issuer.rfc4514_string()
        # A client without a name gets the first name's certificate too (the default).
        with socket.create_connection(("127.0.0.1", pebble.tls_port), timeout=5) as raw, \
                unverified().wrap_socket(raw) as tls:
            der = tls.getpeercert(binary_form=True)
            assert der is not None and not self_signed(x509.load_der_x509_certificate(der))
    folder = tmp_path / "acme"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert files and all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files)
    assert not list((folder / "challenges").glob("*.pem"))  # challenges cleaned up


def test_http_01_issues_then_a_restart_orders_nothing(pebble: Pebble, tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    options = {"SSL_acme_challenge": "http-01",
               "SSL_acme_http_listen": f"127.0.0.1:{pebble.http_port}"}
    log = Lines()
    with ServerThread(acme_server(pebble, folder, log, "h.test", **options)):
        wait_until(lambda: log.count("certificate issued") or log.count("failed"), 30)
        assert log.count("certificate issued for h.test") == 1, log.text()
        assert log.count("HTTP-01 challenge answered") >= 1
        first = verify_with_root(pebble, pebble.tls_port, "h.test")
    log = Lines()
    with ServerThread(acme_server(pebble, folder, log, "h.test", **options)):
        again = verify_with_root(pebble, pebble.tls_port, "h.test")  # served at once
        assert again.serial_number == first.serial_number
    assert log.count("serving the certificate on disk for h.test") == 1, log.text()
    assert log.count("ACME: order") == 0 and log.count("ACME: account") == 0, log.text()
    # A name added: the certificate on disk stays served for the old name while the order
    # for both runs; then the new certificate covers both.
    log = Lines()
    with ServerThread(acme_server(pebble, folder, log, "h.test,h2.test", **options)):
        assert log.count("it lacks h2.test") == 1, log.text()
        wait_until(lambda: log.count("certificate renewed") or log.count("failed"), 30)
        assert log.count("certificate renewed for h.test, h2.test") == 1, log.text()
        for name in ("h.test", "h2.test"):
            assert verify_with_root(pebble, pebble.tls_port, name).serial_number != \
                first.serial_number


def test_ip_identifier_by_tls_alpn_01(pebble: Pebble, tmp_path: Path) -> None:
    """RFC 8738: an IP address as the identifier; the CA's SNI is its reverse name."""
    log = Lines()
    with ServerThread(acme_server(pebble, tmp_path / "acme", log, "127.0.0.1")):
        wait_until(lambda: log.count("certificate issued") or log.count("failed"), 30)
        assert log.count("certificate issued for 127.0.0.1") == 1, log.text()
        leaf = verify_with_root(pebble, pebble.tls_port, "127.0.0.1")
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]


def test_interim_refuse_fails_handshakes_until_issued(pebble: Pebble, tmp_path: Path) -> None:
    """SSL_acme_interim refuse: no certificate before the first issuance (the handshake fails
    with an alert), the TLS-ALPN-01 challenge still answered (Pebble's VA speaks TLS 1.3)."""
    log = Lines()
    unreachable = acme_server(pebble, tmp_path / "acme", log, "x.test", port=0,
                              SSL_acme_interim="refuse",
                              SSL_acme_directory=f"https://127.0.0.1:{free_port()}/dir")
    with ServerThread(unreachable):
        port = unreachable.listeners[0].sock.getsockname()[1]
        wait_until(lambda: log.count("failed"), 10)
        with pytest.raises(ssl.SSLError):
            served(port, "x.test")
        with pytest.raises(ssl.SSLError):
            served(port, "other.test")
    assert "still refusing them" in log.text()
    assert "Certificate expiry check" not in log.text()  # no certificate: none to check
    log = Lines()
    with ServerThread(acme_server(pebble, tmp_path / "acme", log, "x.test",
                                  SSL_acme_interim="refuse")):
        wait_until(lambda: log.count("certificate issued") or log.count("failed"), 30)
        assert log.count("certificate issued for x.test") == 1, log.text()
        verify_with_root(pebble, pebble.tls_port, "x.test")


def test_renewal_replaces_the_certificate_under_a_connected_client(pebble: Pebble,
                                                                   tmp_path: Path) -> None:
    log = Lines()
    server = acme_server(pebble, tmp_path / "acme", log, "r.test", metrics_port="0")
    port = pebble.tls_port
    expiry = f'gnetserver_certificate_expiry_timestamp_seconds{{port="{port}",sni="r.test"}}'
    orders = 'gnetserver_acme_orders_total{{result="{}"}}'.format
    with ServerThread(server) as st:
        interim = served(port, "r.test")[0]
        assert scrape(server)[expiry] == interim.not_valid_after_utc.timestamp()
        wait_until(lambda: log.count("certificate issued"), 30)
        first = verify_with_root(pebble, pebble.tls_port, "r.test")
        # the expiry gauge follows the certificate ACME serves now
        wait_until(lambda: scrape(server)[expiry] == first.not_valid_after_utc.timestamp(),
                   5, "the gauge to say the issued certificate's expiry")
        context = ssl.create_default_context(cadata=pebble.root_pem().decode())
        with socket.create_connection(("127.0.0.1", pebble.tls_port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="r.test") as kept:
            kept.sendall(b"before\n")
            assert kept.recv(100) == b"before\n"
            assert server.acme is not None
            st.call(server.acme.renew)
            wait_until(lambda: log.count("certificate renewed for r.test"), 30)
            second = verify_with_root(pebble, pebble.tls_port, "r.test")
            assert second.serial_number != first.serial_number
            wait_until(lambda: scrape(server)[orders("renewed")] == 1, 5, "the renewal counted")
            found = scrape(server)
            assert found[expiry] == second.not_valid_after_utc.timestamp()
            assert found[orders("issued")] == 1
            kept.sendall(b"after\n")  # the connection made before the renewal goes on
            assert kept.recv(100) == b"after\n"
    # A renewal that fails (the CA unreachable) keeps the issued certificate served.
    log = Lines()
    server = acme_server(pebble, tmp_path / "acme", log, "r.test", metrics_port="0",
                         SSL_acme_directory=f"https://127.0.0.1:{free_port()}/dir")
    with ServerThread(server) as st:
        assert server.acme is not None
        st.call(server.acme.renew)
        wait_until(lambda: log.count("failed"), 10)
        # the order started for the other CA at start and the forced renewal both fail
        wait_until(lambda: scrape(server).get(orders("failed"), 0) >= 1, 5, "the failure counted")
        assert log.count("another CA's") == 1, log.text()  # another directory URL
        assert "still serving the issued certificate" in log.text(), log.text()
        assert verify_with_root(pebble, pebble.tls_port, "r.test").serial_number == \
            second.serial_number


def test_a_validation_the_ca_refuses_keeps_the_served_certificate(pebble: Pebble,
                                                                  tmp_path: Path) -> None:
    # HTTP-01 answered on a port the CA does not reach: Pebble's validation fails.
    log = Lines()
    server = acme_server(pebble, tmp_path / "acme", log, "refused.test",
                         SSL_acme_challenge="http-01", SSL_acme_http_listen="127.0.0.1:0")
    with ServerThread(server):
        wait_until(lambda: log.count("failed"), 30)
        cert, _ = served(pebble.tls_port, "refused.test")
        assert self_signed(cert)  # still the interim certificate
    failure = next(line for line in log.lines if "failed" in line)
    assert "still serving the interim certificate" in failure
    assert "connection" in failure or "unauthorized" in failure, failure  # the CA's problem


def test_challenge_certificate_only_for_acme_tls_1_and_unreachable_ca(tmp_path: Path) -> None:
    """No CA at all (the directory refuses connections): the interim certificate is served,
    the failure logged; a challenge file makes acme-tls/1 handshakes for its name get the RFC
    8737 certificate, in TLS 1.2 and 1.3, while other clients keep theirs."""
    log = Lines()
    folder = tmp_path / "acme"
    server = Echo(port="127.0.0.1:0/ssl", SSL_acme_domains="c.test,d.test",
                  SSL_acme_directory=f"https://127.0.0.1:{free_port()}/dir",
                  SSL_acme_dir=str(folder), SSL_alpn_protocols="http/1.1",
                  log_function=log, log_level=2)
    with ServerThread(server):
        port = server.listeners[0].sock.getsockname()[1]
        wait_until(lambda: log.count("failed"), 10)
        assert "Connection refused" in log.text() or "URLError" in log.text(), log.text()
        files = ChallengeFiles(str(folder / "challenges"))
        files.put("c.test", *challenge_certificate("c.test", "token.thumbprint"))
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            cert, alpn = served(port, "c.test", unverified(["acme-tls/1"], version))
            assert alpn == "acme-tls/1"
            ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
            assert ext.critical
            # the other name, and other clients of c.test, keep the interim certificate
            other, alpn = served(port, "d.test", unverified(["acme-tls/1"], version))
            assert alpn is None and self_signed(other)
            with pytest.raises(x509.ExtensionNotFound):
                other.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
            plain, alpn = served(port, "c.test", unverified(["http/1.1"], version))
            assert alpn == "http/1.1"
            assert plain.serial_number == other.serial_number  # one interim for both names
        # The CA validates from several places at once: concurrent challenge handshakes.
        results: list[str | None] = []
        errors: list[BaseException] = []

        def validate() -> None:
            try:
                cert, alpn = served(port, "c.test", unverified(["acme-tls/1"]))
                cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
                results.append(alpn)
            except Exception as exc:
                errors.append(exc)

        threads = [threading.Thread(target=validate) for _ in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(20)
        assert errors == [] and results == ["acme-tls/1"] * 16
        files.remove("c.test")
        _, alpn = served(port, "c.test", unverified(["acme-tls/1"]))
        assert alpn is None
    assert os.path.isdir(folder)


def test_prefork_parent_orders_and_every_worker_serves(pebble: Pebble, tmp_path: Path) -> None:
    """server_type PreFork: the parent orders (one order), both workers serve the issued
    certificate once it is on disk (their file watcher rebuilds their contexts)."""
    (tmp_path / "echo_acme.py").write_text(
        "from gnetserver import GServer\n\n\n"
        "class Echo(GServer):\n"
        "    def process_request(self, client):\n"
        "        for line in client:\n"
        "            client.sendall(line)\n")
    env = python_env(tmp_path, REPO)
    env.pop("BOUND_SOCKETS", None)
    server = ServerProcess(
        [sys.executable, "-m", "gnetserver", "--server", "echo_acme:Echo",
         "--server_type", "PreFork", "--workers", "2", "--log_level", "3",
         "--port", f"127.0.0.1:{pebble.tls_port}/ssl", "--SSL_acme_domains", "p.test",
         "--SSL_acme_directory", pebble.directory, "--SSL_acme_ca_file", pebble.ca_file,
         "--SSL_acme_dir", str(tmp_path / "acme")], env=env, cwd=tmp_path)
    try:
        server.wait_for("certificate issued for p.test", timeout=30)

        def all_issued() -> bool:  # 8 connections spread over both workers
            try:
                return len({verify_with_root(pebble, pebble.tls_port, "p.test").serial_number
                            for _ in range(8)}) == 1
            except ssl.SSLError:  # a worker still on the interim certificate
                return False

        wait_until(all_issued, 10)
        assert server.count(r"ACME: order ") == 1
        # Workers forked before the issuance say when they took the new certificate.
        workers = {int(m.group(1)) for m in map(re.compile(r"worker (\d+) serves").search,
                                                server.lines) if m}
        assert server.pid not in workers
    finally:
        server.stop()


def test_a_hup_rebinds_the_http_01_responder(tmp_path: Path) -> None:
    """A HUP re-exec: the new image binds the HTTP-01 responder again (the drainer forked for
    the previous generation must not keep its socket) and serves; the CA is unreachable."""
    (tmp_path / "echo_acme.py").write_text("from gnetserver import GServer\n")
    env = python_env(tmp_path, REPO)
    env.pop("BOUND_SOCKETS", None)
    http_port = free_port()
    server = ServerProcess(
        [sys.executable, "-m", "gnetserver", "--log_level", "2",
         "--port", f"127.0.0.1:{free_port()}/ssl", "--SSL_acme_domains", "h.test",
         "--SSL_acme_directory", f"https://127.0.0.1:{free_port()}/dir",
         "--SSL_acme_challenge", "http-01", "--SSL_acme_http_listen", f"127.0.0.1:{http_port}",
         "--SSL_acme_dir", str(tmp_path / "acme")], env=env, cwd=tmp_path)
    try:
        server.ports(1)
        server.send(signal.SIGHUP)
        server.ports(2)  # the new image is ready
        assert server.count("HTTP-01 responder on") == 2
        url = f"http://127.0.0.1:{http_port}/.well-known/acme-challenge/unknown"
        with pytest.raises(urllib.error.HTTPError) as answer:
            urllib.request.urlopen(url, timeout=5)
        assert answer.value.code == 404
        assert server.proc.poll() is None
    finally:
        server.stop()


@pytest.mark.skipif(shutil.which("socat") is None, reason="socat missing (.ci/run installs it)")
def test_inet_serves_from_disk_and_orders_nothing(tmp_path: Path) -> None:
    """server_type INET (one process per connection): no order and no HTTP-01 responder per
    connection (its port is held here: a bind would fail); the interim certificate serves."""
    http = socket.socket()
    http.bind(("127.0.0.1", 0))
    http.listen(1)
    port = free_port()
    script = tmp_path / "inet.sh"  # socat's EXEC: would split the URLs at their colons
    script.write_text(
        f"#!/bin/sh\nexec {sys.executable} -m gnetserver --server_type INET --proto ssl "
        f"--log_level 2 --SSL_acme_domains i.test --SSL_acme_challenge http-01 "
        f"--SSL_acme_directory https://127.0.0.1:{free_port()}/dir "
        f"--SSL_acme_http_listen 127.0.0.1:{http.getsockname()[1]} "
        f"--SSL_acme_dir {tmp_path / 'acme'}\n")
    script.chmod(0o755)
    proc = ServerProcess(["socat", "-d", "-d", f"TCP-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork",
                          f"EXEC:{script}"], env=python_env(REPO), cwd=tmp_path, terminate=True)
    try:
        proc.wait_for("listening on")
        cert, _ = served(port, "i.test")
        assert self_signed(cert)
        proc.wait_for("Server closing!")
        assert proc.count("INET serves the certificates in SSL_acme_dir and orders none") == 1
        assert proc.count("cannot bind") == 0 and proc.count("ACME: order") == 0
    finally:
        proc.stop()
        http.close()


def test_http_01_through_the_http_personality(pebble: Pebble, tmp_path: Path) -> None:
    """SSL_acme_http_listen http: no responder of its own; the GHTTPServer's plain port
    answers the CA's HTTP-01 requests, its other paths are the application's."""

    class App(GHTTPServer):
        def process_http_request(self, client: Any) -> None:
            client.http.send_response(200, "app\n")

    log = Lines()
    ports = [f"127.0.0.1:{pebble.http_port}/tcp", f"127.0.0.1:{pebble.tls_port}/ssl"]
    server = App(port=ports, SSL_acme_domains="w.test", SSL_acme_directory=pebble.directory,
                 SSL_acme_ca_file=pebble.ca_file, SSL_acme_dir=str(tmp_path / "acme"),
                 SSL_acme_challenge="http-01", SSL_acme_http_listen="http",
                 log_function=log, log_level=2)
    with ServerThread(server):
        wait_until(lambda: log.count("certificate issued") or log.count("failed"), 30)
        assert log.count("certificate issued for w.test") == 1, log.text()
        assert log.count("HTTP-01 challenge answered") >= 1
        assert log.count("HTTP-01 responder") == 0  # none of its own
        verify_with_root(pebble, pebble.tls_port, "w.test")
        base = f"http://127.0.0.1:{pebble.http_port}"
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{base}/.well-known/acme-challenge/nothing", timeout=5)
        assert missing.value.code == 404
        with pytest.raises(urllib.error.HTTPError):  # never a path out of SSL_acme_dir
            urllib.request.urlopen(f"{base}/.well-known/acme-challenge/..%2Faccounts",
                                   timeout=5)
        with urllib.request.urlopen(f"{base}/other", timeout=5) as answer:
            assert answer.read() == b"app\n"


def test_a_certificate_file_stays_the_default_beside_acme_names(tmp_path: Path) -> None:
    """SSL_cert_file given too: it serves clients without SNI (and unknown names); the ACME
    names get their own (here the interim one: no CA reachable)."""
    ca = trustme.CA()
    leaf = ca.issue_cert("default.test")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    server = Echo(port="127.0.0.1:0/ssl", SSL_cert_file=str(tmp_path / "cert.pem"),
                  SSL_key_file=str(tmp_path / "key.pem"), SSL_acme_domains="e.test",
                  SSL_acme_directory=f"https://127.0.0.1:{free_port()}/dir",
                  SSL_acme_dir=str(tmp_path / "acme"), log_function=Lines(), log_level=2)
    with ServerThread(server):
        port = server.listeners[0].sock.getsockname()[1]
        acme, _ = served(port, "e.test")
        assert self_signed(acme) and "e.test" in acme.subject.rfc4514_string()
        other, _ = served(port, "unknown.test")
        assert "default.test" in str(other.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName))


def test_external_account_binding(tmp_path: Path) -> None:
    """A CA that requires External Account Binding (ZeroSSL's way): refused without one, with
    a wrong MAC key, accepted with the right one (our RFC 8555 7.3.4 binding)."""
    needs_pebble()
    key = base64.urlsafe_b64encode(b"k" * 32).decode().rstrip("=")
    ca = Pebble(tmp_path, free_port(), free_port(), eab={"kid-1": key}).start()
    try:
        def client() -> AcmeClient:
            return AcmeClient(ca.directory, ec.generate_private_key(ec.SECP256R1()), ca.ca_file)

        with pytest.raises(AcmeProblem, match="externalAccountRequired"):
            client().register(None)
        with pytest.raises(AcmeProblem):
            client().register(None, ("kid-1", b"wrong" * 8))
        settings = acme_settings({"SSL_acme_domains": "a.test", "SSL_acme_eab_kid": "kid-1",
                                  "SSL_acme_eab_hmac_key": key}, "port x")
        assert settings.eab is not None and key not in repr(settings)
        assert client().register("ops@a.test", settings.eab).startswith("https://127.0.0.1:")
    finally:
        ca.stop()


def test_ports_with_the_same_acme_options_share_one_context(tmp_path: Path) -> None:
    server = Echo(port=["127.0.0.1:0/ssl", "127.0.0.1:0/ssl"], SSL_acme_domains="s.test",
                  SSL_acme_directory=f"https://127.0.0.1:{free_port()}/dir",
                  SSL_acme_dir=str(tmp_path / "acme"), log_function=Lines(), log_level=2)
    with ServerThread(server):
        assert server.tls_contexts is not None and len(server.tls_contexts.handles) == 1
        serials = {served(listener.sock.getsockname()[1], "s.test")[0].serial_number
                   for listener in server.listeners}
        assert len(serials) == 1


def test_a_certificate_past_two_thirds_of_its_life_is_renewed_at_start(pebble: Pebble,
                                                                       tmp_path: Path) -> None:
    """The schedule: a certificate on disk 60 days into a 70-day life (past 2/3) is served at
    once and renewed by the CA right away; the renewed one is served without a restart."""
    folder = tmp_path / "acme"
    old, key = make_self_signed(["t.test"], days=10)
    now = datetime.datetime.now(datetime.timezone.utc)
    aged = (x509.CertificateBuilder().subject_name(old.subject).issuer_name(old.issuer)
            .public_key(key.public_key()).serial_number(old.serial_number)
            .not_valid_before(now - datetime.timedelta(days=60))
            .not_valid_after(now + datetime.timedelta(days=10))
            .add_extension(old.extensions.get_extension_for_class(
                x509.SubjectAlternativeName).value, critical=False)
            .sign(key, hashes.SHA256()))
    AcmeStore(str(folder)).save(("t.test",), pebble.directory,
                                aged.public_bytes(serialization.Encoding.PEM), key)
    log = Lines()
    with ServerThread(acme_server(pebble, folder, log, "t.test")):
        assert log.count("serving the certificate on disk for t.test") == 1, log.text()
        wait_until(lambda: log.count("certificate renewed") or log.count("failed"), 30)
        assert log.count("certificate renewed for t.test") == 1, log.text()
        verify_with_root(pebble, pebble.tls_port, "t.test")
