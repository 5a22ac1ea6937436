"""TLS-ALPN-01 (RFC 8737): the challenge certificate, and serving it to the CA's handshakes only.

Rules of this module:

* :func:`challenge_certificate` makes the RFC 8737 certificate: self-signed, ECDSA P-256, one
  subjectAltName (a dNSName, or an iPAddress for an IP identifier, RFC 8738), and the critical
  extension id-pe-acmeIdentifier (1.3.6.1.5.5.7.1.31) whose value is the DER OCTET STRING of
  SHA-256(key authorization).
* :class:`ChallengeFiles` keeps the pending challenge certificates as files (``name.pem``,
  certificate and key, mode 0600, written atomically) so that every process serving the port
  sees them: under PreFork the process that orders is not the one the CA reaches.
* :class:`AlpnHook` is installed as a context's ``SSL_create_ctx_callback`` (chaining the
  user's one), on the default context and every SNI context. Its ALPN select callback runs
  inside the handshake: a ClientHello that offers ``acme-tls/1`` for a name with a pending
  challenge gets the challenge certificate (``Connection.use_certificate``) and ``acme-tls/1``
  is negotiated; every other handshake is untouched and gets the port's own ALPN choice
  (``SSL_alpn_protocols``).
* Why the ALPN callback, and ``use_certificate`` rather than ``set_context``: the servername
  callback runs before ALPN is known; OpenSSL handles ALPN after the SNI switch and, in TLS
  1.3, before it picks the certificate and signature algorithm, so a certificate set there is
  the one sent. In TLS 1.2 the cipher suite is already chosen, so the challenge key must be
  of the type of the served one: ACME names are served ECDSA P-256 keys only (issued and
  interim), like the challenge certificate. ``set_context`` in the ALPN callback crashes
  OpenSSL in TLS 1.2 (measured), hence ``use_certificate``/``use_privatekey`` on the
  connection. tests/integration/test_acme.py checks TLS 1.2 and 1.3 and Pebble's validation.
* Callbacks never raise (pyOpenSSL would abort the handshake and print a traceback); a
  challenge file that cannot be read counts as no challenge.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import os
import tempfile
from collections.abc import Callable, Sequence
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from .negotiation import select_alpn
from .selfsigned import self_signed_builder
from .sni import normalize

__all__ = [
    "ACME_TLS_ALPN",
    "ID_PE_ACME_IDENTIFIER",
    "AlpnHook",
    "ChallengeFiles",
    "challenge_certificate",
    "from_reverse_name",
    "pem_key",
    "write_private",
]

#: The ALPN protocol of TLS-ALPN-01 validation handshakes.
ACME_TLS_ALPN = b"acme-tls/1"
#: id-pe-acmeIdentifier (RFC 8737 section 6.1).
ID_PE_ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")

Pair = tuple[x509.Certificate, ec.EllipticCurvePrivateKey]


def challenge_certificate(name: str, key_authorization: str) -> Pair:
    """The RFC 8737 challenge certificate and its key for ``name`` (a DNS name or an IP
    address) and the challenge's key authorization (``token.thumbprint``)."""
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    # DER OCTET STRING of the 32-byte digest: tag 0x04, length 32, the bytes.
    value = b"\x04\x20" + digest
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        self_signed_builder(key, "ACME challenge", [name], days=7)
        .add_extension(x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, value), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def write_private(path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (a temporary file in the same folder, fsync,
    rename), mode 0600 from the start."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")  # mkstemp: mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    """An unencrypted PKCS#8 PEM key (files of mode 0600 only)."""
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_pair(cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> bytes:
    """Certificate and unencrypted PKCS#8 key as one PEM text."""
    return cert.public_bytes(serialization.Encoding.PEM) + pem_key(key)


def from_reverse_name(name: str) -> str:
    """An IP identifier's TLS-ALPN-01 SNI name (RFC 8738 section 6: the reverse mapping,
    ``4.3.2.1.in-addr.arpa`` or the ``ip6.arpa`` nibbles) as the address; other names
    unchanged."""
    try:
        if name.endswith(".in-addr.arpa"):
            labels = name.removesuffix(".in-addr.arpa").split(".")
            if len(labels) == 4:
                return str(ipaddress.IPv4Address(".".join(reversed(labels))))
        elif name.endswith(".ip6.arpa"):
            nibbles = name.removesuffix(".ip6.arpa").split(".")
            if len(nibbles) == 32 and all(len(n) == 1 for n in nibbles):
                digits = "".join(reversed(nibbles))
                return str(ipaddress.IPv6Address(int(digits, 16)))
    except ValueError:
        pass
    return name


class ChallengeFiles:
    """The pending TLS-ALPN-01 challenge certificates, one file per name in ``folder``.

    ``put``/``remove`` are called by the process that orders; ``get`` by the ALPN callback of
    any process (it reads a file only for handshakes offering ``acme-tls/1``, and caches the
    parsed pair by modification time).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self._cache: dict[str, tuple[int, Pair]] = {}

    def _path(self, name: str) -> str:
        # Names are checked DNS names or IP literals; ':' of IPv6 is fine in a file name.
        return os.path.join(self.folder, normalize(name) + ".pem")

    def put(self, name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        """Make ``name``'s challenge pending (served from now on)."""
        os.makedirs(self.folder, mode=0o700, exist_ok=True)
        write_private(self._path(name), pem_pair(cert, key))

    def remove(self, name: str) -> None:
        """``name``'s challenge is over (no file: nothing to do)."""
        with contextlib.suppress(OSError):
            os.unlink(self._path(name))
        self._cache.pop(normalize(name), None)

    def get(self, name: str) -> Pair | None:
        """The pending challenge pair of ``name``, or None."""
        path = self._path(name)
        try:
            stamp = os.stat(path).st_mtime_ns
        except OSError:
            return None
        cached = self._cache.get(normalize(name))
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            with open(path, "rb") as f:
                data = f.read()
            cert = x509.load_pem_x509_certificate(data)
            key = serialization.load_pem_private_key(data, None)
        except (OSError, ValueError):
            return None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            return None
        self._cache[normalize(name)] = (stamp, (cert, key))
        return cert, key


class AlpnHook:
    """The ``SSL_create_ctx_callback`` of an ACME port with TLS-ALPN-01 (see module rules).

    Args:
        challenges: where pending challenge certificates are found.
        ours: the port's ``SSL_alpn_protocols`` (parsed), chosen as before for other clients.
        user: the user's own ``SSL_create_ctx_callback``, called first, or None.
        on_challenge: called with the name each time a challenge certificate is served.
    """

    def __init__(self, challenges: ChallengeFiles, ours: Sequence[bytes],
                 user: Callable[[SSL.Context], Any] | None = None,
                 on_challenge: Callable[[str], None] | None = None) -> None:
        self.challenges = challenges
        self.ours = list(ours)
        self.user = user
        self.on_challenge = on_challenge

    def __call__(self, ctx: SSL.Context) -> None:
        """Per context built: run the user's callback, then install the ALPN choice."""
        if self.user is not None:
            self.user(ctx)
        ctx.set_alpn_select_callback(self.select)

    def select(self, conn: SSL.Connection, offered: list[bytes]) -> Any:
        """OpenSSL's ALPN select callback (inside the handshake; never raises)."""
        try:
            if ACME_TLS_ALPN in offered:
                name = from_reverse_name(normalize(conn.get_servername()))
                pair = self.challenges.get(name) if name else None
                if pair is not None:
                    conn.use_certificate(pair[0])
                    conn.use_privatekey(pair[1])
                    if self.on_challenge is not None:
                        self.on_challenge(name)
                    return ACME_TLS_ALPN
        except Exception:  # a broken file or certificate: serve as if no challenge
            pass
        return select_alpn(self.ours, offered)
