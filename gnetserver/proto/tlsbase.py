"""The base of the TLS protocols: one class per TLS backend, the rest shared.

Rules of this module:

* A TLS protocol (proto ``ssl``: pyOpenSSL, :mod:`.ssl`; proto ``ssleay``: the stdlib ``ssl``
  module, :mod:`.ssleay`) differs from another only in its context :attr:`TLSProtocol.builder`,
  its connection factory :meth:`TLSProtocol.connect` and the library text
  :meth:`TLSProtocol.tls_library`.
* The context comes from the server's :class:`~gnetserver.tls.TLSContexts` (``tls_contexts``,
  created by ``bind`` and by the HUP preflight, passed to the constructor), so ports with equal
  options share one and ``reload_tls`` rebuilds every backend's contexts together. No registry
  (None) is a programming error: RuntimeError, never a private registry that a reload would
  miss.
* The handshake runs in the connection's own greenlet (``post_accept``), bounded by
  ``timeout_handshake``. On failure ``post_accept`` closes the connection itself before the
  exception propagates: a timeout or a kill (an exception that is not an ``Exception``, such
  as GreenletExit) aborts it (no alert, no drain), any other error closes it gracefully.
* ``SSL_error_trap`` is a callback of the server's handshake failure path, not a context
  setting: it is checked here (callable) and kept as :attr:`TLSProtocol.error_trap`, and left
  out of the options the context is built and shared from (so ports differing only in their
  trap still share a context, and every backend takes it).
* Close and abort are the :class:`~gnetserver.proto.stream.TLSStream`'s: close_notify once,
  bounded by :data:`~gnetserver.tls.connection.SHUTDOWN_SECONDS`, then the lingering close;
  the connection's resources are released even when the closing greenlet is killed. Abort: no
  alert, no drain.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import HandshakeTimeout
from ..tls.connection import SHUTDOWN_SECONDS
from ..tls.registry import Builder, ContextHandle
from ..tls.util import require_callable
from .stream import TLSStream, linger_close
from .tcp import TCPProtocol, set_nodelay

if TYPE_CHECKING:
    from ..ports import PortSpec
    from ..tls.registry import TLSContexts

__all__ = ["SHUTDOWN_SECONDS", "TLSProtocol"]


class TLSProtocol(TCPProtocol):
    """A stream over TLS; subclasses name the backend (see the module rules)."""

    is_tls: ClassVar[bool] = True
    #: Builds this backend's contexts from a port's resolved options (a registry Builder).
    builder: ClassVar[Builder]

    def __init__(self, spec: PortSpec, options: Mapping[str, Any],
                 contexts: TLSContexts | None) -> None:
        """At bind: get this port's context from the server's TLSContexts ``contexts`` (shared
        with every port of this backend whose SSL_* options are equal; built now if new,
        ConfigError if the options are bad or not supported by this backend). RuntimeError
        when ``contexts`` is None."""
        self.spec = spec
        self.options = dict(options)
        if contexts is None:
            raise RuntimeError(f"port {spec}: the server has no TLS registry (tls_contexts); "
                               "bind() creates it before making the protocols")
        trap = self.options.get("SSL_error_trap")
        #: ``SSL_error_trap``: called by the server as ``trap(client, error)`` when a
        #: handshake on this port fails (None: not given).
        self.error_trap: Callable[[Any, BaseException], Any] | None = (
            None if trap is None else require_callable(trap, "SSL_error_trap", f"port {spec}"))
        context_options = {k: v for k, v in self.options.items() if k != "SSL_error_trap"}
        # Read through the class: a function stored as a class attribute is not a method.
        self.tls_handle: ContextHandle = contexts.handle(context_options, f"port {spec}",
                                                         type(self).builder)

    @property
    def context(self) -> Any:
        """The context new connections get (replaced by reload_tls and rotation)."""
        return self.tls_handle.context

    def tls_library(self) -> str:
        """The TLS library of this backend with its version, for bind's "TLS by ..." line."""
        raise NotImplementedError

    def connect(self, sock: Any) -> TLSStream:
        """Per connection, from :meth:`post_accept`: the backend's server-side connection over
        the accepted ``sock``, not yet handshaken, as a stream (which owns the socket from
        then on; on ssleay it is the wrapped socket, the accepted one being detached)."""
        raise NotImplementedError

    def post_accept(self, sock: Any, timeout: float) -> TLSStream:
        """Per connection, in its greenlet: turn Nagle off and run the TLS handshake within
        ``timeout`` seconds; returns the stream.

        On failure the connection is closed here (see the module rules), then the exception
        propagates: HandshakeTimeout, TLSError, ConnectionAbortedError, OSError."""
        set_nodelay(sock)
        try:
            stream = self.connect(sock)
        except Exception:
            linger_close(sock)
            raise
        except BaseException:
            sock.close()
            raise
        try:
            stream.tls.do_handshake(timeout)
        except HandshakeTimeout:
            stream.abort()
            raise
        except Exception:
            stream.close()
            raise
        except BaseException:  # killed (GreenletExit): no alert, no drain
            stream.abort()
            raise
        return stream
