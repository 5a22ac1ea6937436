"""Build the ``OpenSSL.SSL.Context`` of one listening port from IO::Socket::SSL-named options.

Net::Server::Proto::SSL hands every ``SSL_*`` key of a port to IO::Socket::SSL, which builds one
context per listening socket at bind time (netserver.md sections 4.2 and 5). :func:`build_context`
does the same with pyOpenSSL.

Rules of this module:

* **Names are IO::Socket::SSL's, verbatim.** :data:`SUPPORTED_SSL_OPTIONS` lists the ones we
  implement; the server's option table and docs are generated from it. Any other key starting
  with ``SSL_`` is a :class:`~gnetserver.errors.ConfigError` that lists the supported names:
  an option is never silently ignored. Keys not starting with ``SSL_`` belong to someone else and
  are skipped. A value of ``None`` means "not given" (Perl's ``undef``).
* **One small function per option** (``_apply_*``), run in the order of ``_APPLIERS``; each reads
  its own keys and raises ``ConfigError`` naming ``where``, the option and the offending value or
  path. A bad certificate, key or cipher string therefore stops the server at start, as
  IO::Socket::SSL's "Cannot connect to SSL port" does.
* **Secure defaults** (design.md section 4): TLS 1.2 minimum, forward-secret AEAD ciphers only,
  server cipher order, no compression, no renegotiation, SSLv2/SSLv3 never. Always set as well:
  ``OP_SINGLE_ECDH_USE``/``OP_SINGLE_DH_USE``, ``MODE_RELEASE_BUFFERS`` (about 34 kB less per idle
  connection) and a session id context, so that session resumption works (also with client
  certificates). pyOpenSSL itself sets the partial-write and moving-buffer modes on every context.
* ``SSL_version`` follows IO::Socket::SSL: ``SSLv23:!TLSv1:!TLSv1_1`` is "negotiate, minus the
  excluded versions", ``TLSv1_2`` alone pins one version. An explicit ``SSLv23`` therefore enables
  TLS 1.0 and 1.1 as in Perl, but OpenSSL 3's default security level 1 still refuses them in
  practice (pitfalls.md G.16); enabling them really needs ``@SECLEVEL=0`` in ``SSL_cipher_list``.
* Keys are loaded with cryptography (``load_pem_private_key(password=...)``) and handed to
  ``Context.use_privatekey`` as cryptography objects: ``set_passwd_cb`` is deprecated since
  pyOpenSSL 26.3, and passing a ``PKey`` wrapper is deprecated too (it warns). ``SSL_passwd_cb``
  is called with no arguments and returns the passphrase as ``str`` or ``bytes``.
* Only PEM is read for now (no DER or PKCS#12 files, no per-SNI hash form of the options).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Mapping
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from OpenSSL import SSL

from ..errors import ConfigError
from .connection import describe_ssl_error

__all__ = ["DEFAULT_CIPHER_LIST", "SUPPORTED_SSL_OPTIONS", "build_context", "parse_ssl_version"]

#: Forward-secret AEAD suites only, for TLS <= 1.2 (TLS 1.3 suites are all AEAD and FS).
DEFAULT_CIPHER_LIST = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"

SUPPORTED_SSL_OPTIONS: dict[str, str] = {
    "SSL_cert_file": "PEM file, leaf certificate first then its chain (default: none, required)",
    "SSL_key_file": "PEM private key file (default: the key inside SSL_cert_file)",
    "SSL_cert": "x509.Certificate, list of them (leaf first) or PEM bytes (default: none)",
    "SSL_key": "cryptography private key object or PEM bytes (default: none)",
    "SSL_passwd_cb": "callable returning the passphrase of an encrypted key (default: none)",
    "SSL_version": "'SSLv23:!TLSv1_1' style range or one version 'TLSv1_3' (default: TLS 1.2+)",
    "SSL_cipher_list": f"OpenSSL cipher string for TLS <= 1.2 (default: {DEFAULT_CIPHER_LIST})",
    "SSL_ciphersuites": "TLS 1.3 suites, e.g. 'TLS_AES_256_GCM_SHA384' (default: OpenSSL's)",
    "SSL_honor_cipher_order": "prefer the server's cipher order (default: 1)",
    "SSL_ca_file": "PEM file of CAs trusted for client certificates (default: none)",
    "SSL_ca_path": "hashed directory of CAs trusted for client certificates (default: none)",
    "SSL_verify_mode": "client certificates: 0 none, 1 peer, 2 fail-if-none, 4 once (default: 0)",
    "SSL_ecdh_curve": "key exchange groups, e.g. 'P-256:X25519' (default: OpenSSL's)",
}

_Opts = Mapping[str, Any]
_Applier = Callable[[SSL.Context, _Opts, str], None]

# ---------------------------------------------------------------------------------------------
# SSL_version


# Ordered oldest to newest: a valid selection is a contiguous slice of this tuple.
_TLS_VERSIONS = (SSL.TLS1_VERSION, SSL.TLS1_1_VERSION, SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION)
_SINGLE_VERSIONS = {
    "tlsv1": SSL.TLS1_VERSION,
    "tlsv1_1": SSL.TLS1_1_VERSION,
    "tlsv11": SSL.TLS1_1_VERSION,
    "tlsv1_2": SSL.TLS1_2_VERSION,
    "tlsv12": SSL.TLS1_2_VERSION,
    "tlsv1_3": SSL.TLS1_3_VERSION,
    "tlsv13": SSL.TLS1_3_VERSION,
}
_NEGOTIATE = {"sslv23", "sslv2/3", "tls"}
_NEVER = {"sslv2", "sslv3"}


def _version_token(token: str, spec: str, where: str) -> frozenset[int]:
    """Return the versions one ``SSL_version`` token (without ``!``) stands for."""
    if token in _NEGOTIATE:
        return frozenset(_TLS_VERSIONS)
    if token in _SINGLE_VERSIONS:
        return frozenset({_SINGLE_VERSIONS[token]})
    if token in _NEVER:
        return frozenset()
    raise ConfigError(
        f"{where}: invalid SSL_version {spec!r}: unknown token {token!r} (expected SSLv23, TLS, "
        "TLSv1, TLSv1_1, TLSv1_2 or TLSv1_3, each optionally prefixed by '!', joined by ':')"
    )


def parse_ssl_version(spec: str, where: str) -> tuple[int, int]:
    """Turn an IO::Socket::SSL ``SSL_version`` string into ``(min_version, max_version)``.

    Raises:
        ConfigError: unknown token, two different positive versions, SSLv2/SSLv3 requested,
            no version left, or a gap (e.g. ``SSLv23:!TLSv1_2``), which min/max cannot express.
    """
    chosen: frozenset[int] | None = None
    excluded: set[int] = set()
    for raw in spec.split(":"):
        token = raw.strip().lower()
        negated = token.startswith("!")
        versions = _version_token(token.lstrip("!"), spec, where)
        if negated:
            excluded |= versions
        elif not versions:
            raise ConfigError(f"{where}: SSL_version {spec!r}: {raw.strip()} can never be enabled")
        elif chosen is not None and chosen != versions:
            raise ConfigError(f"{where}: SSL_version {spec!r} selects more than one protocol")
        else:
            chosen = versions
    left = sorted((chosen if chosen is not None else frozenset(_TLS_VERSIONS)) - excluded)
    if not left:
        raise ConfigError(f"{where}: SSL_version {spec!r} enables no protocol version")
    first = _TLS_VERSIONS.index(left[0])
    if list(_TLS_VERSIONS[first : first + len(left)]) != left:
        raise ConfigError(f"{where}: SSL_version {spec!r} leaves a gap between enabled versions")
    return left[0], left[-1]


def _apply_version(ctx: SSL.Context, opts: _Opts, where: str) -> None:
    spec = opts.get("SSL_version")
    if spec is None:
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        return
    low, high = parse_ssl_version(str(spec), where)
    ctx.set_min_proto_version(low)
    if high != _TLS_VERSIONS[-1]:
        # The newest version is left open (0) so a future OpenSSL may offer a newer one.
        ctx.set_max_proto_version(high)


# ---------------------------------------------------------------------------------------------
# Ciphers, groups


def _apply_cipher_list(ctx: SSL.Context, opts: _Opts, where: str) -> None:
    ciphers = opts.get("SSL_cipher_list")
    text = DEFAULT_CIPHER_LIST if ciphers is None else str(ciphers)
    try:
        ctx.set_cipher_list(text.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as e:
        raise ConfigError(f"{where}: invalid SSL_cipher_list {text!r}: {_reason(e)}") from e


def _apply_ciphersuites(ctx: SSL.Context, opts: _Opts, where: str) -> None:
    suites = opts.get("SSL_ciphersuites")
    if suites is None:
        return
    if not hasattr(ctx, "set_tls13_ciphersuites"):
        raise ConfigError(f"{where}: SSL_ciphersuites is unsupported by this pyOpenSSL")
    try:
        ctx.set_tls13_ciphersuites(str(suites).encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as e:
        raise ConfigError(f"{where}: invalid SSL_ciphersuites {suites!r}: {_reason(e)}") from e


def _apply_honor_cipher_order(ctx: SSL.Context, opts: _Opts, where: str) -> None:
    value = opts.get("SSL_honor_cipher_order")
    if value is None or _to_bool(value, "SSL_honor_cipher_order", where):
        ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)


def _apply_ecdh_curve(ctx: SSL.Context, opts: _Opts, where: str) -> None:
    groups = opts.get("SSL_ecdh_curve")
    if groups is None:
        return
    try:
        ok = _set_groups_list(ctx, str(groups).encode("ascii"), where)
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise ConfigError(f"{where}: invalid SSL_ecdh_curve {groups!r}: unknown group")


def _set_groups_list(ctx: SSL.Context, groups: bytes, where: str) -> bool:
    """Call ``SSL_CTX_set1_curves_list`` (= ``set1_groups_list``); True when OpenSSL accepts.

    pyOpenSSL 26 only offers ``set_tmp_ecdh`` (a single curve, no X25519), so this reaches into
    pyOpenSSL's private cffi binding (``OpenSSL._util.lib``, ``Context._context``). It is the
    only private pyOpenSSL use in this module; keep it here.
    """
    from OpenSSL._util import lib

    if not hasattr(lib, "SSL_CTX_set1_curves_list"):
        raise ConfigError(f"{where}: SSL_ecdh_curve is unsupported by this OpenSSL binding")
    ok = bool(lib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1)
    # A failure leaves entries on OpenSSL's per-thread error queue; a stale entry would be
    # reported later as the reason of an unrelated error.
    lib.ERR_clear_error()
    return ok


# ---------------------------------------------------------------------------------------------
# Certificate chain and private key


def _apply_certificate(ctx: SSL.Context, opts: _Opts, where: str) -> None:
    chain, cert_label = _load_chain(opts, where)
    key, key_label = _load_key(opts, where)
    try:
        ctx.use_certificate(chain[0])
        for extra in chain[1:]:
            ctx.add_extra_chain_cert(extra)
    except SSL.Error as e:
        raise ConfigError(f"{where}: cannot use the certificate {cert_label}: {_reason(e)}") from e
    try:
        # SSL_CTX_use_PrivateKey already refuses a key that does not match the loaded
        # certificate ("key values mismatch"); check_privatekey states the contract explicitly.
        ctx.use_privatekey(key)
        ctx.check_privatekey()
    except TypeError as e:  # not a private key object
        raise ConfigError(f"{where}: cannot use the private key {key_label}: {e}") from e
    except SSL.Error as e:
        raise ConfigError(
            f"{where}: the private key ({key_label}) does not match the certificate "
            f"({cert_label}): {_reason(e)}"
        ) from e


def _load_chain(opts: _Opts, where: str) -> tuple[list[x509.Certificate], str]:
    """Return the chain (leaf first) and a label naming where it came from."""
    value, path = opts.get("SSL_cert"), opts.get("SSL_cert_file")
    if value is not None and path is not None:
        raise ConfigError(f"{where}: give SSL_cert_file or SSL_cert, not both")
    if path is not None:
        label = f"SSL_cert_file {str(path)!r}"
        return _parse_chain(_read_file(path, "SSL_cert_file", where), label, where), label
    if value is None:
        raise ConfigError(f"{where}: a TLS port needs SSL_cert_file (or SSL_cert)")
    if isinstance(value, x509.Certificate):
        return [value], "SSL_cert"
    if isinstance(value, (bytes, str)):
        return _parse_chain(_as_bytes(value), "SSL_cert", where), "SSL_cert"
    chain = list(value) if isinstance(value, (list, tuple)) else []
    if not chain or not all(isinstance(c, x509.Certificate) for c in chain):
        raise ConfigError(
            f"{where}: SSL_cert must be an x509.Certificate, a non-empty list of them or PEM "
            f"bytes, not {type(value).__name__}"
        )
    return chain, "SSL_cert"


def _parse_chain(data: bytes, label: str, where: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as e:
        raise ConfigError(f"{where}: {label} holds no valid PEM certificate ({e})") from e


def _load_key(opts: _Opts, where: str) -> tuple[Any, str]:
    """Return the private key (a cryptography object) and a label naming its source."""
    value, path = opts.get("SSL_key"), opts.get("SSL_key_file")
    if value is not None and path is not None:
        raise ConfigError(f"{where}: give SSL_key_file or SSL_key, not both")
    if value is not None and not isinstance(value, (bytes, str)):
        return value, "SSL_key"  # a key object; use_privatekey checks its type
    if value is not None:
        data, label = _as_bytes(value), "SSL_key"
    elif path is not None:
        data, label = _read_file(path, "SSL_key_file", where), f"SSL_key_file {str(path)!r}"
    elif opts.get("SSL_cert_file") is not None:
        # IO::Socket::SSL: "if omitted the PEM cert file is tried".
        cert_path = opts["SSL_cert_file"]
        data = _read_file(cert_path, "SSL_cert_file", where)
        label = f"SSL_cert_file {str(cert_path)!r} (no SSL_key_file given)"
    else:
        raise ConfigError(f"{where}: SSL_cert needs SSL_key (or SSL_key_file)")
    return _parse_key(data, label, opts.get("SSL_passwd_cb"), where), label


def _parse_key(data: bytes, label: str, passwd_cb: Any, where: str) -> Any:
    password = None if passwd_cb is None else _passphrase(passwd_cb, where)
    try:
        return _load_pem_key(data, password, label, where)
    except TypeError:
        # cryptography raises TypeError both for "encrypted, no password" and for "password
        # given, key not encrypted". IO::Socket::SSL ignores a needless passphrase; so do we.
        if password is None:
            raise ConfigError(
                f"{where}: {label} is an encrypted private key; give SSL_passwd_cb"
            ) from None
    return _load_pem_key(data, None, label, where)


def _load_pem_key(data: bytes, password: bytes | None, label: str, where: str) -> Any:
    try:
        return load_pem_private_key(data, password=password)
    except (ValueError, UnsupportedAlgorithm) as e:
        hint = "wrong passphrase from SSL_passwd_cb?" if password is not None else str(e)
        raise ConfigError(f"{where}: cannot load a PEM private key from {label} ({hint})") from e


def _passphrase(passwd_cb: Any, where: str) -> bytes:
    if not callable(passwd_cb):
        raise ConfigError(f"{where}: SSL_passwd_cb must be callable, not {type(passwd_cb)}")
    try:
        secret = passwd_cb()
    except Exception as e:
        raise ConfigError(f"{where}: SSL_passwd_cb failed: {e!r}") from e
    if not isinstance(secret, (bytes, str)):
        raise ConfigError(f"{where}: SSL_passwd_cb must return str or bytes, not {type(secret)}")
    return _as_bytes(secret)


# ---------------------------------------------------------------------------------------------
# Client certificates


def _apply_ca(ctx: SSL.Context, opts: _Opts, where: str) -> None:
    ca_file, ca_path = opts.get("SSL_ca_file"), opts.get("SSL_ca_path")
    if ca_file is None and ca_path is None:
        return
    labels = []
    if ca_file is not None:
        _read_file(ca_file, "SSL_ca_file", where)  # a clear error for missing/unreadable files
        labels.append(f"SSL_ca_file {str(ca_file)!r}")
    if ca_path is not None:
        if not os.path.isdir(ca_path):
            raise ConfigError(f"{where}: SSL_ca_path {str(ca_path)!r} is not a directory")
        labels.append(f"SSL_ca_path {str(ca_path)!r}")
    try:
        ctx.load_verify_locations(ca_file, ca_path)
    except SSL.Error as e:
        raise ConfigError(f"{where}: cannot load {' and '.join(labels)}: {_reason(e)}") from e


# IO::Socket::SSL's numeric bitmask -> OpenSSL flags (they happen to be equal; be explicit).
_VERIFY_BITS = {
    1: SSL.VERIFY_PEER,
    2: SSL.VERIFY_FAIL_IF_NO_PEER_CERT,
    4: SSL.VERIFY_CLIENT_ONCE,
}


def _apply_verify_mode(ctx: SSL.Context, opts: _Opts, where: str) -> None:
    value = opts.get("SSL_verify_mode")
    if value is None:
        return
    try:
        bits = int(value, 0) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        bits = -1
    if not 0 <= bits <= 7:
        raise ConfigError(f"{where}: invalid SSL_verify_mode {value!r} (a bitmask 0..7)")
    if bits and opts.get("SSL_ca_file") is None and opts.get("SSL_ca_path") is None:
        raise ConfigError(
            f"{where}: SSL_verify_mode {value!r} verifies clients and needs SSL_ca_file or "
            "SSL_ca_path"
        )
    mode = SSL.VERIFY_NONE
    for bit, flag in _VERIFY_BITS.items():
        if bits & bit:
            mode |= flag
    ctx.set_verify(mode)


# ---------------------------------------------------------------------------------------------
# The builder


_APPLIERS: tuple[_Applier, ...] = (
    _apply_version,
    _apply_cipher_list,
    _apply_ciphersuites,
    _apply_honor_cipher_order,
    _apply_ecdh_curve,
    _apply_certificate,
    _apply_ca,
    _apply_verify_mode,
)

_ALWAYS_OPTIONS = (
    SSL.OP_NO_SSLv2
    | SSL.OP_NO_SSLv3
    | SSL.OP_NO_COMPRESSION
    | SSL.OP_SINGLE_DH_USE
    | SSL.OP_SINGLE_ECDH_USE
    | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
)


def build_context(opts: Mapping[str, Any], where: str) -> SSL.Context:
    """Build the server context of one listening port.

    Args:
        opts: The port's options; only keys starting with ``SSL_`` are read (see
            :data:`SUPPORTED_SSL_OPTIONS`). ``None`` values count as absent.
        where: The port, e.g. ``"port 127.0.0.1:8443/ssl"``; every error message starts with it.

    Returns:
        A fresh context, ready for ``TLSConnection``.

    Raises:
        ConfigError: an unsupported ``SSL_*`` key, a missing/unreadable/garbage file, a key that
            does not match the certificate, or an invalid value; the message names ``where``,
            the option and the value or path.
    """
    _check_names(opts, where)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_options(_ALWAYS_OPTIONS)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    # Without a session id context OpenSSL refuses to resume sessions once client certificates
    # are verified; 32 bytes is OpenSSL's maximum (SSL_MAX_SID_CTX_LENGTH).
    ctx.set_session_id(hashlib.sha256(f"gnetserver {where}".encode()).digest())
    for apply in _APPLIERS:
        apply(ctx, opts, where)
    return ctx


def _check_names(opts: Mapping[str, Any], where: str) -> None:
    unknown = sorted(
        key for key in opts if key.startswith("SSL_") and key not in SUPPORTED_SSL_OPTIONS
    )
    if unknown:
        raise ConfigError(
            f"{where}: unsupported option(s) {', '.join(unknown)}; "
            f"supported: {', '.join(sorted(SUPPORTED_SSL_OPTIONS))}"
        )


# ---------------------------------------------------------------------------------------------
# Small helpers


def _read_file(path: Any, option: str, where: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except (OSError, TypeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{where}: {option} {str(path)!r}: cannot read ({reason})") from e


def _as_bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else value


_TRUE = {"1", "yes", "true", "on"}
_FALSE = {"0", "no", "false", "off", ""}


def _to_bool(value: object, option: str, where: str) -> bool:
    if isinstance(value, (bool, int)):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise ConfigError(f"{where}: invalid {option} {value!r} (expected 0 or 1)")


def _reason(e: BaseException) -> str:
    return describe_ssl_error(e) if isinstance(e, SSL.Error) else str(e)
