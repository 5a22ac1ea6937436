"""A small RFC 8555 client: account, order, authorizations, challenges, finalize, download.

Choice (see README, "Automatic certificates (ACME)"): our own client over ``josepy`` (JWK
thumbprints, ES256 signatures: the JOSE parts, well kept by the certbot project) and the
stdlib's ``urllib``. Every method here blocks; :class:`~gnetserver.acme.manager.AcmeManager`
calls each one in gevent's thread pool (``run_blocking``), so the hub never waits on the CA,
with or without monkey patching, and does its polling with ``gevent.sleep`` in its greenlet.
certbot's ``acme`` package was not taken: its 5.x line dropped the TLS-ALPN-01 classes, its
``poll_and_finalize`` sleeps fixed seconds inside the call, and it brings ``requests``.

Rules of this module:

* Requests are JWS-signed POSTs (``application/jose+json``), GETs as POST-as-GET; each uses
  the nonce of the previous answer; a ``badNonce`` problem is retried with the fresh nonce
  (RFC 8555 section 6.5), up to five times.
* A problem answer raises :class:`AcmeProblem`, carrying the CA's problem document, whose
  ``str()`` is what the logs show, and its ``Retry-After`` (a rate limit says when to come
  back). Network errors raise ``OSError`` (``URLError``).
* The account key is ECDSA P-256 (ES256).
"""

from __future__ import annotations

import datetime
import email.utils
import hashlib
import hmac
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from josepy.json_util import encode_b64jose
from josepy.jwa import ES256
from josepy.jwk import JWKEC

__all__ = ["AcmeClient", "AcmeProblem", "Response", "retry_after"]

_USER_AGENT = "gnetserver-acme/0.1"
_JOSE = "application/jose+json"


class AcmeProblem(Exception):
    """The CA answered with an RFC 7807 problem document (or an unexpected status).

    Attributes:
        status: the HTTP status.
        problem: the problem document (``type``, ``detail``, ``subproblems``...), or {}.
        retry_after: the seconds the answer's ``Retry-After`` asks to wait, or None.
    """

    def __init__(self, status: int, problem: Mapping[str, Any], url: str,
                 retry_after: float | None = None) -> None:
        self.status = status
        self.problem = dict(problem)
        self.url = url
        self.retry_after = retry_after
        super().__init__(describe_problem(problem, status, url))


def describe_problem(problem: Mapping[str, Any], status: int | None = None,
                     url: str = "") -> str:
    """One line naming a problem document's type, detail and subproblems."""
    kind = str(problem.get("type", "unknown")).removeprefix("urn:ietf:params:acme:error:")
    text = f"{kind}: {problem.get('detail', '(no detail)')}"
    subs = problem.get("subproblems") or []
    if isinstance(subs, list) and subs:
        parts = []
        for sub in subs:
            if isinstance(sub, Mapping):
                who = sub.get("identifier", {})
                value = who.get("value", "?") if isinstance(who, Mapping) else "?"
                parts.append(f"{value}: {describe_problem(sub)}")
        text += " [" + "; ".join(parts) + "]"
    if status:
        text += f" (HTTP {status}{' from ' + url if url else ''})"
    return text


