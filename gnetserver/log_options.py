"""The logging options' values: converters for :mod:`gnetserver.options`, syslog's address.

Rules of this module:

* It is pure: no handler is built, nothing is opened or logged. Its one look at the system is
  :func:`syslog_address`, which picks the first existing local syslog socket.
* Each converter returns the normalised value or raises ValueError/TypeError with the reason;
  the option machinery names the option and value. :func:`resolve_log_function` runs at start
  and raises :class:`~gnetserver.errors.ConfigError` itself.
* :mod:`gnetserver.log` re-exports every name here, so ``gnetserver.log.X`` keeps working.
"""

from __future__ import annotations

import inspect
import logging
import logging.handlers
import os
import re
import socket
from collections.abc import Callable
from typing import Any

from .errors import ConfigError

#: ``syslog_logopt`` words Net::Server accepts (openlog(3) options).
SYSLOG_LOGOPTS = frozenset({"cons", "ndelay", "nowait", "pid", "nofatal"})

#: ``syslog_logsock`` words; any absolute path names an AF_UNIX socket instead.
SYSLOG_LOGSOCKS = ("native", "unix", "stream", "inet", "tcp", "udp")

#: Where the local syslog daemon listens, first existing wins (Linux, macOS, BSD).
LOCAL_SYSLOG_PATHS = ("/dev/log", "/var/run/syslog", "/var/run/log")


def syslog_facility(value: Any) -> str:
    """A syslog facility name (``daemon``, ``local0``...) or number, checked."""
    facility_number(value)
    return str(value).strip().lower()


def facility_number(value: Any) -> int:
    """A syslog facility name or number -> its number; ValueError for an unknown name."""
    text = str(value).strip().lower()
    if text.isdigit():
        return int(text)
    names = logging.handlers.SysLogHandler.facility_names
    if text not in names:
        raise ValueError(f"unknown syslog facility (known: {', '.join(sorted(names))})")
    return names[text]


def syslog_logopt(value: Any) -> str:
    """``pid,nofatal`` (separated by commas, ``|`` or spaces), checked and normalised."""
    logopt_words(value)
    return ",".join(dict.fromkeys(w for w in re.split(r"[,|\s]+", str(value).strip()) if w))


def logopt_words(value: Any) -> frozenset[str]:
    """``syslog_logopt`` -> its set of openlog options; ValueError for unknown words."""
    words = {word for word in re.split(r"[,|\s]+", str(value or "").strip()) if word}
    unknown = sorted(words - SYSLOG_LOGOPTS)
    if unknown:
        raise ValueError(f"unknown word(s) {', '.join(unknown)} "
                         f"(known: {', '.join(sorted(SYSLOG_LOGOPTS))})")
    return frozenset(words)


def syslog_logsock(value: Any) -> str:
    """``native``/``unix``/``stream``/``inet``/``tcp``/``udp``, or an absolute socket path."""
    text = "" if value is None else str(value).strip()
    if text and not text.startswith("/") and text not in SYSLOG_LOGSOCKS:
        raise ValueError(f"expected one of {', '.join(SYSLOG_LOGSOCKS)} or an absolute path "
                         "of a unix socket")
    return text


def log_function(value: Any) -> Callable[[int, str], Any] | str | None:
    """A callable ``(level, msg)``, or the name of a method of the server (checked at start)."""
    if value is None or value == "":
        return None
    if callable(value) or isinstance(value, str):
        function: Callable[[int, str], Any] | str = value
        return function
    raise TypeError("expected a callable (level, msg) or the name of a server method")


def resolve_log_function(value: Callable[[int, str], Any] | str | None,
                         server: Any) -> Callable[[int, str], Any] | None:
    """The ``log_function`` option's value made callable: a method name is looked up on
    ``server``. Run at start (initialize_logging) and by the HUP dry run; touches nothing.

    A name must be meant for it (it comes from a command line or a conf file, so it must not
    reach any attribute): the name of a public method (or other callable) that a class of
    ``server`` defines outside the ``gnetserver`` package, callable as ``(level, msg)``. A
    name starting with ``_`` (``__class__``), a method gnetserver defines (``handle_term``,
    ``log``, ``process_request``, even when a subclass overrides it), an instance attribute
    or one that does not take ``(level, msg)`` is a ConfigError naming the option."""
    if not isinstance(value, str):
        return value
    where = f"option 'log_function': {value!r}"
    if value.startswith("_"):
        raise ConfigError(f"{where} is private (starts with '_'): name a public method of "
                          f"{type(server).__name__} that takes (level, msg)")
    if not any(value in vars(cls) for cls in type(server).__mro__):
        raise ConfigError(f"{where} is not a method of {type(server).__name__}")
    if _framework_name(value, type(server)):
        raise ConfigError(f"{where} is a method of gnetserver itself, not a log function: "
                          f"name a method your class adds, taking (level, msg)")
    method = getattr(server, value, None)
    if not callable(method):
        raise ConfigError(f"{where} is not a method of {type(server).__name__}")
    try:
        inspect.signature(method).bind(0, "")
    except TypeError:
        raise ConfigError(f"{where} does not take (level, msg)") from None
    except ValueError:  # no signature to read (a builtin): trust it
        pass
    function: Callable[[int, str], Any] = method
    return function


def _framework_name(name: str, cls: type) -> bool:
    """Whether a class of the gnetserver package in ``cls``'s MRO defines ``name`` (a hook or
    step a subclass may override: still not a log function)."""
    return any(name in vars(base) and (base.__module__ == "gnetserver"
                                       or base.__module__.startswith("gnetserver."))
               for base in cls.__mro__)


def syslog_address(logsock: str) -> tuple[Any, int | None]:
    """``syslog_logsock`` -> (address, socktype) for :class:`SyslogHandler`."""
    if logsock.startswith("/"):
        return logsock, None
    if logsock in ("tcp", "inet"):
        return ("localhost", logging.handlers.SYSLOG_TCP_PORT), socket.SOCK_STREAM
    if logsock == "udp":
        return ("localhost", logging.handlers.SYSLOG_UDP_PORT), socket.SOCK_DGRAM
    path = next((p for p in LOCAL_SYSLOG_PATHS if os.path.exists(p)), LOCAL_SYSLOG_PATHS[0])
    return path, (socket.SOCK_STREAM if logsock == "stream" else None)
