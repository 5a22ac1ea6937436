"""Issue 3, point 6: ``server.reload_tls()`` rebuilds every context from its files. New
connections get the new certificate, established ones continue untouched; a reload that fails
keeps all the old contexts and logs why.

Certificate files are swapped under a running server; ``reload_tls`` runs in the server's own
thread and hub through ``ServerThread.call``.
"""

from __future__ import annotations

import logging
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from cryptography import x509
from support.net import address
from support.tls import write_leaf

from gnetserver import GServer
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(20)


class Echo(GServer):
    def process_request(self, client: Any) -> None:
        for line in client:
            client.sendall(line)


def new_leaf(ca: trustme.CA, folder: Path, name: str = "localhost") -> tuple[dict[str, str],
                                                                              int]:
    """Write a fresh certificate for ``name`` to cert.pem/key.pem; return (files, serial)."""
    leaf = ca.issue_cert(name)
    serial = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes()).serial_number
    return write_leaf(leaf, folder / "cert.pem", folder / "key.pem"), serial


def connect(server: GServer, context: ssl.SSLContext, index: int = 0) -> ssl.SSLSocket:
    raw = socket.create_connection(address(server, index), timeout=5)
    return context.wrap_socket(raw, server_hostname="localhost")


def serial_of(tls: ssl.SSLSocket) -> int:
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def serial_now(server: GServer, context: ssl.SSLContext, index: int = 0) -> int:
    """The serial number of the certificate a new connection gets."""
    with connect(server, context, index) as tls:
        return serial_of(tls)


def echo(tls: ssl.SSLSocket, text: bytes) -> bytes:
    tls.sendall(text)
    return tls.recv(100)


@pytest.fixture
def running() -> Iterator[Any]:
    threads: list[ServerThread] = []

    def start(server: GServer) -> ServerThread:
        thread = ServerThread(server).start()
        threads.append(thread)
        return thread

    yield start
    for thread in threads:
        thread.stop()


def test_new_connections_get_the_new_certificate(running: Any, ca: trustme.CA, tmp_path: Path,
                                                 client_context: ssl.SSLContext,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    files, first = new_leaf(ca, tmp_path)
    st = running(Echo(port="127.0.0.1:0/ssl", **files))
    with connect(st.server, client_context) as established:
        assert echo(established, b"one\n") == b"one\n"
        _, second = new_leaf(ca, tmp_path)
        assert serial_now(st.server, client_context) == first  # nothing changes by itself
        assert st.call(st.server.reload_tls) is True
        assert serial_now(st.server, client_context) == second
        assert echo(established, b"two\n") == b"two\n"  # the old connection goes on
        assert serial_of(established) == first
    assert "TLS reloaded: port 127.0.0.1:0/ssl" in caplog.messages


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda files: Path(files["SSL_cert_file"]).unlink(), "cannot read (No such file"),
        (lambda files: Path(files["SSL_cert_file"]).write_bytes(b"garbage\n"),
         "holds no valid PEM certificate"),
        ("other key", "does not match the certificate"),
    ],
    ids=["missing", "garbage", "wrong-key"],
)
def test_a_failed_reload_keeps_the_old_certificate(running: Any, ca: trustme.CA,
                                                   tmp_path: Path,
                                                   client_context: ssl.SSLContext,
                                                   caplog: pytest.LogCaptureFixture,
                                                   damage: Any, reason: str) -> None:
    files, first = new_leaf(ca, tmp_path)
    st = running(Echo(port="127.0.0.1:0/ssl", **files))
    with connect(st.server, client_context) as established:
        if damage == "other key":
            Path(files["SSL_key_file"]).write_bytes(ca.issue_cert("x").private_key_pem.bytes())
        else:
            damage(files)
        assert st.call(st.server.reload_tls) is False
        assert serial_now(st.server, client_context) == first
        assert echo(established, b"still\n") == b"still\n"
    failures = [m for m in caplog.messages if m.startswith("TLS reload failed")]
    assert len(failures) == 1, caplog.messages
    assert "still serving the previous certificates" in failures[0]
    assert "port 127.0.0.1:0/ssl" in failures[0] and reason in failures[0]
    _, fixed = new_leaf(ca, tmp_path)  # repaired files: the next reload succeeds
    assert st.call(st.server.reload_tls) is True
    assert serial_now(st.server, client_context) == fixed


def test_reload_is_all_or_nothing_across_ports(running: Any, ca: trustme.CA, tmp_path: Path,
                                               client_context: ssl.SSLContext) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files_a, first_a = new_leaf(ca, tmp_path / "a")
    files_b, first_b = new_leaf(ca, tmp_path / "b")
    port_b = {"host": "127.0.0.1", "port": 0, "proto": "ssl", **files_b}
    st = running(Echo(port=["127.0.0.1:0/ssl", port_b], **files_a))
    _, second_a = new_leaf(ca, tmp_path / "a")  # port a: a good new certificate
    Path(files_b["SSL_key_file"]).write_bytes(b"broken\n")  # port b: a broken key
    assert st.call(st.server.reload_tls) is False
    assert serial_now(st.server, client_context, 0) == first_a  # not half reloaded
    assert serial_now(st.server, client_context, 1) == first_b
    _, second_b = new_leaf(ca, tmp_path / "b")
    assert st.call(st.server.reload_tls) is True
    assert serial_now(st.server, client_context, 0) == second_a
    assert serial_now(st.server, client_context, 1) == second_b


