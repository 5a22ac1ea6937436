"""Issue 15, fuzzing: property-based tests (hypothesis) of every pure parser.

Properties: a parser never raises anything but its documented error (ConfigError, or the
parser's own: ValueError from option converters, ProxyHeaderError); it round-trips where a
formatter exists (PortSpec's text, PROXY headers written by a small reference writer); it
agrees with a simple reference where one is cheap (the ipaddress module for CIDR blocks, a
set of words for Perl truth, an ordered slice for SSL_version).

The seed is fixed and the example count bounded (the "ci" profile of tests/conftest.py, the
default); ``pytest --hypothesis-profile=long tests/unit/test_properties.py`` runs many more
examples with a random seed (see README, Testing).
"""

from __future__ import annotations

import ipaddress
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from gnetserver import access, config, ports, proxyproto, truth
from gnetserver.errors import ConfigError
from gnetserver.options import OPTIONS, table

# Bounded: the ci profile's tests take a second or so each; a long profile gets more time.
pytestmark = pytest.mark.timeout(60 if settings.default.max_examples <= 100 else 1200)

# -- text strategies ---------------------------------------------------------------------------

#: Text from the characters port specs, conf lines and rules are made of, plus anything.
SPEC_ALPHABET = st.sampled_from(list("0123456789abcdefABCDEFxX:./|[]*, \t-_%#=@!$\\\n"))
spec_text = st.one_of(st.text(SPEC_ALPHABET, max_size=40), st.text(max_size=40))


# -- Perl truth words -----------------------------------------------------------------------------


@given(st.one_of(st.text(max_size=12), st.integers(), st.booleans(),
                 st.sampled_from(sorted(truth.TRUE_WORDS | truth.FALSE_WORDS)).flatmap(
                     lambda w: st.sampled_from([w, w.upper(), f" {w.title()} "]))))
def test_perl_truth_agrees_with_the_word_lists(value: Any) -> None:
    if isinstance(value, (bool, int)):
        assert truth.perl_truth(value) is bool(value)
        return
    word = value.strip().lower()
    if word in truth.TRUE_WORDS | truth.FALSE_WORDS:
        assert truth.perl_truth(value) is (word in truth.TRUE_WORDS)
    else:
        with pytest.raises(ValueError):
            truth.perl_truth(value)


# -- port grammar ---------------------------------------------------------------------------------


@given(spec_text)
@example("[::1]:0/ssl/IPv6")
@example("localhost:8080|tcp|IPv4")
def test_port_specs_parse_or_raise_config_error(text: str) -> None:
    try:
        specs = ports.parse_ports(text)
    except ConfigError:
        return
    for spec in specs:
        assert spec.proto in ports.PROTOS
        assert spec.ipv in ("4", "6", "*")


hosts = st.one_of(st.just("*"), st.just("localhost"), st.ip_addresses().map(str),
                  st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5}){0,2}", fullmatch=True))
inet_specs = st.builds(ports.PortSpec, port=st.integers(0, 65535), host=hosts,
                       proto=st.sampled_from(["tcp", "udp", "ssl", "ssleay"]),
                       ipv=st.sampled_from(["4", "6", "*"]))
unix_specs = st.builds(ports.PortSpec,
                       port=st.from_regex(r"/[a-zA-Z0-9_.-]{1,20}(/[a-zA-Z0-9_.-]{1,10}){0,2}",
                                          fullmatch=True),
                       proto=st.sampled_from(["unix", "unixdgram"]))


def comparable(spec: ports.PortSpec) -> tuple[Any, ...]:
    return (spec.port, spec.host if not spec.is_unix else "*", spec.proto,
            spec.ipv if not spec.is_unix else "*")


