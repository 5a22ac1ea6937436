"""Port specifications: Net::Server's ``port``/``host``/``proto``/``ipv`` options as records.

Rules of this module (behaviour: spec/netserver.md, sections 3.1 to 3.4):

* It is pure: no sockets, no DNS, no environment. Its one lookup is :func:`socket.getservbyname`
  for service names (``localhost:http`` gives port 80). Turning a record into addresses and
  sockets is :mod:`gnetserver.resolve`'s job.
* Each :class:`PortSpec` has exactly one ``ipv`` of ``"4"``, ``"6"`` or ``"*"``. Stacked values
  (``"46"``, ``"IPv4/IPv6"``, ``[6, 4]`` in a dict) expand into several records, IPv6 first.
  A host containing ``:`` is always IPv6; UNIX records always have host ``"*"`` and ipv ``"*"``.
* A string spec is parsed in two steps. :func:`_tokenize` splits it on runs of ``: / | ,`` and
  whitespace, and keeps ``[bracketed]`` hosts, bare IPv6 literals and ``A::B`` class names whole.
  Then fields are classified from the end: trailing proto, ``IPv*`` and ``sock_*`` tokens; then
  the port; then the optional host. For a UNIX proto everything before the trailing tokens is
  the path.
* ipv precedence (spec 3.4): a dict's ``ipv`` > ``IPv*`` tokens in the port string > tokens in
  ``host`` > tokens in ``proto`` > the ``ipv`` argument. Net::Server's ``$ENV{IPV}`` fallback is
  left to the caller: pass it as the ``ipv`` argument.
* Every bad input raises :class:`~gnetserver.errors.ConfigError` with the message
  ``bad port spec <repr of the item>: <reason>``.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from gnetserver.errors import ConfigError

#: Every proto name the grammar accepts; the server decides which ones it serves.
PROTOS = ("tcp", "udp", "ssl", "ssleay", "unix", "unixdgram")
#: Protos whose port is a filesystem path.
UNIX_PROTOS = frozenset({"unix", "unixdgram"})
#: Protos whose sockets are datagram sockets (parsed, never served: see ``is_datagram``).
DGRAM_PROTOS = frozenset({"udp", "unixdgram"})
#: Net::Server's UNIX socket types (``unix_type``, ``/path|SOCK_DGRAM|unix``), as the records
#: hold them: lower case, whatever the case given.
UNIX_TYPES = ("sock_stream", "sock_dgram")

PortItem = int | str | Mapping[str, object]
PortInput = PortItem | Sequence[PortItem]
IpvValue = int | str | Sequence[int | str] | None

_IPV_TOKEN = re.compile(r"ipv([*\d]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?[0-9]+")
_SERVICE = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]*")
_CLASS_NAME = re.compile(r"[A-Za-z_]\w*(?:::\w+)+")  # Perl's My::Proto, refused with a reason
_HOST = re.compile(r"\*|[\w.%:-]+")
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


class _Bad(Exception):
    """Why one port item is wrong; :func:`_parse_item` adds the item and raises ConfigError."""


@dataclass(frozen=True)
class _Defaults:
    """The host/proto/ipv options that apply to one port item, already split."""

    host: str
    host_ipv: str
    proto: str
    proto_ipv: str
    ipv: str


@dataclass(frozen=True)
class _Token:
    text: str
    end: int  # index just past the token in the spec string
    sep: str  # the separator run before the token ("" for a leading token)
    bracketed: bool = False


@dataclass
class _Tail:
    """The trailing proto / IPv* / sock_* tokens peeled off a string spec."""

    proto: str | None = None
    ipvs: list[str] = field(default_factory=list)
    unix_type: str | None = None


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
            raise _Bad("no port given")
        if isinstance(item, bool) or not isinstance(item, (int, str)):
            raise _Bad(f"expected an int, a str or a dict, not {type(item).__name__}")
        return _parse_string(str(item), defaults)
    except _Bad as exc:
        raise ConfigError(f"bad port spec {item!r}: {exc}") from None


def _defaults(host: object, proto: object, ipv: object) -> _Defaults:
    host_text, host_ipv = _split_host(host)
    proto_text, proto_ipv = _split_proto(proto)
    return _Defaults(host_text, host_ipv, proto_text, proto_ipv, _ipv_text(ipv))


def _parse_string(text: str, defaults: _Defaults) -> list[PortSpec]:
    tokens = _tokenize(text)
    if not tokens:
        raise _Bad("empty spec")
    body, tail = _peel_tail(tokens)
    proto = _check_proto(tail.proto) if tail.proto else defaults.proto
    options: tuple[tuple[str, object], ...] = ()
    if tail.unix_type:
        if proto not in UNIX_PROTOS:
            raise _Bad(f"{tail.unix_type!r} needs a unix proto")
        options = (("unix_type", tail.unix_type),)
    if proto in UNIX_PROTOS:
        path = _unix_path(text[: body[-1].end], proto)
        return _records(path, "*", proto, "".join(tail.ipvs), None, options, None)
    body_ipvs, body = _pull_ipv(body)
    if len(body_ipvs) + len(tail.ipvs) > 2:
        raise _Bad("more than two IPv tokens")
    host, port, orig = _inet_fields(text, body, proto, defaults.host)
    ipv = "".join(body_ipvs + tail.ipvs)
    ipv = ipv or defaults.host_ipv or defaults.proto_ipv or defaults.ipv
    return _records(port, host, proto, ipv, None, options, orig)


def _parse_dict(item: Mapping[object, object], defaults: _Defaults) -> list[PortSpec]:
    if item.get("port") is None:
        raise _Bad("missing 'port' key")
    for key in item:
        if not isinstance(key, str):
            raise _Bad(f"keys must be strings, not {key!r}")
    host, host_ipv = defaults.host, defaults.host_ipv
    if item.get("host") is not None:
        host, host_ipv = _split_host(item["host"])
    proto, proto_ipv = defaults.proto, defaults.proto_ipv
    if item.get("proto") is not None:
        proto, proto_ipv = _split_proto(item["proto"])
    port, orig = _port_value(item["port"], proto)
    ipv = _ipv_text(item.get("ipv")) or host_ipv or proto_ipv or defaults.ipv
    options = tuple(sorted((str(k), v) for k, v in item.items() if k not in _DICT_FIELDS))
    if item.get("unix_type") is not None:
        unix_type = _unix_type(item["unix_type"], proto)
        options = tuple((k, unix_type if k == "unix_type" else v) for k, v in options)
    listen = _listen(item.get("listen"))
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
        raise _Bad(f"Invalid ipv parameter {ipv!r} - must contain 4, 6, or *")
    if proto in UNIX_PROTOS:
        host, ipvs = "*", ["*"]
    elif ":" in host:
        ipvs = ["6"]
    elif not ipv or "*" in ipv:
        ipvs = ["*"]
    else:
        ipvs = [v for v in "64" if v in ipv]
    return [PortSpec(port, host, proto, v, listen, options, orig_port) for v in ipvs]


# -- the tokenizer -------------------------------------------------------------------------------


def _is_sep(char: str) -> bool:
    return char in ":/|," or char.isspace()


def _tokenize(text: str) -> list[_Token]:
    """Split a spec on runs of ``: / | ,`` and whitespace, keeping each token's position."""
    tokens: list[_Token] = []
    index = 0
    while index < len(text):
        start = index
        while index < len(text) and _is_sep(text[index]) and not _ipv6_end(text, index):
            index += 1
        if index == len(text):
            break
        sep = text[start:index]
        if text[index] == "[":
            end = _bracket_end(text, index)
            tokens.append(_Token(text[index + 1 : end - 1].strip(), end, sep, bracketed=True))
        else:
            end = _word_end(text, index)
            tokens.append(_Token(text[index:end], end, sep))
        index = end
    return tokens


