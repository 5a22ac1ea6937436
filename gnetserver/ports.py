"""Port specifications: Net::Server's ``port``/``host``/``proto``/``ipv`` options as records.

Rules of this module (behaviour: spec/netserver.md, sections 3.1 to 3.4):

* It is pure: no sockets, no DNS, no environment. Its one lookup is :func:`socket.getservbyname`
  for service names (``localhost:http`` gives port 80). Turning a record into addresses and
  sockets is :mod:`gnetserver.resolve`'s job.
* Each :class:`PortSpec` has exactly one ``ipv`` of ``"4"``, ``"6"`` or ``"*"``. Stacked values
  (``"46"``, ``"IPv4/IPv6"``, ``[6, 4]`` in a dict) expand into several records, IPv6 first.
  A host containing ``:`` is always IPv6; UNIX records always have host ``"*"`` and ipv ``"*"``.
* A string spec is parsed by :mod:`gnetserver.portgrammar` (tokens, then fields classified from
  the end); this module turns the fields, the dict form and the defaults into records.
* ipv precedence (spec 3.4): a dict's ``ipv`` > ``IPv*`` tokens in the port string > tokens in
  ``host`` > tokens in ``proto`` > the ``ipv`` argument. Net::Server's ``$ENV{IPV}`` fallback is
  left to the caller: pass it as the ``ipv`` argument.
* Every bad input raises :class:`~gnetserver.errors.ConfigError` with the message
  ``bad port spec <repr of the item>: <reason>``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from gnetserver.errors import ConfigError
from gnetserver.portgrammar import (
    DGRAM_PROTOS,
    PROTOS,
    UNIX_PROTOS,
    UNIX_TYPES,
    BadSpec,
    check_proto,
    check_unix_type,
    inet_fields,
    ipv_text,
    listen_value,
    peel_tail,
    port_value,
    pull_ipv,
    split_host,
    split_proto,
    tokenize,
    unix_path,
)

# The grammar's public constants stay importable from here, as before the split.
__all__ = [
    "DGRAM_PROTOS", "PROTOS", "UNIX_PROTOS", "UNIX_TYPES", "IpvValue", "PortInput", "PortItem",
    "PortSpec", "parse_ports", "split_duplicates",
]

PortItem = int | str | Mapping[str, object]
PortInput = PortItem | Sequence[PortItem]
IpvValue = int | str | Sequence[int | str] | None

_DICT_FIELDS = frozenset({"port", "host", "proto", "ipv", "listen"})


@dataclass(frozen=True)
class PortSpec:
    """One bind record: what to listen on, before any name resolution.

    Attributes:
        port: The port number for inet protos (0 lets the kernel choose), the filesystem path
            for UNIX protos.
        host: ``"*"`` for all interfaces, else a host name or an address without brackets.
        proto: Lower-case proto name, one of :data:`PROTOS`.
        ipv: ``"4"``, ``"6"`` or ``"*"`` (resolve, one dual-stack socket where possible).
        listen: Per-port backlog from the dict form; ``None`` uses the server's ``listen``.
        options: The dict form's other keys (``SSL_*``, ``unix_type``...) as sorted pairs;
            ``unix_type`` is one of :data:`UNIX_TYPES` (lower case).
        orig_port: The configured port text when it was ``"0"`` or a service name, kept to
            match listeners again after a HUP.
    """

    port: int | str
    host: str = "*"
    proto: str = "tcp"
    ipv: str = "*"
    listen: int | None = None
    options: tuple[tuple[str, object], ...] = ()
    orig_port: str | None = None

    @property
    def opts(self) -> dict[str, object]:
        """The per-port options as a dict."""
        return dict(self.options)

    @property
    def is_unix(self) -> bool:
        """True for the UNIX protos, whose port is a path."""
        return self.proto in UNIX_PROTOS

    @property
    def is_datagram(self) -> bool:
        """True for udp, unixdgram and ``unix_type`` sock_dgram: datagram sockets, which the
        grammar accepts and the server refuses (it serves stream sockets only)."""
        return self.proto in DGRAM_PROTOS or self.opts.get("unix_type") == "sock_dgram"

    def __str__(self) -> str:
        """A spec the grammar reads back: ``*:80/tcp``, ``[::1]:443/ssl/IPv6``, ``/s|unix``."""
        if self.is_unix:
            return f"{self.port}|{self.proto}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        ipv = "" if self.ipv == "*" else f"/IPv{self.ipv}"
        return f"{host}:{self.port}/{self.proto}{ipv}"


def parse_ports(
    port: PortInput,
    host: str | Sequence[str] | None = "*",
    proto: str | Sequence[str] | None = "tcp",
    ipv: IpvValue = "*",
    *,
    keep_duplicates: bool = False,
) -> list[PortSpec]:
    """Parse Net::Server port options into bind records.

    Args:
        port: An int, a string in any form of spec 3.2, a dict (spec 3.3: ``port`` is
            mandatory; ``host``, ``proto``, ``ipv``, ``listen``; every other key goes to
            ``options``), or a list/tuple of those. An empty list gives no records.
        host: Default host, or a list aligned by position with ``port`` (when shorter, its
            last element is reused). May carry ipv tokens: ``"localhost/IPv6"``.
        proto: Default proto, or an aligned list. May carry ipv tokens: ``"udp IPv6"``.
        ipv: Default ipv (``4``, ``6``, ``"*"``, ``"46"``, ``"IPv4, IPv6"``), or an aligned list.
            To stack values for one port, use a string such as ``"46"``, not a list.
        keep_duplicates: Keep records repeating an earlier host+port+proto+ipv. By default
            they are dropped; use :func:`split_duplicates` to learn which ones to report.

    Returns:
        The records, in the order of ``port``; a stacked ipv gives the IPv6 record first.

    Raises:
        ConfigError: For any bad item; the message holds the item's repr and the reason.
    """
    items = list(port) if isinstance(port, (list, tuple)) else [port]
    specs: list[PortSpec] = []
    for index, item in enumerate(items):
        specs += _parse_item(item, _nth(host, index), _nth(proto, index), _nth(ipv, index))
    return specs if keep_duplicates else split_duplicates(specs)[0]


def split_duplicates(specs: Iterable[PortSpec]) -> tuple[list[PortSpec], list[PortSpec]]:
    """Separate the records that repeat an earlier host+port+proto+ipv (port 0 is exempt).

    Returns:
        ``(kept, dropped)``, both in their original order; log ``dropped`` as Net::Server does
        ("Duplicate configuration ... - skipping").
    """
    seen: set[tuple[str, int | str, str, str]] = set()
    kept: list[PortSpec] = []
    dropped: list[PortSpec] = []
    for spec in specs:
        key = (spec.host, spec.port, spec.proto, spec.ipv)
        if spec.port != 0 and key in seen:
            dropped.append(spec)
            continue
        seen.add(key)
        kept.append(spec)
    return kept, dropped


@dataclass(frozen=True)
class _Defaults:
    """The host/proto/ipv options that apply to one port item, already split."""

    host: str
    host_ipv: str
    proto: str
    proto_ipv: str
    ipv: str


def _nth(value: object, index: int) -> object:
    """The value for the index-th port: lists are aligned, and their last element reused."""
    if isinstance(value, (list, tuple)):
        return value[min(index, len(value) - 1)] if value else None
    return value


def _parse_item(item: object, host: object, proto: object, ipv: object) -> list[PortSpec]:
    try:
        defaults = _defaults(host, proto, ipv)
        if isinstance(item, Mapping):
            return _parse_dict(item, defaults)
        if item is None:
            raise BadSpec("no port given")
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise BadSpec(f"expected an int, a str or a dict, not {type(item).__name__}")
        return _parse_string(str(item), defaults)
    except BadSpec as exc:
        raise ConfigError(f"bad port spec {item!r}: {exc}") from None


def _defaults(host: object, proto: object, ipv: object) -> _Defaults:
    host_text, host_ipv = split_host(host)
    proto_text, proto_ipv = split_proto(proto)
    return _Defaults(host_text, host_ipv, proto_text, proto_ipv, ipv_text(ipv))


def _parse_string(text: str, defaults: _Defaults) -> list[PortSpec]:
    tokens = tokenize(text)
    if not tokens:
        raise BadSpec("empty spec")
    body, tail = peel_tail(tokens)
    proto = check_proto(tail.proto) if tail.proto else defaults.proto
    options: tuple[tuple[str, object], ...] = ()
    if tail.unix_type:
        if proto not in UNIX_PROTOS:
            raise BadSpec(f"{tail.unix_type!r} needs a unix proto")
        options = (("unix_type", tail.unix_type),)
    if proto in UNIX_PROTOS:
        path = unix_path(text[: body[-1].end], proto)
        return _records(path, "*", proto, "".join(tail.ipvs), None, options, None)
    body_ipvs, body = pull_ipv(body)
    if len(body_ipvs) + len(tail.ipvs) > 2:
        raise BadSpec("more than two IPv tokens")
    host, port, orig = inet_fields(text, body, proto, defaults.host)
    ipv = "".join(body_ipvs + tail.ipvs)
    ipv = ipv or defaults.host_ipv or defaults.proto_ipv or defaults.ipv
    return _records(port, host, proto, ipv, None, options, orig)


def _parse_dict(item: Mapping[object, object], defaults: _Defaults) -> list[PortSpec]:
    if item.get("port") is None:
        raise BadSpec("missing 'port' key")
    for key in item:
        if not isinstance(key, str):
            raise BadSpec(f"keys must be strings, not {key!r}")
    host, host_ipv = defaults.host, defaults.host_ipv
    if item.get("host") is not None:
        host, host_ipv = split_host(item["host"])
    proto, proto_ipv = defaults.proto, defaults.proto_ipv
    if item.get("proto") is not None:
        proto, proto_ipv = split_proto(item["proto"])
    port, orig = port_value(item["port"], proto)
    ipv = ipv_text(item.get("ipv")) or host_ipv or proto_ipv or defaults.ipv
    options = tuple(sorted((str(k), v) for k, v in item.items() if k not in _DICT_FIELDS))
    if item.get("unix_type") is not None:
        unix_type = check_unix_type(item["unix_type"], proto)
        options = tuple((k, unix_type if k == "unix_type" else v) for k, v in options)
    listen = listen_value(item.get("listen"))
    return _records(port, host, proto, ipv, listen, options, orig)


def _records(
    port: int | str,
    host: str,
    proto: str,
    ipv: str,
    listen: int | None,
    options: tuple[tuple[str, object], ...],
    orig_port: str | None,
) -> list[PortSpec]:
    """Expand one parsed item into records, one per ipv (spec 3.5's rules for ipv)."""
    if ipv and not set(ipv) & set("46*"):
        raise BadSpec(f"Invalid ipv parameter {ipv!r} - must contain 4, 6, or *")
    if proto in UNIX_PROTOS:
        host, ipvs = "*", ["*"]
    elif ":" in host:
        ipvs = ["6"]
    elif not ipv or "*" in ipv:
        ipvs = ["*"]
    else:
        ipvs = [v for v in "64" if v in ipv]
    return [PortSpec(port, host, proto, v, listen, options, orig_port) for v in ipvs]
