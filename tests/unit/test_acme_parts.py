"""Issue 13, the pure and local parts of ACME: the SSL_acme_* options, identifiers, schedules,
the RFC 8737 challenge certificate, the HTTP-01 answers, problem documents, the files."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import stat
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gnetserver import GServer
from gnetserver.acme import AcmeManager
from gnetserver.acme.client import Response, describe_problem, retry_after
from gnetserver.acme.http01 import Http01Responder
from gnetserver.acme.store import AcmeStore
from gnetserver.acme_plan import (
    DEFAULT_DIRECTORY,
    acme_settings,
    identifier,
    renewal_time,
    retry_delay,
)
from gnetserver.errors import ConfigError
from gnetserver.options import OPTIONS
from gnetserver.tls.acme_alpn import (
    ID_PE_ACME_IDENTIFIER,
    ChallengeFiles,
    challenge_certificate,
    from_reverse_name,
)
from gnetserver.tls.selfsigned import make_self_signed

WHERE = "port 127.0.0.1:443/ssl"


def test_settings_defaults_and_normalized_names() -> None:
    s = acme_settings({"SSL_acme_domains": "A.Example., b.example a.example"}, WHERE)
    assert s.domains == ("a.example", "b.example")
    assert s.directory == DEFAULT_DIRECTORY
    assert s.challenge == "tls-alpn-01"
    assert s.http_listen == ("", 80)
    assert s.dir == os.path.expanduser("~/.local/share/gnetserver/acme")
    assert s.email is None and s.ca_file is None and s.interim == "self-signed"
    s = acme_settings({"SSL_acme_domains": ["x.example", "192.0.2.1"],
                       "SSL_acme_challenge": "HTTP-01", "SSL_acme_http_listen": "[::1]:8080",
                       "SSL_acme_email": "ops@x.example", "SSL_acme_dir": "rel"}, WHERE)
    assert s.domains == ("x.example", "192.0.2.1")
    assert s.challenge == "http-01" and s.http_listen == ("::1", 8080)
    assert s.dir == os.path.abspath("rel")
    assert acme_settings({"SSL_acme_domains": "x.example", "SSL_acme_http_listen": "HTTP"},
                         WHERE).http_listen is None  # the HTTP personality answers
    # Addresses as the CA and the issued leaf write them (else every start would reorder).
    assert acme_settings({"SSL_acme_domains": "2001:DB8::0001 192.0.2.1"},
                         WHERE).domains == ("2001:db8::1", "192.0.2.1")


@pytest.mark.parametrize(("options", "words"), [
    ({"SSL_acme_domains": ""}, "names no domain"),
    ({"SSL_acme_domains": []}, "names no domain"),
    ({"SSL_acme_domains": ["*.example.com"]}, "DNS-01"),
    ({"SSL_acme_domains": "localhost"}, "not a fully qualified"),
    ({"SSL_acme_domains": "bad_label.example"}, "not a valid DNS label"),
    ({"SSL_acme_domains": "-a.example"}, "not a valid DNS label"),
    ({"SSL_acme_domains": [3]}, "entries are names"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_challenge": "dns-01"}, "SSL_acme_challenge"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_directory": "ftp://x"}, "not an http(s) URL"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_email": "a@b, c@d"}, "one e-mail"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_email": "nobody"}, "one e-mail"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_http_listen": "x:http"}, "[host:]port"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_http_listen": "70000"}, "[host:]port"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_dir": ""}, "non-empty text"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_ca_file": "/nonexistent/ca.pem"},
     "SSL_acme_ca_file '/nonexistent/ca.pem' is not a file"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_interim": "none"}, "SSL_acme_interim"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_eab_kid": "k"}, "go together"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_eab_kid": "k",
      "SSL_acme_eab_hmac_key": "!!!"}, "not base64url"),
    ({"SSL_acme_domains": "a.example", "SSL_acme_eab_kid": "k",
      "SSL_acme_eab_hmac_key": b"raw-secret"}, "text (the value is not shown"),
])
def test_bad_settings_are_config_errors_naming_port_option_value(options: dict[str, Any],
                                                                 words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        acme_settings(options, WHERE)
    assert str(caught.value).startswith(WHERE)
    assert words in str(caught.value) and "raw-secret" not in str(caught.value)


def test_options_table_and_identifiers() -> None:
    names = {option.name for option in OPTIONS}
    assert {"SSL_acme_domains", "SSL_acme_directory", "SSL_acme_email", "SSL_acme_ca_file",
            "SSL_acme_dir", "SSL_acme_challenge", "SSL_acme_http_listen",
            "SSL_acme_interim"} <= names
    assert identifier("a.example") == {"type": "dns", "value": "a.example"}
    assert identifier("2001:DB8::1") == {"type": "ip", "value": "2001:db8::1"}


def test_renewal_at_two_thirds_and_retry_back_off() -> None:
    start = datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc)
    assert renewal_time(start, start + datetime.timedelta(days=90)) == \
        start + datetime.timedelta(days=60)
    assert [retry_delay(n) for n in (1, 2, 3, 7, 8, 50)] == [60, 120, 240, 3600, 3600, 3600]
    assert retry_delay(3, first=1, most=3) == 3


@pytest.mark.parametrize("name", ["a.example", "192.0.2.7", "2001:db8::7"])
def test_challenge_certificate_is_rfc_8737(name: str) -> None:
    cert, key = challenge_certificate(name, "tok.thumb")
    ext = cert.extensions.get_extension_for_oid(ID_PE_ACME_IDENTIFIER)
    assert ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.value == b"\x04\x20" + hashlib.sha256(b"tok.thumb").digest()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(list(san)) == 1
    if name[0].isdigit():
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(name)]
    else:
        assert san.get_values_for_type(x509.DNSName) == [name]
    assert cert.public_key() == key.public_key()


def test_reverse_names_of_ip_identifiers() -> None:
    assert from_reverse_name("7.2.0.192.in-addr.arpa") == "192.0.2.7"
    v6 = ipaddress.ip_address("2001:db8::7").reverse_pointer
    assert from_reverse_name(v6) == "2001:db8::7"
    assert from_reverse_name("a.example") == "a.example"
    assert from_reverse_name("1.2.in-addr.arpa") == "1.2.in-addr.arpa"


def test_http_01_answers() -> None:
    responder = Http01Responder(("127.0.0.1", 0), lambda level, text: None)
    responder.add("tok", "tok.thumb")
    ok = responder.answer(b"GET /.well-known/acme-challenge/tok HTTP/1.1\r\nHost: x\r\n\r\n")
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n") and ok.endswith(b"\r\n\r\ntok.thumb")
    head = responder.answer(b"HEAD /.well-known/acme-challenge/tok HTTP/1.1\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and head.endswith(b"\r\n\r\n")
    assert responder.answer(b"GET /.well-known/acme-challenge/other HTTP/1.1\r\n\r\n") \
        .startswith(b"HTTP/1.1 404")
    assert responder.answer(b"GET /tok HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 404")
    assert responder.answer(b"garbage\r\n\r\n").startswith(b"HTTP/1.1 400")
    responder.remove("tok")
    assert responder.answer(b"GET /.well-known/acme-challenge/tok HTTP/1.0\r\n\r\n") \
        .startswith(b"HTTP/1.1 404")


def test_http_01_tokens_are_files_of_base64url_names_only(tmp_path: Path) -> None:
    store = AcmeStore(str(tmp_path / "acme"))
    store.put_token("tok-_1", "tok-_1.thumb")
    assert store.token("tok-_1") == "tok-_1.thumb"
    manager = AcmeManager(lambda level, text: None)
    for bad in ("", "../accounts", "a/b", "a%2Fb", "x" * 300, "é"):
        assert manager.http01_answer(bad) is None
    store.remove_token("tok-_1")
    assert store.token("tok-_1") is None


def test_retry_after_in_seconds_or_http_date() -> None:
    now = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.timezone.utc)
    assert retry_after("120", now) == 120.0
    assert retry_after("Thu, 01 Jan 2026 12:01:30 GMT", now) == 90.0
    assert retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now) == 0.0  # past: at once
    assert retry_after(None) is None and retry_after("soon") is None
    assert Response(429, {"Retry-After": "7"}, b"{}").retry_after == 7.0


def test_problem_documents_read_as_one_line() -> None:
    problem = {"type": "urn:ietf:params:acme:error:rejectedIdentifier", "detail": "no",
               "subproblems": [{"type": "urn:ietf:params:acme:error:caa", "detail": "CAA",
                                "identifier": {"type": "dns", "value": "a.example"}}]}
    assert describe_problem(problem, 400, "https://ca/new-order") == (
        "rejectedIdentifier: no [a.example: caa: CAA] (HTTP 400 from https://ca/new-order)")
    assert describe_problem({}) == "unknown: (no detail)"


def test_store_modes_atomic_files_and_account(tmp_path: Path) -> None:
    folder = tmp_path / "acme"
    store = AcmeStore(str(folder))
    key = store.account_key("https://ca.example/dir", None)
    assert store.account_key("https://ca.example/dir", None).private_numbers() == \
        key.private_numbers()
    assert store.account_url("https://ca.example/dir", None) is None
    store.save_account_url("https://ca.example/dir", None, "https://ca.example/acct/1")
    assert store.account_url("https://ca.example/dir", None) == "https://ca.example/acct/1"
    assert store.account_url("https://other.example/dir", None) is None
    files = ChallengeFiles(store.challenge_folder)
    files.put("a.example", *challenge_certificate("a.example", "t.k"))
    assert files.get("a.example") is not None and files.get("b.example") is None
    files.remove("a.example")
    assert files.get("a.example") is None
    assert store.load(("a.example",), "https://ca.example/dir") is None
    assert not (folder / "certs").exists()  # looking up a path makes no folder
    for path in [folder, *folder.rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), path
    assert not [p for p in folder.rglob(".tmp-*")]


def test_acme_needs_proto_ssl_and_one_setting_per_name(tmp_path: Path) -> None:
    common = {"SSL_acme_domains": "a.example", "SSL_acme_dir": str(tmp_path),
              "log_level": 0}
    with pytest.raises(ConfigError, match="needs proto ssl"):
        GServer(port="127.0.0.1:0/ssleay", **common).start()
    ports = [{"host": "127.0.0.1", "port": 0, "proto": "ssl"},
             {"host": "127.0.0.1", "port": 0, "proto": "ssl", "SSL_acme_email": "x@a.example"}]
    with pytest.raises(ConfigError, match="other SSL_acme_"):
        GServer(port=ports, **common).start()


def test_a_certificate_not_for_the_orders_key_is_not_saved(tmp_path: Path) -> None:
    """The leaf must be for the key of the CSR (a CA answering with another order's
    certificate would otherwise be stored with a key it does not match)."""
    store = AcmeStore(str(tmp_path))
    cert, key = make_self_signed(["a.example"])
    pem = cert.public_bytes(serialization.Encoding.PEM)
    ca = "https://ca.example/dir"
    with pytest.raises(ValueError, match="not for the key"):
        store.save(("a.example",), ca, pem, make_self_signed(["a.example"])[1])
    assert store.load(("a.example",), ca) is None
    store.save(("a.example",), ca, pem, key)
    loaded = store.load(("a.example",), ca)
    assert loaded is not None and loaded.chain == [cert]
    # Per CA: a staging certificate is not the production one, but stays at hand (served
    # until the new CA's one comes).
    other = "https://other-ca.example/dir"
    assert store.load(("a.example",), other) is None
    found = store.load_other(("a.example",), other)
    assert found is not None and found.path == loaded.path
    assert store.load_other(("a.example",), ca) is None
