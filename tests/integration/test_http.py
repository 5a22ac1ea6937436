"""The HTTP personality (GHTTPServer) with real clients over real TLS: requests, curl, and
raw TLS sockets for what clients will not send (pipelining, malformed and slow requests)."""

from __future__ import annotations

import shutil
import socket
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from wsgiref.validate import WSGIWarning, validator

import gevent
import pytest
import requests
import trustme
from support.net import poll, read_until_eof

from gnetserver.http import GHTTPServer
from gnetserver.testing import ServerThread

pytestmark = pytest.mark.timeout(30)


class Echo(GHTTPServer):
    """Answers with the request's facts as ``KEY=value`` lines; /stream streams three chunks."""

    def process_http_request(self, client: Any) -> None:
        http = client.http
        if http.request.path == "/stream":
            http.send_status(200)
            http.send_header("Content-Type", "text/plain")
            for number in range(3):
                http.send_body(f"part {number}\n")
                http.flush()
            return
        body = http.read()
        env = http.env
        lines = [f"{key}={env.get(key)}" for key in (
            "REQUEST_METHOD", "PATH_INFO", "QUERY_STRING", "REMOTE_ADDR", "REMOTE_PORT",
            "HTTPS", "SSL_PROTOCOL", "SSL_ALPN", "HTTP_X_TEST", "SERVER_PROTOCOL")]
        lines.append(f"BODY={body.decode('latin-1')}")
        http.send_response(200, "\n".join(lines) + "\n")


