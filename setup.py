"""Packaging for gnetserver: Perl's Net::Server rebuilt on gevent, with TLS first."""

from setuptools import find_packages, setup

setup(
    name="gnetserver",
    version="0.1.0",
    description="Net::Server for Python on gevent: TCP/TLS/UNIX daemons with Net::Server's hooks",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    packages=find_packages(include=["gnetserver", "gnetserver.*"]),
    package_data={"gnetserver": ["py.typed"]},
    python_requires=">=3.10",
    install_requires=[
        "gevent>=24.2",
        "greenlet>=3.0",
        # pyOpenSSL 25.2: Context.set_tls13_ciphersuites (SSL_ciphersuites); 24.3 already gave
        # cryptography objects to use_certificate/use_privatekey/get_peer_certificate and
        # X509Store.add_crl. It requires cryptography 45.0.7; we use x509
        # load_pem_x509_certificates (39), not_valid_*_utc (42), OCSP next_update_utc (43).
        "pyOpenSSL>=25.2",
        "cryptography>=45.0.7",
        # gnetserver.http: the HTTP/1.1 request parser (llhttp); chosen over h11 by
        # bench/http_parsers.py (15-21x less CPU per request).
        "httptools>=0.6",
        # PreFork: readable worker titles in ps (the whole command line; prctl only sets the
        # 15-byte name).
        "setproctitle>=1.3",
        # gnetserver.acme: the JOSE parts of the ACME client (JWK thumbprint, ES256); the
        # certbot project's library, without certbot's HTTP stack.
        "josepy>=2.0",
        # metrics_port: the Prometheus exposition, PreFork's multiprocess mode (imported only
        # when metrics_port is set; pure Python, no dependency of its own).
        "prometheus-client>=0.20",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout>=2.3",
            "trustme>=1.1",
            "psutil>=5.9",
            "ruff>=0.6",
            "locust>=2.20",
            # the HTTP personality's real clients and a real WSGI framework
            "requests>=2.31",
            "flask>=3.0",
            "docutils>=0.18",
            # the gates of .ci/run: types, import layers
            "mypy>=2.4",
            "types-gevent>=26.9",
            "import-linter>=2.17",
            # property-based tests of the parsers (tests/unit/test_properties.py)
            "hypothesis>=6.100",
        ],
        "bench": ["psutil>=5.9", "matplotlib>=3.7"],  # matplotlib: bench/soak.py's plot
    },
    entry_points={"console_scripts": ["gnetserver = gnetserver.__main__:main"]},
)
