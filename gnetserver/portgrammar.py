"""The port spec grammar: tokens, fields and values of Net::Server's port options.

:mod:`gnetserver.ports` builds :class:`~gnetserver.ports.PortSpec` records with these pieces.
Rules of this module (behaviour: spec/netserver.md, sections 3.1 to 3.4):

* It is pure: no sockets, no DNS, no environment. Its one lookup is :func:`socket.getservbyname`
  for service names (``localhost:http`` gives port 80).
* :func:`tokenize` splits a string spec on runs of ``: / | ,`` and whitespace, and keeps
  ``[bracketed]`` hosts, bare IPv6 literals and ``A::B`` class names whole, each token with its
  position and the separators before it.
* Fields are classified from the end: :func:`peel_tail` takes trailing proto, ``IPv*`` and
  ``sock_*`` tokens (any order, at most two ``IPv*``); :func:`inet_fields` reads what is left as
  ``[host] port``. For a UNIX proto everything before the trailing tokens is the path.
* Ports are 0-65535 or a service name (looked up for ``udp`` or ``tcp``); hosts are ``*`` or
  name/address characters; protos are one of :data:`PROTOS` in any case (stored lower case);
  Perl class names (``My::Proto``) are recognised only to be refused with a reason.
* Every bad value raises :class:`BadSpec` with the reason only; the caller adds the item.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field

#: Every proto name the grammar accepts; the server decides which ones it serves.
PROTOS = ("tcp", "udp", "ssl", "ssleay", "unix", "unixdgram")
#: Protos whose port is a filesystem path.
UNIX_PROTOS = frozenset({"unix", "unixdgram"})
#: Protos whose sockets are datagram sockets (parsed, never served: see ``is_datagram``).
DGRAM_PROTOS = frozenset({"udp", "unixdgram"})
#: Net::Server's UNIX socket types (``unix_type``, ``/path|SOCK_DGRAM|unix``), as the records
#: hold them: lower case, whatever the case given.
UNIX_TYPES = ("sock_stream", "sock_dgram")

_IPV_TOKEN = re.compile(r"ipv([*\d]+)", re.IGNORECASE)
_NUMBER = re.compile(r"-?[0-9]+")
_SERVICE = re.compile(r"[A-Za-z][A-Za-z0-9_.+-]*")
_CLASS_NAME = re.compile(r"[A-Za-z_]\w*(?:::\w+)+")  # Perl's My::Proto, refused with a reason
_HOST = re.compile(r"\*|[\w.%:-]+")


class BadSpec(Exception):
    """Why one port item is wrong; :func:`gnetserver.ports.parse_ports` adds the item and
    raises ConfigError."""


@dataclass(frozen=True)
class Token:
    """One field of a string spec, with where it ends and the separators before it."""

    text: str
    end: int  # index just past the token in the spec string
    sep: str  # the separator run before the token ("" for a leading token)
    bracketed: bool = False


@dataclass
class Tail:
    """The trailing proto / IPv* / sock_* tokens peeled off a string spec."""

    proto: str | None = None
    ipvs: list[str] = field(default_factory=list)
    unix_type: str | None = None


# -- the tokenizer -------------------------------------------------------------------------------


def _is_sep(char: str) -> bool:
    return char in ":/|," or char.isspace()


def tokenize(text: str) -> list[Token]:
    """Split a spec on runs of ``: / | ,`` and whitespace, keeping each token's position."""
    tokens: list[Token] = []
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
            tokens.append(Token(text[index + 1 : end - 1].strip(), end, sep, bracketed=True))
        else:
            end = _word_end(text, index)
            tokens.append(Token(text[index:end], end, sep))
        index = end
    return tokens


def _bracket_end(text: str, start: int) -> int:
    close = text.find("]", start)
    if close < 0:
        raise BadSpec("unbalanced '['")
    if close + 1 < len(text) and not _is_sep(text[close + 1]):
        raise BadSpec(f"unexpected {text[close + 1]!r} after ']'")
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


def peel_tail(tokens: list[Token]) -> tuple[list[Token], Tail]:
    """Take trailing proto, IPv* and sock_* tokens (any order) off; the first token stays."""
    body, tail = list(tokens), Tail()
    while len(body) > 1 and not body[-1].bracketed:
        word = body[-1].text.lower()
        match = _IPV_TOKEN.fullmatch(word)
        if match:
            if len(tail.ipvs) == 2:
                raise BadSpec("more than two IPv tokens")
            tail.ipvs.insert(0, match.group(1))
        elif word in UNIX_TYPES and tail.unix_type is None:
            tail.unix_type = word
        elif (word in PROTOS or _CLASS_NAME.fullmatch(word)) and tail.proto is None:
            tail.proto = body[-1].text
        else:
            break
        body.pop()
    return body, tail


def pull_ipv(body: list[Token]) -> tuple[list[str], list[Token]]:
    """Remove IPv* tokens from anywhere in an inet spec (``[localhost]:IPv6:20201``)."""
    matches = [None if t.bracketed else _IPV_TOKEN.fullmatch(t.text) for t in body]
    ipvs = [m.group(1) for m in matches if m]
    return ipvs, [t for t, m in zip(body, matches, strict=True) if not m]


