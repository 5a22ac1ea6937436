"""Perl's truth words, parsed in one place.

Net::Server and IO::Socket::SSL users write flags as 1/0, yes/no, true/false or on/off. This
module is a leaf (it imports nothing from the package), so the option table, the access rules
and the TLS option builders can all use it without an import cycle.
"""

from __future__ import annotations

from typing import Any

TRUE_WORDS = frozenset({"1", "yes", "true", "on"})
FALSE_WORDS = frozenset({"0", "no", "false", "off", ""})


def perl_truth(value: Any) -> bool:
    """A bool, an int, or a truth word (case-insensitive; "" is false).

    Raises:
        ValueError: the value is none of those.
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value != 0
    text = str(value).strip().lower()
    if text in TRUE_WORDS:
        return True
    if text in FALSE_WORDS:
        return False
    raise ValueError("expected a boolean (1/0, yes/no, true/false, on/off)")
