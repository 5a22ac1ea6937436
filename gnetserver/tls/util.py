"""Small helpers shared by the modules that turn ``SSL_*`` options into pyOpenSSL contexts.

Every builder module (:mod:`.negotiation`, :mod:`.certs`, :mod:`.verify`, :mod:`.ocsp`,
:mod:`.sni`, :mod:`.tickets`) receives one :class:`Build`: the options of the context being
built, the text that starts every error message (``where``) and the function that reports
warnings. Nothing here touches sockets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from OpenSSL import SSL

from ..errors import ConfigError
from ..truth import perl_truth
from .connection import describe_ssl_error

#: Reports a warning (an expiring certificate, a callback that raised); the server passes
#: ``lambda text: server.log(1, text)``.
Warn = Callable[[str], None]

Opts = Mapping[str, Any]


def default_warn(text: str) -> None:
    """Warnings of contexts built outside a server go to the ``gnetserver`` logger."""
    logging.getLogger("gnetserver").warning(text)


@dataclass(frozen=True)
class Build:
    """What every option applier gets besides the context.

    Attributes:
        opts: the options of this context (for an SNI name: its own certificate keys).
        where: the port (and SNI name), e.g. ``"port 127.0.0.1:8443/ssl"``; every error
            message starts with it.
        warn: where warnings go.
    """

    opts: Opts
    where: str
    warn: Warn

    def get(self, name: str) -> Any:
        """The value of option ``name``, ``None`` when not given."""
        return self.opts.get(name)


Applier = Callable[[SSL.Context, Build], None]


def read_file(path: Any, option: str, where: str) -> bytes:
    """The bytes of ``path``; ConfigError naming the option and the path when unreadable."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except (OSError, TypeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConfigError(f"{where}: {option} {str(path)!r}: cannot read ({reason})") from e


def as_bytes(value: bytes | str) -> bytes:
    """Text as UTF-8 bytes; bytes unchanged."""
    return value.encode("utf-8") if isinstance(value, str) else value




def to_bool(value: object, option: str, where: str) -> bool:
    """Perl-style truth of an option value (:func:`gnetserver.truth.perl_truth`)."""
    try:
        return perl_truth(value)
    except ValueError:
        raise ConfigError(f"{where}: invalid {option} {value!r} (expected 0 or 1)") from None


def to_seconds(value: object, option: str, where: str) -> float:
    """A number of seconds >= 0."""
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = -1.0
    if not seconds >= 0:
        raise ConfigError(f"{where}: invalid {option} {value!r} (expected seconds >= 0)")
    return seconds


def require_callable(value: Any, option: str, where: str) -> Callable[..., Any]:
    """``value`` if it is callable, else a ConfigError naming the option."""
    if not callable(value):
        raise ConfigError(f"{where}: {option} must be callable, not {type(value).__name__}")
    return value  # type: ignore[no-any-return]


def reason(e: BaseException) -> str:
    """OpenSSL's reason text for an ``SSL.Error``, else ``str(e)``."""
    return describe_ssl_error(e) if isinstance(e, SSL.Error) else str(e)


def callback_name(fn: object) -> str:
    """A short name for a user callback in log lines."""
    return getattr(fn, "__qualname__", None) or repr(fn)


def tls_library_versions() -> str:
    """``"pyOpenSSL 26.4.0 over OpenSSL 4.0.3 ... (bundled with cryptography 50.0.2)"``.

    pyOpenSSL uses the OpenSSL that the cryptography wheel bundles, not the system's, and TLS
    behaviour differs between OpenSSL versions (so do conformance verdicts): the server logs
    this at start.
    """
    import cryptography
    import OpenSSL

    openssl = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    return (f"pyOpenSSL {OpenSSL.__version__} over {openssl} "
            f"(bundled with cryptography {cryptography.__version__})")
