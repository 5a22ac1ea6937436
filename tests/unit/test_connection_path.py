"""The per-connection shortcuts of issue 8 (round 2): a listener bound to one address knows the
local address of its connections; GServer's empty hooks are detected once and skipped."""

from __future__ import annotations

import socket
from typing import Any

from gnetserver import GServer
from gnetserver.listener import fixed_local_address


def _listening(family: int, host: str) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.bind((host, 0))
    sock.listen()
    return sock


def test_fixed_local_address_bound_to_one_address() -> None:
    with _listening(socket.AF_INET, "127.0.0.1") as sock:
        bound = sock.getsockname()
        assert fixed_local_address(sock, bound) == bound
        with socket.create_connection(bound) as peer:
            accepted, _ = sock.accept()
            with accepted:  # what get_client_info would have asked for
                assert accepted.getsockname()[:2] == bound[:2] == peer.getpeername()[:2]


def test_fixed_local_address_wildcard_and_unix() -> None:
    with _listening(socket.AF_INET, "0.0.0.0") as sock:
        assert fixed_local_address(sock, sock.getsockname()) is None
    with socket.socket(socket.AF_UNIX) as unix:
        assert fixed_local_address(unix, "/some/path") is None


class _Hooked(GServer):
    def post_accept_hook(self, client: Any) -> None:
        """Replaced: must be called."""


def test_empty_hooks_detected_once() -> None:
    plain = GServer(commandline=[])
    plain._detect_hooks()
    assert plain._noop_hooks == frozenset(GServer._SKIPPABLE_HOOKS)
    hooked = _Hooked(commandline=[])
    hooked.post_client_connection_hook = lambda client: None  # type: ignore[method-assign]
    hooked._detect_hooks()
    assert hooked._noop_hooks == {"allow_deny_hook", "post_process_request_hook"}


def test_fixed_local_address_ipv4_mapped_wildcard() -> None:
    """``::ffff:0.0.0.0`` on a dual-stack socket is IPv4's wildcard: each connection has its
    own local address (``::ffff:127.0.0.1`` here), so it must be asked for."""
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(("::ffff:0.0.0.0", 0))
        sock.listen()
        bound = sock.getsockname()
        with socket.create_connection(("127.0.0.1", bound[1]), timeout=5):
            accepted, _ = sock.accept()
            with accepted:
                assert accepted.getsockname()[0] == "::ffff:127.0.0.1"
        assert fixed_local_address(sock, bound) is None
