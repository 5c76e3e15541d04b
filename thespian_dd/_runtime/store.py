"""The SQL store of durable keys: its schema, its rows, and the checksum or MAC sealing each.

One row per ``(node, key)`` holds the key's codec bytes (or an empty payload for a deleted key),
its data type, the codec's format version, the replicas the value holds state from, a checksum
(an HMAC-SHA256 when the store has a signing key) and the time of the write.  A second table
holds each node's incarnation counter and the schema version.  SQLAlchemy Core, so any database
it speaks works; SQLite (one file per node) is the embedded default, PostgreSQL and
MariaDB/MySQL get a native upsert.

A :class:`Store` lives in the DurableWriter's process (:mod:`thespian_dd._runtime.writer`), and
in the ``inspect`` command's.

Upgrades: a row of an earlier codec format is read (the codec reads every format it ever wrote)
and written in the current one when its key is next written; :meth:`Store.migrate` (the
``migrate`` command) upgrades every row and the schema at once.  :data:`store_metadata` is the
tables' SQLAlchemy MetaData, for a user's own migrations (alembic) to include or leave out.
"""

from __future__ import annotations

import hmac
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import sqlalchemy as sa
from sqlalchemy.dialects import mysql, postgresql, sqlite

from thespian_dd import codec
from thespian_dd._canonical import Limits
from thespian_dd._runtime.checks import describe
from thespian_dd._runtime.markers import format_version, join_envelope, split_envelope
from thespian_dd._runtime.rows import (
    BAD_CHECKSUM,
    BAD_MAC,
    CHECKSUM_BYTES,
    DELETED,
    FORGOTTEN,
    MAC_BYTES,
    NOT_SIGNED,
    SIGNED,
    Entry,
    RowSeal,
    StoredRow,
    checksum,
    key_id,
    mac,
    parts,
)

__all__ = [
    "DELETED",
    "FORGOTTEN",
    "SCHEMA_VERSION",
    "STORE_FILE_PREFIX",
    "Entry",
    "Migration",
    "Store",
    "StoreError",
    "StoredRow",
    "read_signing_key",
    "safe_url",
    "store_metadata",
    "store_url",
]

SCHEMA_VERSION = 1

STORE_FILE_PREFIX = "file:"
"""A store setting ``file:PATH`` names a file holding the URL (see :func:`store_url`)."""

LOAD_CHUNK_ROWS = 2000
"""Rows per :class:`~thespian_dd._runtime.writer.LoadChunk` (and per fetch of
:meth:`Store.rows`): the Replicator keeps one chunk while the next is read."""

