"""Durable storage: the SQL store and the DurableWriter actor that owns it.

One row per ``(node, key)`` holds the key's codec bytes (or an empty payload for a deleted key),
its data type, the codec's format version, the replicas the value holds state from, a checksum
and the time of the write.  A second table holds each node's incarnation counter and the schema
version.  SQLAlchemy Core, so any database it speaks works; SQLite (one file per node) is the
embedded default, PostgreSQL and MariaDB/MySQL get a native upsert.

The engine is created inside the DurableWriter's own process (never before a fork).  The
Replicator sends it one batch of writes at a time and sends the next batch, holding every write
that arrived meanwhile, when the previous one is committed: that is group commit, so a busy node
makes few large transactions instead of many small ones.  Every message carries the store's URL,
so a DurableWriter that died and was created again picks up where the old one was.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite
from thespian.actors import ActorTypeDispatcher

from thespian_dd import codec

__all__ = [
    "FORGOTTEN",
    "SCHEMA_VERSION",
    "DurableWriter",
    "Entry",
    "Load",
    "LoadChunk",
    "Loaded",
    "Store",
    "StoreError",
    "StoredRow",
    "Write",
    "Written",
    "safe_url",
]

SCHEMA_VERSION = 1

LOAD_CHUNK_ROWS = 2000
"""Rows per :class:`LoadChunk`: the Replicator decodes one chunk while the next is read."""

LOAD_CHUNK_BYTES = 4 * 1024 * 1024
"""A chunk ends early once its payloads reach this size."""

log = logging.getLogger(__name__)

_metadata = sa.MetaData()
_entries = sa.Table(
    "thespian_dd_entries",
    _metadata,
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
_nodes = sa.Table(
    "thespian_dd_nodes",
    _metadata,
    sa.Column("node", sa.String(255), primary_key=True),
    sa.Column("incarnation", sa.BigInteger, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
    # The last commit of the node (every batch, and a keep-alive while idle): how long it was
    # offline when it starts again.
    sa.Column("last_alive", sa.Double, nullable=True),
    mysql_charset="utf8mb4",
)
_UPDATED = ("key", "data_type", "format_version", "payload", "replicas", "checksum", "updated_at")

DELETED = "deleted"
"""The data type recorded for a deleted key (its payload is empty)."""


class StoreError(RuntimeError):
    """The store cannot be opened, read or written; the message names the cause."""


class Entry(NamedTuple):
    """What the Replicator sends to be stored for one key (``None`` instead: deleted, a
    tombstone; :data:`FORGOTTEN`: no row at all)."""

    data_type: str
    payload: bytes
    replicas: str


FORGOTTEN = Entry("", b"", "")
"""The entry of a key that expired: its row is deleted (no tombstone is kept)."""


class StoredRow(NamedTuple):
    """One row as stored, for :meth:`Store.rows` (the ``inspect`` command)."""

    node: str
    key: str
    data_type: str
    format_version: int
    payload: bytes
    replicas: str
    updated_at: float
    error: str | None  # why the row cannot be loaded, or None


def key_id(key: str) -> str:
    return hashlib.blake2b(key.encode(), digest_size=16).hexdigest()


def _checksum(node: str, key: str, data_type: str, format_version: int, payload: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (node.encode(), key.encode(), data_type.encode(), b"%d" % format_version, payload):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


def safe_url(url: str) -> str:
    """``url`` without its password, for messages and logs."""
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: say so without echoing it
        return "<not an SQLAlchemy URL>"


class Store:
    """The SQL side: used inside the DurableWriter's process, and by ``inspect``."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """Open the store at ``url``, creating its tables if missing; with ``create=False``
        (to read only) a store without them is an error, and nothing is created."""
        try:
            self.engine = sa.create_engine(url)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _sqlite_pragmas)
            problem = None
            if create:
                _metadata.create_all(self.engine)
            else:
                problem = self._missing()
        except Exception as e:
            raise StoreError(f"cannot open the store {safe_url(url)}: {_describe(e)}") from e
        if problem:
            raise StoreError(f"cannot open the store {safe_url(url)}: {problem}")

    def _missing(self) -> str | None:
        """Why the store cannot be read as it is (without creating anything), or None."""
        path = self.engine.url.database
        in_a_file = self.engine.dialect.name == "sqlite" and path not in (None, "", ":memory:")
        if in_a_file and not Path(str(path)).exists():
            return f"no such file: {path}"
        if not sa.inspect(self.engine).has_table(_entries.name):
            return "it has no thespian_dd tables"
        return None

    def next_incarnation(
        self, node: str, at_least: int = 1, max_offline: float | None = None
    ) -> int:
        """Count one more start of ``node`` and return the new incarnation: above every earlier
        one, and at least ``at_least`` (the caller passes the time in ms, so an incarnation is
        never lower than one the node had while it ran without this store).  Refuses a node
        whose last commit is more than ``max_offline`` seconds old."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(_nodes.c.incarnation, _nodes.c.schema_version, _nodes.c.last_alive)
                .where(_nodes.c.node == node)
                .with_for_update()
            ).first()
            now = time.time()
            if row is None:
                conn.execute(
                    _nodes.insert().values(
                        node=node,
                        incarnation=at_least,
                        schema_version=SCHEMA_VERSION,
                        last_alive=now,
                    )
                )
                return at_least
            self._check_schema(row.schema_version)
            offline = now - row.last_alive if row.last_alive is not None else 0.0
            if max_offline is not None and offline > max_offline:
                raise StoreError(
                    f"node {node} last committed {offline / 86400:.1f} days ago, longer than "
                    f"durable_pruning_marker_ttl ({max_offline / 86400:.1f} days): its peers may "
                    "have pruned replicas whose state its store still holds, which would then "
                    "count twice. Delete its rows from the thespian_dd_entries table to let it "
                    "rejoin empty; its peers hold the data"
                )
            incarnation = max(int(row.incarnation) + 1, at_least)
            conn.execute(
                _nodes.update()
                .where(_nodes.c.node == node)
                .values(incarnation=incarnation, last_alive=now)
            )
            return incarnation

    @staticmethod
    def _check_schema(version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store has schema version {version}; this thespian_dd understands up to "
                f"{SCHEMA_VERSION}: upgrade thespian_dd"
            )

    def load(self, node: str) -> Iterator[tuple[str, bytes | None, str | None]]:
        """Every row of ``node``: (key, payload or None if deleted, error or None)."""
        for row in self.rows(node):
            if row.error is not None:
                yield row.key, None, row.error
            else:
                yield row.key, None if row.data_type == DELETED else row.payload, None

    def rows(self, node: str | None = None, key: str | None = None) -> Iterator[StoredRow]:
        """The stored rows (of ``node``, of ``key``), each checked; streamed, not all at once."""
        query = sa.select(
            _entries.c.node,
            _entries.c.key,
            _entries.c.data_type,
            _entries.c.format_version,
            _entries.c.payload,
            _entries.c.replicas,
            _entries.c.updated_at,
            _entries.c.checksum,
        ).order_by(_entries.c.node, _entries.c.key_id)
        if node is not None:
            query = query.where(_entries.c.node == node)
        if key is not None:
            query = query.where(_entries.c.key_id == key_id(key))
        with self.engine.connect() as conn:
            result = conn.execution_options(yield_per=LOAD_CHUNK_ROWS).execute(query)
            for n, k, data_type, version, stored, replicas, updated_at, check in result:
                payload, error = bytes(stored), None
                if _checksum(n, k, data_type, version, payload) != bytes(check):
                    error = "the row's checksum does not match (tampered or corrupted)"
                elif version != codec.FORMAT_VERSION:
                    error = f"format version {version} is not the codec's {codec.FORMAT_VERSION}"
                yield StoredRow(n, k, data_type, version, payload, replicas, updated_at, error)

    def nodes(self) -> list[tuple[str, int, int]]:
        """Every node of the store: (name, incarnation, schema version)."""
        with self.engine.connect() as conn:
            query = sa.select(_nodes.c.node, _nodes.c.incarnation, _nodes.c.schema_version)
            return [(n, int(i), int(v)) for n, i, v in conn.execute(query.order_by(_nodes.c.node))]

    def write(self, node: str, entries: Mapping[str, Entry | None]) -> None:
        """Upsert every entry (None: deleted) in one transaction, which also records that the
        node is alive (no entries: only that)."""
        now = time.time()
        rows = []
        forgotten = [key_id(key) for key, entry in entries.items() if entry == FORGOTTEN]
        for key, entry in entries.items():
            if entry == FORGOTTEN:
                continue
            data_type, raw, replicas = (DELETED, b"", "") if entry is None else entry
            rows.append(
                {
                    "node": node,
                    "key_id": key_id(key),
                    "key": key,
                    "data_type": data_type,
                    "format_version": codec.FORMAT_VERSION,
                    "payload": raw,
                    "replicas": replicas,
                    "checksum": _checksum(node, key, data_type, codec.FORMAT_VERSION, raw),
                    "updated_at": now,
                }
            )
        with self.engine.begin() as conn:
            if rows:
                self._upsert(conn, rows)
            if forgotten:
                conn.execute(
                    _entries.delete().where(
                        _entries.c.node == node, _entries.c.key_id.in_(forgotten)
                    )
                )
            conn.execute(_nodes.update().where(_nodes.c.node == node).values(last_alive=now))

    def _upsert(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        dialect = self.engine.dialect.name
        if dialect in ("sqlite", "postgresql"):
            insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(_entries)
            conn.execute(
                insert.on_conflict_do_update(
                    index_elements=[_entries.c.node, _entries.c.key_id],
                    set_={name: insert.excluded[name] for name in _UPDATED},
                ),
                rows,
            )
        elif dialect in ("mysql", "mariadb"):
            mysql_insert = mysql.insert(_entries)
            conn.execute(
                mysql_insert.on_duplicate_key_update(
                    {name: mysql_insert.inserted[name] for name in _UPDATED}
                ),
                rows,
            )
        else:  # any other dialect: the portable way, in the same transaction
            node = rows[0]["node"]
            ids = [r["key_id"] for r in rows]
            conn.execute(
                _entries.delete().where(_entries.c.node == node, _entries.c.key_id.in_(ids))
            )
            conn.execute(_entries.insert(), rows)

    def close(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers do not block the writer, and a commit is one append.  synchronous=FULL keeps a
    # committed transaction across a power cut, not only across a killed process.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".splitlines()[0]


@dataclass(frozen=True)
class Load:
    """To the DurableWriter: open ``url``, count a new incarnation of ``node`` (refused if it
    was offline more than ``max_offline`` seconds), then send every row of it in
    :class:`LoadChunk` messages and finish with :class:`Loaded`."""

    url: str
    node: str
    max_offline: float | None = None


@dataclass(frozen=True)
class LoadChunk:
    rows: list[tuple[str, bytes | None]]  # (key, codec bytes or None: deleted)
    skipped: list[tuple[str, str]]  # (key, why)


@dataclass(frozen=True)
class Loaded:
    incarnation: int
    rows: int  # how many rows the chunks held, so the Replicator knows it got them all
    error: str | None = None


@dataclass(frozen=True)
class Write:
    """To the DurableWriter: commit these entries (None: deleted) of ``node`` in ``url`` as
    batch ``seq``, then answer :class:`Written`."""

    url: str
    node: str
    seq: int
    entries: dict[str, Entry | None]


@dataclass(frozen=True)
class Written:
    seq: int
    error: str | None = None


class DurableWriter(ActorTypeDispatcher):  # type: ignore[misc]
    """A child of the Replicator that owns the store's engine."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.store: Store | None = None

    def _open(self, url: str) -> Store:
        if self.store is None:
            self.store = Store(url)
        return self.store

    def receiveMsg_Load(self, msg: Load, sender: Any) -> None:
        count = 0
        try:
            store = self._open(msg.url)
            incarnation = store.next_incarnation(
                msg.node, time.time_ns() // 1_000_000, msg.max_offline
            )
            rows: list[tuple[str, bytes | None]] = []
            skipped: list[tuple[str, str]] = []
            size = 0
            for key, payload, error in store.load(msg.node):
                if error:
                    log.error("skipped stored key %r of %s: %s", key, msg.node, error)
                    skipped.append((key, error))
                else:
                    rows.append((key, payload))
                    size += len(payload or b"")
                if len(rows) + len(skipped) >= LOAD_CHUNK_ROWS or size >= LOAD_CHUNK_BYTES:
                    self.send(sender, LoadChunk(rows, skipped))
                    count += len(rows) + len(skipped)
                    rows, skipped, size = [], [], 0
            self.send(sender, LoadChunk(rows, skipped))
            count += len(rows) + len(skipped)
        except Exception as e:  # noqa: BLE001 - reported to the Replicator, which retries
            self._close()
            self.send(sender, Loaded(0, count, _describe(e)))
            return
        self.send(sender, Loaded(incarnation, count))

    def receiveMsg_Write(self, msg: Write, sender: Any) -> None:
        try:
            self._open(msg.url).write(msg.node, msg.entries)
        except Exception as e:  # noqa: BLE001 - reported with the batch
            log.warning("store write of %d keys failed: %s", len(msg.entries), e)
            self._close()  # open afresh next time: the server may have restarted
            self.send(sender, Written(msg.seq, _describe(e)))
            return
        self.send(sender, Written(msg.seq))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
