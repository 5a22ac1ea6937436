"""The PROXY protocol (HAProxy's, versions 1 and 2): the header a load balancer sends first.

Rules of this module (behaviour: spec/fleet.md section 1, HAProxy's ``proxy-protocol.txt``):

* Pure: it parses bytes and plans settings; it does no I/O and imports neither gevent, OpenSSL
  nor cryptography. The server reads the header off the raw socket with
  :mod:`gnetserver.proxy_reader`, which asks :func:`measure` how long the header is, so that
  no byte past it is consumed (on a TLS port the ClientHello follows at once).
* Strict: anything that is not exactly a header the specification allows raises
  :class:`ProxyHeaderError` with a short reason (the server logs it at level 3 and closes the
  connection): a v1 line without CRLF within 107 bytes, a bad family, an address or a port
  written in a non-canonical form, a v2 version other than 2, an unknown command, family or
  transport, an address block shorter than its family needs, a truncated TLV or SSL sub-TLV, a
  UNIQUE_ID over 128 bytes, a CRC32C TLV that does not match, a v2 header over
  :data:`V2_MAX_LENGTH` bytes, or a version the port does not take.
* A LOCAL command (v2) and the UNKNOWN family (v1) are accepted: the balancer speaks for itself
  (a health check). The header is consumed (TLVs included) and the connection keeps its real
  addresses (:attr:`ProxyHeader.proxied` is False). So is a v2 PROXY header of family UNSPEC or
  UNIX: there is no inet address to take.
* Which ports read a header, and from which peers, is planned once per port by
  :func:`port_settings` (``proxy_protocol``, ``proxy_protocol_from``,
  ``timeout_proxy_header``); the server never guesses whether a header is present.
"""

from __future__ import annotations

import ipaddress
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import access
from .errors import ConfigError

__all__ = [
    "MODES", "V1_MAX_LENGTH", "V2_MAX_LENGTH", "V2_SIGNATURE", "ProxyHeader", "ProxyHeaderError",
    "ProxySettings", "SSLInfo", "crc32c", "measure", "parse", "port_settings", "proxy_mode",
]

#: The 12 bytes every v2 header starts with (``\r\n\r\n\0\r\nQUIT\n``).
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
#: The longest v1 line, CRLF included (UNKNOWN with two full IPv6 addresses and ports).
V1_MAX_LENGTH = 107
#: The longest v2 header taken (16 + L bytes). The format allows 16 + 65535; HAProxy's with
#: every TLV (ALPN, SNI, unique id of at most 128 bytes, SSL with CN, cipher, algorithms) is a
#: few hundred bytes, so anything past this is refused as oversized rather than buffered.
V2_MAX_LENGTH = 4096
#: The values of ``proxy_protocol``: which versions a port takes (None: no header is read).
MODES = ("v1", "v2", "any")

# v2 TLV types (proxy-protocol.txt 2.2).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30

_V1_PREFIX = b"PROXY "
_V1_PORT = r"(0|[1-9][0-9]{0,4})"
_V1_IPV4 = r"((?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\.){3}" \
           r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9]))"
_V1_TCP4 = re.compile(rf"PROXY TCP4 {_V1_IPV4} {_V1_IPV4} {_V1_PORT} {_V1_PORT}")
_V1_TCP6 = re.compile(rf"PROXY TCP6 ([0-9A-Fa-f:.]+) ([0-9A-Fa-f:.]+) {_V1_PORT} {_V1_PORT}")

#: v2 address block sizes by the family/transport byte; other values fall back to UNSPEC.
_V2_ADDRESS_SIZES = {0x11: 12, 0x12: 12, 0x21: 36, 0x22: 36, 0x31: 216, 0x32: 216}
_V2_FAMILIES = {0x0: "UNSPEC", 0x1: "TCP4", 0x2: "TCP6", 0x3: "UNIX"}


class ProxyHeaderError(ValueError):
    """A PROXY header that must not be accepted; the message is the reason, for the log."""


