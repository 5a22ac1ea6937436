"""Client certificates: ``SSL_ca_file``, ``SSL_ca_path``, ``SSL_verify_mode``,
``SSL_verify_callback``, ``SSL_crl_file``, ``SSL_check_crl``, ``SSL_client_ca_file``,
``SSL_client_ca``.

Rules of this module:

* ``SSL_verify_mode`` is IO::Socket::SSL's numeric bitmask: 1 ask for a certificate and verify
  it when sent, 2 fail without one, 4 verify once (no TLS 1.3 post-handshake request). OpenSSL
  ignores 2 and 4 without 1, which would silently serve clients that send nothing; here 2 and 4
  imply 1. Any verifying mode needs trust anchors (``SSL_ca_file`` or ``SSL_ca_path``); the
  system store is never used for client certificates.
* ``SSL_verify_callback(ok, cert, depth, error)`` runs for each certificate of the client's
  chain (root first, the client's own last, depth 0): ``ok`` is OpenSSL's verdict, ``cert`` a
  cryptography ``x509.Certificate``, ``error`` OpenSSL's reason (``"ok"`` when none); a true
  return accepts that certificate. It runs inside OpenSSL's handshake, so it must be quick and
  must not do gevent I/O. If it raises, the certificate is refused and the error logged.
* CRLs: ``SSL_crl_file`` (PEM, one or more CRLs) is loaded into the context's store and turns
  on checking of the client's own certificate (``SSL_check_crl`` may be 0 to load without
  checking). ``SSL_check_crl`` alone checks against CRLs in ``SSL_ca_path`` (``<hash>.r0``).
  With checking on, a client whose CA has no CRL is refused ("unable to get certificate CRL").
* ``SSL_client_ca_file`` (PEM, one or more certificates) and ``SSL_client_ca`` (certificates
  in memory) name the CAs listed in the CertificateRequest ("acceptable client certificate CA
  names"), so that a client holding several certificates picks the right one. They trust
  nothing (``SSL_ca_file``/``SSL_ca_path`` do) and replace nothing: without them the request
  lists no CA, as OpenSSL does by default. IO::Socket::SSL ignores them when no client
  certificate is asked for; here that is a ConfigError (they would never be sent).
"""

from __future__ import annotations

import os
import re
from typing import Any

from cryptography import x509
from OpenSSL import SSL, crypto

from ..errors import ConfigError
from .formats import load_pem_certificates
from .util import Build, as_bytes, callback_name, read_file, reason, require_callable, to_bool

__all__ = ["apply_ca", "apply_client_ca", "apply_crl", "apply_verify_mode", "verify_bits"]


def apply_ca(ctx: SSL.Context, b: Build) -> None:
    """``SSL_ca_file`` / ``SSL_ca_path``: the CAs trusted for client certificates."""
    ca_file, ca_path = b.get("SSL_ca_file"), b.get("SSL_ca_path")
    if ca_file is None and ca_path is None:
        return
    labels = []
    if ca_file is not None:
        read_file(ca_file, "SSL_ca_file", b.where)  # a clear error for missing/unreadable files
        labels.append(f"SSL_ca_file {str(ca_file)!r}")
    if ca_path is not None:
        if not os.path.isdir(ca_path):
            raise ConfigError(f"{b.where}: SSL_ca_path {str(ca_path)!r} is not a directory")
        labels.append(f"SSL_ca_path {str(ca_path)!r}")
    try:
        ctx.load_verify_locations(ca_file, ca_path)
    except SSL.Error as e:
        raise ConfigError(f"{b.where}: cannot load {' and '.join(labels)}: {reason(e)}") from e


# IO::Socket::SSL's numeric bitmask -> OpenSSL flags (they happen to be equal; be explicit).
_VERIFY_BITS = {
    1: SSL.VERIFY_PEER,
    2: SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
    4: SSL.VERIFY_CLIENT_ONCE,
}


def apply_verify_mode(ctx: SSL.Context, b: Build) -> None:
    """``SSL_verify_mode`` and ``SSL_verify_callback``."""
    value, callback = b.get("SSL_verify_mode"), b.get("SSL_verify_callback")
    bits = verify_bits(value, b.where)
    if bits and b.get("SSL_ca_file") is None and b.get("SSL_ca_path") is None:
        raise ConfigError(
            f"{b.where}: SSL_verify_mode {value!r} verifies clients and needs SSL_ca_file or "
            "SSL_ca_path"
        )
    if callback is not None:
        require_callable(callback, "SSL_verify_callback", b.where)
        if not bits:
            raise ConfigError(
                f"{b.where}: SSL_verify_callback is never called with SSL_verify_mode "
                f"{value!r}; set SSL_verify_mode 1 (or 3)"
            )
    if not bits:
        return
    mode = SSL.VERIFY_NONE
    for bit, flag in _VERIFY_BITS.items():
        if bits & bit:
            mode |= flag | SSL.VERIFY_PEER  # 2 and 4 mean nothing to OpenSSL without 1
    ctx.set_verify(mode, None if callback is None else _wrap_callback(callback, b))


