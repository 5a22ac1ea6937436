"""GHTTPServer: Net::Server::HTTP over gnetserver: HTTP/1.1 with keep-alive, and WSGI.

Rules of this module:

* :class:`GHTTPServer` is a GServer: every port, protocol, TLS option, personality and hook
  of the base server applies. It overrides ``process_request`` only: a connection is a loop
  of requests (keep-alive and pipelining, answered in order), each read by
  :class:`~gnetserver.http.parser.RequestReader` and answered through an
  :class:`~gnetserver.http.exchange.Exchange`.
* What serves a request, in this order: ``wsgi_app`` (a PEP 3333 application,
  :mod:`gnetserver.http.wsgi`), else :meth:`GHTTPServer.process_http_request` (override it:
  Net::Server::HTTP's hook), whose default dispatches by the ``app`` routes.
* A request refused by a limit or malformed (400, 408, 413, 414, 417, 431, 501, 505) is
  answered with that status and ``Connection: close``, logged at level 3 in one line without
  a traceback; the connection ends and the server goes on. An exception in a handler is
  logged at level 1 with its traceback and answered 500 when no head went out (its text is
  never sent to the client); the connection then ends.
* The access log (``access_log_file``) gets one line per request, refused ones included.
* Stopping: once the drain starts (a close, a HUP's drainer once the new image accepts, a
  PreFork worker told to finish: :meth:`Lifecycle.draining_event
  <gnetserver.lifecycle.Lifecycle.draining_event>`), keep-alive connections waiting for their
  next request are closed at once (FIN, TLS close_notify), as gunicorn and nginx do, while a
  request in progress gets ``graceful_timeout`` and is answered with ``Connection: close``.
  The per-request cost is two dict operations: a connection marks itself idle while it waits
  between requests, and the drain's wake-up (one hub callback for the whole server) throws
  into those still waiting for a request's first byte.
"""

from __future__ import annotations

import importlib
import time
from typing import Any

import gevent

from ..acme_plan import HTTP01_PREFIX as ACME_CHALLENGE
from ..client import Client
from ..errors import ConfigError, TLSError
from ..options import HTTP_OPTIONS, Option
from ..server import GServer
from . import wsgi
from .accesslog import AccessLog, Entry
from .exchange import DRAIN_LIMIT, Exchange, reason_of
from .parser import HTTPError, Request, RequestReader

__all__ = ["GHTTPServer", "cgi_environ", "connection_environ"]


class _IdleClose(Exception):
    """Thrown into a keep-alive connection waiting between requests when the drain starts:
    it ends as a client gone away does (gracefully closed)."""


def _unmapped(address: Any) -> str:
    """An address as text, a v4-mapped ``::ffff:a.b.c.d`` as ``a.b.c.d`` (Net::Server)."""
    text = "" if address is None else str(address)
    return text[7:] if text.lower().startswith("::ffff:") and "." in text else text


def connection_environ(client: Client, software: str, server_type: str) -> dict[str, Any]:
    """The part of the CGI environment that is the same for every request of a connection
    (computed once per connection: the TLS facts alone cost several pyOpenSSL calls):
    REMOTE_ADDR/REMOTE_PORT (the real client behind a trusted PROXY balancer:
    ``client.peeraddr``), SERVER_ADDR/SERVER_PORT, NET_SERVER_TYPE, NET_SERVER_SOFTWARE, and
    on TLS ports HTTPS=on with mod_ssl's SSL_PROTOCOL, SSL_CIPHER, SSL_TLS_SNI,
    SSL_CLIENT_S_DN, SSL_CLIENT_I_DN, SSL_SESSION_RESUMED and SSL_ALPN."""
    env: dict[str, Any] = {
        "REMOTE_ADDR": _unmapped(client.peeraddr),
        "REMOTE_PORT": str(client.peerport or ""),
        "SERVER_ADDR": _unmapped(client.sockaddr),
        "SERVER_PORT": str(client.sockport or ""),
        "NET_SERVER_TYPE": server_type,
        "NET_SERVER_SOFTWARE": software,
    }
    if client.tls is not None:
        env["HTTPS"] = "on"
        cert = client.peer_certificate  # once: client.peer_subject and peer_issuer each fetch it
        facts = {
            "SSL_PROTOCOL": client.tls_version, "SSL_CIPHER": client.cipher,
            "SSL_TLS_SNI": client.server_name,
            "SSL_CLIENT_S_DN": None if cert is None else cert.subject.rfc4514_string(),
            "SSL_CLIENT_I_DN": None if cert is None else cert.issuer.rfc4514_string(),
            "SSL_ALPN": client.alpn_protocol,
        }
        env.update({key: value for key, value in facts.items() if value is not None})
        env["SSL_SESSION_RESUMED"] = "Resumed" if client.session_reused else "Initial"
    return env


