"""Issue 14 with real sockets and real TLS, scraped directly (the real Prometheus is in
test_metrics_prometheus.py): the metrics port's HTTP answers, its TLS and access rules, the
certificate expiry warning and reloads, json log lines, and PreFork's aggregation over worker
processes."""

from __future__ import annotations

import datetime
import http.client
import json
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from support.net import wait_until
from support.process import REPO, ServerProcess, python_env
from support.prometheus import samples
from support.tls import write_leaf

from gnetserver import GServer
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(40)


def metrics_of(server: GServer) -> tuple[str, int]:
    listener = next(lst for lst in server.listeners if lst.serves_metrics)
    return listener.host, int(listener.port)


def get(where: tuple[str, int], path: str = "/metrics", method: str = "GET",
        context: ssl.SSLContext | None = None) -> tuple[int, dict[str, str], bytes]:
    conn: http.client.HTTPConnection
    if context is None:
        conn = http.client.HTTPConnection(*where, timeout=5)
    else:
        conn = http.client.HTTPSConnection(*where, timeout=5, context=context)
    try:
        conn.request(method, path)
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


def echo(port: int, context: ssl.SSLContext | None = None) -> str:
    """One echo session: the welcome line, then `quit`; the welcome line."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        sock: Any = raw if context is None else context.wrap_socket(
            raw, server_hostname="localhost")
        welcome = sock.recv(200).decode()
        sock.sendall(b"quit\r\n")
        while sock.recv(4096):
            pass
        return str(welcome)


def test_scrape_answers_and_counts(serve: Callable[..., GServer], certs: dict[str, str],
                                   client_context: ssl.SSLContext) -> None:
    server = serve(port=["127.0.0.1:0/ssl", "127.0.0.1:0/tcp"], metrics_port="0", **certs)
    tls_port, tcp_port = server.listeners[0].port, server.listeners[1].port
    echo(tls_port, client_context)
    echo(tcp_port)
    echo(tcp_port)
    where = metrics_of(server)
    status, headers, body = get(where)
    assert status == 200 and headers["Connection"] == "close"
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    found = samples(body)
    assert found[f'gnetserver_connections_accepted_total{{port="{tls_port}",proto="ssl"}}'] == 1
    assert found[f'gnetserver_connections_accepted_total{{port="{tcp_port}",proto="tcp"}}'] == 2
    assert found[f'gnetserver_tls_handshakes_total{{port="{tls_port}",proto="ssl"}}'] == 1
    assert found[f'gnetserver_received_bytes_total{{port="{tcp_port}",proto="tcp"}}'] == 12
    assert found[f'gnetserver_sent_bytes_total{{port="{tcp_port}",proto="tcp"}}'] > 40
    assert found["gnetserver_sessions_in_use"] == 0
    # the scrape itself is a connection of the metrics port, open while it renders
    assert found[f'gnetserver_connections_active{{port="{where[1]}",proto="tcp"}}'] == 1
    assert get(where, "/metrics?x=1", "HEAD")[::2] == (200, b"")
    assert get(where, "/")[0] == 404
    assert get(where, "/metrics", "POST")[0] == 405
    openmetrics = http.client.HTTPConnection(*where, timeout=5)
    openmetrics.request("GET", "/metrics", headers={
        "Accept": "application/openmetrics-text; version=1.0.0"})
    answer = openmetrics.getresponse()
    assert answer.getheader("Content-Type").startswith("application/openmetrics-text")
    assert answer.read().endswith(b"# EOF\n")
    openmetrics.close()
    with socket.create_connection(where, timeout=5) as sock:  # not HTTP at all
        sock.sendall(b"hello\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 400 ")


def test_metrics_port_over_tls_with_access_rules(serve: Callable[..., GServer],
                                                  certs: dict[str, str],
                                                  client_context: ssl.SSLContext) -> None:
    server = serve(port=["127.0.0.1:0"], metrics_port={"port": 0, "proto": "ssl", **certs},
                   cidr_allow=["127.0.0.1/32"], cidr_deny=["127.0.0.2/32"])
    where = metrics_of(server)
    with pytest.raises(OSError):  # not plain HTTP
        get(where)
    with socket.create_connection(where, timeout=5, source_address=("127.0.0.2", 0)) as sock:
        assert sock.recv(10) == b""  # closed before any TLS
    status, _, body = get(where, context=client_context)
    assert status == 200
    found = samples(body)
    label = f'{{port="{where[1]}",proto="ssl"}}'
    assert found[f"gnetserver_connections_denied_total{label}"] == 1
    assert found[f"gnetserver_tls_handshakes_total{label}"] == 1
    assert found[f'gnetserver_tls_handshake_failures_total{{port="{where[1]}",proto="ssl",'
                 f'reason="protocol_error"}}'] == 1  # plain HTTP to a TLS port
    assert found[f'gnetserver_tls_handshake_failures_total{{port="{where[1]}",proto="ssl",'
                 f'reason="denied_before_tls"}}'] == 1


def test_certificate_expiry_warning_and_reloads(ca: trustme.CA, tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    soon = ca.issue_cert("localhost", not_after=now + datetime.timedelta(days=5))
    files = write_leaf(soon, tmp_path / "cert.pem", tmp_path / "key.pem")
    lines: list[tuple[int, str]] = []
    server = GServer(port=["127.0.0.1:0/ssl"], metrics_port="0",
                     log_function=lambda level, message: lines.append((level, message)),
                     **files)
    with ServerThread(server) as thread:
        warned = [msg for level, msg in lines if level == 1 and "WARNING: the certificate" in msg]
        port = server.listeners[0].port
        assert len(warned) == 1 and f"port {port}" in warned[0]
        assert "in 5.0 days" in warned[0] or "in 4.9 days" in warned[0]
        assert "SSL_cert_expiry_warning 14 days" in warned[0]
        where = metrics_of(server)
        found = samples(get(where)[2])
        assert found[f'gnetserver_certificate_expiring{{port="{port}",sni=""}}'] == 1
        expiry = f'gnetserver_certificate_expiry_timestamp_seconds{{port="{port}",sni=""}}'
        leaf = x509.load_pem_x509_certificate(soon.cert_chain_pems[0].bytes())
        assert found[expiry] == leaf.not_valid_after_utc.timestamp()
        renewed = ca.issue_cert("localhost", not_after=now + datetime.timedelta(days=90))
        write_leaf(renewed, tmp_path / "cert.pem", tmp_path / "key.pem")
        assert thread.call(server.reload_tls) is True
        (tmp_path / "key.pem").write_text("garbage")
        assert thread.call(server.reload_tls) is False
        found = samples(get(where)[2])
        assert found[f'gnetserver_certificate_expiring{{port="{port}",sni=""}}'] == 0
        assert found[expiry] > (now + datetime.timedelta(days=89)).timestamp()
        assert found['gnetserver_reloads_total{result="ok"}'] == 1
        assert found['gnetserver_reloads_total{result="failed"}'] == 1
        assert len([m for level, m in lines if "WARNING: the certificate" in m]) == 1


def test_json_log_lines(serve: Callable[..., GServer], certs: dict[str, str],
                        client_context: ssl.SSLContext, tmp_path: Path) -> None:
    log_file = tmp_path / "server.log"
    server = serve(port=["127.0.0.1:0/ssl"], log_format="json", log_file=str(log_file),
                   log_level=3, **certs)
    port = server.listeners[0].port
    echo(port, client_context)
    wait_until(lambda: "CONNECT" in log_file.read_text(), 5, "the CONNECT line")
    records = [json.loads(line) for line in log_file.read_text().splitlines()]
    assert all({"time", "level", "pid", "message"} <= record.keys() for record in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
               for record in records)
    ready = next(r for r in records if r["message"].startswith("Server ready"))
    assert ready["level"] == 2 and "peer_addr" not in ready
    connect = next(r for r in records if r["message"].startswith("CONNECT SSL"))
    assert connect["level"] == 3 and connect["peer_addr"] == "127.0.0.1"
    assert connect["port"] == port and connect["proto"] == "ssl"
    assert connect["tls_version"] == "TLSv1.3" and connect["sni"] == "localhost"
    assert connect["cipher"].startswith("TLS_")


def test_prefork_one_scrape_sees_every_worker(spawn: Callable[..., Any],
                                              tmp_path: Path) -> None:
    server: ServerProcess = spawn(
        [sys.executable, "-m", "gnetserver", "--server", "gnetserver.server:GServer",
         "--server_type", "PreFork", "--workers", "2", "--port", "127.0.0.1:0",
         "--metrics_port", "0"],
        env=dict(python_env(REPO), TMPDIR=str(tmp_path)), terminate=True)
    (_, port, _), (_, metrics_port, _) = server.ports()
    server.wait_for(r"Started worker \d+", 2)
    assert len(list(tmp_path.glob("gnetserver-metrics-*"))) == 1
    pids = [int(re.search(r"\((\d+)\)", echo(port)).group(1)) for _ in range(6)]
    accepted = f'gnetserver_connections_accepted_total{{port="{port}",proto="tcp"}}'
    active = f'gnetserver_connections_active{{port="{port}",proto="tcp"}}'

    def scrape() -> dict[str, float]:
        return samples(get(("127.0.0.1", metrics_port))[2])

    # the last sessions' lingering closes end soon after the client saw EOF
    wait_until(lambda: scrape()[active] == 0, 5, "every connection to end")
    for _ in range(4):  # any worker answers, each with every process's figures
        found = scrape()
        assert found[accepted] == 6 and found[active] == 0
    gone = pids[0]
    os.kill(gone, signal.SIGTERM)
    server.wait_for(rf"Worker {gone} ")
    assert scrape()[accepted] == 6  # a dead worker's counts stay
    server.send(signal.SIGTERM)
    assert server.wait_exit() == 0
    assert list(tmp_path.glob("gnetserver-metrics-*")) == []  # removed at close


def test_syslog_drops_are_counted(serve: Callable[..., GServer], syslog_socket: Any) -> None:
    path, _ = syslog_socket  # never read: its queue fills at once
    server = serve(port=["127.0.0.1:0"], metrics_port="0", log_file="Sys::Syslog",
                   syslog_logsock=path)
    for index in range(300):
        server.log(2, f"line {index} of a syslog that does not read")
    dropped = server.logs.targets.dropped() if server.logs.targets is not None else 0
    assert dropped > 0
    assert samples(get(metrics_of(server))[2])["gnetserver_log_lines_dropped_total"] == dropped


def test_handshake_failure_reasons_of_real_clients(serve: Callable[..., GServer],
                                                   certs: dict[str, str], ca: trustme.CA,
                                                   tmp_path: Path) -> None:
    """A client without the certificate a port requires, and a TLS 1.2 client offering only a
    cipher suite the secure defaults leave out, each counted under its reason."""
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    server = serve(port=["127.0.0.1:0/ssl"], metrics_port="0", SSL_ca_file=str(ca_file),
                   SSL_verify_mode=3, **certs)
    port = server.listeners[0].port
    no_cert = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    no_cert.check_hostname, no_cert.verify_mode = False, ssl.CERT_NONE
    old_cipher = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old_cipher.check_hostname, old_cipher.verify_mode = False, ssl.CERT_NONE
    old_cipher.maximum_version = ssl.TLSVersion.TLSv1_2
    old_cipher.set_ciphers("AES128-SHA")  # CBC, no forward secrecy: not in the defaults
    for context in (no_cert, old_cipher):
        with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port),
                                                              timeout=5) as raw:
            with context.wrap_socket(raw) as tls:  # TLS 1.3: the refusal comes on read
                tls.recv(10)

    def reasons() -> dict[str, float]:
        found = samples(get(metrics_of(server))[2])
        prefix = f'gnetserver_tls_handshake_failures_total{{port="{port}",proto="ssl",reason="'
        return {name[len(prefix):-2]: value for name, value in found.items()
                if name.startswith(prefix)}

    wait_until(lambda: reasons() == {"client_cert_refused": 1, "no_shared_cipher": 1}, 5,
               f"both failures counted (now {reasons()})")


def test_slots_waiting_and_resumed_sessions(serve: Callable[..., GServer],
                                            certs: dict[str, str]) -> None:
    """max_servers 1: a second session waits for the slot the first holds (both gauges say
    so); a TLS 1.2 client resuming its session is counted as resumed."""
    server = serve(port=["127.0.0.1:0/ssl"], metrics_port="0", max_servers=1, **certs)
    port = server.listeners[0].port
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    context.maximum_version = ssl.TLSVersion.TLSv1_2  # the session is known after the handshake

    def scrape() -> dict[str, float]:
        return samples(get(metrics_of(server))[2])

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw1, \
            context.wrap_socket(raw1) as first:
        assert first.recv(100).startswith(b"Welcome")  # in its session: the slot is taken
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw2, \
                context.wrap_socket(raw2, session=first.session) as second:
            assert second.session_reused
            wait_until(lambda: scrape()["gnetserver_sessions_waiting"] == 1, 5,
                       "the second session to wait")
            assert scrape()["gnetserver_sessions_in_use"] == 1
            first.sendall(b"quit\r\n")
            assert second.recv(100).startswith(b"Welcome")  # the slot passed on
            second.sendall(b"quit\r\n")
    label = f'{{port="{port}",proto="ssl"}}'
    wait_until(lambda: scrape()[f"gnetserver_connections_active{label}"] == 0, 5,
               "both sessions to end")
    found = scrape()
    assert found["gnetserver_sessions_in_use"] == 0 and found["gnetserver_sessions_waiting"] == 0
    assert found[f"gnetserver_tls_sessions_resumed_total{label}"] == 1
    assert found[f"gnetserver_tls_handshakes_total{label}"] == 2


def test_daily_check_says_an_expired_certificate(ca: trustme.CA, tmp_path: Path) -> None:
    """At start the TLS layer says an expired certificate (once); the daily check says it
    too, from what the start read (the file is not read again), and the gauge flags it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    gone = ca.issue_cert("localhost", not_before=now - datetime.timedelta(days=30),
                         not_after=now - datetime.timedelta(days=1))
    files = write_leaf(gone, tmp_path / "cert.pem", tmp_path / "key.pem")
    lines: list[tuple[int, str]] = []
    server = GServer(port=["127.0.0.1:0/ssl"], metrics_port="0",
                     log_function=lambda level, message: lines.append((level, message)),
                     **files)
    with ServerThread(server) as thread:
        assert [m for _, m in lines if "expired" in m and "SSL_cert_expiry_warning" in m] == []
        port = server.listeners[0].port
        assert samples(get(metrics_of(server))[2])[
            f'gnetserver_certificate_expiring{{port="{port}",sni=""}}'] == 1
        (tmp_path / "cert.pem").unlink()  # the daily check uses what the start read
        flagged = thread.call(server.check_certificates, True)
        assert [cert.port for cert in flagged] == [str(port)]
        said = [(level, m) for level, m in lines if "SSL_cert_expiry_warning" in m]
        assert len(said) == 1 and said[0][0] == 1 and "expired on" in said[0][1]


def test_expiry_gauge_per_sni_name(serve: Callable[..., GServer], ca: trustme.CA,
                                   tmp_path: Path) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    default = write_leaf(ca.issue_cert("localhost"), tmp_path / "a.pem", tmp_path / "a.key")
    other = write_leaf(ca.issue_cert("b.example", not_after=now + datetime.timedelta(days=3)),
                       tmp_path / "b.pem", tmp_path / "b.key")
    server = serve(port=["127.0.0.1:0/ssl"], metrics_port="0",
                   SSL_cert_file={"": default["SSL_cert_file"],
                                  "b.example": other["SSL_cert_file"]},
                   SSL_key_file={"": default["SSL_key_file"],
                                 "b.example": other["SSL_key_file"]})
    port = server.listeners[0].port
    found = samples(get(metrics_of(server))[2])
    assert found[f'gnetserver_certificate_expiring{{port="{port}",sni=""}}'] == 0
    assert found[f'gnetserver_certificate_expiring{{port="{port}",sni="b.example"}}'] == 1
    assert found[f'gnetserver_certificate_expiry_timestamp_seconds{{port="{port}",'
                 f'sni="b.example"}}'] < (now + datetime.timedelta(days=4)).timestamp()
