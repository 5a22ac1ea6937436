"""A real Pebble (Let's Encrypt's test CA) and pebble-challtestsrv on loopback, for ACME tests.

Pebble's API certificate comes from a trustme CA; names resolve through pebble-challtestsrv's
DNS server (every name -> 127.0.0.1, no AAAA), so the tests use names like ``a.test`` without
touching /etc/hosts. Pebble validates TLS-ALPN-01 on ``tls_port`` and HTTP-01 on ``http_port``
of 127.0.0.1: the gnetserver under test listens there.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import trustme

from .net import free_port


def needs_pebble() -> None:
    if shutil.which("pebble") is None or shutil.which("pebble-challtestsrv") is None:
        pytest.skip("Debian package pebble not installed (.ci/run installs it)")


class Pebble:
    """Pebble and its DNS (started by :meth:`start`, ended by :meth:`stop`)."""

    def __init__(self, folder: Path, tls_port: int, http_port: int,
                 eab: dict[str, str] | None = None) -> None:
        """``eab``: External Account Binding required, with these {key id: base64url MAC
        key}."""
        self.folder = folder
        self.eab = eab
        self.tls_port = tls_port
        self.http_port = http_port
        self.api_port = free_port()
        self.management_port = free_port()
        self.dns_port = free_port(socket.SOCK_DGRAM)
        self.ca = trustme.CA()
        self.ca_file = str(folder / "pebble-api-ca.pem")
        self.ca.cert_pem.write_to_path(self.ca_file)
        self.processes: list[subprocess.Popen[bytes]] = []
        self.log_path = folder / "pebble.log"

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.api_port}/dir"

    def start(self) -> Pebble:
        leaf = self.ca.issue_cert("127.0.0.1", "localhost")
        leaf.cert_chain_pems[0].write_to_path(str(self.folder / "api-cert.pem"))
        leaf.private_key_pem.write_to_path(str(self.folder / "api-key.pem"))
        config = {"pebble": {
            "listenAddress": f"127.0.0.1:{self.api_port}",
            "managementListenAddress": f"127.0.0.1:{self.management_port}",
            "certificate": str(self.folder / "api-cert.pem"),
            "privateKey": str(self.folder / "api-key.pem"),
            "httpPort": self.http_port,
            "tlsPort": self.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": self.eab is not None,
            "externalAccountMACKeys": self.eab or {},
        }}
        (self.folder / "pebble.json").write_text(json.dumps(config))
        log = open(self.log_path, "ab")  # noqa: SIM115 (closed with the processes)
        self._log = log
        self.processes.append(subprocess.Popen(
            ["pebble-challtestsrv", "-dns01", f"127.0.0.1:{self.dns_port}",
             "-defaultIPv4", "127.0.0.1", "-defaultIPv6", "", "-http01", "", "-https01", "",
             "-tlsalpn01", "", "-management", f"127.0.0.1:{free_port()}"],
            stdout=log, stderr=subprocess.STDOUT))
        env = dict(os.environ, PEBBLE_VA_NOSLEEP="1")
        self.processes.append(subprocess.Popen(
            ["pebble", "-config", str(self.folder / "pebble.json"),
             "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            stdout=log, stderr=subprocess.STDOUT, env=env))
        deadline = time.monotonic() + 15
        while True:
            try:
                self.get(self.directory)
                return self
            except OSError as exc:
                if time.monotonic() > deadline or any(p.poll() is not None
                                                      for p in self.processes):
                    self.stop()
                    raise RuntimeError("pebble did not start: "
                                       + self.log_path.read_text()) from exc
                time.sleep(0.05)

    def get(self, url: str) -> bytes:
        context = ssl.create_default_context(cafile=self.ca_file)
        with urllib.request.urlopen(url, timeout=5, context=context) as answer:
            return bytes(answer.read())

    def root_pem(self) -> bytes:
        """The root that Pebble's certificates chain to (``/roots/0``)."""
        return self.get(f"https://127.0.0.1:{self.management_port}/roots/0")

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()
        self._log.close()