def facts(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


class Logged:
    """A log_function keeping every (level, message)."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def __call__(self, level: int, message: str) -> None:
        self.lines.append((level, message))

    def text(self, level: int) -> str:
        return "\n".join(message for lvl, message in self.lines if lvl == level)


@pytest.fixture
def http_server(serve: Callable[..., Any], certs: dict[str, str]
                ) -> Callable[..., tuple[Any, str, Logged]]:
    """Start an HTTP server on a TLS port; returns (server, base URL, its log)."""

    def start(cls: type[GHTTPServer] = Echo, **options: Any) -> tuple[Any, str, Logged]:
        logged = Logged()
        options.setdefault("log_level", 3)
        server = serve(cls, port="127.0.0.1:0/ssl", log_function=logged, **certs, **options)
        port = server.listeners[0].port
        return server, f"https://localhost:{port}", logged

    return start


@pytest.fixture
def session(ca_file: str) -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.verify, s.trust_env = ca_file, False  # not REQUESTS_CA_BUNDLE, no proxies
        yield s


def raw_tls(url: str, client_context: ssl.SSLContext) -> ssl.SSLSocket:
    port = int(url.rsplit(":", 1)[1])
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    return client_context.wrap_socket(sock, server_hostname="localhost")


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (.ci/run installs it)")
    return subprocess.run(["curl", "-sS", "--max-time", "10", *args], capture_output=True,
                          text=True, timeout=20)


# -- keep-alive, environment, chunked, HEAD, HTTP/1.0 ------------------------------------------


def test_keep_alive_reuses_one_connection_and_env(http_server: Any,
                                                  session: requests.Session) -> None:
    """Three requests from one requests.Session travel on one TLS connection (same
    REMOTE_PORT); the environment has the CGI variables and the TLS facts (ALPN http/1.1)."""
    _, url, _ = http_server()
    answers = [facts(session.get(f"{url}/a/b?x={n}", headers={"X-Test": "t"}).text)
               for n in range(3)]
    assert len({answer["REMOTE_PORT"] for answer in answers}) == 1
    first = answers[0]
    assert first["REQUEST_METHOD"] == "GET" and first["PATH_INFO"] == "/a/b"
    assert first["QUERY_STRING"] == "x=0" and first["REMOTE_ADDR"] == "127.0.0.1"
    assert first["HTTPS"] == "on" and first["SSL_PROTOCOL"].startswith("TLSv1.")
    assert first["SSL_ALPN"] == "http/1.1" and first["HTTP_X_TEST"] == "t"


def test_chunked_upload_and_chunked_response(http_server: Any,
                                             session: requests.Session) -> None:
    """A generator body goes up chunked; a flushed response comes back chunked."""
    _, url, _ = http_server()
    answer = session.post(f"{url}/up", data=(part for part in [b"abc", b"def", b"g" * 70000]))
    assert facts(answer.text)["BODY"] == "abcdef" + "g" * 70000
    streamed = session.get(f"{url}/stream")
    assert streamed.headers["Transfer-Encoding"] == "chunked"
    assert streamed.text == "part 0\npart 1\npart 2\n"


def test_head_has_length_and_no_body_then_keep_alive(http_server: Any,
                                                     session: requests.Session) -> None:
    _, url, _ = http_server()
    head = session.head(f"{url}/h")
    get = session.get(f"{url}/h")
    assert head.status_code == 200 and head.content == b""
    # what a GET would say: the body names the method, one letter longer
    assert int(head.headers["Content-Length"]) == len(get.content) + 1
    assert facts(get.text)["REQUEST_METHOD"] == "GET"  # the HEAD left the connection in step


def test_curl_expect_continue_head_and_http10(http_server: Any, ca_file: str,
                                              tmp_path: Path) -> None:
    """curl: a large upload with Expect: 100-continue gets its 100 then 200; curl -I; an
    HTTP/1.0 request is answered and the connection closed."""
    _, url, _ = http_server()
    upload = tmp_path / "upload.bin"
    upload.write_bytes(b"u" * 200_000)
    done = curl("-v", "--cacert", ca_file, "-H", "Expect: 100-continue", "--data-binary",
                f"@{upload}", f"{url}/upload")
    assert "HTTP/1.1 100 Continue" in done.stderr, done.stderr
    assert facts(done.stdout)["BODY"] == "u" * 200_000
    head = curl("-I", "--cacert", ca_file, f"{url}/x")
    assert head.stdout.startswith("HTTP/1.1 200 OK") and "Content-Length:" in head.stdout
    old = curl("-v", "--http1.0", "--cacert", ca_file, f"{url}/old")
    assert facts(old.stdout)["SERVER_PROTOCOL"] == "HTTP/1.0"
    assert "Connection: close" in old.stderr


def test_expect_continue_refused_with_413_without_reading(http_server: Any, ca_file: str,
                                                          tmp_path: Path) -> None:
    _, url, logged = http_server(max_request_size=1000)
    upload = tmp_path / "big.bin"
    upload.write_bytes(b"b" * 5000)
    done = curl("-v", "--cacert", ca_file, "-H", "Expect: 100-continue", "--data-binary",
                f"@{upload}", f"{url}/upload")
    assert "< HTTP/1.1 413" in done.stderr and "100 Continue" not in done.stderr
    assert "HTTP 413" in logged.text(3)


# -- pipelining ----------------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(http_server: Any,
                                              client_context: ssl.SSLContext) -> None:
    """Five requests (one with a body) written at once on one raw TLS socket: five answers,
    in order; the last asks to close."""
    _, url, _ = http_server()
    requests_ = b"".join(
        f"GET /p{n} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode() for n in range(3))
    requests_ += b"POST /p3 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello"
    requests_ += b"GET /p4 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
    with raw_tls(url, client_context) as sock:
        sock.sendall(requests_)
        data = read_until_eof(sock).decode()
    paths = [line.split("=", 1)[1] for line in data.splitlines() if line.startswith("PATH_INFO")]
    assert paths == ["/p0", "/p1", "/p2", "/p3", "/p4"]
    assert data.count("HTTP/1.1 200 OK") == 5 and "BODY=hello" in data


# -- limits: 400, 413, 431, slow headers ---------------------------------------------------------


def test_malformed_oversized_requests_are_refused_and_logged(
        http_server: Any, session: requests.Session, client_context: ssl.SSLContext) -> None:
    """400 (malformed), 431 (headers), 413 (Content-Length and chunked) and 505: each a
    level-3 line without traceback; the server goes on serving."""
    _, url, logged = http_server(max_header_size=2048, max_request_size=10_000)
    with raw_tls(url, client_context) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
        assert read_until_eof(sock).startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert session.get(f"{url}/", headers={"X-Big": "v" * 5000}).status_code == 431
    assert session.post(f"{url}/", data=b"x" * 20_000).status_code == 413
    chunked = session.post(f"{url}/", data=(b"y" * 4000 for _ in range(5)))
    assert chunked.status_code == 413
    with raw_tls(url, client_context) as sock:
        sock.sendall(b"GET / HTTP/2.0\r\nHost: x\r\n\r\n")
        assert read_until_eof(sock).split(b"\r\n")[0] in (
            b"HTTP/1.1 505 HTTP Version Not Supported", b"HTTP/1.1 400 Bad Request")
    assert session.get(f"{url}/still").status_code == 200
    info = logged.text(3)
    for status in ("400", "431", "413"):
        assert f"HTTP {status} to" in info, info
    assert "Traceback" not in "\n".join(message for _, message in logged.lines)


def test_slow_header_client_is_cut_while_others_are_served(
        http_server: Any, session: requests.Session, client_context: ssl.SSLContext) -> None:
    _, url, logged = http_server(timeout_header=1.5)
    with raw_tls(url, client_context) as slow:
        slow.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        for _ in range(3):  # others are served meanwhile
            assert session.get(f"{url}/fast").status_code == 200
        answer = read_until_eof(slow)
        waited = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert 1.0 <= waited < 10
    assert "HTTP 408 to" in logged.text(3)


# -- routes, access log ------------------------------------------------------------------------


class Routed(GHTTPServer):
    def hello(self, client: Any) -> None:
        env = client.http.env
        client.http.send_response(200, f"hello {env['SCRIPT_NAME']} {env['PATH_INFO']}")


def test_app_routes_and_access_log(http_server: Any, session: requests.Session,
                                   tmp_path: Path) -> None:
    log = tmp_path / "access.log"

    def other(client: Any) -> None:
        client.http.send_response(201, "other")

    server, url, _ = http_server(Routed, app=["/hello hello", ("/other", other)],
                                 access_log_file=str(log))
    assert session.get(f"{url}/hello/a%20b").text == "hello /hello /a b"
    assert session.get(f"{url}/other/x").status_code == 201
    assert session.get(f"{url}/").text == "hello  /"  # the first route also serves /
    assert session.get(f"{url}/hello", headers={"User-Agent": 'ua"1'}).status_code == 200
    poll(lambda: log.read_text().count("\n") >= 4, 5)
    lines = log.read_text().splitlines()
    assert lines[0].startswith("127.0.0.1 - - [")
    assert '"GET /hello/a%20b HTTP/1.1" 200 ' in lines[0]
    assert lines[3].endswith('"ua\\x221"')


# -- WSGI ----------------------------------------------------------------------------------------


def plain_app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return (f"chunk {n}\n".encode() for n in range(3))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"and returned"]
    if path == "/fail":
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            import sys
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")],
                           sys.exc_info())
            return [b"handled"]
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    text = f"{environ['REQUEST_METHOD']} {path} {environ['wsgi.url_scheme']} {len(body)}"
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(text)))])
    return [text.encode()]


def test_wsgi_under_validator(http_server: Any, session: requests.Session) -> None:
    """wsgiref.validate.validator around the app: every request answers and nothing is
    reported (no assertion inside, no WSGIWarning)."""
    _, url, logged = http_server(GHTTPServer, wsgi_app=validator(plain_app))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert session.get(f"{url}/x%2Fy").text == "GET /x/y https 0"
        assert session.post(f"{url}/p", data=b"z" * 1000).text == "POST /p https 1000"
        assert session.get(f"{url}/stream").text == "chunk 0\nchunk 1\nchunk 2\n"
        assert session.get(f"{url}/write").text == "written and returned"
        failed = session.get(f"{url}/fail")
        assert (failed.status_code, failed.text) == (500, "handled")
        assert session.head(f"{url}/h").content == b""
    assert not [w for w in caught if issubclass(w.category, WSGIWarning)]
    assert not [message for level, message in logged.lines if level <= 1], logged.lines


def test_wsgi_app_error_is_500_without_its_text(http_server: Any,
                                                session: requests.Session) -> None:
    def broken(environ: Any, start_response: Any) -> Any:
        raise ValueError("secret detail")

    _, url, logged = http_server(GHTTPServer, wsgi_app=broken)
    answer = session.get(f"{url}/")
    assert answer.status_code == 500 and "secret" not in answer.text
    assert "secret detail" in logged.text(1)  # logged with its traceback
    assert session.get(f"{url}/").status_code == 500  # still serving


def test_flask_app(http_server: Any, session: requests.Session) -> None:
    """A real Flask application: routes, a form post, a streamed response."""
    flask = pytest.importorskip("flask")
    app = flask.Flask("test_flask")

    @app.route("/hello/<name>")
    def hello(name: str) -> str:
        return f"hello {name} over {flask.request.scheme}"

    @app.route("/form", methods=["POST"])
    def form() -> Any:
        return flask.jsonify(dict(flask.request.form))

    @app.route("/stream")
    def stream() -> Any:
        return flask.Response((f"line {n}\n" for n in range(4)), mimetype="text/plain")

    _, url, _ = http_server(GHTTPServer, wsgi_app=app)
    assert session.get(f"{url}/hello/ana").text == "hello ana over https"
    assert session.post(f"{url}/form", data={"a": "1", "b": "two"}).json() == {"a": "1",
                                                                              "b": "two"}
    streamed = session.get(f"{url}/stream")
    assert streamed.text == "".join(f"line {n}\n" for n in range(4))
    assert streamed.headers.get("Transfer-Encoding") == "chunked"
    assert session.get(f"{url}/missing").status_code == 404


def test_concurrent_keep_alive_clients(http_server: Any, ca_file: str) -> None:
    """Several clients, each with its own keep-alive session, all answered."""
    _, url, _ = http_server()
    results: list[int] = []

    def client() -> None:
        with requests.Session() as s:
            s.verify, s.trust_env = ca_file, False
            results.extend(s.get(f"{url}/c").status_code for _ in range(5))

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert results == [200] * 40


# -- stopping: idle keep-alive connections close at once ---------------------------------------


class Slow(GHTTPServer):
    """/slow answers once the test releases it (at most 15 s); anything else at once."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.slow_started = threading.Event()
        self.release = threading.Event()
        self.slow_answered = False

    def process_http_request(self, client: Any) -> None:
        http = client.http
        if http.request.path == "/slow":
            self.slow_started.set()
            deadline = time.monotonic() + 15
            while not self.release.is_set() and time.monotonic() < deadline:
                gevent.sleep(0.02)  # a threading.Event cannot be waited on in the hub
            self.slow_answered = True
        http.send_response(200, "done\n")


def read_until(sock: ssl.SSLSocket, end: bytes) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(65536)
        assert chunk, f"EOF after {data!r}"
        data += chunk
    return data


def test_stop_closes_idle_keep_alive_at_once_and_drains_a_request(
        certs: dict[str, str], client_context: ssl.SSLContext) -> None:
    """stop() with graceful_timeout 20 s: a keep-alive client idle after one response gets
    EOF (close_notify, FIN) while another client's slow request is still being served, before
    its answer; that request then completes (Connection: close) and the close ends."""
    server = Slow(port="127.0.0.1:0/ssl", graceful_timeout=20, log_level=3,
                  log_function=Logged(), **certs)
    thread = ServerThread(server, stop_timeout=20).start()
    stopper = threading.Thread(target=thread.stop, args=(25,))
    url = f"https://localhost:{server.listeners[0].port}"
    try:
        with raw_tls(url, client_context) as idle, raw_tls(url, client_context) as busy:
            idle.sendall(b"GET /quick HTTP/1.1\r\nHost: localhost\r\n\r\n")
            first = read_until(idle, b"done\n")
            assert first.startswith(b"HTTP/1.1 200") and b"Connection: close" not in first
            busy.sendall(b"GET /slow HTTP/1.1\r\nHost: localhost\r\n\r\n")
            assert server.slow_started.wait(10)
            stopper.start()
            # Before the change this read timed out: the idle client waited for the drain.
            assert idle.recv(100) == b""
            assert not server.slow_answered and stopper.is_alive()
            server.release.set()
            answer = read_until_eof(busy)
            assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"done\n")
            assert b"Connection: close" in answer
        stopper.join(25)
        assert not stopper.is_alive()
    finally:
        server.release.set()
        if not stopper.is_alive():
            thread.stop()
