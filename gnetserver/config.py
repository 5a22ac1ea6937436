"""Option sources and their precedence (Net::Server's ``configure``).

Rules of this module:

* Five sources, highest first: constructor arguments, the command line, ``run()`` arguments,
  the conf file, ``default_values()``. The first source that sets an option wins; a later one
  never overwrites it (Net::Server's ``process_args``).
* Within one source a scalar option takes the last value given, a list option collects every
  value given.
* A source is a plain ``dict[name, list[raw value]]``; parsing a source and merging sources are
  separate, pure functions. Converting happens once, after merging.
* Every unknown name and every bad value is a :class:`ConfigError` naming the option, the value
  and the source. ``SSL_*`` names get the list of supported ones in the message. A conf file's
  values (and lines) are never quoted, only its line numbers and keys (a key only when it looks
  like an option name, cut to :data:`MAX_QUOTED_KEY` characters): the file may be anything
  root can read (issue 16: ``--conf_file /etc/shadow`` printed its first line). The conf file
  must be a regular file, opened non-blocking (a FIFO hung the start).
* On the command line a bare ``--name`` means ``1`` only for on/off options
  (:attr:`Option.bare_flag <gnetserver.options.Option.bare_flag>`: ``--setsid``,
  ``--self_signed``...); any other option needs a value, and without one the ConfigError names
  the option (``--SSL_cert_file --port 9443`` is refused, not read as SSL_cert_file ``1``).
* Pure, as :mod:`gnetserver.options`: no gevent, OpenSSL or cryptography is imported.
  How the sources are combined into a server's configuration is :func:`gnetserver.conf.plan_conf`.
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .options import Option, as_list, default_text
from .ssl_names import refusal_reason

Source = dict[str, list[Any]]

#: The largest conf file read (bytes): a bigger one (or /dev/zero) is a ConfigError.
MAX_CONF_FILE_BYTES = 1 << 20

# The separator is `=`, `:` or whitespace. A `:` followed by another `:` starts an IPv6 value
# (`cidr_allow ::1/128`, `host ::`), not a separator: Net::Server's own regex reads ":1/128".
_CONF_LINE = re.compile(r"^\s*(?:--)?(\w+)(?:\s*(?:=|:(?!:))\s*|\s+)(.*?)\s*$")
_KEY_EQUALS = re.compile(r"^(\w+)=(.*)$", re.S)

# What an option name looks like: a conf-file key is quoted in an error only if it is one.
_OPTION_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: At most this many characters of a conf-file key are quoted in an error.
MAX_QUOTED_KEY = 40


class ConfValue(str):
    """A value read from a conf file, remembering its line (:attr:`line`) so that an error
    about it can name the line without quoting the value: a conf file given by mistake (or by
    someone probing what root can read, ``--conf_file /etc/shadow``) must not have its
    contents printed. Converters get a plain ``str`` (:func:`convert`)."""

    line: int

    def __new__(cls, text: str, line: int) -> ConfValue:
        value = super().__new__(cls, text)
        value.line = line
        return value


def unknown_option(name: str, known: Mapping[str, Option], where: str,
                   value: Any = None) -> ConfigError:
    """The error for an option name that is not in the table (``value``: what it was given,
    when known)."""
    given = "" if value is None else f" = {value!r}"
    if name.startswith("SSL_"):
        why = refusal_reason(name)
        if why is not None:
            return ConfigError(f"TLS option {name!r}{given} ({where}) cannot be honoured: {why}")
        supported = ", ".join(sorted(n for n in known if n.startswith("SSL_")))
        return ConfigError(
            f"unsupported TLS option {name!r}{given} ({where}); supported: {supported}")
    hint = difflib.get_close_matches(name, list(known), n=1)
    suggestion = f"; did you mean {hint[0]!r}?" if hint else ""
    return ConfigError(f"unknown option {name!r}{given} ({where}){suggestion}")


def code_only(option: Option, known: Mapping[str, Option], where: str,
              value: Any = None) -> ConfigError:
    """The error for an option only code can give (``Option.cli`` False: a callable or an
    in-memory object) named on the command line or in a conf file."""
    given = "" if value is None else f" = {value!r}"
    also = " (or in a port dict, or as a method of the server class)" \
        if option.name.startswith("SSL_") else ""
    twin = f"{option.name}_file"  # SSL_cert -> SSL_cert_file: what text can give instead
    hint = f"; for a file use {twin}" if twin in known and known[twin].cli else ""
    return ConfigError(
        f"option {option.name!r}{given} ({where}) is for code only: it takes a Python object "
        f"(a callable, a certificate or key...) that a command line or conf file cannot give; "
        f"pass it to the server's constructor or run(){also}{hint}")


def from_mapping(values: Mapping[str, Any], known: Mapping[str, Option], where: str) -> Source:
    """A source from keyword arguments (constructor, run(), default_values())."""
    source: Source = {}
    for name, value in values.items():
        option = known.get(name)
        if option is None:
            raise unknown_option(name, known, where, value)
        if option.multi:
            source[name] = as_list(value)
        else:
            source[name] = [value]
    return source


def command_line_parser(known: Mapping[str, Option], **kwargs: Any) -> argparse.ArgumentParser:
    """An argparse parser with one ``--name VALUE`` per option of the table (``--name
    [VALUE]`` for on/off options, where a bare flag means 1). Used to read the command line
    (:func:`from_command_line`) and to print ``--help`` (``gnetserver.__main__``)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, **kwargs)
    groups: dict[str, argparse._ArgumentGroup] = {}
    for option in known.values():
        if not option.cli:
            continue
        group = groups.get(option.section)
        if group is None:
            group = groups[option.section] = parser.add_argument_group(option.section)
        # The first sentence ends at ". " -- but not at the one of "e.g. " or "i.e. ".
        first_sentence = re.split(r"(?<!e\.g)(?<!i\.e)\.\s", option.doc + " ", maxsplit=1)[0]
        # On/off options: nargs="?", a bare "--flag" (followed by another option or nothing)
        # means 1, as in Net::Server's process_args ("--setsid"). Any other option needs its
        # value: argparse raises "expected one argument" (made a ConfigError naming it).
        flag: dict[str, Any] = {"nargs": "?", "const": "1"} if option.bare_flag else {}
        group.add_argument(
            f"--{option.name}", dest=option.name, action="append", metavar="VALUE",
            default=None, **flag,
            # argparse %-formats help texts: a literal % in a doc must be doubled.
            help=f"{first_sentence} (default: {default_text(option)})".replace("%", "%%"),
        )
    return parser


