"""thespian_dd's loggers, looked up by name at each record.

A Thespian actor's process is forked from one that has imported thespian_dd, and Thespian then
gives it a root logger of its own, which forwards each record to its logging process (where the
ActorSystem's ``logDefs`` apply), with a new table of loggers.  A logger got at import, before
the fork, still hangs from the old root: its records went to the forking program's handlers, at
its levels, and never to ``logDefs`` (an INFO line of the Replicator was dropped whatever
``logDefs`` asked for).  A :class:`Log` gets its logger from the table of the moment.
"""

from __future__ import annotations

import logging

__all__ = ["Log"]


class Log:
    """The logger ``name`` of the process's logger table now (``logging.getLogger``): the
    methods thespian_dd logs with, each reporting its caller's line."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    @property
    def logger(self) -> logging.Logger:
        return logging.getLogger(self.name)

    def info(self, msg: str, *args: object) -> None:
        self.logger.info(msg, *args, stacklevel=2)

    def warning(self, msg: str, *args: object) -> None:
        self.logger.warning(msg, *args, stacklevel=2)

    def error(self, msg: str, *args: object) -> None:
        self.logger.error(msg, *args, stacklevel=2)

    def exception(self, msg: str, *args: object) -> None:
        """An ERROR record with the exception being handled."""
        self.logger.exception(msg, *args, stacklevel=2)  # noqa: LOG004 - in the caller's handler
