"""What a handshake negotiates: protocol versions, ciphers, key exchange groups, DH, ALPN.

Rules of this module:

* ``SSL_version`` follows IO::Socket::SSL: ``SSLv23:!TLSv1:!TLSv1_1`` is "negotiate, minus the
  excluded versions", ``TLSv1_2`` alone pins one version. An explicit ``SSLv23`` therefore enables
  TLS 1.0 and 1.1 as in Perl, but OpenSSL 3's default security level 1 still refuses them in
  practice (it also rejects TLS 1.2 hellos without signature_algorithms); enabling them
  really needs ``@SECLEVEL=0`` in ``SSL_cipher_list``.
* Defaults are the secure ones of design.md section 4: TLS 1.2 minimum, forward-secret AEAD
  suites (:data:`DEFAULT_CIPHER_LIST`) in the server's order; OpenSSL's TLS 1.3 suites
  (AES-128-GCM first: :data:`DEFAULT_CIPHERSUITES`) and groups. DHE needs ``SSL_dh_file``
  (OpenSSL's automatic DH is not reachable from pyOpenSSL), so by default only ECDHE is
  offered.
* ALPN: the server's list in ``SSL_alpn_protocols`` order wins (OpenSSL's
  ``SSL_select_next_proto``, as Net::SSLeay does for IO::Socket::SSL); without overlap the
  handshake goes on without ALPN rather than failing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from OpenSSL import SSL

from ..errors import ConfigError
from ..ssl_names import DEFAULT_CIPHER_LIST, DEFAULT_CIPHERSUITES
from .util import Build, read_file, reason, to_bool

__all__ = ["DEFAULT_CIPHER_LIST", "parse_alpn", "parse_ssl_version", "select_alpn"]

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


def apply_version(ctx: SSL.Context, b: Build) -> None:
    """``SSL_version``: min/max protocol version (default TLS 1.2 and newer)."""
    spec = b.get("SSL_version")
    if spec is None:
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        return
    low, high = parse_ssl_version(str(spec), b.where)
    ctx.set_min_proto_version(low)
    if high != _TLS_VERSIONS[-1]:
        # The newest version is left open (0) so a future OpenSSL may offer a newer one.
        ctx.set_max_proto_version(high)


# ---------------------------------------------------------------------------------------------
# Ciphers, groups, DH


def apply_cipher_list(ctx: SSL.Context, b: Build) -> None:
    """``SSL_cipher_list``: TLS <= 1.2 suites (default :data:`DEFAULT_CIPHER_LIST`)."""
    ciphers = b.get("SSL_cipher_list")
    text = DEFAULT_CIPHER_LIST if ciphers is None else str(ciphers)
    try:
        ctx.set_cipher_list(text.encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as e:
        raise ConfigError(f"{b.where}: invalid SSL_cipher_list {text!r}: {reason(e)}") from e


def apply_ciphersuites(ctx: SSL.Context, b: Build) -> None:
    """``SSL_ciphersuites``: TLS 1.3 suites (default :data:`DEFAULT_CIPHERSUITES`)."""
    suites = b.get("SSL_ciphersuites")
    if suites is None:
        suites = DEFAULT_CIPHERSUITES
    try:
        ctx.set_tls13_ciphersuites(str(suites).encode("ascii"))
    except (SSL.Error, UnicodeEncodeError) as e:
        raise ConfigError(f"{b.where}: invalid SSL_ciphersuites {suites!r}: {reason(e)}") from e


def apply_honor_cipher_order(ctx: SSL.Context, b: Build) -> None:
    """``SSL_honor_cipher_order``: the server's order wins unless set to 0 (default 1)."""
    value = b.get("SSL_honor_cipher_order")
    if value is None or to_bool(value, "SSL_honor_cipher_order", b.where):
        ctx.set_options(SSL.OP_CIPHER_SERVER_PREFERENCE)


#: Default key exchange groups, best first. OpenSSL's own default list also offers X448 and
#: secp521r1, which Mozilla's "intermediate" profile rejects (sslyze flags them). The ML-KEM
#: hybrid is kept where the OpenSSL in use has it.
DEFAULT_GROUPS = (b"X25519MLKEM768:X25519:P-256:P-384", b"X25519:P-256:P-384")


