"""The metrics of :mod:`gnetserver.metrics`, recorded with prometheus-client.

Rules of this module:

* The metric objects are built from the one table, :data:`gnetserver.metric_names.METRICS`,
  in a registry of this server's own (two servers in one process never mix their figures).
* Hot path: a connection's label children (``labels(port, proto)``) are looked up once per
  listener and cached (:class:`_PortSeries`); a connection then costs a handful of
  increments, at its start, its handshake's end and its end.
* PreFork (``multiprocess_dir``): prometheus-client's multiprocess mode. Each process (the
  parent and every worker) writes its values to memory-mapped files of its own in a private
  temporary directory (``PROMETHEUS_MULTIPROC_DIR`` is set to it for the process, and
  prometheus-client's value class switched to the multiprocess one before any metric
  exists); a scrape, served by whichever worker accepts it, merges every process's files
  (``MultiProcessCollector``): counters add up (a dead worker's counts stay), gauges of live
  processes add up (``livesum``) or take the largest (``livemax``: the certificates, set by
  the parent). The parent calls :meth:`PrometheusMetrics.worker_ended` when it reaps a worker
  (``mark_process_dead``: its live gauges go) and, at close, removes the directory and puts
  the variable and the value class back as they were. A program's own prometheus-client
  metrics made after the start join the exposition too.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from .metric_names import HANDSHAKE_BUCKETS, METRICS
from .metrics import Metrics, ServedCertificate, tcp_bytes

__all__ = ["PrometheusMetrics"]

#: prometheus-client's multiprocess directory variable.
_ENV = "PROMETHEUS_MULTIPROC_DIR"


class _PortSeries:
    """The label children of one listener (``port``, ``proto``), looked up once."""

    __slots__ = ("accepted", "accept_failures", "active", "denied", "duration", "failures",
                 "handshakes", "labels", "negotiated", "received", "resumed", "sent",
                 "_metrics", "counts_bytes")

    def __init__(self, metrics: dict[str, Any], port: str, proto: str, counts_bytes: bool):
        self._metrics = metrics
        self.labels = (port, proto)
        self.accepted = metrics["gnetserver_connections_accepted"].labels(port, proto)
        self.active = metrics["gnetserver_connections_active"].labels(port, proto)
        self.denied = metrics["gnetserver_connections_denied"].labels(port, proto)
        # made now: under PreFork a first use opens the value file, which fails at EMFILE
        self.accept_failures = metrics["gnetserver_accept_failures"].labels(port, proto)
        self.handshakes = metrics["gnetserver_tls_handshakes"].labels(port, proto)
        self.duration = metrics["gnetserver_tls_handshake_duration_seconds"].labels(port, proto)
        self.resumed = metrics["gnetserver_tls_sessions_resumed"].labels(port, proto)
        self.received = metrics["gnetserver_received_bytes"].labels(port, proto)
        self.sent = metrics["gnetserver_sent_bytes"].labels(port, proto)
        self.failures: dict[str, Any] = {}
        self.negotiated: dict[tuple[str, str], Any] = {}
        self.counts_bytes = counts_bytes

    def failure(self, reason: str) -> Any:
        """The failure counter of ``reason`` (cached)."""
        child = self.failures.get(reason)
        if child is None:
            child = self.failures[reason] = self._metrics[
                "gnetserver_tls_handshake_failures"].labels(*self.labels, reason)
        return child

    def negotiation(self, version: str, cipher: str) -> Any:
        """The counter of one (version, cipher) pair (cached)."""
        key = (version, cipher)
        child = self.negotiated.get(key)
        if child is None:
            child = self.negotiated[key] = self._metrics["gnetserver_tls_negotiated"].labels(
                *self.labels, version, cipher)
        return child

    # -- a connection's life: ``with series:`` (stateless, so one object serves them all)
    def __enter__(self) -> None:
        self.accepted.inc()
        self.active.inc()

    def __exit__(self, *exc_info: object) -> None:
        self.active.dec()


class _CountedSlot:
    """A personality's session slot, counted: waiting, then in use (stateless)."""

    __slots__ = ("slot", "_in_use", "_waiting")

    def __init__(self, slot: Any, in_use: Any, waiting: Any) -> None:
        self.slot, self._in_use, self._waiting = slot, in_use, waiting

    def __enter__(self) -> Any:
        self._waiting.inc()
        try:
            entered = self.slot.__enter__()
        finally:
            self._waiting.dec()
        self._in_use.inc()
        return entered

    def __exit__(self, *exc_info: Any) -> Any:
        self._in_use.dec()
        return self.slot.__exit__(*exc_info)


