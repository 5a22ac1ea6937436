"""Build the stdlib ``ssl`` context of one ``ssleay`` port from IO::Socket::SSL-named options.

The ``ssleay`` protocol (:mod:`gnetserver.proto.ssleay`) serves TLS with the stdlib ``ssl``
module through ``gevent.ssl`` instead of pyOpenSSL. :func:`build_stdlib_context` gives it a
context with the same meaning and the same secure defaults as :func:`~gnetserver.tls.build_context`
for the options the stdlib can express.

Rules of this module:

* :data:`SUPPORTED_SSLEAY_OPTIONS` lists what ``ssleay`` honours. Any other ``SSL_*`` key with a
  value is a :class:`~gnetserver.errors.ConfigError` that lists the supported names (proto
  ``ssl`` implements the rest): an option is never silently ignored. ``None`` means "not given".
* **SNI:** ``SSL_cert_file``/``SSL_key_file``/``SSL_cert``/``SSL_key`` may be dicts keyed by host
  name, ``''`` being the default (IO::Socket::SSL's hash form; ``'name%ecc'`` adds a second,
  ECDSA certificate to ``name``), split and checked by :func:`~gnetserver.tls.sni.split_by_name`
  and matched by :func:`~gnetserver.tls.sni.normalize` exactly as for proto ``ssl``. Each name
  gets its own context with the same settings; the ``sni_callback`` moves a connection to the
  context of the name it sent (unknown or absent name: the default; no default: a fatal
  ``unrecognized_name`` alert) and records the name on the socket
  (:attr:`ServerSSLSocket.sni_name`), since the stdlib has no server-side getter.
* Secure defaults as for proto ``ssl``: TLS 1.2 minimum, forward-secret AEAD ciphers
  (:data:`~gnetserver.tls.context.DEFAULT_CIPHER_LIST`), server cipher order, no compression,
  no renegotiation. The stdlib cannot set TLS 1.3 suites, a group *list*, a verify callback or
  session ticket keys: ``SSL_ecdh_curve`` takes a single curve here.
* The stdlib loads certificates and keys from files only; in-memory ``SSL_cert``/``SSL_key``
  (and the ``self_signed`` certificate) are written to a private temporary directory (mode
  0700) and removed as soon as they are loaded.
* Files are read as proto ``ssl`` reads them (:mod:`.formats`): ``SSL_cert_file`` in PEM, DER
  or PKCS#12, ``SSL_key_file`` in PEM or DER. The stdlib reads PEM only, so a DER or PKCS#12
  file is loaded with cryptography (``SSL_passwd_cb`` opening it) and handed over as PEM the
  way in-memory keys are (an unencrypted key in that private directory, for a moment).
"""

from __future__ import annotations

import os
import ssl
import tempfile
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import gevent.ssl
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ..errors import ConfigError
from . import certs, formats, sni
from .context import check_names
from .negotiation import DEFAULT_CIPHER_LIST, parse_alpn, parse_ssl_version
from .util import read_file, require_callable, to_bool
from .verify import verify_bits

__all__ = ["SUPPORTED_SSLEAY_OPTIONS", "ServerSSLContext", "ServerSSLSocket",
           "build_stdlib_context", "stdlib_reason"]

SUPPORTED_SSLEAY_OPTIONS: dict[str, str] = {
    "SSL_cert_file": "PEM file, leaf first then its chain; or a dict {SNI name: file, '': default}",
    "SSL_key_file": "PEM private key file (default: the key inside SSL_cert_file); or a dict",
    "SSL_cert": "x509.Certificate, list of them or PEM bytes; or a dict keyed by SNI name",
    "SSL_key": "cryptography private key or PEM bytes; or a dict keyed by SNI name",
    "SSL_passwd_cb": "callable returning the passphrase of an encrypted key",
    "SSL_version": "'SSLv23:!TLSv1:!TLSv1_1' style range or one version (default: TLS 1.2+)",
    "SSL_cipher_list": f"OpenSSL cipher string for TLS <= 1.2 (default: {DEFAULT_CIPHER_LIST})",
    "SSL_honor_cipher_order": "prefer the server's cipher order (default: 1)",
    "SSL_ecdh_curve": "one key exchange group, e.g. 'P-256' or 'X25519' (default: OpenSSL's)",
    "SSL_dh_file": "PEM DH parameters for DHE suites (default: OpenSSL's built-in groups)",
    "SSL_ca_file": "PEM file of CAs trusted for client certificates",
    "SSL_ca_path": "hashed directory of CAs trusted for client certificates",
    "SSL_verify_mode": "client certificates: 0 none, 1 peer, 2/3 require, +4 once (default: 0)",
    "SSL_alpn_protocols": "ALPN protocols offered, e.g. ['h2', 'http/1.1'] or 'h2,http/1.1'",
    "SSL_error_trap": "callable(client, error) called when a handshake fails (the server "
    "calls it; it is not part of the context)",
}