@given(st.one_of(inet_specs, unix_specs))
def test_port_spec_text_round_trips(spec: ports.PortSpec) -> None:
    """``str(spec)`` is documented as a spec the grammar reads back: the records parsed from
    it print and parse again to the same records (an IP literal's version is inferred:
    ``[::]:0/tcp`` is read with ipv 6, so a record with ipv ``*`` comes back so once)."""
    assume(not (":" in spec.host and spec.ipv == "4"))  # an IPv6 host pinned to IPv4
    assume(not ("." in spec.host and spec.host[0].isdigit() and spec.ipv == "6"))
    try:
        first = ports.parse_ports(str(spec))
        again = ports.parse_ports([str(s) for s in first])
    except ConfigError as exc:
        pytest.fail(f"{str(spec)!r} does not read back: {exc}")
    assert [comparable(s) for s in again] == [comparable(s) for s in first], str(spec)
    literal = spec.host != "*" and (":" in spec.host or spec.host[0].isdigit())
    if not literal:
        assert [comparable(s) for s in first] == [comparable(spec)], str(spec)


# -- the conf file reader -------------------------------------------------------------------------

KNOWN = table(OPTIONS)
option_names = st.sampled_from(sorted(name for name, option in KNOWN.items() if option.cli))
conf_lines = st.one_of(
    st.tuples(option_names, st.sampled_from([" ", "=", ": ", "\t", " = "]),
              st.text(st.characters(blacklist_characters="\n\r#\\", blacklist_categories=("Cs",)),
                      max_size=20)).map(lambda t: "".join(t)),
    st.text(max_size=30),
    st.just("# a comment"),
    st.just(""),
)


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(conf_lines, max_size=8), raw=st.binary(max_size=40))
def test_conf_file_reader_raises_only_config_error(tmp_path: Path, lines: list[str],
                                                   raw: bytes) -> None:
    path = tmp_path / "server.conf"
    for data in ("\n".join(lines).encode(), raw):
        path.write_bytes(data)
        try:
            source = config.from_conf_file(path, KNOWN)
        except ConfigError as exc:
            assert "line" in str(exc) or "conf_file" in str(exc)
            continue
        for name, values in source.items():
            assert name in KNOWN
            for value in values:
                try:
                    config.convert(KNOWN[name], [value], "conf")
                except ConfigError:
                    pass


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(
    st.sampled_from(["log_level", "max_servers", "timeout_idle", "background", "port",
                     "SSL_version", "proxy_protocol"]),
    st.text(st.characters(blacklist_characters="\n\r#\\", blacklist_categories=("Cs", "Zl",
                                                                                 "Zp")),
            min_size=1, max_size=20).map(str.strip).filter(lambda v: v and v[0] not in "=:"),
    max_size=5))
def test_conf_file_values_round_trip(tmp_path: Path, values: dict[str, str]) -> None:
    """Written ``key value``, every value is read back as written (trimmed). A value that
    starts with ``=`` or ``:`` is read as ``key = value`` (the separators of the other two
    forms): left out."""
    assume(all("\x0b" not in v and "\x0c" not in v and "\x1c" not in v and "\x1d" not in v
               and "\x1e" not in v and "\x85" not in v for v in values.values()))
    path = tmp_path / "server.conf"
    path.write_text("".join(f"{k} {v}\n" for k, v in values.items()), encoding="utf-8")
    source = config.from_conf_file(path, KNOWN)
    assert {k: [str(v) for v in vs] for k, vs in source.items()} == \
        {k: [v] for k, v in values.items()}


# -- access rules ---------------------------------------------------------------------------------


@given(spec_text)
@example("10.0.0.0/8, ::1/128")
@example("10.0.0.1-10.0.0.9")
def test_cidr_rules_parse_or_raise_value_error(text: str) -> None:
    try:
        access.cidr_rule(text)
    except ValueError:
        return
    assert access.parse_cidr(text)


networks = st.one_of(st.ip_addresses(v=4).flatmap(
    lambda a: st.integers(0, 32).map(lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False))),
    st.ip_addresses(v=6).flatmap(lambda a: st.integers(0, 128).map(
        lambda n: ipaddress.ip_network(f"{a}/{n}", strict=False))))


