"""The pure PROXY protocol parser (gnetserver.proxyproto): table tests over the examples and
rules of HAProxy's proxy-protocol.txt (spec/fleet.md section 1), and the per-port settings."""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

import pytest

from gnetserver.errors import ConfigError
from gnetserver.proxyproto import (
    V1_MAX_LENGTH,
    V2_MAX_LENGTH,
    V2_SIGNATURE,
    ProxyHeaderError,
    crc32c,
    measure,
    parse,
    port_settings,
    proxy_mode,
)


def tlv(kind: int, value: bytes) -> bytes:
    return bytes([kind]) + struct.pack("!H", len(value)) + value


def v2(command: int = 1, family: int = 0x11, addresses: bytes | None = None,
       tlvs: bytes = b"", *, version: int = 2, crc: bool = False) -> bytes:
    """A v2 header; ``crc`` appends a CRC32C TLV with the right checksum."""
    if addresses is None:
        addresses = {
            0x11: struct.pack("!4s4sHH", bytes([192, 0, 2, 1]), bytes([198, 51, 100, 7]),
                              56324, 443),
            0x21: struct.pack("!16s16sHH", ipaddress.IPv6Address("2001:db8::1").packed,
                              ipaddress.IPv6Address("2001:db8::2").packed, 40000, 8443),
            0x31: b"/run/client.sock".ljust(108, b"\0") + b"/run/server.sock".ljust(108, b"\0"),
        }.get(family, b"")
    body = addresses + tlvs
    if crc:
        body += tlv(0x03, b"\0\0\0\0")
    head = V2_SIGNATURE + bytes([version << 4 | command, family]) + struct.pack("!H", len(body))
    header = head + body
    if crc:
        header = header[:-4] + struct.pack("!I", crc32c(header))
    return header


def ssl_tlv(client: int = 0x07, verify: int = 0, **subs: str) -> bytes:
    codes = {"version": 0x21, "cn": 0x22, "cipher": 0x23, "sig_alg": 0x24, "key_alg": 0x25}
    value = bytes([client]) + struct.pack("!I", verify)
    value += b"".join(tlv(codes[name], text.encode()) for name, text in subs.items())
    return tlv(0x20, value)


# -- CRC32C ---------------------------------------------------------------------------------------


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283
    assert crc32c(b"") == 0


# -- version 1 ------------------------------------------------------------------------------------

V1_GOOD = [
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", "TCP4",
     ("192.168.0.1", 56324), ("192.168.0.11", 443)),
    (b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n", "TCP6",
     ("2001:db8::1", 1), ("2001:db8::2", 65535)),
    (b"PROXY TCP6 2001:0DB8:0:0:0:0:0:1 ::ffff:10.0.0.1 0 80\r\n", "TCP6",
     ("2001:db8::1", 0), ("::ffff:a00:1", 80)),
    (b"PROXY TCP4 0.0.0.0 255.255.255.255 0 0\r\n", "TCP4", ("0.0.0.0", 0),
     ("255.255.255.255", 0)),
]


@pytest.mark.parametrize(("data", "family", "source", "dest"), V1_GOOD)
def test_v1_headers(data: bytes, family: str, source: Any, dest: Any) -> None:
    header = parse(data)
    assert (header.version, header.command, header.family) == (1, "PROXY", family)
    assert (header.source, header.dest, header.length) == (source, dest, len(data))
    assert header.proxied and header.tlvs == () and header.ssl is None
    assert measure(data + b"GET / HTTP/1.1\r\n") == len(data)  # bytes after it are not its


@pytest.mark.parametrize("data", [
    b"PROXY UNKNOWN\r\n",
    b"PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n",
    b"PROXY UNKNOWN " + b"x" * (V1_MAX_LENGTH - 16) + b"\r\n",  # the longest line: 107 bytes
])
def test_v1_unknown_keeps_the_real_addresses(data: bytes) -> None:
    header = parse(data)
    assert (header.family, header.source, header.proxied) == ("UNKNOWN", None, False)
    assert header.length <= V1_MAX_LENGTH


