"""Port spec grammar, as a table in the manner of Net::Server's t/Port_Configuration.t.

Each row is one form of spec/netserver.md 3.2-3.4: the arguments of ``parse_ports`` and the
records it must return, or the text its ConfigError must contain.
"""

from __future__ import annotations

from typing import Any

import pytest

from gnetserver.errors import ConfigError
from gnetserver.ports import PortSpec, parse_ports, split_duplicates

S = PortSpec
LOCAL = "localhost"
SSL_CERT = (("SSL_cert_file", "cert.pem"),)


def row(port: Any, *expected: PortSpec, **defaults: Any) -> Any:
    """One table row: ``parse_ports(port, **defaults)`` must return ``expected``."""
    label = f"{port!r} {defaults}" if defaults else repr(port)
    return pytest.param(port, defaults, list(expected), id=label)


# -- the forms of section 3.2 -----------------------------------------------------------------

STRING_FORMS = [
    row("8443", S(8443)),
    row(8443, S(8443)),
    row("80/tcp", S(80)),
    row("200/udp", S(200, proto="udp")),
    row("8443/ssl", S(8443, proto="ssl")),
    row("8443/ssleay", S(8443, proto="ssleay")),
    row("80/TCP", S(80)),
    row("localhost:20202", S(20202, LOCAL)),
    row("localhost|20202|tcp", S(20202, LOCAL)),
    row("localhost,20202,tcp", S(20202, LOCAL)),
    row("localhost 20202 tcp", S(20202, LOCAL)),
    row("[localhost]:20202/tcp", S(20202, LOCAL)),
    row("localhost:20202/udp", S(20202, LOCAL, "udp")),
    row("localhost:20202/tcp/IPv4", S(20202, LOCAL, ipv="4")),
    row("localhost:20202/ipv4", S(20202, LOCAL, ipv="4")),
    row("localhost:20201/ipv4/tcp", S(20201, LOCAL, ipv="4")),
    row("localhost|20201|ipv4|tcp", S(20201, LOCAL, ipv="4")),
    row("localhost,20202,tcp,IPv4", S(20202, LOCAL, ipv="4")),
    row("localhost 20201 ipv4 tcp", S(20201, LOCAL, ipv="4")),
    row("localhost, 20202, tcp, IPv4", S(20202, LOCAL, ipv="4")),
    row("[::1]:443/ssl", S(443, "::1", "ssl", "6")),
    row("::1|443|ssl", S(443, "::1", "ssl", "6")),
    row("fe80::1 443 ssl", S(443, "fe80::1", "ssl", "6")),
    row("[*]:20201:IPv6", S(20201, "*", ipv="6")),
    row("[localhost]:IPv6:20201", S(20201, LOCAL, ipv="6")),
    row("[]:20201", S(20201)),
    row("*:20201", S(20201)),
    row("20201/IPv*", S(20201)),
    row("20203/IPv4/IPv6", S(20203, ipv="6"), S(20203, ipv="4")),
    row("localhost, 20201, IPv6, IPv4", S(20201, LOCAL, ipv="6"), S(20201, LOCAL, ipv="4")),
    row("20203/IPv46", S(20203, ipv="6"), S(20203, ipv="4")),
    row("localhost:http", S(80, LOCAL, orig_port="http")),
    row("https/ssl", S(443, proto="ssl", orig_port="https")),
    row("0", S(0, orig_port="0")),
    row("localhost:0/ssl", S(0, LOCAL, "ssl", orig_port="0")),
    row("/tmp/x.sock|unix", S("/tmp/x.sock", proto="unix")),
    row("foo/bar/unix", S("foo/bar", proto="unix")),
    row("foo/bar/unix", S("foo/bar", proto="unix"), ipv="*"),
    row("/tmp/y|unixdgram", S("/tmp/y", proto="unixdgram")),
    row("/p|sock_dgram|unix", S("/p", proto="unix", options=(("unix_type", "sock_dgram"),))),
    row("/p|SOCK_DGRAM|unix", S("/p", proto="unix", options=(("unix_type", "sock_dgram"),))),
    row("/tmp/x.sock", S("/tmp/x.sock", proto="unix"), proto="unix"),
    row("/tmp/x.sock|unix", S("/tmp/x.sock", proto="unix"), host="localhost", ipv="4"),
]


# -- host/proto/ipv options: tokens, alignment, precedence (3.1, 3.4) --------------------------

