"""Net::Server's five log levels over the stdlib :mod:`logging`.

Rules of this module:

* ``log_level`` 0-4 is Net::Server's scale: 0 fatal, 1 errors and warnings, 2 notices (the
  default), 3 per-connection information, 4 debug. A message is emitted when its level is at or
  below ``log_level``; with ``log_level`` 0 nothing at all is emitted (as in Net::Server).
* Messages go to the ``gnetserver`` logger at the stdlib level of :data:`STDLIB_LEVELS`, so users
  configure handlers and formats the usual way. Only when neither that logger nor the root logger
  has a handler do we attach one to stderr, in Net::Server's ``YYYY/MM/DD-HH:MM:SS msg`` format.
"""

from __future__ import annotations

import logging
import sys

NOTICE = 25
logging.addLevelName(NOTICE, "NOTICE")

#: Net::Server level -> stdlib logging level.
STDLIB_LEVELS: dict[int, int] = {
    0: logging.CRITICAL,
    1: logging.ERROR,
    2: NOTICE,
    3: logging.INFO,
    4: logging.DEBUG,
}

LOGGER_NAME = "gnetserver"


def get_logger() -> logging.Logger:
    """Return the ``gnetserver`` logger, with a stderr handler when nothing else is configured."""
    logger = logging.getLogger(LOGGER_NAME)
    if logger.level == logging.NOTSET:
        # Filtering by log_level happens in should_log(); the logger itself lets all through.
        logger.setLevel(logging.DEBUG)
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y/%m/%d-%H:%M:%S"))
        logger.addHandler(handler)
    return logger


def should_log(level: int, log_level: int) -> bool:
    """Net::Server's rule: nothing at log_level 0, else every level up to log_level."""
    return log_level > 0 and level <= log_level