def verify_bits(value: Any, where: str) -> int:
    """``SSL_verify_mode`` as its bitmask 0..7 (``None``: 0), for both TLS backends;
    ConfigError naming the value otherwise."""
    if value is None:
        return 0
    try:
        bits = int(value, 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        bits = -1
    if not 0 <= bits <= 7:
        raise ConfigError(
            f"{where}: invalid SSL_verify_mode {value!r} (a bitmask 0..7: 1 peer, "
            "2 fail if no certificate, 4 once)"
        )
    return bits


_ERROR_TEXT = {
    code: name.removeprefix("ERR_").replace("_", " ").lower()
    for name, code in vars(SSL.X509VerificationCodes).items()
    if name.isupper() and isinstance(code, int)
}


def _wrap_callback(callback: Any, b: Build) -> Any:
    """Adapt ``SSL_verify_callback(ok, cert, depth, error)`` to pyOpenSSL's signature."""
    where, name = b.where, callback_name(callback)

    def verify(conn: SSL.Connection, cert: crypto.X509, errnum: int, depth: int,
               ok: int) -> bool:
        # A pyOpenSSL callback that raises is re-raised later by whichever connection of this
        # context checks next; catching here keeps the failure with its own handshake.
        try:
            error = _ERROR_TEXT.get(errnum, f"error {errnum}")
            return bool(callback(bool(ok), cert.to_cryptography(), depth, error))
        except Exception as e:
            b.warn(f"{where}: SSL_verify_callback {name} raised {e!r}; certificate refused")
            return False

    return verify


# ---------------------------------------------------------------------------------------------
# CRLs

_PEM_CRL = re.compile(
    rb"-----BEGIN X509 CRL-----\r?\n.+?\r?\n-----END X509 CRL-----", re.DOTALL
)


def apply_crl(ctx: SSL.Context, b: Build) -> None:
    """``SSL_crl_file`` and ``SSL_check_crl``: revocation checks of client certificates."""
    path, check = b.get("SSL_crl_file"), b.get("SSL_check_crl")
    checking = to_bool(check, "SSL_check_crl", b.where) if check is not None else path is not None
    if path is None and not checking:
        return
    if b.get("SSL_ca_file") is None and b.get("SSL_ca_path") is None:
        option = "SSL_crl_file" if path is not None else "SSL_check_crl"
        raise ConfigError(f"{b.where}: {option} is only used with client certificates: give "
                          "SSL_ca_file or SSL_ca_path and SSL_verify_mode")
    store = ctx.get_cert_store()
    if store is None:  # pragma: no cover - OpenSSL always gives a context a store
        raise ConfigError(f"{b.where}: this OpenSSL context has no certificate store for CRLs")
    if path is not None:
        for crl in _load_crls(path, b.where):
            store.add_crl(crl)
    if checking:
        store.set_flags(crypto.X509StoreFlags.CRL_CHECK)


def _load_crls(path: Any, where: str) -> list[x509.CertificateRevocationList]:
    data = read_file(path, "SSL_crl_file", where)
    blocks = _PEM_CRL.findall(data)
    if not blocks:
        raise ConfigError(f"{where}: SSL_crl_file {str(path)!r} holds no PEM CRL "
                          "(-----BEGIN X509 CRL-----)")
    try:
        return [x509.load_pem_x509_crl(block) for block in blocks]
    except ValueError as e:
        raise ConfigError(f"{where}: SSL_crl_file {str(path)!r}: invalid CRL ({e})") from e


# ---------------------------------------------------------------------------------------------
# The CA names of the CertificateRequest


def apply_client_ca(ctx: SSL.Context, b: Build) -> None:
    """``SSL_client_ca_file`` / ``SSL_client_ca``: the CA names sent to clients."""
    path, value = b.get("SSL_client_ca_file"), b.get("SSL_client_ca")
    if path is None and value is None:
        return
    option = "SSL_client_ca_file" if path is not None else "SSL_client_ca"
    if not verify_bits(b.get("SSL_verify_mode"), b.where):
        raise ConfigError(f"{b.where}: {option} is sent only when client certificates are "
                          "asked for; set SSL_verify_mode 1 (or 3)")
    cas: list[x509.Certificate] = []
    if path is not None:
        cas += load_pem_certificates(read_file(path, "SSL_client_ca_file", b.where),
                                     f"SSL_client_ca_file {str(path)!r}", b.where)
    if value is not None:
        cas += _client_ca_objects(value, b.where)
    for ca in cas:
        ctx.add_client_ca(ca)


def _client_ca_objects(value: Any, where: str) -> list[x509.Certificate]:
    """``SSL_client_ca``: a certificate, a list of them, or PEM text/bytes."""
    if isinstance(value, (bytes, str)):
        return load_pem_certificates(as_bytes(value), "SSL_client_ca", where)
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    if not items or not all(isinstance(item, x509.Certificate) for item in items):
        raise ConfigError(f"{where}: SSL_client_ca must be an x509.Certificate, a non-empty "
                          f"list of them or PEM bytes, not {type(value).__name__}")
    return items
