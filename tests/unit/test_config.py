"""Option sources and precedence (issue 2, point 4), through the real ``run()``.

``run()`` is stopped right after ``post_configure_hook`` (as Net::Server's own
``t/Port_Configuration.t`` stops before binding), so every row goes through the same
configure path as a real start: constructor > command line > run() > conf_file >
default_values().
"""

from __future__ import annotations

import itertools
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from gnetserver import GServer, config
from gnetserver.conf import plan_conf
from gnetserver.errors import ConfigError
from gnetserver.options import OPTIONS, Option, as_str, table

pytestmark = pytest.mark.timeout(10)

SOURCES = ("new", "argv", "run", "conf", "defaults")  # highest precedence first


class Configured(Exception):
    """Raised by post_configure_hook to end run() once the options are known."""


class ConfigOnly(GServer):
    """A server that stops right after configuration and keeps ``self.conf``."""

    defaults: dict[str, Any] = {}

    def default_values(self) -> dict[str, Any]:
        return dict(self.defaults)

    def post_configure_hook(self) -> None:
        raise Configured


def configure(cls: type[ConfigOnly] = ConfigOnly, *, new: dict[str, Any] | None = None,
              argv: list[str] | None = None, run: dict[str, Any] | None = None,
              defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run the server's configure phase with these sources; return ``server.conf``."""
    server_cls = type("Row", (cls,), {"defaults": defaults or {}})
    server = server_cls(commandline=argv or [], **(new or {}))
    with pytest.raises(Configured):
        server.run(**(run or {}))
    return server.conf


def write_conf(tmp_path: Path, text: str) -> str:
    path = tmp_path / "server.conf"
    path.write_text(text, encoding="utf-8")
    return str(path)


# -- precedence: one row per subset of the five sources -----------------------------------------

SUBSETS = [combo for size in range(len(SOURCES) + 1)
           for combo in itertools.combinations(SOURCES, size)]


def _sources_for(combo: tuple[str, ...], tmp_path: Path, scalar: bool) -> dict[str, Any]:
    """Each source sets the option to its own value(s): source number i gives 11+i (scalar)
    or ports 1001+100*i and 1002+100*i (list, two values in the source)."""
    kwargs: dict[str, Any] = {"new": {}, "argv": [], "run": {}, "defaults": {}}
    conf_lines = []
    for source in combo:
        i = SOURCES.index(source)
        if scalar:
            value: Any = 11 + i
            words = [f"--max_servers={value}"]
            lines = [f"max_servers {value}"]
        else:
            value = [f"127.0.0.1:{1001 + 100 * i}", f"127.0.0.1:{1002 + 100 * i}"]
            words = [f"--port={value[0]}", "--port", value[1]]
            lines = [f"port {value[0]}", f"port: {value[1]}"]
        if source == "argv":
            kwargs["argv"] += words
        elif source == "conf":
            conf_lines += lines
        else:
            kwargs[source]["max_servers" if scalar else "port"] = value
    if conf_lines:
        kwargs["new"]["conf_file"] = write_conf(tmp_path, "\n".join(conf_lines) + "\n")
    return kwargs


@pytest.mark.parametrize("combo", SUBSETS, ids=lambda c: "+".join(c) or "none")
def test_precedence_scalar(combo: tuple[str, ...], tmp_path: Path) -> None:
    conf = configure(**_sources_for(combo, tmp_path, scalar=True))
    expected = 11 + SOURCES.index(combo[0]) if combo else 256  # 256: the table's default
    assert conf["max_servers"] == expected


@pytest.mark.parametrize("combo", SUBSETS, ids=lambda c: "+".join(c) or "none")
def test_precedence_list(combo: tuple[str, ...], tmp_path: Path) -> None:
    """The winning source gives the whole list; lower sources are not appended."""
    conf = configure(**_sources_for(combo, tmp_path, scalar=False))
    if not combo:
        assert conf["port"] == []
        return
    i = SOURCES.index(combo[0])
    assert conf["port"] == [f"127.0.0.1:{1001 + 100 * i}", f"127.0.0.1:{1002 + 100 * i}"]


@pytest.mark.parametrize("winner", SOURCES)
def test_conf_sources_name_the_source_that_won(winner: str, tmp_path: Path) -> None:
    """configure() keeps where each option came from (``conf_sources``): the winner among
    it and every lower source; an option no source set is absent."""
    combo = SOURCES[SOURCES.index(winner):]
    kwargs = _sources_for(combo, tmp_path, scalar=True)
    server = type("Row", (ConfigOnly,), {"defaults": kwargs.pop("defaults")})(
        commandline=kwargs.pop("argv"), **kwargs.pop("new"))
    with pytest.raises(Configured):
        server.run(**kwargs.pop("run"))
    labels = {"new": "constructor arguments", "argv": "command line",
              "run": "run() arguments", "defaults": "default_values()",
              "conf": f"conf_file {server.conf.get('conf_file')!r}"}
    assert server.conf_sources["max_servers"] == labels[winner]
    assert "max_servers" in server.conf and "timeout_idle" not in server.conf_sources
    if "conf" in combo:
        assert server.conf_sources["conf_file"] == "constructor arguments"


def test_merge_returns_values_and_provenance() -> None:
    known = table(OPTIONS)
    values, sources = config.merge([("first", {"log_level": ["3"]}),
                                    ("second", {"log_level": ["1"], "max_servers": ["7"]})],
                                   known)
    assert (values["log_level"], values["max_servers"]) == (3, 7)
    assert sources == {"log_level": "first", "max_servers": "second"}


def test_conf_file_named_by_any_source_is_read(tmp_path: Path) -> None:
    path = write_conf(tmp_path, "log_level 4\n")
    assert configure(argv=[f"--conf_file={path}"])["log_level"] == 4
    assert configure(run={"conf_file": path})["log_level"] == 4
    assert configure(defaults={"conf_file": path})["log_level"] == 4


# -- within one source ---------------------------------------------------------------------------


def test_list_options_accumulate_within_a_source(tmp_path: Path) -> None:
    ports = ["127.0.0.1:1/tcp", "127.0.0.1:2/ssl", "/tmp/x.sock|unix"]
    assert configure(argv=["--port", ports[0], f"--port={ports[1]}", "--port", ports[2]])[
        "port"] == ports
    assert configure(new={"port": ports})["port"] == ports
    assert configure(run={"port": tuple(ports)})["port"] == ports
    conf_file = write_conf(tmp_path, "".join(f"port {p}\n" for p in ports))
    assert configure(new={"conf_file": conf_file})["port"] == ports
    assert configure(argv=["--host", "127.0.0.1", "--host=::1"])["host"] == ["127.0.0.1", "::1"]


def test_scalar_options_take_the_last_value_within_a_source(tmp_path: Path) -> None:
    assert configure(argv=["--log_level", "1", "--log_level=3"])["log_level"] == 3
    conf_file = write_conf(tmp_path, "log_level 1\nlog_level=4\n")
    assert configure(new={"conf_file": conf_file})["log_level"] == 4


def test_conf_file_syntax(tmp_path: Path) -> None:
    """``key value``, ``key=value``, ``key: value``, ``--key value``, comments, ``\\#``."""
    conf_file = write_conf(tmp_path, (
        "# a comment\n\n"
        "log_level 3   # trailing comment\n"
        "max_servers=7\n"
        "timeout_idle: 2.5\n"
        "--listen 9\n"
        "SSL_cipher_list ECDHE+AESGCM\\#x\n"
    ))
    conf = configure(new={"conf_file": conf_file})
    assert (conf["log_level"], conf["max_servers"], conf["timeout_idle"], conf["listen"]) == (
        3, 7, 2.5, 9)
    assert conf["SSL_cipher_list"] == "ECDHE+AESGCM#x"


def test_values_are_converted_once_from_any_source() -> None:
    conf = configure(argv=["--self_signed=yes", "--timeout_handshake", "2"])
    assert conf["self_signed"] is True and conf["timeout_handshake"] == 2.0
    assert configure(new={"self_signed": 0})["self_signed"] is False


def test_bare_flag_means_1() -> None:
    """Net::Server's ``--setsid`` style: a bare flag before another option or at the end."""
    conf = configure(argv=["--self_signed", "--log_level", "3"])
    assert conf["self_signed"] is True and conf["log_level"] == 3
    assert configure(argv=["--log_level=3", "--self_signed"])["self_signed"] is True


@pytest.mark.parametrize("name", sorted(o.name for o in OPTIONS if o.cli))
def test_every_option_reads_both_command_line_forms(name: str) -> None:
    known = table(OPTIONS)
    for words in (["--" + name + "=v1", "--" + name, "v2"], [name + "=v1", "--" + name, "v2"]):
        source, rest = config.from_command_line(words, known, strict=True)
        assert rest == []
        assert source == {name: ["v1", "v2"]}


def test_unused_command_line_words_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    """run() reads sys.argv like Net::Server: words that are not options are left alone, and
    said so in the log (the ``gnetserver`` command itself refuses them: see test_cli)."""
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    configure(argv=["--log_level=2", "--not_an_option=1", "file.txt"])
    assert any("--not_an_option=1 file.txt" in r.getMessage() for r in caplog.records)


# -- errors name the option and the value --------------------------------------------------------

ERROR_ROWS = [
    # (id, sources, words the message must contain)
    ("new-unknown", {"new": {"bogus_option": 17}}, ["bogus_option", "17", "constructor"]),
    ("new-typo", {"new": {"max_server": 5}}, ["max_server", "max_servers"]),
    ("new-bad-int", {"new": {"max_servers": "many"}}, ["max_servers", "many"]),
    ("new-zero", {"new": {"max_servers": 0}}, ["max_servers", "0"]),
    ("new-list-for-scalar", {"new": {"log_level": [1, 2]}}, ["log_level", "[1, 2]"]),
    ("run-bad-level", {"run": {"log_level": -1}}, ["log_level", "-1", "run()"]),
    ("run-unknown", {"run": {"colour": "red"}}, ["colour", "red", "run()"]),
    ("argv-bad-seconds", {"argv": ["--timeout_handshake=soon"]},
     ["timeout_handshake", "soon", "command line"]),
    ("argv-bad-bool", {"argv": ["--self_signed", "maybe"]}, ["self_signed", "maybe"]),
    ("defaults-bad", {"defaults": {"listen": "deep"}}, ["listen", "deep", "default_values"]),
    ("defaults-unknown", {"defaults": {"max_kids": 3}}, ["max_kids", "3", "default_values"]),
    ("new-unknown-ssl", {"new": {"SSL_bogus": "x"}}, ["SSL_bogus", "SSL_cert_file",
                                                      "SSL_key_file", "SSL_version"]),
    ("run-unknown-ssl", {"run": {"SSL_frobnicate": 3}}, ["SSL_frobnicate", "SSL_ca_file"]),
]


@pytest.mark.parametrize("sources, words", [r[1:] for r in ERROR_ROWS],
                         ids=[r[0] for r in ERROR_ROWS])
def test_bad_options_stop_the_start(sources: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        configure(**sources)
    for word in words:
        assert word in str(info.value)


# (id, conf text, words the error holds, words it must not hold: a conf file's values)
CONF_ERROR_ROWS = [
    ("unknown", "max_servers 3\nbogus_key 12345\n", ["'bogus_key'", "line 2"], ["12345"]),
    ("bad-value", "max_servers 3\nlisten abcdef\n", ["'listen'", "line 2"], ["abcdef"]),
    ("bad-list-value", "cidr_allow 10.0.0.0/8\ncidr_allow secret-block\n",
     ["'cidr_allow'", "line 2"], ["secret"]),
    ("unknown-ssl", "SSL_foo barbaz\n", ["SSL_foo", "SSL_cert_file", "line 1"], ["barbaz"]),
    ("no-value", "justakey\n", ["line 1", "cannot parse"], ["justakey"]),
    ("code-only", "SSL_key hunter2-pem\n", ["'SSL_key'", "code only", "line 1"],
     ["hunter2"]),
    # issue 16 point 11: /etc/shadow given as a conf file quoted its first line
    ("shadow", "root:$6$abc.def$ghijkl:19000:0:99999:7:::\n", ["'root'", "line 1"],
     ["$6$", "abc", "19000"]),
    ("shadow-known-key", "max_servers:$6$abc.def$ghijkl:19000\n", ["'max_servers'", "line 1"],
     ["$6$", "abc"]),
    ("long-key", "k" * 60 + " 1\n", ["'" + "k" * 40 + "'", "cut to 40"], ["k" * 41]),
    ("not-a-word-key", "h\u00e9llo_s3cret 1\n", ["unknown option", "line 1"], ["s3cret"]),
    ("unparsable", "-----BEGIN PRIVATE KEY-----\n", ["line 1", "cannot parse"],
     ["PRIVATE", "BEGIN"]),
    ("mixed-rule", "allow 10\\..*|.*\\.secretlan\n", ["'allow'", "line 1", "split it"],
     ["secretlan"]),
]


@pytest.mark.parametrize("text, words, hidden", [r[1:] for r in CONF_ERROR_ROWS],
                         ids=[r[0] for r in CONF_ERROR_ROWS])
def test_bad_conf_file_stops_the_start(text: str, words: list[str], hidden: list[str],
                                       tmp_path: Path) -> None:
    """The error names the file, the line and the key, never the value (issue 16 point 11)."""
    conf_file = write_conf(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        configure(new={"conf_file": conf_file})
    for word in [*words, conf_file]:
        assert word in str(info.value)
    for word in hidden:
        assert word not in str(info.value)


def test_values_from_other_sources_are_still_quoted() -> None:
    with pytest.raises(ConfigError, match="bad value 'abcdef'"):
        configure(argv=["--listen=abcdef"])


def test_missing_conf_file(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.conf")
    with pytest.raises(ConfigError, match="conf_file") as info:
        configure(argv=[f"--conf_file={missing}"])
    assert missing in str(info.value)


# -- issue 16 point 11: a conf file is bounded UTF-8 text -----------------------------------------


def test_non_utf8_conf_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    """It was a raw UnicodeDecodeError traceback."""
    path = tmp_path / "latin1.conf"
    path.write_bytes(b"max_servers 3\nsyslog_ident caf\xe9\n")
    with pytest.raises(ConfigError) as info:
        configure(new={"conf_file": str(path)})
    text = str(info.value)
    assert str(path) in text and "not UTF-8" in text and "line 2" in text and "0xe9" in text


def test_conf_file_larger_than_1_mib_is_refused(tmp_path: Path) -> None:
    line = b"# " + b"x" * 1021 + b"\n"  # 1 KiB lines
    exact, over = tmp_path / "exact.conf", tmp_path / "over.conf"
    exact.write_bytes(line * 1023 + b"max_servers 7\n".ljust(1024, b" "))
    assert exact.stat().st_size == config.MAX_CONF_FILE_BYTES == 1 << 20
    assert configure(new={"conf_file": str(exact)})["max_servers"] == 7  # the limit itself
    over.write_bytes(exact.read_bytes() + b"\n")
    with pytest.raises(ConfigError) as info:
        configure(new={"conf_file": str(over)})
    assert str(over) in str(info.value) and "larger than 1048576 bytes" in str(info.value)


@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="no /dev/zero")
def test_dev_zero_as_conf_file_is_a_config_error_not_a_memory_error() -> None:
    """It read without end (MemoryError); a device is refused before any read now."""
    with pytest.raises(ConfigError, match=r"conf_file '/dev/zero': a device, not a regular"):
        configure(argv=["--conf_file=/dev/zero"])


@pytest.mark.timeout(20)
def test_fifo_as_conf_file_is_refused_without_hanging(tmp_path: Path) -> None:
    """Opening a FIFO with no writer blocked the start for ever (now O_NONBLOCK + fstat)."""
    fifo = tmp_path / "conf.fifo"
    os.mkfifo(fifo)
    with pytest.raises(ConfigError, match=r"a FIFO, not a regular file"):
        configure(new={"conf_file": str(fifo)})


def test_directory_as_conf_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"a directory, not a regular file"):
        configure(new={"conf_file": str(tmp_path)})


def test_conf_file_values_reach_converters_as_plain_text(tmp_path: Path) -> None:
    conf = configure(new={"conf_file": write_conf(tmp_path, "allow 127\\.0\\.0\\.1\n")})
    assert conf["allow"] == [r"127\.0\.0\.1"] and type(conf["allow"][0]) is str


# -- options added by a subclass -----------------------------------------------------------------


class WithGreeting(ConfigOnly):
    """A subclass adding its own option to the table."""

    def options(self) -> list[Option]:
        return super().options() + [
            Option("greeting", "hello", as_str, "First line sent to clients.", "Custom"),
        ]


def test_custom_option_from_every_source(tmp_path: Path) -> None:
    assert configure(WithGreeting)["greeting"] == "hello"
    assert configure(WithGreeting, argv=["--greeting", "hi there"])["greeting"] == "hi there"
    assert configure(WithGreeting, argv=["greeting=hey"])["greeting"] == "hey"
    conf_file = write_conf(tmp_path, "greeting salut\n")
    assert configure(WithGreeting, new={"conf_file": conf_file})["greeting"] == "salut"
    assert configure(WithGreeting, new={"greeting": "a"}, run={"greeting": "b"})[
        "greeting"] == "a"
    with pytest.raises(ConfigError, match="greeting"):
        configure(WithGreeting, new={"greeting": ["a", "b"]})
    with pytest.raises(ConfigError, match="greeting"):
        configure(new={"greeting": "not known to the base class"})


# -- Net::Server options of other personalities: accepted, no effect, said so (issue 4, point 1) --

#: Keys that Net::Server conf files carry for other personalities (Fork, PreFork, MultiType...)
#: or for protocols gnetserver does not serve (spec/netserver.md, sections 2.2-2.4).
#: (``server_type`` and ``max_requests`` are real options since the PreFork personality, and
#: ``udp_recv_len``, ``udp_recv_flags``, ``udp_broadcast`` since datagram ports.)
NETSERVER_ONLY = (
    "min_servers", "min_spare_servers", "max_spare_servers", "serialize",
    "lock_file", "check_for_dead", "check_for_waiting", "check_for_spawn",
    "min_child_ttl", "child_communication", "max_dequeue",
    "sig_passthrough", "leave_children_open_on_hup", "no_close_by_child", "no_client_stdout",
    "ipv6_package", "unix_type", "unix_path",
)
IGNORED = "ignored Net::Server options (no effect here): "
SPARE = ("PreFork: min_servers size Net::Server's one-connection children; gnetserver runs a "
         "fixed set of workers=")


def ignored_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith(IGNORED)]


def test_netserver_only_options_are_documented_as_without_effect() -> None:
    known = table(OPTIONS)
    for name in NETSERVER_ONLY:
        option = known[name]
        assert option.section == "Net::Server compatibility", name
        assert "Net::Server" in option.doc and "no effect here" in option.doc, name


def test_netserver_only_options_in_a_conf_file_are_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every such key, as a Perl user writes it, starts the server; one level-1 line names
    them all with their values (never silent)."""
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    lines = [f"{name} {index + 1}" for index, name in enumerate(NETSERVER_ONLY)]
    lines += ["server_type Fork", "server_type Fork2", "sig_passthrough USR1,USR2",
              "max_requests 1000", "workers 3"]
    configure(new={"conf_file": write_conf(tmp_path, "\n".join(lines) + "\n")})
    [line] = ignored_lines(caplog)
    [record] = [r for r in caplog.records if r.getMessage() == line]
    assert record.levelno == logging.ERROR  # Net::Server level 1
    named = line[len(IGNORED):].split(", ")
    # server_type values naming no personality, PreFork's own options under Single, then
    # the compatibility keys, in table order.
    assert [item.partition("=")[0] for item in named] == [
        "server_type", "workers", "max_requests", *NETSERVER_ONLY]
    assert "min_servers=1" in named and f"unix_path={len(NETSERVER_ONLY)}" in named
    assert "server_type=Fork,Fork2" in named  # list options accumulate, as in Net::Server
    assert "sig_passthrough=12,USR1,USR2" in named
    assert "max_requests=1000" in named and "workers=3" in named


@pytest.mark.parametrize("source", ["new", "argv", "run", "defaults"])
def test_netserver_only_options_from_every_source(
    source: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    values = {"min_servers": 5, "serialize": "flock", "server_type": ["PreFork", "Fork"]}
    if source == "argv":
        conf = configure(argv=["--min_servers=5", "serialize=flock", "server_type=PreFork",
                               "--server_type", "Fork"])
    else:
        conf = configure(**{source: values})
    assert (conf["min_servers"], conf["serialize"], conf["server_type"]) == (
        "5", "flock", ["PreFork", "Fork"])
    # PreFork is chosen (the first name gnetserver has): Fork is reported, and min_servers
    # gets the line that says what PreFork does instead.
    assert ignored_lines(caplog) == [IGNORED + "server_type=Fork, min_servers=5, serialize=flock"]
    [spare] = [r for r in caplog.records if r.getMessage().startswith(SPARE)]
    assert spare.levelno == logging.ERROR
    assert "each serving up to max_servers=256 sessions at once" in spare.getMessage()


def test_no_ignored_line_without_netserver_only_options(
    caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="gnetserver")
    configure(argv=["--max_servers=3"])
    assert ignored_lines(caplog) == []


def test_truly_unknown_names_stay_fatal(tmp_path: Path) -> None:
    conf_file = write_conf(tmp_path, "min_servers 5\nmin_server 5\n")
    with pytest.raises(ConfigError, match="'min_server'.*did you mean 'min_servers'"):
        configure(new={"conf_file": conf_file})


# -- the IPV environment variable: Net::Server's default for ipv ---------------------------------


@pytest.mark.parametrize(("environment", "sources", "expected"), [
    (None, {}, ["*"]),
    ("4", {}, ["4"]),
    ("IPv6", {}, ["IPv6"]),
    ("", {}, ["*"]),  # Perl's `$ENV{IPV} || ...`: empty means unset
    ("4", {"argv": ["--ipv=6"]}, ["6"]),
    ("4", {"new": {"ipv": "46"}}, ["46"]),
    ("4", {"defaults": {"ipv": "6"}}, ["6"]),  # every option source beats the environment
])
def test_ipv_environment_variable_is_the_default(
    monkeypatch: pytest.MonkeyPatch, environment: str | None, sources: dict[str, Any],
    expected: list[str],
) -> None:
    if environment is None:
        monkeypatch.delenv("IPV", raising=False)
    else:
        monkeypatch.setenv("IPV", environment)
    assert configure(**sources)["ipv"] == expected


def test_bad_ipv_environment_variable_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IPV", "v5")
    with pytest.raises(ConfigError, match="IPV") as info:
        configure()
    assert "'v5'" in str(info.value) and "ipv" in str(info.value)
    assert configure(argv=["--ipv", "4"])["ipv"] == ["4"]  # unused when an option says ipv


@pytest.mark.parametrize("raw, level", [(7, 4), ("5", 4), (4, 4), ("0", 0), (2, 2)])
def test_log_level_above_4_means_4(raw: Any, level: int) -> None:
    """Net::Server clamps log_level to 4 (its most verbose): a conf file's 5 is not an error."""
    conf, _ = plan_conf(table(OPTIONS), constructor={"log_level": raw}, commandline=[],
                        run_args={}, default_values={}, environ={})
    assert conf.log_level == level