@given(networks, st.ip_addresses())
def test_cidr_decision_agrees_with_ipaddress(network: Any, address: Any) -> None:
    rules = access.rules_from_options(cidr_allow=[str(network)])
    text = str(address)
    assume(not (address.version == 6 and address.ipv4_mapped is not None))
    reference = address.version == network.version and address in network
    if network.version == 6 and network.subnet_of(ipaddress.IPv6Network("::ffff:0:0/96")):
        return  # mapped blocks are matched as IPv4: checked in test_access.py
    assert rules.allowed(text) is reference


@given(st.text(max_size=20))
@example("10\\..*|.*\\.lan")
@example("(?P<x>a)")
def test_allow_deny_rules_compile_or_raise_value_error(pattern: str) -> None:
    try:
        access.regex_rule(pattern)
    except ValueError:
        return
    rules = access.rules_from_options(allow=[pattern])
    for peer in ("127.0.0.1", "::1", "10.1.2.3"):
        assert isinstance(rules.allowed(peer, "host.example.org"), bool)


@given(st.from_regex(r"(\d{1,3}\.){3}\d{1,3}", fullmatch=True), st.ip_addresses(v=4))
def test_an_escaped_address_rule_matches_exactly_that_address(rule_ip: str, peer: Any) -> None:
    rules = access.rules_from_options(allow=[re.escape(rule_ip)])
    assert rules.allowed(str(peer)) is (str(peer) == rule_ip)


# -- SSL_version ----------------------------------------------------------------------------------

VERSION_TOKENS = ["SSLv23", "SSLv2/3", "TLS", "TLSv1", "TLSv1_1", "TLSv11", "TLSv1_2",
                  "TLSv12", "TLSv1_3", "TLSv13", "SSLv2", "SSLv3"]
ORDER = ["tlsv1", "tlsv1_1", "tlsv1_2", "tlsv1_3"]
ALIASES = {"tlsv11": "tlsv1_1", "tlsv12": "tlsv1_2", "tlsv13": "tlsv1_3"}
version_specs = st.lists(st.tuples(st.booleans(), st.sampled_from(VERSION_TOKENS)),
                         min_size=1, max_size=5).map(
    lambda parts: ":".join(("!" if negated else "") + token for negated, token in parts))


def reference_versions(spec: str) -> tuple[str, str] | None:
    """IO::Socket::SSL's reading, simply: one positive selection (all, or one version), minus
    the negated ones; None when it is refused."""
    chosen: set[str] | None = None
    excluded: set[str] = set()
    for token in (t.strip().lower() for t in spec.split(":")):
        negated, token = token.startswith("!"), token.lstrip("!")
        token = ALIASES.get(token, token)
        if token not in (*ORDER, "sslv23", "sslv2/3", "tls", "sslv2", "sslv3"):
            return None  # an unknown token (or none: "", "!")
        versions = set(ORDER) if token in ("sslv23", "sslv2/3", "tls") else \
            set() if token in ("sslv2", "sslv3") else {token}
        if negated:
            excluded |= versions
        elif not versions or (chosen is not None and chosen != versions):
            return None
        else:
            chosen = versions
    left = [v for v in ORDER if v in (chosen if chosen is not None else set(ORDER)) - excluded]
    if not left or ORDER[ORDER.index(left[0]):ORDER.index(left[0]) + len(left)] != left:
        return None
    return left[0], left[-1]


@given(st.one_of(version_specs, spec_text))
def test_ssl_version_agrees_with_a_reference(spec: str) -> None:
    from OpenSSL import SSL

    from gnetserver.tls.negotiation import parse_ssl_version

    numbers = dict(zip(ORDER, (SSL.TLS1_VERSION, SSL.TLS1_1_VERSION, SSL.TLS1_2_VERSION,
                               SSL.TLS1_3_VERSION), strict=True))
    try:
        got = parse_ssl_version(spec, "test")
    except ConfigError:
        got = None
    expected = reference_versions(spec) if re.fullmatch(r"[\w/:! ]*", spec) else None
    if expected is None:  # refused by the reference (or not made of its characters)
        assert got is None, f"{spec!r} accepted as {got}"
        return
    assert got == (numbers[expected[0]], numbers[expected[1]])


