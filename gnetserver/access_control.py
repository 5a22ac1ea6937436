"""AccessPolicy: which peers the server talks to, Net::Server's allow/deny at run time.

Rules of this module (behaviour: spec/netserver.md section 1.6):

* The decisions themselves are the pure functions of :mod:`gnetserver.access`; the lookups are
  :mod:`gnetserver.lookup` (cooperative, bounded). This module only wires them to a client.
* Lookups run once per client (the server's ``get_client_info`` asks for them, as in
  Net::Server), and only with ``reverse_lookups`` (or double-reverse lookups):
  ``client.peerhost`` is the peer's host name, ``client.peerhost_rev`` the addresses that name
  resolves to (double-reverse lookups only). Unix-socket clients are never looked up and
  always allowed.
* On TLS ports (ssl and ssleay) the address rules run twice: once before the TLS handshake
  (:meth:`AccessPolicy.address_allowed`, so that a denied peer costs no handshake and gets no
  hook at all), and once in :meth:`AccessPolicy.allows` with the host name, after it. Plain tcp
  ports keep Net::Server's single check.
* An allow/deny regex is an address rule or a host-name rule (:mod:`gnetserver.access` says
  how it is classified); name rules only see ``client.peerhost``, address rules only the
  address, so that a peer's PTR record cannot pass an address rule.
* The rules and the lookup mode are compiled once per start (:meth:`AccessPolicy.prepare`,
  called by the server's ``prepare_access`` when it starts accepting): a connection only reads
  them, and with no rule and no double-reverse lookups every check returns at once.
* A denial is a level-3 log line, never an exception.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import access, lookup
from .client import Client

#: No rule, no lookup: what a policy decides before :meth:`AccessPolicy.prepare` ran.
_OPEN = access.AccessPlan(None, access.lookup_mode(False, False))


class AccessPolicy:
    """The compiled access rules of one start and the checks that read them.

    Args:
        log: the server's ``log(level, message)``.
    """

    def __init__(self, log: Callable[[int, str], None]) -> None:
        self._log = log
        self._plan = _OPEN
        #: Whether :meth:`lookup_peer` looks anything up (``reverse_lookups``): read per
        #: connection by the server, which skips the call otherwise.
        self.looks_up = False

    def prepare(self, conf: Mapping[str, Any]) -> access.AccessPlan:
        """Compile the allow/deny/cidr_allow/cidr_deny rules and the lookup mode of ``conf``
        (values checked by the option converters already); returns the plan. Host-name
        rules without double-reverse lookups get a level-1 warning
        (:meth:`~gnetserver.access.AccessPlan.warnings`)."""
        self._plan = access.access_plan(conf)
        self.looks_up = bool(self._plan.mode.reverse)
        for warning in self._plan.warnings():
            self._log(1, warning)
        return self._plan

    @property
    def rules(self) -> access.AccessRules:
        """The compiled rules (empty rules when none is set)."""
        return self._plan.rules or access.AccessRules()

    def allows(self, client: Client) -> bool:
        """Net::Server's access rules, after the handshake; True allows (see the server's
        ``allow_deny`` for the whole story). A double-reverse failure denies."""
        rules, mode = self._plan.rules, self._plan.mode
        if rules is None and not mode.double:
            return True  # no rule, no double-reverse check: the common case (checked first)
        if client.is_unix or client.peeraddr is None:
            return True
        address = access.normalise_address(client.peeraddr)
        host = client.peerhost
        if mode.double:
            passed, message = access.double_reverse_check(
                address, client.peeraddr, host, client.peerhost_rev, mode.flags)
            if message:
                self._log(3, message)
            if not passed:
                return False
        if rules is None or rules.decide(address, host):
            return True
        self._log(3, f"Denied {client.peer_text()}{f' ({host})' if host else ''} "
                     f"by the allow/deny rules")
        return False

    def lookup_peer(self, client: Client) -> None:
        """Reverse (and forward) lookups the options ask for, cooperative; fills
        ``client.peerhost`` (and ``peerhost_rev``). Once per client."""
        mode = self._plan.mode
        if not mode.reverse or client.is_unix or client.peeraddr is None:
            return
        host = lookup.reverse_lookup(client.peeraddr)
        forward = lookup.forward_addresses(host) if host and mode.double else None
        client.peerhost, client.peerhost_rev = host, forward

    def address_allowed(self, client: Client, tls: bool) -> bool:
        """The cheap check before any TLS work: on a TLS port (``tls``), close a peer that the
        address rules deny whatever its host name (a deny or cidr_deny match; without reverse
        lookups, no allow or cidr_allow match either), so that a denied peer costs no
        handshake. No per-connection hook runs for it; a level-3 line says it was denied.
        Plain ports keep Net::Server's order (the decision is made in :meth:`allows`)."""
        rules = self._plan.rules
        if rules is None or not tls or not isinstance(client.address, tuple):
            return True  # nothing to check (no rule, the common case: one test)
        if rules.address_verdict(client.address[0], host_pending=self._plan.mode.reverse):
            return True
        # Before get_client_info, peer_text() is the accept address: "[addr]:port".
        self._log(3, f"Denied {client.peer_text()} by the allow/deny rules, "
                     f"before the TLS handshake")
        client.abort()  # no TLS alert, no drain: the cheapest way out
        return False