def test_reload_covers_every_sni_name(running: Any, ca: trustme.CA, tmp_path: Path,
                                      client_context: ssl.SSLContext) -> None:
    (tmp_path / "a").mkdir()
    default, first = new_leaf(ca, tmp_path)
    named, first_named = new_leaf(ca, tmp_path / "a", "a.example")
    sni = {key: {"": default[key], "a.example": named[key]} for key in default}
    st = running(Echo(port="127.0.0.1:0/ssl", **sni))

    def serial_for(name: str) -> int:
        raw = socket.create_connection(address(st.server), timeout=5)
        with client_context.wrap_socket(raw, server_hostname=name) as tls:
            return serial_of(tls)

    assert (serial_for("localhost"), serial_for("a.example")) == (first, first_named)
    _, second = new_leaf(ca, tmp_path)
    _, second_named = new_leaf(ca, tmp_path / "a", "a.example")
    assert st.call(st.server.reload_tls) is True
    assert (serial_for("localhost"), serial_for("a.example")) == (second, second_named)


def test_reload_without_tls_ports(running: Any, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    st = running(Echo(port="127.0.0.1:0/tcp"))
    assert st.call(st.server.reload_tls) is False
    assert "TLS reload: no TLS port to reload" in caplog.messages


def test_call_reports_the_exception_of_the_function(running: Any) -> None:
    st = running(Echo(port="127.0.0.1:0/tcp"))

    def fails() -> None:
        raise LookupError("in the hub")

    with pytest.raises(LookupError, match="in the hub"):
        st.call(fails)
    assert st.call(lambda a, b: a + b, 2, 3) == 5


def test_reload_covers_ssl_and_ssleay_ports_together(running: Any, ca: trustme.CA,
                                                     tmp_path: Path,
                                                     client_context: ssl.SSLContext,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """Both TLS backends are in the server's one TLSContexts: reload_tls() rebuilds the
    pyOpenSSL context of the ssl port and the stdlib context of the ssleay port together."""
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    files, first = new_leaf(ca, tmp_path)
    st = running(Echo(port=["127.0.0.1:0/ssl", "127.0.0.1:0/ssleay"], **files))

    def serials() -> list[int]:
        return [serial_now(st.server, client_context, index) for index in (0, 1)]

    assert serials() == [first, first]
    with connect(st.server, client_context, 1) as established:
        _, second = new_leaf(ca, tmp_path)
        assert st.call(st.server.reload_tls) is True
        assert serials() == [second, second]
        assert echo(established, b"on\n") == b"on\n"  # an ssleay connection keeps its context
        assert serial_of(established) == first
    assert "TLS reloaded: port 127.0.0.1:0/ssl, port 127.0.0.1:0/ssleay" in caplog.messages
    # The twin: broken files leave both backends on the certificate they had.
    Path(files["SSL_key_file"]).write_bytes(b"broken\n")
    assert st.call(st.server.reload_tls) is False
    assert serials() == [second, second]


def test_reload_is_all_or_nothing_across_backends(running: Any, ca: trustme.CA,
                                                  tmp_path: Path,
                                                  client_context: ssl.SSLContext) -> None:
    """A good new certificate for the ssl port is not taken while the ssleay port's files are
    broken, and the other way round."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    files_a, first_a = new_leaf(ca, tmp_path / "a")
    files_b, first_b = new_leaf(ca, tmp_path / "b")
    port_b = {"host": "127.0.0.1", "port": 0, "proto": "ssleay", **files_b}
    st = running(Echo(port=["127.0.0.1:0/ssl", port_b], **files_a))
    _, second_a = new_leaf(ca, tmp_path / "a")
    Path(files_b["SSL_cert_file"]).unlink()  # the ssleay port's certificate is gone
    assert st.call(st.server.reload_tls) is False
    assert serial_now(st.server, client_context, 0) == first_a
    assert serial_now(st.server, client_context, 1) == first_b
    _, second_b = new_leaf(ca, tmp_path / "b")
    Path(files_a["SSL_key_file"]).write_bytes(b"broken\n")  # now the ssl port's key is bad
    assert st.call(st.server.reload_tls) is False
    assert serial_now(st.server, client_context, 1) == first_b
    _, second_a = new_leaf(ca, tmp_path / "a")
    assert st.call(st.server.reload_tls) is True
    assert serial_now(st.server, client_context, 0) == second_a
    assert serial_now(st.server, client_context, 1) == second_b
