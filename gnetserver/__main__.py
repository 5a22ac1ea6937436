"""The ``gnetserver`` command: options from the table, a server class, ``run()``.

With no arguments it starts the demo: Net::Server's echo over TLS on 127.0.0.1:8443 and over
plain TCP on 127.0.0.1:8080, with a self-signed certificate made in memory at start.

A ``--server`` class is built as ``Class(commandline=words)``. Its option table (for ``--help``
and for refusing unknown words) is read first without building it
(:meth:`GServer.option_table <gnetserver.server.GServer.option_table>`), and
the command line is planned once with :func:`gnetserver.conf.plan_conf` (``strict``: a word
that is no option stops the command). So ``--help`` works for any class, and a class whose
``__init__`` needs other arguments gets a clear error, not a traceback, when asked to run.

``--wsgi package.module:app`` serves a WSGI application with
:class:`~gnetserver.http.GHTTPServer` (it is the option ``--wsgi_app``; with ``--server`` the
class given, which must take that option, is used instead).

``--server package.module:Class`` finds modules in the current directory, as
``python -m gnetserver`` does: :func:`main` puts the current directory first on ``sys.path``
(a console script gets its own directory there instead).
"""

import sys

# Monkey-patching must come before anything imports ssl, socket users or OpenSSL.
if "--monkey-patch" in sys.argv[1:]:
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import importlib  # noqa: E402
import inspect  # noqa: E402
import os  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from typing import Any  # noqa: E402

from gnetserver import config  # noqa: E402
from gnetserver.conf import plan_conf  # noqa: E402
from gnetserver.errors import ConfigError  # noqa: E402
from gnetserver.options import Option  # noqa: E402
from gnetserver.server import GServer  # noqa: E402

DEMO_PORTS = ["127.0.0.1:8443/ssl", "127.0.0.1:8080/tcp"]


class DemoServer(GServer):
    """The demo: Net::Server's echo on 127.0.0.1:8443 (TLS, self-signed) and :8080 (TCP)."""

    def default_values(self) -> dict[str, Any]:
        """The demo's defaults, the lowest source: its two ports, and a self-signed certificate
        made at start for ssl ports without one (``--port`` replaces the ports; with
        ``--SSL_cert_file`` no certificate is made)."""
        return {"port": DEMO_PORTS, "self_signed": True}


def load_class(path: str) -> type[GServer]:
    """``package.module:Class`` -> the class (a GServer subclass)."""
    module_name, _, class_name = path.partition(":")
    if not module_name or not class_name:
        raise ConfigError(f"--server {path!r}: expected 'package.module:Class'")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--server {path!r}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, GServer)):
        raise ConfigError(f"--server {path!r}: not a gnetserver.GServer subclass")
    return cls


def check_constructible(cls: type[GServer], path: str) -> None:
    """Refuse, before anything starts, a class that ``Class(commandline=words)`` cannot
    build (its ``__init__`` needs other arguments). The signature is checked rather than a
    TypeError caught, so that a TypeError raised inside ``__init__`` keeps its traceback."""
    try:
        inspect.signature(cls).bind(commandline=[])
    except TypeError as exc:
        raise ConfigError(
            f"--server {path!r}: the gnetserver command builds the server as "
            f"{cls.__name__}(commandline=...) but {cls.__module__}.{cls.__qualname__} "
            f"cannot be built so ({exc}); give its other arguments defaults, or construct it "
            f"in your own script and call run()") from None
    except ValueError:
        pass  # no signature to inspect (a C-level __init__): let construction tell


