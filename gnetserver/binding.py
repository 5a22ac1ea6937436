"""BindingMixin: from the port options to listening sockets (Net::Server's pre_bind and bind).

Rules of this module (behaviour: spec/netserver.md, ports and binding):

* :meth:`BindingMixin.pre_bind` only parses: the ``port``/``host``/``proto``/``ipv`` options
  become ``port_specs`` (:mod:`gnetserver.ports`, pure); duplicates are logged and skipped, an
  unknown protocol is a ConfigError, and so are server-wide ``SSL_*`` options a user gave when
  no port is TLS (``check_ssl_options_used``).
* :meth:`BindingMixin.bind` builds every protocol object first (ssl ports build their TLS
  contexts there), so that a bad option fails before any port is bound; then it binds, or
  adopts the sockets inherited over a HUP re-exec (:mod:`gnetserver.restart`), and appends one
  :class:`~gnetserver.listener.Listener` per bound address to ``listeners``.
* Nothing here accepts connections: the server's loop does.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from . import restart
from .errors import ConfigError
from .listener import Listener
from .options import DEFAULT_PORT
from .ports import PortSpec, parse_ports, split_duplicates
from .proto import PROTOCOLS
from .tls import TLSContexts, tls_library_versions

#: Per-port dict keys that are port-spec fields rather than protocol options.
_SPEC_KEYS = frozenset({"port", "host", "proto", "ipv", "listen", "unix_type"})


class BindingMixin:
    """The binding steps of :class:`~gnetserver.server.GServer`: ``pre_bind``, ``bind``,
    ``make_protocol``."""

    if TYPE_CHECKING:  # provided by the server class and its other mixins
        conf: dict[str, Any]
        port_specs: list[PortSpec]
        listeners: list[Listener]
        tls_contexts: TLSContexts | None

        def log(self, level: int, message: str) -> None: ...
        def ssl_options(self, spec: PortSpec) -> dict[str, Any]: ...
        def check_ssl_options_used(self) -> None: ...
        def restart_open_hook(self) -> None: ...

    def pre_bind(self) -> None:
        """Turn the ``port``/``host``/``proto``/``ipv`` options into ``self.port_specs``."""
        self.log(2, f"{type(self).__name__} starting! pid({os.getpid()})")
        ports = self.conf["port"]
        if not ports:
            self.log(2, f"Port Not Defined.  Defaulting to '{DEFAULT_PORT}'")
            ports = [DEFAULT_PORT]
        c = self.conf
        specs = parse_ports(ports, host=c["host"], proto=c["proto"], ipv=c["ipv"],
                            keep_duplicates=True)
        self.port_specs, dropped = split_duplicates(specs)
        for spec in dropped:
            self.log(2, f"Duplicate configuration (port {spec}) - skipping")
        for spec in self.port_specs:
            if spec.proto not in PROTOCOLS:
                raise ConfigError(f"port {spec}: proto {spec.proto!r} is not supported "
                                  f"(supported: {', '.join(PROTOCOLS)})")
        self.check_ssl_options_used()  # SSL_* given with no TLS port: refused, not ignored

    def bind(self) -> None:
        """Build every protocol (TLS contexts: fail before binding anything), then bind and
        listen on every resolved address of every port spec."""
        # One TLSContexts per server: ssl (and ssleay) ports with equal SSL_* options share a
        # context, so sessions resume across listeners; reload_tls() rebuilds them all.
        self.tls_contexts = TLSContexts(lambda text: self.log(1, text))
        protocols = {id(spec): self.make_protocol(spec) for spec in self.port_specs}
        if any(spec.proto == "ssl" for spec in self.port_specs):  # ssleay logs its own
            self.log(2, f"TLS by {tls_library_versions()}")
        # After a HUP re-exec (BOUND_SOCKETS set): restart_open_hook, then matching specs adopt
        # their inherited sockets and only the others are bound (gnetserver.restart).
        bound = restart.bind_ports(self.port_specs, self.conf["listen"], self.log,
                                   self.restart_open_hook)
        for address, sock in bound:
            sock.setblocking(False)
            listener = Listener(address.spec, address, sock, protocols[id(address.spec)])
            self.listeners.append(listener)
            self.log(2, f"Binding to {listener}")

    def make_protocol(self, spec: PortSpec) -> Any:
        """The protocol object for one port spec, with its options resolved."""
        unknown = sorted(k for k in spec.opts if k not in _SPEC_KEYS and not k.startswith("SSL_"))
        if unknown:
            raise ConfigError(f"port {spec}: unknown per-port key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(_SPEC_KEYS))}, SSL_*)")
        options = self.ssl_options(spec) if spec.proto in ("ssl", "ssleay") else dict(spec.opts)
        return PROTOCOLS[spec.proto](spec, options, self)
