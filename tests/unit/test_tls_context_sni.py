"""build_context: per-certificate options split by SNI name, and their errors.

Pure option handling, plus a build that fails for one SNI name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from support.handshake import WHERE, Pems, assert_names

from gnetserver.errors import ConfigError
from gnetserver.tls import build_context

pytestmark = pytest.mark.timeout(10)


# ---------------------------------------------------------------------------------------------
# SNI: splitting the per-certificate keys by name (pure)


def test_split_without_dicts() -> None:
    from gnetserver.tls.sni import split_by_name

    split = split_by_name({"SSL_cert_file": "c.pem", "SSL_version": "TLSv1_3"}, WHERE)
    assert list(split) == [""]
    assert split[""][0]["SSL_cert_file"] == "c.pem" and split[""][0]["SSL_key_file"] is None


def test_split_by_name_with_scalars_and_ecc_twins() -> None:
    from gnetserver.tls.sni import split_by_name

    opts = {
        "SSL_cert_file": {"": "d.pem", "B.Example.": "b.pem", "b.example%ecc": "b-ec.pem"},
        "SSL_key_file": {"b.example": "b.key"},
        "SSL_ocsp_staple_callback": print,
    }
    split = split_by_name(opts, WHERE)
    assert list(split) == ["", "b.example"]
    assert [c["SSL_cert_file"] for c in split["b.example"]] == ["b.pem", "b-ec.pem"]
    assert [c["SSL_key_file"] for c in split["b.example"]] == ["b.key", None]
    assert split[""][0]["SSL_key_file"] is None
    assert all(c["SSL_ocsp_staple_callback"] is print for cs in split.values() for c in cs)


@pytest.mark.parametrize(("opts", "message"), [
    ({"SSL_cert_file": {"a%rsa": "x"}}, "only the suffix '%ecc' is known"),
    ({"SSL_cert_file": {1: "x"}}, "dict keys are SNI host names"),
    ({"SSL_cert_file": {"a%ecc": "x"}}, "adds a certificate to 'a', which has none"),
    ({"SSL_cert_file": {"": "x"}, "SSL_ocsp_staple_file": {"b": "o.der"}},
     "SSL_ocsp_staple_file has an entry for 'b', which has no certificate"),
])
def test_split_errors(opts: dict[str, Any], message: str) -> None:
    from gnetserver.tls.sni import split_by_name

    with pytest.raises(ConfigError, match=re.escape(message)) as err:
        split_by_name(opts, WHERE)
    assert_names(err)


def test_sni_errors_name_the_host(pems: Pems, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    opts = {"SSL_cert_file": {"": str(pems.combined), "a.example": missing}}
    with pytest.raises(ConfigError) as err:
        build_context(opts, WHERE)
    assert_names(err, "(SNI name 'a.example')", missing, "cannot read")