# -- PROXY protocol headers -----------------------------------------------------------------------


@given(st.binary(max_size=120), st.sampled_from(["v1", "v2", "any"]))
@example(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "any")
@example(proxyproto.V2_SIGNATURE + b"\x21\x11\x00\x0c" + bytes(12), "any")
def test_proxy_parser_raises_only_proxy_header_error(data: bytes, mode: str) -> None:
    try:
        total = proxyproto.measure(data, mode)
    except proxyproto.ProxyHeaderError:
        total = None
    try:
        header = proxyproto.parse(data, mode)
    except proxyproto.ProxyHeaderError:
        return
    assert total == len(data) == header.length


def write_v1(family: str, source: tuple[str, int], dest: tuple[str, int]) -> bytes:
    return f"PROXY {family} {source[0]} {dest[0]} {source[1]} {dest[1]}\r\n".encode()


def write_v2(family: str, source: tuple[str, int], dest: tuple[str, int],
             tlvs: list[tuple[int, bytes]]) -> bytes:
    if family == "TCP4":
        body = (ipaddress.IPv4Address(source[0]).packed + ipaddress.IPv4Address(dest[0]).packed
                + struct.pack("!HH", source[1], dest[1]))
        fam = 0x11
    else:
        body = (ipaddress.IPv6Address(source[0]).packed + ipaddress.IPv6Address(dest[0]).packed
                + struct.pack("!HH", source[1], dest[1]))
        fam = 0x21
    body += b"".join(struct.pack("!BH", kind, len(value)) + value for kind, value in tlvs)
    return proxyproto.V2_SIGNATURE + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


@given(st.sampled_from(["TCP4", "TCP6"]).flatmap(lambda fam: st.tuples(
    st.just(fam), st.ip_addresses(v=4 if fam == "TCP4" else 6).map(str),
    st.integers(0, 65535), st.ip_addresses(v=4 if fam == "TCP4" else 6).map(str),
    st.integers(0, 65535))), st.integers(1, 2),
    st.lists(st.tuples(st.sampled_from([0x01, 0x02, 0x05, 0xE0, 0xEE]), st.binary(max_size=30)),
             max_size=3))
def test_proxy_headers_round_trip(addresses: tuple[str, str, int, str, int], version: int,
                                  tlvs: list[tuple[int, bytes]]) -> None:
    family, src, sport, dst, dport = addresses
    if version == 1:
        data = write_v1(family, (src, sport), (dst, dport))
        tlvs = []
    else:
        data = write_v2(family, (src, sport), (dst, dport), tlvs)
    try:
        header = proxyproto.parse(data)
    except proxyproto.ProxyHeaderError as exc:
        # TLVs are checked by kind (ALPN and authority must be text, ...): a refusal is fine
        # for a random value, never for none.
        assert tlvs, f"{data!r}: {exc}"
        return
    assert (header.version, header.command, header.family) == (version, "PROXY", family)
    assert header.source == (src, sport) and header.dest == (dst, dport)
    assert header.length == len(data)
    assert list(header.tlvs) == tlvs


# -- HTTP request reading and its limits ----------------------------------------------------------

MAX_HEADER = 512
MAX_BODY = 256


def read_all(chunks: list[bytes]) -> tuple[list[tuple[str, str, bytes]], str | None]:
    """Every request a RequestReader reads off ``chunks`` (method, target, body), and how
    it stopped: None at the end of stream, else the error's class and status."""
    from gnetserver.http.parser import HTTPError, RequestReader

    feed = list(chunks)

    def recv(size: int) -> bytes:
        if not feed:
            return b""
        head, rest = feed[0][:size], feed[0][size:]
        if rest:
            feed[0] = rest
        else:
            feed.pop(0)
        return head

    reader = RequestReader(recv, lambda timeout: None, MAX_HEADER, MAX_BODY, 100.0, 100.0)
    got: list[tuple[str, str, bytes]] = []
    try:
        first = True
        while (request := reader.next_request(first)) is not None:
            first = False
            body = b""
            while chunk := reader.read_body(64):
                body += chunk
            got.append((request.method, request.target, body))
            if not request.keep_alive:
                break
    except HTTPError as exc:
        return got, f"HTTPError {exc.status}"
    except ConnectionError:
        return got, "ConnectionError"
    return got, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