def _bracket_end(text: str, start: int) -> int:
    close = text.find("]", start)
    if close < 0:
        raise _Bad("unbalanced '['")
    if close + 1 < len(text) and not _is_sep(text[close + 1]):
        raise _Bad(f"unexpected {text[close + 1]!r} after ']'")
    return close + 1


def _word_end(text: str, start: int) -> int:
    """End of the word at ``start``: a bare IPv6 literal (``::1|80``) or ``A::B`` stays whole."""
    ipv6_end = _ipv6_end(text, start)
    if ipv6_end:
        return ipv6_end
    end = start
    while True:
        while end < len(text) and not _is_sep(text[end]):
            end += 1
        after = text[end + 2 : end + 3]
        if not (text.startswith("::", end) and (after.isalpha() or after == "_")):
            return end
        end += 2


def _ipv6_end(text: str, start: int) -> int | None:
    """End of a bare IPv6 literal starting at ``start`` (it runs to a non-``:`` separator)."""
    end = start
    while end < len(text) and (text[end] == ":" or not _is_sep(text[end])):
        end += 1
    if ":" not in text[start:end]:
        return None
    try:
        ipaddress.IPv6Address(text[start:end])
    except ValueError:
        return None
    return end


# -- classifying tokens --------------------------------------------------------------------------


def _peel_tail(tokens: list[_Token]) -> tuple[list[_Token], _Tail]:
    """Take trailing proto, IPv* and sock_* tokens (any order) off; the first token stays."""
    body, tail = list(tokens), _Tail()
    while len(body) > 1 and not body[-1].bracketed:
        word = body[-1].text.lower()
        match = _IPV_TOKEN.fullmatch(word)
        if match:
            if len(tail.ipvs) == 2:
                raise _Bad("more than two IPv tokens")
            tail.ipvs.insert(0, match.group(1))
        elif word in UNIX_TYPES and tail.unix_type is None:
            tail.unix_type = word
        elif (word in PROTOS or _CLASS_NAME.fullmatch(word)) and tail.proto is None:
            tail.proto = body[-1].text
        else:
            break
        body.pop()
    return body, tail


