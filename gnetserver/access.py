r"""Which peers may talk to the server: Net::Server's allow/deny rules, as pure functions.

Rules of this module (behaviour: spec/netserver.md section 1.6 step 4):

* No I/O here. The server hands in the peer address text (and the host name, when reverse
  lookups found one); :mod:`gnetserver.lookup` does the lookups.
* An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``, how IPv4 peers appear on a dual-stack
  socket) is matched as ``a.b.c.d``, by the regexes and the CIDR blocks alike.
* ``allow`` and ``deny`` are regular expressions that must match the **whole** text (Python's
  ``fullmatch``; Perl's ``/^$rule$/`` anchors only the first and last alternatives of ``a|b``,
  we anchor all of them). Each one is either an **address rule** or a **name rule**, decided
  once, when it is compiled (:func:`rule_kind`), from the characters the regex writes out
  (literal characters, escapes such as ``\x41`` included, and the members and ranges of
  ``[...]`` sets; ``\d``, ``\w``, ``\s``, ``.``, inline flags and group names write none,
  and neither do negated characters, ``[^:]``, nor lookaround assertions, ``(?!:)``,
  ``(?<=a)``: they say what a text must not hold, so ``[^:]+\.evil\.com`` is a name rule).
  Each alternative of a ``|`` (at the top or inside a group) is classified on its own:

  1. an alternative that writes a ``:`` is an address one (IPv6; host names have no colon);
  2. otherwise one that writes a letter is a name one (IPv4 addresses have no letters,
     and IPv6 addresses have colons): ``localhost``, ``.*\.example\.org``, ``.*\.de``;
  3. otherwise it is an address one: ``10\..*``, ``127\.0\.0\.\d+``, ``.*``.

  A rule whose alternatives are all of one kind is a rule of that kind; one that mixes them
  (``10\.0\.0\.\d+|.*\.lan``) is refused with a ConfigError naming it and saying to split it
  into two rules (failing closed: as one kind it would silently never match the other). A
  ``[...]`` set, a repeat and a conditional count as one alternative writing all they may
  write (``[0-9a-f:]+`` is an address rule). A name rule whose only letters are hex digits
  (``fe80.*``, ``dead.*``, even ``bad\.de``) stays a name rule, but a level-1 warning at start
  (:meth:`AccessPlan.warnings`) says to write an IPv6 rule with a colon (``fe80:.*``).

  An address rule is matched against the peer address only, a name rule against the host
  name only (so a peer that controls its PTR record cannot pass an address rule by naming
  itself ``10.1.2.3``, nor an address rule leak into names such as ``10.1.2.3.evil.test``).
  Host names are compared case-insensitively: a name is
  normalised (lower case, one trailing dot dropped) and every rule is compiled with
  ``re.IGNORECASE`` (an address rule too: IPv6 hex digits may be written in either case).
  Net::Server matched every rule against the name or the address, case-sensitively.
* ``cidr_allow`` and ``cidr_deny`` hold CIDR blocks (``10.0.0.0/8``, ``::1/128``, a bare
  address, or a range ``a-b``) matched against the address; a block only matches addresses of
  its own IP version.
* The decision: no rules at all -> allow. Otherwise a matching ``deny`` (name or address) or
  ``cidr_deny`` -> deny; then a matching ``allow`` (name or address) or ``cidr_allow`` ->
  allow; otherwise deny. **Deny wins, and any rule makes the default deny.**
* Name rules trust the reverse (PTR) lookup, which the peer's own DNS answers: only
  double-reverse lookups make a name trustworthy. :meth:`AccessPlan.warnings` says so (the
  server logs it at level 1 when it compiles the rules), and says when name rules can never
  match because reverse lookups are off.
* Double-reverse lookups (``double_reverse_lookups``) are checked before the rules: a peer
  whose host name does not resolve back to its address is denied whatever the rules say.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping, Set
from dataclasses import dataclass
from typing import Any

from .truth import perl_truth

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Words double_reverse_lookups (or ``reverse_lookups double...``) may carry.
DOUBLE_REVERSE_FLAGS = frozenset({"detail", "autofail", "debug"})

# IPv4-mapped IPv6 block: rules written in that form are matched as IPv4.
_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


# -- option converters (used by gnetserver.options) ---------------------------------------------


def regex_rule(value: Any) -> str | re.Pattern[str]:
    """Converter of ``allow``/``deny``: a regex text (or compiled pattern), checked to compile
    and to be of one kind (:func:`rule_kind`: mixed alternatives are refused, so that a rule
    fails closed at start instead of silently never matching addresses or names)."""
    if isinstance(value, re.Pattern):
        rule_kind(value)
        return value
    if not isinstance(value, str):
        raise TypeError(f"expected a regular expression, not {type(value).__name__}")
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"bad regular expression {value!r}: {exc}") from None
    rule_kind(value)
    return value


def cidr_rule(value: Any) -> str:
    """Converter of ``cidr_allow``/``cidr_deny``: CIDR block(s) text, checked to parse."""
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return str(value)
    if not isinstance(value, str):
        raise TypeError(f"expected a CIDR block, not {type(value).__name__}")
    parse_cidr(value)
    return value.strip()


def reverse_lookups_setting(value: Any) -> bool | str:
    """Converter of ``reverse_lookups``: a boolean, or ``double``/``2`` (plus optional flags),
    which also turns double-reverse lookups on, as in Net::Server."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    match = re.fullmatch(r"(?:double|2)[\s,:_-]*(.*)", text)
    if match:
        _flags(match.group(1))
        return "double " + match.group(1) if match.group(1) else "double"
    try:
        return _as_bool(text)
    except ValueError as exc:
        raise ValueError(f"{exc} or double") from None


