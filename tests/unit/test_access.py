"""allow/deny/cidr rules and lookup settings (gnetserver.access): pure, table-driven."""

from __future__ import annotations

import re
from typing import Any

import pytest

from gnetserver import access
from gnetserver.access import AccessRules, lookup_mode, rules_from_options
from gnetserver.errors import ConfigError
from gnetserver.options import as_bool
from gnetserver.server import GServer


def rules(**options: Any) -> AccessRules:
    return rules_from_options(**options)


# (rules, address, host, expected) -- spec/netserver.md 1.6 step 4
DECISIONS = [
    # no rules: everyone
    ({}, "203.0.113.9", None, True),
    ({}, "::1", "example.org", True),
    # any rule makes the default deny
    ({"allow": [r"127\.0\.0\.1"]}, "127.0.0.1", None, True),
    ({"allow": [r"127\.0\.0\.1"]}, "127.0.0.2", None, False),
    ({"deny": [r"10\..*"]}, "127.0.0.1", None, False),
    ({"cidr_deny": ["10.0.0.0/8"]}, "127.0.0.1", None, False),
    # regexes must match the whole address
    ({"allow": [r"127\.0\.0\.1"]}, "127.0.0.12", None, False),
    ({"allow": [r"127\.0\.0\.1"]}, "1127.0.0.1", None, False),
    ({"allow": [r"127\.0\.0\.1|10\.0\.0\.1"]}, "127.0.0.1x", None, False),
    ({"allow": [r"127\.0\.0\.\d+"]}, "127.0.0.200", None, True),
    # deny wins over allow, whatever the order or the kind of rule
    ({"allow": [r"127\..*"], "deny": [r"127\.0\.0\.1"]}, "127.0.0.1", None, False),
    ({"allow": [r"127\..*"], "deny": [r"127\.0\.0\.1"]}, "127.0.0.2", None, True),
    ({"cidr_allow": ["127.0.0.0/8"], "cidr_deny": ["127.0.0.1/32"]}, "127.0.0.1", None, False),
    ({"allow": [r".*"], "cidr_deny": ["127.0.0.0/8"]}, "127.0.0.1", None, False),
    ({"cidr_allow": ["0.0.0.0/0"], "deny": ["localhost"]}, "127.0.0.1", "localhost", False),
    # host names are matched when the lookup found one
    ({"allow": [r".*\.example\.org"]}, "192.0.2.1", "www.example.org", True),
    ({"allow": [r".*\.example\.org"]}, "192.0.2.1", None, False),
    ({"allow": [r".*\.example\.org"]}, "192.0.2.1", "example.org.evil.test", False),
    ({"deny": [r"bad\.test"], "allow": [".*"]}, "192.0.2.1", "bad.test", False),
    # cidr blocks, ranges, bare addresses, several per value
    ({"cidr_allow": ["192.0.2.0/24"]}, "192.0.2.77", None, True),
    ({"cidr_allow": ["192.0.2.0/24"]}, "192.0.3.1", None, False),
    ({"cidr_allow": ["192.0.2.10-192.0.2.20"]}, "192.0.2.15", None, True),
    ({"cidr_allow": ["192.0.2.10-192.0.2.20"]}, "192.0.2.21", None, False),
    ({"cidr_allow": ["192.0.2.5"]}, "192.0.2.5", None, True),
    ({"cidr_allow": ["10.0.0.0/8, 192.0.2.0/24"]}, "192.0.2.1", None, True),
    ({"cidr_allow": ["10.1.2.3/8"]}, "10.200.0.1", None, True),  # host bits ignored
    # IPv6
    ({"cidr_allow": ["::1/128"]}, "::1", None, True),
    ({"cidr_allow": ["2001:db8::/32"]}, "2001:db8::5", None, True),
    ({"cidr_allow": ["2001:db8::/32"]}, "2001:db9::5", None, False),
    ({"allow": [r"::1"]}, "::1", None, True),
    ({"deny": [r"::1"]}, "::1", None, False),
    ({"cidr_allow": ["fe80::/10"]}, "fe80::1%lo", None, True),
    # a block only matches its own IP version
    ({"cidr_allow": ["::/0"]}, "127.0.0.1", None, False),
    ({"cidr_allow": ["0.0.0.0/0"]}, "::1", None, False),
    # IPv4-mapped peers (dual-stack sockets) are matched as IPv4, by regexes and blocks
    ({"allow": [r"127\.0\.0\.1"]}, "::ffff:127.0.0.1", None, True),
    ({"deny": [r"127\.0\.0\.1"]}, "::ffff:127.0.0.1", None, False),
    ({"cidr_allow": ["127.0.0.0/8"]}, "::ffff:127.0.0.1", None, True),
    ({"cidr_deny": ["127.0.0.0/8"], "allow": [".*"]}, "::ffff:127.0.0.1", None, False),
    ({"cidr_allow": ["::ffff:127.0.0.0/104"]}, "127.0.0.1", None, True),
    ({"cidr_allow": ["::ffff:127.0.0.0/104"]}, "::ffff:127.0.0.1", None, True),
    # compiled patterns from code keep their flags
    ({"allow": [re.compile("LOCALHOST", re.I)]}, "127.0.0.1", "localhost", True),
]