def inet_fields(
    text: str, body: list[Token], proto: str, default_host: str
) -> tuple[str, int, str | None]:
    """Classify what is left of an inet spec as ``[host] port``; return host, port, orig_port."""
    if text.lstrip().startswith(("/", ".")):
        raise BadSpec("a filesystem path needs a unix proto (as in '/tmp/x.sock|unix')")
    if not body:
        raise BadSpec("no port given")
    if len(body) > 2:
        raise BadSpec("too many fields: expected [host:]port[/proto][/IPv4|/IPv6]")
    port_token = body[-1]
    if port_token.bracketed:
        raise BadSpec(f"the port cannot be bracketed: [{port_token.text}]")
    if port_token.text.lower() in PROTOS:
        raise BadSpec(f"{port_token.text!r} is a proto, not a port")
    if len(body) == 2 and "/" in port_token.sep and not _NUMBER.fullmatch(port_token.text):
        raise BadSpec(f"unknown proto {port_token.text!r}")  # Net::Server's legacy "80/MyProto"
    host = _check_host(body[0].text or "*") if len(body) == 2 else default_host
    port, orig = port_value(port_token.text, proto)
    return host, int(port), orig


def port_value(raw: object, proto: str) -> tuple[int | str, str | None]:
    """The port (a number, or a path for UNIX protos) and the orig_port to remember."""
    if proto in UNIX_PROTOS:
        return unix_path(raw, proto), None
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise BadSpec(f"the port must be an int or a str, not {type(raw).__name__}")
    text = str(raw).strip()
    if _NUMBER.fullmatch(text):
        number = int(text)
        if not 0 <= number <= 65535:
            raise BadSpec(f"port {number} out of range 0-65535")
        return number, ("0" if number == 0 else None)
    if not _SERVICE.fullmatch(text):
        raise BadSpec(f"bad port {text!r}")
    try:
        return socket.getservbyname(text, "udp" if proto == "udp" else "tcp"), text
    except OSError:
        raise BadSpec(f"unknown service name {text!r}") from None


def unix_path(raw: object, proto: str) -> str:
    """The path of a UNIX proto port: stripped, not empty, not a number, no NUL."""
    path = raw.strip() if isinstance(raw, str) else ""
    if not path or _NUMBER.fullmatch(path) or "\0" in path:
        raise BadSpec(f"proto {proto} needs a filesystem path, not {raw!r}")
    return path


def split_host(value: object) -> tuple[str, str]:
    """A host option and its IPv tokens, the host checked: ``"::1 IPv6"`` -> ``("::1", "6")``."""
    host, ipv = _split_option(value, "host", "*")
    return _check_host(host), ipv


def split_proto(value: object) -> tuple[str, str]:
    """A proto option and its IPv tokens, the proto checked and lower-cased."""
    proto, ipv = _split_option(value, "proto", "tcp")
    return check_proto(proto), ipv


def _split_option(value: object, name: str, default: str) -> tuple[str, str]:
    """A host or proto option and its IPv tokens: ``"localhost/IPv6"`` -> ``("localhost", "6")``."""
    if value is None:
        return default, ""
    if not isinstance(value, str):
        raise BadSpec(f"the {name} must be a str, not {type(value).__name__}")
    ipvs, rest = pull_ipv(tokenize(value))
    if len(rest) > 1:
        raise BadSpec(f"bad {name} {value!r}: more than one field")
    return (rest[0].text if rest and rest[0].text else default), "".join(ipvs)


def _check_host(host: str) -> str:
    if not _HOST.fullmatch(host):
        raise BadSpec(f"bad host {host!r}")
    return host


def check_proto(proto: str) -> str:
    """The proto lower-cased; BadSpec for Perl class names and unknown protos."""
    if _CLASS_NAME.fullmatch(proto):
        raise BadSpec(f"custom proto classes such as {proto!r} are not supported")
    if proto.lower() not in PROTOS:
        raise BadSpec(f"unknown proto {proto!r} (expected one of {', '.join(PROTOS)})")
    return proto.lower()


def ipv_text(value: object) -> str:
    """An ipv value as text: ``6`` -> ``"6"``, ``[6, 4]`` -> ``"64"``, ``None`` -> ``""``."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return "".join(ipv_text(v) for v in value)
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise BadSpec(f"Invalid ipv parameter {value!r} - must contain 4, 6, or *")
    return str(value).strip()


def check_unix_type(value: object, proto: str) -> str:
    """A dict's ``unix_type`` as the string form gives it: lower case, checked."""
    if proto not in UNIX_PROTOS:
        raise BadSpec("'unix_type' needs a unix proto")
    text = value.strip().lower() if isinstance(value, str) else ""
    if text not in UNIX_TYPES:
        raise BadSpec(f"unix_type {value!r}: expected SOCK_STREAM or SOCK_DGRAM")
    return text


def listen_value(value: object) -> int | None:
    """A dict's ``listen`` backlog: a positive int (digits in a str accepted) or None."""
    if value is None:
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise BadSpec(f"listen must be a positive int, not {value!r}")
    return value
