"""AccessControlMixin: which peers the server talks to, Net::Server's allow/deny at run time.

Rules of this module (behaviour: spec/netserver.md section 1.6):

* The decisions themselves are the pure functions of :mod:`gnetserver.access`; the lookups are
  :mod:`gnetserver.lookup` (cooperative, bounded). This mixin only wires them to a client.
* Lookups run once per client, in ``get_client_info`` (as in Net::Server), and only with
  ``reverse_lookups`` (or double-reverse lookups): ``client.peerhost`` is the peer's host name,
  ``client.peerhost_rev`` the addresses that name resolves to (double-reverse lookups only).
  Unix-socket clients are never looked up and always allowed.
* On ssl ports the address rules run twice: once before the TLS handshake
  (:meth:`AccessControlMixin._address_allowed`, so that a denied peer costs no handshake and
  gets no hook at all), and once in :meth:`AccessControlMixin.allow_deny` with the host name,
  after it. Plain tcp ports keep Net::Server's single check in ``allow_deny``.
* A denial is a level-3 log line, never an exception.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import access, lookup
from .client import Client


class AccessControlMixin:
    """The access steps of :class:`~gnetserver.server.GServer`: ``allow_deny``,
    ``access_rules``, and the peer lookups ``get_client_info`` asks for."""

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
        session is up, so the hook may write a refusal), then the usual closing hooks. On ssl
        ports a peer whose *address* alone is denied never gets here: it is closed before the
        TLS handshake, and no per-connection hook runs for it (see ``_address_allowed``).
        """
        if client.proto == "unix" or client.peeraddr is None:
            return True
        c = self.conf
        mode = access.lookup_mode(c["reverse_lookups"], c["double_reverse_lookups"])
        address = access.normalise_address(client.peeraddr)
        host = client.peerhost
        if mode.double:
            passed, message = access.double_reverse_check(
                address, client.peeraddr, host, client.peerhost_rev, mode.flags)
            if message:
                self.log(3, message)
            if not passed:
                return False
        if self.access_rules().allowed(address, host):
            return True
        self.log(3, f"Denied {client.peer_text()}{f' ({host})' if host else ''} "
                    f"by the allow/deny rules")
        return False

    def access_rules(self) -> access.AccessRules:
        """The compiled allow/deny/cidr_allow/cidr_deny rules of ``self.conf`` (cached)."""
        c = self.conf
        return access.rules_from_options(c["allow"], c["deny"], c["cidr_allow"], c["cidr_deny"])

    def _lookup_peer(self, client: Client) -> None:
        """Reverse (and forward) lookups the options ask for, cooperative; called once per
        client by ``get_client_info``. Fills ``client.peerhost`` (and ``peerhost_rev``)."""
        c = self.conf
        mode = access.lookup_mode(c["reverse_lookups"], c["double_reverse_lookups"])
        if not mode.reverse or client.proto == "unix" or client.peeraddr is None:
            return
        host = lookup.reverse_lookup(client.peeraddr)
        forward = lookup.forward_addresses(host) if host and mode.double else None
        client.peerhost, client.peerhost_rev = host, forward

    def _address_allowed(self, client: Client) -> bool:
        """The cheap check before any TLS work: on ssl ports, close a peer that the address
        rules deny whatever its host name (a deny or cidr_deny match; without reverse lookups,
        no allow or cidr_allow match either), so that a denied peer costs no handshake.

        None of the per-connection hooks runs for such a peer (there is no TLS session for
        ``request_denied_hook`` to write to); a level-3 log line says it was denied. Plain tcp
        ports keep Net::Server's order: the decision is made in :meth:`allow_deny` and
        ``request_denied_hook`` runs. Host-name rules and ``allow_deny_hook`` always run after
        the handshake.
        """
        c = self.conf
        if client.proto not in ("ssl", "ssleay") or not isinstance(client.address, tuple) \
                or not (c["allow"] or c["deny"] or c["cidr_allow"] or c["cidr_deny"]):
            return True  # nothing to check (the common case costs four truth tests)
        mode = access.lookup_mode(c["reverse_lookups"], c["double_reverse_lookups"])
        if self.access_rules().address_verdict(client.address[0], host_pending=mode.reverse):
            return True
        # Before get_client_info, peer_text() is the accept address: "[addr]:port".
        self.log(3, f"Denied {client.peer_text()} by the allow/deny rules, "
                    f"before the TLS handshake")
        client.abort()  # no TLS alert, no drain: the cheapest way out
        return False
