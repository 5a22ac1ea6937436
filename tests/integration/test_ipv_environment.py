"""The ``IPV`` environment variable is the default of the ``ipv`` option, as in Net::Server
(ipv option > ``$ENV{IPV}`` > ``*``), up to the sockets that are bound."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from gnetserver import GServer
from gnetserver.errors import ConfigError

pytestmark = pytest.mark.timeout(20)


def test_ipv_from_the_environment_reaches_binding(monkeypatch: pytest.MonkeyPatch) -> None:
    """IPV=6 asks for IPv6 sockets: an IPv4 literal host then cannot be bound (Net::Server:
    "an IPv4 literal with ipv 6 yields an IPv6 bind that will fail"), the error says IPv6."""
    monkeypatch.setenv("IPV", "6")
    server = GServer(port="127.0.0.1:0/tcp", log_level=0)
    with pytest.raises(ConfigError, match="127.0.0.1:0/tcp/IPv6"):
        server.start()
    assert server.listeners == []


def test_ipv_option_beats_the_environment(serve: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPV", "6")
    server = serve(GServer, port="127.0.0.1:0/tcp", ipv=4, log_level=0)
    assert [listener.sock.family for listener in server.listeners] == [socket.AF_INET]
    with socket.create_connection(server.listeners[0].bound[:2], timeout=5) as conn:
        assert conn.makefile("rb").readline().startswith(b'Welcome to "GServer"')