def double_reverse_setting(value: Any) -> bool | str:
    """Converter of ``double_reverse_lookups``: a boolean, or flags among detail, autofail and
    debug (``detail,debug``), which also mean on."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    try:
        return _as_bool(text)
    except ValueError:
        return ",".join(sorted(_flags(text)))


def _as_bool(text: str) -> bool:
    """Perl truth words (:func:`gnetserver.truth.perl_truth`)."""
    return perl_truth(text)


def _true_word(word: str) -> bool:
    try:
        return _as_bool(word)
    except ValueError:
        return False


def _flags(text: str) -> frozenset[str]:
    """The double-reverse flags of a value; truth words among them (``1,detail``) are skipped."""
    words = frozenset(w for w in re.split(r"[\s,|:]+", text.strip())
                      if w and not _true_word(w))
    unknown = words - DOUBLE_REVERSE_FLAGS
    if unknown:
        raise ValueError(f"unknown double-reverse flag(s) {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(DOUBLE_REVERSE_FLAGS))})")
    return words


# -- addresses and blocks -----------------------------------------------------------------------


def normalise_address(address: str) -> str:
    """The address as rules see it: ``::ffff:a.b.c.d`` becomes ``a.b.c.d``; others unchanged."""
    if address.startswith("::ffff:") or address.startswith("::FFFF:"):
        try:
            mapped = ipaddress.IPv6Address(address).ipv4_mapped
        except ValueError:
            return address
        if mapped is not None:
            return str(mapped)
    return address


def parse_cidr(text: str) -> tuple[Network, ...]:
    """The networks of one cidr_* value: blocks or ranges separated by commas or spaces.

    Raises:
        ValueError: a part is not a block, an address or a range of one IP version.
    """
    parts = [part for part in re.split(r"[\s,]+", text.strip()) if part]
    if not parts:
        raise ValueError("expected a CIDR block such as 10.0.0.0/8 or ::1/128")
    networks: list[Network] = []
    for part in parts:
        try:
            if "-" in part:
                first, last = (ipaddress.ip_address(p.strip()) for p in part.split("-", 1))
                networks.extend(ipaddress.summarize_address_range(first, last))
            else:
                networks.append(ipaddress.ip_network(part, strict=False))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"bad CIDR block {part!r}: {exc}") from None
    return tuple(_unmap(network) for network in networks)


def _unmap(network: Network) -> Network:
    """An IPv4-mapped IPv6 block (``::ffff:10.0.0.0/104``) as the IPv4 block it stands for."""
    if isinstance(network, ipaddress.IPv6Network) and network.subnet_of(_MAPPED):
        base = ipaddress.IPv4Address(int(network.network_address) & 0xFFFFFFFF)
        return ipaddress.IPv4Network((base, network.prefixlen - 96))
    return network


def _ip(address: str) -> IPAddress | None:
    """The address as an ip_address, scope id dropped; None when it is not an IP address."""
    try:
        return ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None


# -- the rules ----------------------------------------------------------------------------------

#: :func:`rule_kind`'s answers.
ADDRESS, NAME = "address", "name"


def _sre_parser() -> Any:
    """The stdlib's regex parser (``re._parser`` since 3.11, ``sre_parse`` before; importing
    ``sre_parse`` on 3.11+ warns), so that a rule is classified by what it really writes."""
    try:
        return importlib.import_module("re._parser")
    except ImportError:  # Python 3.10: re is a module, not a package
        return importlib.import_module("sre_parse")


def _written(items: Any, constants: Any) -> Iterator[tuple[int, int]]:
    """The code point ranges a parsed regex writes out (see the module rules): literals,
    members and ranges of sets, in every branch, group and repeat. Negated characters
    (``[^:]``, NOT_LITERAL) and lookaround assertions (``(?!:)``, ``(?<=a)``) write nothing:
    they say what a text must *not* hold, or look at text that another part matches."""
    for op, av in items:
        if op == constants.LITERAL:
            yield av, av
        elif op == constants.IN:
            if not (av and av[0][0] == constants.NEGATE):
                yield from _written(av, constants)
        elif op == constants.RANGE:
            yield av
        elif op == constants.BRANCH:
            for branch in av[1]:
                yield from _written(branch, constants)
        else:
            for part in _inner(op, av, constants):
                yield from _written(part, constants)
        # ANY, AT, CATEGORY, GROUPREF, NOT_LITERAL, ASSERT, ASSERT_NOT: nothing written out


def _inner(op: Any, av: Any, constants: Any) -> list[Any]:
    """The sub-patterns of a group, a repeat or a conditional (none for other opcodes, and
    none for lookaround assertions: they write nothing)."""
    if op == constants.SUBPATTERN:
        return [av[-1]]
    if op in (constants.MAX_REPEAT, constants.MIN_REPEAT) or \
            op == getattr(constants, "POSSESSIVE_REPEAT", None):
        return [av[2]]
    if op == getattr(constants, "ATOMIC_GROUP", None):
        return [av]
    if op == constants.GROUPREF_EXISTS:
        return [part for part in av[1:] if part is not None]
    return []


# One way through a regex, as the classification sees it: (writes a ':', writes a letter).
_Path = tuple[bool, bool]


def _path(ranges: Iterable[tuple[int, int]]) -> _Path:
    spans = list(ranges)
    return (any(low <= ord(":") <= high for low, high in spans),
            any(_has_letter(low, high) for low, high in spans))


def _paths(items: Any, constants: Any) -> set[_Path]:
    """The kinds of path through a parsed regex: the alternatives of every ``|`` (at the top
    or inside a group, including the prefix the parser pulls out of them) are followed one
    by one; a set, a repeat or a conditional counts as one path writing all it may write."""
    paths: set[_Path] = {(False, False)}
    for op, av in items:
        if op == constants.BRANCH:
            options = set[_Path]().union(*(_paths(branch, constants) for branch in av[1]))
        elif op == constants.SUBPATTERN or op == getattr(constants, "ATOMIC_GROUP", None):
            options = _paths(_inner(op, av, constants)[0], constants)
        else:
            options = {_path(_written([(op, av)], constants))}
        paths = {(colon or more_colon, letter or more_letter)
                 for colon, letter in paths for more_colon, more_letter in options}
    return paths


def _has_letter(low: int, high: int) -> bool:
    if high - low > 0x3000:  # a huge range: surely holds a letter
        return True
    return any(chr(code).isalpha() for code in range(low, high + 1))


def _path_kind(path: _Path) -> str:
    colon, letter = path
    return ADDRESS if colon or not letter else NAME


def _parsed(pattern: str | re.Pattern[str]) -> tuple[Any, Any]:
    text, flags = (pattern.pattern, pattern.flags) if isinstance(pattern, re.Pattern) \
        else (pattern, 0)
    parser = _sre_parser()  # it re-exports its opcodes (LITERAL, IN...) too
    return parser.parse(text, flags), parser


def rule_kind(pattern: str | re.Pattern[str]) -> str:
    """:data:`ADDRESS` or :data:`NAME`: how an allow/deny regex is matched (module rules: an
    alternative writing a ``:`` is an address one, else one writing a letter a name one, else
    an address one; every alternative must be of the same kind).

    Raises:
        ValueError: the alternatives of the regex differ in kind (``10\\..*|.*\\.lan``); the
            message names the rule and says to split it.
    """
    parsed, parser = _parsed(pattern)
    kinds = {_path_kind(path) for path in _paths(parsed, parser)}
    if len(kinds) > 1:
        text = pattern.pattern if isinstance(pattern, re.Pattern) else pattern
        raise ValueError(
            f"rule {text!r} mixes address and host-name alternatives (an address rule is "
            "matched against the address only, a host-name rule against the name only): "
            "split it into one rule per kind")
    return kinds.pop()


def hex_ambiguous(pattern: str | re.Pattern[str]) -> bool:
    """True for a name rule whose only letters are hex digits (``fe80.*``, ``dead.*``): it
    may have been meant for IPv6 addresses, which need a ``:`` to be an address rule
    (:meth:`AccessPlan.warnings` says so at start)."""
    if rule_kind(pattern) != NAME:
        return False
    parsed, parser = _parsed(pattern)
    ranges = list(_written(parsed, parser))
    if any(high - low > 0x3000 for low, high in ranges):  # a huge range: surely not hex only
        return False
    letters = {chr(code) for low, high in ranges for code in range(low, high + 1)
               if chr(code).isalpha()}
    return letters <= set("abcdefABCDEF")


def normalise_name(host: str) -> str:
    """A host name as name rules see it: lower case, one trailing dot (the root) dropped."""
    host = host.lower()
    return host[:-1] if host.endswith(".") else host


@dataclass(frozen=True)
class AccessRules:
    """Compiled allow/deny/cidr_allow/cidr_deny rules; see the module rules for the decision.

    Attributes:
        allow, deny: the address rules (matched against the address only).
        cidr_allow, cidr_deny: the blocks.
        allow_names, deny_names: the name rules (matched against the host name only).
    """

    allow: tuple[re.Pattern[str], ...] = ()
    deny: tuple[re.Pattern[str], ...] = ()
    cidr_allow: tuple[Network, ...] = ()
    cidr_deny: tuple[Network, ...] = ()
    allow_names: tuple[re.Pattern[str], ...] = ()
    deny_names: tuple[re.Pattern[str], ...] = ()

    @property
    def empty(self) -> bool:
        """True when no rule is set: every peer is allowed."""
        return not (self.allow or self.deny or self.cidr_allow or self.cidr_deny
                    or self.allow_names or self.deny_names)

    @property
    def name_rules(self) -> tuple[re.Pattern[str], ...]:
        """Every name rule, allow then deny (empty when all rules are address rules)."""
        return self.allow_names + self.deny_names

    def allowed(self, address: str, host: str | None = None) -> bool:
        """Net::Server's decision for a peer address (and its host name, if one was found)."""
        return self.empty or self.decide(normalise_address(address), host)

    def decide(self, address: str, host: str | None = None) -> bool:
        """:meth:`allowed` for an address already normalised (:func:`normalise_address`), so
        that a caller holding the normalised text does not pay for normalising it again."""
        if self.empty:
            return True
        ip = _ip(address) if self.cidr_allow or self.cidr_deny else None
        name = normalise_name(host) if host and self.name_rules else None
        if self._address_denied(address, ip) or _any_match(self.deny_names, name):
            return False
        return self._address_allowed(address, ip) or _any_match(self.allow_names, name)

    def address_verdict(self, address: str, host_pending: bool) -> bool:
        """The check that can run before a TLS handshake, from the address alone.

        Args:
            address: the peer address text.
            host_pending: True when a host name will be looked up later (reverse_lookups on),
                so an allow name rule may still match it.

        Returns:
            False when the peer is denied whatever its host name turns out to be (an address
            deny rule or cidr_deny matches; or no address allow rule nor cidr_allow matches,
            and no allow name rule could match a name to come); True otherwise
            (:meth:`allowed` still decides after the handshake). With no host pending this is
            exactly :meth:`allowed` without a host name.
        """
        if self.empty:
            return True
        address = normalise_address(address)
        ip = _ip(address) if self.cidr_allow or self.cidr_deny else None
        if self._address_denied(address, ip):
            return False
        if self._address_allowed(address, ip):
            return True
        return host_pending and bool(self.allow_names)

    def _address_denied(self, address: str, ip: IPAddress | None) -> bool:
        return _any_match(self.deny, address) or _in_blocks(ip, self.cidr_deny)

    def _address_allowed(self, address: str, ip: IPAddress | None) -> bool:
        return _any_match(self.allow, address) or _in_blocks(ip, self.cidr_allow)


