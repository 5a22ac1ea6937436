"""A line echo server over TLS: the ``Echo`` class of README.rst, runnable as it stands.

Run it with your certificate::

    python examples/echo_server.py --port 127.0.0.1:8443/ssl \\
        --SSL_cert_file cert.pem --SSL_key_file key.pem

or with no certificate at all: it then listens on 127.0.0.1:8443 with a self-signed certificate
made in memory at start (its SHA-256 fingerprint is logged)::

    python examples/echo_server.py

Talk to it::

    openssl s_client -quiet -connect 127.0.0.1:8443      # type lines, they come back

Every gnetserver option works on the command line (``--log_level 3``, ``--max_servers 100``,
``--port 127.0.0.1:0/ssl`` for a kernel-chosen port: read it from the "Server ready" line on
stderr). Ctrl-C stops the server.
"""

from __future__ import annotations

import sys
from typing import Any

from gnetserver import Client, ConfigError, GServer


class Echo(GServer):
    """Sends every line a client writes straight back, until the client closes."""

    def default_values(self) -> dict[str, Any]:
        """Used only where neither the command line nor the constructor says otherwise; the
        self-signed certificate is made only when no SSL_cert_file is given."""
        return {"port": "127.0.0.1:8443/ssl", "self_signed": True}

    def process_request(self, client: Client) -> None:
        """Runs in the connection's own greenlet, after the TLS handshake."""
        for line in client.makefile("rb"):  # each line at most max_line_length (64 KiB)
            client.sendall(line)


if __name__ == "__main__":
    try:
        Echo().run()  # reads the options from sys.argv, serves until Ctrl-C
    except ConfigError as exc:  # a bad option, port or certificate: say which, no traceback
        sys.exit(f"echo_server: {exc}")
