"""TLSSetupMixin: where the TLS settings of each ssl port come from, and TLS reloads.

Rules of this module:

* :meth:`TLSSetupMixin.ssl_options` is the one place that decides an ssl port's ``SSL_*``
  options, in Net::Server's precedence: the per-port dict, then the server-wide option, then a
  method (called with host, port, proto) or attribute of that name on the server; then, with
  ``self_signed`` and no certificate at all, a self-signed certificate.
* Nothing here builds a TLS context: :mod:`gnetserver.tls.context` (ssl) and
  :mod:`gnetserver.tls.stdlib_context` (ssleay) do, when the protocol objects are made in
  ``bind`` (so a bad option fails before anything is bound), and
  :class:`gnetserver.tls.TLSContexts` rebuilds them on :meth:`TLSSetupMixin.reload_tls`.
* A bad value is a ConfigError naming the port and the option, raised at start.
* A server-wide ``SSL_*`` option that a user gave (constructor, command line, ``run()``, conf
  file) while no port is TLS is a ConfigError at start
  (:meth:`TLSSetupMixin.check_ssl_options_used`): a certificate meant for a port that is not
  TLS must not be ignored in silence. Values from ``default_values()`` and ``SSL_*`` methods
  or attributes of a subclass are the program's own defaults, legitimately present in a
  server that a user runs with plain ports only: they are not refused.
* The mixin holds no state but the self-signed certificate, made once per server; it uses the
  host server's ``conf``, ``options()``, ``log()`` and ``tls_contexts`` (set in ``bind``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import ConfigError
from .option_sources import DEFAULT_VALUES
from .ports import PortSpec
from .proto import PROTOCOLS
from .tls import TLSContexts

if TYPE_CHECKING:
    from .options import Option


class TLSSetupMixin:
    """The TLS steps of :class:`~gnetserver.server.GServer`: ``ssl_options``,
    ``self_signed_certificate``, ``reload_tls``."""

    #: The TLS contexts of every ssl port (set by ``bind``; None before).
    tls_contexts: TLSContexts | None = None
    #: The self-signed certificate and key, once made (``self_signed``).
    _self_signed: tuple[Any, Any] | None = None

    if TYPE_CHECKING:  # provided by the server class
        conf: dict[str, Any]
        conf_sources: dict[str, str]
        port_specs: list[PortSpec]

        def options(self) -> list[Option]: ...
        def log(self, level: int, message: str) -> None: ...

    def ssl_options(self, spec: PortSpec) -> dict[str, Any]:
        """The SSL_* options of one port: the per-port dict, else the server-wide option, else a
        method (called with host, port, proto) or attribute of that name on the server."""
        names = {o.name for o in self.options() if o.name.startswith("SSL_")}
        names |= {k for k in spec.opts if k.startswith("SSL_")}
        # Methods/attributes of any SSL_* name count too: an unsupported one is then refused
        # at start (tls.context.check_names) instead of being silently ignored.
        names |= {k for k in dir(self) if k.startswith("SSL_")}
        resolved: dict[str, Any] = {}
        for name in sorted(names):
            if name in spec.opts:
                value = spec.opts[name]
            elif self.conf.get(name) is not None:
                value = self.conf[name]
            else:
                value = getattr(self, name, None)
                if callable(value):
                    value = self._ssl_method_value(name, value, spec)
            if value is not None:
                resolved[name] = value
        if not ({"SSL_cert_file", "SSL_cert"} & resolved.keys()) and self.conf["self_signed"]:
            resolved["SSL_cert"], resolved["SSL_key"] = self.self_signed_certificate()
        return resolved

    def check_ssl_options_used(self) -> None:
        """Framework step (end of pre_bind, so the HUP dry run does it too): when no port is
        TLS, refuse the server-wide SSL_* options that a user gave; ConfigError naming them
        and where they came from. Values from default_values() and SSL_* methods/attributes
        are the program's own and are left alone (see the module rules)."""
        if any(PROTOCOLS[spec.proto].is_tls for spec in self.port_specs):
            return
        set_now = {name for name, value in self.conf.items()
                   if name.startswith("SSL_") and value is not None}
        given = self._user_given(set_now) if set_now else {}
        if not given:
            return
        names = ", ".join(f"{name} ({where})" for name, where in sorted(given.items()))
        ports = ", ".join(str(spec) for spec in self.port_specs)
        raise ConfigError(f"{names} given, but no port uses TLS (proto ssl or ssleay): "
                          f"ports {ports}; add /ssl to a port or drop the option(s)")

    def _user_given(self, names: set[str]) -> dict[str, str]:
        """Which of ``names`` a user source set, with that source (``conf_sources``, filled
        by configure); names whose value came from default_values() are left out."""
        return {name: where for name in names
                if (where := self.conf_sources.get(name)) not in (None, DEFAULT_VALUES)}

    def _ssl_method_value(self, name: str, method: Any, spec: PortSpec) -> Any:
        """Net::Server calls an SSL_* method with (host, port, proto) and uses what it returns
        (for callback options: the callback itself)."""
        try:
            return method(spec.host, spec.port, spec.proto)
        except TypeError as exc:
            raise ConfigError(f"port {spec}: {name} is called as {name}(host, port, proto) and "
                              f"must return the option's value: {exc}") from exc

    def self_signed_certificate(self) -> tuple[Any, Any]:
        """A self-signed certificate and key, made once per server, fingerprint logged."""
        if self._self_signed is None:
            from .tls.selfsigned import fingerprint_sha256, make_self_signed

            self._self_signed = make_self_signed()
            fingerprint = fingerprint_sha256(self._self_signed[0])
            self.log(2, f"Generated a self-signed certificate, SHA-256 fingerprint {fingerprint}")
        return self._self_signed

    def reload_tls(self) -> bool:
        """Rebuild every TLS context, of ssl and ssleay ports alike, from its options, reading
        certificates, keys, CAs, CRLs, DH and OCSP files again; all contexts or none.

        New connections get the new contexts; established ones keep theirs. Session tickets
        and cached sessions of the old contexts no longer resume (one full handshake each). If
        any context fails to build, the old ones all stay and the reason is logged at level 1.
        Call it in the server's hub thread (a connection greenlet, a signal handler,
        ``ServerThread.call``). Returns True when the new contexts are in use.
        """
        contexts = self.tls_contexts
        if contexts is None or not contexts.handles:
            self.log(2, "TLS reload: no TLS port to reload")
            return False
        try:
            contexts.reload()
        except ConfigError as exc:
            self.log(1, f"TLS reload failed, still serving the previous certificates: {exc}")
            return False
        ports = ", ".join(port for handle in contexts.handles for port in handle.ports)
        self.log(2, f"TLS reloaded: {ports}")
        return True
