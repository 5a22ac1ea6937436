"""The one table of gnetserver's Prometheus metrics: names, kinds, labels, help texts.

Rules of this module:

* Every metric the server exports is declared once, here, as a :class:`MetricSpec`;
  :mod:`gnetserver.metrics_prometheus` builds the prometheus-client objects from this table and
  :mod:`gnetserver.docs` renders README.rst's metric list from it (``--check`` fails when
  they disagree), so the code, the exposition and the documentation cannot drift apart.
* Names follow Prometheus' conventions: ``gnetserver_`` first, base units (seconds, bytes),
  ``_total`` for counters (prometheus-client adds it to a counter's name), a timestamp gauge
  ends in ``_timestamp_seconds``.
* Pure: imports neither gevent, OpenSSL, cryptography nor prometheus_client (``--help`` and
  the docs read it).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ACME_ORDER_RESULTS", "FAILURE_REASONS", "HANDSHAKE_BUCKETS", "METRICS",
           "MetricSpec"]

#: The ``reason`` label values of ``gnetserver_tls_handshake_failures_total``.
FAILURE_REASONS: tuple[str, ...] = (
    "timeout", "peer_closed", "protocol_error", "no_shared_cipher", "client_cert_refused",
    "denied_before_tls", "evicted",
)

#: The ``result`` label values of ``gnetserver_acme_orders_total``.
ACME_ORDER_RESULTS: tuple[str, ...] = ("issued", "renewed", "failed")

#: Buckets (seconds) of the handshake duration histogram: a loopback ECDSA handshake takes
#: about 1 ms, a slow client over a long path a few hundred; the last is timeout_handshake's
#: default.
HANDSHAKE_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)


@dataclass(frozen=True)
class MetricSpec:
    """One exported metric.

    Attributes:
        name: the metric name without a counter's ``_total`` (prometheus-client adds it).
        kind: ``counter``, ``gauge`` or ``histogram``.
        labels: label names, in order.
        help: the HELP text (one sentence; README's meaning column).
        live: gauges only, under PreFork (prometheus-client's multiprocess mode): how the
            values of the processes combine: ``livesum`` (the live processes' values added),
            ``livemax`` (the largest).
    """

    name: str
    kind: str
    labels: tuple[str, ...]
    help: str
    live: str = "livesum"

    @property
    def exposed(self) -> str:
        """The name as scraped: counters end in ``_total``."""
        return f"{self.name}_total" if self.kind == "counter" else self.name


_PORT = ("port", "proto")

#: Every metric of the server, in documentation order.
METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("gnetserver_connections_accepted", "counter", _PORT,
               "Connections accepted, by listening port and protocol."),
    MetricSpec("gnetserver_connections_active", "gauge", _PORT,
               "Connections open now (in their handshake, waiting for a session slot or in "
               "a session), by port and protocol."),
    MetricSpec("gnetserver_connections_denied", "counter", _PORT,
               "Connections refused by the access rules (allow/deny/cidr_allow/cidr_deny, "
               "before the TLS handshake on TLS ports) or by allow_deny_hook."),
    MetricSpec("gnetserver_accept_failures", "counter", _PORT,
               "accept() calls that failed for want of descriptors, buffers or memory "
               "(EMFILE, ENFILE, ENOBUFS, ENOMEM); accepting then pauses with back-off."),
    MetricSpec("gnetserver_tls_handshakes", "counter", _PORT,
               "TLS handshakes completed."),
    MetricSpec("gnetserver_tls_handshake_failures", "counter", (*_PORT, "reason"),
               "TLS handshakes that failed, by reason: " + ", ".join(FAILURE_REASONS) + "."),
    MetricSpec("gnetserver_tls_handshake_duration_seconds", "histogram", _PORT,
               "Seconds from the accept to the end of a completed TLS handshake."),
    MetricSpec("gnetserver_tls_sessions_resumed", "counter", _PORT,
               "Completed TLS handshakes that resumed a session (ticket or session id)."),
    MetricSpec("gnetserver_tls_negotiated", "counter", (*_PORT, "version", "cipher"),
               "Completed TLS handshakes by protocol version and cipher suite."),
    MetricSpec("gnetserver_sessions_in_use", "gauge", (),
               "max_servers session slots in use (all worker processes together)."),
    MetricSpec("gnetserver_sessions_waiting", "gauge", (),
               "Connections done with their handshake that wait for a session slot."),
    MetricSpec("gnetserver_received_bytes", "counter", _PORT,
               "TCP payload bytes received (TLS records included), from TCP_INFO "
               "(tcpi_bytes_received) once per session at its close; tcp, ssl and ssleay "
               "ports on Linux."),
    MetricSpec("gnetserver_sent_bytes", "counter", _PORT,
               "TCP payload bytes sent and acknowledged by the peer (TLS records included), "
               "from TCP_INFO (tcpi_bytes_acked) once per session, before its close_notify."),
    MetricSpec("gnetserver_reloads", "counter", ("result",),
               "Reloads (reload_tls(), and HUP: PreFork reloads in place; Single re-executes, "
               "so only a refused HUP counts there), by result: ok or failed."),
    MetricSpec("gnetserver_log_lines_dropped", "counter", (),
               "Log lines syslog had no room for (log_file Sys::Syslog), dropped unsent."),
    MetricSpec("gnetserver_certificate_expiry_timestamp_seconds", "gauge", ("port", "sni"),
               "When each served certificate expires (Unix time), by port and SNI name "
               "('' for the default certificate).", live="livemax"),
    MetricSpec("gnetserver_certificate_expiring", "gauge", ("port", "sni"),
               "1 when the served certificate expires within SSL_cert_expiry_warning days "
               "(or has expired), else 0.", live="livemax"),
    MetricSpec("gnetserver_acme_orders", "counter", ("result",),
               "ACME orders (SSL_acme_domains) that ended, by result: " +
               ", ".join(ACME_ORDER_RESULTS) + " (failed: retried later)."),
)