_NIST_CURVES = {"p-256": "prime256v1", "p-384": "secp384r1", "p-521": "secp521r1"}


class ServerSSLSocket(gevent.ssl.SSLSocket):
    """gevent's SSLSocket plus the SNI name the client sent (``None`` when it sent none)."""

    sni_name: str | None = None


class ServerSSLContext(gevent.ssl.SSLContext):
    """gevent's SSLContext whose ``wrap_socket`` makes :class:`ServerSSLSocket` objects."""

    __slots__ = ()
    sslsocket_class = ServerSSLSocket


def build_stdlib_context(opts: Mapping[str, Any], where: str) -> ServerSSLContext:
    """Build the server context of one ``ssleay`` port (at bind; raises ConfigError).

    Args:
        opts: The port's resolved options; keys not starting with ``SSL_`` are skipped.
        where: The port, e.g. ``"port 127.0.0.1:8443/ssleay"``; every error starts with it.

    Returns:
        The default context, with an ``sni_callback`` that selects the per-name contexts.
    """
    check_names(opts, where, SUPPORTED_SSLEAY_OPTIONS, "ssleay")
    contexts: dict[str, ServerSSLContext] = {}
    for name, credentials in sni.split_by_name(opts, where).items():  # names normalized
        contexts[name] = _new_context(opts, where)
        for credential in credentials:
            _load_credential(contexts[name], credential, opts.get("SSL_passwd_cb"),
                             sni.describe(where, name))
    default = contexts.get("") or _new_context(opts, where)
    default.sni_callback = _SNISelector(contexts)
    return default


class _SNISelector:
    """The ``sni_callback``: record the client's name, move it to that name's context."""

    def __init__(self, contexts: dict[str, ServerSSLContext]) -> None:
        self.contexts = contexts  # keyed by sni.normalize'd names

    def __call__(self, sock: Any, server_name: str | None, context: Any) -> int | None:
        sock.sni_name = server_name
        chosen = self.contexts.get(sni.normalize(server_name)) or self.contexts.get("")
        if chosen is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME  # no default certificate
        if chosen is not context:
            sock.context = chosen
        return None


# ---------------------------------------------------------------------------------------------
# The settings every per-name context shares


def _new_context(opts: Mapping[str, Any], where: str) -> ServerSSLContext:
    ctx = ServerSSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.options |= (ssl.OP_NO_COMPRESSION | ssl.OP_SINGLE_DH_USE | ssl.OP_SINGLE_ECDH_USE
                    | getattr(ssl, "OP_NO_RENEGOTIATION", 0))
    for apply in _APPLIERS:
        apply(ctx, opts, where)
    return ctx


def _apply_version(ctx: ServerSSLContext, opts: Mapping[str, Any], where: str) -> None:
    spec = opts.get("SSL_version")
    low: int = ssl.TLSVersion.TLSv1_2  # the default: TLS 1.2+
    high: int = ssl.TLSVersion.TLSv1_3
    if spec is not None:
        low, high = parse_ssl_version(str(spec), where)  # OpenSSL's numbers, as TLSVersion's
    ctx.minimum_version = ssl.TLSVersion(low)
    # The newest version is left open, as proto ssl does, so a newer OpenSSL may offer more.
    newest = high == ssl.TLSVersion.TLSv1_3
    ctx.maximum_version = ssl.TLSVersion.MAXIMUM_SUPPORTED if newest else ssl.TLSVersion(high)


def _apply_ciphers(ctx: ServerSSLContext, opts: Mapping[str, Any], where: str) -> None:
    text = opts.get("SSL_cipher_list")
    text = DEFAULT_CIPHER_LIST if text is None else str(text)
    try:
        ctx.set_ciphers(text)
    except ssl.SSLError as e:
        raise ConfigError(f"{where}: invalid SSL_cipher_list {text!r}: {stdlib_reason(e)}") from e
    if not to_bool(opts.get("SSL_honor_cipher_order", 1), "SSL_honor_cipher_order", where):
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE


def _apply_groups(ctx: ServerSSLContext, opts: Mapping[str, Any], where: str) -> None:
    curve, dh_file = opts.get("SSL_ecdh_curve"), opts.get("SSL_dh_file")
    if curve is not None:
        name = str(curve).strip()
        if ":" in name or "," in name:
            raise ConfigError(f"{where}: SSL_ecdh_curve {curve!r}: proto ssleay takes one curve "
                              "(the stdlib ssl module cannot set a group list; use proto ssl)")
        try:
            ctx.set_ecdh_curve(_NIST_CURVES.get(name.lower(), name))
        except (ValueError, ssl.SSLError) as e:
            raise ConfigError(f"{where}: invalid SSL_ecdh_curve {curve!r}: {e}") from e
    if dh_file is not None:
        try:
            ctx.load_dh_params(str(dh_file))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{where}: SSL_dh_file {str(dh_file)!r}: {stdlib_reason(e)}") from e


def _apply_verify(ctx: ServerSSLContext, opts: Mapping[str, Any], where: str) -> None:
    ca_file, ca_path, value = (opts.get(k) for k in ("SSL_ca_file", "SSL_ca_path",
                                                      "SSL_verify_mode"))
    if ca_file is not None or ca_path is not None:
        if ca_path is not None and not os.path.isdir(ca_path):
            raise ConfigError(f"{where}: SSL_ca_path {str(ca_path)!r} is not a directory")
        try:
            ctx.load_verify_locations(ca_file, ca_path)
        except (OSError, ValueError) as e:
            what = f"SSL_ca_file {str(ca_file)!r}" if ca_file is not None else "SSL_ca_path"
            raise ConfigError(f"{where}: cannot load {what}: {stdlib_reason(e)}") from e
    bits = verify_bits(value, where)
    if bits and ca_file is None and ca_path is None:
        raise ConfigError(f"{where}: SSL_verify_mode {value!r} verifies clients and needs "
                          "SSL_ca_file or SSL_ca_path")
    # Bit 4 (VERIFY_CLIENT_ONCE) only matters on renegotiation, which is always refused here.
    # The stdlib cannot express FAIL_IF_NO_PEER_CERT without PEER: 2 alone means "require", as
    # IO::Socket::SSL users expect.
    if bits & 2:
        ctx.verify_mode = ssl.CERT_REQUIRED
    elif bits & 1:
        ctx.verify_mode = ssl.CERT_OPTIONAL


def _apply_alpn(ctx: ServerSSLContext, opts: Mapping[str, Any], where: str) -> None:
    # The stdlib selects as proto ssl does: the server's order wins, no overlap means no ALPN.
    value = opts.get("SSL_alpn_protocols")
    if value is not None:
        ctx.set_alpn_protocols([name.decode("ascii") for name in parse_alpn(value, where)])


_APPLIERS: tuple[Callable[[ServerSSLContext, Mapping[str, Any], str], None], ...] = (
    _apply_version, _apply_ciphers, _apply_groups, _apply_verify, _apply_alpn,
)


# ---------------------------------------------------------------------------------------------
# Certificates and keys (one credential of one SNI name, as sni.split_by_name gives it)

#: Where a chain or a key comes from: ("file", path) or ("memory", PEM bytes); a key source of
#: None means "the key inside the certificate file".
_Source = tuple[str, Any]


def _load_credential(ctx: ServerSSLContext, cred: Mapping[str, Any], passwd_cb: Any,
                     where: str) -> None:
    """Load one chain and its key into ``ctx``; ConfigError naming the option and source."""
    chain = _source(cred, "SSL_cert_file", "SSL_cert", where)
    key = _source(cred, "SSL_key_file", "SSL_key", where)
    if chain is None:
        raise ConfigError(f"{where}: a TLS port needs SSL_cert_file (or SSL_cert)")
    chain, key = _as_pem(chain, key, passwd_cb, where)
    if key is None and chain[0] != "file":
        raise ConfigError(f"{where}: SSL_cert needs SSL_key (or SSL_key_file)")
    _load_chain(ctx, chain, key, passwd_cb, where)


def _as_pem(chain: _Source, key: _Source | None, passwd_cb: Any,
            where: str) -> tuple[_Source, _Source | None]:
    """DER and PKCS#12 files (read as proto ssl reads them, :mod:`.formats`) as PEM in memory,
    for ``load_cert_chain``, which reads PEM files only; PEM files are left to OpenSSL."""
    def passphrase() -> bytes | None:
        return None if passwd_cb is None else certs.passphrase(passwd_cb, where)

    if chain[0] == "file":
        label = f"SSL_cert_file {str(chain[1])!r}"
        data = read_file(chain[1], "SSL_cert_file", where)
        if not formats.is_pem(data):
            loaded = formats.load_certificate_file(data, label, where, passphrase)
            chain = ("memory", _pem(loaded.chain, "SSL_cert_file", where))
            given = (None if key is None
                     else "SSL_key" if key[0] == "memory" else f"SSL_key_file {str(key[1])!r}")
            if (own := formats.own_key(loaded, label, where, given)) is not None:
                key = ("memory", _pem(own, "SSL_cert_file", where))
    if key is not None and key[0] == "file":
        label = f"SSL_key_file {str(key[1])!r}"
        data = read_file(key[1], "SSL_key_file", where)
        if not formats.is_pem(data):
            key = ("memory", _pem(formats.load_key_data(data, label, where, passphrase),
                                  "SSL_key_file", where))
    return chain, key


