"""A venv whose pyOpenSSL runs over the system's OpenSSL 3.0, for bench/idle_tls.py --python.

The ``cryptography`` wheels bundle their own OpenSSL (4.0.3 in the project's venv, 3.5 in the
oldest release gnetserver accepts, 45.0.7). Building ``cryptography`` from source against
the system library needs its Rust crates from crates.io, which this machine cannot reach. So
this takes Debian's ``python3-cryptography`` (38.0.4, linked to the system libssl 3.0) and
puts the venv's pyOpenSSL (26.4.0, pure Python) on it, with a shim for the three things
gnetserver needs that cryptography 38 lacks: ``SSL_CTX_set1_curves_list`` in the cffi binding
(called here as what the macro is, ``SSL_CTX_ctrl(ctx, 92, 0, list)``, on the same libssl;
since d1a7397 gnetserver starts without it, on OpenSSL's own groups: the shim keeps its
default groups, as on the other OpenSSLs), ``x509.load_pem_x509_certificates`` (39) and the
certificates' ``not_valid_*_utc`` (42).
That combination is unsupported (pyOpenSSL 26.4 asks for cryptography >= 49): it is for
measuring memory, nothing else::

    apt-get install python3-openssl python3-cryptography python3-venv   # Debian 12
    python bench/system_openssl_venv.py /work/venv-sysssl-py26
    python bench/idle_tls.py --python /work/venv-sysssl-py26/bin/python
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

SHIM = '''"""bench/system_openssl_venv.py's shim (memory measurements only): gnetserver on Debian's
cryptography 38 (the system OpenSSL 3.0) with pyOpenSSL 26."""
import ctypes
import datetime
import re
import sys

if "/usr/lib/python3/dist-packages" not in sys.path:
    sys.path.append("/usr/lib/python3/dist-packages")  # a .pth runs before site adds it

import OpenSSL._util
from cryptography import x509
from OpenSSL._util import ffi, lib

_libssl = ctypes.CDLL("libssl.so.3")
_libssl.SSL_CTX_ctrl.restype = ctypes.c_long
_libssl.SSL_CTX_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_char_p]


class _Lib:
    def __getattr__(self, name):
        return getattr(lib, name)

    @staticmethod
    def SSL_CTX_set1_curves_list(ctx, groups):
        return _libssl.SSL_CTX_ctrl(int(ffi.cast("uintptr_t", ctx)), 92, 0, groups)


OpenSSL._util.lib = _Lib()


class _Certificate:
    """A certificate with cryptography 42's not_valid_*_utc."""

    def __init__(self, inner):
        object.__setattr__(self, "_inner", inner)

    def __getattr__(self, name):
        return getattr(self._inner, name)

    @property
    def not_valid_after_utc(self):
        return self._inner.not_valid_after.replace(tzinfo=datetime.timezone.utc)

    @property
    def not_valid_before_utc(self):
        return self._inner.not_valid_before.replace(tzinfo=datetime.timezone.utc)

    def __eq__(self, other):
        return self._inner == getattr(other, "_inner", other)

    def __hash__(self):
        return hash(self._inner)


x509.Certificate.register(_Certificate)


def _load_pem_x509_certificates(data):
    blocks = re.findall(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", data, re.S)
    if not blocks:
        raise ValueError("no certificate")
    return [_Certificate(x509.load_pem_x509_certificate(block)) for block in blocks]


x509.load_pem_x509_certificates = _load_pem_x509_certificates
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("venv", type=Path, help="where to make it")
    parser.add_argument("--system-python", default="/usr/bin/python3")
    args = parser.parse_args()
    import gevent
    import OpenSSL

    subprocess.run([args.system_python, "-m", "venv", "--system-site-packages", str(args.venv)],
                   check=True)
    pip = [str(args.venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    subprocess.run([*pip, f"gevent=={gevent.__version__}", "typing_extensions", "setproctitle",
                    "httptools"], check=True)
    subprocess.run([*pip, "--no-deps", f"pyOpenSSL=={OpenSSL.__version__}"], check=True)
    site = subprocess.run([str(args.venv / "bin" / "python"), "-c",
                           "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "gnet_system_openssl_shim.py").write_text(SHIM)
    (Path(site) / "gnet_system_openssl_shim.pth").write_text("import gnet_system_openssl_shim\n")
    probe = ("import OpenSSL, cryptography; from OpenSSL import SSL; "
             "print('pyOpenSSL', OpenSSL.__version__, 'cryptography', cryptography.__version__, "
             "'over', SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode())")
    subprocess.run([str(args.venv / "bin" / "python"), "-c", probe], check=True)


if __name__ == "__main__":
    sys.exit(main())
