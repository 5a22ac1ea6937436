"""Build the ``OpenSSL.SSL.Context`` of one listening port from IO::Socket::SSL-named options.

Net::Server::Proto::SSL hands every ``SSL_*`` key of a port to IO::Socket::SSL, which builds one
context per listening socket at bind time (netserver.md sections 4.2 and 5). :func:`build_context`
does the same with pyOpenSSL; :class:`~gnetserver.tls.registry.TLSContexts` shares the contexts
of a server between its ports and rebuilds them on ``reload_tls()``.

Rules of this module:

* **Every option from every source**: the server resolves each name per port (the port's dict,
  else the server-wide option, else a subclass method called as ``SSL_x(host, port, proto)``
  that returns the value -- for a callback option, the callback -- or a plain attribute) and
  hands the result here (``GServer.ssl_options``).
* **Names are IO::Socket::SSL's, verbatim.** :data:`SUPPORTED_SSL_OPTIONS` lists the ones we
  implement, each with its meaning and default; the server's option table and README's option
  list are generated from it. IO::Socket::SSL options we cannot honour are in
  :data:`REFUSED_SSL_OPTIONS` with the reason, which the ConfigError shows; any other key
  starting with ``SSL_`` is a ConfigError listing the supported names. An option is never
  silently ignored. Keys not starting with ``SSL_`` belong to someone else and are skipped. A
  value of ``None`` means "not given" (Perl's ``undef``).
* **One small function per option** (``apply_*`` in :mod:`.negotiation`, :mod:`.verify`,
  :mod:`.tickets`; certificates in :mod:`.certs`, :mod:`.ocsp` and :mod:`.sni`), run in the
  order of ``_APPLIERS``; each raises ConfigError naming ``where``, the option and the value or
  path. A bad certificate, key or cipher string therefore stops the server at start, as
  IO::Socket::SSL's "Cannot connect to SSL port" does.
* **Secure defaults** (design.md section 4): TLS 1.2 minimum, forward-secret AEAD ciphers only,
  server cipher order, no compression, no renegotiation, SSLv2/SSLv3 never. Always set as well:
  ``OP_SINGLE_ECDH_USE``/``OP_SINGLE_DH_USE``, ``MODE_RELEASE_BUFFERS`` (about 34 kB less per idle
  connection) and a session id context, so that session resumption works (also with client
  certificates). pyOpenSSL itself sets the partial-write and moving-buffer modes on every context.
* **Callbacks never raise into OpenSSL.** Every callback we install (SNI, ALPN, verify, OCSP)
  catches what a user function raises and reports it through ``warn``: pyOpenSSL stores such
  exceptions on the *context* and re-raises them in whichever connection looks next.
* pyOpenSSL (>= 26.2) forbids changing a context once a connection used it: a context is built
  whole here and never modified afterwards; a reload builds new ones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from OpenSSL import SSL

from ..errors import ConfigError
from ..ssl_names import REFUSED_SSL_OPTIONS, SUPPORTED_SSL_OPTIONS, refusal_reason
from . import sni
from .certs import NO_CERTIFICATE, use_credential
from .negotiation import (
    DEFAULT_CIPHER_LIST,
    apply_alpn,
    apply_cipher_list,
    apply_ciphersuites,
    apply_dh_file,
    apply_ecdh_curve,
    apply_honor_cipher_order,
    apply_version,
    parse_ssl_version,
)
from .ocsp import install_stapling, load_staple
from .tickets import apply_session
from .util import Applier, Build, Warn, default_warn, reason, require_callable
from .verify import apply_ca, apply_client_ca, apply_crl, apply_verify_mode

__all__ = [
    "DEFAULT_CIPHER_LIST",
    "REFUSED_SSL_OPTIONS",
    "SUPPORTED_SSL_OPTIONS",
    "build_context",
    "parse_ssl_version",
]

_APPLIERS: tuple[Applier, ...] = (
    apply_version,
    apply_cipher_list,
    apply_ciphersuites,
    apply_honor_cipher_order,
    apply_ecdh_curve,
    apply_dh_file,
    apply_alpn,
    apply_ca,
    apply_verify_mode,
    apply_client_ca,
    apply_crl,
    apply_session,
)

_ALWAYS_OPTIONS = (
    SSL.OP_NO_SSLv2
    | SSL.OP_NO_SSLv3
    | SSL.OP_NO_COMPRESSION
    | SSL.OP_SINGLE_DH_USE
    | SSL.OP_SINGLE_ECDH_USE
    | getattr(SSL, "OP_NO_RENEGOTIATION", 0)
)


def build_context(opts: Mapping[str, Any], where: str, warn: Warn | None = None) -> SSL.Context:
    """Build the server context of one listening port (with one more per SNI name).

    Args:
        opts: The port's options; only keys starting with ``SSL_`` are read (see
            :data:`SUPPORTED_SSL_OPTIONS`). ``None`` values count as absent.
        where: The port, e.g. ``"port 127.0.0.1:8443/ssl"``; every message starts with it.
        warn: Receives warnings (expired certificate, a callback that raised during a
            handshake); default: the ``gnetserver`` logger.

    Returns:
        A fresh context, ready for ``TLSConnection``; SNI names switch to their own context in
        its servername callback.

    Raises:
        ConfigError: an unsupported ``SSL_*`` key, a missing/unreadable/garbage file, a key that
            does not match the certificate, or an invalid value; the message names ``where``,
            the option and the value or path.
    """
    check_names(opts, where)
    report = default_warn if warn is None else warn
    by_name = {
        name: _build_one(Build(opts, sni.describe(where, name), report), creds)
        for name, creds in sni.split_by_name(opts, where).items()
    }
    default = by_name.pop("", None)
    if default is None:  # no '' entry: other names fail the handshake (no certificate)
        default = _build_one(Build(opts, where, report), [])
    if by_name:
        sni.install_sni(default, by_name)
    return default


def _build_one(b: Build, creds: Sequence[Mapping[str, Any]]) -> SSL.Context:
    """One context: the shared settings, then this SNI name's certificates and staples."""
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_options(_ALWAYS_OPTIONS)
    ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
    for apply in _APPLIERS:
        apply(ctx, b)
    staples = []
    for cred in creds:
        if cred.get("SSL_cert") is NO_CERTIFICATE:  # a name refused for now (certs.py)
            continue
        leaf = use_credential(ctx, cred, b)
        staple = load_staple(leaf, cred, b)
        if staple is not None:
            staples.append(staple)
    install_stapling(ctx, staples, b)
    _run_create_ctx_callback(ctx, b)
    return ctx