def _pull_ipv(body: list[_Token]) -> tuple[list[str], list[_Token]]:
    """Remove IPv* tokens from anywhere in an inet spec (``[localhost]:IPv6:20201``)."""
    matches = [None if t.bracketed else _IPV_TOKEN.fullmatch(t.text) for t in body]
    ipvs = [m.group(1) for m in matches if m]
    return ipvs, [t for t, m in zip(body, matches, strict=True) if not m]


def _inet_fields(
    text: str, body: list[_Token], proto: str, default_host: str
) -> tuple[str, int, str | None]:
    """Classify what is left of an inet spec as ``[host] port``; return host, port, orig_port."""
    if text.lstrip().startswith(("/", ".")):
        raise _Bad("a filesystem path needs a unix proto (as in '/tmp/x.sock|unix')")
    if not body:
        raise _Bad("no port given")
    if len(body) > 2:
        raise _Bad("too many fields: expected [host:]port[/proto][/IPv4|/IPv6]")
    port_token = body[-1]
    if port_token.bracketed:
        raise _Bad(f"the port cannot be bracketed: [{port_token.text}]")
    if port_token.text.lower() in PROTOS:
        raise _Bad(f"{port_token.text!r} is a proto, not a port")
    if len(body) == 2 and "/" in port_token.sep and not _NUMBER.fullmatch(port_token.text):
        raise _Bad(f"unknown proto {port_token.text!r}")  # Net::Server's legacy "80/MyProto"
    host = _check_host(body[0].text or "*") if len(body) == 2 else default_host
    port, orig = _port_value(port_token.text, proto)
    return host, int(port), orig


def _port_value(raw: object, proto: str) -> tuple[int | str, str | None]:
    """The port (a number, or a path for UNIX protos) and the orig_port to remember."""
    if proto in UNIX_PROTOS:
        return _unix_path(raw, proto), None
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise _Bad(f"the port must be an int or a str, not {type(raw).__name__}")
    text = str(raw).strip()
    if _NUMBER.fullmatch(text):
        number = int(text)
        if not 0 <= number <= 65535:
            raise _Bad(f"port {number} out of range 0-65535")
        return number, ("0" if number == 0 else None)
    if not _SERVICE.fullmatch(text):
        raise _Bad(f"bad port {text!r}")
    try:
        return socket.getservbyname(text, "udp" if proto == "udp" else "tcp"), text
    except OSError:
        raise _Bad(f"unknown service name {text!r}") from None


def _unix_path(raw: object, proto: str) -> str:
    path = raw.strip() if isinstance(raw, str) else ""
    if not path or _NUMBER.fullmatch(path) or "\0" in path:
        raise _Bad(f"proto {proto} needs a filesystem path, not {raw!r}")
    return path


def _split_host(value: object) -> tuple[str, str]:
    host, ipv = _split_option(value, "host", "*")
    return _check_host(host), ipv


def _split_proto(value: object) -> tuple[str, str]:
    proto, ipv = _split_option(value, "proto", "tcp")
    return _check_proto(proto), ipv


def _split_option(value: object, name: str, default: str) -> tuple[str, str]:
    """A host or proto option and its IPv tokens: ``"localhost/IPv6"`` -> ``("localhost", "6")``."""
    if value is None:
        return default, ""
    if not isinstance(value, str):
        raise _Bad(f"the {name} must be a str, not {type(value).__name__}")
    ipvs, rest = _pull_ipv(_tokenize(value))
    if len(rest) > 1:
        raise _Bad(f"bad {name} {value!r}: more than one field")
    return (rest[0].text if rest and rest[0].text else default), "".join(ipvs)


def _check_host(host: str) -> str:
    if not _HOST.fullmatch(host):
        raise _Bad(f"bad host {host!r}")
    return host


def _check_proto(proto: str) -> str:
    if _CLASS_NAME.fullmatch(proto):
        raise _Bad(f"custom proto classes such as {proto!r} are not supported")
    if proto.lower() not in PROTOS:
        raise _Bad(f"unknown proto {proto!r} (expected one of {', '.join(PROTOS)})")
    return proto.lower()


def _ipv_text(value: object) -> str:
    """An ipv value as text: ``6`` -> ``"6"``, ``[6, 4]`` -> ``"64"``, ``None`` -> ``""``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "".join(_ipv_text(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise _Bad(f"Invalid ipv parameter {value!r} - must contain 4, 6, or *")
    return str(value).strip()


def _unix_type(value: object, proto: str) -> str:
    """A dict's ``unix_type`` as the string form gives it: lower case, checked."""
    if proto not in UNIX_PROTOS:
        raise _Bad("'unix_type' needs a unix proto")
    text = value.strip().lower() if isinstance(value, str) else ""
    if text not in UNIX_TYPES:
        raise _Bad(f"unix_type {value!r}: expected SOCK_STREAM or SOCK_DGRAM")
    return text


def _listen(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _Bad(f"listen must be a positive int, not {value!r}")
    return value
