"""ACME settings and schedules, pure: the ``SSL_acme_*`` options of one port checked and typed,
the ACME identifiers of its names, when to renew, how long to wait after a failure.

Rules of this module:

* It imports neither gevent, OpenSSL nor cryptography (the option table and ``--help`` read
  :data:`ACME_SSL_OPTIONS` without a TLS library); :mod:`gnetserver.acme` does the work.
* A bad value is a :class:`~gnetserver.errors.ConfigError` naming the port, the option, the
  value and the reason, raised at start.
* Renewal starts at two thirds of a certificate's lifetime (Let's Encrypt's advice: 60 days of
  90); a failure is retried after :func:`retry_delay`, doubling from one minute to one hour.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import datetime
import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = [
    "ACME_SSL_OPTIONS",
    "CHALLENGES",
    "DEFAULT_DIRECTORY",
    "HTTP01_PREFIX",
    "AcmeSettings",
    "acme_settings",
    "identifier",
    "renewal_time",
    "retry_delay",
]

#: Let's Encrypt's production directory (its staging one:
#: https://acme-staging-v02.api.letsencrypt.org/directory).
DEFAULT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
#: The challenge types gnetserver answers.
CHALLENGES = ("tls-alpn-01", "http-01")
#: The path of HTTP-01 requests, the token follows (RFC 8555 section 8.3).
HTTP01_PREFIX = "/.well-known/acme-challenge/"
#: What a name gets before its first certificate (SSL_acme_interim).
INTERIMS = ("self-signed", "refuse")
DEFAULT_DIR = "~/.local/share/gnetserver/acme"
#: Options whose values never appear in a message.
_SECRETS = frozenset({"SSL_acme_eab_hmac_key"})

#: The ACME options (per port, or server-wide like every SSL_* option): name -> meaning and
#: default, for the option table, ``--help`` and README.
ACME_SSL_OPTIONS: dict[str, str] = {
    "SSL_acme_domains": "names (and IP addresses, RFC 8738) this port gets a certificate for "
    "from an ACME CA (RFC 8555), obtained and renewed in the background: a list or "
    "'a.example,b.example'; each becomes an SNI name of the port (the first one is also the "
    "default unless SSL_cert_file has one); proto ssl only (default: none, no ACME)",
    "SSL_acme_directory": "the ACME CA's directory URL, e.g. Let's Encrypt's staging "
    "https://acme-staging-v02.api.letsencrypt.org/directory (default: " + DEFAULT_DIRECTORY
    + ")",
    "SSL_acme_email": "contact address of the ACME account (default: none)",
    "SSL_acme_eab_kid": "External Account Binding key id, for CAs that require one (ZeroSSL, "
    "Google, many private CAs), with SSL_acme_eab_hmac_key (default: none)",
    "SSL_acme_eab_hmac_key": "External Account Binding MAC key, base64url as the CA gives it "
    "(default: none)",
    "SSL_acme_ca_file": "PEM file of the CAs trusted for the ACME directory's HTTPS, for a "
    "private CA (default: the system's trust store)",
    "SSL_acme_dir": "folder of the account key, certificate keys and certificates (made mode "
    "0700, files 0600, written atomically) (default: " + DEFAULT_DIR + ")",
    "SSL_acme_challenge": "'tls-alpn-01' (RFC 8737, answered on this TLS port, which the CA "
    "must reach on 443) or 'http-01' (answered by a responder on SSL_acme_http_listen, which "
    "the CA must reach on 80) (default: tls-alpn-01)",
    "SSL_acme_interim": "what a name without a valid certificate gets while the CA is asked: "
    "'self-signed' (a self-signed certificate, 7 days) or 'refuse' (its handshakes fail; "
    "clients without SNI too, unless SSL_cert_file gives a default) (default: self-signed)",
    "SSL_acme_http_listen": "[host:]port of the HTTP-01 responder (/.well-known/acme-challenge/"
    "<token>) with SSL_acme_challenge http-01; 'http': no responder of its own, the server's "
    "HTTP personality (GHTTPServer) answers on its own ports (default: 80, every address)",
}


@dataclass(frozen=True)
class AcmeSettings:
    """The ACME options of one port, checked.

    Attributes:
        domains: the names, normalized (lower case, no trailing dot), in the given order.
        directory: the directory URL.
        email: the account's contact address, or None.
        ca_file: the CA file for the directory's HTTPS, or None (system store).
        dir: the storage folder (``~`` expanded, absolute).
        challenge: ``tls-alpn-01`` or ``http-01``.
        http_listen: (host, port) of the HTTP-01 responder (host '' = every address), or
            None: the server's HTTP personality answers (``SSL_acme_http_listen http``).
        interim: ``self-signed`` or ``refuse``.
        eab: (key id, MAC key bytes) of the External Account Binding, or None.
    """

    domains: tuple[str, ...]
    directory: str
    email: str | None
    ca_file: str | None
    dir: str
    challenge: str
    http_listen: tuple[str, int] | None
    interim: str = "self-signed"
    eab: tuple[str, bytes] | None = None

    def __repr__(self) -> str:  # the EAB MAC key is a secret: never in a log or traceback
        return (f"AcmeSettings(domains={self.domains!r}, directory={self.directory!r}, "
                f"challenge={self.challenge!r}, dir={self.dir!r})")

    @property
    def account_key(self) -> tuple[str, str | None, str | None]:
        """What selects one ACME account: directory, contact, storage (ports that agree
        share it)."""
        return (self.directory, self.email, self.dir)


def wants_acme(options: Mapping[str, Any]) -> bool:
    """True when a port's resolved options ask for ACME certificates."""
    return options.get("SSL_acme_domains") is not None


