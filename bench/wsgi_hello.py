"""The trivial WSGI application of bench/http_wsgi.py: ``200 hello`` to every request.

A module of its own so that every server imports the same callable the same way
(``wsgi_hello:app`` for gunicorn, ``wsgi_app`` for gnetserver, the callable for pywsgi).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

BODY = b"hello"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer ``200 OK`` with the 5-byte body ``hello``, whatever the request."""
    start_response("200 OK", HEADERS)
    return [BODY]