@given(st.binary(max_size=300), st.lists(st.integers(0, 400), max_size=6))
@example(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", [])
@example(b"POST / HTTP/1.1\r\nContent-Length: 999\r\n\r\n" + b"x" * 300, [])
def test_http_reader_raises_only_http_errors_and_keeps_its_limits(data: bytes,
                                                                  cuts: list[int]) -> None:
    got, end = read_all(split(data, cuts))
    assert end is None or end.startswith("HTTPError") or end == "ConnectionError"
    for _method, _target, body in got:
        assert len(body) <= MAX_BODY


http_requests = st.lists(st.tuples(
    st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
    st.from_regex(r"/[a-z0-9/._~-]{0,30}", fullmatch=True),
    st.binary(max_size=80), st.booleans()), min_size=1, max_size=4)


@given(http_requests, st.lists(st.integers(0, 2000), max_size=8))
def test_pipelined_requests_read_the_same_however_they_are_split(
        requests: list[tuple[str, str, bytes, bool]], cuts: list[int]) -> None:
    """A reference agreement: the requests written out, pipelined, and read back in any
    chunking, are the requests written (bodies framed by Content-Length or chunked)."""
    wire = b""
    for method, target, body, chunked in requests:
        head = f"{method} {target} HTTP/1.1\r\nHost: example\r\n"
        if chunked:
            framed = (f"{len(body):x}\r\n".encode() + body + b"\r\n" if body else b"") \
                + b"0\r\n\r\n"
            wire += (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + framed
        else:
            wire += (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    expected = [(method, target, body) for method, target, body, _ in requests]
    assert read_all([wire]) == (expected, None)
    assert read_all(split(wire, cuts)) == (expected, None)


header_lines = st.one_of(st.sampled_from([
    "Host: a", "Content-Length: 5", "Content-Length: -1", "Content-Length: 99999999999999999999",
    "Transfer-Encoding: chunked", "Transfer-Encoding: gzip, chunked", "Expect: 100-continue",
    "Expect: bogus", "Connection: close", "Content-Length: 3, 3", "X: \x80\xff", " folded",
    "Upgrade: h2c", "Connection: upgrade", "X: " + "y" * 600]), st.text(max_size=20))


@given(st.sampled_from(["GET", "POST", "CONNECT", "OPTIONS", "PRI", "FOO", "get"]),
       st.sampled_from(["/", "*", "http://a/b", "a:1", "/" + "x" * 600]),
       st.sampled_from(["HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1x"]),
       st.lists(header_lines, max_size=5), st.binary(max_size=100),
       st.lists(st.integers(0, 1000), max_size=5), st.integers(1, 3))
def test_http_reader_on_near_miss_requests(method: str, target: str, version: str,
                                           headers: list[str], body: bytes, cuts: list[int],
                                           count: int) -> None:
    """Requests close to valid ones (smuggling-prone framing, odd versions, oversized
    targets and headers, pipelined ``count`` times, split anywhere): an HTTPError with a
    status or the end of the stream, never another exception, and the limits hold."""
    one = (f"{method} {target} {version}\r\n" + "".join(h + "\r\n" for h in headers)
           + "\r\n").encode("utf-8", "surrogateescape") + body
    got, end = read_all(split(one * count, cuts))
    assert end is None or end.startswith("HTTPError") or end == "ConnectionError", end
    assert all(len(request_body) <= MAX_BODY for _, _, request_body in got)
    head = one.split(b"\r\n\r\n", 1)[0]
    if len(head) + 4 > MAX_HEADER:  # a head over max_header_size is never served
        assert not got and end is not None and end.startswith("HTTPError"), (got, end)
