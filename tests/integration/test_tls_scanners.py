"""The default TLS settings, proven by real scanners: sslyze and ``openssl s_client``.

A server started with nothing but a certificate and its key (proto ssl, every other TLS option
at its default) is scanned by sslyze, which must find: no SSL 2/3, TLS 1.0 or 1.1; no CBC and no
static-RSA suites; no compression; secure renegotiation and no client-initiated renegotiation;
no Heartbleed, ROBOT or CCS injection; and compliance with Mozilla's "intermediate" profile
(``--mozilla_config intermediate``, sslyze's own checker: its exit status and verdict). The scan
runs once with an ECDSA P-256 certificate and once with RSA-2048, since static-RSA suites and
ROBOT only mean something with an RSA key.

sslyze pins an older cryptography than gnetserver needs, so it runs from a virtual environment
of its own (``~/.cache/gnetserver-sslyze-venv-<version>``, made on first use by a session
fixture, or beforehand by ``.ci/run``), never from the environment under test. A venv that
cannot be made is a failure, not a skip.

The certificates are made here with cryptography rather than trustme: trustme marks the
subjectAltName critical next to a non-empty subject, which the path validation of sslyze's
Mozilla check rejects (RFC 5280), and it issues them for centuries where the profile allows
366 days.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from support.sslyze import VENV_SECONDS, ensure_sslyze_venv, sslyze_venv_path

from gnetserver import GServer
from gnetserver.testing import ServerThread

SCAN_SECONDS = 60
OPENSSL = shutil.which("openssl")


@pytest.fixture(scope="session")
def sslyze_python() -> Path:
    """The python of the sslyze venv, created on first use (a failure, never a skip)."""
    try:
        return ensure_sslyze_venv(sslyze_venv_path())
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        pytest.fail(f"cannot create the sslyze venv at {sslyze_venv_path()}: {e}")


# ---------------------------------------------------------------------------------------------
# A small PKI as a browser would accept it: CA, then a 90-day leaf for localhost/127.0.0.1


def _name(text: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, text)])


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_pki(folder: Path, key_type: str) -> dict[str, str]:
    """Files ``ca``, ``cert`` (leaf + CA) and ``key`` for a leaf of ``key_type`` ecdsa/rsa."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder().subject_name(_name("gnetserver scan CA"))
        .issuer_name(_name("gnetserver scan CA")).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256()))
    key: Any = (ec.generate_private_key(ec.SECP256R1()) if key_type == "ecdsa"
                else rsa.generate_private_key(public_exponent=65537, key_size=2048))
    ip = x509.IPAddress(ipaddress.ip_address("127.0.0.1"))
    leaf = (
        x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=90))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), ip]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       False)
        .sign(ca_key, hashes.SHA256()))
    paths = {name: str(folder / f"{key_type}-{name}.pem") for name in ("ca", "cert", "key")}
    Path(paths["ca"]).write_bytes(_pem(ca_cert))
    Path(paths["cert"]).write_bytes(_pem(leaf) + _pem(ca_cert))
    Path(paths["key"]).write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return paths


@pytest.fixture(scope="module", params=["ecdsa", "rsa"])
def default_server(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, str]]:
    """(port, CA file) of a proto ssl server with the DEFAULT TLS settings: only cert + key."""
    pki = make_pki(tmp_path_factory.mktemp("scan"), str(request.param))
    server = GServer(port="127.0.0.1:0/ssl", SSL_cert_file=pki["cert"],
                     SSL_key_file=pki["key"], log_level=1)
    with ServerThread(server):
        yield int(server.listeners[0].port), pki["ca"]


# ---------------------------------------------------------------------------------------------