def _any_match(rules: tuple[re.Pattern[str], ...], text: str | None) -> bool:
    return text is not None and any(rule.fullmatch(text) for rule in rules)


def _in_blocks(ip: IPAddress | None, blocks: tuple[Network, ...]) -> bool:
    return ip is not None and any(ip.version == net.version and ip in net for net in blocks)


def compile_rule(value: str | re.Pattern[str]) -> re.Pattern[str]:
    """An allow/deny value compiled as it is matched: case-insensitive (a compiled pattern
    keeps its other flags)."""
    if isinstance(value, re.Pattern):
        if value.flags & re.IGNORECASE:
            return value
        return re.compile(value.pattern, value.flags | re.IGNORECASE)
    return re.compile(value, re.IGNORECASE)


def rules_from_options(allow: Iterable[Any] = (), deny: Iterable[Any] = (),
                       cidr_allow: Iterable[Any] = (), cidr_deny: Iterable[Any] = ()
                       ) -> AccessRules:
    """The compiled rules for these option values (the server compiles them once per start),
    each allow/deny regex sorted by :func:`rule_kind`.

    Raises:
        ValueError: a regex or CIDR block does not parse, or a regex mixes address and name
            alternatives (the option converters check first).
    """
    def patterns(values: Iterable[Any]) -> tuple[tuple[re.Pattern[str], ...],
                                                 tuple[re.Pattern[str], ...]]:
        compiled = [compile_rule(v) for v in values]
        return (tuple(p for p in compiled if rule_kind(p) == ADDRESS),
                tuple(p for p in compiled if rule_kind(p) == NAME))

    def blocks(values: Iterable[Any]) -> tuple[Network, ...]:
        return tuple(net for value in values for net in parse_cidr(str(value)))

    allow_addresses, allow_names = patterns(allow)
    deny_addresses, deny_names = patterns(deny)
    return AccessRules(allow_addresses, deny_addresses, blocks(cidr_allow), blocks(cidr_deny),
                       allow_names, deny_names)


