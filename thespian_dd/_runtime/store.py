"""The SQL store of durable keys: a node's rows and record, read and written.

A :class:`Store` lives in the DurableWriter's process (:mod:`thespian_dd._runtime.writer`), and
in that of each command that reads or changes a store (``inspect``, ``migrate``, ...).  It puts
together the database (:mod:`thespian_dd._runtime.database`: URL, engine), the tables
(:mod:`thespian_dd._runtime.schema`) and the rows' format and checks
(:mod:`thespian_dd._runtime.rows`); SQLAlchemy Core, so any database it speaks works; SQLite (one
file per node) is the embedded default, PostgreSQL and MariaDB/MySQL get a native upsert.
:mod:`thespian_dd._runtime.backup` copies a store whole.

Upgrades: a row of an earlier codec format is read (the codec reads every format it ever wrote)
and written in the current one when its key is next written; :meth:`Store.migrate` (the
``migrate`` command) upgrades every row and the schema at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping
from typing import Any, NamedTuple

import sqlalchemy as sa

from thespian_dd import codec
from thespian_dd._canonical import Limits
from thespian_dd._runtime.database import (
    STORE_FILE_PREFIX,
    StoreError,
    first_line,
    open_engine,
    safe_url,
    store_url,
)
from thespian_dd._runtime.driver import ROWS_PER_STATEMENT, Writes, fetch_chunks, run, writes
from thespian_dd._runtime.markers import format_version, join_envelope, split_envelope
from thespian_dd._runtime.rows import (
    DELETED,
    FORGOTTEN,
    Entry,
    RowSeal,
    StoredRow,
    checked,
    key_id,
    stored_row,
)
from thespian_dd._runtime.schema import (
    LOAD_COLUMNS,
    SCHEMA_STEPS,
    SCHEMA_VERSION,
    check_schema,
    entries_table,
    nodes_table,
    store_metadata,
)

__all__ = ["LOAD_CHUNK_ROWS", "Migration", "NodeRecord", "Store"]

LOAD_CHUNK_ROWS = 2000
"""Rows per :class:`~thespian_dd._runtime.writer.LoadChunk` (and per fetch of
:meth:`Store.rows`): the Replicator keeps one chunk while the next is read."""


class NodeRecord(NamedTuple):
    """A node's record in the store, as a start reads it."""

    incarnation: int
    last_alive: float | None


ANY_RECORD = object()
"""For :meth:`Store.next_incarnation`: whatever the node's record is."""