def run_sslyze(python: Path, port: int, ca_file: str, out: Path) -> tuple[Any, str, int]:
    """Scan localhost:port with sslyze; (the one server result from JSON, stdout, exit code)."""
    command = [str(python), "-m", "sslyze", "--json_out", str(out), "--mozilla_config",
               "intermediate", "--certinfo_ca_file", ca_file, f"localhost:{port}{{127.0.0.1}}"]
    # The venv's own packages only: nothing of the environment under test may leak in.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    done = subprocess.run(command, capture_output=True, text=True, timeout=SCAN_SECONDS,
                          env=env)
    assert out.exists(), f"sslyze wrote no JSON ({done.returncode}):\n{done.stderr[-3000:]}"
    results = json.loads(out.read_text())["server_scan_results"]
    assert len(results) == 1 and results[0]["scan_status"] == "COMPLETED", results
    return results[0]["scan_result"], done.stdout, done.returncode


def result_of(scan: dict[str, Any], command: str) -> dict[str, Any]:
    """The result of one sslyze scan command, which must have completed."""
    attempt = scan[command]
    assert attempt["status"] == "COMPLETED", f"{command}: {attempt.get('error_trace')}"
    return dict(attempt["result"])


@pytest.mark.timeout(VENV_SECONDS + 120)  # the first run may build the venv first
def test_sslyze_finds_the_defaults_secure(sslyze_python: Path, default_server: tuple[int, str],
                                          tmp_path: Path) -> None:
    port, ca_file = default_server
    scan, console, status = run_sslyze(sslyze_python, port, ca_file, tmp_path / "scan.json")

    for old in ("ssl_2_0", "ssl_3_0", "tls_1_0", "tls_1_1"):
        found = result_of(scan, f"{old}_cipher_suites")
        assert not found["is_tls_version_supported"] and not found["accepted_cipher_suites"], old
    suites = [s["cipher_suite"]["name"]
              for s in result_of(scan, "tls_1_2_cipher_suites")["accepted_cipher_suites"]]
    assert suites, "TLS 1.2 must be offered"
    assert not [s for s in suites if "CBC" in s or s.startswith("TLS_RSA_")], suites
    assert all("ECDHE_" in s or "DHE_" in s for s in suites), suites  # forward secret only
    assert result_of(scan, "tls_1_3_cipher_suites")["is_tls_version_supported"]

    assert result_of(scan, "tls_compression")["supports_compression"] is False
    renegotiation = result_of(scan, "session_renegotiation")
    assert renegotiation["supports_secure_renegotiation"] is True
    assert renegotiation["is_vulnerable_to_client_renegotiation_dos"] is False
    assert result_of(scan, "heartbleed")["is_vulnerable_to_heartbleed"] is False
    assert result_of(scan, "openssl_ccs_injection")["is_vulnerable_to_ccs_injection"] is False
    assert result_of(scan, "robot")["robot_result"] in (
        "NOT_VULNERABLE_NO_ORACLE", "NOT_VULNERABLE_RSA_NOT_SUPPORTED")

    verdict = console[console.find("COMPLIANCE AGAINST TLS CONFIGURATION"):]
    assert status == 0 and "OK - Compliant" in verdict, f"not Mozilla intermediate:\n{verdict}"


# ---------------------------------------------------------------------------------------------


def s_client(port: int, ca_file: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """One ``openssl s_client`` handshake (verifying the certificate), then EOF on stdin."""
    assert OPENSSL is not None
    command = [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
               "-verify_hostname", "localhost", "-CAfile", ca_file, "-verify_return_error",
               "-brief", *flags]
    return subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=20)


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
@pytest.mark.timeout(60)
def test_openssl_s_client_handshakes(default_server: tuple[int, str]) -> None:
    port, ca_file = default_server
    for flag, version in (("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")):
        done = s_client(port, ca_file, flag)
        text = done.stdout + done.stderr
        assert done.returncode == 0, text
        assert f"Protocol version: {version}" in text and "Verification: OK" in text, text
    # TLS 1.1, with the client's own security level lowered so that only the server can refuse.
    done = s_client(port, ca_file, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    text = done.stdout + done.stderr
    assert done.returncode != 0 and "Protocol version: TLSv1.1" not in text, text
    assert "alert protocol version" in text, text  # the server's alert, not a client refusal