def from_command_line(
    words: Sequence[str], known: Mapping[str, Option], strict: bool
) -> tuple[Source, list[str]]:
    """A source from command-line words: ``--k=v``, ``--k v``, ``k=v``, and, for on/off
    options only (``Option.bare_flag``), a bare ``--k`` followed by another option or by
    nothing, which means ``1``. A bare ``--k`` of any other option is a ConfigError.

    Args:
        words: the words after the program name.
        known: the option table.
        strict: raise ConfigError on words that are not options; otherwise return them.
            Either way, naming a code-only option (``Option.cli`` False) is a ConfigError.

    Returns:
        The source and the words that were not consumed.
    """
    normalised = []
    for word in words:
        match = _KEY_EQUALS.match(word)
        normalised.append(f"--{word}" if match and match.group(1) in known else word)
    parser = command_line_parser(known, add_help=False, exit_on_error=False)
    try:
        namespace, rest = parser.parse_known_args(normalised)
    except argparse.ArgumentError as exc:
        name = (exc.argument_name or "").removeprefix("--")
        if name in known and exc.message == "expected one argument":
            raise ConfigError(
                f"option {name!r} (command line): --{name} needs a value (--{name} VALUE or "
                f"--{name}=VALUE); only on/off options such as --setsid may be given bare"
            ) from None
        raise ConfigError(f"command line: {exc}") from None
    _refuse_code_only(rest, known)
    if strict and rest:
        word, equals, value = rest[0].partition("=")
        if not equals and len(rest) > 1 and not rest[1].startswith("-"):
            value = rest[1]  # "--name value"
        raise unknown_option(word.lstrip("-"), known, "command line", value or None)
    source = {name: values for name, values in vars(namespace).items() if values is not None}
    return source, rest


def _refuse_code_only(rest: Sequence[str], known: Mapping[str, Option]) -> None:
    """Raise :func:`code_only` for the first unconsumed ``--name`` that names a code-only
    option (argparse has no such flag: it is hidden from the command line and --help)."""
    for index, word in enumerate(rest):
        flag, equals, value = word.partition("=")
        option = known.get(flag[2:]) if flag.startswith("--") else None
        if option is None or option.cli:
            continue
        if not equals and index + 1 < len(rest) and not rest[index + 1].startswith("-"):
            value = rest[index + 1]  # "--name value"
        raise code_only(option, known, "command line", value or None)


