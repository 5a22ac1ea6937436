"""Automatic certificates from an ACME CA (RFC 8555): TLS-ALPN-01 (RFC 8737) and HTTP-01.

* :class:`~gnetserver.acme.manager.AcmeManager`: what the server owns; plans the ports of
  ``SSL_acme_domains``, orders and renews in the background, swaps contexts in place.
* :mod:`.client`: the RFC 8555 client (josepy + urllib, run in gevent's thread pool).
* :mod:`.store`: the files of ``SSL_acme_dir``; :mod:`.http01`: the HTTP-01 responder.
* The TLS side (the challenge certificate and who gets it) is
  :mod:`gnetserver.tls.acme_alpn`; the options are checked by :mod:`gnetserver.acme_plan`.
"""

from .client import AcmeClient, AcmeProblem
from .manager import AcmeManager

__all__ = ["AcmeClient", "AcmeManager", "AcmeProblem"]
