"""thespian_dd's loggers follow the logger table of the moment: in an actor's process, Thespian's
(see thespian_dd/_log.py)."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from thespian.actors import ActorSystem

import thespian_dd
from thespian_dd._log import Log
from thespian_dd.testing import eventually, free_port


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def new_table() -> Iterator[_Records]:
    """A new root logger and logger table, as Thespian gives an actor's process (its
    multiprocCommon does just this), put back as they were after the test."""
    old_root, old_manager = logging.root, logging.Logger.manager
    root = logging.RootLogger(logging.DEBUG)
    records = _Records()
    root.addHandler(records)
    logging.root = logging.Logger.root = root
    logging.Logger.manager = logging.Manager(root)
    try:
        yield records
    finally:
        logging.root = logging.Logger.root = old_root
        logging.Logger.manager = old_manager


LOG = Log("thespian_dd.test")  # made before the table is replaced, as a module's is at import


def _fails() -> None:
    raise ValueError("no")


def _logs_an_error() -> None:
    try:
        _fails()
    except ValueError:
        LOG.exception("failed: %s", "why")


def test_a_log_made_before_the_logger_table_was_replaced_logs_to_the_new_root(
    new_table: _Records,
) -> None:
    LOG.info("info %d", 1)
    LOG.warning("warning")
    LOG.error("error")
    _logs_an_error()
    got = [(r.levelname, r.name, r.getMessage()) for r in new_table.records]
    assert got == [
        ("INFO", "thespian_dd.test", "info 1"),
        ("WARNING", "thespian_dd.test", "warning"),
        ("ERROR", "thespian_dd.test", "error"),
        ("ERROR", "thespian_dd.test", "failed: why"),
    ]
    assert new_table.records[0].funcName == (
        "test_a_log_made_before_the_logger_table_was_replaced_logs_to_the_new_root"
    )  # the caller's line, not Log's
    assert new_table.records[3].funcName == "_logs_an_error"
    assert new_table.records[3].exc_info is not None


def test_no_module_of_the_package_keeps_a_logger_made_at_import() -> None:
    """Each logs through a :class:`Log` (a ``logging.Logger`` got at import would bypass an
    actor process's ``logDefs``, as the regression below shows)."""
    kept = []
    for module in pkgutil.walk_packages(thespian_dd.__path__, "thespian_dd."):
        loaded = importlib.import_module(module.name)
        kept += [
            f"{module.name}.{name}"
            for name, value in vars(loaded).items()
            if isinstance(value, logging.Logger)
        ]
    assert kept == []


@pytest.mark.multinode
@pytest.mark.timeout(60)
def test_regression_the_replicator_logs_through_the_actor_systems_log_definitions(
    tmp_path: Path,
) -> None:
    """Found loading stores with a debug log to a file: the file had SQLAlchemy's records and
    none of thespian_dd's.  Its loggers were made when the program imported thespian_dd, before
    Thespian forked the node's processes and gave each a root logger of its own, so they still
    logged to the program's root: its handlers, at its level (WARNING), and the Replicator's
    INFO lines (its recovery, its start) were dropped whatever ``logDefs`` asked for."""
    records = tmp_path / "records.log"
    log_defs = {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"f": {"format": "%(levelname)s|%(name)s|%(message)s"}},
        "handlers": {
            "file": {"class": "logging.FileHandler", "filename": str(records), "formatter": "f"}
        },
        "root": {"level": "INFO", "handlers": ["file"]},
    }
    asys = ActorSystem(
        "multiprocTCPBase", {"Admin Port": free_port()}, transientUnique=True, logDefs=log_defs
    )
    try:
        thespian_dd.start(asys, store=f"sqlite:///{tmp_path}/s.db", node_name="logged")
        eventually(
            lambda: (
                records.exists()
                and "INFO|thespian_dd.replicator|thespian_dd logged#" in records.read_text()
            )
        )
    finally:
        asys.shutdown()
    logged = records.read_text()
    assert "recovered 0 keys" in logged
    assert "INFO|thespian_dd.replicator|thespian_dd Replicator logged#" in logged
