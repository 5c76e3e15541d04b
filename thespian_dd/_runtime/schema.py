"""The store's two tables, its schema version and the steps between versions, each dialect's
upsert of a row, and a commit's statements compiled once for the driver (:class:`Writes`).

One row of ``thespian_dd_entries`` per ``(node, key)`` holds the key's codec bytes (or an empty
payload for a deleted key), its data type, the codec's format version, the replicas the value
holds state from, a checksum (an HMAC-SHA256 when the store has a signing key) and the time of
the write.  ``thespian_dd_nodes`` holds each node's incarnation counter, schema version and last
commit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from sqlalchemy.sql.compiler import SQLCompiler

from thespian_dd._runtime.database import StoreError

__all__ = [
    "LOAD_COLUMNS",
    "SCHEMA_STEPS",
    "SCHEMA_VERSION",
    "DriverStatement",
    "Writes",
    "check_schema",
    "entries_table",
    "nodes_table",
    "store_metadata",
    "upsert_statement",
    "writes",
]

SCHEMA_VERSION = 1

store_metadata = sa.MetaData()
"""The two tables of a store (``thespian_dd_entries``, ``thespian_dd_nodes``), public as
``thespian_dd.store_metadata``: an alembic ``env.py`` that manages its own tables in the same
database can leave these out (``include_name``/``include_object``) or include them; their schema
changes only with :data:`SCHEMA_VERSION`, through ``thespian-dd migrate``."""

entries_table = sa.Table(
    "thespian_dd_entries",
    store_metadata,
    sa.Column("node", sa.String(255), primary_key=True),
    # The key's hash identifies the row: keys can be longer than any dialect's index allows
    # (MariaDB: 3072 bytes), and a fixed-width key keeps the index small.
    sa.Column("key_id", sa.String(32), primary_key=True),
    sa.Column(
        "key", sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"), nullable=False
    ),
    sa.Column("data_type", sa.String(64), nullable=False),
    sa.Column("format_version", sa.Integer, nullable=False),
    # LargeBinary maps to BLOB on SQLite, BYTEA on PostgreSQL; MariaDB needs LONGBLOB, not the
    # 64 KiB BLOB, hence the variant.
    sa.Column(
        "payload",
        sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
        nullable=False,
    ),
    # The ReplicaIds the value holds state from ("node#incarnation", space-separated): what
    # pruning and operators need without decoding the payload.
    sa.Column(
        "replicas", sa.Text().with_variant(mysql.MEDIUMTEXT(), "mysql", "mariadb"), nullable=False
    ),
    sa.Column("checksum", sa.LargeBinary(32), nullable=False),
    sa.Column("updated_at", sa.Double, nullable=False),
    mysql_charset="utf8mb4",
)
"""One row per (node, key)."""

nodes_table = sa.Table(
    "thespian_dd_nodes",
    store_metadata,
    sa.Column("node", sa.String(255), primary_key=True),
    sa.Column("incarnation", sa.BigInteger, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    # The last commit of the node (every batch, and a keep-alive while idle): how long it was
    # offline when it starts again.
    sa.Column("last_alive", sa.Double, nullable=True),
    mysql_charset="utf8mb4",
)
"""One row per node."""

LOAD_COLUMNS = (
    entries_table.c.key_id,
    entries_table.c.key,
    entries_table.c.data_type,
    entries_table.c.format_version,
    entries_table.c.payload,
    entries_table.c.replicas,
    entries_table.c.checksum,
)
"""The columns a row of a known node is checked by, in the order
:func:`~thespian_dd._runtime.rows.problem` takes them (its node is the one selected, and is
checked as such)."""

_UPDATED = ("key", "data_type", "format_version", "payload", "replicas", "checksum", "updated_at")

SCHEMA_STEPS: dict[int, Callable[[sa.Connection], None]] = {}
"""The schema changes from version N to N + 1, by N, each run inside the migration's
transaction.  Schema version 1 is the first: there is none yet.  A later release that changes
the schema adds its step here, raises SCHEMA_VERSION, and keeps the store readable by the
release before it until migrate has run (see the operations guide, upgrading)."""


def check_schema(version: int) -> None:
    """Refuse a store whose schema (a node's ``version``) is newer than this code knows."""
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"the store has schema version {version}; this thespian_dd understands up to "
            f"{SCHEMA_VERSION}: upgrade thespian_dd"
        )


def upsert_statement(dialect: str) -> sa.Insert | None:
    """The dialect's insert-or-update of entry rows, or None where there is none."""
    if dialect in ("sqlite", "postgresql"):
        insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(entries_table)
        return insert.on_conflict_do_update(
            index_elements=[entries_table.c.node, entries_table.c.key_id],
            set_={name: insert.excluded[name] for name in _UPDATED},
        )
    if dialect in ("mysql", "mariadb"):
        mysql_insert = mysql.insert(entries_table)
        return mysql_insert.on_duplicate_key_update(
            {name: mysql_insert.inserted[name] for name in _UPDATED}
        )
    return None


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
        # statement's placeholders; a named one (named, pyformat) the mapping itself.
        self._order = tuple(compiled.positiontup or ()) if dialect.positional else None

    def params(self, values: Mapping[str, Any]) -> Any:
        """The driver's parameters for ``values`` (column or bind name -> value)."""
        if self._order is None:
            return values
        return tuple([values[name] for name in self._order])


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
    )