def _source(cred: Mapping[str, Any], file_key: str, memory_key: str,
            where: str) -> _Source | None:
    path, value = cred.get(file_key), cred.get(memory_key)
    if path is not None and value is not None:
        raise ConfigError(f"{where}: give {file_key} or {memory_key}, not both")
    if path is not None:
        read_file(path, file_key, where)  # a clear error for a missing or unreadable file
        return ("file", path)
    if value is not None:
        return ("memory", _pem(value, memory_key, where))
    return None


def _pem(value: Any, option: str, where: str) -> bytes:
    """In-memory certificate(s) or key as PEM bytes."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytes):
        return value
    if isinstance(value, x509.Certificate):
        value = [value]
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(c, x509.Certificate) for c in value):
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in value)
    if hasattr(value, "private_bytes"):
        pem: bytes = value.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption())
        return pem
    raise ConfigError(f"{where}: {option} must be PEM bytes or a cryptography object, "
                      f"not {type(value).__name__}")


class _NeedsPassphrase(Exception):
    """The key is encrypted and no SSL_passwd_cb was given."""


def _no_passphrase() -> bytes:
    # Without a callback OpenSSL would prompt on the terminal: refuse instead.
    raise _NeedsPassphrase


def _load_chain(ctx: ServerSSLContext, chain: _Source, key: _Source | None, passwd_cb: Any,
                where: str) -> None:
    cert_label = _label(chain, "SSL_cert_file", "SSL_cert")
    key_label = cert_label if key is None else _label(key, "SSL_key_file", "SSL_key")
    if passwd_cb is not None:
        require_callable(passwd_cb, "SSL_passwd_cb", where)
    with _as_files(chain, key) as (cert_path, key_path):
        try:
            ctx.load_cert_chain(cert_path, key_path, passwd_cb or _no_passphrase)
        except _NeedsPassphrase:
            raise ConfigError(f"{where}: {key_label} is an encrypted private key; give "
                              "SSL_passwd_cb") from None
        except ssl.SSLError as e:
            raise ConfigError(f"{where}: cannot use {cert_label} with the key {key_label}: "
                              f"{stdlib_reason(e)}") from e
        except Exception as e:  # raised by SSL_passwd_cb, or a wrong type
            raise ConfigError(f"{where}: loading {key_label} failed: {e!r}") from e


def _label(source: _Source, file_key: str, memory_key: str) -> str:
    return f"{file_key} {str(source[1])!r}" if source[0] == "file" else memory_key


@contextmanager
def _as_files(chain: _Source, key: _Source | None) -> Iterator[tuple[str, str | None]]:
    """Paths for load_cert_chain; in-memory PEM is written to a private, short-lived folder."""
    if chain[0] == "file" and (key is None or key[0] == "file"):
        yield str(chain[1]), None if key is None else str(key[1])
        return
    with tempfile.TemporaryDirectory(prefix="gnetserver-") as folder:  # mode 0700
        chain_path = _as_file(chain, folder, 0)
        yield chain_path, None if key is None else _as_file(key, folder, 1)


def _as_file(source: _Source, folder: str, index: int) -> str:
    """The path of ``source``: its own file, or its PEM written to ``folder``/``index``.pem."""
    if source[0] == "file":
        return str(source[1])
    path = os.path.join(folder, f"{index}.pem")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
        f.write(source[1])
    return path


# ---------------------------------------------------------------------------------------------
# Small helpers


def stdlib_reason(e: BaseException) -> str:
    """OpenSSL's reason in words, as proto ssl reports it ("key values mismatch", "wrong
    version number", "certificate verify failed: ..."), else the error's text."""
    verify = getattr(e, "verify_message", None)
    if verify:
        return f"certificate verify failed: {verify}"
    reason = getattr(e, "reason", None)
    if isinstance(reason, str) and reason:
        return reason.lower().replace("_", " ")
    return getattr(e, "strerror", None) or str(e) or type(e).__name__
