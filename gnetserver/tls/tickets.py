"""Session resumption: ``SSL_session_id_context`` and ``SSL_ticket_key_rotation``.

What resumes, and where:

* OpenSSL keeps a session cache (TLS 1.2 session ids, TLS 1.3 stateful tickets) and random
  session-ticket keys (TLS 1.2 and 1.3 tickets) per ``SSL_CTX``. A ticket or a cached session
  only resumes on the context that issued it, with the same session id context.
* The server shares contexts (:class:`~gnetserver.tls.registry.TLSContexts`): every port whose
  TLS options are the same uses one context, so a session made on one listener resumes on the
  others (and on every SNI name: OpenSSL keeps the first context's cache and keys). Ports with
  different TLS options have separate contexts and do not resume each other's sessions.
* Every context gets the same session id context (:data:`DEFAULT_SESSION_ID_CONTEXT` unless
  ``SSL_session_id_context`` says otherwise): without one, OpenSSL refuses to resume sessions
  once client certificates are verified (IO::Socket::SSL generates one in that case too).

Ticket keys (IO::Socket::SSL's ``SSL_ticket_keycb``): pyOpenSSL exposes neither
``SSL_CTX_set_tlsext_ticket_key_evp_cb`` nor ``SSL_CTX_set_tlsext_ticket_keys``, so keys cannot be
chosen, shared between processes or kept across a rebuild; ``SSL_ticket_keycb`` is refused at
start (the reason: :data:`gnetserver.ssl_names.TICKET_KEYCB_REFUSED`). The equivalent is rotation
by rebuilding: ``SSL_ticket_key_rotation`` seconds after a context was built, the next connection
on it triggers a rebuild from the same options (files are read again, as by ``reload_tls()``),
which brings fresh ticket keys and an empty session cache. Sessions issued before then get a full
handshake once. A rebuild that fails keeps the current context, logs why and is tried again one
period later. ``reload_tls()`` rotates too.
"""

from __future__ import annotations

import hashlib

from OpenSSL import SSL

from ..errors import ConfigError
from .util import Build, as_bytes, to_seconds

__all__ = ["DEFAULT_SESSION_ID_CONTEXT", "apply_session", "rotation_seconds"]

#: OpenSSL's limit for a session id context (SSL_MAX_SID_CTX_LENGTH).
_MAX_SID_CTX = 32

#: The session id context of every context unless ``SSL_session_id_context`` is given.
DEFAULT_SESSION_ID_CONTEXT = hashlib.sha256(b"gnetserver session id context").digest()


def apply_session(ctx: SSL.Context, b: Build) -> None:
    """Set the session id context; check ``SSL_ticket_key_rotation`` (used by the registry)."""
    value = b.get("SSL_session_id_context")
    if value is None:
        sid = DEFAULT_SESSION_ID_CONTEXT
    elif isinstance(value, (bytes, str)) and 0 < len(as_bytes(value)) <= _MAX_SID_CTX:
        sid = as_bytes(value)
    else:
        raise ConfigError(f"{b.where}: invalid SSL_session_id_context {value!r} (1 to "
                          f"{_MAX_SID_CTX} bytes of text)")
    ctx.set_session_id(sid)
    rotation_seconds(b.opts.get("SSL_ticket_key_rotation"), b.where)


def rotation_seconds(value: object, where: str) -> float:
    """``SSL_ticket_key_rotation`` in seconds; 0 (the default) means never."""
    return 0.0 if value is None else to_seconds(value, "SSL_ticket_key_rotation", where)