# -- reverse and double-reverse lookups ---------------------------------------------------------


@dataclass(frozen=True)
class LookupMode:
    """What the ``reverse_lookups``/``double_reverse_lookups`` options ask for.

    Attributes:
        reverse: look the peer's host name up (``client.peerhost``).
        double: also resolve that name forward and require the peer address among the results.
        flags: double-reverse flags: ``detail`` (log the addresses on a mismatch), ``autofail``
            (deny even on a match), ``debug`` (log matches too).
    """

    reverse: bool = False
    double: bool = False
    flags: frozenset[str] = frozenset()


def lookup_mode(reverse_lookups: bool | str, double_reverse_lookups: bool | str) -> LookupMode:
    """Net::Server's post_configure rule: double implies reverse; ``reverse_lookups double``
    turns double on, its trailing words (if any) overriding double_reverse_lookups' flags."""
    double, flags = bool(double_reverse_lookups), frozenset[str]()
    if isinstance(double_reverse_lookups, str):
        flags = _flags(double_reverse_lookups)
    if isinstance(reverse_lookups, str) and reverse_lookups.startswith("double"):
        double = True
        suffix = _flags(reverse_lookups[len("double"):])
        flags = suffix or flags
    return LookupMode(reverse=bool(reverse_lookups) or double, double=double, flags=flags)


