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
    # issue 16: address rules see addresses only, name rules names only
    ({"allow": [r"10\..*"]}, "192.0.2.1", "10.1.2.3", False),  # a PTR posing as an address
    ({"allow": [r"10\..*"]}, "192.0.2.1", "10.1.2.3.evil.test", False),
    ({"allow": [r"10\..*"]}, "10.1.2.3", "anything.test", True),
    ({"allow": [r".*"], "deny": [r"10\..*"]}, "192.0.2.1", "10.1.2.3", True),
    ({"allow": [r".*\.example\.org"]}, "www.example.org", None, False),  # not an address
    ({"allow": [r"fe80:.*"]}, "fe80::1", "fe80.example", True),  # a colon: an address rule
    ({"allow": [r"FE80::.*"]}, "fe80::1", None, True),  # hex digits in either case
    # issue 16: names are compared case-insensitively, without the root's trailing dot
    ({"deny": [r"evil\.example"], "allow": [".*"]}, "192.0.2.1", "EVIL.example", False),
    ({"deny": [r"evil\.example"], "allow": [".*"]}, "192.0.2.1", "evil.example.", False),
    ({"deny": [r"Evil\.Example"], "allow": [".*"]}, "192.0.2.1", "evil.example", False),
    ({"allow": [r".*\.example\.org"]}, "192.0.2.1", "WWW.Example.ORG.", True),
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
    # issue 16: an address rule never sees the host name, so no name can rescue this peer
    ({"allow": [r"10\..*"]}, "127.0.0.1", True, False),
    ({"allow": [r".*\.example\.org"]}, "127.0.0.1", True, True),  # a name rule may, later
    ({"allow": [r".*\.example\.org"]}, "127.0.0.1", False, False),  # no name to come
    ({"deny": [r"evil\.test"], "cidr_allow": ["127.0.0.0/8"]}, "127.0.0.1", True, True),
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


# -- issue 16: how a rule is classified -----------------------------------------------------------


@pytest.mark.parametrize(("rule", "kind"), [
    # no letter and no colon: an address rule (IPv4, or a wildcard)
    (r"10\..*", access.ADDRESS), (r"127\.0\.0\.\d+", access.ADDRESS), (r".*", access.ADDRESS),
    (r"[\d.]+", access.ADDRESS), (r"(?i)10\..*", access.ADDRESS),  # inline flags write nothing
    (r"(?P<net>10)\..*", access.ADDRESS), (r"\d+(?#comment)", access.ADDRESS),
    # a colon: an address rule (IPv6), letters or not
    (r"::1", access.ADDRESS), (r"fe80:.*", access.ADDRESS), (r"[0-9a-f:]+", access.ADDRESS),
    (r"fe80::.*%eth0", access.ADDRESS),
    # a letter and no colon: a name rule
    (r"localhost", access.NAME), (r".*\.example\.org", access.NAME), (r".*\.de", access.NAME),
    (r"fe80.*", access.NAME), (r"\x41", access.NAME), (r"[a-z]+", access.NAME),
    (re.compile("LOCALHOST", re.I), access.NAME),
    # negated characters and lookarounds write nothing (a colon there is no IPv6 rule)
    (r"[^:]+\.evil\.com", access.NAME), (r"(?!:).*\.evil\.com", access.NAME),
    (r"(?<!:).*\.evil\.com", access.NAME), (r"(?=[^:]).*\.evil\.com", access.NAME),
    (r"[^a-z]+", access.ADDRESS), (r"(?!localhost)\d+(\.\d+){3}", access.ADDRESS),
    (r"(?<=a)\d+", access.ADDRESS),
    # alternatives of one kind: that kind (also when the parser pulls out a common prefix)
    (r"::1|127\.0\.0\.1", access.ADDRESS), (r"10\..*|192\.168\..*", access.ADDRESS),
    (r"fe80:.*|10\..*", access.ADDRESS), (r".*\.lan|.*\.home", access.NAME),
    (r"(?:www|mail)\.example\.org", access.NAME), (r"10\.0\.0\.(1|2)", access.ADDRESS),
    # a set or a repeat is one alternative writing all it may write
    (r"[0-9a-f:]+", access.ADDRESS), (r"(fe80|::)+.*", access.ADDRESS),
])
def test_rule_kind(rule: Any, kind: str) -> None:
    """The documented classification (module rules of gnetserver.access)."""
    assert access.rule_kind(rule) == kind


MIXED = [r"10\.0\.0\.\d+|.*\.lan", r".*\.lan|10\..*", r"10\..*|10\.lan",
         r"(?:10\..*|.*\.lan)", r"(10|lan)\.0", r"::1|localhost", r".*|.*\.lan"]


@pytest.mark.parametrize("rule", MIXED)
def test_rule_kind_refuses_mixed_alternatives(rule: str) -> None:
    """Alternatives of different kinds: refused (fail closed), the message names the rule."""
    with pytest.raises(ValueError, match="split it") as info:
        access.rule_kind(rule)
    assert repr(rule) in str(info.value)


