"""Issue 14, the pure parts: the metric table and README's list, the exposition's names,
handshake failure reasons, the expiry decision, json log lines, the options' checks."""

from __future__ import annotations

import errno
import json
import os
import re
import socket

import pytest
from prometheus_client import values
from support.process import README

from gnetserver import docs, log
from gnetserver.conf import Conf
from gnetserver.errors import ConfigError, HandshakeTimeout, TLSError
from gnetserver.listen import plan_metrics_port
from gnetserver.metric_names import METRICS
from gnetserver.metrics import Metrics, ServedCertificate, answer_scrape, expiring, failure_reason
from gnetserver.metrics_prometheus import PrometheusMetrics
from gnetserver.ports import parse_ports

pytestmark = pytest.mark.timeout(30)


def test_readme_metric_list_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    current = docs.readme_table(text, docs.METRICS_START, docs.METRICS_END)
    assert current == docs.render_metrics(), \
        "README.rst's metric list is stale: run `python -m gnetserver.docs --write`"


def test_exposition_has_every_metric_of_the_table_and_no_other() -> None:
    body = PrometheusMetrics().exposition("")[0].decode()
    declared = {(name, kind) for name, kind in re.findall(r"^# TYPE (\S+) (\S+)$", body, re.M)
                if not name.endswith("_created")}  # prometheus-client's own, per counter
    assert declared == {(spec.exposed, spec.kind) for spec in METRICS}
    assert all(spec.name.startswith("gnetserver_") for spec in METRICS)
    for spec in METRICS:
        assert f"# HELP {spec.exposed} {spec.help}" in body


@pytest.mark.parametrize("exc,reason", [
    (HandshakeTimeout("TLS handshake did not finish within 1 s"), "timeout"),
    (ConnectionAbortedError(errno.ECONNABORTED, "peer closed the connection"), "peer_closed"),
    (ConnectionResetError(errno.ECONNRESET, "reset"), "peer_closed"),
    (TLSError("TLS handshake failed: no shared cipher"), "no_shared_cipher"),
    (TLSError("TLS handshake failed: peer did not return a certificate"),
     "client_cert_refused"),
    (TLSError("TLS handshake failed: certificate verify failed"), "client_cert_refused"),
    (TLSError("TLS handshake failed: tlsv13 alert certificate required"),
     "client_cert_refused"),
    (TLSError("TLS handshake failed: unsupported protocol"), "protocol_error"),
    (TLSError("TLS handshake failed: wrong version number"), "protocol_error"),
    (TLSError("TLS handshake failed: http request"), "protocol_error"),
])
def test_failure_reason(exc: BaseException, reason: str) -> None:
    assert failure_reason(exc) == reason


def test_expiring() -> None:
    day = 86400.0
    now = 1_000_000_000.0
    certs = [ServedCertificate("443", "", now + 20 * day, "CN=a"),
             ServedCertificate("443", "b.example", now + 13 * day, "CN=b"),
             ServedCertificate("8443", "", now - day, "CN=c")]
    assert [c.subject for c in expiring(certs, 14, now)] == ["CN=b", "CN=c"]
    assert [c.subject for c in expiring(certs, 30, now)] == ["CN=a", "CN=b", "CN=c"]
    assert expiring(certs, 0, now) == []  # 0: no warning


def test_json_line() -> None:
    line = log.json_line(3, log.escape("CONNECT \"x\"\n%"),
                         {"peer_addr": "127.0.0.1", "peer_port": 5, "sni": None},
                         now=0.25)
    assert "\n" not in line and line.isascii()
    record = json.loads(line)
    assert record == {"time": "1970-01-01T00:00:00.250Z", "level": 3, "pid": record["pid"],
                      "message": 'CONNECT "x"%0A%25', "peer_addr": "127.0.0.1",
                      "peer_port": 5}
    assert log.escape(line) is line  # not escaped again on its way to stderr


def plan(**values: object) -> Conf:
    return Conf().replace(**values)


def test_options() -> None:
    assert plan().log_format == "netserver" and plan(log_format="JSON").log_format == "json"
    assert plan().metrics_port is None and plan()["SSL_cert_expiry_warning"] == 14
    with pytest.raises(ConfigError, match="log_format"):
        plan(log_format="xml")
    with pytest.raises(ConfigError, match="SSL_cert_expiry_warning"):
        plan(SSL_cert_expiry_warning=-1)
    with pytest.raises(ConfigError, match="metrics_port"):
        plan(metrics_port=1.5)


def test_metrics_port_plan() -> None:
    spec = plan_metrics_port(plan(metrics_port=9100), [])
    assert spec is not None and (spec.host, spec.port, spec.proto) == ("127.0.0.1", 9100, "tcp")
    spec = plan_metrics_port(plan(metrics_port="[::1]:9100/ssl"), [])
    assert spec is not None and (spec.host, spec.proto) == ("::1", "ssl")
    assert plan_metrics_port(plan(), []) is None
    with pytest.raises(ConfigError, match="not udp"):
        plan_metrics_port(plan(metrics_port="9100/udp"), [])
    ports = parse_ports("127.0.0.1:9100")
    with pytest.raises(ConfigError, match="a port of their own"):
        plan_metrics_port(plan(metrics_port="9100"), ports)


@pytest.mark.parametrize("before", [None, "/elsewhere"])
def test_prefork_mode_puts_the_process_back_at_close(before: str | None,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Multiprocess mode sets PROMETHEUS_MULTIPROC_DIR and prometheus-client's value class
    for the process; close() removes the directory and restores both as they were."""
    if before is None:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    else:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", before)
    value_class = values.ValueClass
    metrics = PrometheusMetrics.for_prefork()
    folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    assert folder != before and os.path.isdir(folder)
    assert values.ValueClass is not value_class
    metrics.close()
    assert os.environ.get("PROMETHEUS_MULTIPROC_DIR") == before
    assert values.ValueClass is value_class
    assert not os.path.exists(folder)


class _SocketClient:
    """What answer_scrape uses of a Client, over a real socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.file = sock, sock.makefile("rb")

    def settimeout(self, timeout: float) -> None:
        self.sock.settimeout(timeout)

    def readline(self, limit: int) -> bytes:
        return self.file.readline(limit)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)


@pytest.mark.parametrize("timeout,status", [(5.0, 200), (0.0, 408)])
def test_scrape_head_past_its_deadline_is_408(timeout: float, status: int) -> None:
    """The whole head is there, but the deadline passed before its header lines were read
    (timeout 0: at once): 408, not an answer built from part of the head."""
    server, peer = socket.socketpair()
    with server, peer:
        peer.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        assert answer_scrape(_SocketClient(server), Metrics(), timeout) == status
        assert peer.recv(100).startswith(f"HTTP/1.1 {status} ".encode())
