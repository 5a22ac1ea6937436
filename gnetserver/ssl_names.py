"""The names of the ``SSL_*`` options: the ones gnetserver honours (with their documentation)
and the IO::Socket::SSL ones it refuses (with the reason). Pure data, no TLS library.

Rules of this module:

* It imports neither gevent, OpenSSL nor cryptography, so that the option table
  (:mod:`gnetserver.options`) and the command line's error messages (:mod:`gnetserver.config`)
  can use these names without loading a TLS library. :mod:`gnetserver.tls.context` builds
  contexts from the same names (it imports them from here), so the table, ``--help``, README
  and the TLS layer can never disagree.
* Two texts of the TLS layer live here, so that the option table can quote them without
  OpenSSL: :data:`DEFAULT_CIPHER_LIST` (used by ``tls.negotiation``) and
  :data:`TICKET_KEYCB_REFUSED` (the refusal of IO::Socket::SSL's ticket key callback).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_CIPHER_LIST",
    "REFUSED_SSL_OPTIONS",
    "SUPPORTED_SSL_OPTIONS",
    "TICKET_KEYCB_REFUSED",
    "refusal_reason",
]

#: Forward-secret AEAD suites only, for TLS <= 1.2 (the default of SSL_cipher_list; TLS 1.3
#: suites are all AEAD and forward-secret).
DEFAULT_CIPHER_LIST = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!MD5:!DSS"

#: The TLS 1.3 suites offered by default, in the server's order: OpenSSL's three AEAD suites
#: in Mozilla's recommended order (OpenSSL's own puts AES-256 first). Under the server's
#: cipher order that decides; AES-128-GCM with SHA-256 is measured cheaper per full handshake
#: (the SHA-384 key schedule cost about 4 % of a handshake's server CPU, bench/README.md) and
#: is what browsers ask for first.
DEFAULT_CIPHERSUITES = ("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:"
                        "TLS_CHACHA20_POLY1305_SHA256")

#: Why SSL_ticket_keycb is refused (pyOpenSSL lacks the callback; see
#: :mod:`gnetserver.tls.tickets`).
TICKET_KEYCB_REFUSED = (
    "pyOpenSSL exposes no session-ticket key callback, so ticket keys cannot be supplied; "
    "use SSL_ticket_key_rotation (seconds) to renew the keys by rebuilding the context"
)

_SNI = "; or a dict {SNI host name: value, '': default} (see SSL_cert_file)"

#: The SSL_* options gnetserver implements: name -> meaning and default (the ``--help`` and
#: README text).
SUPPORTED_SSL_OPTIONS: dict[str, str] = {
    "SSL_cert_file": "PEM file, leaf certificate first then its chain; or a dict {SNI host name: "
    "file, '': default} serving one certificate per name ('name%ecc' adds a second, ECDSA, "
    "certificate) (default: none; a TLS port needs a certificate)",
    "SSL_key_file": "PEM private key file" + _SNI + " (default: the key inside SSL_cert_file)",
    "SSL_cert": "certificate in memory: an x509.Certificate, a list of them (leaf first) or PEM "
    "bytes" + _SNI + " (default: none)",
    "SSL_key": "private key in memory: a cryptography private key or PEM bytes" + _SNI
    + " (default: none)",
    "SSL_passwd_cb": "callable without arguments returning the passphrase (str or bytes) of "
    "encrypted keys (default: none, keys must not be encrypted)",
    "SSL_version": "IO::Socket::SSL syntax: 'SSLv23:!TLSv1:!TLSv1_1' (all minus exclusions) or "
    "one version 'TLSv1_2' / 'TLSv1_3'; TLS 1.0/1.1 also need '@SECLEVEL=0' in SSL_cipher_list "
    "(default: TLS 1.2 and 1.3)",
    "SSL_cipher_list": "OpenSSL cipher string for TLS 1.2 and older (default: "
    f"{DEFAULT_CIPHER_LIST})",
    "SSL_ciphersuites": "TLS 1.3 suites, e.g. 'TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256'"
    f" (default: {DEFAULT_CIPHERSUITES}, in this order)",
    "SSL_honor_cipher_order": "1: the server's cipher order wins; 0: the client's (default: 1)",
    "SSL_ecdh_curve": "key exchange groups in preference order, e.g. 'X25519:P-256' (default: "
    "X25519MLKEM768:X25519:P-256:P-384, without the ML-KEM hybrid where OpenSSL lacks it; "
    "OpenSSL's own list with cryptography < 47, which cannot set one)",
    "SSL_dh_file": "PEM DH parameters enabling the DHE suites, which need an RSA "
    "certificate (default: none, ECDHE only)",
    "SSL_alpn_protocols": "ALPN protocols in preference order, a list or 'h2,http/1.1'; the "
    "first one the client offers is chosen, none in common: no ALPN (default: none)",
    "SSL_ca_file": "PEM file of the CAs trusted for client certificates (default: none)",
    "SSL_ca_path": "directory of CAs trusted for client certificates, in OpenSSL's hashed layout "
    "(openssl rehash) (default: none)",
    "SSL_verify_mode": "client certificates, a bitmask: 0 none, 1 ask and verify, 2 fail without "
    "one, 4 verify once; 2 and 4 imply 1; needs SSL_ca_file or SSL_ca_path (default: 0)",
    "SSL_verify_callback": "callable(ok, cert, depth, error) -> bool, called per certificate of "
    "the client's chain with OpenSSL's verdict, an x509.Certificate, the depth (0: the client's "
    "own) and OpenSSL's reason; its return decides (default: none, OpenSSL's verdict)",
    "SSL_client_ca_file": "PEM file of the CA certificates whose names the CertificateRequest "
    "lists (\"acceptable client certificate CA names\"), so a client picks the right "
    "certificate; trusts nothing (SSL_ca_file does); needs SSL_verify_mode (default: none, "
    "no names sent)",
    "SSL_client_ca": "SSL_client_ca_file's certificates in memory: an x509.Certificate, a list "
    "of them or PEM bytes (default: none)",
    "SSL_crl_file": "PEM file of CRLs of the client CAs; turns on revocation checks of client "
    "certificates (default: none)",
    "SSL_check_crl": "1: check client certificates against CRLs (from SSL_crl_file or "
    "SSL_ca_path) (default: 0, or 1 when SSL_crl_file is given)",
    "SSL_session_id_context": "1 to 32 bytes naming the session cache; resumption needs it "
    "(default: one fixed value for every port)",
    "SSL_ticket_key_rotation": "seconds after which a context is rebuilt from its options (files "
    "read again) with fresh session-ticket keys and an empty session cache; older sessions then "
    "get a full handshake; 0: keys last until reload_tls() (default: 0)",
    "SSL_ocsp_staple_file": "DER OCSP response for the certificate, stapled when a client asks; "
    "re-read by reload_tls()" + _SNI + " (default: none)",
    "SSL_ocsp_staple_callback": "callable(cert, server_name) -> DER OCSP response or None, "
    "called in each handshake that asks for a staple" + _SNI + " (default: none)",
    "SSL_error_trap": "callable(client, error) called when a client's TLS handshake fails or "
    "times out, after the failure is logged and the connection closed (OpenSSL has sent its "
    "alert; unlike IO::Socket::SSL the socket is not handed over); error is the exception "
    "(str(error): the reason); an exception it raises is logged (default: none)",
    "SSL_create_ctx_callback": "callable(context) called with each OpenSSL.SSL.Context once it "
    "is built (per SNI name, on every reload), to set what no option covers (default: none)",
}

_CLIENT_SIDE = "a client-side option of IO::Socket::SSL; a server has no use for it"
_FORCED = "always on for a server port; remove it"

#: IO::Socket::SSL options that we cannot honour, with the reason given at start.
REFUSED_SSL_OPTIONS: dict[str, str] = {
    "SSL_ticket_keycb": TICKET_KEYCB_REFUSED,
    "SSL_npn_protocols": "NPN is obsolete and pyOpenSSL removed it; use SSL_alpn_protocols",
    "SSL_psk": "pyOpenSSL offers no server PSK callback",
    "SSL_fingerprint": "not implemented; accept certificates by digest in SSL_verify_callback",
    "SSL_force_fingerprint": "not implemented; see SSL_verify_callback",
    "SSL_ca": "CA certificates in memory are not implemented; use SSL_ca_file or SSL_ca_path",
    "SSL_dh": "DH parameters in memory are not implemented; use SSL_dh_file",
    "SSL_reuse_ctx": "the server builds and shares contexts itself (ports with the same "
    "options share one); use SSL_create_ctx_callback to adjust them",
    "SSL_keepSocketOnError": "failed handshakes are logged and closed by the server",
    "SSL_startHandshake": "the server always runs the handshake in the connection's greenlet",
    "SSL_server": _FORCED,
    "SSL_use_cert": _FORCED,
    "SSL_mode_release_buffers": _FORCED,
    "SSL_session_cache": _CLIENT_SIDE,
    "SSL_session_cache_size": _CLIENT_SIDE,
    "SSL_session_key": _CLIENT_SIDE,
    "SSL_hostname": _CLIENT_SIDE,
    "SSL_ocsp_mode": _CLIENT_SIDE + " (server stapling: SSL_ocsp_staple_file)",
    "SSL_ocsp_cache": _CLIENT_SIDE,
    "SSL_max_getline_length": "a Net::Server SSLEAY option (its getline's line limit); here "
    "every protocol, ssleay included, reads lines with client.readline(limit), the limit "
    "given per call",
    "SSL_error_callback": "a Net::Server SSLEAY option; errors are logged by the server",
}
_REFUSED_PREFIXES = {"SSL_verifycn_": _CLIENT_SIDE}


def refusal_reason(key: str) -> str | None:
    """Why an IO::Socket::SSL option cannot be honoured, or None when it is not a known refusal."""
    return REFUSED_SSL_OPTIONS.get(key) or next(
        (text for prefix, text in _REFUSED_PREFIXES.items() if key.startswith(prefix)), None
    )
