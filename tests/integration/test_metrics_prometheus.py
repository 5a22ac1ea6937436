"""Issue 14 against the real Prometheus tools: a Prometheus server started here scrapes a
gnetserver under a small bounded load (good clients, clients offering only TLS 1.0, clients
that stall in the handshake, a denied address) and its HTTP API must report exactly what the
load did; ``promtool`` finds nothing to say about the exposition, the example scrape
configuration and the example alert rules."""

from __future__ import annotations

import json
import os
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from support.net import wait_until
from support.process import REPO
from support.prometheus import Prometheus, needs_prometheus, promtool

from gnetserver import GServer

pytestmark = [needs_prometheus, pytest.mark.timeout(60)]

GOOD, OLD, STALLED, DENIED = 5, 3, 2, 2


def tls10_hello() -> bytes:
    """A ClientHello that offers TLS 1.0 only (no supported_versions extension, two TLS 1.0
    cipher suites): a server whose floor is TLS 1.2 answers with a protocol_version alert."""
    body = (b"\x03\x01" + os.urandom(32) + b"\x00"  # client_version 1.0, random, no session
            + b"\x00\x04\x00\x2f\x00\x35" + b"\x01\x00")  # AES128-SHA, AES256-SHA; no compression
    handshake = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + len(handshake).to_bytes(2, "big") + handshake


def until_closed(sock: socket.socket) -> None:
    """Read until the server closes (EOF or reset), bounded by the socket's timeout."""
    try:
        while sock.recv(4096):
            pass
    except OSError:
        pass


def good(port: int, context: ssl.SSLContext) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
            context.wrap_socket(raw, server_hostname="localhost") as tls:
        tls.sendall(b"hello\r\nquit\r\n")
        until_closed(tls)


