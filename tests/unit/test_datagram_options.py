"""The datagram options (udp_recv_len, udp_recv_flags, udp_broadcast): typed Conf fields with
Net::Server's names, bad values refused naming option, value and reason."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from gnetserver import ConfigError
from gnetserver.conf import Conf
from gnetserver.options import DEFAULT_UDP_RECV_LEN, recv_flags


def test_defaults_are_typed_conf_fields() -> None:
    conf = Conf()
    assert (conf.udp_recv_len, conf.udp_recv_flags, conf.udp_broadcast) == (
        DEFAULT_UDP_RECV_LEN, 0, False)
    changed = conf.replace(udp_recv_len="4096", udp_recv_flags="0x40", udp_broadcast="yes")
    assert (changed.udp_recv_len, changed.udp_recv_flags, changed.udp_broadcast) == (
        4096, socket.MSG_DONTWAIT, True)


@pytest.mark.parametrize(("value", "number"), [(0, 0), ("0", 0), ("64", 64), ("0x40", 64),
                                               (" 0o100 ", 64)])
def test_recv_flags_spellings(value: Any, number: int) -> None:
    assert recv_flags(value) == number


@pytest.mark.parametrize(("name", "value", "words"), [
    ("udp_recv_flags", socket.MSG_PEEK, ["MSG_PEEK", "read again"]),
    ("udp_recv_flags", "0x20", ["MSG_TRUNC"]),
    ("udp_recv_flags", "-1", ["at least 0"]),
    ("udp_recv_flags", "peek", ["number"]),
    ("udp_recv_len", 0, ["from 1"]),
    ("udp_recv_len", "many", ["integer"]),
    ("udp_broadcast", "perhaps", []),
])
def test_bad_values_name_option_value_and_reason(name: str, value: Any,
                                                 words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        Conf().replace(**{name: value})
    message = str(info.value)
    assert name in message and repr(value) in message
    for word in words:
        assert word in message