OPTION_FORMS = [
    row(20201, S(20201, "bar.com", "udp"), host="bar.com", proto="UDP"),
    row(20201, S(20201, LOCAL, ipv="6"), host="localhost/IPv6"),
    row(20201, S(20201, LOCAL, "udp", "6"), host="localhost", proto="udp IPv6"),
    row(20201, S(20201, "::1", ipv="6"), host="::1", ipv="*"),
    row(20201, S(20201, "::1", ipv="6"), host="[::1]", ipv="4"),
    row(20201, S(20201, ipv="4"), ipv=4),
    row(20201, S(20201, ipv="6"), ipv=6),
    row(20201, S(20201), ipv="*"),
    row(20201, S(20201), ipv=None),
    row(20201, S(20201, ipv="6"), S(20201, ipv="4"), ipv="46"),
    row(20201, S(20201, ipv="6"), S(20201, ipv="4"), ipv="64"),
    row(20201, S(20201), ipv="4*"),
    row("localhost, 20201", S(20201, LOCAL, ipv="6"), S(20201, LOCAL, ipv="4"), ipv="IPv4, IPv6"),
    row("20201/IPv4", S(20201, LOCAL, ipv="4"), host="localhost/IPv6"),
    row(20201, S(20201, LOCAL, ipv="4"), host="localhost/IPv4", proto="tcp/IPv6", ipv=6),
    row(20201, S(20201, ipv="4"), proto="tcp/IPv4", ipv=6),
    row([20201, "foo.com:20202/tcp"], S(20201, "bar.com", "udp"), S(20202, "foo.com"),
        host="bar.com", proto="UDP"),
    row(["bar.com:20201/udp", "foo.com:20202/tcp"],
        S(20201, "bar.com", "udp"), S(20202, "foo.com")),
    row([1, 2, 3], S(1, "a"), S(2, "b"), S(3, "b"), host=["a", "b"]),
    row([1, 2, 3], S(1), S(2, proto="ssl"), S(3, proto="ssl"), proto=["tcp", "ssl"]),
    row([1, 2, 3], S(1, ipv="6"), S(2, ipv="4"), S(3, ipv="4"), ipv=[6, 4]),
    row((1, 2), S(1, "a", "udp", "4"), S(2, "a", "udp", "4"),
        host=("a",), proto=("udp",), ipv=(4,)),
    row([1], S(1), host=[], proto=[], ipv=[]),
    row([]),
]


# -- the dict form of 3.3 --------------------------------------------------------------------

DICT_FORMS = [
    row({"port": 20201}, S(20201)),
    row([{"port": 20201}], S(20201)),
    row({"port": "20201"}, S(20201)),
    row({"port": "http"}, S(80, orig_port="http")),
    row({"port": 0}, S(0, orig_port="0")),
    row([{"port": 20201, "host": "foo.com", "proto": "udp"}], S(20201, "foo.com", "udp")),
    row([{"port": 20201}], S(20201, "foo.com", "udp"), host="foo.com", proto="udp"),
    row([{"port": 20202, "listen": 6}], S(20202, listen=6)),
    row(
        {"port": 443, "host": "localhost", "proto": "ssl", "ipv": 6, "listen": 6,
         "SSL_cert_file": "cert.pem"},
        S(443, LOCAL, "ssl", "6", 6, SSL_CERT),
    ),
    row({"port": 20201, "ipv": 6}, S(20201, ipv="6")),
    row({"port": "20201", "host": "localhost", "ipv": [6, 4]},
        S(20201, LOCAL, ipv="6"), S(20201, LOCAL, ipv="4")),
    row({"port": "20201", "host": "localhost", "ipv": "IPv6, IPv4"},
        S(20201, LOCAL, ipv="6"), S(20201, LOCAL, ipv="4")),
    row({"port": 20201, "ipv": 4}, S(20201, ipv="4"), ipv=6, host="*/IPv6"),
    row({"port": 20201, "host": "localhost/IPv6"}, S(20201, LOCAL, ipv="6")),
    row({"port": 20203, "proto": "ssleay", "listen": 6, "SSL_key_file": "k", "SSL_cert_file": "c"},
        S(20203, proto="ssleay", listen=6,
          options=(("SSL_cert_file", "c"), ("SSL_key_file", "k")))),
    row({"port": "/foo/bar", "proto": "unix", "unix_type": "sock_stream", "listen": 7},
        S("/foo/bar", proto="unix", listen=7, options=(("unix_type", "sock_stream"),))),
    row({"port": "/foo/bar", "proto": "unixdgram"}, S("/foo/bar", proto="unixdgram")),
    # Net::Server's spelling of unix_type, normalised once here (resolve and the server rely
    # on it): any case, surrounding spaces.
    row({"port": "/foo/bar", "proto": "unix", "unix_type": "SOCK_DGRAM"},
        S("/foo/bar", proto="unix", options=(("unix_type", "sock_dgram"),))),
    row({"port": "/foo/bar", "proto": "unix", "unix_type": " Sock_Stream "},
        S("/foo/bar", proto="unix", options=(("unix_type", "sock_stream"),))),
    row([{"port": 443, "proto": "ssl", "SSL_cert_file": "cert.pem"}, "80"],
        S(443, proto="ssl", options=SSL_CERT), S(80)),
]