store_metadata = sa.MetaData()
"""The two tables of a store (``thespian_dd_entries``, ``thespian_dd_nodes``), public as
``thespian_dd.store_metadata``: an alembic ``env.py`` that manages its own tables in the same
database can leave these out (``include_name``/``include_object``) or include them; their schema
changes only with :data:`SCHEMA_VERSION`, through ``thespian-dd migrate``."""
_entries = sa.Table(
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
_nodes = sa.Table(
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
_LOAD_COLUMNS = (
    _entries.c.key_id,
    _entries.c.key,
    _entries.c.data_type,
    _entries.c.format_version,
    _entries.c.payload,
    _entries.c.replicas,
    _entries.c.checksum,
)
"""The columns a row of a known node is checked by, in the order :meth:`Store._problem` takes
them (its node is the one selected, and is checked as such)."""
_UPDATED = ("key", "data_type", "format_version", "payload", "replicas", "checksum", "updated_at")


class StoreError(RuntimeError):
    """The store cannot be opened, read or written; the message names the cause."""


def read_signing_key(path: str) -> bytes:
    """The signing key held in the file ``path`` (its whole content, which must not be empty).
    Errors name the file, never its content."""
    try:
        key = Path(path).read_bytes()
    except OSError as e:
        reason = e.strerror or type(e).__name__
        raise StoreError(f"cannot read the signing key file {path}: {reason}") from None
    if not key:
        raise StoreError(f"the signing key file {path} is empty")
    return key


def store_url(store: str) -> str:
    """The SQLAlchemy URL a ``store`` setting names: the setting itself, or for
    ``file:PATH`` the first line of the file PATH.  The file is read here, in the process that
    opens the store, so a password in it never travels in capabilities or messages.  Errors name
    the file, never its content."""
    if not store.startswith(STORE_FILE_PREFIX):
        return store
    path = store[len(STORE_FILE_PREFIX) :]
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or type(e).__name__
        raise StoreError(f"cannot read the store URL file {path}: {reason}") from None
    url = lines[0].strip() if lines else ""
    if not url:
        raise StoreError(f"the store URL file {path} is empty")
    return url


def safe_url(url: str) -> str:
    """``url`` without its password, for messages and logs (``file:PATH`` as it is)."""
    if url.startswith(STORE_FILE_PREFIX):
        return url
    try:
        return sa.make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL at all: say so without echoing it
        return "<not an SQLAlchemy URL>"


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
        """Open the store at ``url`` (or named by ``file:PATH``, see :func:`store_url`), creating
        its tables if missing; with ``create=False`` a store without them is an error, and
        nothing is created.  ``read_only`` (implies ``create=False``): an SQLite file is opened
        read-only and neither it nor a file beside it is created or changed.

        With a ``signing_key``, every row written is signed (HMAC-SHA256), and a row is loaded
        only if its MAC verifies: rows written without the key, or with another, are refused.
        Without one, rows carry a checksum, and signed rows are refused (they cannot be
        verified)."""
        if signing_key is not None and (not isinstance(signing_key, bytes) or not signing_key):
            raise StoreError("the signing key must be non-empty bytes")
        self._signing_key = signing_key
        # Built once: constructing it took about 45% of a one-row commit's Python time.
        self._upsert_statement: sa.Executable | None = None
        self._alive_at: dict[str, float] = {}  # node -> when its last_alive was last written
        self._setting = url
        url = store_url(url)
        create = create and not read_only
        file = _sqlite_file(url)
        problem = None
        if not create and file is not None and not file.is_file():
            problem = f"no such file: {file}"  # before connecting, which would create it
        try:
            if problem is None:
                self.engine = (
                    _read_only_engine(url)
                    if read_only
                    else sa.create_engine(url, connect_args=_connect_args(url))
                )
                if self.engine.dialect.name == "sqlite" and not read_only:
                    sa.event.listen(self.engine, "connect", _sqlite_pragmas)
                if create:
                    store_metadata.create_all(self.engine)
                elif not sa.inspect(self.engine).has_table(_entries.name):
                    problem = "it has no thespian_dd tables"
        except Exception as e:
            raise StoreError(f"cannot open the store {safe_url(url)}: {_first_line(e)}") from e
        if problem:
            raise StoreError(f"cannot open the store {safe_url(url)}: {problem}")

    def node_record(self, node: str, max_offline: float | None = None) -> NodeRecord | None:
        """``node``'s record (None: the store has none), read only, after the checks a start
        must pass (see :meth:`next_incarnation`): a node refused is refused before any of its
        rows is read."""
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(_nodes.c.incarnation, _nodes.c.schema_version, _nodes.c.last_alive).where(
                    _nodes.c.node == node
                )
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
                sa.select(_nodes.c.incarnation, _nodes.c.schema_version, _nodes.c.last_alive)
                .where(_nodes.c.node == node)
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
                    _nodes.insert().values(
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
                _nodes.update()
                .where(_nodes.c.node == node)
                .values(incarnation=incarnation, last_alive=now)
            )
            return incarnation

    def _check_start(
        self, node: str, version: int, last_alive: float | None, max_offline: float | None
    ) -> None:
        self._check_schema(version)
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

    @staticmethod
    def _check_schema(version: int) -> None:
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"the store has schema version {version}; this thespian_dd understands up to "
                f"{SCHEMA_VERSION}: upgrade thespian_dd"
            )

    def load(self, node: str) -> Iterator[tuple[str, bytes | None, str | None]]:
        """Every row of ``node``: (key, payload or None if deleted, error or None); the rows a
        node recovers from, each checked (its checksum or MAC, key id and format version) in one
        pass.  The node is not selected but fed to the check as the one asked for: a row whose
        node column differs (a tampered row, or a collation that compares loosely) fails its
        check.  Unordered: a load needs no order, and sorting costs the server."""
        seal = RowSeal(node, self._signing_key)
        formats, compare = codec.FORMAT_VERSIONS, hmac.compare_digest
        query = sa.select(*_LOAD_COLUMNS).where(_entries.c.node == node)
        for row in self._stream(query):
            stored_key_id, key, data_type, version, payload, replicas, check = row
            try:  # the good row's check, at its cheapest; any doubt is settled by _problem
                good = (
                    type(version) is int
                    and version in formats
                    and compare(seal(key, data_type, version, payload, replicas), check)
                    and stored_key_id == key_id(key)
                )
            except Exception:  # noqa: BLE001 - a column of a wrong type: _problem says which
                good = False
            if not good:
                try:
                    error = self._problem(seal, *row)
                except Exception as e:  # noqa: BLE001 - a row that cannot even be checked
                    error = _UNCHECKABLE + _first_line(e)
                if error is not None:
                    yield (key if isinstance(key, str) else repr(key)), None, error
                    continue
            if data_type == DELETED:
                yield key, None, None
            else:
                yield key, payload if type(payload) is bytes else bytes(payload), None

    def rows(self, node: str | None = None, key: str | None = None) -> Iterator[StoredRow]:
        """The stored rows (of ``node``, of ``key``), each checked; streamed, not all at once."""
        query = sa.select(_entries.c.node, *_LOAD_COLUMNS, _entries.c.updated_at)
        query = query.order_by(_entries.c.node, _entries.c.key_id)
        if node is not None:
            query = query.where(_entries.c.node == node)
        if key is not None:
            query = query.where(_entries.c.key_id == key_id(key))
        seals: dict[str, RowSeal] = {}
        for row in self._stream(query):
            yield _stored_row(row, self._checked(row, seals))

    def _checked(self, row: tuple[Any, ...], seals: dict[str, RowSeal]) -> str | None:
        """Why ``row`` (its node, then :data:`_LOAD_COLUMNS`) must not be loaded, or None;
        ``seals``: the RowSeal of each node met so far."""
        node = row[0]
        if not isinstance(node, str):
            return _WRONG_TYPE
        seal = seals.get(node)
        if seal is None:
            seal = seals[node] = RowSeal(node, self._signing_key)
        try:
            return self._problem(seal, *row[1:8])
        except Exception as e:  # noqa: BLE001 - a row that cannot even be checked
            return _UNCHECKABLE + _first_line(e)

    def _stream(self, query: sa.Select[Any]) -> Iterator[tuple[Any, ...]]:
        with self.engine.connect() as conn:
            yield from conn.execution_options(yield_per=LOAD_CHUNK_ROWS).execute(query)

    def _problem(  # noqa: PLR0913, PLR0917 - the columns of a row, as selected
        self,
        seal: RowSeal,
        stored_key_id: object,
        key: object,
        data_type: object,
        version: object,
        payload: object,
        replicas: object,
        check: object,
    ) -> str | None:
        """Why a row must not be loaded, or None: its columns' types, its checksum (or MAC, as
        ``seal`` makes them for its node), its key id and its format version."""
        if not (
            type(key) is str
            and type(data_type) is str
            and type(replicas) is str
            and type(version) is int
            and isinstance(payload, (bytes, memoryview))
            and isinstance(check, (bytes, memoryview))
        ):
            return _WRONG_TYPE
        due = seal(key, data_type, version, bytes(payload), replicas)
        if not hmac.compare_digest(due, bytes(check)):
            if self._signing_key is None:
                # It cannot be verified without the key: never load it unverified.
                return SIGNED if len(check) == MAC_BYTES else BAD_CHECKSUM
            return NOT_SIGNED if len(check) == CHECKSUM_BYTES else BAD_MAC
        if stored_key_id != key_id(key):
            return "the row's key id does not match its key (tampered or corrupted)"
        if version not in codec.FORMAT_VERSIONS:
            return f"format version {version} is not one this code reads {codec.FORMAT_VERSIONS}"
        return None

    def forget(self, node: str) -> int:
        """Remove every row of ``node`` and its node record (incarnation, last commit), in one
        transaction; returns how many rows it had.  Raises :class:`StoreError` if the store has
        no such node."""
        with self.engine.begin() as conn:
            if not conn.execute(_nodes.delete().where(_nodes.c.node == node)).rowcount:
                raise StoreError(f"the store has no node {node!r}")
            return int(conn.execute(_entries.delete().where(_entries.c.node == node)).rowcount)

    def nodes(self) -> list[tuple[str, int, int]]:
        """Every node of the store: (name, incarnation, schema version)."""
        with self.engine.connect() as conn:
            query = sa.select(_nodes.c.node, _nodes.c.incarnation, _nodes.c.schema_version)
            return [(n, int(i), int(v)) for n, i, v in conn.execute(query.order_by(_nodes.c.node))]

    def write(
        self, node: str, entries: Mapping[str, Entry | None], *, alive_every: float = 0.0
    ) -> None:
        """Upsert every entry (None: deleted) in one transaction, which also records that the
        node is alive (no entries: only that) if it was last recorded ``alive_every`` seconds
        ago or more: that record is for the offline bound of ``next_incarnation``, and its
        UPDATE cost about a third of a one-row SQLite commit."""
        now = time.time()
        rows = []
        forgotten = [key_id(key) for key, entry in entries.items() if entry == FORGOTTEN]
        for key, entry in entries.items():
            if entry == FORGOTTEN:
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
                    "checksum": self._seal(node, key, data_type, raw, replicas, version),
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
            if not entries or now - self._alive_at.get(node, 0.0) >= alive_every:
                conn.execute(_nodes.update().where(_nodes.c.node == node).values(last_alive=now))
                self._alive_at[node] = now

    def _seal(  # noqa: PLR0913, PLR0917 - the columns the seal covers
        self,
        node: str,
        key: str,
        data_type: str,
        payload: bytes,
        replicas: str,
        version: int = codec.FORMAT_VERSION,
    ) -> bytes:
        """The checksum column of a row written now: its MAC with a signing key, else its
        checksum."""
        columns = parts(node, key, data_type, version, payload, replicas)
        return checksum(columns) if self._signing_key is None else mac(self._signing_key, columns)

    def _upsert(self, conn: sa.Connection, rows: list[dict[str, Any]]) -> None:
        if self._upsert_statement is None:
            self._upsert_statement = _upsert_statement(self.engine.dialect.name)
        if self._upsert_statement is not None:
            conn.execute(self._upsert_statement, rows)
        else:  # any other dialect: the portable way, in the same transaction
            node = rows[0]["node"]
            ids = [r["key_id"] for r in rows]
            conn.execute(
                _entries.delete().where(_entries.c.node == node, _entries.c.key_id.in_(ids))
            )
            conn.execute(_entries.insert(), rows)

    def close(self) -> None:
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
                    sa.select(_nodes.c.node, _nodes.c.schema_version).with_for_update()
                ).all()
                for _, version in found:
                    self._check_schema(version)
                lowest = min((v for _, v in found), default=SCHEMA_VERSION)
                for version in range(lowest, SCHEMA_VERSION):
                    _SCHEMA_STEPS[version](conn)
                if lowest < SCHEMA_VERSION:
                    conn.execute(_nodes.update().values(schema_version=SCHEMA_VERSION))
                upgraded, left = self._upgrade_rows(conn)
        except StoreError:
            raise
        except Exception as e:
            raise StoreError(f"cannot migrate {safe_url(self._setting)}: {_first_line(e)}") from e
        return Migration(lowest, len(found), upgraded, left)

    def _upgrade_rows(self, conn: sa.Connection) -> tuple[int, list[tuple[str, str, str]]]:
        """Write every row of an earlier format in this one; returns how many, and the rows
        left as they are: (node, key, why)."""
        query = (
            sa.select(_entries.c.node, *_LOAD_COLUMNS)
            .where(_entries.c.format_version != codec.FORMAT_VERSION)
            .with_for_update()
        )
        upgraded, left = 0, []
        seals: dict[str, RowSeal] = {}
        for row in conn.execute(query).all():
            node, stored_key_id, key, data_type, _, payload, replicas, check = row
            problem = self._checked(row, seals)
            new_payload = b""
            if problem is None and data_type != DELETED:
                try:
                    markers, raw = split_envelope(bytes(payload), Limits(max_bytes=1 << 40))
                    value = codec.decode(raw, Limits(max_bytes=1 << 40))
                    new_payload = join_envelope(codec.encode(value), markers)
                except Exception as e:  # noqa: BLE001 - a row that does not decode stays
                    problem = f"it does not decode: {_first_line(e)}"
            if problem is not None:
                left.append((str(node), str(key), problem))
                continue
            conn.execute(
                _entries.update()
                .where(
                    _entries.c.node == node,
                    _entries.c.key_id == stored_key_id,
                    _entries.c.checksum == check,  # not rewritten meanwhile by a running node
                )
                .values(
                    format_version=codec.FORMAT_VERSION,
                    payload=new_payload,
                    checksum=self._seal(node, key, data_type, new_payload, replicas),
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


_SCHEMA_STEPS: dict[int, Callable[[sa.Connection], None]] = {}
"""The schema changes from version N to N + 1, by N, each run inside the migration's
transaction.  Schema version 1 is the first: there is none yet.  A later release that changes
the schema adds its step here, raises SCHEMA_VERSION, and keeps the store readable by the
release before it until migrate has run (see the operations guide, upgrading)."""


def _upsert_statement(dialect: str) -> sa.Executable | None:
    """The dialect's insert-or-update of entry rows, or None where there is none."""
    if dialect in ("sqlite", "postgresql"):
        insert = (sqlite.insert if dialect == "sqlite" else postgresql.insert)(_entries)
        return insert.on_conflict_do_update(
            index_elements=[_entries.c.node, _entries.c.key_id],
            set_={name: insert.excluded[name] for name in _UPDATED},
        )
    if dialect in ("mysql", "mariadb"):
        mysql_insert = mysql.insert(_entries)
        return mysql_insert.on_duplicate_key_update(
            {name: mysql_insert.inserted[name] for name in _UPDATED}
        )
    return None


_UNCHECKABLE = "the row cannot be checked (tampered or corrupted): "
_WRONG_TYPE = "a column of the row has the wrong type (tampered or corrupted)"

CONNECT_TIMEOUT = 5
"""Seconds a server store may take to accept a connection (unless its URL sets
``connect_timeout``): one commit attempt against a host that does not answer fails in bounded
time, as one against a locked SQLite file fails after its ``busy_timeout`` of 5 s."""


IO_TIMEOUT = 30
"""MariaDB/MySQL only (PyMySQL waits forever otherwise): seconds a read or write on an open
connection may stall, the server's greeting included, unless the URL sets ``read_timeout`` /
``write_timeout``."""


def _connect_args(url: str) -> dict[str, Any]:
    parsed = sa.make_url(url)
    timeouts: dict[str, int] = {}
    if parsed.get_backend_name() in ("postgresql", "mysql", "mariadb"):
        timeouts["connect_timeout"] = CONNECT_TIMEOUT
    if parsed.get_backend_name() in ("mysql", "mariadb"):
        timeouts |= {"read_timeout": IO_TIMEOUT, "write_timeout": IO_TIMEOUT}
    return {name: value for name, value in timeouts.items() if name not in parsed.query}


def backup(url: str, path: Path) -> tuple[int, int]:
    """Copy the store at ``url`` (or ``file:PATH``) into a new SQLite file at ``path``, which
    is then a store of its own (``inspect`` reads it, :func:`restore` copies it back, a node may
    use it as it is); returns (nodes, rows) copied.  A consistent snapshot, taken while nodes
    run: an SQLite store through SQLite's online backup (a plain copy of a WAL database may
    miss committed pages or tear), a server in one REPEATABLE READ transaction.  The rows keep
    their checksums or MACs.  Reads only; refuses an existing ``path``."""
    if path.exists():
        raise StoreError(f"{path} exists: a backup goes into a new file")
    source = Store(url, read_only=True)
    try:
        if source.engine.dialect.name == "sqlite":
            raw = source.engine.raw_connection()
            try:
                reader = raw.driver_connection
                assert isinstance(reader, sqlite3.Connection)
                with sqlite3.connect(path) as target:
                    reader.backup(target)
                target.close()
            finally:
                raw.close()
        else:
            copy = Store(f"sqlite:///{path}")
            try:
                _copy(source, copy, snapshot=True)
            finally:
                copy.close()
    except StoreError:
        raise
    except Exception as e:
        raise StoreError(f"cannot back up {safe_url(url)}: {_first_line(e)}") from e
    finally:
        source.close()
    return _counts(f"sqlite:///{path}")


def restore(path: Path, url: str) -> tuple[int, int]:
    """Copy the backup at ``path`` (see :func:`backup`) into the store at ``url``, creating its
    tables if needed, in one transaction; returns (nodes, rows).  The store must hold no node
    and no row: restore into a new database, or :meth:`Store.forget` its nodes first (their
    processes stopped)."""
    source = Store(f"sqlite:///{path.absolute()}", read_only=True)
    try:
        target = Store(url)
        try:
            _copy(source, target, snapshot=False)
        finally:
            target.close()
    finally:
        source.close()
    return _counts(url)


def _copy(source: Store, target: Store, *, snapshot: bool) -> None:
    """Every node record and row of ``source`` into ``target`` (empty), in one transaction of
    each; ``snapshot``: read in one REPEATABLE READ transaction (a server store)."""
    reading = source.engine.connect()
    if snapshot:
        reading = reading.execution_options(isolation_level="REPEATABLE READ")
    with reading, reading.begin(), target.engine.begin() as writing:
        held = writing.execute(sa.select(sa.func.count()).select_from(_nodes)).scalar_one()
        held += writing.execute(sa.select(sa.func.count()).select_from(_entries)).scalar_one()
        if held:
            raise StoreError(
                f"the store {safe_url(target._setting)} is not empty: restore into a new "
                "database, or forget its nodes first (forget-node, with the nodes stopped)"
            )
        nodes = [dict(row._mapping) for row in reading.execute(sa.select(_nodes))]
        if nodes:
            writing.execute(_nodes.insert(), nodes)
        rows = reading.execution_options(yield_per=LOAD_CHUNK_ROWS).execute(sa.select(_entries))
        for chunk in rows.partitions():
            writing.execute(_entries.insert(), [dict(row._mapping) for row in chunk])


def _counts(url: str) -> tuple[int, int]:
    store = Store(url, read_only=True)
    try:
        with store.engine.connect() as conn:
            nodes = conn.execute(sa.select(sa.func.count()).select_from(_nodes)).scalar_one()
            rows = conn.execute(sa.select(sa.func.count()).select_from(_entries)).scalar_one()
        return int(nodes), int(rows)
    finally:
        store.close()


def _sqlite_file(url: str) -> Path | None:
    """The file of an SQLite ``url``, or None (another store, in memory, or not a URL)."""
    try:
        parsed = sa.make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: create_engine says why
        return None
    path = parsed.database
    if parsed.get_backend_name() != "sqlite" or path in (None, "", ":memory:"):
        return None
    return Path(str(path)).absolute()


def _read_only_engine(url: str) -> sa.Engine:
    """An engine that only reads: an SQLite file opened read-only (any other store as usual).

    ``mode=ro`` alone still creates the ``-wal`` and ``-shm`` files beside a WAL database that
    has none (a stopped node's): such a file is opened ``immutable`` (no locks, no files) instead;
    while a node runs its ``-wal`` exists, and ``mode=ro`` reads it."""
    file = _sqlite_file(url)
    if file is None:
        return sa.create_engine(url)
    mode = "mode=ro" + ("" if Path(f"{file}-wal").exists() else "&immutable=1")
    uri = f"{file.as_uri()}?{mode}"
    return sa.create_engine("sqlite://", creator=lambda: sqlite3.connect(uri, uri=True))


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL: readers do not block the writer, and a commit is one append.  synchronous=FULL keeps a
    # committed transaction across a power cut, not only across a killed process.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _stored_row(row: tuple[Any, ...], error: str | None) -> StoredRow:
    """``row`` (its columns as selected by :meth:`Store.rows`) as a :class:`StoredRow`; a
    refused row's columns may be of any type (tampered): they are made printable."""
    node, _, key, data_type, version, payload, replicas, _, updated_at = row
    texts: list[Any] = [node, key, data_type, replicas]
    if error is not None:
        texts = [v if isinstance(v, str) else repr(v) for v in texts]
    node, key, data_type, replicas = texts
    payload = bytes(payload) if isinstance(payload, (bytes, memoryview)) else b""
    return StoredRow(node, key, data_type, version, payload, replicas, updated_at, error)


def _first_line(error: BaseException) -> str:
    """An exception as one line (a database driver's message goes on for several)."""
    return describe(error).splitlines()[0]