class Response:
    """One answer of the CA: status, headers (lower-case names), body."""

    def __init__(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    def json(self) -> dict[str, Any]:
        """The body as a JSON object."""
        value = json.loads(self.body.decode("utf-8"))
        if not isinstance(value, dict):
            raise ValueError("the CA's answer is not a JSON object")
        return value

    @property
    def location(self) -> str | None:
        """The Location header (the URL of a created account or order)."""
        return self.headers.get("location")

    @property
    def retry_after(self) -> float | None:
        """The seconds the Retry-After header asks for (RFC 8555 sections 6.6, 7.4), or None."""
        return retry_after(self.headers.get("retry-after"))


def retry_after(value: str | None, now: datetime.datetime | None = None) -> float | None:
    """A Retry-After value (delta-seconds or an HTTP date, RFC 9110 10.2.3) in seconds from
    ``now`` (at least 0), or None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    now = now or datetime.datetime.now(datetime.timezone.utc)
    return max(0.0, (when - now).total_seconds())


class AcmeClient:
    """One account's conversation with one CA (blocking; see the module rules).

    Args:
        directory_url: the CA's directory.
        account_key: the account's ECDSA P-256 key.
        ca_file: PEM file of CAs trusted for the CA's HTTPS (None: the system's store).
        timeout: seconds for each HTTP request.
    """

    def __init__(self, directory_url: str, account_key: ec.EllipticCurvePrivateKey,
                 ca_file: str | None = None, timeout: float = 30.0) -> None:
        self.directory_url = directory_url
        self._key = account_key
        self._jwk = JWKEC(key=account_key)
        self._ssl = ssl.create_default_context(cafile=ca_file)
        self.timeout = timeout
        self._directory: dict[str, Any] | None = None
        self._nonce: str | None = None
        #: The account URL (the JWS ``kid``) once registered or found.
        self.kid: str | None = None

    @property
    def thumbprint(self) -> str:
        """The account key's JWK thumbprint (RFC 7638), base64url: key authorizations end
        with it."""
        return encode_b64jose(self._jwk.thumbprint())

    def key_authorization(self, token: str) -> str:
        """``token.thumbprint`` (RFC 8555 section 8.1)."""
        return f"{token}.{self.thumbprint}"

    # -- HTTP ------------------------------------------------------------------------------

    def _http(self, method: str, url: str, body: bytes | None = None) -> Response:
        headers = {"User-Agent": _USER_AGENT}
        if body is not None:
            headers["Content-Type"] = _JOSE
        request = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout,
                                        context=self._ssl) as answer:
                response = Response(answer.status, dict(answer.headers), answer.read())
        except urllib.error.HTTPError as err:
            response = Response(err.code, dict(err.headers or {}), err.read())
        nonce = response.headers.get("replay-nonce")
        if nonce:
            self._nonce = nonce
        return response

    def directory(self) -> dict[str, Any]:
        """The CA's directory (fetched once)."""
        if self._directory is None:
            response = self._http("GET", self.directory_url)
            if response.status != 200:
                raise AcmeProblem(response.status, _problem(response), self.directory_url)
            self._directory = response.json()
        return self._directory

    def _fresh_nonce(self) -> str:
        if self._nonce is None:
            url = self.directory()["newNonce"]
            self._http("HEAD", url)
            if self._nonce is None:
                raise AcmeProblem(0, {"detail": "newNonce gave no Replay-Nonce"}, url)
        nonce, self._nonce = self._nonce, None
        return nonce

    def _signed(self, url: str, payload: Mapping[str, Any] | None, use_jwk: bool) -> bytes:
        protected: dict[str, Any] = {"alg": "ES256", "nonce": self._fresh_nonce(), "url": url}
        if use_jwk or self.kid is None:
            protected["jwk"] = self._jwk.public_key().to_partial_json()
        else:
            protected["kid"] = self.kid
        b64 = encode_b64jose
        header = b64(json.dumps(protected).encode())
        body = "" if payload is None else b64(json.dumps(payload).encode())
        signature = ES256.sign(self._key, f"{header}.{body}".encode("ascii"))
        return json.dumps({"protected": header, "payload": body,
                           "signature": b64(signature)}).encode()

    def post(self, url: str, payload: Mapping[str, Any] | None,
             use_jwk: bool = False) -> Response:
        """A signed POST (``payload`` None: POST-as-GET); AcmeProblem on a problem answer."""
        for _attempt in range(5):
            response = self._http("POST", url, self._signed(url, payload, use_jwk))
            if response.status < 400:
                return response
            problem = _problem(response)
            if problem.get("type") != "urn:ietf:params:acme:error:badNonce":
                raise AcmeProblem(response.status, problem, url, response.retry_after)
        raise AcmeProblem(response.status, problem, url, response.retry_after)

    # -- the steps -------------------------------------------------------------------------

    def register(self, email: str | None, eab: tuple[str, bytes] | None = None) -> str:
        """Create the account (or find the existing one of this key); returns its URL.
        ``eab``: the CA's External Account Binding (key id, MAC key), RFC 8555 7.3.4."""
        payload: dict[str, Any] = {"termsOfServiceAgreed": True}
        if email:
            payload["contact"] = [f"mailto:{email}"]
        url = self.directory()["newAccount"]
        if eab is not None:
            payload["externalAccountBinding"] = self._binding(url, *eab)
        response = self.post(url, payload, use_jwk=True)
        if not response.location:
            raise AcmeProblem(response.status, {"detail": "newAccount gave no Location"}, url)
        self.kid = response.location
        return self.kid

    def _binding(self, url: str, kid: str, mac_key: bytes) -> dict[str, str]:
        """The EAB inner JWS: the account key, MACed (HS256) with the CA's key."""
        protected = encode_b64jose(json.dumps({"alg": "HS256", "kid": kid,
                                               "url": url}).encode())
        body = encode_b64jose(json.dumps(self._jwk.public_key().to_partial_json()).encode())
        mac = hmac.new(mac_key, f"{protected}.{body}".encode("ascii"), hashlib.sha256).digest()
        return {"protected": protected, "payload": body, "signature": encode_b64jose(mac)}

    def new_order(self, identifiers: list[dict[str, str]]) -> tuple[str, dict[str, Any]]:
        """Place an order; returns its URL and body."""
        url = self.directory()["newOrder"]
        response = self.post(url, {"identifiers": identifiers})
        if not response.location:
            raise AcmeProblem(response.status, {"detail": "newOrder gave no Location"}, url)
        return response.location, response.json()

    def fetch(self, url: str) -> dict[str, Any]:
        """POST-as-GET of an order, authorization or challenge."""
        return self.post(url, None).json()

    def poll(self, url: str) -> tuple[dict[str, Any], float | None]:
        """POST-as-GET of an order or authorization being processed: its body and the
        seconds its Retry-After asks to wait before the next poll (or None)."""
        response = self.post(url, None)
        return response.json(), response.retry_after

    def answer(self, challenge_url: str) -> dict[str, Any]:
        """Tell the CA a challenge is ready to be validated."""
        return self.post(challenge_url, {}).json()

    def finalize(self, url: str, csr_der: bytes) -> dict[str, Any]:
        """Send the CSR of a ready order."""
        b64 = encode_b64jose
        return self.post(url, {"csr": b64(csr_der)}).json()

    def download(self, url: str) -> bytes:
        """The certificate chain (PEM, leaf first)."""
        return self.post(url, None).body


def _problem(response: Response) -> dict[str, Any]:
    try:
        return response.json()
    except ValueError:
        text = response.body[:200].decode("utf-8", "replace")
        return {"detail": text or "(empty answer)"}
