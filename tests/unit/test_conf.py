"""The frozen, typed configuration (gnetserver.conf, issue 7 part 4) and the pure layer.

``plan_conf`` is called directly here (no server); tests/unit/test_config.py checks the same
precedence through a real ``run()``.
"""

from __future__ import annotations

import copy
import subprocess
import sys
from typing import Any

import pytest

from gnetserver import GServer, config
from gnetserver.conf import DEFAULT_VALUES, TYPED_OPTIONS, Conf, FrozenList, plan_conf
from gnetserver.errors import ConfigError
from gnetserver.options import (
    DEFAULT_PORT,
    NETSERVER_COMPAT,
    OPTIONS,
    Option,
    as_bool,
    as_str,
    default_text,
    int_in,
    table,
)

KNOWN = table(OPTIONS)


def plan(*, constructor: dict[str, Any] | None = None, commandline: list[str] | None = None,
         run_args: dict[str, Any] | None = None, default_values: dict[str, Any] | None = None,
         environ: dict[str, str] | None = None, known: dict[str, Option] | None = None,
         strict: bool = False) -> tuple[Conf, list[str]]:
    """plan_conf with empty sources unless given."""
    return plan_conf(KNOWN if known is None else known, constructor=constructor or {},
                     commandline=commandline or [], run_args=run_args or {},
                     default_values=default_values or {}, environ=environ or {}, strict=strict)


# -- the typed attributes never drift from the table -------------------------------------------


def test_typed_attributes_are_exactly_the_base_options() -> None:
    """Every base option that is not SSL_* and not a Net::Server compatibility key is a typed
    attribute of Conf, and nothing else is."""
    expected = [option.name for option in OPTIONS
                if not option.name.startswith("SSL_") and option.section != NETSERVER_COMPAT]
    assert sorted(TYPED_OPTIONS) == sorted(expected)
    assert sorted(Conf.__annotations__) == sorted(expected)


@pytest.mark.parametrize("conf", [
    pytest.param(Conf(), id="defaults"),
    pytest.param(plan(commandline=["--port=8443", "--port", "9443", "--max_servers=9",
                                   "--setsid", "--group", "a,b", "--deny=x"])[0], id="planned"),
])
def test_each_attribute_equals_the_mapping(conf: Conf) -> None:
    for name in TYPED_OPTIONS:
        assert getattr(conf, name) == conf[name], name


def test_attribute_values_are_typed() -> None:
    conf, _ = plan(commandline=["--max_servers=9", "--timeout_idle", "0", "--setsid"])
    assert conf.max_servers == 9 and conf.timeout_idle == 0.0 and conf.setsid is True
    assert conf.port == [] and conf.host == ["*"] and conf.log_level == 2


# -- the mapping ---------------------------------------------------------------------------------


def test_mapping_covers_every_option_with_subclass_options() -> None:
    known = table([*OPTIONS, Option("greeting", "hi", as_str, "First line.")])
    conf, _ = plan(known=known, constructor={"greeting": "ahoy", "SSL_cert_file": "c.pem",
                                             "min_servers": "5"})
    assert set(conf) == set(known) and len(conf) == len(known)
    assert conf["greeting"] == "ahoy" and conf.get("greeting") == "ahoy"
    assert conf["SSL_cert_file"] == "c.pem" and conf["min_servers"] == "5"
    assert "greeting" in conf and "nope" not in conf and conf.get("nope", 7) == 7
    assert dict(conf.items())["port"] == [] and conf == dict(conf)
    with pytest.raises(KeyError):
        conf["nope"]


def test_list_values_compare_equal_to_lists() -> None:
    conf, _ = plan(constructor={"cidr_allow": "10.0.0.0/8"})
    assert conf["cidr_allow"] == ["10.0.0.0/8"] and isinstance(conf.cidr_allow, list)


def test_sources_name_the_winner_and_leave_defaults_out() -> None:
    conf, unused = plan(constructor={"port": 1}, commandline=["--log_level=3", "word"],
                        run_args={"max_servers": 4}, default_values={"deny": "x"},
                        environ={"IPV": "4"})
    assert dict(conf.sources) == {"port": "constructor arguments", "log_level": "command line",
                                  "max_servers": "run() arguments", "deny": DEFAULT_VALUES,
                                  "ipv": "environment variable IPV"}
    assert unused == ["word"] and conf.ipv == ["4"]