def apply_ecdh_curve(ctx: SSL.Context, b: Build) -> None:
    """``SSL_ecdh_curve``: the key exchange groups, e.g. ``X25519:P-256``."""
    groups = b.get("SSL_ecdh_curve")
    if groups is None:
        if not _can_set_groups():
            # cryptography < 47 binds no SSL_CTX_set1_curves_list: OpenSSL's own default
            # groups (X25519, the NIST curves, X448, FFDHE) stay; only a list the user asked
            # for is refused (below).
            return
        if not any(_set_groups_list(ctx, default, b.where) for default in DEFAULT_GROUPS):
            raise ConfigError(f"{b.where}: OpenSSL accepts none of the default groups")
        return
    try:
        ok = _set_groups_list(ctx, str(groups).encode("ascii"), b.where)
    except UnicodeEncodeError:
        ok = False
    if not ok:
        raise ConfigError(
            f"{b.where}: invalid SSL_ecdh_curve {groups!r}: unknown curve or group (names like "
            "X25519, P-256, P-384, P-521, ffdhe2048, joined by ':')"
        )


def _can_set_groups() -> bool:
    """True when pyOpenSSL's binding has ``SSL_CTX_set1_curves_list`` (cryptography >= 47)."""
    from OpenSSL._util import lib

    return hasattr(lib, "SSL_CTX_set1_curves_list")


def _set_groups_list(ctx: SSL.Context, groups: bytes, where: str) -> bool:
    """Call ``SSL_CTX_set1_curves_list`` (= ``set1_groups_list``); True when OpenSSL accepts.

    pyOpenSSL 26 only offers ``set_tmp_ecdh`` (a single curve, no X25519), so this reaches into
    pyOpenSSL's private cffi binding (``OpenSSL._util.lib``, ``Context._context``). Keep such
    uses in this one function.
    """
    from OpenSSL._util import lib

    if not _can_set_groups():
        raise ConfigError(f"{where}: SSL_ecdh_curve is unsupported by this OpenSSL binding "
                          "(it needs cryptography >= 47)")
    ok = bool(lib.SSL_CTX_set1_curves_list(ctx._context, groups) == 1)
    # A failure leaves entries on OpenSSL's per-thread error queue; a stale entry would be
    # reported later as the reason of an unrelated error.
    lib.ERR_clear_error()
    return ok


def apply_dh_file(ctx: SSL.Context, b: Build) -> None:
    """``SSL_dh_file``: DH parameters, which enable the DHE suites (RSA certificates)."""
    path = b.get("SSL_dh_file")
    if path is None:
        return
    read_file(path, "SSL_dh_file", b.where)  # a clear error for missing/unreadable files
    # cryptography deprecates finite-field DH, so OpenSSL parses and judges the file: "no start
    # line" for garbage, "dh key too small" below the security level.
    try:
        ctx.load_tmp_dh(str(path))
    except SSL.Error as e:
        raise ConfigError(f"{b.where}: cannot use SSL_dh_file {str(path)!r}: {reason(e)}") from e


# ---------------------------------------------------------------------------------------------
# ALPN


def parse_alpn(value: Any, where: str) -> list[bytes]:
    """``SSL_alpn_protocols`` as a list of protocol names: a list, or ``'h2,http/1.1'``."""
    if isinstance(value, (str, bytes)):
        text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
        items: list[Any] = [item for item in text.replace(",", " ").split() if item]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = []
    names = [item.encode("ascii", "replace") if isinstance(item, str) else item for item in items]
    if not names or not all(isinstance(n, bytes) and 0 < len(n) < 256 for n in names):
        raise ConfigError(
            f"{where}: invalid SSL_alpn_protocols {value!r} (a list like ['h2', 'http/1.1'] "
            "or the text 'h2,http/1.1')"
        )
    return names


def apply_alpn(ctx: SSL.Context, b: Build) -> None:
    """``SSL_alpn_protocols``: pick the first of ours that the client offers."""
    value = b.get("SSL_alpn_protocols")
    if value is None:
        return
    ours = parse_alpn(value, b.where)

    def select(conn: SSL.Connection, offered: list[bytes]) -> Any:
        # Runs inside OpenSSL's handshake; it must not raise (see tls/context.py rules).
        return select_alpn(ours, offered)

    ctx.set_alpn_select_callback(select)


def select_alpn(ours: Sequence[bytes], offered: Sequence[bytes]) -> Any:
    """The ALPN choice: the first of ``ours`` the client offers (the server's order), else
    ``SSL.NO_OVERLAPPING_PROTOCOLS`` (the handshake goes on without ALPN)."""
    for name in ours:
        if name in offered:
            return name
    return SSL.NO_OVERLAPPING_PROTOCOLS
