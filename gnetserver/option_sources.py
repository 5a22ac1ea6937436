"""OptionSourcesMixin: where a server's options come from, and which source wins.

Rules of this module (behaviour: spec/netserver.md, configuration):

* Precedence, highest first, as in Net::Server: constructor arguments > command line >
  ``run()`` arguments > ``conf_file`` > ``default_values()`` > the environment variable ``IPV``
  (``ipv`` only) > the table's default. The planning is the one pure function
  :func:`gnetserver.conf.plan_conf`; the mechanics (conversion, the conf file parser, the
  command-line parser, merging) are :mod:`gnetserver.config`; the option table is
  :mod:`gnetserver.options`. This mixin only hands over the sources the server holds and
  keeps the result: ``self.conf``, a frozen :class:`~gnetserver.conf.Conf`.
* Every bad value is a ConfigError naming the option, its source and the value, at start.
* Options of the "Net::Server compatibility" section (other personalities' keys) are accepted
  and have no effect; :meth:`~OptionSourcesMixin.warn_inert_options` names the ones given in
  one level-1 line, so that none is ignored silently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .conf import DEFAULT_VALUES as DEFAULT_VALUES
from .conf import Conf, plan_conf
from .options import NETSERVER_COMPAT, OPTIONS, Option, table


class OptionSourcesMixin:
    """The option steps of :class:`~gnetserver.server.GServer`: ``options``,
    ``default_values``, ``configure``, ``warn_inert_options``, and :meth:`option_table`."""

    if TYPE_CHECKING:  # provided by the server class
        new_args: dict[str, Any]
        commandline: list[str] | None
        run_args: dict[str, Any]
        argv_unused: list[str]
        conf: Conf
        conf_sources: Mapping[str, str]

        def log(self, level: int, message: str) -> None: ...

    def options(self) -> list[Option]:
        """The option table. Subclasses add their own: ``return super().options() + [...]``.

        :meth:`option_table` (the ``gnetserver`` command, ``--help``) calls it on an instance
        whose ``__init__`` has not run (so that ``--help`` works for any class): it must not
        depend on state ``__init__`` sets.
        """
        return list(OPTIONS)

    @classmethod
    def option_table(cls) -> dict[str, Option]:
        """The option table of this class, by name: the one place that reads a class's table
        before any server of it exists. Called by the ``gnetserver`` command (``--help``, its
        check of the command line); :meth:`configure` reads its own instance's table instead
        (a hook may have set state that ``options()`` reads).

        ``options()`` is an instance hook (Net::Server's, overridable with ``super()``), so it
        is called on a bare ``cls.__new__(cls)``: ``__init__`` does not run, since a user's
        class may need constructor arguments the command cannot give. Raises ValueError when
        the table declares a name twice."""
        return table(cls.__new__(cls).options())

    def default_values(self) -> dict[str, Any]:
        """Lowest-precedence values (Net::Server's ``default_values``); override to set defaults."""
        return {}

    def configure(self) -> None:
        """Framework step (first in run(), after configure_hook; the HUP preflight runs it on
        a fresh instance): plan the configuration from the server's sources with
        :func:`~gnetserver.conf.plan_conf` and set ``self.conf`` (the frozen Conf),
        ``self.conf_sources`` (``self.conf.sources``: the source of every option one set) and
        ``self.argv_unused`` (command-line words no option took). Raises ConfigError naming a
        bad option."""
        self.conf, self.argv_unused = plan_conf(
            table(self.options()), constructor=self.new_args,
            commandline=self.commandline or [], run_args=self.run_args,
            default_values=self.default_values(), environ=os.environ)
        self.conf_sources = self.conf.sources

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
