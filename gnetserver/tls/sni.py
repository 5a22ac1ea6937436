"""SNI: one port, one certificate per host name (IO::Socket::SSL's hash form).

``SSL_cert_file``, ``SSL_key_file``, ``SSL_cert``, ``SSL_key`` and the OCSP staple keys may be
dicts keyed by host name::

    SSL_cert_file={"": "default.pem", "a.example": "a.pem", "b.example": "b.pem"}

Rules of this module:

* ``''`` is the default: clients that send no name or a name without an entry get it. Without a
  ``''`` entry such clients fail the handshake (the default context has no certificate), which
  is IO::Socket::SSL's fatal alert for unknown names.
* Names match exactly, case-insensitively, ignoring a trailing dot (no wildcards, as in
  IO::Socket::SSL). ``'name%ecc'`` (``'%ecc'`` for the default) adds a second certificate to
  ``name``, normally ECDSA beside RSA; OpenSSL picks the one the client supports.
* A scalar value applies to every name; a dict entry only to its name (a missing entry counts
  as not given, so ``SSL_key_file`` may be a dict while the keys of some names sit in their
  certificate files).
* Each name gets a whole context built from the same options, so only its certificate differs;
  the servername callback of the default context moves a connection to its name's context
  (OpenSSL keeps the session cache and ticket keys of the first context, so resumption works
  for every name).
* Proto ``ssleay`` (:mod:`.stdlib_context`) splits its options with :func:`split_by_name` and
  matches names with :func:`normalize` too: both backends accept and match the same names.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from OpenSSL import SSL

from ..errors import ConfigError
from .certs import CREDENTIAL_KEYS

__all__ = ["PER_CERTIFICATE_KEYS", "describe", "install_sni", "normalize", "split_by_name"]

#: Keys that may be dicts keyed by SNI name: one value per certificate.
PER_CERTIFICATE_KEYS = (*CREDENTIAL_KEYS, "SSL_ocsp_staple_file", "SSL_ocsp_staple_callback")

_ECC = "%ecc"

#: One certificate's keys (a subset of PER_CERTIFICATE_KEYS, values never dicts).
Credential = dict[str, Any]


def normalize(name: str | bytes | None) -> str:
    """A host name as the lookup key: text, lower case, no trailing dot ('' for none)."""
    if name is None:
        return ""
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    return text.strip().rstrip(".").lower()


def split_by_name(opts: Mapping[str, Any], where: str) -> dict[str, list[Credential]]:
    """Group the per-certificate keys by SNI name: ``{name: [credential, %ecc twin?]}``.

    Without any dict value the result is ``{"": [credential]}``. Names come out normalized,
    ``''`` first, then sorted.
    """
    dicts = {k: opts[k] for k in PER_CERTIFICATE_KEYS if isinstance(opts.get(k), Mapping)}
    entries: dict[str, str] = {}  # raw dict key -> normalized entry ("name" or "name%ecc")
    for option, table in dicts.items():
        for raw in table:
            entries[raw] = _entry(raw, option, where)
    cert_entries = {entries[raw] for k, t in dicts.items() if k in CREDENTIAL_KEYS for raw in t}
    if not cert_entries:
        cert_entries = {""}
    for option, table in dicts.items():
        for raw in table:
            if entries[raw] not in cert_entries:
                raise ConfigError(f"{where}: {option} has an entry for {raw!r}, which has no "
                                  "certificate (no such key in SSL_cert_file/SSL_cert)")
    grouped: dict[str, list[Credential]] = {}
    for entry in sorted(cert_entries, key=lambda e: (e.endswith(_ECC), e != "", e)):
        name = entry.removesuffix(_ECC)
        if entry.endswith(_ECC) and name not in grouped:
            raise ConfigError(f"{where}: SNI entry {entry!r} adds a certificate to {name!r}, "
                              "which has none of its own")
        grouped.setdefault(name, []).append(_credential(opts, dicts, entry))
    return dict(sorted(grouped.items(), key=lambda item: (item[0] != "", item[0])))


def _entry(raw: Any, option: str, where: str) -> str:
    if not isinstance(raw, str):
        raise ConfigError(f"{where}: {option} dict keys are SNI host names ('' = default), "
                          f"not {raw!r}")
    name, percent, suffix = raw.partition("%")
    if percent and suffix.lower() != "ecc":
        raise ConfigError(f"{where}: {option} key {raw!r}: only the suffix '%ecc' is known")
    return normalize(name) + (_ECC if percent else "")


def _credential(opts: Mapping[str, Any], dicts: Mapping[str, Mapping[Any, Any]],
                entry: str) -> Credential:
    """The values of one entry: its dict values, and every scalar value."""
    cred: Credential = {}
    for key in PER_CERTIFICATE_KEYS:
        if key in dicts:
            table = dicts[key]
            cred[key] = next((v for raw, v in table.items() if _same(raw, entry)), None)
        else:
            cred[key] = opts.get(key)
    return cred


def _same(raw: Any, entry: str) -> bool:
    name, percent, _ = str(raw).partition("%")
    return normalize(name) + (_ECC if percent else "") == entry


def describe(where: str, name: str) -> str:
    """``where`` for the context of one SNI name (the default keeps the port's text)."""
    return where if name == "" else f"{where} (SNI name {name!r})"


def install_sni(default: SSL.Context, by_name: Mapping[str, SSL.Context]) -> None:
    """Switch each connection to the context of the name it sent, if there is one."""

    def choose(conn: SSL.Connection) -> None:
        # Runs inside OpenSSL's handshake and must not raise: pyOpenSSL would print the
        # traceback and abort the handshake. An unknown name stays on the default context.
        chosen = by_name.get(normalize(conn.get_servername()))
        if chosen is not None:
            conn.set_context(chosen)

    default.set_tlsext_servername_callback(choose)