@dataclass(frozen=True)
class SSLInfo:
    """The v2 SSL TLV (0x20): what the balancer knows of the client's TLS, when it terminated
    it (``send-proxy-v2-ssl``, ``send-proxy-v2-ssl-cn``).

    Attributes:
        client: the flags byte: 0x01 the client connected over TLS, 0x02 it presented a
            certificate on this connection, 0x04 on this TLS session.
        verify: 0 when the client's certificate was presented and verified, else non-zero.
        version, cn, cipher, sig_alg, key_alg: the sub-TLVs (0x21..0x25), None when absent:
            e.g. ``"TLSv1.3"``, the client certificate's subject CN, ``"TLS_AES_256_GCM_SHA384"``,
            ``"RSA-SHA256"``, ``"RSA2048"``.
    """

    client: int
    verify: int
    version: str | None = None
    cn: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None

    @property
    def tls(self) -> bool:
        """True when the client used TLS to the balancer."""
        return bool(self.client & 0x01)

    @property
    def cert_verified(self) -> bool:
        """True when the client presented a certificate (on this connection or session) and
        the balancer verified it."""
        return bool(self.client & 0x06) and self.verify == 0


@dataclass(frozen=True)
class ProxyHeader:
    """One PROXY header as received.

    Attributes:
        version: 1 or 2.
        command: ``"PROXY"`` (a relayed connection) or ``"LOCAL"`` (v2: the balancer's own,
            e.g. a health check).
        family: ``"TCP4"``, ``"TCP6"``, ``"UNKNOWN"`` (v1), ``"UNSPEC"`` or ``"UNIX"`` (v2). A
            v2 PROXY header of a UDP connection is refused (gnetserver serves streams only).
        source, dest: ``(address text, port)`` of the original client and of the address it
            connected to on the balancer; None when the header carries no inet address
            (LOCAL, UNKNOWN, UNSPEC, UNIX).
        unix_source, unix_dest: the socket paths of a v2 UNIX header (else None).
        tlvs: the v2 TLVs as ``(type, value)`` pairs in order (empty for v1).
        ssl: the decoded SSL TLV (None when absent).
        length: the header's size in bytes, on the wire.
    """

    version: int
    command: str
    family: str
    source: tuple[str, int] | None = None
    dest: tuple[str, int] | None = None
    unix_source: str | None = None
    unix_dest: str | None = None
    tlvs: tuple[tuple[int, bytes], ...] = ()
    ssl: SSLInfo | None = None
    length: int = 0

    @property
    def proxied(self) -> bool:
        """True when the header names the original client (a PROXY command with TCP4/TCP6
        addresses): the server then takes ``source``/``dest`` as the connection's addresses."""
        return self.command == "PROXY" and self.source is not None

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, None when absent."""
        return next((value for t, value in self.tlvs if t == kind), None)

    @property
    def alpn(self) -> str | None:
        """The ALPN protocol the client negotiated with the balancer (TLV 0x01), e.g. ``h2``."""
        value = self.tlv(PP2_TYPE_ALPN)
        return None if value is None else value.decode("ascii", "replace")

    @property
    def authority(self) -> str | None:
        """The host name the client asked the balancer for (TLV 0x02; with TLS, its SNI)."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8")

    @property
    def unique_id(self) -> bytes | None:
        """The balancer's id of this connection (TLV 0x05, opaque, at most 128 bytes)."""
        return self.tlv(PP2_TYPE_UNIQUE_ID)

    @property
    def netns(self) -> str | None:
        """The network namespace the balancer accepted the connection in (TLV 0x30)."""
        value = self.tlv(PP2_TYPE_NETNS)
        return None if value is None else value.decode("ascii", "replace")


# -- CRC32C (Castagnoli), for the v2 CRC32C TLV ---------------------------------------------------


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """The CRC32C (Castagnoli) of ``data``; ``crc32c(b"123456789") == 0xE3069283``. A table
    per byte: fast enough for headers of a few hundred bytes (zlib's crc32 is another
    polynomial)."""
    crc = 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- measuring and parsing -------------------------------------------------------------------------


