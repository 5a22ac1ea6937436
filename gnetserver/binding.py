"""BindingMixin: from the port options to listening sockets (Net::Server's pre_bind and bind).

Rules of this module (behaviour: spec/netserver.md, ports and binding):

* :meth:`BindingMixin.pre_bind` only parses: the ``port``/``host``/``proto``/``ipv`` options
  become ``port_specs`` (:mod:`gnetserver.ports`, pure); duplicates are logged and skipped. A
  ConfigError stops the start for a protocol that is not served: an unknown one, and every
  datagram port (udp, unixdgram, ``unix_type`` sock_dgram: the server serves stream sockets
  only); and for server-wide ``SSL_*`` options a user gave when no port is TLS
  (``check_ssl_options_used``).
* :meth:`BindingMixin.bind` builds every protocol object first (TLS ports build their TLS
  contexts there, in the server's one TLSContexts), so that a bad option fails before any
  port is bound, and logs each TLS library in use once; then it binds, or adopts the sockets
  inherited over a HUP re-exec (:mod:`gnetserver.restart`), and appends one
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
from .proto import PROTOCOLS, StreamProtocol
from .tls import TLSContexts

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
            _check_served(spec)
        self.check_ssl_options_used()  # SSL_* given with no TLS port: refused, not ignored

    def bind(self) -> None:
        """Build every protocol (TLS contexts: fail before binding anything), then bind and
        listen on every resolved address of every port spec."""
        # One TLSContexts per server: TLS ports with equal SSL_* options (and backend) share a
        # context, so sessions resume across listeners; reload_tls() rebuilds them all.
        self.tls_contexts = TLSContexts(lambda text: self.log(1, text))
        protocols = {id(spec): self.make_protocol(spec) for spec in self.port_specs}
        libraries = (protocol.tls_library() for protocol in protocols.values())
        for library in dict.fromkeys(text for text in libraries if text):  # once each, in order
            self.log(2, f"TLS by {library}")
        # After a HUP re-exec (BOUND_SOCKETS set): restart_open_hook, then matching specs adopt
        # their inherited sockets and only the others are bound (gnetserver.restart).
        bound = restart.bind_ports(self.port_specs, self.conf["listen"], self.log,
                                   self.restart_open_hook)
        for address, sock in bound:
            sock.setblocking(False)
            listener = Listener(address.spec, address, sock, protocols[id(address.spec)])
            self.listeners.append(listener)
            self.log(2, f"Binding to {listener}")

    def make_protocol(self, spec: PortSpec) -> StreamProtocol:
        """The protocol object for one port spec, with its options resolved (at bind, and in
        the HUP preflight); ConfigError for a bad per-port key or TLS option."""
        unknown = sorted(k for k in spec.opts if k not in _SPEC_KEYS and not k.startswith("SSL_"))
        if unknown:
            raise ConfigError(f"port {spec}: unknown per-port key(s) {', '.join(unknown)} "
                              f"(known: {', '.join(sorted(_SPEC_KEYS))}, SSL_*)")
        protocol = PROTOCOLS[spec.proto]
        options = self.ssl_options(spec) if protocol.is_tls else dict(spec.opts)
        return protocol(spec, options, self.tls_contexts)


def _check_served(spec: PortSpec) -> None:
    """ConfigError for a port spec the server cannot serve (the grammar accepts more)."""
    streams = "gnetserver serves stream sockets only"
    if spec.proto not in PROTOCOLS:
        why = f": {streams}" if spec.is_datagram else ""
        raise ConfigError(f"port {spec}: proto {spec.proto!r} is not supported{why} "
                          f"(supported: {', '.join(PROTOCOLS)})")
    if spec.is_datagram:
        raise ConfigError(f"port {spec}: unix_type sock_dgram (a datagram socket) is not "
                          f"supported: {streams} (unix_type SOCK_STREAM, or no unix_type)")