@pytest.mark.parametrize(("options", "address", "host", "expected"), DECISIONS)
def test_decision(options: dict[str, Any], address: str, host: str | None,
                  expected: bool) -> None:
    """Each row: Net::Server's allow_deny result for these rules and this peer."""
    assert rules(**options).allowed(address, host) is expected


@pytest.mark.parametrize(("options", "address", "host", "expected"), DECISIONS)
def test_decide_on_a_normalised_address(options: dict[str, Any], address: str,
                                        host: str | None, expected: bool) -> None:
    """decide() is allowed() for a caller that normalised the address already."""
    normalised = access.normalise_address(address)
    assert rules(**options).decide(normalised, host) is expected


@pytest.mark.parametrize(("options", "reverse", "double", "has_rules", "mode"), [
    ({}, False, False, False, access.LookupMode()),
    ({"cidr_deny": ["10.0.0.0/8"]}, False, False, True, access.LookupMode()),
    ({"allow": [r"x"]}, "double debug", False, True,
     access.LookupMode(True, True, frozenset({"debug"}))),
    ({}, True, False, False, access.LookupMode(reverse=True)),
])
def test_access_plan(options: dict[str, Any], reverse: Any, double: Any, has_rules: bool,
                     mode: access.LookupMode) -> None:
    """The per-start plan: rules None when there is none (connections return at once)."""
    conf = {"allow": [], "deny": [], "cidr_allow": [], "cidr_deny": [], **options,
            "reverse_lookups": reverse, "double_reverse_lookups": double}
    plan = access.access_plan(conf)
    assert (plan.rules is not None) is has_rules and plan.mode == mode
    if has_rules:
        assert plan.rules == rules(**options)


TRUTH_WORDS = ["1", "yes", "true", "on", "YES", "On", "0", "no", "false", "off", "OFF", ""]


@pytest.mark.parametrize("word", TRUTH_WORDS)
def test_lookup_options_read_truth_words_as_every_option_does(word: str) -> None:
    """reverse_lookups and double_reverse_lookups read Perl truth words with options.as_bool."""
    assert access.reverse_lookups_setting(word) is as_bool(word)
    assert access.double_reverse_setting(word) is as_bool(word)


def test_truth_words_among_double_reverse_flags_are_skipped() -> None:
    assert access.double_reverse_setting("1,detail") == "detail"
    assert access.reverse_lookups_setting("double yes debug") == "double yes debug"
    assert lookup_mode("double yes debug", False).flags == frozenset({"debug"})


@pytest.mark.parametrize(("options", "address", "pending", "expected"), [
    ({}, "127.0.0.1", True, True),
    ({"allow": [r"10\..*"]}, "127.0.0.1", False, False),  # final: no host name to come
    ({"allow": [r"10\..*"]}, "127.0.0.1", True, True),  # an allow may match the host later
    ({"deny": [r"127\..*"]}, "127.0.0.1", True, False),  # deny wins whatever the host
    ({"cidr_deny": ["127.0.0.0/8"]}, "::ffff:127.0.0.1", True, False),
    ({"cidr_allow": ["127.0.0.0/8"]}, "127.0.0.1", False, True),
])
def test_address_verdict(options: dict[str, Any], address: str, pending: bool,
                         expected: bool) -> None:
    """The pre-handshake check denies only what no host name could rescue."""
    assert rules(**options).address_verdict(address, host_pending=pending) is expected