def measure(data: bytes, mode: str = "any") -> int | None:
    """The length of the header ``data`` starts with, once it can be known; None while more
    bytes are needed. ``data`` may run past the header (bytes peeked from a socket).

    v2: known from the first 16 bytes; v1: the position of the CRLF, plus 2. Raises
    :class:`ProxyHeaderError` as soon as ``data`` cannot start a header this ``mode`` (``v1``,
    ``v2``, ``any``) takes, so a reader stops at the first wrong byte."""
    if not data:
        return None
    if data[:1] == b"P":
        if mode == "v2":
            raise ProxyHeaderError("a v1 header on a port that takes v2 only")
        if not _V1_PREFIX.startswith(data[:6]):
            raise ProxyHeaderError("not a PROXY header")
        end = data.find(b"\r\n", 0, V1_MAX_LENGTH)
        lone = re.search(rb"\r[^\n]|(?<!\r)\n", data[:V1_MAX_LENGTH])
        if lone is not None and (end < 0 or lone.start() < end):
            raise ProxyHeaderError("v1 header with a lone CR or LF (only CRLF ends it)")
        if end >= 0:
            return end + 2
        if len(data) >= V1_MAX_LENGTH:
            raise ProxyHeaderError(f"v1 header without CRLF in its first {V1_MAX_LENGTH} "
                                   "bytes")
        return None
    if data[:1] == b"\r":
        if mode == "v1":
            raise ProxyHeaderError("a v2 header on a port that takes v1 only")
        if not V2_SIGNATURE.startswith(data[:12]):
            raise ProxyHeaderError("not a PROXY header (bad v2 signature)")
        if len(data) < 16:
            return None
        total = 16 + int.from_bytes(data[14:16], "big")
        if data[12] >> 4 != 2:
            raise ProxyHeaderError(f"v2 header with version {data[12] >> 4} (expected 2)")
        if total > V2_MAX_LENGTH:
            raise ProxyHeaderError(f"v2 header of {total} bytes (oversized: at most "
                                   f"{V2_MAX_LENGTH})")
        return total
    raise ProxyHeaderError("not a PROXY header")


def parse(data: bytes, mode: str = "any") -> ProxyHeader:
    """The header that ``data`` holds exactly (no byte more or less: :func:`measure` says how
    many); :class:`ProxyHeaderError` for anything the specification does not allow, or a
    version ``mode`` does not take."""
    total = measure(data, mode)
    if total is None or total > len(data):
        raise ProxyHeaderError(f"truncated header ({len(data)} bytes)")
    if total != len(data):
        raise ProxyHeaderError(f"header of {total} bytes given {len(data)}")
    return _parse_v1(data) if data[:1] == b"P" else _parse_v2(data)


def _parse_v1(data: bytes) -> ProxyHeader:
    """A v1 line, CRLF included."""
    try:
        line = data[:-2].decode("ascii")
    except UnicodeDecodeError:
        raise ProxyHeaderError("v1 header is not US-ASCII") from None
    if line.startswith("PROXY UNKNOWN") and line[13:14] in ("", " "):
        # The sender may stop after UNKNOWN; the receiver ignores the rest of the line.
        return ProxyHeader(1, "PROXY", "UNKNOWN", length=len(data))
    match = _V1_TCP4.fullmatch(line)
    family = "TCP4"
    if match is None:
        match, family = _V1_TCP6.fullmatch(line), "TCP6"
    if match is None:
        word = line.split(" ")[1] if line.count(" ") else ""
        if word not in ("TCP4", "TCP6"):
            raise ProxyHeaderError(f"v1 header with unknown family {word[:8]!r}")
        raise ProxyHeaderError(f"malformed v1 {word} header")
    src, dst, sport, dport = match.groups()
    if family == "TCP6":
        src, dst = _v1_ipv6(src), _v1_ipv6(dst)
    ports = int(sport), int(dport)
    if max(ports) > 65535:
        raise ProxyHeaderError("v1 header with a port over 65535")
    return ProxyHeader(1, "PROXY", family, (src, ports[0]), (dst, ports[1]), length=len(data))


def _v1_ipv6(text: str) -> str:
    """An IPv6 address of a v1 TCP6 header, compressed; IPv4 forms are refused there."""
    try:
        return str(ipaddress.IPv6Address(text))
    except ValueError:
        raise ProxyHeaderError(f"v1 TCP6 header with a bad IPv6 address {text[:40]!r}") \
            from None


