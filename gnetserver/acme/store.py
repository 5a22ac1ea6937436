"""The files of ACME (``SSL_acme_dir``): account keys and URLs, certificates, challenges.

Layout (the folder and every folder in it mode 0700, every file 0600, each written atomically:
a temporary file in the same folder, fsync, rename)::

    SSL_acme_dir/
      accounts/<host>-<hash>/key.pem       the account key (ECDSA P-256), per directory+email
      accounts/<host>-<hash>/account.json  {"directory": ..., "url": the account URL}
      certs/<host>-<hash>/<first name>/certificate.pem
                                           the issued chain (leaf first) and its key, one
                                           file, so a reader never sees a new key with an old
                                           chain; per CA directory (after a change of
                                           SSL_acme_directory, staging to production, the
                                           other CA's one is served until the new one comes)
      challenges/<name>.pem                pending TLS-ALPN-01 certificates (tls.acme_alpn)
      challenges/http-01/<token>           pending HTTP-01 key authorizations

A certificate file found at start counts when it parses, covers every name of the port and
has not expired; a file that fails to parse is logged and replaced by the next issuance.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import hashlib
import json
import os
import tempfile
import urllib.parse
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..tls.acme_alpn import pem_key, write_private

__all__ = ["AcmeStore", "Issued"]


@dataclass(frozen=True)
class Issued:
    """A certificate on disk: its file, the chain (leaf first) and the leaf's validity."""

    path: str
    chain: list[x509.Certificate]
    key: ec.EllipticCurvePrivateKey

    @property
    def not_before(self) -> datetime.datetime:
        return self.chain[0].not_valid_before_utc

    @property
    def not_after(self) -> datetime.datetime:
        return self.chain[0].not_valid_after_utc

    @property
    def serial(self) -> str:
        return format(self.chain[0].serial_number, "x")

    def names(self) -> set[str]:
        """The leaf's subjectAltName entries, as text."""
        try:
            san = self.chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return set()
        dns = {n.lower() for n in san.value.get_values_for_type(x509.DNSName)}
        ips = {str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)}
        return dns | ips