class PrometheusMetrics(Metrics):
    """The server's metrics in prometheus-client objects (see the module rules).

    Args:
        multiprocess_dir: PreFork: the parent's private directory for the processes' values
            (made by :meth:`for_prefork`); None for one process.
    """

    enabled: ClassVar[bool] = True

    def __init__(self, multiprocess_dir: str | None = None) -> None:
        self._dir = multiprocess_dir
        self._owner = os.getpid()
        # What close() puts back: the variable as it was, the value class as it was.
        self._saved = os.environ.get(_ENV), values.ValueClass
        self.registry = CollectorRegistry()
        if multiprocess_dir is not None:
            os.environ[_ENV] = multiprocess_dir
            values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]
            MultiProcessCollector(self.registry, path=multiprocess_dir)  # type: ignore[no-untyped-call]
            target: CollectorRegistry | None = None  # the files are the registry
        else:
            target = self.registry
        self._metrics: dict[str, Any] = {}
        for spec in METRICS:
            if spec.kind == "counter":
                metric: Any = Counter(spec.name, spec.help, spec.labels, registry=target)
            elif spec.kind == "gauge":
                metric = Gauge(spec.name, spec.help, spec.labels, registry=target,
                               multiprocess_mode=spec.live)  # type: ignore[arg-type]
            else:
                metric = Histogram(spec.name, spec.help, spec.labels, registry=target,
                                   buckets=HANDSHAKE_BUCKETS)
            self._metrics[spec.name] = metric
        self._ports: dict[Any, _PortSeries] = {}
        self._slot: _CountedSlot | None = None
        self._reloads = {result: self._metrics["gnetserver_reloads"].labels(result)
                         for result in ("ok", "failed")}
        for child in self._reloads.values():  # both series exist from the start (rate())
            child.inc(0)

    @classmethod
    def for_prefork(cls) -> PrometheusMetrics:
        """The metrics of a PreFork server: multiprocess mode in a new private directory."""
        return cls(tempfile.mkdtemp(prefix="gnetserver-metrics-"))

    def _series(self, listener: Any) -> _PortSeries:
        series = self._ports.get(listener)
        if series is None:
            spec = listener.spec
            counts = not spec.is_unix and not spec.is_datagram
            series = self._ports[listener] = _PortSeries(self._metrics, str(listener.port),
                                                         listener.proto, counts)
        return series

    def connection(self, listener: Any) -> _PortSeries:
        return self._series(listener)

    def session(self, slot: Any) -> Any:
        counted = self._slot
        if counted is None or counted.slot is not slot:
            counted = self._slot = _CountedSlot(
                slot, self._metrics["gnetserver_sessions_in_use"],
                self._metrics["gnetserver_sessions_waiting"])
        return counted

    def handshake_done(self, client: Any, started: float) -> None:
        tls = client.tls
        if tls is None:
            return
        series = self._series(client.listener)
        series.handshakes.inc()
        series.duration.observe(time.perf_counter() - started)
        if tls.session_reused:
            series.resumed.inc()
        series.negotiation(tls.version or "", tls.cipher or "").inc()

    def handshake_failed(self, listener: Any, reason: str) -> None:
        if listener.protocol.is_tls:  # a plain port's post_accept failing is no handshake
            self._series(listener).failure(reason).inc()

    def denied(self, listener: Any) -> None:
        self._series(listener).denied.inc()

    def accept_failed(self, listener: Any) -> None:
        self._series(listener).accept_failures.inc()

    def session_ended(self, client: Any) -> None:
        series = self._series(client.listener)
        if not series.counts_bytes:
            return
        counted = tcp_bytes(client.sock)
        if counted is not None:
            series.received.inc(counted[0])
            series.sent.inc(counted[1])

    def reloaded(self, ok: bool) -> None:
        self._reloads["ok" if ok else "failed"].inc()

    def log_dropped(self, count: int = 1) -> None:
        self._metrics["gnetserver_log_lines_dropped"].inc(count)

    def certificates(self, served: Sequence[ServedCertificate],
                     expiring: Sequence[ServedCertificate]) -> None:
        expiry = self._metrics["gnetserver_certificate_expiry_timestamp_seconds"]
        warning = self._metrics["gnetserver_certificate_expiring"]
        if self._dir is None:  # one process: a certificate no longer served goes
            expiry.clear()
            warning.clear()
        soon = {(cert.port, cert.sni) for cert in expiring}
        for cert in served:
            expiry.labels(cert.port, cert.sni).set(cert.not_after)
            warning.labels(cert.port, cert.sni).set(1 if (cert.port, cert.sni) in soon else 0)

    def acme_order(self, result: str) -> None:
        self._metrics["gnetserver_acme_orders"].labels(result).inc()

    def worker_ended(self, pid: int) -> None:
        if self._dir is not None:
            mark_process_dead(pid, self._dir)  # type: ignore[no-untyped-call]

    def exposition(self, accept: str) -> tuple[bytes, str]:
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type

    def close(self) -> None:
        if self._dir is not None and os.getpid() == self._owner:
            shutil.rmtree(self._dir, ignore_errors=True)
            env, values.ValueClass = self._saved
            if os.environ.get(_ENV) == self._dir:  # unless someone set it since
                if env is None:
                    del os.environ[_ENV]
                else:
                    os.environ[_ENV] = env
            self._dir = None