FORMS = [
    pytest.param(*form.values, id=f"{kind} {form.id}")
    for kind, table in (("string", STRING_FORMS), ("option", OPTION_FORMS), ("dict", DICT_FORMS))
    for form in table
]


@pytest.mark.parametrize(("port", "defaults", "expected"), FORMS)
def test_forms(port: Any, defaults: dict[str, Any], expected: list[PortSpec]) -> None:
    """Every form gives the records of its table row: the string forms of spec 3.2; host/
    proto/ipv options, which apply by position (last one reused) and may carry IPv tokens;
    a dict, which sets one port's fields, other keys going to ``options``, sorted by name."""
    assert parse_ports(port, **defaults) == expected


def test_opts_is_a_dict_of_the_extra_keys() -> None:
    (spec,) = parse_ports({"port": 443, "proto": "ssl", "SSL_cert_file": "c", "SSL_key_file": "k"})
    assert spec.opts == {"SSL_cert_file": "c", "SSL_key_file": "k"}


# -- errors -----------------------------------------------------------------------------------

ERRORS = [
    ("99999/tcp", {}, "port 99999 out of range 0-65535"),
    ("-1", {}, "port -1 out of range 0-65535"),
    ({"port": 70000}, {}, "port 70000 out of range 0-65535"),
    ("foo:bar:baz", {}, "too many fields"),
    ("", {}, "empty spec"),
    ("  , ", {}, "empty spec"),
    (None, {}, "no port given"),
    ("IPv6", {}, "no port given"),
    (True, {}, "expected an int, a str or a dict"),
    (80.0, {}, "expected an int, a str or a dict"),
    ({"host": "localhost"}, {}, "missing 'port' key"),
    ({"port": None}, {}, "missing 'port' key"),
    ({"port": 80, 5: "x"}, {}, "keys must be strings"),
    ({"port": 80, "listen": 0}, {}, "listen must be a positive int"),
    ({"port": 80, "listen": "many"}, {}, "listen must be a positive int"),
    ("80/bogus", {}, "unknown proto 'bogus'"),
    ("80/MyTcp", {}, "unknown proto 'MyTcp'"),
    (80, {"proto": "sctp"}, "unknown proto 'sctp'"),
    ({"port": 80, "proto": "http"}, {}, "unknown proto 'http'"),
    ("host:99/My::Proto", {}, "custom proto classes such as 'My::Proto' are not supported"),
    ("localhost,20202,Net::Server::Proto::TCP", {}, "custom proto classes"),
    (80, {"proto": "Net::Server::Proto::TCP"}, "custom proto classes"),
    ("80/IPv5", {}, "Invalid ipv parameter '5'"),
    (80, {"ipv": "x"}, "Invalid ipv parameter 'x'"),
    (80, {"ipv": 0}, "Invalid ipv parameter '0'"),
    ({"port": 80, "ipv": "IPvX"}, {}, "Invalid ipv parameter"),
    ({"port": 80, "ipv": 4.0}, {}, "Invalid ipv parameter"),
    ("80/IPv4/IPv6/IPv4", {}, "more than two IPv tokens"),
    ("[localhost]:IPv4:80/IPv6/IPv4", {}, "more than two IPv tokens"),
    ("8080|unix", {}, "proto unix needs a filesystem path, not '8080'"),
    ({"port": 8080, "proto": "unix"}, {}, "proto unix needs a filesystem path, not 8080"),
    ("/tmp/x.sock", {}, "a filesystem path needs a unix proto"),
    ("/tmp/x.sock|tcp", {}, "a filesystem path needs a unix proto"),
    ("80|sock_dgram", {}, "'sock_dgram' needs a unix proto"),
    ({"port": 80, "unix_type": "SOCK_STREAM"}, {}, "'unix_type' needs a unix proto"),
    ({"port": "/p", "proto": "unix", "unix_type": "SOCK_RAW"}, {},
     "unix_type 'SOCK_RAW': expected SOCK_STREAM or SOCK_DGRAM"),
    ({"port": "/p", "proto": "unix", "unix_type": 1}, {},
     "unix_type 1: expected SOCK_STREAM or SOCK_DGRAM"),
    ("localhost:nosuchservice", {}, "unknown service name 'nosuchservice'"),
    ("localhost:ht!p", {}, "bad port 'ht!p'"),
    ("tcp", {}, "'tcp' is a proto, not a port"),
    ("80/tcp/udp", {}, "'tcp' is a proto, not a port"),
    ("[80]", {}, "the port cannot be bracketed"),
    ("[::1:80", {}, "unbalanced '['"),
    ("[::1]x:80", {}, "unexpected 'x' after ']'"),
    ("[a b]:80", {}, "bad host 'a b'"),
    ("a;b:80", {}, "bad host 'a;b'"),
    (80, {"host": "a b"}, "bad host 'a b': more than one field"),
    (80, {"host": 5}, "the host must be a str"),
    (80, {"proto": "tcp udp"}, "bad proto 'tcp udp': more than one field"),
]


