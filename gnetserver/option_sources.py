"""OptionSourcesMixin: where a server's options come from, and which source wins.

Rules of this module (behaviour: spec/netserver.md, configuration):

* Precedence, highest first, as in Net::Server: constructor arguments > command line >
  ``run()`` arguments > ``conf_file`` > ``default_values()``. ``conf_file`` itself is taken from
  the first of the other sources that names one.
* The mechanics (conversion, the conf file parser, the command-line parser, merging) are the
  pure functions of :mod:`gnetserver.config`; the option table is :mod:`gnetserver.options`.
  This mixin only gathers the sources the server holds and fills ``self.conf``.
* Every bad value is a ConfigError naming the option, its source and the value, at start.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import config
from .options import OPTIONS, Option, table


class OptionSourcesMixin:
    """The option steps of :class:`~gnetserver.server.GServer`: ``options``,
    ``default_values``, ``configure``."""

    if TYPE_CHECKING:  # provided by the server class
        new_args: dict[str, Any]
        commandline: list[str] | None
        run_args: dict[str, Any]
        argv_unused: list[str]
        conf: dict[str, Any]

    def options(self) -> list[Option]:
        """The option table. Subclasses add their own: ``return super().options() + [...]``."""
        return list(OPTIONS)

    def default_values(self) -> dict[str, Any]:
        """Lowest-precedence values (Net::Server's ``default_values``); override to set defaults."""
        return {}

    def configure(self) -> None:
        """Read options: constructor > command line > run() arguments > conf_file >
        default_values(); fill ``self.conf``. Raises ConfigError naming a bad option."""
        known = table(self.options())
        new = config.from_mapping(self.new_args, known, "constructor arguments")
        argv, self.argv_unused = config.from_command_line(self.commandline or [], known, False)
        run = config.from_mapping(self.run_args, known, "run() arguments")
        defaults = config.from_mapping(self.default_values(), known, "default_values()")
        conf_file = next((s["conf_file"][-1] for s in (new, argv, run, defaults)
                          if s.get("conf_file")), None)
        conf: config.Source = {}
        if conf_file:
            conf = config.from_conf_file(conf_file, known)
        sources = [("constructor arguments", new), ("command line", argv),
                   ("run() arguments", run), (f"conf_file {conf_file!r}", conf),
                   ("default_values()", defaults)]
        self.conf = config.merge(sources, known)
