"""From the port options to listening sockets (Net::Server's pre_bind and bind), as functions.

Rules of this module (behaviour: spec/netserver.md, ports and binding):

* :func:`plan_ports` only parses: the ``port``/``host``/``proto``/``ipv`` options become port
  specs (:mod:`gnetserver.ports`, pure); duplicates are returned apart, for the caller to log.
  A ConfigError stops the start for a protocol that is not served: an unknown one, and every
  datagram port (udp, unixdgram, ``unix_type`` sock_dgram).
* :func:`make_protocol` builds the protocol object of one port spec (TLS ports get their
  context from the server's one :class:`~gnetserver.tls.TLSContexts`), so that a bad option
  fails before any port is bound. The HUP preflight calls the same functions.
* :func:`bind_listeners` binds, or adopts the sockets systemd passed (socket activation,
  :mod:`gnetserver.systemd`) or inherited over a HUP re-exec (:mod:`gnetserver.restart`),
  and returns one :class:`~gnetserver.listener.Listener` per bound
  address.
* Nothing here accepts connections: the personality does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from . import restart, systemd
from .conf import Conf
from .errors import ConfigError
from .listener import Listener
from .options import DEFAULT_PORT, DEFAULT_UNIX_MODE
from .ports import PortSpec, parse_ports, split_duplicates
from .proto import PROTOCOLS, StreamProtocol
from .resolve import socket_mode
from .tls import TLSContexts

#: Per-port dict keys that are port-spec fields rather than protocol options.
SPEC_KEYS = frozenset({"port", "host", "proto", "ipv", "listen", "unix_type", "unix_mode",
                       "proxy_protocol", "proxy_protocol_from", systemd.NAME_KEY})

Log = Callable[[int, str], None]


def plan_ports(conf: Conf) -> tuple[list[PortSpec], list[PortSpec]]:
    """The port specs of ``conf`` (``port`` or the default port, with ``host``, ``proto``,
    ``ipv``), and the duplicates left out; ConfigError for a port that cannot be served."""
    ports = conf.port or [DEFAULT_PORT]
    specs = parse_ports(ports, host=conf.host, proto=conf.proto, ipv=conf.ipv,
                        keep_duplicates=True)
    kept, dropped = split_duplicates(specs)
    for spec in kept:
        check_served(spec)
        socket_mode(spec)  # a bad per-port unix_mode stops the start before anything is bound
        systemd.check_port_name(spec)  # the name a socket unit's FileDescriptorName= matches
    return kept, dropped


def is_tls(spec: PortSpec) -> bool:
    """True when ``spec``'s protocol serves TLS (ssl, ssleay)."""
    return PROTOCOLS[spec.proto].is_tls


def make_protocol(spec: PortSpec, options: Mapping[str, Any],
                  contexts: TLSContexts) -> StreamProtocol:
    """The protocol object of one port spec with its resolved options (for TLS ports, the
    ``SSL_*`` options: the server's ``ssl_options``); ConfigError for an unknown per-port key
    or a bad TLS option."""
    unknown = sorted(k for k in spec.opts if k not in SPEC_KEYS and not k.startswith("SSL_"))
    if unknown:
        raise ConfigError(f"port {spec}: unknown per-port key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(SPEC_KEYS))}, SSL_*)")
    protocol: StreamProtocol = PROTOCOLS[spec.proto](spec, options, contexts)
    return protocol


def bind_listeners(protocols: Sequence[StreamProtocol], backlog: int, log: Log,
                   restart_open_hook: Callable[[], None], *,
                   unix_mode: int = DEFAULT_UNIX_MODE) -> list[Listener]:
    """Bind and listen on every resolved address of every protocol's port spec (after a HUP
    re-exec: ``restart_open_hook``, then adopt the inherited sockets that match, bind the
    rest); unix socket files get ``unix_mode`` (or their port's own). Returns the listeners,
    in port order."""
    by_spec = {id(protocol.spec): protocol for protocol in protocols}
    bound = restart.bind_ports([protocol.spec for protocol in protocols], backlog, log,
                               restart_open_hook, unix_mode=unix_mode)
    listeners = []
    for address, sock in bound:
        sock.setblocking(False)
        listeners.append(Listener(address.spec, address, sock, by_spec[id(address.spec)]))
    return listeners


def check_served(spec: PortSpec) -> None:
    """ConfigError for a port spec the server cannot serve (the grammar accepts more)."""
    streams = "gnetserver serves stream sockets only"
    if spec.proto not in PROTOCOLS:
        why = f": {streams}" if spec.is_datagram else ""
        raise ConfigError(f"port {spec}: proto {spec.proto!r} is not supported{why} "
                          f"(supported: {', '.join(PROTOCOLS)})")
    if spec.is_datagram:
        raise ConfigError(f"port {spec}: unix_type sock_dgram (a datagram socket) is not "
                          f"supported: {streams} (unix_type SOCK_STREAM, or no unix_type)")
