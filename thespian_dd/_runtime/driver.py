"""What a store runs through its database driver itself, past SQLAlchemy's execution: a
commit's statements compiled once (:class:`Writes`), and a load's rows read in chunks as the
driver's own tuples (:func:`fetch_chunks`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.sql.compiler import SQLCompiler

from thespian_dd._runtime.schema import entries_table, nodes_table, upsert_statement

__all__ = [
    "ROWS_PER_STATEMENT",
    "DriverStatement",
    "PostgresRowsUpsert",
    "RowsUpsert",
    "Writes",
    "fetch_chunks",
    "run",
    "writes",
]


class DriverStatement:
    """A statement compiled once for a dialect, to run through its driver (the DBAPI cursor):
    its SQL text and the driver's parameters of a row.  A one-row commit through SQLAlchemy's
    ``execute`` spent most of its Python time in SQLAlchemy (the compiled-statement cache, the
    execution context, the pool's checkout and reset), about as much as sqlite3 with its fsync.

    The values go to the driver as they are: every column here is one the drivers take as
    Python gives it (str, int, bytes, float), no type with a bind processor that changes it."""

    def __init__(self, statement: sa.ClauseElement, dialect: sa.Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler)
        self.sql = compiled.string
        # A positional paramstyle (qmark, format, numeric) takes a tuple in the order of the
        # statement's placeholders; a named one (named, pyformat) a mapping of its names only
        # (a row holds more columns than a delete binds, and some drivers refuse names unused).
        self._positional = bool(dialect.positional)
        self._names = (
            tuple(compiled.positiontup or ()) if self._positional else tuple(compiled.params)
        )

    def params(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters for ``values`` (column or bind name -> value)."""
        if self._positional:
            return tuple([values[name] for name in self._names])
        return {name: values[name] for name in self._names}


class RowsUpsert:
    """SQLite's upsert of a batch's rows as one statement (compiled once per row count, up to
    :data:`ROWS_PER_STATEMENT`), run in autocommit mode: the statement is its own transaction,
    so a batch is one step of the driver, where ``executemany`` inside ``BEGIN`` and ``COMMIT``
    made two or more per row and four more.  Each such step gives up the GIL and takes it back,
    a wait on the Replicator's thread, which holds it as it works (see
    :class:`~thespian_dd._runtime.commits.CommitThread`)."""

    def __init__(self, dialect: sa.Dialect) -> None:
        self._dialect = dialect
        self._sql: dict[int, str] = {}
        self.names = tuple(column.name for column in entries_table.columns)

    def sql(self, rows: int) -> str:
        """The statement of ``rows`` rows (its parameters: each row's columns in order)."""
        sql = self._sql.get(rows)
        if sql is None:
            statement = upsert_statement(self._dialect.name, rows)
            assert statement is not None
            compiled = statement.compile(dialect=self._dialect)
            assert isinstance(compiled, SQLCompiler)
            expected = [f"{name}_{i}" for i in range(rows) for name in self.names]
            assert list(compiled.positiontup or ()) == expected, "rows' parameters out of order"
            sql = self._sql[rows] = compiled.string
        return sql

    def params(self, rows: list[dict[str, Any]]) -> list[Any]:
        names = self.names
        return [row[name] for row in rows for name in names]

    def cursor(self, connection: Any) -> Any:
        """A cursor of the pool's DBAPI ``connection`` to run :meth:`sql` with."""
        return connection.cursor()

    @staticmethod
    def autocommit(driver: Any) -> Callable[[], None]:
        """Put the driver's connection ``driver`` (sqlite3's) in autocommit mode; returns what
        puts it back."""
        before = driver.isolation_level
        driver.isolation_level = None
        return partial(setattr, driver, "isolation_level", before)


class PostgresRowsUpsert(RowsUpsert):
    """:class:`RowsUpsert` on PostgreSQL through psycopg 3.2 or later: the statement is written
    with PostgreSQL's own placeholders (``$1``) and run by psycopg's ``RawCursor``, which sends
    it as it is.  psycopg's usual cursor parses a statement's ``%(name)s`` placeholders at every
    execute of more than 50 parameters (a batch of 6 rows has 54), and ``executemany`` inside a
    transaction sent ``BEGIN``, each row and ``COMMIT``: ``Store.write`` of 6 rows took 300 µs
    of CPU and 600 µs in all, and takes 100 µs and 330 µs so (a server on the same machine)."""

    def __init__(self, dialect: sa.Dialect, raw_cursor: Any) -> None:
        dollar: Any = type(dialect)  # a Dialect takes ``paramstyle``; the base type says not
        super().__init__(dollar(paramstyle="numeric_dollar"))
        self._raw_cursor = raw_cursor  # psycopg.RawCursor

    def cursor(self, connection: Any) -> Any:
        return self._raw_cursor(connection.driver_connection)

    @staticmethod
    def autocommit(driver: Any) -> Callable[[], None]:
        """Put psycopg's connection ``driver`` in autocommit mode; returns what takes it out
        (which psycopg refuses inside a transaction: roll back first)."""
        driver.autocommit = True
        return partial(setattr, driver, "autocommit", False)


ROWS_PER_STATEMENT = 100
"""The most rows :class:`RowsUpsert` writes in one statement: 900 parameters, within SQLite's
oldest limit of 999."""


class Writes(NamedTuple):
    """What a commit runs, compiled for one dialect (see :func:`writes`)."""

    upsert: DriverStatement | None
    """The dialect's insert-or-update of an entry row; None where it has none, then a row is
    deleted (:attr:`delete`) and inserted (:attr:`insert`) in the same transaction."""
    insert: DriverStatement
    delete: DriverStatement
    """Delete the row of (``node``, ``key_id``)."""
    alive: DriverStatement
    """Set ``node``'s ``last_alive``."""
    rows_upsert: RowsUpsert | None = None
    """SQLite, and PostgreSQL through psycopg 3.2 or later: a batch's rows in one statement, in
    autocommit mode."""


def writes(dialect: sa.Dialect) -> Writes:
    """The statements of a commit, compiled for ``dialect`` (that of a connected engine: MariaDB
    and MySQL are told apart by the server)."""
    upsert = upsert_statement(dialect.name)
    node: sa.BindParameter[str] = sa.bindparam("node")
    key: sa.BindParameter[str] = sa.bindparam("key_id")
    return Writes(
        upsert=None if upsert is None else DriverStatement(upsert, dialect),
        insert=DriverStatement(entries_table.insert(), dialect),
        delete=DriverStatement(
            entries_table.delete().where(
                entries_table.c.node == node, entries_table.c.key_id == key
            ),
            dialect,
        ),
        alive=DriverStatement(
            nodes_table.update()
            .where(nodes_table.c.node == node)
            .values(last_alive=sa.bindparam("last_alive")),
            dialect,
        ),
        rows_upsert=_rows_upsert(dialect),
    )


def _rows_upsert(dialect: sa.Dialect) -> RowsUpsert | None:
    if dialect.name == "sqlite":
        return RowsUpsert(dialect)
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        # Connected, so psycopg is there; its RawCursor came with 3.2.
        raw_cursor = getattr(dialect.loaded_dbapi, "RawCursor", None)
        if raw_cursor is not None:
            return PostgresRowsUpsert(dialect, raw_cursor)
    # Elsewhere every batch is a transaction of the driver's (executemany).  The one statement
    # runs in autocommit mode, where a batch with more than rows to upsert takes a BEGIN of ours
    # and the driver's commit(): only the drivers tested with that get it.
    return None


def run(cursor: Any, statement: DriverStatement, rows: list[dict[str, Any]]) -> None:
    """Run ``statement`` once per row (``executemany``: one round trip where the driver can)."""
    cursor.executemany(statement.sql, [statement.params(row) for row in rows])


def fetch_chunks(conn: sa.Connection, query: sa.Select[Any], size: int) -> Iterator[Sequence[Any]]:
    """The rows of ``query`` in lists of up to ``size``, without holding them
    all, as the driver's own tuples where the driver is known (SQLAlchemy's Row per row cost a
    quarter of reading's CPU on PostgreSQL), else through SQLAlchemy (``yield_per``).

    psycopg: one query whose rows the server streams as fast as they are taken (libpq's chunked
    rows; memory stays bounded, the socket's buffers holding what is not yet taken), in binary
    (``bytea`` as bytes, not hex text): a server-side cursor took a round trip per chunk,
    each waiting for the server to be scheduled (100,000 rows read and checked on a busy
    2-core machine: 0.61-1.10 s; streamed, 0.48-0.65 s).  sqlite3: its cursor, which steps the
    rows as they are fetched."""
    driver = conn.dialect.driver
    streamed = driver == "psycopg" and _psycopg_streams_chunks()
    if not streamed and driver != "pysqlite":
        yield from conn.execution_options(yield_per=size).execute(query).partitions()
        return
    compiled = query.compile(dialect=conn.dialect)
    params: Any = compiled.params
    if compiled.positiontup is not None:
        params = [params[name] for name in compiled.positiontup]
    raw = conn.connection.driver_connection
    assert raw is not None
    if streamed:
        rows = raw.cursor().stream(str(compiled), params, binary=True, size=size)
        try:
            while chunk := list(itertools.islice(rows, size)):
                yield chunk
        finally:
            rows.close()  # a load stopped midway: the query is cancelled
        return
    cursor = raw.cursor()
    try:
        cursor.execute(str(compiled), params)
        while chunk := cursor.fetchmany(size):
            yield chunk
    finally:
        cursor.close()


def _psycopg_streams_chunks() -> bool:
    """Whether psycopg streams a query's rows in chunks (psycopg 3.2 with libpq 17 or later)."""
    import psycopg  # the driver of a PostgreSQL store only: not imported before one is used

    capabilities = getattr(psycopg, "capabilities", None)  # psycopg 3.2
    return capabilities is not None and bool(capabilities.has_stream_chunked())
