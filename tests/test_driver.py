"""The driver's own statements (:mod:`thespian_dd._runtime.driver`), compiled for each dialect
without a database.  Commits and loads through them, on every store: ``tests/test_store.py``."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from thespian_dd._runtime.driver import writes
from thespian_dd._runtime.schema import entries_table

pytestmark = pytest.mark.timeout(60)


def test_a_driver_statement_gives_each_paramstyle_its_parameters() -> None:
    """Positional paramstyles get a tuple in the order of the SQL's placeholders, named ones a
    mapping of the statement's names only (a row holds more than a delete binds): SQLite's qmark,
    and the pyformat SQLAlchemy picks for psycopg and PyMySQL.  No database: the dialects only
    compile."""
    row = {"node": "n", "key_id": "i", "last_alive": 1.5, "payload": b"not bound here"}
    keys = {"node": "n", "key_id": "i"}
    node = {"node": "n", "last_alive": 1.5}
    for url, delete, alive in [
        ("sqlite://", ("n", "i"), (1.5, "n")),
        ("postgresql+psycopg://u@h/d", keys, node),
        ("mysql+pymysql://u@h/d", keys, node),
    ]:
        engine = sa.create_engine(url)
        statements = writes(engine.dialect)
        assert statements.delete.params(row) == delete, url
        assert statements.delete.sql.count("?") == (2 if url == "sqlite://" else 0)
        assert statements.alive.params(row) == alive, url  # SET's value before WHERE's
        assert statements.upsert is not None
        engine.dispose()


def test_sqlite_upserts_a_batch_of_rows_in_one_statement_of_their_parameters_in_order() -> None:
    """SQLite's statement of n rows has n times the columns' placeholders, and its parameters
    are each row's columns in the table's order (compiled once per row count); other dialects
    have none."""
    statements = writes(sa.create_engine("sqlite://").dialect)
    rows = statements.rows_upsert
    assert rows is not None
    assert rows.sql(3).count("?") == 3 * len(entries_table.columns)
    assert rows.sql(3) is rows.sql(3)
    assert "ON CONFLICT" in rows.sql(1)
    values = [{c.name: f"{c.name}{i}" for c in entries_table.columns} for i in range(2)]
    assert rows.params(values) == [f"{c.name}{i}" for i in range(2) for c in entries_table.columns]
    for url in ("postgresql+psycopg://u@h/d", "mysql+pymysql://u@h/d"):
        assert writes(sa.create_engine(url).dialect).rows_upsert is None
