"""A Flask application served by gnetserver's HTTP personality over TLS.

Run it with the gnetserver command (``--wsgi``), from the repository's top directory::

    gnetserver --wsgi examples.flask_app:app --port 127.0.0.1:8443/ssl --self_signed 1

or as a script (the same, with a self-signed certificate unless you give yours)::

    python examples/flask_app.py [--port 127.0.0.1:8443/ssl --SSL_cert_file cert.pem ...]

Then ``curl -k https://127.0.0.1:8443/``, ``curl -k -d item=pen https://127.0.0.1:8443/items``
or ``curl -k https://127.0.0.1:8443/count/5`` (a streamed, chunked response).
``pip install flask`` first (it is not a gnetserver dependency).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

from flask import Flask, Response, jsonify, request

from gnetserver import ConfigError
from gnetserver.http import GHTTPServer

app = Flask(__name__)
ITEMS: list[str] = []  # one process, greenlets: no lock needed between requests


@app.route("/")
def index() -> Response:
    """A greeting and the facts of the connection."""
    return jsonify(hello="gnetserver", scheme=request.scheme,
                   tls=request.environ.get("SSL_PROTOCOL"),
                   client=request.remote_addr)


@app.route("/items", methods=["GET", "POST"])
def items() -> Response:
    """POST a form field ``item`` to add one; GET lists them."""
    if request.method == "POST":
        ITEMS.append(request.form.get("item", ""))
    return jsonify(items=ITEMS)


@app.route("/count/<int:upto>")
def count(upto: int) -> Response:
    """A streamed response: one line per number, sent as it is made."""
    def numbers() -> Iterator[str]:
        for number in range(min(upto, 1000)):
            yield f"{number}\n"
    return Response(numbers(), mimetype="text/plain")


if __name__ == "__main__":
    try:
        GHTTPServer(wsgi_app=app, commandline=sys.argv[1:]).run(
            port="127.0.0.1:8443/ssl", self_signed=True)
    except ConfigError as exc:
        sys.exit(f"flask_app: {exc}")
