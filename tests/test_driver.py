"""The driver's own statements (:mod:`thespian_dd._runtime.driver`), compiled for each dialect
without a database.  Commits and loads through them, on every store: ``tests/test_store.py``."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2

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


def test_sqlite_and_psycopg_upsert_a_batch_of_rows_in_one_statement_of_its_parameters() -> None:
    """SQLite's statement of n rows has n times the columns' placeholders, and its parameters
    are each row's columns in the table's order (compiled once per row count); so has
    PostgreSQL's through psycopg, numbered ($1, $2, ...: psycopg's RawCursor sends them as they
    are); other drivers have none."""
    columns = len(entries_table.columns)
    values = [{c.name: f"{c.name}{i}" for c in entries_table.columns} for i in range(2)]
    for url in ("sqlite://", "postgresql+psycopg://u@h/d"):
        rows = writes(sa.create_engine(url).dialect).rows_upsert
        assert rows is not None, url
        sql = rows.sql(3)
        if url == "sqlite://":
            assert sql.count("?") == 3 * columns
        else:
            assert f"${3 * columns}" in sql
            assert f"${3 * columns + 1}" not in sql
            assert "%(" not in sql
        assert rows.sql(3) is sql
        assert "ON CONFLICT" in rows.sql(1)
        expected = [f"{c.name}{i}" for i in range(2) for c in entries_table.columns]
        assert rows.params(values) == expected
    assert writes(sa.create_engine("mysql+pymysql://u@h/d").dialect).rows_upsert is None
    psycopg2: Any = PGDialect_psycopg2  # not installed here: a dialect with no engine
    assert writes(psycopg2()).rows_upsert is None
