"""OCSP stapling: ``SSL_ocsp_staple_file`` and ``SSL_ocsp_staple_callback``, per certificate.

IO::Socket::SSL cannot staple on the server side; pyOpenSSL can, through
``Context.set_ocsp_server_callback``. The option names are ours (IO::Socket::SSL's
``SSL_ocsp_staple_callback`` is a client-side option with another meaning).

Rules of this module:

* Each certificate (each SNI name, each ``%ecc`` twin) has its own staple source: a file holding
  a DER OCSP response, or a callback ``callback(cert, server_name) -> bytes | None`` called
  during each handshake in which the client asks for a staple. Both keys take the SNI dict form
  of ``SSL_cert_file``.
* A staple file is read and checked at start and by ``reload_tls()``: it must be a successful
  response for the certificate's serial number (else ConfigError). An expired response
  (``nextUpdate`` in the past) is a warning at load and is not stapled afterwards: refresh the
  file and call ``reload_tls()``.
* The callback runs inside OpenSSL's handshake: it must return quickly from a cache and must
  not do gevent I/O. If it raises or returns something other than bytes/None, the handshake
  goes on without a staple and the problem is logged.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.x509 import ocsp
from OpenSSL import SSL

from ..errors import ConfigError
from .util import Build, callback_name, read_file, require_callable

__all__ = ["Staple", "install_stapling", "load_staple"]


@dataclass(frozen=True)
class Staple:
    """Where the OCSP response of one certificate comes from (a file's bytes or a callback)."""

    leaf: x509.Certificate
    der: bytes | None = None
    next_update: datetime.datetime | None = None
    callback: Callable[..., Any] | None = None

    def response(self, server_name: str | None) -> Any:
        """The DER response to staple now (b"" or None: none)."""
        if self.callback is not None:
            return self.callback(self.leaf, server_name)
        now = datetime.datetime.now(datetime.timezone.utc)
        if self.next_update is not None and self.next_update < now:
            return b""  # an expired staple makes strict clients fail; send none
        return self.der or b""


def load_staple(leaf: x509.Certificate, cred: Mapping[str, Any], b: Build) -> Staple | None:
    """The staple source of one certificate, from its credential keys; None when none given."""
    path, callback = cred.get("SSL_ocsp_staple_file"), cred.get("SSL_ocsp_staple_callback")
    if path is not None and callback is not None:
        raise ConfigError(f"{b.where}: give SSL_ocsp_staple_file or SSL_ocsp_staple_callback, "
                          "not both")
    if callback is not None:
        return Staple(leaf, callback=require_callable(callback, "SSL_ocsp_staple_callback",
                                                      b.where))
    if path is None:
        return None
    der = read_file(path, "SSL_ocsp_staple_file", b.where)
    label = f"SSL_ocsp_staple_file {str(path)!r}"
    response = _parse(der, label, b.where)
    if response.serial_number != leaf.serial_number:
        raise ConfigError(
            f"{b.where}: {label} is for serial number {response.serial_number:x}, but the "
            f"certificate has {leaf.serial_number:x}"
        )
    next_update = response.next_update_utc
    if next_update is not None and next_update < datetime.datetime.now(datetime.timezone.utc):
        b.warn(f"{b.where}: WARNING: {label} expired on {next_update:%Y-%m-%d %H:%M:%S} UTC; "
               "it is not stapled")
    return Staple(leaf, der=der, next_update=next_update)


def _parse(der: bytes, label: str, where: str) -> ocsp.OCSPResponse:
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError as e:
        raise ConfigError(f"{where}: {label} is not a DER OCSP response ({e})") from e
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise ConfigError(f"{where}: {label} is an unsuccessful OCSP response "
                          f"({response.response_status.name})")
    return response


def install_stapling(ctx: SSL.Context, staples: Sequence[Staple], b: Build) -> None:
    """Answer clients' status requests with the staple of the certificate in use."""
    if not staples:
        return
    where = b.where

    def staple(conn: SSL.Connection, data: Any) -> bytes:
        source = _source_for(conn, staples)
        if source is None:
            return b""
        name = conn.get_servername()
        try:
            der = source.response(name.decode("utf-8", "replace") if name else None)
        except Exception as e:
            b.warn(f"{where}: SSL_ocsp_staple_callback {callback_name(source.callback)} raised "
                   f"{e!r}; no OCSP staple sent")
            return b""
        if der is None or isinstance(der, bytes):
            return der or b""
        b.warn(f"{where}: SSL_ocsp_staple_callback returned {type(der).__name__}, not bytes; "
               "no OCSP staple sent")
        return b""

    ctx.set_ocsp_server_callback(staple)


def _source_for(conn: SSL.Connection, staples: Sequence[Staple]) -> Staple | None:
    """The staple of the certificate OpenSSL chose (there are two with an ``%ecc`` twin)."""
    leaf = conn.get_certificate(as_cryptography=True)
    return next((s for s in staples if s.leaf == leaf), None)