@pytest.mark.parametrize("option", ["allow", "deny"])
@pytest.mark.parametrize("rule", [MIXED[0], re.compile(MIXED[0])])
def test_mixed_rule_is_a_config_error(option: str, rule: Any) -> None:
    """At configure time, from a string or a compiled pattern, and in conf.replace()."""
    with pytest.raises(ConfigError) as info:
        GServer(**{option: rule}).configure()
    text = str(info.value)
    assert f"option {option!r}" in text and "split it into one rule per kind" in text
    server = GServer()
    server.configure()
    with pytest.raises(ConfigError, match="split it"):
        server.conf.replace(**{option: [rule]})


@pytest.mark.parametrize(("options", "host", "expected"), [
    # the reviewer's probes: a deny name rule with a negated ':' still denies the name
    ({"deny": [r"[^:]+\.evil\.com"], "allow": [".*"]}, "x.evil.com", False),
    ({"deny": [r"(?!:).*\.evil\.com"], "allow": [".*"]}, "x.evil.com", False),
    ({"deny": [r"[^:]+\.evil\.com"], "allow": [".*"]}, "x.good.com", True),
    ({"allow": [r"[^:]+\.good\.com"]}, "x.good.com", True),
])
def test_negated_rules_match_names(options: dict[str, Any], host: str, expected: bool) -> None:
    assert rules(**options).allowed("192.0.2.1", host) is expected


@pytest.mark.parametrize(("rule", "ambiguous"), [
    (r"fe80.*", True), (r"dead.*", True), (r"FE80.*", True), (r"[a-f0-9]+", True),
    (r"bad\.de", True),  # a real name may be all hex: a warning, nothing more
    (r"fe80:.*", False), (r"localhost", False), (r".*\.example\.org", False),
    (r"10\..*", False), (r"[^g-z]+", False), (r"\w+", False),
])
def test_hex_only_name_rules_are_ambiguous(rule: str, ambiguous: bool) -> None:
    assert access.hex_ambiguous(rule) is ambiguous


@pytest.mark.parametrize(("double", "count"), [(True, 1), (False, 2)])
def test_plan_warns_about_hex_only_name_rules(double: bool, count: int) -> None:
    """A level-1 start warning names the rule and says to write IPv6 with a colon (with the
    spoofable-name warning too when double-reverse lookups are off)."""
    conf = {"allow": [r"fe80.*", r".*\.example\.org"], "deny": [], "cidr_allow": [],
            "cidr_deny": [], "reverse_lookups": True, "double_reverse_lookups": double}
    warnings = access.access_plan(conf).warnings()
    assert len(warnings) == count
    hex_warning = warnings[-1]
    assert "'fe80.*'" in hex_warning and "'fe80:.*'" in hex_warning
    assert "example" not in hex_warning


def test_prepare_access_logs_the_hex_warning_at_level_1() -> None:
    lines: list[tuple[int, str]] = []
    server = GServer(commandline=[], allow="dead.*", reverse_lookups="double",
                     log_function=lambda level, msg: lines.append((level, msg)))
    server.configure()
    server.initialize_logging()
    server.prepare_access()
    assert [(level, "'dead.*'" in msg and "colon" in msg) for level, msg in lines] == [(1, True)]
    server.logs.close()


def test_rules_are_sorted_by_kind_and_case_insensitive() -> None:
    compiled = rules(allow=[r"10\..*", r"host\.test"], deny=[r"::1", r"evil\.test"])
    assert [p.pattern for p in compiled.allow] == [r"10\..*"]
    assert [p.pattern for p in compiled.allow_names] == [r"host\.test"]
    assert [p.pattern for p in compiled.deny] == [r"::1"]
    assert [p.pattern for p in compiled.deny_names] == [r"evil\.test"]
    everything = compiled.allow + compiled.allow_names + compiled.deny + compiled.deny_names
    assert all(p.flags & re.IGNORECASE for p in everything)


@pytest.mark.parametrize(("options", "reverse", "double", "needle"), [
    ({"allow": [r"10\..*"]}, True, False, None),  # address rules only: nothing to say
    ({"deny": [r"evil\.example"]}, True, False, "without double_reverse_lookups"),
    ({"allow": [r".*\.example\.org"]}, "1", False, "without double_reverse_lookups"),
    ({"allow": [r".*\.example\.org"]}, False, False, "never match: reverse_lookups is off"),
    ({"allow": [r".*\.example\.org"]}, True, True, None),
    ({"allow": [r".*\.example\.org"]}, "double", False, None),
])
def test_plan_warns_about_spoofable_name_rules(options: dict[str, Any], reverse: Any,
                                               double: Any, needle: str | None) -> None:
    conf = {"allow": [], "deny": [], "cidr_allow": [], "cidr_deny": [], **options,
            "reverse_lookups": reverse, "double_reverse_lookups": double}
    warnings = access.access_plan(conf).warnings()
    if needle is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and needle in warnings[0]
        assert all(repr(rule) in warnings[0] for value in options.values() for rule in value)


def test_prepare_access_logs_the_warning_at_level_1() -> None:
    """GServer.prepare_access (AccessPolicy.prepare) logs the warning once per compile."""
    lines: list[tuple[int, str]] = []
    server = GServer(commandline=[], deny=r"evil\.example", reverse_lookups=1,
                     log_function=lambda level, msg: lines.append((level, msg)))
    server.configure()
    server.initialize_logging()
    server.prepare_access()
    assert [(level, "double_reverse_lookups" in msg) for level, msg in lines] == [(1, True)]
    assert r"'evil\\.example'" in lines[0][1]
    server.logs.close()