class Store:
    """The SQL side: used inside the DurableWriter's process, and by ``inspect``."""

    def __init__(
        self,
        url: str,
        *,
        create: bool = True,
        read_only: bool = False,
        signing_key: bytes | None = None,
    ) -> None:
        """Open the store at ``url`` (or named by ``file:PATH``, see
        :func:`~thespian_dd._runtime.database.store_url`), creating its tables if missing; with
        ``create=False`` a store without them is an error, and nothing is created.  ``read_only``
        (implies ``create=False``): an SQLite file is opened read-only and neither it nor a file
        beside it is created or changed.

        With a ``signing_key``, every row written is signed (HMAC-SHA256), and a row is loaded
        only if its MAC verifies: rows written without the key, or with another, are refused.
        Without one, rows carry a checksum, and signed rows are refused (they cannot be
        verified)."""
        if signing_key is not None and (not isinstance(signing_key, bytes) or not signing_key):
            raise StoreError("the signing key must be non-empty bytes")
        self._signing_key = signing_key
        self._seals: dict[str, RowSeal] = {}  # node -> the seal of its rows
        # Compiled once, run through the driver on a connection kept for commits: through
        # SQLAlchemy's execute and pool, a one-row commit took 4 times as much CPU outside the
        # fsync (see driver.DriverStatement).
        self._writes: Writes | None = None
        self._writer: Any = None  # the pool's DBAPI connection that commits, once used
        self._restore: Callable[[], None] | None = None  # its driver's mode before autocommit
        self._alive_at: dict[str, float] = {}  # node -> when its last_alive was last written
        self._setting = url
        url = store_url(url)
        create = create and not read_only
        self.engine = open_engine(url, create=create, read_only=read_only)
        try:
            if create:
                store_metadata.create_all(self.engine)
            tables = create or sa.inspect(self.engine).has_table(entries_table.name)
        except Exception as e:
            raise StoreError(f"cannot open the store {safe_url(url)}: {first_line(e)}") from e
        if not tables:
            raise StoreError(f"cannot open the store {safe_url(url)}: it has no thespian_dd tables")

    def node_record(self, node: str, max_offline: float | None = None) -> NodeRecord | None:
        """``node``'s record (None: the store has none), read only, after the checks a start
        must pass (see :meth:`next_incarnation`): a node refused is refused before any of its
        rows is read."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(
                    nodes_table.c.incarnation,
                    nodes_table.c.schema_version,
                    nodes_table.c.last_alive,
                ).where(nodes_table.c.node == node)
            ).first()
        if row is None:
            return None
        self._check_start(node, row.schema_version, row.last_alive, max_offline)
        return NodeRecord(int(row.incarnation), row.last_alive)

    def next_incarnation(
        self,
        node: str,
        at_least: int = 1,
        max_offline: float | None = None,
        *,
        expected: NodeRecord | object | None = ANY_RECORD,
    ) -> int:
        """Count one more start of ``node`` and return the new incarnation: above every earlier
        one, and at least ``at_least`` (the caller passes the time in ms, so an incarnation is
        never lower than one the node had while it ran without this store).  Refuses a node
        whose last commit is more than ``max_offline`` seconds old, and (``expected``: what
        :meth:`node_record` read before the rows) one whose record changed since: another
        process forgot it (its rows read meanwhile are gone) or started it."""
        with self.engine.begin() as conn:
            row = conn.execute(
                sa.select(
                    nodes_table.c.incarnation,
                    nodes_table.c.schema_version,
                    nodes_table.c.last_alive,
                )
                .where(nodes_table.c.node == node)
                .with_for_update()
            ).first()
            now = time.time()
            found = None if row is None else NodeRecord(int(row.incarnation), row.last_alive)
            if expected is not ANY_RECORD and found != expected:
                raise StoreError(
                    f"node {node}'s record changed while its rows were read (forgotten, or "
                    "started by another process): its rows are read again"
                )
            if row is None:
                conn.execute(
                    nodes_table.insert().values(
                        node=node,
                        incarnation=at_least,
                        schema_version=SCHEMA_VERSION,
                        last_alive=now,
                    )
                )
                return at_least
            self._check_start(node, row.schema_version, row.last_alive, max_offline)
            incarnation = max(int(row.incarnation) + 1, at_least)
            conn.execute(
                nodes_table.update()
                .where(nodes_table.c.node == node)
                .values(incarnation=incarnation, last_alive=now)
            )
            return incarnation

    def _check_start(
        self, node: str, version: int, last_alive: float | None, max_offline: float | None
    ) -> None:
        check_schema(version)
        offline = time.time() - last_alive if last_alive is not None else 0.0
        if max_offline is not None and offline > max_offline:
            raise StoreError(
                f"node {node} last committed {offline / 86400:.1f} days ago, longer than "
                f"durable_pruning_marker_ttl ({max_offline / 86400:.1f} days): its peers may "
                "have pruned replicas whose state its store still holds, which would then "
                "count twice. To let it rejoin empty (its peers hold the data), stop it and "
                f"run: python -m thespian_dd forget-node {self._store_option()} --node {node}"
            )

    def _store_option(self) -> str:
        """The command-line option naming this store (the URL without its password)."""
        if self._setting.startswith(STORE_FILE_PREFIX):
            return f"--store-file {self._setting[len(STORE_FILE_PREFIX) :]}"
        return f"--store {safe_url(self._setting)}"

    def load_chunks(
        self, node: str
    ) -> Generator[tuple[list[tuple[str, bytes | None]], list[tuple[str, str]]], None, None]:
        """Every row of ``node``, the rows a node recovers from, in chunks of up to
        :data:`LOAD_CHUNK_ROWS`, each checked (see :meth:`RowSeal.check
        <thespian_dd._runtime.rows.RowSeal.check>`): (rows loaded, as (key, payload or None if
        deleted), rows refused, as (key, why)).  The node is not selected but fed to the check
        as the one asked for: a row whose node column differs (a tampered row, or a collation
        that compares loosely) fails its check.  Unordered: a load needs no order, and sorting
        costs the server.  Fetched a chunk at a time, not a row at a time: a load reads
        100,000s of rows.  Closing it midway ends the query and gives its connection back."""
        seal = RowSeal(node, self._signing_key)
        query = sa.select(*LOAD_COLUMNS).where(entries_table.c.node == node)
        with self.engine.connect() as conn:
            for chunk in fetch_chunks(conn, query, LOAD_CHUNK_ROWS):
                yield seal.check(chunk)

    def load(self, node: str) -> Iterator[tuple[str, bytes | None, str | None]]:
        """The rows of :meth:`load_chunks` one at a time: (key, payload or None if deleted,
        error or None)."""
        for loaded, refused in self.load_chunks(node):
            for key, payload in loaded:
                yield key, payload, None
            for key, error in refused:
                yield key, None, error

    def rows(self, node: str | None = None, key: str | None = None) -> Iterator[StoredRow]:
        """The stored rows (of ``node``, of ``key``), each checked; streamed, not all at once."""
        query = sa.select(entries_table.c.node, *LOAD_COLUMNS, entries_table.c.updated_at)
        query = query.order_by(entries_table.c.node, entries_table.c.key_id)
        if node is not None:
            query = query.where(entries_table.c.node == node)
        if key is not None:
            query = query.where(entries_table.c.key_id == key_id(key))
        seals: dict[str, RowSeal] = {}
        for row in self._stream(query):
            yield stored_row(row, checked(row, seals, self._signing_key))

    def _stream(self, query: sa.Select[Any]) -> Iterator[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            yield from conn.execution_options(yield_per=LOAD_CHUNK_ROWS).execute(query)

    def forget(self, node: str) -> int:
        """Remove every row of ``node`` and its node record (incarnation, last commit), in one
        transaction; returns how many rows it had.  Raises :class:`StoreError` if the store has
        no such node."""
        with self.engine.begin() as conn:
            if not conn.execute(nodes_table.delete().where(nodes_table.c.node == node)).rowcount:
                raise StoreError(f"the store has no node {node!r}")
            return int(
                conn.execute(entries_table.delete().where(entries_table.c.node == node)).rowcount
            )

    def nodes(self) -> list[tuple[str, int, int]]:
        """Every node of the store: (name, incarnation, schema version)."""
        with self.engine.connect() as conn:
            query = sa.select(
                nodes_table.c.node, nodes_table.c.incarnation, nodes_table.c.schema_version
            )
            return [
                (n, int(i), int(v)) for n, i, v in conn.execute(query.order_by(nodes_table.c.node))
            ]

    def write(
        self, node: str, entries: Mapping[str, Entry | None], *, alive_every: float = 0.0
    ) -> None:
        """Upsert every entry (None: deleted) in one transaction, which also records that the
        node is alive (no entries: only that) if it was last recorded ``alive_every`` seconds
        ago or more: that record is for the offline bound of ``next_incarnation``, and its
        UPDATE cost about a third of a one-row SQLite commit.  Returns once committed; on
        failure the transaction is rolled back and its connection given up (the next write
        takes another: the server may have restarted)."""
        now = time.time()
        rows = []
        forgotten = []
        seal = self._seal(node)
        for key, entry in entries.items():
            if entry == FORGOTTEN:
                forgotten.append({"node": node, "key_id": key_id(key)})
                continue
            data_type, raw, replicas = (DELETED, b"", "") if entry is None else entry
            # A row says the format of its own bytes (a tombstone's: the current one).
            version = format_version(raw) or codec.FORMAT_VERSION
            rows.append(
                {
                    "node": node,
                    "key_id": key_id(key),
                    "key": key,
                    "data_type": data_type,
                    "format_version": version,
                    "payload": raw,
                    "replicas": replicas,
                    "checksum": seal(key, data_type, version, raw, replicas),
                    "updated_at": now,
                }
            )
        alive = not entries or now - self._alive_at.get(node, 0.0) >= alive_every
        connection = self._writer_connection()
        statements = self._writes
        assert statements is not None
        alive_rows = [{"node": node, "last_alive": now}] if alive else []
        one = statements.rows_upsert
        alone = 0 < len(rows) <= ROWS_PER_STATEMENT and not (forgotten or alive_rows)
        try:
            cursor = one.cursor(connection) if one is not None and alone else connection.cursor()
            try:
                if one is not None and alone:
                    # Autocommit: the statement is its own transaction, committed once it
                    # returns (see RowsUpsert).
                    cursor.execute(one.sql(len(rows)), one.params(rows))
                    return
                if one is not None:  # autocommit: the transaction is begun here
                    cursor.execute("BEGIN")
                self._run_batch(cursor, statements, rows, forgotten, alive_rows)
            finally:
                cursor.close()
            connection.commit()
        except BaseException:
            self._drop_writer()
            raise
        if alive:
            self._alive_at[node] = now

    @staticmethod
    def _run_batch(
        cursor: Any,
        statements: Writes,
        rows: list[dict[str, Any]],
        forgotten: list[dict[str, Any]],
        alive: list[dict[str, Any]],
    ) -> None:
        """A batch's statements, in the transaction the caller commits."""
        if rows and statements.upsert is not None:
            run(cursor, statements.upsert, rows)
        elif rows:  # any other dialect: the portable way, in the same transaction
            run(cursor, statements.delete, rows)
            run(cursor, statements.insert, rows)
        if forgotten:
            run(cursor, statements.delete, forgotten)
        if alive:
            run(cursor, statements.alive, alive)

    def _writer_connection(self) -> Any:
        """The DBAPI connection commits go through (checked out of the engine's pool once,
        kept until :meth:`close` or a failure), and the statements compiled for its dialect."""
        if self._writer is None:
            writer = self.engine.raw_connection()
            if self._writes is None:  # the dialect knows its server once connected
                self._writes = writes(self.engine.dialect)
            if self._writes.rows_upsert is not None:
                # The driver's autocommit mode (given back as it was: see _drop_writer).
                self._restore = self._writes.rows_upsert.autocommit(writer.driver_connection)
            self._writer = writer
        return self._writer

    def _drop_writer(self) -> None:
        """Give the commits' connection back, its transaction rolled back (a connection that
        fails to roll back is discarded by the pool), out of autocommit mode, as the pool lent
        it: one still in autocommit mode would commit each statement of whatever borrows it
        next, so it is discarded if it cannot be rolled back and taken out of that mode."""
        writer, self._writer = self._writer, None
        restore, self._restore = self._restore, None
        if writer is None:
            return
        if restore is not None:
            try:
                writer.driver_connection.rollback()  # a BEGIN of ours, if a statement failed
                restore()
            except Exception:  # noqa: BLE001 - any failure: the pool must not lend it again
                writer.invalidate()
                return
        writer.close()

    def _seal(self, node: str) -> RowSeal:
        """The seal of ``node``'s rows: their MAC with a signing key, else their checksum."""
        seal = self._seals.get(node)
        if seal is None:
            seal = self._seals[node] = RowSeal(node, self._signing_key)
        return seal

    @property
    def per_thread(self) -> bool:
        """Whether each thread gets a database of its own (in-memory SQLite: SQLAlchemy's
        ``SingletonThreadPool``), so the store must be read on the thread that made it."""
        return isinstance(self.engine.pool, sa.pool.SingletonThreadPool)

    @property
    def on_this_machine(self) -> bool:
        """Whether the store is a SQLite file: a commit waits for this machine's disk (and, up to
        SQLite's busy timeout, for another program holding the file's write lock), where a
        server's commit waits for the network and the server, which can stall as long as they
        do."""
        return self.engine.dialect.name == "sqlite" and not self.per_thread

    def close(self) -> None:
        self._drop_writer()
        self.engine.dispose()

    def migrate(self) -> Migration:
        """Bring the store to this code's schema and codec format, in one transaction (on
        MariaDB/MySQL a table created is committed at once: DDL is not transactional there):
        tables missing are created, the schema steps from the lowest node's schema version are
        applied, and every row of an earlier format is decoded and written in
        :data:`~thespian_dd.codec.FORMAT_VERSION` with a new checksum (or MAC).  A row that does
        not pass its checks (or does not decode) is left as it is, and reported.  Running it
        again changes nothing.  Rows are locked as they are read, and a row that a running node
        rewrote meanwhile is not overwritten; stopping the nodes first is still the simple way.
        Raises :class:`StoreError` for a store of a newer schema than this code knows."""
        try:
            with self.engine.begin() as conn:
                store_metadata.create_all(conn)
                found = conn.execute(
                    sa.select(nodes_table.c.node, nodes_table.c.schema_version).with_for_update()
                ).all()
                for _, version in found:
                    check_schema(version)
                lowest = min((v for _, v in found), default=SCHEMA_VERSION)
                for version in range(lowest, SCHEMA_VERSION):
                    SCHEMA_STEPS[version](conn)
                if lowest < SCHEMA_VERSION:
                    conn.execute(nodes_table.update().values(schema_version=SCHEMA_VERSION))
                upgraded, left = self._upgrade_rows(conn)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"cannot migrate {safe_url(self._setting)}: {first_line(e)}") from e
        return Migration(lowest, len(found), upgraded, left)

    def _upgrade_rows(self, conn: sa.Connection) -> tuple[int, list[tuple[str, str, str]]]:
        """Write every row of an earlier format in this one; returns how many, and the rows
        left as they are: (node, key, why)."""
        query = (
            sa.select(entries_table.c.node, *LOAD_COLUMNS)
            .where(entries_table.c.format_version != codec.FORMAT_VERSION)
            .with_for_update()
        )
        upgraded, left = 0, []
        seals: dict[str, RowSeal] = {}
        for row in conn.execute(query).all():
            node, stored_key_id, key, data_type, _, payload, replicas, check = row
            problem = checked(row, seals, self._signing_key)
            new_payload = b""
            if problem is None and data_type != DELETED:
                try:
                    markers, raw = split_envelope(bytes(payload), Limits(max_bytes=1 << 40))
                    value = codec.decode(raw, Limits(max_bytes=1 << 40))
                    new_payload = join_envelope(codec.encode(value), markers)
                except Exception as e:  # noqa: BLE001 - a row that does not decode stays
                    problem = f"it does not decode: {first_line(e)}"
            if problem is not None:
                left.append((str(node), str(key), problem))
                continue
            conn.execute(
                entries_table.update()
                .where(
                    entries_table.c.node == node,
                    entries_table.c.key_id == stored_key_id,
                    entries_table.c.checksum == check,  # not rewritten meanwhile by a running node
                )
                .values(
                    format_version=codec.FORMAT_VERSION,
                    payload=new_payload,
                    checksum=seals[node](
                        key, data_type, codec.FORMAT_VERSION, new_payload, replicas
                    ),
                )
            )
            upgraded += 1
        return upgraded, left


class Migration(NamedTuple):
    """What :meth:`Store.migrate` did."""

    schema_from: int
    """The lowest schema version a node of the store had (now all have SCHEMA_VERSION)."""
    nodes: int
    rows_upgraded: int
    """Rows written anew in this code's codec format."""
    rows_left: list[tuple[str, str, str]]
    """Rows left as they were, as (node, key, why): they fail their checks or their decode
    (a node refuses them at load too)."""