def cgi_environ(request: Request, client: Client, software: str, server_type: str,
                connection: dict[str, Any] | None = None) -> dict[str, Any]:
    """Net::Server::HTTP's CGI-style environment of one request: REQUEST_METHOD,
    REQUEST_URI, SERVER_PROTOCOL, QUERY_STRING, PATH_INFO (as sent, not decoded),
    SCRIPT_NAME (``""``), SERVER_NAME (from Host), CONTENT_LENGTH, CONTENT_TYPE, ``HTTP_*``
    (repeated headers joined by ``", "``), over the connection's part
    (:func:`connection_environ`; ``connection``: that dict computed beforehand, copied)."""
    env = dict(connection if connection is not None
               else connection_environ(client, software, server_type))
    env["REQUEST_METHOD"] = request.method
    env["REQUEST_URI"] = request.target
    env["SERVER_PROTOCOL"] = f"HTTP/{request.version}"
    env["QUERY_STRING"] = request.query
    env["PATH_INFO"] = request.path
    env["SCRIPT_NAME"] = ""
    for name, value in request.headers:
        key = name.upper().replace("-", "_")
        if key == "CONTENT_LENGTH" or key == "CONTENT_TYPE":
            env[key] = value
            continue
        key = "HTTP_" + key
        env[key] = f"{env[key]}, {value}" if key in env else value
    host = env.get("HTTP_HOST")
    if host:
        env["SERVER_NAME"] = host[:host.index("]") + 1] if host.startswith("[") \
            else host.rsplit(":", 1)[0]
    else:
        env["SERVER_NAME"] = env["SERVER_ADDR"] or "localhost"
    return env


