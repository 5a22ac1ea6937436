"""TLSContexts: one context per distinct set of options, reload all or none, ticket-key
rotation.

Contexts are built from the ``pems``/``pem_files`` fixtures' files (the session's
``trustme.CA``); a copy of them is broken and repaired to make builds fail and succeed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from support.handshake import WHERE, Pems

from gnetserver.errors import ConfigError
from gnetserver.tls import TLSContexts

pytestmark = pytest.mark.timeout(10)


# ---------------------------------------------------------------------------------------------
# TLSContexts: sharing, reload, rotation


def test_equal_options_share_one_context(pem_files: dict[str, Any]) -> None:
    contexts = TLSContexts()
    def callback() -> str:
        return "unused"

    first = contexts.handle({**pem_files, "SSL_passwd_cb": callback}, "port a")
    same = contexts.handle({**pem_files, "SSL_passwd_cb": callback}, "port b")
    other = contexts.handle({**pem_files, "SSL_passwd_cb": lambda: "x"}, "port c")
    assert first is same and first is not other
    assert first.ports == ["port a", "port b"]
    assert first.context is same.context
    assert len(contexts.handles) == 2


def test_reload_swaps_every_context_or_none(pem_files: dict[str, Any], pems: Pems,
                                            tmp_path: Path) -> None:
    contexts = TLSContexts()
    copy = tmp_path / "copy.pem"
    copy.write_bytes(pems.combined.read_bytes())
    a = contexts.handle(pem_files, "port a")
    b = contexts.handle({"SSL_cert_file": str(copy)}, "port b")
    before = (a.context, b.context)
    copy.write_bytes(b"broken")
    with pytest.raises(ConfigError, match="port b: SSL_cert_file"):
        contexts.reload()
    assert (a.context, b.context) == before
    copy.write_bytes(pems.combined.read_bytes())
    contexts.reload()
    assert a.context is not before[0] and b.context is not before[1]


def test_rotation_rebuilds_after_its_period(pem_files: dict[str, Any], pems: Pems) -> None:
    contexts = TLSContexts()
    handle = contexts.handle({**pem_files, "SSL_ticket_key_rotation": 60}, WHERE)
    first = handle.context
    assert handle.context is first  # within the period
    handle.built_at -= 61  # as if a minute had passed
    assert handle.context is not first
    never = contexts.handle(pem_files, "port never")
    never.built_at -= 10**6
    assert never.context is never.context  # 0: no rotation


def test_failed_rotation_keeps_the_context_and_warns(pems: Pems, tmp_path: Path) -> None:
    warnings: list[str] = []
    copy = tmp_path / "copy.pem"
    copy.write_bytes(pems.combined.read_bytes())
    handle = TLSContexts(warnings.append).handle(
        {"SSL_cert_file": str(copy), "SSL_ticket_key_rotation": 1}, WHERE)
    first = handle.context
    copy.write_bytes(b"broken")
    handle.built_at -= 2
    assert handle.context is first
    assert len(warnings) == 1 and "session-ticket key rotation failed" in warnings[0]
    assert handle.context is first and len(warnings) == 1  # retried one period later


def test_a_rotation_failing_with_any_error_keeps_the_context(pem_files: dict[str, Any]) -> None:
    """Whatever the build raises (not only a ConfigError: an OSError of a file made
    unreadable, a bug of a custom builder), the connection gets the current context and the
    reason is warned, with the user the files were read as when it is a permission problem."""
    warnings: list[str] = []
    handle = TLSContexts(warnings.append).handle({**pem_files, "SSL_ticket_key_rotation": 1},
                                                 WHERE)
    first = handle.context

    def unreadable(*args: Any) -> Any:
        raise PermissionError(13, "Permission denied", pem_files["SSL_key_file"])

    handle.builder = unreadable
    handle.built_at -= 2
    assert handle.context is first
    assert len(warnings) == 1 and "session-ticket key rotation failed" in warnings[0]
    assert "PermissionError" in warnings[0] and f"read as uid {os.geteuid()}" in warnings[0]