WORST_CASE = (b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
              b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n")


def test_v1_worst_case_is_107_bytes() -> None:
    assert len(WORST_CASE) == V1_MAX_LENGTH
    assert parse(WORST_CASE).family == "UNKNOWN"


V1_BAD = [
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\n", "lone CR or LF"),
    (b"PROXY TCP4 192.168.0.1\r192.168.0.11 56324 443\r\n", "lone CR or LF"),
    (b"PROXY TCP4 192.168.0.1  192.168.0.11 56324 443\r\n", "malformed v1 TCP4"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 0443\r\n", "malformed v1 TCP4"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 +5 443\r\n", "malformed v1 TCP4"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 65536\r\n", "over 65535"),
    (b"PROXY TCP4 192.168.000.1 192.168.0.11 1 2\r\n", "malformed v1 TCP4"),
    (b"PROXY TCP4 256.1.1.1 192.168.0.11 1 2\r\n", "malformed v1 TCP4"),
    (b"PROXY TCP4 ::1 ::1 1 2\r\n", "malformed v1 TCP4"),
    (b"PROXY TCP6 192.168.0.1 192.168.0.11 1 2\r\n", "bad IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "malformed v1 TCP6"),
    (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 \r\n", "malformed v1 TCP4"),
    (b"PROXY UDP4 192.168.0.1 192.168.0.11 1 2\r\n", "unknown family"),
    (b"PROXY tcp4 192.168.0.1 192.168.0.11 1 2\r\n", "unknown family"),
    (b"PROXY UNKNOWNX\r\n", "unknown family"),
    (b"PROXY \xff\r\n", "US-ASCII"),
    (b"PROXY TCP4 " + b"1" * 100 + b"\r\n", "without CRLF in its first 107"),
    (b"PROXX TCP4 1.2.3.4 1.2.3.4 1 2\r\n", "not a PROXY header"),
    (b"GET / HTTP/1.1\r\n", "not a PROXY header"),
    (b"\x16\x03\x01\x02\x00", "not a PROXY header"),  # a ClientHello without a header
]


@pytest.mark.parametrize(("data", "reason"), V1_BAD)
def test_v1_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        total = measure(data)
        parse(data if total is None else data[:total])


def test_v1_measure_waits_for_the_crlf() -> None:
    line = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    for cut in range(len(line)):
        assert measure(line[:cut]) is None  # a prefix: more bytes needed
    assert measure(line[:-1]) is None  # the CR alone does not end it
    with pytest.raises(ProxyHeaderError, match="truncated"):
        parse(line[:-1])


# -- version 2 ------------------------------------------------------------------------------------


def test_v2_tcp4() -> None:
    data = v2()
    header = parse(data)
    assert (header.version, header.command, header.family) == (2, "PROXY", "TCP4")
    assert header.source == ("192.0.2.1", 56324) and header.dest == ("198.51.100.7", 443)
    assert header.length == 28 and header.proxied
    assert measure(data + b"\x16\x03\x01") == 28


def test_v2_tcp6() -> None:
    header = parse(v2(family=0x21))
    assert header.family == "TCP6"
    assert header.source == ("2001:db8::1", 40000) and header.dest == ("2001:db8::2", 8443)


def test_v2_unix_keeps_the_real_addresses() -> None:
    header = parse(v2(family=0x31))
    assert header.family == "UNIX" and not header.proxied
    assert (header.unix_source, header.unix_dest) == ("/run/client.sock", "/run/server.sock")


def test_v2_unspec_proxy_keeps_the_real_addresses() -> None:
    header = parse(v2(family=0x00))
    assert (header.command, header.family, header.proxied) == ("PROXY", "UNSPEC", False)


def test_v2_local_health_checks() -> None:
    # HAProxy 2.6's send-proxy-v2 check: LOCAL, family UNSPEC, no body.
    plain = parse(V2_SIGNATURE + b"\x20\x00\x00\x00")
    assert (plain.command, plain.family, plain.proxied, plain.length) == ("LOCAL", "UNSPEC",
                                                                         False, 16)
    # send-proxy-v2-ssl + crc32c check: LOCAL with L = 15 (CRC32C and SSL TLVs).
    with_tlvs = parse(v2(command=0, family=0x00, tlvs=ssl_tlv(client=0), crc=True))
    assert with_tlvs.command == "LOCAL" and with_tlvs.length == 31
    assert with_tlvs.ssl is not None and not with_tlvs.ssl.tls
    # LOCAL ignores the family: addresses are skipped, not taken.
    assert not parse(v2(command=0)).proxied
    assert parse(V2_SIGNATURE + b"\x20\x11\x00\x00").command == "LOCAL"


def test_v2_tlvs_as_haproxy_sends_them() -> None:
    tlvs = (tlv(0x01, b"http/1.1") + tlv(0x02, b"www.example.org") + tlv(0x04, b"\0\0")
            + tlv(0x05, b"7F000001:D5A8_7F000001:1F90_6543210A_0001")
            + ssl_tlv(version="TLSv1.3", cn="alice", key_alg="RSA2048", sig_alg="RSA-SHA256",
                      cipher="TLS_AES_256_GCM_SHA384")
            + tlv(0x30, b"blue") + tlv(0xE0, b"custom"))
    header = parse(v2(tlvs=tlvs, crc=True))
    assert header.alpn == "http/1.1" and header.authority == "www.example.org"
    assert header.unique_id == b"7F000001:D5A8_7F000001:1F90_6543210A_0001"
    assert header.netns == "blue" and header.tlv(0xE0) == b"custom"
    assert header.tlv(0x04) is None  # NOOP is padding
    ssl = header.ssl
    assert ssl is not None and ssl.tls and ssl.cert_verified
    assert (ssl.version, ssl.cn, ssl.cipher, ssl.sig_alg, ssl.key_alg) == (
        "TLSv1.3", "alice", "TLS_AES_256_GCM_SHA384", "RSA-SHA256", "RSA2048")
    assert [kind for kind, _ in header.tlvs] == [0x01, 0x02, 0x05, 0x20, 0x30, 0xE0, 0x03]


def test_v2_ssl_without_a_verified_certificate() -> None:
    ssl = parse(v2(tlvs=ssl_tlv(client=0x01, verify=1, version="TLSv1.2"))).ssl
    assert ssl is not None and ssl.tls and not ssl.cert_verified and ssl.cn is None


def with_length(header: bytes, length: int) -> bytes:
    return header[:14] + struct.pack("!H", length) + header[16:]


V2_BAD = [
    (v2(version=1), "version 1"),
    (v2(version=3), "version 3"),
    (v2(command=2), "unknown command"),
    (v2(command=0xF), "unknown command"),
    (v2(family=0x41, addresses=b""), "unknown address family"),
    (v2(family=0x13, addresses=b""), "unknown transport"),
    (v2(family=0x12, addresses=bytes(12)), "datagram"),
    (v2(family=0x11, addresses=b"\x7f\0\0\1"), "address block of 4 bytes"),
    (v2(family=0x21, addresses=bytes(12)), "needs 36"),
    (v2(tlvs=b"\x01\x00"), "truncated v2 TLV"),
    (v2(tlvs=b"\x01\x00\x05abc"), "truncated v2 TLV 0x01"),
    (v2(tlvs=tlv(0x05, b"x" * 129)), "UNIQUE_ID TLV of 129"),
    (v2(tlvs=tlv(0x02, b"\xff\xfe")), "AUTHORITY TLV is not UTF-8"),
    (v2(tlvs=tlv(0x20, b"\x01\0\0")), "SSL TLV of 3 bytes"),
    (v2(tlvs=tlv(0x20, b"\x01\0\0\0\0" + b"\x21\x00\x09TLS")), "truncated v2 SSL sub-TLV"),
    (v2(tlvs=tlv(0x03, b"\0\0")), "CRC32C TLV of 2 bytes"),
    (v2(crc=True)[:-1] + b"\0", "CRC32C checksum mismatch"),
    (V2_SIGNATURE[:6] + b"X" + V2_SIGNATURE[7:] + b"\x21\x11\x00\x0c" + bytes(12),
     "bad v2 signature"),
]


@pytest.mark.parametrize(("data", "reason"), V2_BAD)
def test_v2_refused(data: bytes, reason: str) -> None:
    with pytest.raises(ProxyHeaderError, match=reason):
        parse(data)


def test_v2_crc_covers_the_whole_header() -> None:
    good = v2(tlvs=tlv(0x01, b"h2"), crc=True)
    assert parse(good).alpn == "h2"
    flipped = good[:17] + bytes([good[17] ^ 1]) + good[18:]  # one address bit
    with pytest.raises(ProxyHeaderError, match="checksum"):
        parse(flipped)


def test_v2_lengths() -> None:
    data = v2()
    for cut in range(16):
        assert measure(data[:cut]) is None  # the length is not known yet
    with pytest.raises(ProxyHeaderError, match="truncated"):
        parse(data[:-1])
    with pytest.raises(ProxyHeaderError, match="header of 28 bytes given 29"):
        parse(data + b"x")
    assert measure(with_length(data, V2_MAX_LENGTH - 16)) == V2_MAX_LENGTH
    with pytest.raises(ProxyHeaderError, match="oversized"):
        measure(with_length(data, V2_MAX_LENGTH - 15))
    with pytest.raises(ProxyHeaderError, match="oversized"):
        measure(with_length(data, 0xFFFF))


# -- versions a port takes ------------------------------------------------------------------------


def test_modes() -> None:
    line, binary = V1_GOOD[0][0], v2()
    assert parse(line, "v1").version == 1 and parse(binary, "v2").version == 2
    assert parse(line, "any").version == 1 and parse(binary, "any").version == 2
    with pytest.raises(ProxyHeaderError, match="v1 header on a port that takes v2 only"):
        measure(b"P", "v2")
    with pytest.raises(ProxyHeaderError, match="v2 header on a port that takes v1 only"):
        measure(b"\r", "v1")


# -- settings -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "mode"), [
    (None, None), ("", None), ("off", None), (0, None), (False, None), ("no", None),
    ("v1", "v1"), ("V2", "v2"), (" any ", "any"),
])
def test_proxy_mode(value: Any, mode: str | None) -> None:
    assert proxy_mode(value) == mode


@pytest.mark.parametrize("value", ["v3", "yes", 1, ["v1"]])
def test_proxy_mode_refused(value: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        proxy_mode(value)


def conf(**values: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"proxy_protocol": None, "proxy_protocol_from": [],
                            "timeout_proxy_header": 3.0}
    base.update(values)
    return base


def test_port_settings() -> None:
    assert port_settings("tcp", {}, conf(), "p") is None
    on = conf(proxy_protocol="v2", proxy_protocol_from=["10.0.0.0/8, ::1"])
    settings = port_settings("ssl", {}, on, "p")
    assert settings is not None and settings.mode == "v2" and settings.timeout == 3.0
    assert settings.trusts("10.1.2.3") and settings.trusts("::ffff:10.1.2.3")
    assert settings.trusts("::1") and not settings.trusts("11.0.0.1")
    assert not settings.trusts("::2") and not settings.trusts("not an address")
    # The port's own keys win, off included.
    assert port_settings("tcp", {"proxy_protocol": "off"}, on, "p") is None
    own = port_settings("tcp", {"proxy_protocol": "v1", "proxy_protocol_from": "127.0.0.3"},
                        conf(), "p")
    assert own is not None and own.mode == "v1" and own.trusts("127.0.0.3")
    assert not own.trusts("127.0.0.1")
    # A server-wide option leaves unix ports alone.
    assert port_settings("unix", {}, on, "p") is None


@pytest.mark.parametrize(("proto", "port_options", "values", "reason"), [
    ("tcp", {}, {"proxy_protocol": "v1"}, "port p: proxy_protocol v1 needs "
                                          "proxy_protocol_from"),
    ("tcp", {"proxy_protocol": "any"}, {}, "needs proxy_protocol_from"),
    ("tcp", {"proxy_protocol": "v9"}, {}, "proxy_protocol 'v9': expected v1, v2, any or off"),
    ("tcp", {"proxy_protocol": "v1", "proxy_protocol_from": "10.0.0.300/8"}, {},
     "proxy_protocol_from '10.0.0.300/8'"),
    ("unix", {"proxy_protocol": "v2", "proxy_protocol_from": "::1"}, {}, "unix port"),
])
def test_port_settings_refused(proto: str, port_options: dict[str, Any],
                               values: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        port_settings(proto, port_options, conf(**values), "p")
