"""AcmeManager: the certificates of a server's ``SSL_acme_domains``, obtained and kept fresh.

Who calls what (:class:`~gnetserver.server.GServer` owns one manager, made when a port asks for
ACME):

* ``plan_port(where, proto, options)`` at bind, from ``ssl_options``: the port's options with
  the ``SSL_acme_*`` keys replaced by certificates: per name an SNI entry with the certificate
  on disk (``SSL_acme_dir``) when it is valid, else a short-lived self-signed interim one
  (ECDSA P-256, 7 days) so that the port serves at once (``SSL_acme_interim refuse``: a
  context without a certificate, whose handshakes fail); with TLS-ALPN-01 also the
  :class:`~gnetserver.tls.acme_alpn.AlpnHook` as ``SSL_create_ctx_callback``.
* ``attach(where, handle)`` once the port's context handle exists: the manager replaces the
  handle's options and context (``ContextHandle.reconfigure``, the build of ``reload_tls``)
  when a certificate is issued; established connections keep theirs.
* ``bind()`` at bind (with the start's privileges): the HTTP-01 responder's socket.
* ``start()`` once the server serves: one greenlet per certificate (per distinct
  ``SSL_acme_domains``) orders when there is no valid certificate, then sleeps until two thirds
  of the lifetime and renews; failures are retried after 1, 2, 4... minutes (at most an hour).
  Each step is logged at level 2, a failure at level 1 with the CA's problem document; the
  served certificate stays until a new one is in place.
* ``renew()``: order now (an operator's or test's renewal); ``stop()`` in server_close.
* ``event`` (the constructor's): told, in the ordering process, of each order's end
  (``issued``, ``renewed``, ``failed``) and of a fresh interim certificate (``interim``), once
  the ports serve it: the server counts the orders and checks the served certificates' expiry
  again.

Every call to the CA runs in gevent's thread pool (``run_blocking``); the manager's greenlet
polls with ``gevent.sleep``: the hub never waits on the network.

Under PreFork the parent orders (it binds, builds the contexts, answers HTTP-01 and runs this
manager's greenlets; it serves no connection, so ordering never competes with one) and every
worker serves: the TLS-ALPN-01 challenge certificates are files that any worker's ALPN
callback reads, and :meth:`become_worker` (called in each worker right after the fork) drops
the parent's greenlets and responder and starts a watcher that rebuilds the worker's contexts
when a certificate file changes (checked every ``watch_interval`` seconds: a ``stat`` per
certificate). The parent's own contexts are rebuilt too, so workers forked later start with
the new certificate.
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import gevent
import gevent.event
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ..acme_plan import AcmeSettings, acme_settings, identifier, renewal_time, retry_delay
from ..blocking import run_blocking
from ..errors import ConfigError
from ..tls.acme_alpn import AlpnHook, ChallengeFiles, challenge_certificate
from ..tls.certs import CREDENTIAL_KEYS, NO_CERTIFICATE
from ..tls.negotiation import parse_alpn
from ..tls.registry import ContextHandle
from ..tls.selfsigned import make_self_signed, san_entry
from .client import AcmeClient, AcmeProblem
from .http01 import Http01Responder
from .store import AcmeStore, Issued

__all__ = ["AcmeManager"]

Log = Callable[[int, str], None]


def _no_event(event: str) -> None:
    """The default ``event`` callback: nobody listens."""


#: Seconds an interim certificate lasts (it is replaced long before).
INTERIM_DAYS = 7


class _Port:
    """One TLS port of a certificate: its options without ACME, its handle, its hook."""

    def __init__(self, where: str, base: dict[str, Any], hook: AlpnHook | None) -> None:
        self.where = where
        self.base = base
        self.hook = hook
        self.handle: ContextHandle | None = None


class _Certificate:
    """One certificate (one ``SSL_acme_domains`` list) and the ports serving it."""

    def __init__(self, settings: AcmeSettings, store: AcmeStore) -> None:
        self.settings = settings
        self.store = store
        self.ports: dict[str, _Port] = {}
        self.issued: Issued | None = None
        self.interim: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None
        self.wake = gevent.event.Event()
        self.force = False
        self.failures = 0
        self.greenlet: gevent.Greenlet[Any, Any] | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return self.settings.domains

    def label(self) -> str:
        return ", ".join(self.names)


class AcmeManager:
    """The ACME certificates of one server (see the module docstring).

    Args:
        log: the server's log, ``log(level, text)``.
        event: called with ``issued``, ``renewed``, ``failed`` or ``interim`` (see the
            module docstring), in the manager's greenlet (its exceptions are logged).
    """

    #: Seconds before the first retry after a failure (doubling, at most ``retry_most``).
    retry_first = 60.0
    retry_most = 3600.0
    #: Seconds to wait for the CA to validate or issue, per order.
    order_timeout = 120.0
    #: PreFork workers: seconds between two checks of the certificate files.
    watch_interval = 1.0

    def __init__(self, log: Log, event: Callable[[str], None] = _no_event) -> None:
        self._log = log
        self._event = event
        self._certs: dict[tuple[str, ...], _Certificate] = {}
        self._clients: dict[tuple[str, str | None, str | None], AcmeClient] = {}
        self._responders: dict[tuple[str, int], Http01Responder] = {}
        self._pid = os.getpid()
        self._started = False
        self._watcher: gevent.Greenlet[Any, Any] | None = None
        self._tokens: dict[str, str] = {}  # pending HTTP-01 tokens of this (ordering) process

    # -- at bind ---------------------------------------------------------------------------

    def plan_port(self, where: str, proto: str, options: Mapping[str, Any]) -> dict[str, Any]:
        """The options a port's context is built from: ``SSL_acme_*`` replaced by the current
        certificate of its names (see the module docstring). ConfigError for bad values."""
        if proto != "ssl":
            raise ConfigError(f"{where}: SSL_acme_domains needs proto ssl (pyOpenSSL), not "
                              f"{proto}")
        settings = acme_settings(options, where)
        cert = self._certs.get(settings.domains)
        if cert is None:
            cert = self._certs[settings.domains] = self._new_certificate(settings, where)
        elif cert.settings != settings:
            raise ConfigError(f"{where}: SSL_acme_domains {', '.join(settings.domains)} is "
                              f"also on {next(iter(cert.ports))} with other SSL_acme_* "
                              "options; give both ports the same ones")
        taken = {n for c in self._certs.values() if c is not cert for n in c.names}
        if taken & set(settings.domains):
            raise ConfigError(f"{where}: {', '.join(sorted(taken & set(settings.domains)))} "
                              "already in another SSL_acme_domains list")
        base = {k: v for k, v in options.items() if not k.startswith("SSL_acme_")}
        port = cert.ports.get(where)
        if port is None:
            hook = None
            if settings.challenge == "tls-alpn-01":
                alpn = base.get("SSL_alpn_protocols")
                ours = parse_alpn(alpn, where) if alpn is not None else []
                user = base.get("SSL_create_ctx_callback")
                # One hook per distinct (ALPN list, user callback): ports with equal options
                # keep sharing one context (and its sessions) in TLSContexts.
                hook = next((p.hook for p in cert.ports.values() if p.hook is not None
                             and p.hook.ours == ours and p.hook.user is user), None)
                if hook is None:
                    hook = AlpnHook(ChallengeFiles(cert.store.challenge_folder), ours, user,
                                    lambda name: self._log(2, f"ACME: TLS-ALPN-01 challenge "
                                                              f"certificate served for {name}"))
            port = cert.ports[where] = _Port(where, base, hook)
        return self._options(cert, port)

    def _new_certificate(self, settings: AcmeSettings, where: str) -> _Certificate:
        try:
            store = AcmeStore(settings.dir)
        except OSError as exc:
            raise ConfigError(f"{where}: SSL_acme_dir {settings.dir!r}: {exc}") from exc
        cert = _Certificate(settings, store)
        try:
            issued = store.load(settings.domains, settings.directory) or \
                store.load_other(settings.domains, settings.directory)
        except (OSError, ValueError) as exc:
            self._log(1, f"ACME: the certificate file of {cert.label()} is unusable, a new "
                         f"one will be ordered: {exc}")
            issued = None
        now = datetime.datetime.now(datetime.timezone.utc)
        if issued is not None and issued.not_after > now:
            # Also when names were added or the CA changed: served while the order runs.
            cert.issued = issued
            missing = set(settings.domains) - issued.names()
            notes = ([f"it lacks {', '.join(sorted(missing))}"] if missing else []) + \
                ([f"another CA's ({issued.path})"] if issued.path != _path(cert) else [])
            self._log(2, f"ACME: serving the certificate on disk for {cert.label()} (serial "
                         f"{issued.serial}, valid until {issued.not_after:%Y-%m-%d %H:%M:%S} "
                         f"UTC){''.join('; ' + note for note in notes)}")
        elif settings.interim == "refuse":
            self._log(2, f"ACME: no valid certificate on disk for {cert.label()}: refusing "
                         "their handshakes until the CA issues one (SSL_acme_interim refuse)")
        else:
            cert.interim = make_self_signed(settings.domains, days=INTERIM_DAYS)
            self._log(2, f"ACME: no valid certificate on disk for {cert.label()}: serving a "
                         "self-signed interim certificate until the CA issues one")
        return cert

    def _options(self, cert: _Certificate, port: _Port) -> dict[str, Any]:
        opts = dict(port.base)
        for key in CREDENTIAL_KEYS:  # a scalar applies to every name: make it the default
            if key in opts and not isinstance(opts[key], Mapping):
                opts[key] = {"": opts[key]}
            elif key in opts:
                opts[key] = dict(opts[key])
        has_default = any("" in opts.get(k, {}) for k in ("SSL_cert_file", "SSL_cert"))
        names = list(cert.names) + ([] if has_default else [""])
        for name in names:
            for key in CREDENTIAL_KEYS:
                if key in opts:
                    opts[key].pop(name, None)
            if cert.issued is not None:
                opts.setdefault("SSL_cert_file", {})[name] = cert.issued.path
            elif cert.interim is not None:
                opts.setdefault("SSL_cert", {})[name] = cert.interim[0]
                opts.setdefault("SSL_key", {})[name] = cert.interim[1]
            else:  # SSL_acme_interim refuse: a context without a certificate
                opts.setdefault("SSL_cert", {})[name] = NO_CERTIFICATE
        if port.hook is not None:
            opts["SSL_create_ctx_callback"] = port.hook
        return opts

    def attach(self, where: str, handle: ContextHandle) -> None:
        """The context handle of a planned port (replaced when a certificate comes)."""
        for cert in self._certs.values():
            if where in cert.ports:
                cert.ports[where].handle = handle

    def bind(self) -> None:
        """Bind the HTTP-01 responders (at bind, with the start's privileges)."""
        for cert in self._certs.values():
            where = cert.settings.http_listen
            if cert.settings.challenge == "http-01" and where is not None and \
                    where not in self._responders:
                responder = Http01Responder(where, self._log, self.http01_answer)
                try:
                    responder.bind()
                except OSError as exc:
                    raise ConfigError(f"SSL_acme_http_listen {where[0] or '*'}:{where[1]}: "
                                      f"cannot bind the HTTP-01 responder: {exc}") from exc
                self._responders[where] = responder

    # -- serving ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the responders and one greenlet per certificate (once)."""
        if self._started:
            return
        self._started = True
        for responder in self._responders.values():
            responder.start()
        for cert in self._certs.values():
            cert.greenlet = gevent.spawn(self._maintain, cert)

    def stop(self) -> None:
        """Stop ordering and responding (an order in progress is abandoned; its challenge
        files are removed)."""
        greenlets = [c.greenlet for c in self._certs.values() if c.greenlet is not None]
        if self._watcher is not None:
            greenlets.append(self._watcher)
            self._watcher = None
        gevent.killall(greenlets, block=True, timeout=5)
        for cert in self._certs.values():
            cert.greenlet = None
        for responder in self._responders.values():
            responder.stop()
        self._responders.clear()

    def become_worker(self) -> None:
        """In a PreFork worker right after the fork: stop the parent's greenlets (the parent
        orders) and close this process's copy of the HTTP-01 sockets; watch the certificate
        files instead and serve each new one (see the module docstring)."""
        if not self._started or os.getpid() == self._pid:
            return
        gevent.killall([c.greenlet for c in self._certs.values() if c.greenlet is not None],
                       block=False)
        for responder in self._responders.values():
            responder.stop()
        self._responders.clear()
        self._watcher = gevent.spawn(self._watch)

    def _watch(self) -> None:
        stamps = {names: _stamp(cert) for names, cert in self._certs.items()}
        while True:
            gevent.sleep(self.watch_interval)
            for names, cert in self._certs.items():
                stamp = _stamp(cert)
                if stamp == stamps[names] or stamp is None:
                    continue
                stamps[names] = stamp
                try:
                    issued = cert.store.load(names, cert.settings.directory)
                except (OSError, ValueError) as exc:
                    self._log(1, f"ACME: worker {os.getpid()} cannot read the new certificate "
                                 f"of {cert.label()}, keeps serving its own: {exc}")
                    continue
                if issued is not None:
                    cert.issued, cert.interim = issued, None
                    self._serve(cert)
                    self._log(3, f"ACME: worker {os.getpid()} serves the new certificate of "
                                 f"{cert.label()} (serial {issued.serial})")

    def http01_answer(self, token: str) -> str | None:
        """The key authorization of a pending HTTP-01 token, or None: what the responder and
        the HTTP personality (``SSL_acme_http_listen http``) answer. Any process: the
        ordering one knows its tokens, a PreFork worker reads them from ``SSL_acme_dir``."""
        if not _base64url(token):
            return None  # never a path
        found = self._tokens.get(token)
        stores = {c.store.folder: c.store for c in self._certs.values()
                  if c.settings.challenge == "http-01"}
        for store in stores.values():
            if found is not None:
                break
            found = store.token(token)
        return found

    def renew(self) -> None:
        """Order new certificates for every name now (the served ones stay until then)."""
        for cert in self._certs.values():
            cert.force = True
            cert.wake.set()

    def certificates(self) -> dict[str, x509.Certificate]:
        """What each name is served now: the issued leaf, or the interim certificate."""
        found: dict[str, x509.Certificate] = {}
        for cert in self._certs.values():
            leaf = cert.issued.chain[0] if cert.issued is not None else \
                cert.interim[0] if cert.interim is not None else None
            for name in cert.names:
                if leaf is not None:
                    found[name] = leaf
        return found

    def _maintain(self, cert: _Certificate) -> None:
        """The greenlet of one certificate: order when due, else sleep until due."""
        while os.getpid() == self._pid:  # a forked worker does not order
            wait = self._due_in(cert)
            if wait > 0:
                cert.wake.wait(timeout=min(wait, 3600.0))
                cert.wake.clear()
                continue
            try:
                result = self._order(cert)
            except Exception as exc:
                cert.failures += 1
                delay = retry_delay(cert.failures, self.retry_first, self.retry_most)
                if isinstance(exc, AcmeProblem) and exc.retry_after is not None:
                    # a rate limit says when to come back (at most a day: a sane bound)
                    delay = max(delay, min(exc.retry_after, 86400.0))
                what = "serving the issued certificate" if cert.issued else \
                    "serving the interim certificate" if cert.interim else "refusing them"
                self._log(1, f"ACME: order for {cert.label()} failed, still {what}; "
                             f"retry in {delay:.0f} s: {_reason(exc)}")
                self._tell("failed")
                self._refresh_interim(cert)
                cert.wake.wait(timeout=delay)
                cert.wake.clear()
            else:
                cert.failures = 0
                cert.force = False
                self._tell(result)

    def _refresh_interim(self, cert: _Certificate) -> None:
        """A CA unreachable for days: a fresh interim certificate before the old one ends."""
        now = datetime.datetime.now(datetime.timezone.utc)
        if cert.interim is not None and \
                cert.interim[0].not_valid_after_utc - now < datetime.timedelta(days=1):
            cert.interim = make_self_signed(cert.names, days=INTERIM_DAYS)
            self._serve(cert)
            self._tell("interim")

    def _tell(self, event: str) -> None:
        """Call the ``event`` callback; its failure is logged (the greenlet goes on)."""
        try:
            self._event(event)
        except Exception as exc:
            self._log(1, f"ACME: the {event} event's callback failed: {_reason(exc)}")

    def _due_in(self, cert: _Certificate) -> float:
        """Seconds until the next order: 0 when forced (``renew``, a failed order), without
        a certificate, when it lacks a name or is another CA's; else until its renewal time."""
        if cert.force or cert.issued is None or not set(cert.names) <= cert.issued.names() \
                or cert.issued.path != _path(cert):
            return 0.0
        at = renewal_time(cert.issued.not_before, cert.issued.not_after)
        return (at - datetime.datetime.now(datetime.timezone.utc)).total_seconds()

    # -- one order -------------------------------------------------------------------------

    def _client(self, settings: AcmeSettings, store: AcmeStore) -> AcmeClient:
        key = settings.account_key
        client = self._clients.get(key)
        if client is None:
            account_key = _blocking(store.account_key, settings.directory, settings.email)
            client = AcmeClient(settings.directory, account_key, settings.ca_file)
            client.kid = store.account_url(settings.directory, settings.email)
            self._clients[key] = client
        if client.kid is None:
            url = _blocking(client.register, settings.email, settings.eab)
            _blocking(store.save_account_url, settings.directory, settings.email, url)
            self._log(2, f"ACME: account {url} at {settings.directory}")
        return client

    def _order(self, cert: _Certificate) -> str:
        """Order, validate, download and serve ``cert``: ``issued``, or ``renewed`` when it
        replaces an issued one."""
        settings = cert.settings
        client = self._client(settings, cert.store)
        try:
            order_url, order = _blocking(client.new_order,
                                            [identifier(n) for n in cert.names])
        except AcmeProblem as exc:
            if exc.problem.get("type") != "urn:ietf:params:acme:error:accountDoesNotExist":
                raise
            client.kid = None  # the CA forgot the account (a new CA behind the same URL)
            client = self._client(settings, cert.store)
            order_url, order = _blocking(client.new_order,
                                            [identifier(n) for n in cert.names])
        self._log(2, f"ACME: order {order_url} for {cert.label()}")
        deadline = time.monotonic() + self.order_timeout
        for authz_url in order.get("authorizations", []):
            self._authorize(client, cert, authz_url, deadline)
        order = self._poll(client, order_url, {"ready", "valid"}, {"pending", "processing"},
                           deadline, "order")
        key = ec.generate_private_key(ec.SECP256R1())
        if order.get("status") == "ready":
            _blocking(client.finalize, order["finalize"], _csr(cert.names, key))
            order = self._poll(client, order_url, {"valid"}, {"ready", "processing"},
                               deadline, "order")
        chain_pem = _blocking(client.download, order["certificate"])
        renewed = cert.issued is not None
        cert.issued = _blocking(cert.store.save, cert.names, settings.directory,  # fsync
                                chain_pem, key)
        cert.interim = None
        self._serve(cert)
        issued = cert.issued
        self._log(2, f"ACME: certificate {'renewed' if renewed else 'issued'} for "
                     f"{cert.label()} (serial {issued.serial}, valid until "
                     f"{issued.not_after:%Y-%m-%d %H:%M:%S} UTC, renewal from "
                     f"{renewal_time(issued.not_before, issued.not_after):%Y-%m-%d %H:%M:%S} "
                     "UTC)")
        return "renewed" if renewed else "issued"

    def _authorize(self, client: AcmeClient, cert: _Certificate, url: str,
                   deadline: float) -> None:
        authz = _blocking(client.fetch, url)
        if authz.get("status") == "valid":
            return  # the CA remembers an earlier validation
        name = str(authz.get("identifier", {}).get("value", "?"))
        kind = cert.settings.challenge
        challenge = next((c for c in authz.get("challenges", []) if c.get("type") == kind),
                         None)
        if challenge is None:
            offered = ", ".join(str(c.get("type")) for c in authz.get("challenges", []))
            raise AcmeProblem(0, {"detail": f"the CA offers no {kind} challenge for {name} "
                                            f"(it offers: {offered or 'none'})"}, url)
        token = str(challenge.get("token"))
        if name not in cert.names or not _base64url(token):  # both become file names
            raise AcmeProblem(0, {"detail": f"the CA's authorization is for {name!r} with "
                                            f"token {token!r}: not one of ours or not "
                                            "base64url"}, url)
        key_authorization = client.key_authorization(token)
        files = ChallengeFiles(cert.store.challenge_folder)
        try:
            if kind == "tls-alpn-01":  # files written (fsync) in the thread pool
                _blocking(files.put, name, *challenge_certificate(name, key_authorization))
            else:
                self._tokens[token] = key_authorization
                _blocking(cert.store.put_token, token, key_authorization)
            self._log(2, f"ACME: {kind} challenge for {name}: {challenge['url']}")
            _blocking(client.answer, challenge["url"])
            authz = self._poll(client, url, {"valid"}, {"pending"}, deadline,
                               f"authorization of {name}", strict=False)
        finally:
            self._tokens.pop(token, None)
            if os.getpid() == self._pid:  # not a PreFork worker unwinding the parent's order
                if kind == "tls-alpn-01":    # (become_worker): the parent still needs them
                    files.remove(name)
                else:
                    cert.store.remove_token(token)
        if authz.get("status") != "valid":
            problems = [c.get("error") for c in authz.get("challenges", []) if c.get("error")]
            problem = problems[0] if problems else \
                {"detail": f"authorization {authz.get('status')}"}
            raise AcmeProblem(0, problem, url)
        self._log(2, f"ACME: {name} validated")

    def _poll(self, client: AcmeClient, url: str, done: set[str], waiting: set[str],
              deadline: float, what: str, strict: bool = True) -> dict[str, Any]:
        """POST-as-GET ``url`` until its status is in ``done`` (returned) or leaves
        ``waiting``: then AcmeProblem with the object's error (``strict``) or the body is
        returned for the caller to explain. Sleeps 0.1 s doubling to 2 s in between, or
        what the CA's Retry-After asks for (RFC 8555 7.4), never past ``deadline``."""
        delay = 0.1
        while True:
            body: dict[str, Any]
            body, asked = _blocking(client.poll, url)
            status = body.get("status")
            if status in done:
                return body
            if status not in waiting:
                if not strict:
                    return body
                error = body.get("error")
                raise AcmeProblem(0, error if isinstance(error, Mapping) else
                                  {"detail": f"the {what} is {status}"}, url)
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the {what} is still {status} after "
                                   f"{self.order_timeout:.0f} s")
            gevent.sleep(min(left, delay if asked is None else max(delay, asked)))
            delay = min(delay * 2, 2.0)

    def _serve(self, cert: _Certificate) -> None:
        """Rebuild every port's context with the certificate now held (reload's build)."""
        done: list[ContextHandle] = []
        for port in cert.ports.values():
            if port.handle is None or any(port.handle is h for h in done):
                continue  # ports with equal options share one handle: built once
            done.append(port.handle)
            try:
                port.handle.reconfigure(self._options(cert, port))
            except ConfigError as exc:
                self._log(1, f"ACME: {port.where} keeps its previous certificate: {exc}")