def split_own_flags(words: Sequence[str]) -> tuple[str | None, list[str]]:
    """Take ``--server X`` / ``--server=X`` and ``--monkey-patch`` out of the words;
    ``--wsgi X`` becomes the option ``--wsgi_app X`` (of GHTTPServer)."""
    server, rest, it = None, [], iter(words)
    for word in it:
        if word == "--server":
            server = next(it, "")
        elif word.startswith("--server="):
            server = word.split("=", 1)[1]
        elif word == "--wsgi":
            rest += ["--wsgi_app", next(it, "")]
        elif word.startswith("--wsgi="):
            rest += ["--wsgi_app", word.split("=", 1)[1]]
        elif word != "--monkey-patch":
            rest.append(word)
    return server, rest


def http_server_class() -> type[GServer]:
    """GHTTPServer, the class ``--wsgi`` runs unless ``--server`` names another (imported
    here: the demo does not need the HTTP personality)."""
    from gnetserver.http import GHTTPServer

    return GHTTPServer


def current_directory_on_path() -> None:
    """Put the current directory first on ``sys.path`` (once), as ``python -m`` does, so that
    ``gnetserver --server mymod:Echo`` run beside ``mymod.py`` finds it; the console script
    ``gnetserver`` would otherwise only search its own bin directory. Called by :func:`main`
    before it loads the ``--server`` class."""
    cwd = os.getcwd()
    if not sys.path or os.path.abspath(sys.path[0] or ".") != cwd:
        sys.path.insert(0, cwd)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``gnetserver`` and ``python -m gnetserver``: load the ``--server``
    class (default: the demo), print ``--help`` or check the whole command line
    (:func:`~gnetserver.conf.plan_conf`, strict), then build the server and ``run()`` it.
    Returns the exit status: 0, or 2 after printing a ConfigError."""
    words = list(sys.argv[1:] if argv is None else argv)
    try:
        server_path, rest = split_own_flags(words)
        wsgi = "--wsgi_app" in rest
        if server_path or wsgi:
            current_directory_on_path()
        if server_path:
            cls = load_class(server_path)
        else:
            cls = http_server_class() if wsgi else DemoServer
        known = cls.option_table()
        if "-h" in rest or "--help" in rest:
            print_help(known)
            return 0
        # Unknown words and bad values fail here, before the class is built; the server
        # plans again in run() with its default_values() and run() arguments.
        plan_conf(known, constructor={}, commandline=rest, run_args={}, default_values={},
                  environ=os.environ, strict=True)
        check_constructible(cls, server_path or "")
        cls(commandline=rest).run()
    except ConfigError as exc:
        print(f"gnetserver: {exc}", file=sys.stderr)
        return 2
    return 0


def print_help(known: Mapping[str, Option]) -> None:
    """Print ``--help`` for the option table ``known`` (one entry per option the command line
    accepts, grouped by section) to stdout; the epilog names the code-only options."""
    code_only = ", ".join(name for name, option in known.items() if not option.cli)
    # The command's own flags (taken out by split_own_flags before the options are read):
    # real arguments here only so that the usage line (first) and the help show them.
    own = argparse.ArgumentParser(add_help=False)
    group = own.add_argument_group("The gnetserver command")
    group.add_argument("--server", metavar="package.module:Class",
                       help="run this GServer subclass (found in the current directory too) "
                            "instead of the demo")
    group.add_argument("--monkey-patch", action="store_true",
                       help="apply gevent.monkey.patch_all() before anything else is imported")
    group.add_argument("--wsgi", metavar="package.module:app",
                       help="serve this WSGI application with the HTTP personality "
                            "(GHTTPServer; the option wsgi_app)")
    parser = config.command_line_parser(
        known, prog="gnetserver", parents=[own],
        description="Net::Server on gevent. With no options: the TLS/TCP echo demo on "
                    "127.0.0.1:8443 (ssl, self-signed) and 127.0.0.1:8080 (tcp); --port "
                    "replaces the demo's ports.",
        epilog="Every option may be repeated; list options accumulate. On/off options "
               "([VALUE]) given bare mean 1."
               + (f" For code only (constructor or run() arguments): {code_only}."
                  if code_only else ""),
    )
    parser.print_help()


if __name__ == "__main__":
    sys.exit(main())