class GHTTPServer(GServer):
    """An HTTP/1.1 server (Net::Server::HTTP), over any of gnetserver's ports (https on ssl).

    Subclass it and override :meth:`process_http_request`, or give ``app`` routes, or give a
    WSGI application: ``GHTTPServer(wsgi_app=app, port="0.0.0.0:8443/ssl", ...)``. Its options
    (``timeout_header``, ``max_header_size``, ``max_request_size``, ``access_log_file``...)
    are in the "HTTP (GHTTPServer)" section of README's table; ``timeout_idle`` bounds each
    read and write and the wait for the next keep-alive request.

    TLS ports offer ALPN ``http/1.1`` unless ``SSL_alpn_protocols`` says otherwise.

    Hooks (besides the base server's): ``process_http_request(client)`` serves one request
    (``client.http``: the :class:`~gnetserver.http.exchange.Exchange`);
    ``http_request_done(client, exchange)`` runs after each response, before the access log
    line (in the connection's greenlet; may read the exchange, must not write).
    """

    #: ALPN on TLS ports when no SSL_alpn_protocols option is given (read by tls_setup as a
    #: server attribute, the lowest of its sources).
    SSL_alpn_protocols = "http/1.1"

    def __init__(self, *args: Any, **options: Any) -> None:
        super().__init__(*args, **options)
        self.wsgi_application: Any = None
        self.routes: list[tuple[str, Any]] = []
        self.access_log: AccessLog | None = None
        self.multiprocess = False  # wsgi.multiprocess: True in PreFork workers
        # Keep-alive connections waiting between requests: greenlet -> its reader. Set and
        # cleared by the connection's own greenlet around the wait; read by the drain's wake.
        self._idle: dict[Any, RequestReader] = {}
        draining = self.lifecycle.draining_event()
        draining.rawlink(self._drain_started)
        self._draining_now = draining.is_set  # asked once per response head

    def options(self) -> list[Option]:
        """The base table plus the HTTP options (:data:`gnetserver.options.HTTP_OPTIONS`)."""
        return [*super().options(), *HTTP_OPTIONS]

    def post_configure(self) -> None:
        """Framework step: the base server's, then resolve ``wsgi_app`` (import
        ``package.module:attribute``), check the ``app`` routes, open the access log. A bad
        value is a ConfigError naming the option."""
        super().post_configure()
        self.wsgi_application = self.load_wsgi_app(self.conf["wsgi_app"])
        self.routes = self.compile_routes(self.conf["app"])
        if self.access_log is not None:  # a restart in place: the old one goes
            self.access_log.close()
            self.access_log = None
        target = self.conf["access_log_file"]
        if target:
            self.access_log = AccessLog(target, self.conf["access_log_format"], self.log)

    @staticmethod
    def load_wsgi_app(spec: Any) -> Any:
        """``wsgi_app``'s value as a callable (None when unset)."""
        if spec is None or callable(spec):
            return spec
        module_name, _, attribute = str(spec).partition(":")
        try:
            app = importlib.import_module(module_name)
            for part in attribute.split("."):
                app = getattr(app, part)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"option 'wsgi_app': cannot load {spec!r}: {exc}") from None
        if not callable(app):
            raise ConfigError(f"option 'wsgi_app': {spec!r} is not callable")
        return app

    def compile_routes(self, items: list[Any]) -> list[tuple[str, Any]]:
        """The ``app`` option as ``(prefix, callable)``: method names looked up on the server;
        prefixes normalised (no trailing ``/`` but for ``/`` itself); the first route also
        serves ``/`` when no route is ``/`` (Net::Server::HTTP)."""
        routes: list[tuple[str, Any]] = []
        for item in items:
            for prefix, target in item:
                if isinstance(target, str):
                    method = getattr(self, target, None)
                    if not callable(method):
                        raise ConfigError(f"option 'app': {target!r} is not a method of "
                                          f"{type(self).__name__}")
                    target = method
                path = "/" + "/".join(part for part in prefix.split("/") if part not in ("",
                                                                                         "."))
                routes.append((path, target))
        if routes and not any(path == "/" for path, _ in routes):
            routes.append(("/", routes[0][1]))
        return routes

    def child_init_hook(self) -> None:
        """Hook (PreFork, in each worker): marks the worker for ``wsgi.multiprocess``.
        Subclasses overriding it call ``super()``."""
        self.multiprocess = True

    def server_close(self) -> None:
        """Framework step: the base server's close, then the access log's (what is pending
        is written)."""
        super().server_close()
        if self.access_log is not None:
            self.access_log.close()
            self.access_log = None

    def reopen_logs(self) -> None:
        """The base server's reopen, and the access log's (logrotate, HUP)."""
        super().reopen_logs()
        if self.access_log is not None:
            self.access_log.reopen()

    # -- one connection: a loop of requests ------------------------------------------------

    def process_request(self, client: Client) -> None:
        """Serve the requests of one connection, in order, until one is not kept alive, the
        client closes or stays idle past ``timeout_idle``, or the server stops."""
        conf = self.conf
        reader = RequestReader(client.recv, client.settimeout, conf["max_header_size"],
                               conf["max_request_size"], conf["timeout_header"],
                               conf.timeout_idle)
        limit = conf["max_keepalive_requests"]
        lifecycle, idle, me = self.lifecycle, self._idle, gevent.getcurrent()
        base = connection_environ(client, conf["server_revision"], type(self).__name__)
        served = 0
        while True:
            if served:
                # Between requests. The first request of a connection is awaited (bounded by
                # timeout_header): accepted before the stop, it is usually on its way.
                if lifecycle.draining:
                    return  # its response may have said keep-alive: the drain began since
                idle[me] = reader
            try:
                request = reader.next_request(first=served == 0)
            except HTTPError as exc:
                self.http_refused(client, exc, reader.received_any or served == 0)
                return
            except (TimeoutError, ConnectionError, TLSError, _IdleClose):
                return  # between requests: the client went away, or the server stops
            finally:
                idle.pop(me, None)
            if request is None:
                return
            served += 1
            keep = not (lifecycle.closing or lifecycle.draining) \
                and not (limit and served >= limit)
            if not self.serve_one(client, reader, request, keep, base):
                return
            if not reader.discard_body(DRAIN_LIMIT):
                return

    def _drain_started(self, _event: Any) -> None:
        """Link of the lifecycle's draining event: wake the idle connections from the hub
        (a throw must come from the hub, never from the closing greenlet)."""
        if self._idle:
            gevent.get_hub().loop.run_callback(self.close_idle_connections)

    def close_idle_connections(self) -> None:
        """In the hub: end every keep-alive connection waiting for the first byte of its next
        request (it closes gracefully); one that received part of a request goes on (it is
        answered with ``Connection: close``)."""
        for greenlet, reader in list(self._idle.items()):
            # Still marked: the greenlet is parked inside next_request (only it unmarks
            # itself, and it is not running now); no byte of a new request read yet.
            if self._idle.get(greenlet) is reader and reader.waiting_for_request:
                greenlet.throw(_IdleClose())

    def serve_one(self, client: Client, reader: RequestReader, request: Request,
                  keep_alive: bool, connection: dict[str, Any] | None = None) -> bool:
        """Answer one request; True when the connection may carry another one.
        ``connection``: the connection's part of the environment (computed once)."""
        software = self.conf["server_revision"]
        env = cgi_environ(request, client, software, type(self).__name__, connection)
        exchange = Exchange(request, reader, client.sendall, env, software, keep_alive,
                            self._draining_now)
        client.http = exchange
        started = time.monotonic()
        try:
            if self.acme is not None and request.path.startswith(ACME_CHALLENGE):
                self.answer_acme_challenge(client, request.path[len(ACME_CHALLENGE):])
            elif self.wsgi_application is not None:
                wsgi.run(self.wsgi_application, exchange, self.multiprocess)
            else:
                self.process_http_request(client)
            exchange.finish()
        except HTTPError as exc:  # the body broke a limit, or its chunks were malformed
            self.log_refusal(client, exc)
            exchange.status = exc.status
            self._answer(exchange, exc.status)
            return False
        except (TimeoutError, ConnectionError, TLSError) as exc:
            if self.log_enabled(3):
                self.log(3, f"HTTP {request.method} {request.path} from {client.peer_text()}: "
                            f"connection ended: {type(exc).__name__}: {exc}")
            return False
        except Exception as exc:
            self.connection_error(client, exc)  # level 1, with the traceback
            self._answer(exchange, 500)
            return False
        finally:
            client.http = None
            self.http_request_done(client, exchange)
            if self.access_log is not None:
                line = f"{request.method} {request.target} HTTP/{request.version}"
                self.access_log.write(Entry(exchange, client, exchange.status, request.started,
                                            time.monotonic() - started, line))
        return exchange.keep_alive

    def answer_acme_challenge(self, client: Client, token: str) -> None:
        """Framework step, for ``/.well-known/acme-challenge/<token>`` when the server has
        ACME ports: a pending HTTP-01 token's key authorization (200), else 404. So the HTTP
        personality's own port 80 answers the CA (``SSL_acme_http_listen http``)."""
        assert self.acme is not None
        found = self.acme.http01_answer(token)
        if found is None:
            client.http.send_response(404, "404 Not Found\n")
            return
        self.log(2, f"ACME: HTTP-01 challenge answered for token {token}")
        client.http.send_response(200, found, content_type="application/octet-stream")

    def _answer(self, exchange: Exchange, status: int) -> None:
        """Send an error status if no head went out yet; never raises."""
        try:
            exchange.send_error(status)
        except Exception:  # the connection is going anyway  # noqa: S110
            pass

    def log_refusal(self, client: Client, exc: HTTPError) -> None:
        """One level-3 line for a refused request: status and reason, no traceback."""
        if self.log_enabled(3):
            self.log(3, f"HTTP {exc.status} to {client.peer_text()}: {exc.reason}")

    def http_refused(self, client: Client, exc: HTTPError, answer: bool) -> None:
        """A request refused before its head was complete (or malformed): log it, answer its
        status with ``Connection: close`` (unless nothing of a request arrived: a silent
        connection is just closed), write its access log line."""
        self.log_refusal(client, exc)
        if answer:
            body = f"{exc.status} {reason_of(exc.status)}\n".encode()
            head = (f"HTTP/1.1 {exc.status} {reason_of(exc.status)}\r\nContent-Type: text/plain; "
                    f"charset=utf-8\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n")
            try:
                client.sendall(head.encode() + body)
            except (OSError, TLSError):
                pass
        if self.access_log is not None and answer:
            self.access_log.write(Entry(None, client, exc.status, time.time(), 0.0, "-"))

    # -- hooks ---------------------------------------------------------------------------------

    def process_http_request(self, client: Client) -> None:
        """Hook: answer one request, in the connection's greenlet. ``client.http`` is the
        :class:`~gnetserver.http.exchange.Exchange`: ``env`` (the CGI environment),
        ``read()``, ``send_status()``, ``send_header()``, ``send_body()``, ``flush()``... The
        server finishes the response after it returns. The default dispatches by the
        ``app`` routes (prefix to handler, called with the client); without routes it
        answers 404."""
        exchange: Exchange = client.http
        env = exchange.env
        path = exchange.request.path
        for prefix, handler in self.routes:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/") or prefix == "/":
                if prefix != "/":
                    env["SCRIPT_NAME"] = prefix
                    env["PATH_INFO"] = wsgi.unquote_latin1(path[len(prefix):])
                else:
                    env["PATH_INFO"] = wsgi.unquote_latin1(path)
                handler(client)
                return
        exchange.send_response(404, "404 Not Found\n")

    def http_request_done(self, client: Client, exchange: Exchange) -> None:
        """Hook: after each response (finished or failed), before its access log line."""