@pytest.mark.parametrize(
    ("port", "defaults", "reason"), ERRORS, ids=[f"{p!r} {d or ''}" for p, d, _ in ERRORS]
)
def test_errors(port: Any, defaults: dict[str, Any], reason: str) -> None:
    """Every bad input is a ConfigError naming the spec (repr) and the reason."""
    with pytest.raises(ConfigError) as caught:
        parse_ports(port, **defaults)
    assert str(caught.value).startswith(f"bad port spec {port!r}: ")
    assert reason in str(caught.value)


def test_error_names_the_item_of_a_list() -> None:
    with pytest.raises(ConfigError, match=r"bad port spec '99999': port 99999 out of range"):
        parse_ports(["80", "99999"])


# -- duplicates, __str__ ----------------------------------------------------------------------


def test_duplicates_are_dropped_and_port_0_is_exempt() -> None:
    """Records repeating host+port+proto+ipv are dropped, as Net::Server's notice says."""
    ports = ["80", "*:80/tcp", "80/ssl", "localhost:http", "localhost:80", "0", "0", "80/IPv4"]
    expected = [S(80), S(80, proto="ssl"), S(80, LOCAL, orig_port="http"), S(0, orig_port="0"),
                S(0, orig_port="0"), S(80, ipv="4")]
    assert parse_ports(ports) == expected


def test_split_duplicates_reports_the_dropped_records() -> None:
    specs = parse_ports(["80", "*:80/tcp", "localhost:80", "localhost|80"], keep_duplicates=True)
    assert len(specs) == 4
    kept, dropped = split_duplicates(specs)
    assert kept == [S(80), S(80, LOCAL)]
    assert [str(spec) for spec in dropped] == ["*:80/tcp", "localhost:80/tcp"]


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        (S(8443, "127.0.0.1", "ssl"), "127.0.0.1:8443/ssl"),
        (S(443, "::1", "ssl", "6"), "[::1]:443/ssl/IPv6"),
        (S(80, ipv="4"), "*:80/tcp/IPv4"),
        (S(0, LOCAL, orig_port="0"), "localhost:0/tcp"),
        (S("/tmp/x.sock", proto="unix"), "/tmp/x.sock|unix"),
        (S("/tmp/y", proto="unixdgram"), "/tmp/y|unixdgram"),
    ],
)
def test_str_is_readable_and_parses_back(spec: PortSpec, text: str) -> None:
    assert str(spec) == text
    assert parse_ports(text) == [spec]


@pytest.mark.parametrize(("port", "datagram"), [
    ("80", False),
    ("80/udp", True),
    ("/p|unix", False),
    ("/p|sock_stream|unix", False),
    ("/p|unixdgram", True),
    ("/p|SOCK_DGRAM|unix", True),
    ({"port": "/p", "proto": "unix", "unix_type": "SOCK_DGRAM"}, True),
])
def test_is_datagram(port: Any, datagram: bool) -> None:
    """The records gnetserver refuses to serve (it serves stream sockets only)."""
    [spec] = parse_ports(port)
    assert spec.is_datagram is datagram
