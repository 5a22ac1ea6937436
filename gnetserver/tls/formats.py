"""Certificate and key files in PEM, DER or PKCS#12, told apart by their content.

IO::Socket::SSL reads ``SSL_cert_file`` as PEM (a chain), else DER (one certificate), else
PKCS#12 (certificate, chain and usually the key), and ``SSL_key_file`` as PEM, else DER. Both
TLS backends (:mod:`.certs` for proto ``ssl``, :mod:`.stdlib_context` for ``ssleay``) read
files through this module, so they accept the same files and say the same things about them.

Rules of this module:

* **By content, not by name**: PEM is text with a ``-----BEGIN`` line; anything else is tried
  as a DER certificate, then as PKCS#12 (a ``.p12``/``.pfx`` name is not required, as in
  IO::Socket::SSL). A file that is none of them is a ConfigError saying what was tried.
* **Passphrases**: a PKCS#12 file is opened without a password first (also as the empty one,
  which ``openssl pkcs12 -export -passout pass:`` writes), then with ``SSL_passwd_cb()``'s
  answer; an encrypted DER key needs ``SSL_passwd_cb`` as an encrypted PEM key does. The
  callback is called at most once per file, without arguments (as for PEM keys).
* **The chain comes out in order**: leaf first, then each issuer after the certificate it
  signed (PKCS#12 files store their extra certificates in no promised order); certificates that
  do not link follow in the order read.
* cryptography only: nothing here touches OpenSSL's API or the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import (
    load_der_private_key,
    load_pem_private_key,
    pkcs12,
)

from ..errors import ConfigError

__all__ = ["CertificateFile", "is_pem", "load_certificate_file", "load_key_data",
           "load_pem_certificates", "own_key"]

#: Returns the passphrase (``SSL_passwd_cb`` already checked and called), or None without one.
Passphrase = Callable[[], "bytes | None"]


@dataclass(frozen=True)
class CertificateFile:
    """What an ``SSL_cert_file`` held.

    Attributes:
        chain: the leaf first, then its chain.
        key: the private key (PKCS#12 files only; a PEM file's key is read as a key file).
        form: ``"PEM"``, ``"DER"`` or ``"PKCS#12"``, for messages.
    """

    chain: list[x509.Certificate]
    key: Any
    form: str


def is_pem(data: bytes) -> bool:
    """True when ``data`` is PEM text (has a ``-----BEGIN`` line)."""
    return b"-----BEGIN " in data


def load_pem_certificates(data: bytes, label: str, where: str) -> list[x509.Certificate]:
    """The certificates of PEM ``data`` (one or more); ConfigError naming ``where`` and
    ``label`` when it holds none."""
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError(f"{where}: {label} holds no valid PEM certificate ({e})") from e


def load_certificate_file(data: bytes, label: str, where: str,
                          passphrase: Passphrase) -> CertificateFile:
    """Read an ``SSL_cert_file``'s bytes as PEM, DER or PKCS#12 (see the module rules).

    Raises:
        ConfigError: no certificate in any of the forms, or a PKCS#12 file that no passphrase
            opens; the message names ``where`` and ``label``.
    """
    if is_pem(data):
        return CertificateFile(load_pem_certificates(data, label, where), None, "PEM")
    try:
        return CertificateFile([x509.load_der_x509_certificate(data)], None, "DER")
    except ValueError:
        pass
    key, cert, extra = _open_pkcs12(data, label, where, passphrase)
    extra = list(extra)
    if cert is None:  # no key in the file: its certificates are all "additional" ones
        cert = _leaf_of(extra)
        if cert is None:
            raise ConfigError(f"{where}: {label} is a PKCS#12 file without a certificate")
        extra.remove(cert)
    return CertificateFile(_ordered(cert, extra), key, "PKCS#12")


def own_key(loaded: CertificateFile, label: str, where: str, given: str | None) -> Any:
    """The key that comes with an ``SSL_cert_file``: a PKCS#12 file's own key, or None when the
    key is to be read from ``given`` (the other key source named, or None) or, for PEM, from
    the file itself.

    Raises:
        ConfigError: a PKCS#12 file with its own key and ``given`` too (IO::Socket::SSL would
            ignore the second key), or a DER or PKCS#12 file without a key and nothing given.
    """
    if loaded.key is not None:
        if given is not None:
            raise ConfigError(f"{where}: {label} is a PKCS#12 file with its own key; drop "
                              f"{given}")
        return loaded.key
    if given is None and loaded.form in ("DER", "PKCS#12"):
        raise ConfigError(f"{where}: {label} is a {loaded.form} file without a private key; "
                          "give SSL_key_file")
    return None


def _leaf_of(certs: list[x509.Certificate]) -> x509.Certificate | None:
    """The certificate that issued none of the others (the first such one)."""
    issuers = {c.issuer for c in certs if c.issuer != c.subject}
    return next((c for c in certs if c.subject not in issuers), certs[0] if certs else None)


def _open_pkcs12(data: bytes, label: str, where: str, passphrase: Passphrase) -> Any:
    for password in (None, b""):
        try:
            return pkcs12.load_key_and_certificates(data, password)
        except ValueError:
            continue
        except UnsupportedAlgorithm as e:
            raise ConfigError(f"{where}: {label}: unsupported PKCS#12 encryption ({e})") from e
    if not _looks_like_der(data):
        raise ConfigError(f"{where}: {label} holds no valid PEM certificate (nor a DER "
                          "certificate or a PKCS#12 file)")
    secret = passphrase()
    if secret is None:
        raise ConfigError(f"{where}: {label} is neither PEM nor DER, and as PKCS#12 it needs a "
                          "passphrase: give SSL_passwd_cb")
    try:
        return pkcs12.load_key_and_certificates(data, secret)
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{where}: cannot open {label} as PKCS#12 (wrong passphrase from "
                          f"SSL_passwd_cb, or not a PKCS#12 file: {e})") from e


def _looks_like_der(data: bytes) -> bool:
    """An ASN.1 SEQUENCE at the start (DER certificates and PKCS#12 files both are one)."""
    return len(data) > 4 and data[0] == 0x30


def _ordered(leaf: x509.Certificate, extra: list[x509.Certificate]) -> list[x509.Certificate]:
    """The leaf, then each issuer after the certificate it signed, then the rest."""
    chain, rest = [leaf], list(extra)
    while rest:
        issuer = next((c for c in rest if c.subject == chain[-1].issuer
                       and c.subject != chain[-1].subject), None)
        if issuer is None:
            break
        chain.append(issuer)
        rest.remove(issuer)
    return chain + rest


def load_key_data(data: bytes, label: str, where: str, passphrase: Passphrase) -> Any:
    """Read a private key in PEM or DER (PKCS#8, PKCS#1, SEC1; encrypted or not).

    A needless passphrase is ignored, as IO::Socket::SSL does; ``passphrase`` is only called
    for an encrypted key.

    Raises:
        ConfigError: an encrypted key without SSL_passwd_cb, a wrong passphrase, or no key;
            the message names ``where`` and ``label``.
    """
    pem = is_pem(data)
    load = load_pem_private_key if pem else load_der_private_key
    form = "PEM" if pem else "PEM or DER"  # not PEM text: DER was tried
    try:
        return load(data, password=None)
    except TypeError:
        pass  # encrypted: a passphrase is needed
    except (ValueError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{where}: cannot load a {form} private key from {label} ({e})") from e
    secret = passphrase()
    if secret is None:
        raise ConfigError(f"{where}: {label} is an encrypted private key; give SSL_passwd_cb")
    try:
        return load(data, password=secret)
    except (ValueError, TypeError, UnsupportedAlgorithm) as e:
        raise ConfigError(f"{where}: cannot load a {form} private key from {label} (wrong "
                          f"passphrase from SSL_passwd_cb?)") from e