def _base64url(token: str) -> bool:
    """True for a plausible ACME token (RFC 8555 8.1: base64url characters only)."""
    return 0 < len(token) <= 256 and all(c.isascii() and (c.isalnum() or c in "-_")
                                         for c in token)


def _path(cert: _Certificate) -> str:
    """Where the certificate of ``cert``'s names from its CA is kept."""
    return cert.store.certificate_path(cert.names, cert.settings.directory)


def _stamp(cert: _Certificate) -> tuple[int, int] | None:
    """The certificate file's (mtime, inode), or None when there is none."""
    try:
        st = os.stat(_path(cert))
    except OSError:
        return None
    return st.st_mtime_ns, st.st_ino


def _blocking(fn: Callable[..., Any], *args: Any) -> Any:
    """``fn(*args)`` in gevent's thread pool; its exception is raised here (gevent's pool
    would also print a traceback of it on stderr: a CA that is down is a log line)."""
    def capture() -> tuple[bool, Any]:
        try:
            return True, fn(*args)
        except Exception as exc:
            return False, exc

    ok, value = run_blocking(capture)
    if not ok:
        raise value
    return value


def _csr(names: tuple[str, ...], key: ec.EllipticCurvePrivateKey) -> bytes:
    """The DER CSR of ``names`` (DNS names and IP addresses in the subjectAltName)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]
                        if len(names[0]) <= 64 else [])
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(subject)
           .add_extension(x509.SubjectAlternativeName([san_entry(n) for n in names]),
                          critical=False)
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.DER)


def _reason(exc: Exception) -> str:
    if isinstance(exc, (AcmeProblem, ConfigError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"