def acme_settings(options: Mapping[str, Any], where: str) -> AcmeSettings:
    """Check and type the ``SSL_acme_*`` options of one port (``where`` starts messages).

    Raises:
        ConfigError: a missing or bad value (names the option, value and reason).
    """
    domains = _domains(options.get("SSL_acme_domains"), where)
    directory = _text(options, "SSL_acme_directory", where) or DEFAULT_DIRECTORY
    if not directory.startswith(("https://", "http://")):
        raise ConfigError(f"{where}: SSL_acme_directory {directory!r} is not an http(s) URL")
    challenge = (_text(options, "SSL_acme_challenge", where) or "tls-alpn-01").lower()
    if challenge not in CHALLENGES:
        raise ConfigError(f"{where}: SSL_acme_challenge {challenge!r} is not one of "
                          f"{', '.join(CHALLENGES)}")
    email = _text(options, "SSL_acme_email", where)
    if email is not None and ("@" not in email or any(c in email for c in " \t\r\n,")):
        raise ConfigError(f"{where}: SSL_acme_email {email!r} is not one e-mail address")
    folder = _text(options, "SSL_acme_dir", where) or DEFAULT_DIR
    interim = (_text(options, "SSL_acme_interim", where) or "self-signed").lower()
    if interim not in INTERIMS:
        raise ConfigError(f"{where}: SSL_acme_interim {interim!r} is not one of "
                          f"{', '.join(INTERIMS)}")
    eab_kid = _text(options, "SSL_acme_eab_kid", where)
    eab_key = _text(options, "SSL_acme_eab_hmac_key", where)
    if (eab_kid is None) != (eab_key is None):
        raise ConfigError(f"{where}: SSL_acme_eab_kid and SSL_acme_eab_hmac_key go together "
                          "(the CA gives both)")
    eab = None
    if eab_kid is not None and eab_key is not None:
        try:
            mac = base64.urlsafe_b64decode(eab_key + "=" * (-len(eab_key) % 4))
        except (ValueError, binascii.Error):
            mac = b""
        if not mac:
            raise ConfigError(f"{where}: SSL_acme_eab_hmac_key is not base64url (the value "
                              "is not shown: it is a secret)")
        eab = (eab_kid, mac)
    ca_file = _text(options, "SSL_acme_ca_file", where)
    if ca_file is not None and not os.path.isfile(ca_file):
        raise ConfigError(f"{where}: SSL_acme_ca_file {ca_file!r} is not a file")
    return AcmeSettings(
        domains=domains,
        directory=directory,
        email=email,
        ca_file=ca_file,
        dir=os.path.abspath(os.path.expanduser(folder)),
        challenge=challenge,
        http_listen=_listen(options.get("SSL_acme_http_listen"), where),
        interim=interim,
        eab=eab,
    )


def _text(options: Mapping[str, Any], name: str, where: str) -> str | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        shown = " (the value is not shown: it is a secret)" if name in _SECRETS else \
            f", not {value!r}"
        raise ConfigError(f"{where}: {name} must be a non-empty text{shown}")
    return value.strip()


def _domains(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        items: list[Any] = value.replace(",", " ").split()
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = []
    names: list[str] = []
    for item in items:
        if not isinstance(item, str):
            raise ConfigError(f"{where}: SSL_acme_domains entries are names, not {item!r}")
        name = item.strip().rstrip(".").lower()
        why = _bad_name(name)
        if why:
            raise ConfigError(f"{where}: SSL_acme_domains entry {item!r}: {why}")
        with contextlib.suppress(ValueError):  # an address as the CA and the leaf write it
            name = str(ipaddress.ip_address(name))
        if name not in names:
            names.append(name)
    if not names:
        raise ConfigError(f"{where}: SSL_acme_domains {value!r} names no domain (a list like "
                          "['a.example', 'b.example'] or the text 'a.example,b.example')")
    return tuple(names)


def _bad_name(name: str) -> str | None:
    """Why a name cannot be an ACME identifier, or None."""
    try:
        ipaddress.ip_address(name)
        return None
    except ValueError:
        pass
    if name.startswith("*"):
        return "wildcards need the DNS-01 challenge, which gnetserver does not answer"
    if len(name) > 253 or "." not in name:
        return "not a fully qualified domain name"
    for label in name.split("."):
        if not label or len(label) > 63 or label.startswith("-") or label.endswith("-") or \
                not all(c.isascii() and (c.isalnum() or c == "-") for c in label):
            return f"label {label!r} is not a valid DNS label (use the punycode form)"
    return None


def _listen(value: Any, where: str) -> tuple[str, int] | None:
    if value is None:
        return ("", 80)
    text = str(value).strip()
    if text.lower() == "http":
        return None
    host, colon, port = text.rpartition(":")
    if not colon:
        host, port = "", text
    host = host.strip("[]")
    if host in ("*", "0.0.0.0"):
        host = ""
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"{where}: SSL_acme_http_listen {value!r} is not [host:]port")
    return (host, int(port))


def identifier(name: str) -> dict[str, str]:
    """The ACME identifier of a name: ``{"type": "ip", ...}`` for an IP address (RFC 8738),
    else ``{"type": "dns", ...}``."""
    try:
        return {"type": "ip", "value": str(ipaddress.ip_address(name))}
    except ValueError:
        return {"type": "dns", "value": name}


def renewal_time(not_before: datetime.datetime,
                 not_after: datetime.datetime) -> datetime.datetime:
    """When to renew a certificate: two thirds into its lifetime."""
    return not_before + (not_after - not_before) * 2 / 3


def retry_delay(failures: int, first: float = 60.0, most: float = 3600.0) -> float:
    """Seconds to wait after the ``failures``-th failure in a row (1, 2, ...): ``first``,
    doubling, at most ``most``."""
    return float(min(most, first * 2 ** max(0, failures - 1)))