def _run_create_ctx_callback(ctx: SSL.Context, b: Build) -> None:
    callback = b.get("SSL_create_ctx_callback")
    if callback is None:
        return
    require_callable(callback, "SSL_create_ctx_callback", b.where)
    try:
        callback(ctx)
    except Exception as e:
        raise ConfigError(f"{b.where}: SSL_create_ctx_callback failed: {reason(e)!s} "
                          f"({type(e).__name__})") from e


def check_names(opts: Mapping[str, Any], where: str,
                supported: Mapping[str, str] = SUPPORTED_SSL_OPTIONS, proto: str = "ssl") -> None:
    """Refuse ``SSL_*`` keys that a TLS backend does not support (with the reason when we know
    it); ``None`` values count as not given, except for names nobody supports (typos).

    Args:
        opts: The options of one port.
        where: The port; every message starts with it.
        supported: What the backend honours (proto ssleay: a subset of SUPPORTED_SSL_OPTIONS).
        proto: The backend's proto name, for the messages.
    """
    for key in sorted(opts):
        why = refusal_reason(key)
        if why is not None and opts[key] is not None:
            raise ConfigError(f"{where}: {key} cannot be honoured: {why}")
    elsewhere = sorted(key for key, value in opts.items() if value is not None
                       and key in SUPPORTED_SSL_OPTIONS and key not in supported)
    if elsewhere:
        raise ConfigError(f"{where}: {', '.join(elsewhere)} not supported by proto {proto} "
                          f"(proto ssl supports more); {proto} supports: "
                          f"{', '.join(sorted(supported))}")
    unknown = sorted(
        key for key in opts
        if key.startswith("SSL_") and key not in SUPPORTED_SSL_OPTIONS
        and refusal_reason(key) is None
    )
    if unknown:
        raise ConfigError(
            f"{where}: unsupported option(s) {', '.join(unknown)}; "
            f"supported: {', '.join(sorted(supported))}"
        )
