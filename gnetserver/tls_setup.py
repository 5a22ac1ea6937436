"""Where the TLS settings of each TLS port come from, and TLS reloads.

Rules of this module:

* :func:`resolve_ssl_options` is the one place that decides a TLS port's ``SSL_*`` options, in
  Net::Server's precedence: the per-port dict, then the server-wide option, then a method
  (called with host, port, proto) or attribute of that name on the server; then, with
  ``self_signed`` and no certificate at all, a self-signed certificate.
* Nothing here builds a TLS context: :mod:`gnetserver.tls.context` (ssl) and
  :mod:`gnetserver.tls.stdlib_context` (ssleay) do, when the protocol objects are made at bind
  (so a bad option fails before anything is bound), and
  :class:`gnetserver.tls.TLSContexts` rebuilds them on :func:`reload`.
* A bad value is a ConfigError naming the port and the option, raised at start.
* A server-wide ``SSL_*`` option that a user gave (constructor, command line, ``run()``, conf
  file) while no port is TLS is a ConfigError at start (:func:`check_ssl_options_used`): a
  certificate meant for a port that is not TLS must not be ignored in silence. Values from
  ``default_values()`` and ``SSL_*`` methods or attributes of a subclass are the program's own
  defaults, legitimately present in a server that a user runs with plain ports only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from cryptography import x509

from .conf import DEFAULT_VALUES, Conf
from .errors import ConfigError
from .listen import is_tls
from .ports import PortSpec
from .tls import TLSContexts
from .tls.certs import NO_CERTIFICATE, leaf_certificate
from .tls.sni import split_by_name

Log = Callable[[int, str], None]

#: SSL_* options of the server as a whole, never given to a port's TLS context.
SERVER_WIDE_SSL_OPTIONS = frozenset({"SSL_cert_expiry_warning"})


def resolve_ssl_options(spec: PortSpec, conf: Conf, provider: object,
                        self_signed: Callable[[], tuple[Any, Any]]) -> dict[str, Any]:
    """The SSL_* options of one port: the per-port dict, else the server-wide option, else a
    method (called with host, port, proto) or attribute of that name on ``provider`` (the
    server); with ``self_signed`` set and no certificate, ``self_signed()``'s pair."""
    names = {name for name in conf if name.startswith("SSL_")}
    names |= {k for k in spec.opts if k.startswith("SSL_")}
    # Methods/attributes of any SSL_* name count too: an unsupported one is then refused
    # at start (tls.context.check_names) instead of being silently ignored.
    names |= {k for k in dir(provider) if k.startswith("SSL_")}
    names -= SERVER_WIDE_SSL_OPTIONS
    resolved: dict[str, Any] = {}
    for name in sorted(names):
        if name in spec.opts:
            value = spec.opts[name]
        elif conf.get(name) is not None:
            value = conf[name]
        else:
            value = getattr(provider, name, None)
            if callable(value):
                value = _method_value(name, value, spec)
        if value is not None:
            resolved[name] = value
    if not ({"SSL_cert_file", "SSL_cert"} & resolved.keys()) and conf.self_signed:
        resolved["SSL_cert"], resolved["SSL_key"] = self_signed()
    return resolved


def _method_value(name: str, method: Callable[..., Any], spec: PortSpec) -> Any:
    """Net::Server calls an SSL_* method with (host, port, proto) and uses what it returns
    (for callback options: the callback itself)."""
    try:
        return method(spec.host, spec.port, spec.proto)
    except TypeError as exc:
        raise ConfigError(f"port {spec}: {name} is called as {name}(host, port, proto) and "
                          f"must return the option's value: {exc}") from exc


def check_ssl_options_used(specs: Iterable[PortSpec], conf: Conf) -> None:
    """When no port is TLS, refuse the server-wide SSL_* options a user gave: ConfigError
    naming them and where they came from (``conf.sources``). Values from default_values() are
    the program's own and are left alone."""
    specs = list(specs)
    if any(is_tls(spec) for spec in specs):
        return
    given = {name: where for name, value in conf.items()
             if name.startswith("SSL_") and value is not None
             and (where := conf.sources.get(name)) not in (None, DEFAULT_VALUES)}
    if not given:
        return
    names = ", ".join(f"{name} ({where})" for name, where in sorted(given.items()))
    ports = ", ".join(str(spec) for spec in specs)
    raise ConfigError(f"{names} given, but no port uses TLS (proto ssl or ssleay): "
                      f"ports {ports}; add /ssl to a port or drop the option(s)")


class SelfSigned:
    """The self-signed certificate of one server, made on first use (``self_signed``)."""

    def __init__(self) -> None:
        self._pair: tuple[Any, Any] | None = None

    def get(self, log: Log) -> tuple[Any, Any]:
        """The certificate and key; the first call makes them and logs the fingerprint."""
        if self._pair is None:
            from .tls.selfsigned import fingerprint_sha256, make_self_signed
            self._pair = make_self_signed()
            fingerprint = fingerprint_sha256(self._pair[0])
            log(2, f"Generated a self-signed certificate, SHA-256 fingerprint {fingerprint}")
        return self._pair


def reload(contexts: TLSContexts | None, log: Log) -> bool:
    """Rebuild every TLS context of ``contexts``, all or none; log the outcome. True when the
    new contexts are in use (see ``GServer.reload_tls``)."""
    if contexts is None or not contexts.handles:
        log(2, "TLS reload: no TLS port to reload")
        return False
    try:
        contexts.reload()
    except ConfigError as exc:
        log(1, f"TLS reload failed, still serving the previous certificates: {exc}")
        return False
    ports = ", ".join(port for handle in contexts.handles for port in handle.ports)
    log(2, f"TLS reloaded: {ports}")
    return True


def served_certificates(options: dict[str, Any], where: str) -> list[tuple[str, x509.Certificate]]:
    """The leaf certificates a TLS port with ``options`` (:func:`resolve_ssl_options`'s)
    serves: ``(SNI name, certificate)``, ``''`` for the default one, an ``%ecc`` twin beside
    its name's; none for a name refused for now (ACME's ``SSL_acme_interim refuse``).
    ConfigError when a file cannot be read (it changed since the start)."""
    return [(name, leaf_certificate(cred, options, where))
            for name, creds in split_by_name(options, where).items() for cred in creds
            if cred.get("SSL_cert") is not NO_CERTIFICATE]
