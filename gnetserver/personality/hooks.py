"""What a multi-process personality calls back into the server, handed over at start.

A personality knows nothing of the server (package rules): the server builds one
:class:`ProcessHooks` of its own methods (``GServer.process_hooks``) and passes it to
``Personality.start``. ``Single`` ignores it; ``PreFork`` calls each callable at the point its
docstring names, in the process it names (the parent, or a worker after the fork).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..conf import Conf

__all__ = ["ProcessHooks"]


def _nothing(*args: object) -> None:
    """The default of every callback: do nothing."""


def _no_reload() -> Conf | None:
    """The default reload: refused (nothing planned)."""
    return None


@dataclass(frozen=True)
class ProcessHooks:
    """The server's side of a multi-process personality.

    Attributes:
        name: the server's name, for process titles (``gnetserver: worker [name]``).
        log: ``log(level, message)``, the server's log (any process).
        child_init: in a worker right after the fork, once its signals are set up and before
            it accepts (``child_init_hook``). Raising ends the worker (exit status 3).
        child_finish: in a worker after its last connection ended, before it exits
            (``child_finish_hook``).
        run_n_children: in the parent after it forked workers, with their number
            (``run_n_children_hook``).
        reload: in the parent on HUP: read the configuration and certificates again; the
            new configuration, or None when the HUP is refused (the reason logged).
        close_logs: in a worker right before it exits: flush and close its copy of the log
            targets (the parent's stay open).
        idle_loop: in the parent, each time its supervision loop wakes (at least once a
            second; ``idle_loop_hook``). Exceptions are logged, the loop goes on.
        worker_ended: in the parent when it reaped a worker, with its pid (the metrics drop
            the worker's live gauges).
        accept_failed: in the accepting process (Single, each PreFork worker), with the
            listener, each time its ``accept()`` fails for want of resources (the metrics
            count it; the log line is the personality's, once per burst).
    """

    name: str = "gnetserver"
    log: Callable[[int, str], None] = _nothing
    child_init: Callable[[], None] = _nothing
    child_finish: Callable[[], None] = _nothing
    run_n_children: Callable[[int], None] = _nothing
    reload: Callable[[], Conf | None] = _no_reload
    close_logs: Callable[[], None] = _nothing
    idle_loop: Callable[[], None] = _nothing
    worker_ended: Callable[[int], None] = _nothing
    accept_failed: Callable[[Any], None] = _nothing