@pytest.mark.parametrize(("address", "expected"), [
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("::FFFF:10.1.2.3", "10.1.2.3"),
    ("::1", "::1"),
    ("127.0.0.1", "127.0.0.1"),
    ("::ffff:7f00:1", "127.0.0.1"),
    ("::fffe:7f00:1", "::fffe:7f00:1"),
    ("localhost", "localhost"),
])
def test_normalise_address(address: str, expected: str) -> None:
    assert access.normalise_address(address) == expected


@pytest.mark.parametrize(("reverse", "double", "expected"), [
    (False, False, access.LookupMode()),
    (True, False, access.LookupMode(reverse=True)),
    (False, True, access.LookupMode(reverse=True, double=True)),
    ("double", False, access.LookupMode(reverse=True, double=True)),
    ("double detail", False, access.LookupMode(True, True, frozenset({"detail"}))),
    ("double", "autofail", access.LookupMode(True, True, frozenset({"autofail"}))),
    ("double debug", "autofail", access.LookupMode(True, True, frozenset({"debug"}))),
    (False, "detail,debug", access.LookupMode(True, True, frozenset({"detail", "debug"}))),
])
def test_lookup_mode(reverse: Any, double: Any, expected: access.LookupMode) -> None:
    """Net::Server's post_configure: double implies reverse; reverse 'double...' implies double."""
    assert lookup_mode(reverse, double) == expected


@pytest.mark.parametrize(("value", "expected"), [
    ("1", True), ("on", True), ("off", False), ("0", False), ("2", "double"),
    ("double", "double"), ("Double detail", "double detail"), (True, True),
])
def test_reverse_lookups_setting(value: Any, expected: Any) -> None:
    assert access.reverse_lookups_setting(value) == expected


@pytest.mark.parametrize(("host", "forward", "flags", "passed", "logged"), [
    (None, None, frozenset(), False, "missing host"),
    ("h.test", None, frozenset(), False, "missing reverse addrs"),
    ("h.test", {"192.0.2.9"}, frozenset(), False, "did not match"),
    ("h.test", {"192.0.2.9"}, frozenset({"detail"}), False, "addrs: (192.0.2.9)"),
    ("h.test", {"192.0.2.1"}, frozenset(), True, None),
    ("h.test", {"192.0.2.1"}, frozenset({"autofail"}), False, "autofail"),
    ("h.test", {"192.0.2.1"}, frozenset({"debug"}), True, "debug"),
])
def test_double_reverse_check(host: str | None, forward: set[str] | None,
                              flags: frozenset[str], passed: bool, logged: str | None) -> None:
    ok, message = access.double_reverse_check("192.0.2.1", "192.0.2.1", host, forward, flags)
    assert ok is passed
    if logged is None:
        assert message is None
    else:
        assert message is not None and logged in message


@pytest.mark.parametrize(("option", "value", "needle"), [
    ("allow", "(unclosed", "bad regular expression '(unclosed'"),
    ("deny", "[a-", "bad regular expression '[a-'"),
    ("cidr_allow", "10.0.0.0/33", "bad CIDR block '10.0.0.0/33'"),
    ("cidr_deny", "not-a-block", "bad CIDR block"),
    ("cidr_allow", "10.0.0.9-10.0.0.1", "bad CIDR block"),
    ("cidr_allow", "10.0.0.1-::1", "bad CIDR block"),
    ("cidr_allow", " ", "expected a CIDR block"),
    ("reverse_lookups", "maybe", "(1/0, yes/no, true/false, on/off) or double"),
    ("double_reverse_lookups", "maybe", "unknown double-reverse flag(s) maybe"),
    ("double_reverse_lookups", "loud", "unknown double-reverse flag(s) loud"),
])
def test_bad_values_name_option_and_value(option: str, value: str, needle: str) -> None:
    """A bad regex or block stops the start with a ConfigError naming the option and value."""
    server = GServer(**{option: value})
    with pytest.raises(ConfigError) as info:
        server.configure()
    text = str(info.value)
    assert f"option {option!r}" in text and needle in text


def test_good_values_are_kept() -> None:
    """Values pass through configure as given (lists for the multi options)."""
    server = GServer(allow=r"127\.0\.0\.1", cidr_deny=["10.0.0.0/8", "::1"],
                     reverse_lookups="double", double_reverse_lookups="0")
    server.configure()
    assert server.conf["allow"] == [r"127\.0\.0\.1"]
    assert server.conf["cidr_deny"] == ["10.0.0.0/8", "::1"]
    assert server.conf["reverse_lookups"] == "double"
    assert server.conf["double_reverse_lookups"] is False
