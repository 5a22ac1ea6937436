"""In-memory self-signed certificates for development, tests and ``--self-signed`` style starts.

Rules of this module:

* Nothing is written to disk: the certificate and key are returned as cryptography objects, ready
  for ``build_context({"SSL_cert": cert, "SSL_key": key}, where)``.
* The key is ECDSA P-256 (the cheapest full handshake; see design.md section 5) and the
  certificate is signed with SHA-256.
* Every name becomes a subjectAltName entry: IP literals as ``IPAddress``, everything else as
  ``DNSName``. Modern clients ignore the subject CN, so the SAN is what makes the name verify.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["fingerprint_sha256", "make_self_signed", "san_entry", "self_signed_builder"]

# Clocks of clients and servers drift; a certificate "valid from now" can look like it is from
# the future to a peer whose clock is a little behind.
_BACKDATE = datetime.timedelta(minutes=5)


def san_entry(name: str) -> x509.GeneralName:
    """Return the subjectAltName entry for one host name or IP literal."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_self_signed(
    hostnames: Sequence[str] = ("localhost", "127.0.0.1", "::1"),
    days: int = 30,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """Create a self-signed ECDSA P-256 server certificate, in memory.

    Args:
        hostnames: DNS names and IP literals the certificate is valid for; the first one is also
            the subject common name. Must not be empty.
        days: Validity period in days, counted from now.

    Returns:
        ``(certificate, private_key)`` as cryptography objects.

    Raises:
        ValueError: ``hostnames`` is empty or ``days`` is not positive.
    """
    if not hostnames:
        raise ValueError("make_self_signed needs at least one host name")
    if days <= 0:
        raise ValueError(f"make_self_signed: days must be positive, got {days}")
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        self_signed_builder(key, hostnames[0], hostnames, days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    )
    return builder.sign(key, hashes.SHA256()), key


def self_signed_builder(key: ec.EllipticCurvePrivateKey, common_name: str,
                        hostnames: Sequence[str], days: int) -> x509.CertificateBuilder:
    """The builder of a self-signed certificate for ``key``: subject and issuer common name
    ``common_name``, a random serial number, valid from a little before now (clock drift) for
    ``days`` days, a subjectAltName of ``hostnames``. The caller adds its other extensions and
    signs it (with ``key``)."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName([san_entry(h) for h in hostnames]), False)
    )


def fingerprint_sha256(cert: x509.Certificate) -> str:
    """Return the SHA-256 fingerprint as OpenSSL prints it: ``"AB:CD:..."`` (upper case)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()
