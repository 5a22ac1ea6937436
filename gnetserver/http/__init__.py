"""The HTTP personality: Net::Server::HTTP and WSGI over gnetserver's ports and TLS.

* :class:`GHTTPServer` (:mod:`gnetserver.http.server`): HTTP/1.1 with keep-alive,
  pipelining, chunked bodies, ``100-continue``, limits and an access log; override
  ``process_http_request(client)``, give ``app`` routes, or a ``wsgi_app``.
* :class:`Exchange` (:mod:`gnetserver.http.exchange`): one request and its response.
* :mod:`gnetserver.http.parser`: the requests of a connection, parsed by httptools.
* :mod:`gnetserver.http.wsgi`: PEP 3333.
* :mod:`gnetserver.http.accesslog`: Apache's log format, written off the hub.
"""

from .exchange import Exchange
from .parser import HTTPError, Request
from .server import GHTTPServer, cgi_environ, connection_environ

__all__ = ["Exchange", "GHTTPServer", "HTTPError", "Request", "cgi_environ", "connection_environ"]
