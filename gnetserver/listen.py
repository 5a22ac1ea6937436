"""From the port options to listening sockets (Net::Server's pre_bind and bind), as functions.

Rules of this module (behaviour: spec/netserver.md, ports and binding):

* :func:`plan_ports` only parses: the ``port``/``host``/``proto``/``ipv`` options become port
  specs (:mod:`gnetserver.ports`, pure); duplicates are returned apart, for the caller to log.
  A ConfigError stops the start for a port that cannot be served (a bad per-port
  ``unix_mode``, ``udp_*`` key or systemd ``name``).
* :func:`make_protocol` builds the protocol object of one port spec (TLS ports get their
  context from the server's one :class:`~gnetserver.tls.TLSContexts`; datagram ports, udp,
  unixdgram and unix with ``unix_type`` sock_dgram, a :class:`~gnetserver.proto.datagram.
  DatagramProtocol`), so that a bad option fails before any port is bound. The HUP
  preflight calls the same functions.
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
from .proto import DATAGRAM_PROTOCOLS, PROTOCOLS, StreamProtocol, TCPProtocol
from .proto.datagram import DATAGRAM_KEYS
from .resolve import socket_broadcast, socket_mode
from .tls import TLSContexts

#: Per-port dict keys that are port-spec fields rather than protocol options.
SPEC_KEYS = frozenset({"port", "host", "proto", "ipv", "listen", "unix_type", "unix_mode",
                       "proxy_protocol", "proxy_protocol_from", systemd.NAME_KEY,
                       *DATAGRAM_KEYS})

Log = Callable[[int, str], None]


def plan_ports(conf: Conf) -> tuple[list[PortSpec], list[PortSpec]]:
    """The port specs of ``conf`` (``port`` or the default port, with ``host``, ``proto``,
    ``ipv``), and the duplicates left out; ConfigError for a port that cannot be served."""
    ports = conf.port or [DEFAULT_PORT]
    specs = parse_ports(ports, host=conf.host, proto=conf.proto, ipv=conf.ipv,
                        keep_duplicates=True)
    kept, dropped = split_duplicates(specs)
    for spec in kept:
        socket_mode(spec)  # a bad per-port unix_mode stops the start before anything is bound
        socket_broadcast(spec)  # and a bad per-port udp_broadcast
        systemd.check_port_name(spec)  # the name a socket unit's FileDescriptorName= matches
    return kept, dropped


#: The protocols a ``metrics_port`` may use, and its host when the spec names none.
METRICS_PROTOS = ("tcp", "ssl", "ssleay")
METRICS_HOST = "127.0.0.1"


def plan_metrics_port(conf: Conf, specs: Sequence[PortSpec]) -> PortSpec | None:
    """The port spec of ``metrics_port`` (None when unset): loopback when it names no host,
    tcp unless it names ssl or ssleay. ConfigError for more than one spec, another protocol,
    or an address a ``port`` spec binds already."""
    value = conf.metrics_port
    if value is None:
        return None
    found = parse_ports(value, host=METRICS_HOST, proto="tcp")
    if len(found) != 1:
        raise ConfigError(f"option 'metrics_port' = {value!r}: one port spec, not {len(found)}")
    spec = found[0]
    if spec.proto not in METRICS_PROTOS or spec.is_datagram:
        raise ConfigError(f"option 'metrics_port' = {value!r}: the metrics are served over "
                          f"{', '.join(METRICS_PROTOS)}, not {spec.proto}")
    for other in specs:
        if spec.port != 0 and (other.port, other.host, other.ipv) == (spec.port, spec.host,
                                                                       spec.ipv):
            raise ConfigError(f"option 'metrics_port' = {value!r}: port {other} serves "
                              "connections already; give the metrics a port of their own")
    return spec


def is_tls(spec: PortSpec) -> bool:
    """True when ``spec``'s protocol serves TLS (ssl, ssleay)."""
    return protocol_class(spec).is_tls


def protocol_class(spec: PortSpec) -> type[TCPProtocol]:
    """The protocol class of a port spec: by its proto name, and a unix port with
    ``unix_type`` sock_dgram is a datagram one (as proto unixdgram)."""
    if spec.is_datagram:
        return DATAGRAM_PROTOCOLS["unixdgram" if spec.is_unix else "udp"]
    return PROTOCOLS[spec.proto]


def port_options(spec: PortSpec, conf: Conf) -> dict[str, Any]:
    """The options of a port that is not TLS: its per-port keys, and for a datagram port the
    ``udp_*`` options of ``conf`` its dict does not give (Net::Server's precedence)."""
    options = dict(spec.opts)
    if spec.is_datagram:
        for name in DATAGRAM_KEYS:
            options.setdefault(name, conf[name])
    return options


def make_protocol(spec: PortSpec, options: Mapping[str, Any],
                  contexts: TLSContexts) -> StreamProtocol:
    """The protocol object of one port spec with its resolved options (for TLS ports, the
    ``SSL_*`` options: the server's ``ssl_options``; else :func:`port_options`); ConfigError
    for an unknown per-port key or a bad TLS or ``udp_*`` option."""
    unknown = sorted(k for k in spec.opts if k not in SPEC_KEYS and not k.startswith("SSL_"))
    if unknown:
        raise ConfigError(f"port {spec}: unknown per-port key(s) {', '.join(unknown)} "
                          f"(known: {', '.join(sorted(SPEC_KEYS))}, SSL_*)")
    protocol: StreamProtocol = protocol_class(spec)(spec, options, contexts)
    return protocol


def bind_listeners(protocols: Sequence[StreamProtocol], backlog: int, log: Log,
                   restart_open_hook: Callable[[], None], *,
                   unix_mode: int = DEFAULT_UNIX_MODE,
                   broadcast: bool = False) -> list[Listener]:
    """Bind and listen on every resolved address of every protocol's port spec (datagram
    ports: bind only; after a HUP re-exec: ``restart_open_hook``, then adopt the inherited
    sockets that match, bind the rest); unix socket files get ``unix_mode`` (or their port's
    own), udp sockets SO_BROADCAST with ``broadcast`` (or their port's ``udp_broadcast``).
    Returns the listeners, in port order."""
    by_spec = {id(protocol.spec): protocol for protocol in protocols}
    bound = restart.bind_ports([protocol.spec for protocol in protocols], backlog, log,
                               restart_open_hook, unix_mode=unix_mode, broadcast=broadcast)
    listeners = []
    for address, sock in bound:
        sock.setblocking(False)
        listeners.append(Listener(address.spec, address, sock, by_spec[id(address.spec)]))
    return listeners
