"""A small HTTPS application in the Net::Server::HTTP manner: ``process_http_request`` and
``app`` routes over gnetserver's TLS, with an access log.

Run it (a self-signed certificate is made at start unless you give yours)::

    python examples/https_app.py                      # https://127.0.0.1:8443/
    python examples/https_app.py --port 127.0.0.1:8443/ssl \\
        --SSL_cert_file cert.pem --SSL_key_file key.pem --access_log_file STDOUT

Talk to it::

    curl -k https://127.0.0.1:8443/hello/world
    curl -k -d 'name=ana' https://127.0.0.1:8443/echo
    curl -k https://127.0.0.1:8443/env               # the CGI environment of the request

Every gnetserver option works on the command line; the HTTP ones (``--timeout_header``,
``--max_request_size``, ``--access_log_file``...) are in README's table.
"""

from __future__ import annotations

import html
import sys
from typing import Any

from gnetserver import Client, ConfigError
from gnetserver.http import GHTTPServer


class HelloApp(GHTTPServer):
    """Three routes (the ``app`` option): /hello/NAME, /echo (POST) and /env."""

    def default_values(self) -> dict[str, Any]:
        """The routes, a TLS port with a self-signed certificate unless one is given, and the
        access log on stdout."""
        return {"port": "127.0.0.1:8443/ssl", "self_signed": True,
                "app": ["/hello hello", "/echo echo", "/env env"],
                "access_log_file": "STDOUT"}

    def hello(self, client: Client) -> None:
        """``/hello/NAME``: PATH_INFO is what follows the route's prefix (decoded)."""
        name = client.http.env["PATH_INFO"].strip("/") or "world"
        client.http.send_response(200, f"Hello, {name}!\n")

    def echo(self, client: Client) -> None:
        """``/echo``: the request body back, as it came (POST it)."""
        http = client.http
        body = http.read()  # bounded by max_request_size (413 past it)
        http.send_response(200, body, content_type=http.env.get("CONTENT_TYPE") or
                           "application/octet-stream")

    def env(self, client: Client) -> None:
        """``/env``: the CGI environment (REMOTE_ADDR, HTTPS, SSL_PROTOCOL...) as a page."""
        rows = "".join(f"<tr><td>{html.escape(key)}</td><td>{html.escape(str(value))}</td></tr>"
                       for key, value in sorted(client.http.env.items()))
        client.http.send_response(200, f"<table>{rows}</table>\n",
                                  content_type="text/html; charset=utf-8")


if __name__ == "__main__":
    try:
        HelloApp().run()
    except ConfigError as exc:
        sys.exit(f"https_app: {exc}")
