"""AccessControlMixin: which peers the server talks to, Net::Server's allow/deny at run time.

Rules of this module (behaviour: spec/netserver.md section 1.6):

* The decisions themselves are the pure functions of :mod:`gnetserver.access`; the lookups are
  :mod:`gnetserver.lookup` (cooperative, bounded). This mixin only wires them to a client.
* Lookups run once per client, in ``get_client_info`` (as in Net::Server), and only with
  ``reverse_lookups`` (or double-reverse lookups): ``client.peerhost`` is the peer's host name,
  ``client.peerhost_rev`` the addresses that name resolves to (double-reverse lookups only).
  Unix-socket clients are never looked up and always allowed.
* On TLS ports (ssl and ssleay) the address rules run twice: once before the TLS handshake
  (:meth:`AccessControlMixin._address_allowed`, so that a denied peer costs no handshake and
  gets no hook at all), and once in :meth:`AccessControlMixin.allow_deny` with the host name,
  after it. Plain tcp ports keep Net::Server's single check in ``allow_deny``.
* The rules and the lookup mode are compiled once per start (:meth:`prepare_access`, when the
  server starts accepting, so changes hooks make to ``self.conf`` before that count): a
  connection only reads them, and with no rule and no double-reverse lookups every check
  returns at once.
* A denial is a level-3 log line, never an exception.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import access, lookup
from .client import Client


class AccessControlMixin:
    """The access steps of :class:`~gnetserver.server.GServer`: ``prepare_access``,
    ``allow_deny``, ``access_rules``, and the peer lookups ``get_client_info`` asks for."""

    #: What prepare_access computed for this start; None until it ran.
    _access_plan: access.AccessPlan | None = None

    if TYPE_CHECKING:  # provided by the server class
        conf: dict[str, Any]

        def log(self, level: int, message: str) -> None: ...

    def allow_deny(self, client: Client) -> bool:
        """Framework step: Net::Server's access rules, after the handshake; True allows.

        Unix-socket clients are always allowed. With ``reverse_lookups`` the peer's host name
        was looked up in ``get_client_info`` (``client.peerhost``; with double-reverse lookups
        also ``client.peerhost_rev``, the addresses that name resolves to), and a
        double-reverse failure denies. Then ``allow``/``deny``/``cidr_allow``/``cidr_deny``
        decide (:mod:`gnetserver.access`: deny wins; any rule makes the default deny).

        A denied client gets ``request_denied_hook`` instead of ``process_request`` (the TLS
        session is up, so the hook may write a refusal), then the usual closing hooks. On TLS
        ports (ssl, ssleay) a peer whose *address* alone is denied never gets here: it is
        closed before the TLS handshake, and no per-connection hook runs for it (see
        ``_address_allowed``).
        """
        if client.proto == "unix" or client.peeraddr is None:
            return True
        plan = self._access_plan or self.prepare_access()
        rules, mode = plan.rules, plan.mode
        if rules is None and not mode.double:
            return True  # no rule, no double-reverse check: the common case
        address = access.normalise_address(client.peeraddr)
        host = client.peerhost
        if mode.double:
            passed, message = access.double_reverse_check(
                address, client.peeraddr, host, client.peerhost_rev, mode.flags)
            if message:
                self.log(3, message)
            if not passed:
                return False
        if rules is None or rules.decide(address, host):
            return True
        self.log(3, f"Denied {client.peer_text()}{f' ({host})' if host else ''} "
                    f"by the allow/deny rules")
        return False

    def prepare_access(self) -> access.AccessPlan:
        """Framework step, once per start when the server starts accepting (after every
        start-up hook): compile the allow/deny/cidr_allow/cidr_deny rules and the lookup mode
        of ``self.conf`` for the connections to read. Sets and returns ``_access_plan``; a
        connection served without it (a server not started by ``start``/``run``) prepares it
        on first use. The values were checked by the option converters at configure."""
        self._access_plan = access.access_plan(self.conf)
        return self._access_plan

    def access_rules(self) -> access.AccessRules:
        """The compiled allow/deny/cidr_allow/cidr_deny rules of this start (empty rules when
        none is set), as :meth:`prepare_access` compiled them."""
        plan = self._access_plan or self.prepare_access()
        return plan.rules or access.AccessRules()

    def _lookup_peer(self, client: Client) -> None:
        """Reverse (and forward) lookups the options ask for, cooperative; called once per
        client by ``get_client_info``. Fills ``client.peerhost`` (and ``peerhost_rev``)."""
        mode = (self._access_plan or self.prepare_access()).mode
        if not mode.reverse or client.proto == "unix" or client.peeraddr is None:
            return
        host = lookup.reverse_lookup(client.peeraddr)
        forward = lookup.forward_addresses(host) if host and mode.double else None
        client.peerhost, client.peerhost_rev = host, forward

    def _address_allowed(self, client: Client) -> bool:
        """The cheap check before any TLS work: on TLS ports (ssl, ssleay), close a peer
        that the address rules deny whatever its host name (a deny or cidr_deny match; without
        reverse lookups, no allow or cidr_allow match either), so that a denied peer costs no
        handshake.

        None of the per-connection hooks runs for such a peer (there is no TLS session for
        ``request_denied_hook`` to write to); a level-3 log line says it was denied. Plain tcp
        ports keep Net::Server's order: the decision is made in :meth:`allow_deny` and
        ``request_denied_hook`` runs. Host-name rules and ``allow_deny_hook`` always run after
        the handshake.
        """
        plan = self._access_plan or self.prepare_access()
        rules = plan.rules
        if rules is None or not client.listener.protocol.is_tls \
                or not isinstance(client.address, tuple):
            return True  # nothing to check (no rule, the common case: one test)
        if rules.address_verdict(client.address[0], host_pending=plan.mode.reverse):
            return True
        # Before get_client_info, peer_text() is the accept address: "[addr]:port".
        self.log(3, f"Denied {client.peer_text()} by the allow/deny rules, "
                    f"before the TLS handshake")
        client.abort()  # no TLS alert, no drain: the cheapest way out
        return False