def test_precedence_and_the_ipv_environment() -> None:
    conf, _ = plan(constructor={"log_level": 1}, commandline=["--log_level=2", "--ipv=6"],
                   run_args={"log_level": 3}, default_values={"log_level": 4},
                   environ={"IPV": "4"})
    assert conf.log_level == 1 and conf.ipv == ["6"]  # IPV only when no source sets ipv
    assert plan(environ={"IPV": "0"})[0].ipv == ["*"]  # Perl's ||: 0 is unset
    with pytest.raises(ConfigError, match="IPV='x'"):
        plan(environ={"IPV": "x"})


def test_conf_file_is_read_from_the_highest_source_naming_it(tmp_path: Any) -> None:
    path = tmp_path / "s.conf"
    path.write_text("max_servers 7\nlog_level 4\n")
    conf, _ = plan(run_args={"conf_file": str(path)}, commandline=["--log_level=1"])
    assert conf.max_servers == 7 and conf.log_level == 1
    assert conf.sources["max_servers"] == f"conf_file {str(path)!r}"


def test_strict_refuses_words_that_are_no_option() -> None:
    with pytest.raises(ConfigError, match="unknown option 'bogus'"):
        plan(commandline=["--bogus=1"], strict=True)
    assert plan(commandline=["--bogus=1"])[1] == ["--bogus=1"]


# -- frozen, and replace() -----------------------------------------------------------------------


def test_assignment_is_refused_and_points_at_replace() -> None:
    conf = Conf()
    attempts = [lambda: setattr(conf, "port", [1]), lambda: conf.__setitem__("port", [1]),
                lambda: delattr(conf, "port"), lambda: conf.__delitem__("port"),
                lambda: setattr(conf, "anything", 1), lambda: conf.deny.append("x"),
                lambda: conf.deny.extend(["x"]), lambda: conf.deny.pop(),
                lambda: conf.deny.__setitem__(0, "x"), lambda: conf.deny.__iadd__(["x"])]
    for attempt in attempts:
        with pytest.raises(TypeError, match=r"replace\("):
            attempt()
    assert conf.port == [] and conf.deny == []


def test_replace_converts_and_leaves_the_original() -> None:
    conf, _ = plan(commandline=["--deny=a"])
    changed = conf.replace(deny=r"127\.0\.0\.1", log_level="4", self_signed="yes")
    assert changed.deny == [r"127\.0\.0\.1"] and changed["log_level"] == 4
    assert changed.self_signed is True and changed.sources["log_level"] == "replace()"
    assert conf.deny == ["a"] and conf.log_level == 2 and "log_level" not in conf.sources
    assert changed.replace(deny=[]).deny == []
    assert isinstance(changed.deny, FrozenList)