def from_conf_file(path: str | Path, known: Mapping[str, Option]) -> Source:
    """A source from a Net::Server conf file: ``key value``, ``key=value``, ``key: value``.

    ``#`` starts a comment unless written ``\\#``; blank lines are skipped; keys may carry a
    leading ``--``; repeated keys accumulate for list options and the last one wins otherwise.
    The file must be a regular file (opened non-blocking, so a FIFO or a device cannot hang the
    start) of UTF-8 text of at most :data:`MAX_CONF_FILE_BYTES` (1 MiB; at most that much plus
    one byte is read): otherwise, as when it cannot be read, a ConfigError names it.

    Errors about a line never quote its value, nor the line (the file may not be a conf file at
    all, and root can read anything): they name the line number and the key, at most
    :data:`MAX_QUOTED_KEY` characters of it and only when it looks like an option name. The
    values come back as :class:`ConfValue` so that :func:`convert` does the same.
    """
    label = f"conf_file {str(path)!r}"
    data = _read_conf_file(path, label)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        number = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{label} line {number}: not UTF-8 text (byte 0x{data[exc.start]:02x} "
                          f"at offset {exc.start})") from None
    source: Source = {}
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(?<!\\)#.*", "", raw).replace("\\#", "#")
        if not line.strip():
            continue
        match = _CONF_LINE.match(line)
        where = f"{label} line {number}"
        if not match:
            raise ConfigError(f"{where}: cannot parse the line (expected 'key value'; a conf "
                              "file's lines are not quoted in errors)")
        name, value = match.groups()
        if name not in known:
            if not _OPTION_WORD.fullmatch(name):
                raise ConfigError(f"{where}: unknown option (its key is not an option name; "
                                  "not quoted)")
            cut = f", key cut to {MAX_QUOTED_KEY} characters" if len(name) > MAX_QUOTED_KEY \
                else ""
            raise unknown_option(name[:MAX_QUOTED_KEY], known, where + cut)
        if not known[name].cli:
            raise code_only(known[name], known, where)  # a conf file holds text only
        source.setdefault(name, []).append(ConfValue(value, number))
    return source


def _read_conf_file(path: str | Path, label: str) -> bytes:
    """The bytes of a conf file: a regular file of at most MAX_CONF_FILE_BYTES."""
    try:
        # O_NONBLOCK: opening a FIFO for reading blocks until a writer comes (the start hung).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode) \
                else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else \
                "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
            raise ConfigError(f"{label}: {kind}, not a regular file: not a conf file")
        with os.fdopen(fd, "rb", closefd=False) as file:
            # Bounded: a conf file is small; a huge file must not eat the memory.
            data = file.read(MAX_CONF_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONF_FILE_BYTES:
        raise ConfigError(f"{label}: larger than {MAX_CONF_FILE_BYTES} bytes (1 MiB): not a "
                          "conf file")
    return data


def merge(sources: Iterable[tuple[str, Source]],
          known: Mapping[str, Option]) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge ``(label, source)`` pairs, highest precedence first, and convert every value.

    Returns:
        A dict with a typed value for every option of ``known`` (defaults filled in), and the
        provenance: for every option some source set, the label of the source that won.
    """
    chosen: dict[str, tuple[str, list[Any]]] = {}
    for where, source in sources:
        for name, values in source.items():
            if name not in chosen and values:
                chosen[name] = (where, values)
    merged: dict[str, Any] = {}
    for name, option in known.items():
        if name not in chosen:
            merged[name] = list(option.default) if option.multi else option.default
            continue
        where, values = chosen[name]
        merged[name] = convert(option, values, where)
    return merged, {name: where for name, (where, _) in chosen.items()}


def convert(option: Option, values: list[Any], where: str) -> Any:
    """Convert the raw values of one option; a bad value raises ConfigError naming both (a
    value read from a conf file, :class:`ConfValue`, is named by its line, never quoted)."""
    raw = values if option.multi else values[-1]
    current = None
    try:
        if option.multi:
            converted = []
            for current in raw:
                converted.append(option.convert(_plain(current)))
            return converted
        current = raw
        return option.convert(_plain(raw))
    except (TypeError, ValueError) as exc:
        if isinstance(current, ConfValue):
            reason = _without_value(str(exc), current)
            raise ConfigError(f"option {option.name!r}: bad value ({where} line {current.line};"
                              f" a conf file's values are not quoted in errors){reason}"
                              ) from None
        raise ConfigError(f"option {option.name!r}: bad value {raw!r} ({where}): {exc}") from None


def _plain(value: Any) -> Any:
    """A conf-file value as the plain str converters expect (they may keep it as given)."""
    return str(value) if isinstance(value, ConfValue) else value


# A quoted piece of text in a converter's message: converters quote the value they refuse.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _without_value(reason: str, value: str) -> str:
    """A converter's reason for refusing a conf-file value, with nothing of the value in it:
    quoted texts are dropped, and the whole reason when a word of the value still shows."""
    reason = _QUOTED.sub("...", reason)
    words = [word for word in re.split(r"[\s,;=]+", value) if len(word) >= 3]
    if value.strip() and (value.strip() in reason or any(word in reason for word in words)):
        return ""
    return f": {reason}"