def old(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(tls10_hello())
        until_closed(sock)


def stalled(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        until_closed(sock)  # sends nothing: timeout_handshake ends it


def denied(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10,
                                  source_address=("127.0.0.2", 0)) as sock:
        until_closed(sock)


def run_load(port: int, context: ssl.SSLContext) -> None:
    jobs: list[Callable[[], None]] = [lambda: good(port, context)] * GOOD
    jobs += [lambda: old(port)] * OLD + [lambda: stalled(port)] * STALLED
    jobs += [lambda: denied(port)] * DENIED
    threads = [threading.Thread(target=job) for job in jobs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not any(thread.is_alive() for thread in threads)


def scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        assert answer.headers["Content-Type"].startswith("text/plain")
        body: bytes = answer.read()
        return body


def test_prometheus_scrapes_what_the_load_did(serve: Callable[..., GServer],
                                              certs: dict[str, str],
                                              client_context: ssl.SSLContext,
                                              tmp_path: Path) -> None:
    server = serve(port=["127.0.0.1:0/ssl"], metrics_port="0", timeout_handshake=1.0,
                   cidr_allow=["127.0.0.1/32"], cidr_deny=["127.0.0.2/32"], **certs)
    tls_port = server.listeners[0].port
    metrics_port = next(lst.port for lst in server.listeners if lst.serves_metrics)
    prometheus = Prometheus(tmp_path, [f"127.0.0.1:{metrics_port}"])
    try:
        run_load(tls_port, client_context)  # while Prometheus starts
        prometheus.wait_ready()
        on_port = f'{{port="{tls_port}"}}'
        expected = {"protocol_error": OLD, "timeout": STALLED, "denied_before_tls": DENIED}

        def scraped() -> bool:
            failures = prometheus.values(
                f"sum by (reason) (gnetserver_tls_handshake_failures_total{on_port})", "reason")
            done = prometheus.values(f"gnetserver_tls_handshakes_total{on_port}", "port")
            return failures == expected and done == {str(tls_port): GOOD}

        wait_until(scraped, 20, "Prometheus to scrape the load's handshakes")

        def one(expr: str) -> float:
            found = prometheus.query(expr)
            assert len(found) == 1, (expr, found)
            return float(found[0]["value"][1])

        assert one(f"gnetserver_connections_accepted_total{on_port}") == \
            GOOD + OLD + STALLED + DENIED
        assert one(f"gnetserver_connections_denied_total{on_port}") == DENIED
        assert one(f"gnetserver_connections_active{on_port}") == 0
        assert one(f"gnetserver_tls_handshake_duration_seconds_count{on_port}") == GOOD
        assert one(f'sum(gnetserver_tls_negotiated_total{{port="{tls_port}",'
                   f'version="TLSv1.3"}})') == GOOD
        assert one(f"gnetserver_tls_sessions_resumed_total{on_port}") == 0
        assert one("gnetserver_sessions_in_use") == 0
        assert one("gnetserver_sessions_waiting") == 0
        assert one(f"gnetserver_received_bytes_total{on_port}") > GOOD * 200  # ClientHellos
        assert one(f"gnetserver_sent_bytes_total{on_port}") > GOOD * 500  # certificates
        leaf = x509.load_pem_x509_certificate(Path(certs["SSL_cert_file"]).read_bytes())
        assert one(f'gnetserver_certificate_expiry_timestamp_seconds{{port="{tls_port}",'
                   f'sni=""}}') == leaf.not_valid_after_utc.timestamp()
        assert one(f'gnetserver_certificate_expiring{{port="{tls_port}"}}') == 0
        assert one('up{job="gnetserver"}') == 1
    finally:
        prometheus.stop()
    checked = promtool("check", "metrics", stdin=scrape(metrics_port))
    assert checked.returncode == 0 and not checked.stdout.strip() \
        and not checked.stderr.strip(), checked


@pytest.mark.parametrize("command,path", [("config", "prometheus.yml"), ("rules", "alerts.yml")])
def test_examples_pass_promtool(command: str, path: str) -> None:
    checked = promtool("check", command, str(REPO / "examples" / path))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS" in checked.stdout


def test_alert_rules_fire_as_documented(tmp_path: Path) -> None:
    """promtool's rule unit test: the certificate alert fires for a certificate flagged as
    expiring, the handshake alert above 5 % failures only (instance a: 10 %, b: 1 %)."""
    port = {"port": "443"}

    def series(name: str, values: str, **labels: str) -> dict[str, str]:
        text = ",".join(f'{key}="{value}"' for key, value in labels.items())
        return {"series": f"{name}{{{text}}}", "values": values}

    failures = "gnetserver_tls_handshake_failures_total"
    handshakes = "gnetserver_tls_handshakes_total"
    unit = {
        "rule_files": [str(REPO / "examples" / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [
                series("gnetserver_certificate_expiring", "1x30", instance="a", **port),
                series("gnetserver_certificate_expiry_timestamp_seconds", "86400x30",
                       instance="a", **port),
                series(handshakes, "0+90x40", instance="a", **port),
                series(failures, "0+10x40", instance="a", reason="timeout", **port),
                series(handshakes, "0+99x40", instance="b", **port),
                series(failures, "0+1x40", instance="b", reason="timeout", **port),
            ],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": "GnetserverCertificateExpiring",
                 "exp_alerts": [{  # sni "": Prometheus has no such label
                     "exp_labels": {"severity": "warning", "instance": "a", **port},
                     "exp_annotations": {
                         "summary": "Certificate of port 443 (SNI '') expires soon",
                         "description": "It expires 1970-01-02 00:00:00 +0000 UTC. Renew "
                                        "it, then reload (SIGHUP)."}}]},
                {"eval_time": "30m", "alertname": "GnetserverHandshakeFailures",
                 "exp_alerts": [{
                     "exp_labels": {"severity": "warning", "instance": "a", **port},
                     "exp_annotations": {
                         "summary": "10% of TLS handshakes fail on port 443",
                         "description": "See gnetserver_tls_handshake_failures_total by "
                                        "reason (timeout, protocol_error, no_shared_cipher, "
                                        "client_cert_refused...) and the level-3 log "
                                        "lines."}}]},
            ],
        }],
    }
    tests = tmp_path / "alerts_test.yml"
    tests.write_text(json.dumps(unit))  # JSON is YAML
    checked = promtool("test", "rules", str(tests))
    assert checked.returncode == 0, checked.stdout + checked.stderr