@dataclass(frozen=True)
class AccessPlan:
    """The access work of one server start, computed once from its options so that each
    connection only reads it (the server's ``prepare_access``).

    Attributes:
        rules: the compiled allow/deny/cidr rules; None when there is none (every peer is
            allowed, and the per-connection checks return at once).
        mode: the reverse and double-reverse lookups the options ask for.
    """

    rules: AccessRules | None
    mode: LookupMode

    def warnings(self) -> list[str]:
        """What the server logs at level 1 when it compiles these rules: name rules without
        double-reverse lookups trust a PTR name the peer's own DNS gives (spoofable), and
        without reverse lookups they never match at all; a name rule whose only letters are
        hex digits (``fe80.*``) may be an IPv6 rule missing its colon."""
        names = self.rules.name_rules if self.rules is not None else ()
        found = [f"allow/deny rule {rule.pattern!r} is a host-name rule (its only letters are "
                 "hex digits and it has no ':'): if it is meant for IPv6 addresses, write it "
                 "with a colon (e.g. 'fe80:.*')"
                 for rule in names if hex_ambiguous(rule)]
        if not names or self.mode.double:
            return found
        listed = ", ".join(repr(rule.pattern) for rule in names)
        if not self.mode.reverse:
            return [f"allow/deny host-name rule(s) {listed} never match: reverse_lookups is "
                    "off (an address rule needs no letter, or a ':' for IPv6)", *found]
        return [f"allow/deny host-name rule(s) {listed} are matched against the PTR name, "
                "which the peer's own DNS gives: without double_reverse_lookups a peer can "
                "claim any name", *found]


