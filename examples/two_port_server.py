"""One server, two ports: TLS with its own certificate (a per-port dict) and plain TCP.

Run it with your certificate for the TLS port::

    python examples/two_port_server.py --cert cert.pem --key key.pem

or with no certificate: one is generated in memory at start (self-signed, ECDSA P-256, valid
for localhost, 127.0.0.1 and ::1; its SHA-256 fingerprint is logged)::

    python examples/two_port_server.py

By default the TLS port is 127.0.0.1:8443 and the plain port 127.0.0.1:8080; change them with
``--tls-port`` and ``--tcp-port`` (0 lets the kernel choose: read the ports from the "Server
ready" line on stderr) and the address with ``--host``. Any other word goes to gnetserver's own
option parser (``--log_level 3``, ``--max_servers 100``...). Try it::

    openssl s_client -quiet -connect 127.0.0.1:8443     # lines come back as "[ssl] ..."
    nc 127.0.0.1 8080                                   # lines come back as "[tcp] ..."

The certificate is given per port, in the port's dict (``SSL_cert_file``/``SSL_key_file``, or
``SSL_cert``/``SSL_key`` objects), so a second TLS port could present another one.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from gnetserver import Client, ConfigError, GServer
from gnetserver.tls.selfsigned import fingerprint_sha256, make_self_signed


class TwoPorts(GServer):
    """Echoes lines, each answer tagged with the protocol of the port it came in on."""

    def process_request(self, client: Client) -> None:
        """Runs in the connection's own greenlet (after the handshake on the TLS port)."""
        tag = f"[{client.proto}] ".encode()
        while line := client.readline():
            client.sendall(tag + line)


def tls_port(host: str, port: int, cert: str | None, key: str | None) -> dict[str, Any]:
    """The per-port dict of the TLS port: your files, or a certificate made now in memory."""
    spec: dict[str, Any] = {"host": host, "port": port, "proto": "ssl"}
    if cert:
        spec["SSL_cert_file"] = cert
        spec["SSL_key_file"] = key or cert  # the key may sit in the certificate's PEM file
    else:
        spec["SSL_cert"], spec["SSL_key"] = make_self_signed()
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address of both ports")
    parser.add_argument("--tls-port", type=int, default=8443, help="TLS port (0: any)")
    parser.add_argument("--tcp-port", type=int, default=8080, help="plain TCP port (0: any)")
    parser.add_argument("--cert", help="PEM certificate (chain) of the TLS port")
    parser.add_argument("--key", help="PEM private key of the TLS port (default: in --cert)")
    args, rest = parser.parse_known_args()
    ports = [tls_port(args.host, args.tls_port, args.cert, args.key),
             {"host": args.host, "port": args.tcp_port, "proto": "tcp"}]
    # Constructor options win over the command line, so `rest` cannot move the two ports.
    server = TwoPorts(commandline=rest, port=ports)
    if "SSL_cert" in ports[0]:
        fingerprint = fingerprint_sha256(ports[0]["SSL_cert"])
        server.log(2, f"Generated the TLS port's certificate, SHA-256 fingerprint {fingerprint}")
    server.run()


if __name__ == "__main__":
    try:
        main()
    except ConfigError as exc:  # a bad option, port or certificate: say which, no traceback
        sys.exit(f"two_port_server: {exc}")
