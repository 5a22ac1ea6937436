"""Blocking code inside a gevent server: the thread pool, and monkey patching at start.

Rules of this module:

* :func:`run_blocking` runs one call in the hub's thread pool
  (``gevent.get_hub().threadpool``): the calling greenlet waits for it, every other greenlet
  runs meanwhile. For a library that blocks without monkey patching (a C extension, a
  driver with its own sockets). The pool has ``threadpool.maxsize`` threads (gevent's default
  10; raise it with ``gevent.get_hub().threadpool.maxsize = n``); calls beyond wait for a
  thread.
* :func:`monkey_patch` applies ``gevent.monkey.patch_all()`` when a server's ``monkey_patch``
  option is on, unless the process is patched already, and refuses (ConfigError, with what
  to do instead) where gevent says patching late is unsafe: outside the main thread, with
  other threads running (their locks and waits are not cooperative), or when modules other
  than the stdlib's and gevent's already hold the stdlib ``ssl.SSLContext`` (a reference or
  a subclass: gevent's "Monkey-patching ssl after ssl has already been imported" case; they
  would keep the blocking class). Warnings gevent gives anyway are logged at level 1.
"""

from __future__ import annotations

import sys
import threading
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
from gevent import monkey

from .errors import ConfigError

__all__ = ["monkey_patch", "patched", "run_blocking"]

T = TypeVar("T")

#: Modules allowed to hold the stdlib's SSLContext before patching: the stdlib's and gevent's.
_OWNERS = ("ssl", "_ssl", "gevent.", "gevent")


def run_blocking(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a thread of gevent's pool; its value (or its exception,
    raised here). The calling greenlet yields meanwhile."""
    result: T = gevent.get_hub().threadpool.apply(fn, args, kwargs)
    return result


def patched() -> bool:
    """True when gevent's monkey patching is in effect (socket and time patched)."""
    return bool(monkey.is_module_patched("socket") and monkey.is_module_patched("time"))


def _ssl_holders() -> list[str]:
    """Modules (not the stdlib's ssl, not gevent's) holding the stdlib ``ssl.SSLContext`` by
    reference, or defining a subclass of it: what patching now would not reach."""
    ssl = sys.modules.get("ssl")
    if ssl is None or monkey.is_module_patched("ssl"):
        return []
    context = ssl.SSLContext
    holders = []
    for name, module in list(sys.modules.items()):
        if module is None or name.startswith(_OWNERS):
            continue
        try:
            values = list(vars(module).values())
        except TypeError:
            continue
        if any(value is context for value in values):
            holders.append(name)
    for subclass in context.__subclasses__():
        if not subclass.__module__.startswith(_OWNERS):
            holders.append(f"{subclass.__module__}.{subclass.__qualname__}")
    return sorted(set(holders))


def unsafe_reason() -> str | None:
    """Why monkey patching now would be unsafe; None when it is not."""
    if threading.current_thread() is not threading.main_thread():
        return "the server does not run in the main thread"
    others = [thread.name for thread in threading.enumerate()
              if thread is not threading.current_thread() and thread.is_alive()]
    if others:
        return f"other threads run already ({', '.join(others)})"
    holders = _ssl_holders()
    if holders:
        return (f"modules hold the stdlib ssl classes already ({', '.join(holders)}): they "
                "would keep the blocking ones")
    return None


def monkey_patch(log: Callable[[int, str], None]) -> bool:
    """Apply ``patch_all()`` unless done already (see the module rules); True when this call
    patched. Raises ConfigError naming the option when it would be unsafe."""
    if patched():
        return False
    problem = unsafe_reason()
    if problem is not None:
        raise ConfigError(f"option 'monkey_patch': cannot patch at start: {problem}; patch "
                          "at the very top of the program instead (from gevent import monkey; "
                          "monkey.patch_all()), or run `gnetserver --monkey-patch`")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        monkey.patch_all()
    for warning in caught:
        log(1, f"monkey_patch: gevent warns: {warning.message}")
    log(2, "monkey_patch: gevent.monkey.patch_all() applied")
    return True
