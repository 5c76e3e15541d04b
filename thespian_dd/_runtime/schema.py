"""The store's two tables, its schema version and the steps between versions, and each
dialect's upsert of a row.

One row of ``thespian_dd_entries`` per ``(node, key)`` holds the key's codec bytes (or an empty
payload for a deleted key), its data type, the codec's format version, the replicas the value
holds state from, a checksum (an HMAC-SHA256 when the store has a signing key) and the time of
the write.  ``thespian_dd_nodes`` holds each node's incarnation counter, schema version and last
commit.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from thespian_dd._runtime.database import StoreError

__all__ = [
    "LOAD_COLUMNS",
    "SCHEMA_STEPS",
    "SCHEMA_VERSION",
    "check_schema",
    "entries_table",
    "nodes_table",
    "store_metadata",
    "upsert_statement",
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


def upsert_statement(dialect: str, rows: int | None = None) -> sa.Insert | None:
    """The dialect's insert-or-update of entry rows, or None where there is none.  ``rows``
    (SQLite and PostgreSQL): the statement of that many rows at once, each column's parameter
    of row ``i`` named ``{column}_{i}``."""
    if dialect in ("sqlite", "postgresql"):
        insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(entries_table)
        if rows is not None:
            names = [column.name for column in entries_table.columns]
            insert = insert.values(
                [{name: sa.bindparam(f"{name}_{i}") for name in names} for i in range(rows)]
            )
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
