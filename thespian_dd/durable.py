"""Durable storage: the SQL store and the DurableWriter actor that owns it.

One row per ``(node, key)`` holds the key's codec bytes (or an empty payload for a deleted key),
its data type, the codec's format version, a checksum and the time of the write.  A second table
holds each node's incarnation counter and the schema version.  SQLAlchemy Core, so any database
it speaks works; SQLite (one file per node) is the embedded default.

The engine is created inside the DurableWriter's own process (never before a fork).  The
Replicator sends it one batch of writes at a time and sends the next batch, holding every write
that arrived meanwhile, when the previous one is committed: that is group commit, so a busy node
makes few large transactions instead of many small ones.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from thespian.actors import ActorTypeDispatcher

from thespian_dd import codec

__all__ = [
    "SCHEMA_VERSION",
    "DurableWriter",
    "Load",
    "Loaded",
    "Store",
    "StoreError",
    "Write",
    "Written",
]

SCHEMA_VERSION = 1

log = logging.getLogger(__name__)

_metadata = sa.MetaData()
_entries = sa.Table(
    "thespian_dd_entries",
    _metadata,
    sa.Column("node", sa.String(255), primary_key=True),
    sa.Column("key", sa.String(1024), primary_key=True),
    sa.Column("data_type", sa.String(64), nullable=False),
    sa.Column("format_version", sa.Integer, nullable=False),
    # LargeBinary maps to BLOB on SQLite, BYTEA on PostgreSQL; MariaDB needs LONGBLOB, not the
    # 64 KiB BLOB, hence the variant.
    sa.Column(
        "payload",
        sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql", "mariadb"),
        nullable=False,
    ),
    sa.Column("checksum", sa.LargeBinary(32), nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
)
_nodes = sa.Table(
    "thespian_dd_nodes",
    _metadata,
    sa.Column("node", sa.String(255), primary_key=True),
    sa.Column("incarnation", sa.BigInteger, nullable=False),
    sa.Column("schema_version", sa.Integer, nullable=False),
)

DELETED = "deleted"
"""The data type recorded for a deleted key (its payload is empty)."""


class StoreError(RuntimeError):
    """The store cannot be opened, read or written; the message names the cause."""


def _checksum(node: str, key: str, payload: bytes) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for part in (node.encode(), key.encode("utf-8", "surrogatepass"), payload):
        h.update(len(part).to_bytes(8, "big"))
        h.update(part)
    return h.digest()


class Store:
    """The SQL side, used only inside the DurableWriter's process."""

    def __init__(self, url: str) -> None:
        try:
            self.engine = sa.create_engine(url)
            _metadata.create_all(self.engine)
        except Exception as e:
            raise StoreError(f"cannot open the store {url!r}: {type(e).__name__}: {e}") from e

    def next_incarnation(self, node: str, at_least: int = 1) -> int:
        """Count one more start of ``node`` and return the new incarnation: above every earlier
        one, and at least ``at_least`` (the caller passes the time in ms, so an incarnation is
        never lower than one the node had while it ran without this store)."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(_nodes.c.incarnation, _nodes.c.schema_version).where(
                    _nodes.c.node == node
                )
            ).first()
            if row is None:
                conn.execute(
                    _nodes.insert().values(
                        node=node, incarnation=at_least, schema_version=SCHEMA_VERSION
                    )
                )
                return at_least
            if row.schema_version > SCHEMA_VERSION:
                raise StoreError(
                    f"the store has schema version {row.schema_version}; this thespian_dd "
                    f"understands up to {SCHEMA_VERSION}: upgrade thespian_dd"
                )
            incarnation = max(int(row.incarnation) + 1, at_least)
            conn.execute(
                _nodes.update().where(_nodes.c.node == node).values(incarnation=incarnation)
            )
            return incarnation

    def load(self, node: str) -> Iterator[tuple[str, bytes | None, str | None]]:
        """Every row of ``node``: (key, payload or None if deleted, error or None)."""
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(
                    _entries.c.key, _entries.c.data_type, _entries.c.payload, _entries.c.checksum
                )
                .where(_entries.c.node == node)
                .execution_options(yield_per=1000)
            )
            for key, data_type, stored, checksum in rows:
                payload = bytes(stored)
                if _checksum(node, key, payload) != bytes(checksum):
                    yield key, None, "the row's checksum does not match"
                elif data_type == DELETED:
                    yield key, None, None
                else:
                    yield key, payload, None

    def write(self, node: str, entries: Mapping[str, tuple[str, bytes] | None]) -> None:
        """Upsert every entry ((data type, codec bytes), or None: deleted) in one transaction."""
        now = time.time()
        rows = []
        for key, entry in entries.items():
            data_type, raw = (DELETED, b"") if entry is None else entry
            rows.append(
                {
                    "node": node,
                    "key": key,
                    "data_type": data_type,
                    "format_version": codec.FORMAT_VERSION,
                    "payload": raw,
                    "checksum": _checksum(node, key, raw),
                    "updated_at": now,
                }
            )
        with self.engine.begin() as conn:
            keys = [r["key"] for r in rows]
            conn.execute(_entries.delete().where(_entries.c.node == node, _entries.c.key.in_(keys)))
            conn.execute(_entries.insert(), rows)

    def close(self) -> None:
        self.engine.dispose()


@dataclass(frozen=True)
class Load:
    """To the DurableWriter: open ``url``, count a new incarnation of ``node``, send every row."""

    url: str
    node: str


@dataclass(frozen=True)
class Loaded:
    incarnation: int
    rows: list[tuple[str, bytes | None]]
    skipped: list[tuple[str, str]]
    seconds: float
    error: str | None = None


@dataclass(frozen=True)
class Write:
    """To the DurableWriter: commit these entries ((data type, codec bytes), or None for
    deleted) as batch ``seq``, then answer :class:`Written`."""

    seq: int
    entries: dict[str, tuple[str, bytes] | None]


@dataclass(frozen=True)
class Written:
    seq: int
    error: str | None = None


class DurableWriter(ActorTypeDispatcher):  # type: ignore[misc]
    """A child of the Replicator that owns the store's engine."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.store: Store | None = None
        self.node = ""

    def receiveMsg_Load(self, msg: Load, sender: Any) -> None:  # noqa: N802
        started = time.perf_counter()
        try:
            if self.store is None:
                self.store = Store(msg.url)
            self.node = msg.node
            incarnation = self.store.next_incarnation(msg.node, time.time_ns() // 1_000_000)
            rows: list[tuple[str, bytes | None]] = []
            skipped: list[tuple[str, str]] = []
            for key, payload, error in self.store.load(msg.node):
                if error:
                    log.error("skipped stored key %r of %s: %s", key, msg.node, error)
                    skipped.append((key, error))
                else:
                    rows.append((key, payload))
        except Exception as e:  # noqa: BLE001 - reported to the Replicator, which retries
            self.send(sender, Loaded(0, [], [], 0.0, f"{type(e).__name__}: {e}"))
            return
        self.send(sender, Loaded(incarnation, rows, skipped, time.perf_counter() - started))

    def receiveMsg_Write(self, msg: Write, sender: Any) -> None:  # noqa: N802
        if self.store is None:
            self.send(sender, Written(msg.seq, "the store is not open"))
            return
        try:
            self.store.write(self.node, msg.entries)
        except Exception as e:  # noqa: BLE001 - reported with the batch
            log.warning("store write of %d keys failed: %s", len(msg.entries), e)
            self.send(sender, Written(msg.seq, f"{type(e).__name__}: {e}"))
            return
        self.send(sender, Written(msg.seq))