def _parse_v2(data: bytes) -> ProxyHeader:
    """A whole v2 header (16 + L bytes; signature, version and length checked by measure)."""
    command = data[12] & 0x0F
    if command not in (0, 1):
        raise ProxyHeaderError(f"v2 header with unknown command {command:#x}")
    family_byte = data[13]
    family, transport = family_byte >> 4, family_byte & 0x0F
    if family not in _V2_FAMILIES:
        raise ProxyHeaderError(f"v2 header with unknown address family {family:#x}")
    if transport > 2:
        raise ProxyHeaderError(f"v2 header with unknown transport {transport:#x}")
    body = data[16:]
    size = _V2_ADDRESS_SIZES.get(family_byte, 0)
    if command == 0 and len(body) < size:  # LOCAL ignores the family: skip the whole body
        return ProxyHeader(2, "LOCAL", "UNSPEC", length=len(data))
    if len(body) < size:
        raise ProxyHeaderError(f"v2 address block of {len(body)} bytes (family "
                               f"{family_byte:#04x} needs {size})")
    if transport == 2 and size and command == 1:
        raise ProxyHeaderError("v2 header of a datagram (UDP) connection: gnetserver serves "
                               "streams only")
    name = _V2_FAMILIES[family] if size else "UNSPEC"
    source = dest = None
    unix_source = unix_dest = None
    if size == 12:
        src, dst, sport, dport = struct.unpack("!4s4sHH", body[:12])
        source = (str(ipaddress.IPv4Address(src)), sport)
        dest = (str(ipaddress.IPv4Address(dst)), dport)
    elif size == 36:
        src, dst, sport, dport = struct.unpack("!16s16sHH", body[:36])
        source = (str(ipaddress.IPv6Address(src)), sport)
        dest = (str(ipaddress.IPv6Address(dst)), dport)
    elif size == 216:
        unix_source = _unix_path(body[:108])
        unix_dest = _unix_path(body[108:216])
    tlvs = _tlvs(data, 16 + size)
    ssl = None
    for kind, value in tlvs:
        if kind == PP2_TYPE_UNIQUE_ID and len(value) > 128:
            raise ProxyHeaderError(f"v2 UNIQUE_ID TLV of {len(value)} bytes (at most 128)")
        if kind == PP2_TYPE_AUTHORITY:
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                raise ProxyHeaderError("v2 AUTHORITY TLV is not UTF-8") from None
        if kind == PP2_TYPE_SSL and ssl is None:
            ssl = _ssl_info(value)
    if command == 0:  # LOCAL: the balancer's own connection; the addresses are ignored
        return ProxyHeader(2, "LOCAL", name, tlvs=tlvs, ssl=ssl, length=len(data))
    return ProxyHeader(2, "PROXY", name, source, dest, unix_source, unix_dest, tlvs, ssl,
                       len(data))


def _unix_path(raw: bytes) -> str:
    """A NUL-padded 108-byte socket path."""
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")


def _tlvs(data: bytes, start: int) -> tuple[tuple[int, bytes], ...]:
    """The TLVs of a v2 header from ``start``; a CRC32C TLV is checked against the header."""
    found = []
    offset = start
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyHeaderError(f"truncated v2 TLV at byte {offset}")
        kind = data[offset]
        size = int.from_bytes(data[offset + 1:offset + 3], "big")
        end = offset + 3 + size
        if end > len(data):
            raise ProxyHeaderError(f"truncated v2 TLV {kind:#04x} ({size} bytes announced, "
                                   f"{len(data) - offset - 3} left)")
        value = bytes(data[offset + 3:end])
        if kind == PP2_TYPE_CRC32C:
            if size != 4:
                raise ProxyHeaderError(f"v2 CRC32C TLV of {size} bytes (expected 4)")
            zeroed = data[:offset + 3] + b"\x00\x00\x00\x00" + data[end:]
            if crc32c(zeroed) != int.from_bytes(value, "big"):
                raise ProxyHeaderError("v2 CRC32C checksum mismatch")
        if kind != PP2_TYPE_NOOP:
            found.append((kind, value))
        offset = end
    return tuple(found)


def _ssl_info(value: bytes) -> SSLInfo:
    """The SSL TLV: client flags, verify, then sub-TLVs."""
    if len(value) < 5:
        raise ProxyHeaderError(f"v2 SSL TLV of {len(value)} bytes (at least 5)")
    client, verify = value[0], int.from_bytes(value[1:5], "big")
    texts: dict[int, str] = {}
    offset = 5
    while offset < len(value):
        if len(value) - offset < 3:
            raise ProxyHeaderError("truncated v2 SSL sub-TLV")
        kind = value[offset]
        end = offset + 3 + int.from_bytes(value[offset + 1:offset + 3], "big")
        if end > len(value):
            raise ProxyHeaderError(f"truncated v2 SSL sub-TLV {kind:#04x}")
        texts.setdefault(kind, value[offset + 3:end].decode("utf-8", "replace"))
        offset = end
    return SSLInfo(client, verify, texts.get(PP2_SUBTYPE_SSL_VERSION),
                   texts.get(PP2_SUBTYPE_SSL_CN), texts.get(PP2_SUBTYPE_SSL_CIPHER),
                   texts.get(PP2_SUBTYPE_SSL_SIG_ALG), texts.get(PP2_SUBTYPE_SSL_KEY_ALG))


