"""The TLS contexts of one server: shared between ports, rebuilt together, rotated on time.

Rules of this module:

* **One context per distinct TLS configuration.** :meth:`TLSContexts.handle` builds a context
  the first time it sees a port's resolved ``SSL_*`` options and hands every later port with
  equal options and the same builder the same :class:`ContextHandle`. The builder is
  :func:`~gnetserver.tls.context.build_context` (pyOpenSSL, proto ``ssl``) unless the protocol
  passes its own (proto ``ssleay``: a stdlib ``ssl`` context), so one registry reloads both.
  OpenSSL keeps session caches and ticket keys per context, so sessions resume across all
  the listeners that share one (see :mod:`.tickets`). Options are compared by value for text
  and numbers and by identity for objects (callables, certificates, keys).
* **A handle is what a protocol holds**, never the context itself: ``handle.context`` is the
  current one. Replacing it affects new connections only; a connection keeps the context it
  was created with (OpenSSL counts its references) until it closes.
* **Reload is all or nothing.** :meth:`TLSContexts.reload` builds a new context for every
  handle first; only if all succeed are they swapped in, otherwise the ConfigError of the
  first failure propagates and nothing changes.
* **Rotation** (``SSL_ticket_key_rotation``) is checked lazily when a protocol reads
  ``handle.context`` for a new connection: no timer, no greenlet. A rotation that fails keeps
  the current context and logs why.
* Everything runs in the server's hub thread; nothing here blocks on the network (building a
  context reads a few local files).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ConfigError
from .context import build_context
from .tickets import rotation_seconds
from .util import Warn, default_warn

__all__ = ["Builder", "ContextHandle", "TLSContexts"]

#: Builds one context from resolved options: ``(options, where, warn) -> context``; raises
#: ConfigError when the options or the files they name are bad.
Builder = Callable[[Mapping[str, Any], str, Warn], Any]


def _freeze(value: Any, keep: list[Any]) -> Any:
    """A hashable stand-in for an option value; objects count by identity (kept alive in
    ``keep`` so that their ids stay unique)."""
    if value is None or isinstance(value, (str, bytes, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return ("dict", tuple(sorted((repr(k), _freeze(v, keep)) for k, v in value.items())))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(_freeze(v, keep) for v in value))
    keep.append(value)
    return ("id", id(value))


class ContextHandle:
    """The current context of one TLS configuration, shared by the ports that have it.

    Attributes:
        options: the resolved ``SSL_*`` options it is built from.
        where: the first port that asked for it (error messages start with it).
        ports: every port that uses it.
        built_at: ``time.monotonic()`` of the last (re)build.
        rotation: ``SSL_ticket_key_rotation`` in seconds (0: never).
        builder: what builds its contexts (default: pyOpenSSL's ``build_context``).
    """

    def __init__(self, options: Mapping[str, Any], where: str, warn: Warn,
                 builder: Builder = build_context) -> None:
        self.options = dict(options)
        self.where = where
        self.ports = [where]
        self.builder = builder
        self._warn = warn
        # Built first: a builder that does not know an option says so before it is parsed.
        self._context = self.build()
        self.rotation = rotation_seconds(self.options.get("SSL_ticket_key_rotation"), where)
        self.built_at = time.monotonic()

    def build(self) -> Any:
        """A new context from the options (files are read again); ConfigError if bad."""
        return self.builder(self.options, self.where, self._warn)

    def swap(self, context: Any) -> None:
        """Make ``context`` the one new connections get."""
        self._context = context
        self.built_at = time.monotonic()

    def reconfigure(self, options: Mapping[str, Any]) -> None:
        """Build from ``options`` and, if that works, make them this handle's options and the
        new context the one new connections get (later reloads build from them too). Used
        when the options themselves change at run time (ACME: an issued certificate replaces
        the interim one). ConfigError: nothing changed."""
        context = self.builder(options, self.where, self._warn)
        self.options = dict(options)
        self.swap(context)

    @property
    def context(self) -> Any:
        """The context for a new connection (rotated first if its time has come)."""
        if self.rotation and time.monotonic() - self.built_at >= self.rotation:
            self._rotate()
        return self._context

    def rotation_problem(self) -> str | None:
        """Why a ticket-key rotation would fail now (the files read again by the user the
        process now is), or None when it would work or no rotation is set. Builds a context
        and throws it away: call it once, at start."""
        if not self.rotation:
            return None
        try:
            self.build()
        except Exception as exc:
            return f"{self.where}: {_reason(exc)}"
        return None

    def _rotate(self) -> None:
        try:
            self.swap(self.build())
        except Exception as exc:  # whatever it is, new connections keep the current context
            self.built_at = time.monotonic()  # try again one period later
            self._warn(f"{self.where}: session-ticket key rotation failed, keeping the "
                       f"current keys and certificates: {_reason(exc)}")


def _reason(exc: Exception) -> str:
    """The failure's text (its type too unless a ConfigError); a permission problem says which
    user the files were read as (after a privilege drop: the service user, every time)."""
    text = str(exc) if isinstance(exc, ConfigError) else f"{type(exc).__name__}: {exc}"
    cause: BaseException | None = exc
    for _ in range(8):  # a short chain: ConfigError from OSError
        if cause is None:
            break
        if isinstance(cause, PermissionError):
            return (f"{text} (read as uid {os.geteuid()}: rotation fails until the files are "
                    "readable by that user)")
        cause = cause.__cause__ or cause.__context__
    return text


class TLSContexts:
    """The TLS contexts of one server (the server creates one at bind).

    Args:
        warn: receives warnings of every context (server: level 1 log lines).
    """

    def __init__(self, warn: Warn | None = None) -> None:
        self._warn = default_warn if warn is None else warn
        self._handles: dict[Any, ContextHandle] = {}
        self._keep: list[Any] = []

    def handle(self, options: Mapping[str, Any], where: str,
               builder: Builder = build_context) -> ContextHandle:
        """The handle for a port with these resolved options and this builder: shared when
        both equal an earlier port's, else built now (ConfigError if the options are bad)."""
        frozen = _freeze({k: v for k, v in options.items() if k.startswith("SSL_")}, self._keep)
        key = (_freeze(builder, self._keep), frozen)
        found = self._handles.get(key)
        if found is not None:
            found.ports.append(where)
            return found
        created = ContextHandle(options, where, self._warn, builder)
        self._handles[key] = created  # only once built: a failed build leaves no handle
        return created

    @property
    def handles(self) -> list[ContextHandle]:
        """Every distinct context handle, in creation order."""
        return list(self._handles.values())

    def reload(self) -> None:
        """Rebuild every context from its options and files; all or nothing.

        Raises:
            ConfigError: a context could not be built; every current context stays.
        """
        fresh = [(handle, handle.build()) for handle in self._handles.values()]
        for handle, context in fresh:
            handle.swap(context)