def access_plan(conf: Mapping[str, Any]) -> AccessPlan:
    """The :class:`AccessPlan` of a server's converted options (``allow``, ``deny``,
    ``cidr_allow``, ``cidr_deny``, ``reverse_lookups``, ``double_reverse_lookups``)."""
    rules = rules_from_options(conf["allow"], conf["deny"], conf["cidr_allow"], conf["cidr_deny"])
    mode = lookup_mode(conf["reverse_lookups"], conf["double_reverse_lookups"])
    return AccessPlan(None if rules.empty else rules, mode)


def double_reverse_check(address: str, original: str, host: str | None,
                         forward: Set[str] | None, flags: frozenset[str] = frozenset()
                         ) -> tuple[bool, str | None]:
    """Net::Server's ``double_reverse_lookup``: does ``host`` resolve back to the peer?

    Args:
        address: the normalised peer address; original: the address as the socket gave it.
        host: the reverse name (None when the lookup found none).
        forward: the addresses ``host`` resolves to (None when that lookup failed).
        flags: see :class:`LookupMode`.

    Returns:
        ``(passed, message)``; the message (or None) is for the log, at level 3.
    """
    if not host:
        return False, f"Double reverse missing host from addr {address}"
    if not forward:
        return False, f"Double reverse missing reverse addrs from host {host} ({address})"
    addrs = " ".join(sorted(forward))
    extra = f",  orig_addr: {original}" if original != address else ""
    if address not in forward and original not in forward:
        detail = f",  addrs: ({addrs}){extra}" if "detail" in flags else ""
        return False, f"Double reverse did not match:  addr: {address},  host: {host}{detail}"
    if "autofail" in flags:
        return False, (f"Double reverse autofail:  addr: {address},  host: {host},  "
                       f"addrs: ({addrs}){extra}")
    if "debug" in flags:
        return True, (f"Double reverse debug:  addr: {address},  host: {host},  "
                      f"addrs: ({addrs}){extra}")
    return True, None
