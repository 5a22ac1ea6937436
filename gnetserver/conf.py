"""A server's configuration: the frozen, typed :class:`Conf`, planned once by :func:`plan_conf`.

Rules of this module:

* :func:`plan_conf` is the one function that turns a server's sources into its configuration,
  with Net::Server's precedence, highest first: constructor arguments > command line >
  ``run()`` arguments > ``conf_file`` > ``default_values()`` > the environment variable ``IPV``
  (``ipv`` only, Net::Server's ``$ENV{IPV}``) > the option table's default. ``conf_file`` itself
  is taken from the first of the other sources that names one. ``GServer.configure``,
  ``gnetserver --help``/its unknown-word check and the HUP preflight all call it, so they can
  never drift apart. It is pure: it reads the conf file it is told of and nothing else (the
  environment is an argument).
* A :class:`Conf` never changes once planned. It is read by attribute for the base server's
  options (``conf.port``, ``conf.max_servers``, typed: every base option except ``SSL_*`` and
  the "Net::Server compatibility" section), and as a read-only mapping over *every* option of
  the table (base, ``SSL_*``, compatibility, a subclass's own): ``conf["name"]``,
  ``conf.get(name, default)``, ``name in conf``, iteration, ``len``. List options are frozen
  lists (equal to plain lists; their mutating methods raise TypeError).
* A changed configuration is a new one: ``server.conf = server.conf.replace(deny=[...])``
  converts and checks the values with the option table's converters, as any source is
  (ConfigError for a bad value or an unknown name). Assigning (``conf.x = ...``,
  ``conf["x"] = ...``) raises TypeError pointing at :meth:`Conf.replace`.
* Pure: no gevent, OpenSSL or cryptography is imported.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NoReturn, SupportsIndex

from . import config
from .errors import ConfigError
from .options import OPTIONS, Option, as_list, table

__all__ = ["DEFAULT_VALUES", "Conf", "FrozenList", "plan_conf"]

#: The label of the program's own source (``Conf.sources``): its defaults, not a user's choice.
DEFAULT_VALUES = "default_values()"

#: The label of values given by :meth:`Conf.replace` (``Conf.sources``).
REPLACED = "replace()"

_BASE = table(OPTIONS)


def _refuse(what: str) -> NoReturn:
    """Raise the TypeError of every attempt to change a Conf in place."""
    raise TypeError(f"a server's configuration is frozen ({what}): make a changed copy with "
                    f"conf.replace(name=value), e.g. self.conf = self.conf.replace(deny=[...])")


class FrozenList(list[Any]):
    """The value of a list option in a :class:`Conf`: a list (equal to plain lists, readable as
    one) whose mutating methods raise TypeError. Made by :class:`Conf`, never by users."""

    __slots__ = ()

    def _mutate(self, *args: Any, **kwargs: Any) -> NoReturn:
        """Every mutating method of list."""
        _refuse("its lists too")

    append = extend = insert = remove = clear = sort = reverse = _mutate
    __setitem__ = __delitem__ = _mutate

    def pop(self, index: SupportsIndex = -1) -> NoReturn:
        """Refused (list.pop)."""
        _refuse("its lists too")

    def __iadd__(self, other: Iterable[Any]) -> NoReturn:  # type: ignore[misc]
        """Refused (``+=``)."""
        _refuse("its lists too")

    def __imul__(self, count: SupportsIndex) -> NoReturn:
        """Refused (``*=``)."""
        _refuse("its lists too")

    def __reduce__(self) -> tuple[type[FrozenList], tuple[list[Any]]]:
        """Pickle and copy as a new frozen list of the same items (not item by item)."""
        return (FrozenList, (list(self),))


def _frozen(value: Any) -> Any:
    """A list value as a :class:`FrozenList`; anything else as it is."""
    return FrozenList(value) if isinstance(value, list) else value


@dataclass(frozen=True, init=False, eq=False, repr=False)
class Conf(Mapping[str, Any]):
    """A server's configuration, frozen: typed attributes for the base server's options and a
    read-only mapping over every option (see the module rules). Made by :func:`plan_conf`
    (``GServer.configure``); ``Conf()`` is the base table's defaults. Equal to any mapping
    with the same items.
    """

    # -- Server / Server Socket (the attribute names are the option names: test_conf checks it)
    conf_file: str | None
    port: list[Any]  # specs as given: text, int or dict (parsed by gnetserver.ports)
    host: list[Any]
    proto: list[Any]
    ipv: list[Any]
    listen: int
    unix_mode: int
    # -- Datagrams
    udp_recv_len: int
    udp_recv_flags: int
    udp_broadcast: bool
    # -- Limits
    max_servers: int
    max_handshakes: int
    timeout_handshake: float
    timeout_session_wait: float
    timeout_idle: float
    graceful_timeout: float
    max_line_length: int
    # -- Logging
    log_level: int
    log_file: str | None
    log_function: Callable[[int, str], Any] | str | None
    log_format: str
    syslog_logsock: str
    syslog_ident: str
    syslog_logopt: str
    syslog_facility: str
    # -- Access
    allow: list[str | re.Pattern[str]]
    deny: list[str | re.Pattern[str]]
    cidr_allow: list[str]
    cidr_deny: list[str]
    reverse_lookups: bool | str
    double_reverse_lookups: bool | str
    # -- PROXY protocol
    proxy_protocol: str | None
    proxy_protocol_from: list[str]
    proxy_protocol_local: str
    timeout_proxy_header: float
    # -- Process
    pid_file: str | None
    background: bool
    setsid: bool
    user: str | None
    group: str | None
    chroot: str | None
    chroot_as_root: bool
    # -- PreFork
    server_type: list[str]
    workers: int
    max_requests: int
    # -- Porting aids
    tie_client_stdout: bool
    tied_stdout_callback: Callable[..., Any] | None
    tied_stdin_callback: Callable[..., Any] | None
    check_for_dequeue: float
    monkey_patch: bool
    max_blocking_time: float
    # -- TLS (the SSL_* options are read by name: conf["SSL_cert_file"])
    self_signed: bool
    # -- Monitoring (SSL_cert_expiry_warning is read by name, as every SSL_* option)
    metrics_port: Any

    if TYPE_CHECKING:  # set by __init__, not fields
        _values: dict[str, Any]
        _sources: dict[str, str]
        _known: dict[str, Option]

    def __init__(self, values: Mapping[str, Any] | None = None, *,
                 sources: Mapping[str, str] | None = None,
                 known: Mapping[str, Option] | None = None) -> None:
        """Called by :func:`plan_conf` and :meth:`replace`.

        Args:
            values: typed (already converted) values by option name; an option of ``known``
                missing here takes its table default.
            sources: for the options some source set, that source's label.
            known: the option table (default: the base server's :data:`OPTIONS`).
        """
        known = _BASE if known is None else known
        given = {} if values is None else values
        merged: dict[str, Any] = {}
        for name, option in known.items():
            if name in given:
                merged[name] = _frozen(given[name])
            else:
                merged[name] = _frozen(list(option.default) if option.multi else option.default)
        setter = object.__setattr__
        for field in fields(self):
            # A subclass table without a base option still gets the attribute (its default).
            name = field.name
            setter(self, name, merged[name] if name in merged else _frozen(_BASE[name].default))
        setter(self, "_values", merged)
        setter(self, "_sources", dict(sources or {}))  # plain dicts: copy.deepcopy works
        setter(self, "_known", dict(known))

    # -- the mapping -----------------------------------------------------------------------------

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def get(self, name: str, default: Any = None) -> Any:
        """The value of option ``name``, or ``default`` when the table has no such option."""
        return self._values.get(name, default)

    # -- provenance and changes ------------------------------------------------------------------

    @property
    def sources(self) -> Mapping[str, str]:
        """For every option some source set, the label of the source that won
        (``"constructor arguments"``, ``"command line"``, ``"run() arguments"``,
        ``"conf_file '...'"``, ``"default_values()"``, ``"environment variable IPV"``,
        ``"replace()"``). Options left at the table's default are absent."""
        return MappingProxyType(self._sources)

    @property
    def options(self) -> Mapping[str, Option]:
        """The option table this configuration was planned from, by name."""
        return MappingProxyType(self._known)

    def replace(self, **changes: Any) -> Conf:
        """A new Conf with ``changes`` (option name -> value, raw or typed, as a constructor
        argument would give it) converted by the option table's converters; ``self`` is left
        as it is. ``sources`` names them ``"replace()"``. Called by hooks that adjust the
        configuration (``self.conf = self.conf.replace(deny=[...])`` in pre_loop_hook).

        Raises:
            ConfigError: an unknown option name, or a value its converter refuses.
        """
        values = dict(self._values)
        sources = dict(self._sources)
        for name, value in changes.items():
            option = self._known.get(name)
            if option is None:
                raise config.unknown_option(name, self._known, REPLACED, value)
            raw = as_list(value) if option.multi else [value]
            values[name] = config.convert(option, raw, REPLACED)
            sources[name] = REPLACED
        return Conf(values, sources=sources, known=self._known)

    # -- frozen ----------------------------------------------------------------------------------

    def __setitem__(self, name: str, value: Any) -> NoReturn:
        _refuse(f"conf[{name!r}] = ...")

    def __delitem__(self, name: str) -> NoReturn:
        _refuse(f"del conf[{name!r}]")

    def __repr__(self) -> str:
        given = ", ".join(f"{name}={self._values[name]!r}" for name in self._sources
                          if name in self._values)
        return f"Conf({given})" if given else "Conf(<defaults>)"


def _refuse_setattr(self: Conf, name: str, value: Any) -> NoReturn:
    """Conf's ``__setattr__`` (set after the dataclass decorator, which forbids defining it in
    the class body of a frozen dataclass; its own FrozenInstanceError would not name
    replace())."""
    _refuse(f"conf.{name} = ...")


def _refuse_delattr(self: Conf, name: str) -> NoReturn:
    """Conf's ``__delattr__`` (see :func:`_refuse_setattr`)."""
    _refuse(f"del conf.{name}")


setattr(Conf, "__setattr__", _refuse_setattr)  # noqa: B010 (mypy: no method assignment)
setattr(Conf, "__delattr__", _refuse_delattr)  # noqa: B010

#: The options read as typed attributes of :class:`Conf`, in declaration order.
TYPED_OPTIONS: tuple[str, ...] = tuple(field.name for field in fields(Conf))


def plan_conf(known: Mapping[str, Option], *, constructor: Mapping[str, Any],
              commandline: Sequence[str], run_args: Mapping[str, Any],
              default_values: Mapping[str, Any], environ: Mapping[str, str],
              strict: bool = False) -> tuple[Conf, list[str]]:
    """Plan a server's configuration from its sources (see the module rules for the
    precedence). Called by ``GServer.configure`` (at start and by the HUP preflight) and by
    the ``gnetserver`` command (``strict=True``, before it builds the server).

    Args:
        known: the option table, by name (``GServer.option_table``).
        constructor: the constructor's keyword arguments.
        commandline: the command-line words (after the program name).
        run_args: the keyword arguments of ``run()``.
        default_values: the server's ``default_values()``.
        environ: the environment (``os.environ``); only ``IPV`` is read.
        strict: a command-line word that is no option is a ConfigError (the ``gnetserver``
            command); otherwise such words are returned.

    Returns:
        The configuration, and the command-line words no option consumed.

    Raises:
        ConfigError: naming the option, its source and the value, or for a conf file the line
            rather than the value (unknown option, bad value,
            a non-flag option given bare on the command line, an unreadable conf file, a bad
            ``IPV``).
    """
    new = config.from_mapping(constructor, known, "constructor arguments")
    argv, unused = config.from_command_line(commandline, known, strict)
    run = config.from_mapping(run_args, known, "run() arguments")
    defaults = config.from_mapping(default_values, known, DEFAULT_VALUES)
    conf_file = next((s["conf_file"][-1] for s in (new, argv, run, defaults)
                      if s.get("conf_file")), None)
    from_file: config.Source = config.from_conf_file(conf_file, known) if conf_file else {}
    sources = [("constructor arguments", new), ("command line", argv),
               ("run() arguments", run), (f"conf_file {conf_file!r}", from_file),
               (DEFAULT_VALUES, defaults)]
    sources.append(("environment variable IPV", _ipv_from_environment(sources, environ)))
    values, provenance = config.merge(sources, known)
    return Conf(values, sources=provenance, known=known), unused


def _ipv_from_environment(sources: Sequence[tuple[str, config.Source]],
                          environ: Mapping[str, str]) -> config.Source:
    """The lowest source: ``ipv`` from the environment variable ``IPV`` when no other source
    sets ipv (Net::Server: ipv option > ``$ENV{IPV}`` > ``*``). Like Perl's ``||``, an empty
    value or ``0`` counts as unset. A value that names no IP version is a ConfigError."""
    value = environ.get("IPV", "")
    if value in ("", "0") or any(source.get("ipv") for _, source in sources):
        return {}
    # Net::Server's own check ("Invalid ipv parameter"), made here to name the variable.
    if not re.search(r"[46*]", value):
        raise ConfigError(f"environment variable IPV={value!r} (the default of option 'ipv'): "
                          "must contain 4, 6 or *")
    return {"ipv": [value]}
