"""Certificates and private keys: ``SSL_cert_file``/``SSL_key_file``, ``SSL_cert``/``SSL_key``,
``SSL_passwd_cb``.

Rules of this module:

* A credential is one certificate chain and its key, taken from one mapping of the four keys
  (the SNI split in :mod:`.sni` hands over one mapping per certificate). Files are read as
  IO::Socket::SSL reads them (:mod:`.formats`, by content): ``SSL_cert_file`` is PEM (the leaf
  first, then its chain), DER (one certificate) or PKCS#12 (certificate, chain and key);
  ``SSL_key_file`` is PEM or DER. Without ``SSL_key_file`` the key is the PKCS#12 file's, or
  looked for in a PEM ``SSL_cert_file`` (IO::Socket::SSL: "if omitted the PEM cert file is
  tried"). A PKCS#12 file with a key and an ``SSL_key_file``/``SSL_key`` as well is a
  ConfigError (IO::Socket::SSL silently ignores the second key).
* Keys are loaded with cryptography (``load_pem_private_key``/``load_der_private_key``) and
  handed to ``Context.use_privatekey`` as cryptography objects: ``set_passwd_cb`` is deprecated
  since pyOpenSSL 26.3, and passing a ``PKey`` wrapper is deprecated too. ``SSL_passwd_cb`` is
  called with no arguments, only for an encrypted file, and returns the passphrase as ``str``
  or ``bytes``; a needless passphrase is ignored, as IO::Socket::SSL does.
* A key that does not match its certificate is a ConfigError naming both sources. A certificate
  that has expired or is not valid yet is only a warning (naming it and the date): the server
  still starts, as IO::Socket::SSL's does, and clients decide.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from OpenSSL import SSL

from ..errors import ConfigError
from .formats import (
    CertificateFile,
    Passphrase,
    load_certificate_file,
    load_key_data,
    load_pem_certificates,
    own_key,
)
from .util import Build, as_bytes, read_file, reason, require_callable

__all__ = [
    "CREDENTIAL_KEYS",
    "NO_CERTIFICATE",
    "leaf_certificate",
    "passphrase",
    "passphrase_of",
    "use_credential",
]


class _NoCertificate:
    """The type of :data:`NO_CERTIFICATE`."""

    def __repr__(self) -> str:
        return "NO_CERTIFICATE"


#: An ``SSL_cert`` value (per SNI name) that gives the name a context without a certificate:
#: its handshakes fail (an alert), unless a callback sets one on the connection (ACME's
#: ``SSL_acme_interim refuse``; the TLS-ALPN-01 challenge certificate still gets through).
NO_CERTIFICATE: Any = _NoCertificate()

#: The keys that make up one credential (and may be dicts keyed by SNI name, see :mod:`.sni`).
CREDENTIAL_KEYS = ("SSL_cert_file", "SSL_key_file", "SSL_cert", "SSL_key")


def use_credential(ctx: SSL.Context, cred: Mapping[str, Any], b: Build) -> x509.Certificate:
    """Load one chain and key into ``ctx``; return the leaf certificate.

    Raises:
        ConfigError: missing/unreadable/garbage file, wrong passphrase, a key that does not
            match the certificate; the message names ``b.where``, the option and the source.
    """
    loaded, cert_label = _load_chain(cred, b)
    chain = loaded.chain
    key, key_label = _load_key(cred, loaded, cert_label, b)
    _warn_if_not_valid_now(chain[0], cert_label, b)
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
    except SSL.Error as e:
        raise ConfigError(f"{b.where}: cannot use the certificate {cert_label}: {reason(e)}") from e
    try:
        # SSL_CTX_use_PrivateKey already refuses a key that does not match the loaded
        # certificate ("key values mismatch"); check_privatekey states the contract explicitly.
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except TypeError as e:  # not a private key object
        raise ConfigError(f"{b.where}: cannot use the private key {key_label}: {e}") from e
    except SSL.Error as e:
        raise ConfigError(
            f"{b.where}: the private key ({key_label}) does not match the certificate "
            f"({cert_label}): {reason(e)}"
        ) from e
    return chain[0]


def leaf_certificate(cred: Mapping[str, Any], opts: Mapping[str, Any],
                     where: str) -> x509.Certificate:
    """The leaf certificate of one credential, loaded as :func:`use_credential` loads it
    (``opts``: the port's options, for a PKCS#12 file's passphrase); ConfigError as there.
    Read by the certificate expiry check."""
    loaded, _ = _load_chain(cred, Build(opts, where, lambda text: None))
    return loaded.chain[0]


def _warn_if_not_valid_now(leaf: x509.Certificate, label: str, b: Build) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    subject = leaf.subject.rfc4514_string() or "(empty subject)"
    if leaf.not_valid_after_utc < now:
        b.warn(f"{b.where}: WARNING: the certificate {label} ({subject}) expired on "
               f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC; clients will refuse it")
    elif leaf.not_valid_before_utc > now:
        b.warn(f"{b.where}: WARNING: the certificate {label} ({subject}) is not valid before "
               f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC; clients will refuse it")


# ---------------------------------------------------------------------------------------------
# The chain


def _load_chain(cred: Mapping[str, Any], b: Build) -> tuple[CertificateFile, str]:
    """Return the chain (leaf first; with a PKCS#12 file's key) and a label naming where it
    came from."""
    where = b.where
    value, path = cred.get("SSL_cert"), cred.get("SSL_cert_file")
    if value is not None and path is not None:
        raise ConfigError(f"{where}: give SSL_cert_file or SSL_cert, not both")
    if path is not None:
        label = f"SSL_cert_file {str(path)!r}"
        data = read_file(path, "SSL_cert_file", where)
        return load_certificate_file(data, label, where, passphrase_of(b)), label
    if value is None:
        raise ConfigError(f"{where}: a TLS port needs SSL_cert_file (or SSL_cert)")
    if isinstance(value, x509.Certificate):
        return CertificateFile([value], None, "object"), "SSL_cert"
    if isinstance(value, (bytes, str)):
        return CertificateFile(load_pem_certificates(as_bytes(value), "SSL_cert", where), None,
                               "PEM"), "SSL_cert"
    chain = list(value) if isinstance(value, (list, tuple)) else []
    if not chain or not all(isinstance(c, x509.Certificate) for c in chain):
        raise ConfigError(
            f"{where}: SSL_cert must be an x509.Certificate, a non-empty list of them or PEM "
            f"bytes, not {type(value).__name__}"
        )
    return CertificateFile(chain, None, "object"), "SSL_cert"


# ---------------------------------------------------------------------------------------------
# The key


def _load_key(cred: Mapping[str, Any], loaded: CertificateFile, cert_label: str,
              b: Build) -> tuple[Any, str]:
    """Return the private key (a cryptography object) and a label naming its source."""
    where = b.where
    value, path = cred.get("SSL_key"), cred.get("SSL_key_file")
    if value is not None and path is not None:
        raise ConfigError(f"{where}: give SSL_key_file or SSL_key, not both")
    given = ("SSL_key" if value is not None
             else None if path is None else f"SSL_key_file {str(path)!r}")
    if (key := own_key(loaded, cert_label, where, given)) is not None:
        return key, cert_label
    if value is not None and not isinstance(value, (bytes, str)):
        return value, "SSL_key"  # a key object; use_privatekey checks its type
    if value is not None:
        data, label = as_bytes(value), "SSL_key"
    elif path is not None:
        data, label = read_file(path, "SSL_key_file", where), f"SSL_key_file {str(path)!r}"
    elif loaded.form == "PEM" and cred.get("SSL_cert_file") is not None:
        cert_path = cred["SSL_cert_file"]
        data = read_file(cert_path, "SSL_cert_file", where)
        label = f"SSL_cert_file {str(cert_path)!r} (no SSL_key_file given)"
    else:
        raise ConfigError(f"{where}: SSL_cert needs SSL_key (or SSL_key_file)")
    return load_key_data(data, label, where, passphrase_of(b)), label


def passphrase_of(b: Build) -> Passphrase:
    """A function giving ``SSL_passwd_cb``'s passphrase as bytes (None without a callback);
    the callback runs only when the function is called, that is for an encrypted file."""
    passwd_cb = b.get("SSL_passwd_cb")
    if passwd_cb is not None:
        require_callable(passwd_cb, "SSL_passwd_cb", b.where)  # a bad value fails at once
    return lambda: None if passwd_cb is None else passphrase(passwd_cb, b.where)


def passphrase(passwd_cb: Any, where: str) -> bytes:
    """Call ``SSL_passwd_cb`` (no arguments) and return its answer as bytes; ConfigError when
    it is not callable, raises or returns something else than str or bytes."""
    require_callable(passwd_cb, "SSL_passwd_cb", where)
    try:
        secret = passwd_cb()
    except Exception as e:
        raise ConfigError(f"{where}: SSL_passwd_cb failed: {e!r}") from e
    if not isinstance(secret, (bytes, str)):
        raise ConfigError(f"{where}: SSL_passwd_cb must return str or bytes, not {type(secret)}")
    return as_bytes(secret)