# -- settings of a port ----------------------------------------------------------------------------


def proxy_mode(value: Any) -> str | None:
    """Converter of ``proxy_protocol``: ``v1``, ``v2`` or ``any``; off (None) for an empty
    value, 0, ``off``, ``no``, ``false``, ``none``."""
    if value is None or value is False or value == 0:
        return None
    if isinstance(value, (list, tuple, dict)):
        raise TypeError("expects one value, not a list")
    text = str(value).strip().lower()
    if text in ("", "0", "off", "no", "false", "none"):
        return None
    if text not in MODES:
        raise ValueError("expected v1, v2, any or off")
    return text


@dataclass(frozen=True)
class ProxySettings:
    """How one listening port reads PROXY headers (made by :func:`port_settings`).

    Attributes:
        mode: ``v1``, ``v2`` or ``any``: the versions taken.
        trusted: the networks of ``proxy_protocol_from``: peers allowed to send a header.
        timeout: seconds to receive the whole header (``timeout_proxy_header``).
        local: what a LOCAL (v2) or UNKNOWN (v1) header gets (``proxy_protocol_local``):
            ``"serve"`` (a health check, served with the real addresses) or ``"refuse"``
            (closed: a port that must only see relayed clients).
    """

    mode: str
    trusted: tuple[access.Network, ...] = field(default=())
    timeout: float = 3.0
    local: str = "serve"

    def trusts(self, address: str) -> bool:
        """True when the peer ``address`` (the real one, of the socket) may send a header
        (an IPv4-mapped ``::ffff:a.b.c.d`` counts as ``a.b.c.d``)."""
        try:
            ip = ipaddress.ip_address(access.normalise_address(address).split("%", 1)[0])
        except ValueError:
            return False
        return any(ip.version == net.version and ip in net for net in self.trusted)


def port_settings(proto: str, port_options: Mapping[str, Any], conf: Mapping[str, Any],
                  where: str) -> ProxySettings | None:
    """The PROXY settings of one port: its dict's ``proxy_protocol``/``proxy_protocol_from``
    keys, else the server-wide options; None when the port reads no header.

    A server-wide ``proxy_protocol`` applies to tcp, ssl and ssleay ports; unix ports take a
    header only from their own dict key, and then a ConfigError says they cannot (a unix peer
    has no address to check against ``proxy_protocol_from``). ConfigError (naming ``where``,
    the port) when the option is on without ``proxy_protocol_from``, or for a bad value."""
    own = "proxy_protocol" in port_options
    try:
        mode = proxy_mode(port_options["proxy_protocol"]) if own \
            else conf.get("proxy_protocol")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"port {where}: proxy_protocol "
                          f"{port_options['proxy_protocol']!r}: {exc}") from None
    if mode is None:
        return None
    if proto in ("unix", "unixdgram"):
        if not own:
            return None
        raise ConfigError(f"port {where}: proxy_protocol on a unix port: a unix peer has no "
                          "address to check against proxy_protocol_from (inet ports only)")
    if proto == "udp":
        if not own:
            return None
        raise ConfigError(f"port {where}: proxy_protocol on a udp port: a datagram has no "
                          "connection to send a header first (tcp, ssl and ssleay ports only)")
    raw = port_options.get("proxy_protocol_from", conf.get("proxy_protocol_from") or [])
    blocks = [raw] if isinstance(raw, str) else list(raw)
    networks: list[access.Network] = []
    for block in blocks:
        try:
            networks.extend(access.parse_cidr(access.cidr_rule(block)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"port {where}: proxy_protocol_from {block!r}: {exc}") from None
    if not networks:
        raise ConfigError(f"port {where}: proxy_protocol {mode} needs proxy_protocol_from (the "
                          "CIDR blocks of the balancers allowed to send a header): without "
                          "it anyone could claim any client address")
    return ProxySettings(mode, tuple(networks), float(conf.get("timeout_proxy_header", 3.0)),
                         str(conf.get("proxy_protocol_local", "serve")))


def local_policy(value: Any) -> str:
    """``proxy_protocol_local``: ``serve`` or ``refuse``."""
    text = str(value).strip().lower()
    if text not in ("serve", "refuse"):
        raise ValueError("expected serve or refuse")
    return text
