"""OptionSourcesMixin: where a server's options come from, and which source wins.

Rules of this module (behaviour: spec/netserver.md, configuration):

* Precedence, highest first, as in Net::Server: constructor arguments > command line >
  ``run()`` arguments > ``conf_file`` > ``default_values()``. ``conf_file`` itself is taken from
  the first of the other sources that names one. Below them all, the environment variable
  ``IPV`` is the default of ``ipv`` (Net::Server's ``$ENV{IPV}``), then the table's ``*``.
* The mechanics (conversion, the conf file parser, the command-line parser, merging) are the
  pure functions of :mod:`gnetserver.config`; the option table is :mod:`gnetserver.options`.
  This mixin only gathers the sources the server holds and fills ``self.conf``.
* Every bad value is a ConfigError naming the option, its source and the value, at start.
* Options of the "Net::Server compatibility" section (other personalities' keys) are accepted
  and have no effect; :meth:`~OptionSourcesMixin.warn_inert_options` names the ones given in
  one level-1 line, so that none is ignored silently.
"""

from __future__ import annotations

import os
import re
from typing import TYPE_CHECKING, Any

from . import config
from .errors import ConfigError
from .options import NETSERVER_COMPAT, OPTIONS, Option, table

#: The label of the program's own source (``conf_sources``): its defaults, not a user's choice.
DEFAULT_VALUES = "default_values()"


class OptionSourcesMixin:
    """The option steps of :class:`~gnetserver.server.GServer`: ``options``,
    ``default_values``, ``configure``, ``warn_inert_options``."""

    if TYPE_CHECKING:  # provided by the server class
        new_args: dict[str, Any]
        commandline: list[str] | None
        run_args: dict[str, Any]
        argv_unused: list[str]
        conf: dict[str, Any]
        conf_sources: dict[str, str]

        def log(self, level: int, message: str) -> None: ...

    def options(self) -> list[Option]:
        """The option table. Subclasses add their own: ``return super().options() + [...]``.

        The ``gnetserver`` command calls it on an instance whose ``__init__`` has not run (so
        that ``--help`` works for any class): it must not depend on state ``__init__`` sets.
        """
        return list(OPTIONS)

    def default_values(self) -> dict[str, Any]:
        """Lowest-precedence values (Net::Server's ``default_values``); override to set defaults."""
        return {}

    def configure(self) -> None:
        """Read options: constructor > command line > run() arguments > conf_file >
        default_values() > the IPV environment variable (ipv only); fill ``self.conf``, and
        ``self.conf_sources`` with the source (``"command line"``, ``"conf_file '...'"``...) of
        every option that one set (options left at the table's default are absent). Raises
        ConfigError naming a bad option."""
        known = table(self.options())
        new = config.from_mapping(self.new_args, known, "constructor arguments")
        argv, self.argv_unused = config.from_command_line(self.commandline or [], known, False)
        run = config.from_mapping(self.run_args, known, "run() arguments")
        defaults = config.from_mapping(self.default_values(), known, DEFAULT_VALUES)
        conf_file = next((s["conf_file"][-1] for s in (new, argv, run, defaults)
                          if s.get("conf_file")), None)
        conf: config.Source = {}
        if conf_file:
            conf = config.from_conf_file(conf_file, known)
        sources = [("constructor arguments", new), ("command line", argv),
                   ("run() arguments", run), (f"conf_file {conf_file!r}", conf),
                   (DEFAULT_VALUES, defaults)]
        sources.append(("environment variable IPV", ipv_from_environment(sources)))
        self.conf, self.conf_sources = config.merge(sources, known)

    def warn_inert_options(self) -> None:
        """Framework step, in post_configure once the log targets are open: one level-1 log
        line naming, with their values, the options of the "Net::Server compatibility" section
        that some source set (other personalities' keys, such as ``min_servers``: accepted, no
        effect here). Logs nothing when there is none. Reads ``self.conf``; touches nothing
        else."""
        given = []
        for option in self.options():
            value = self.conf.get(option.name, option.default)
            if option.section != NETSERVER_COMPAT or value == option.default:
                continue
            shown = ",".join(map(str, value)) if option.multi else value
            given.append(f"{option.name}={shown}")
        if given:
            self.log(1, f"ignored Net::Server options (no effect here): {', '.join(given)}")


def ipv_from_environment(sources: list[tuple[str, config.Source]]) -> config.Source:
    """The lowest source: ``ipv`` from the environment variable ``IPV`` when no other source
    sets ipv (Net::Server: ipv option > ``$ENV{IPV}`` > ``*``). Like Perl's ``||``, an empty
    value or ``0`` counts as unset. A value that names no IP version is a ConfigError."""
    value = os.environ.get("IPV", "")
    if value in ("", "0") or any(source.get("ipv") for _, source in sources):
        return {}
    # Net::Server's own check ("Invalid ipv parameter"), made here to name the variable.
    if not re.search(r"[46*]", value):
        raise ConfigError(f"environment variable IPV={value!r} (the default of option 'ipv'): "
                          "must contain 4, 6 or *")
    return {"ipv": [value]}