def _read(path: str) -> Issued:
    """The certificate file at ``path`` (OSError, ValueError: missing, does not parse)."""
    with open(path, "rb") as f:
        data = f.read()
    chain = x509.load_pem_x509_certificates(data)
    key = serialization.load_pem_private_key(data, None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: the key is not ECDSA")
    return Issued(path, chain, key)


def _label(directory: str, *more: str) -> str:
    """``<host>-<hash>``: a folder name per CA directory (and contact, for accounts)."""
    host = urllib.parse.urlsplit(directory).hostname or "ca"
    digest = hashlib.sha256("\n".join((directory, *more)).encode()).hexdigest()[:12]
    return f"{host}-{digest}"


def _folder(path: str) -> str:
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # our folder: an existing one with a wider mode is narrowed
    return path


class AcmeStore:
    """One ``SSL_acme_dir`` (made, mode 0700, when missing)."""

    def __init__(self, folder: str) -> None:
        """OSError when the folder cannot be made or written to (a start's ConfigError)."""
        # Made 0700 when missing; an existing folder keeps its mode (it may be shared), the
        # folders and files made in it are 0700/0600 all the same.
        os.makedirs(folder, mode=0o700, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):  # writable? (os.access is wrong for root
            pass                                  # on a read-only mount)
        self.folder = folder

    @property
    def challenge_folder(self) -> str:
        """Where pending TLS-ALPN-01 certificates are kept."""
        return os.path.join(self.folder, "challenges")

    def put_token(self, token: str, key_authorization: str) -> None:
        """Make an HTTP-01 token answerable by every process (PreFork workers too)."""
        folder = _folder(os.path.join(_folder(self.challenge_folder), "http-01"))
        write_private(os.path.join(folder, token), key_authorization.encode("ascii"))

    def remove_token(self, token: str) -> None:
        """The token's challenge is over."""
        try:
            os.unlink(os.path.join(self.challenge_folder, "http-01", token))
        except OSError:
            pass

    def token(self, token: str) -> str | None:
        """A pending token's key authorization, or None (``token`` must be checked first:
        base64url characters only)."""
        try:
            with open(os.path.join(self.challenge_folder, "http-01", token), "rb") as f:
                return f.read(1024).decode("ascii")
        except (OSError, UnicodeDecodeError):
            return None

    # -- accounts --------------------------------------------------------------------------

    def _account_folder(self, directory: str, email: str | None) -> str:
        return _folder(os.path.join(_folder(os.path.join(self.folder, "accounts")),
                                    _label(directory, email or "")))

    def account_key(self, directory: str, email: str | None) -> ec.EllipticCurvePrivateKey:
        """The account key for this CA and contact, made and saved on first use."""
        path = os.path.join(self._account_folder(directory, email), "key.pem")
        try:
            with open(path, "rb") as f:
                key = serialization.load_pem_private_key(f.read(), None)
            if isinstance(key, ec.EllipticCurvePrivateKey):
                return key
        except FileNotFoundError:
            pass
        key = ec.generate_private_key(ec.SECP256R1())
        write_private(path, pem_key(key))
        return key

    def account_url(self, directory: str, email: str | None) -> str | None:
        """The account URL saved for this CA and contact, or None."""
        path = os.path.join(self._account_folder(directory, email), "account.json")
        try:
            with open(path, encoding="utf-8") as f:
                data: dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            return None
        url = data.get("url")
        return url if isinstance(url, str) and data.get("directory") == directory else None

    def save_account_url(self, directory: str, email: str | None, url: str) -> None:
        """Remember the account URL (saves a newAccount round trip at the next start)."""
        path = os.path.join(self._account_folder(directory, email), "account.json")
        write_private(path, json.dumps({"directory": directory, "url": url}).encode())

    # -- certificates ----------------------------------------------------------------------

    def certificate_path(self, names: tuple[str, ...], directory: str) -> str:
        """The file of the certificate for ``names`` (named after the first) from the CA of
        ``directory``; its folders are made by :meth:`save` (PreFork workers ``stat`` this
        path every second)."""
        return os.path.join(self.folder, "certs", _label(directory), names[0],
                            "certificate.pem")

    def load(self, names: tuple[str, ...], directory: str) -> Issued | None:
        """The certificate on disk for ``names`` (None: none, or unreadable).

        Raises:
            ValueError: the file exists but does not parse (the reason in the message).
        """
        try:
            return _read(self.certificate_path(names, directory))
        except FileNotFoundError:
            return None

    def load_other(self, names: tuple[str, ...], directory: str) -> Issued | None:
        """The newest readable certificate for ``names`` from another CA than ``directory``'s
        (``SSL_acme_directory`` changed, staging to production: it stays served until the new
        CA's certificate comes), or None."""
        found: list[Issued] = []
        mine = self.certificate_path(names, directory)
        for path in glob.glob(os.path.join(glob.escape(self.folder), "certs", "*",
                                           glob.escape(names[0]), "certificate.pem")):
            if path != mine:
                with contextlib.suppress(OSError, ValueError):
                    found.append(_read(path))
        return max(found, key=lambda issued: issued.not_after, default=None)

    def save(self, names: tuple[str, ...], directory: str, chain_pem: bytes,
             key: ec.EllipticCurvePrivateKey) -> Issued:
        """Write an issued chain and its key (one file, atomically); returns it as loaded.

        Raises:
            ValueError: not a PEM chain, or its leaf is not for ``key`` (a CA that answered
                with another order's certificate): nothing is written.
        """
        path = self.certificate_path(names, directory)
        chain = x509.load_pem_x509_certificates(chain_pem)  # ValueError: not a chain
        if chain[0].public_key() != key.public_key():
            raise ValueError("the CA's certificate is not for the key of this order's CSR")
        folder = os.path.dirname(path)
        _folder(os.path.dirname(os.path.dirname(folder)))  # certs/
        _folder(os.path.dirname(folder))  # certs/<host>-<hash>/
        _folder(folder)
        write_private(path, chain_pem.rstrip(b"\n") + b"\n" + pem_key(key))
        return Issued(path, chain, key)