@pytest.mark.parametrize(("changes", "words"), [
    ({"log_level": "loud"}, ["'log_level'", "'loud'", "replace()"]),
    ({"max_servers": 0}, ["'max_servers'", "at least 1"]),
    ({"deny": "("}, ["'deny'", "regular expression"]),
    ({"bogus": 1}, ["unknown option 'bogus'"]),
])
def test_replace_refuses_bad_values_and_unknown_names(changes: dict[str, Any],
                                                      words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        Conf().replace(**changes)
    for word in words:
        assert word in str(caught.value)


def test_copies_are_equal_and_frozen() -> None:
    conf, _ = plan(commandline=["--port=1", "--deny=x"])
    twin = copy.deepcopy(conf)
    assert twin == conf and twin.sources == conf.sources and twin.port == ["1"]
    with pytest.raises(TypeError):
        twin.port.append(2)


# -- the server keeps it -------------------------------------------------------------------------


def test_configure_sets_conf_sources_and_unused_words() -> None:
    server = GServer(commandline=["--log_level=3", "extra"], port="127.0.0.1:0")
    server.configure()
    assert isinstance(server.conf, Conf) and server.conf.log_level == 3
    assert server.conf_sources == server.conf.sources
    assert server.conf_sources["port"] == "constructor arguments"
    assert server.argv_unused == ["extra"]


class NeedsArgument(GServer):
    """A class whose __init__ the gnetserver command cannot call."""

    def __init__(self, db: object, **options: Any) -> None:
        super().__init__(**options)
        self.db = db

    def options(self) -> list[Option]:
        return [*super().options(), Option("db_table", "t", as_str, "Table to read.")]


def test_option_table_reads_a_class_without_building_it() -> None:
    known = NeedsArgument.option_table()
    assert "db_table" in known and "port" in known
    assert GServer.option_table() == KNOWN


# -- command-line fixes (issue 7 part 5) ---------------------------------------------------------

FLAG_NAMES = sorted(o.name for o in OPTIONS if o.cli and o.bare_flag)
VALUE_NAMES = sorted(o.name for o in OPTIONS if o.cli and not o.bare_flag)


def test_on_off_options_are_the_flags() -> None:
    assert {"setsid", "background", "self_signed"} <= set(FLAG_NAMES)
    assert all(o.bare_flag for o in OPTIONS if o.convert is as_bool)
    assert {"port", "SSL_cert_file", "log_level", "user"} <= set(VALUE_NAMES)


@pytest.mark.parametrize("name", VALUE_NAMES)
def test_a_bare_flag_of_a_valued_option_is_an_error_naming_it(name: str) -> None:
    for words in (["--" + name], ["--" + name, "--log_level", "3"]):
        with pytest.raises(ConfigError, match=rf"option '{name}' \(command line\): --{name} "
                                              r"needs a value"):
            config.from_command_line(words, KNOWN, strict=False)


def test_bare_port_and_cert_file_examples_from_the_issue() -> None:
    with pytest.raises(ConfigError, match="'port'"):
        plan(commandline=["--port"])
    with pytest.raises(ConfigError, match="'SSL_cert_file'") as caught:
        plan(commandline=["--SSL_cert_file", "--port", "9443"])
    assert "'1'" not in str(caught.value)


@pytest.mark.parametrize("name", FLAG_NAMES)
def test_a_bare_on_off_option_still_means_1(name: str) -> None:
    source, rest = config.from_command_line(["--" + name, "--log_level", "3"], KNOWN, True)
    assert source[name] == ["1"] and source["log_level"] == ["3"] and rest == []


def test_integer_message_says_at_least() -> None:
    with pytest.raises(ValueError, match=r"^expected an integer of at least 1$"):
        int_in(1)(0)
    with pytest.raises(ValueError, match=r"^expected an integer from 0 to 4$"):
        int_in(0, 4)(5)


def test_port_default_is_shown_as_the_default_port() -> None:
    assert default_text(KNOWN["port"]) == str(DEFAULT_PORT) == "20203"
    help_line = config.command_line_parser(KNOWN).format_help()
    assert f"(default: {DEFAULT_PORT})" in " ".join(help_line.split())


# -- the pure layer ------------------------------------------------------------------------------

PURE_MODULES = ["gnetserver.options", "gnetserver.config", "gnetserver.conf", "gnetserver.ports",
                "gnetserver.portgrammar", "gnetserver.access", "gnetserver.ssl_names"]


def test_pure_modules_load_no_network_or_tls_library() -> None:
    """Importing the option table, the sources, the conf, the port grammar and the access rules
    in a fresh interpreter loads neither gevent, OpenSSL nor cryptography."""
    code = ("import sys\n"
            f"for name in {PURE_MODULES!r}: __import__(name)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'gevent', 'OpenSSL', 'cryptography'}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=30, check=True).stdout
    assert out.strip() == "[]"


def test_tls_layer_uses_the_ssl_names() -> None:
    """The TLS layer takes the option names from ssl_names rather than keeping copies."""
    from gnetserver import ssl_names
    from gnetserver.tls import context

    assert context.SUPPORTED_SSL_OPTIONS is ssl_names.SUPPORTED_SSL_OPTIONS
    assert context.REFUSED_SSL_OPTIONS is ssl_names.REFUSED_SSL_OPTIONS
