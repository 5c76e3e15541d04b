"""The SQL store (:mod:`thespian_dd._runtime.store`) on its own, without a node: rows and
tombstones round trip on every store, incarnations grow, a newer schema, a node offline too long
and a store that is not there are refused, and forgotten keys leave no row.  Mutated and wrongly
signed rows: ``tests/test_fuzz_rows.py``; the database's URL and engine: ``test_database.py``;
the rows' seal: ``test_rows.py``; backup and restore: ``test_backup.py``."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
from conftest import server_database

from thespian_dd import GCounter, ReplicaId
from thespian_dd._runtime.database import StoreError
from thespian_dd._runtime.driver import ROWS_PER_STATEMENT
from thespian_dd._runtime.rows import (
    BAD_CHECKSUM,
    DELETED,
    FORGOTTEN,
    SIGNED,
    Entry,
    RowSeal,
    key_id,
)
from thespian_dd._runtime.schema import store_metadata
from thespian_dd._runtime.store import LOAD_CHUNK_ROWS, Store
from thespian_dd.codec import FORMAT_VERSION, encode

pytestmark = pytest.mark.timeout(180)


def test_the_store_round_trips_rows_and_tombstones_on_every_store(store_url: str) -> None:
    store = Store(store_url.format(name="r"))
    try:
        counter = GCounter().increment(ReplicaId("n", 1), 4)
        key = "ключ/🔑 " + "k" * 2000  # longer than any index allows, and not ASCII
        store.write("n", {key: Entry("GCounter", encode(counter), "n#1"), "gone": None})
        store.write("other", {key: Entry("GCounter", encode(GCounter()), "")})
        rows = {key: (payload, error) for key, payload, error in store.load("n")}
        assert rows == {key: (encode(counter), None), "gone": (None, None)}
        store.write("n", {key: None})  # an upsert: one row per (node, key)
        assert {k for k, payload, _ in store.load("n") if payload is None} == {"gone", key}
        assert [r.key for r in store.rows("other")] == [key]
        assert [r.replicas for r in store.rows("n", key)] == [""]
        assert store.next_incarnation("n", 7) == 7
        assert store.next_incarnation("n", 1) == 8
        assert [name for name, _, _ in store.nodes()] == ["n"]
    finally:
        store.close()


def _stored(store: Store, node: str) -> dict[str, tuple[object, ...]]:
    """``node``'s rows as SQLAlchemy reads them (not the write path): key -> its columns."""
    return {
        r.key: (r.data_type, r.format_version, r.payload, r.replicas, r.error)
        for r in store.rows(node)
    }


def test_commits_reuse_their_compiled_statements_and_rows_read_back_identically(
    store_url: str,
) -> None:
    """Commits go through the driver with statements compiled once per store (and one kept
    connection); what they write reads back column for column through SQLAlchemy, in this store
    and in another opened afresh: upserts, tombstones, forgotten keys, a key longer than any
    index and a payload of 300 KB."""
    url = store_url.format(name="w")
    store = Store(url)
    other = None
    try:
        store.next_incarnation("n")
        one = GCounter().increment(ReplicaId("n", 1), 1)
        two = one.increment(ReplicaId("n", 1), 1)
        long_key = "ключ/🔑 " + "k" * 3000
        big = Entry("LWWRegister", b"\x01" + bytes(range(256)) * 1200, "n#1 m#2")
        started = time.time()
        store.write("n", {"a": Entry("GCounter", encode(one), "n#1"), "b": big, "c": None})
        statements, connection = store._writes, store._writer
        assert statements is not None
        assert connection is not None
        store.write("n", {"a": Entry("GCounter", encode(two), "n#1"), "b": FORGOTTEN})
        store.write("n", {long_key: big, "c": Entry("GCounter", encode(one), "")})
        store.write("n", {})
        assert store._writes is statements
        assert store._writer is connection
        expected = {
            "a": ("GCounter", FORMAT_VERSION, encode(two), "n#1", None),
            "c": ("GCounter", FORMAT_VERSION, encode(one), "", None),
            long_key: (big.data_type, FORMAT_VERSION, big.payload, big.replicas, None),
        }
        assert _stored(store, "n") == expected
        assert all(started <= r.updated_at <= time.time() for r in store.rows("n"))
        other = Store(url, create=False)
        assert _stored(other, "n") == expected
        assert {k: p for k, p, _ in other.load("n")} == {k: v[2] for k, v in expected.items()}
        store.write("n", {"a": None})
        assert _stored(other, "n")["a"] == (DELETED, FORMAT_VERSION, b"", "", None)
    finally:
        store.close()
        if other is not None:
            other.close()


def test_a_store_without_an_upsert_replaces_rows_in_the_same_transaction(store_url: str) -> None:
    """Where a dialect has no upsert, a commit deletes each row and inserts it again: still one
    row per (node, key), the latest, and other nodes' rows untouched."""
    store = Store(store_url.format(name="p"))
    try:
        store.write("n", {"a": Entry("GCounter", encode(GCounter()), "")})
        assert store._writes is not None
        store._writes = store._writes._replace(upsert=None)  # as another dialect compiles
        counter = GCounter().increment(ReplicaId("n", 1), 3)
        store.write("n", {"a": Entry("GCounter", encode(counter), "n#1"), "b": None})
        store.write("m", {"a": Entry("GCounter", encode(GCounter()), "")})
        assert _stored(store, "n") == {
            "a": ("GCounter", FORMAT_VERSION, encode(counter), "n#1", None),
            "b": (DELETED, FORMAT_VERSION, b"", "", None),
        }
        assert list(_stored(store, "m")) == ["a"]
    finally:
        store.close()


def test_a_load_checks_every_row_of_every_chunk_on_every_store(store_url: str) -> None:
    """Each store's load path (a driver's own cursor, or SQLAlchemy's) reads every row of the
    node, in chunks of at most LOAD_CHUNK_ROWS, and refuses each damaged row with why; a load
    stopped midway leaves the store to be read and written again."""
    url = store_url.format(name="c")
    keys = [f"k{i}" for i in range(2 * LOAD_CHUNK_ROWS + 5)]
    payload = encode(GCounter().increment(ReplicaId("n", 1), 2))
    store = Store(url)
    try:
        store.write("n", {k: Entry("GCounter", payload, "n#1") for k in keys} | {"gone": None})
        store.write("other", {"k0": Entry("GCounter", payload, "")})
        damage = {
            "k1": ("payload", b"tampered", BAD_CHECKSUM),
            f"k{LOAD_CHUNK_ROWS + 3}": ("checksum", b"m" * 32, SIGNED),
            f"k{2 * LOAD_CHUNK_ROWS + 4}": (
                "key_id",
                key_id("another"),
                "the row's key id does not match its key (tampered or corrupted)",
            ),
            "k7": ("format_version", 99, "format version 99 is not one this code reads"),
        }
        with store.engine.begin() as conn:
            for key, (column, value, _) in damage.items():
                conn.execute(
                    sa.text(
                        f"UPDATE thespian_dd_entries SET {column} = :v "
                        "WHERE node = 'n' AND key_id = :id"
                    ),
                    {"v": value, "id": key_id(key)},
                )
            # A row of a format this code does not read, sealed as its writer would have.
            future = RowSeal("n", None)("k7", "GCounter", 99, payload, "n#1")
            conn.execute(
                sa.text(
                    "UPDATE thespian_dd_entries SET checksum = :c WHERE node = 'n' AND key_id = :id"
                ),
                {"c": future, "id": key_id("k7")},
            )
        chunks = list(store.load_chunks("n"))
        assert all(len(loaded) + len(refused) <= LOAD_CHUNK_ROWS for loaded, refused in chunks)
        loaded = dict(row for good, _ in chunks for row in good)
        refused = dict(row for _, bad in chunks for row in bad)
        assert loaded == {k: payload for k in keys if k not in damage} | {"gone": None}
        assert refused.keys() == damage.keys()
        for key, (_, _, why) in damage.items():
            assert refused[key].startswith(why), (key, refused[key])
        stopped = store.load_chunks("n")
        next(stopped)
        stopped.close()
        store.write("n", {"k1": Entry("GCounter", payload, "n#1")})
        assert {k: p for k, p, error in store.load("n") if error is None}["k1"] == payload
    finally:
        store.close()


def test_a_commit_that_fails_midway_leaves_none_of_its_rows_and_the_next_one_works(
    store_url: str,
) -> None:
    """A commit whose last statement fails (the node table dropped by someone else) rolls back
    the rows it had written, gives its connection up, and raises; once the table is back the
    next commit goes through on a new connection."""
    url = store_url.format(name="f")
    store = Store(url)
    engine = sa.create_engine(url)
    try:
        store.next_incarnation("n")
        old = Entry("GCounter", encode(GCounter()), "")
        new = Entry("GCounter", encode(GCounter().increment(ReplicaId("n", 1), 1)), "n#1")
        store.write("n", {"a": old})
        store_metadata.tables["thespian_dd_nodes"].drop(engine)
        with pytest.raises(Exception, match="thespian_dd_nodes"):
            store.write("n", {"a": new, "b": new})  # the upsert runs, then last_alive fails
        assert store._writer is None
        store_metadata.create_all(engine)
        assert _stored(store, "n") == {"a": ("GCounter", FORMAT_VERSION, old.payload, "", None)}
        store.write("n", {"a": new, "b": new})
        assert _stored(store, "n") == {
            "a": ("GCounter", FORMAT_VERSION, new.payload, "n#1", None),
            "b": ("GCounter", FORMAT_VERSION, new.payload, "n#1", None),
        }
    finally:
        engine.dispose()
        store.close()


def test_an_sqlite_batch_of_rows_is_one_statement_committed_as_it_returns(tmp_path: Path) -> None:
    """On SQLite a batch of rows alone (no forgotten key, no alive record due) is one upsert
    statement in autocommit mode: committed once ``write`` returns, as another connection sees,
    and all or nothing (a trigger refusing its second row leaves the first unwritten, the
    connection given up, the next batch written).  A batch of more rows than one statement
    takes, or with a forgotten key, is one transaction as before.  The pool gets its connection
    back in the transaction mode it lent it in."""
    url = f"sqlite:///{tmp_path}/one.db"
    store = Store(url)
    other = sqlite3.connect(tmp_path / "one.db")
    try:
        entry = Entry("GCounter", encode(GCounter().increment(ReplicaId("n", 1), 1)), "n#1")
        store.write("n", {"first": entry}, alive_every=3600)  # the alive record: a transaction
        lent = store._writer
        assert lent is not None
        assert lent.driver_connection.isolation_level is None  # autocommit while it commits
        store.write("n", {"a": entry, "b": None}, alive_every=3600)
        assert other.execute("SELECT count(*) FROM thespian_dd_entries").fetchone() == (3,)
        many = {f"k{i}": entry for i in range(ROWS_PER_STATEMENT + 1)}
        store.write("n", {**many, "b": FORGOTTEN}, alive_every=3600)
        store.write("n", many, alive_every=3600)
        assert set(_stored(store, "n")) == {"first", "a", *many}
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON thespian_dd_entries WHEN NEW.key = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )
        other.commit()
        with pytest.raises(sqlite3.IntegrityError, match="refused by the test"):
            store.write("n", {"new": entry, "bad": entry}, alive_every=3600)
        assert store._writer is None
        assert "new" not in _stored(store, "n")
        with store.engine.connect() as conn:  # the pool's connection, as the write left it
            driver = conn.connection.driver_connection
            assert driver is not None
            assert driver.isolation_level == ""
        store.write("n", {"new": entry}, alive_every=3600)
        assert "new" in _stored(store, "n")
    finally:
        other.close()
        store.close()


def test_a_postgresql_batch_of_rows_is_one_statement_committed_as_it_returns(
    tmp_path: Path,
) -> None:
    """On PostgreSQL (psycopg) too a batch of rows alone is one upsert statement in autocommit
    mode, with PostgreSQL's own placeholders (no BEGIN, no COMMIT: libpq's trace of what the
    connection sends): committed once ``write`` returns, as another connection sees, and all or
    nothing (a trigger refusing its second row leaves the first unwritten, the connection given
    up, the next batch written); so is a batch that is a transaction (a forgotten key).  The
    pool gets the connection back out of autocommit mode and out of any transaction, where a
    transaction of whoever borrows it next is one; one the server dropped is discarded."""
    with server_database("postgresql") as url:
        import psycopg  # the driver of the PostgreSQL tests only

        store = Store(url)
        other = sa.create_engine(url)
        try:
            entry = Entry("GCounter", encode(GCounter().increment(ReplicaId("n", 1), 1)), "n#1")
            store.write("n", {"first": entry}, alive_every=3600)  # the alive record: a transaction
            lent = store._writer
            assert lent is not None
            driver = lent.driver_connection
            assert driver.autocommit  # while it commits
            trace = tmp_path / "libpq.trace"
            with trace.open("w") as f:
                driver.pgconn.trace(f.fileno())
                store.write("n", {"a": entry, "b": None}, alive_every=3600)
                driver.pgconn.untrace()
            sent = [line for line in trace.read_text().splitlines() if "\tF\t" in line]
            assert any("INSERT INTO thespian_dd_entries" in line for line in sent), sent
            assert not any("BEGIN" in line or "COMMIT" in line for line in sent), sent
            with other.connect() as conn:
                count = conn.exec_driver_sql("SELECT count(*) FROM thespian_dd_entries").scalar()
                assert count == 3
                conn.exec_driver_sql(
                    "CREATE FUNCTION refuse() RETURNS trigger AS $$ BEGIN "
                    "IF NEW.key = 'bad' THEN RAISE EXCEPTION 'refused by the test'; END IF; "
                    "RETURN NEW; END $$ LANGUAGE plpgsql"
                )
                conn.exec_driver_sql(
                    "CREATE TRIGGER refuse BEFORE INSERT ON thespian_dd_entries "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
                conn.commit()
            refused = {"new": entry, "bad": entry}
            for batch in (refused, {**refused, "a": FORGOTTEN}):  # one statement; a transaction
                store.write("n", {}, alive_every=3600)  # takes the commits' connection
                assert store._writer is not None
                driver = store._writer.driver_connection
                with pytest.raises(psycopg.errors.RaiseException, match="refused by the test"):
                    store.write("n", batch, alive_every=3600)
                assert store._writer is None
                assert not driver.closed  # given back to the pool, as the pool lent it
                assert not driver.autocommit
                assert driver.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
                assert set(_stored(store, "n")) == {"first", "a", "b"}
            store.write("n", {"new": entry}, alive_every=3600)
            assert set(_stored(store, "n")) == {"first", "a", "b", "new"}
            # The server drops the commits' connection (a restart): that batch fails, the
            # connection, which can no longer roll back, is discarded, and the next one commits.
            assert store._writer is not None
            dropped = store._writer.driver_connection
            with other.connect() as conn:
                conn.exec_driver_sql(f"SELECT pg_terminate_backend({dropped.info.backend_pid})")
            with pytest.raises(psycopg.OperationalError):
                store.write("n", {"lost": entry}, alive_every=3600)
            assert store._writer is None
            assert dropped.closed
            store.write("n", {"after": entry}, alive_every=3600)
            assert set(_stored(store, "n")) == {"first", "a", "b", "new", "after"}
        finally:
            other.dispose()
            store.close()


def test_the_incarnation_is_persisted_and_grows(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/i.db")
    first = store.next_incarnation("n", 100)
    second = store.next_incarnation("n", 1)
    assert first == 100
    assert second == 101
    store.close()


def test_a_newer_schema_than_the_code_knows_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    Store(url).next_incarnation("n")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE thespian_dd_nodes SET schema_version = 99"))
    engine.dispose()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(url).next_incarnation("n")


def test_a_forgotten_key_loses_its_row_and_leaves_no_tombstone(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/f.db")
    try:
        entry = Entry("GCounter", encode(GCounter()), "")
        store.write("n", {"kept": entry, "expired": entry, "deleted": None})
        store.write("n", {"expired": FORGOTTEN, "deleted": FORGOTTEN, "never": FORGOTTEN})
        assert [(key, payload) for key, payload, _ in store.load("n")] == [("kept", entry.payload)]
    finally:
        store.close()


def test_a_node_offline_longer_than_allowed_is_refused_and_its_start_not_counted(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    store = Store(url)
    try:
        assert store.next_incarnation("n", 5, max_offline=60.0) == 5  # new: nothing to age
        engine = sa.create_engine(url)
        with engine.begin() as conn:  # its last commit three days ago
            conn.execute(sa.text("UPDATE thespian_dd_nodes SET last_alive = last_alive - 259200"))
        engine.dispose()
        refused = r"node n last committed 3\.0 days ago, longer than .* \(1\.0 days\)"
        with pytest.raises(StoreError, match=refused):
            store.next_incarnation("n", 1, max_offline=86400.0)
        assert store.next_incarnation("n", 1, max_offline=4 * 86400.0) == 6
        assert store.next_incarnation("n", 1, max_offline=60.0) == 7  # that start was a commit
    finally:
        store.close()


def test_a_start_is_not_counted_if_the_node_was_forgotten_or_started_while_its_rows_were_read(
    tmp_path: Path,
) -> None:
    """Regression: a node refused as offline too long, retrying its load, read its rows; the
    operator ran forget-node as the refusal said; the start then found no record, counted a
    new one without the offline check, and served the rows read before the forget (replicas
    its peers may have pruned; gone from the store at the next restart).  Now the start counts
    only if the record is as the load found it before reading."""
    store = Store(f"sqlite:///{tmp_path}/f.db")
    try:
        store.write("n", {"k": Entry("GCounter", encode(GCounter()), "")})
        store.next_incarnation("n", 5)
        record = store.node_record("n", max_offline=60.0)
        assert record is not None
        assert record.incarnation == 5
        store.forget("n")  # while the rows were read
        with pytest.raises(StoreError, match="record changed while its rows were read"):
            store.next_incarnation("n", 1, max_offline=60.0, expected=record)
        assert store.node_record("n") is None  # nothing counted
        store.next_incarnation("n", 9)  # another process started it meanwhile
        with pytest.raises(StoreError, match="record changed"):
            store.next_incarnation("n", 1, expected=None)
        assert store.next_incarnation("n", 1, expected=store.node_record("n")) == 10
    finally:
        store.close()


def test_a_node_offline_too_long_is_refused_before_its_rows_are_read(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/o.db"
    store = Store(url)
    try:
        store.next_incarnation("n", 5)
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE thespian_dd_nodes SET last_alive = last_alive - 7200"))
        engine.dispose()
        with pytest.raises(StoreError, match="stop it and run: python -m thespian_dd forget-node"):
            store.node_record("n", max_offline=3600.0)
        assert store.node_record("n", max_offline=86400.0) is not None
        assert store.node_record("other", max_offline=1.0) is None
    finally:
        store.close()


def test_a_commit_records_the_node_alive_once_per_interval_and_an_empty_one_always(
    tmp_path: Path,
) -> None:
    """The node's last_alive (the offline bound's clock) is written by a commit when the last
    record is ``alive_every`` seconds old or more, and always by an empty one (the keep-alive
    an idle node sends)."""
    url = f"sqlite:///{tmp_path}/a.db"
    store = Store(url)
    engine = sa.create_engine(url)

    def last_alive() -> float:
        with engine.connect() as conn:
            query = sa.text("SELECT last_alive FROM thespian_dd_nodes WHERE node = 'n'")
            value: float = conn.execute(query).scalar_one()
            return value

    def age_record() -> None:
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE thespian_dd_nodes SET last_alive = 0"))

    try:
        store.next_incarnation("n")
        entry = Entry("GCounter", encode(GCounter()), "")
        age_record()
        store.write("n", {"k": entry}, alive_every=3600.0)  # the first commit of this store
        first = last_alive()
        assert first > 0
        age_record()
        store.write("n", {"k": entry}, alive_every=3600.0)  # recorded less than an hour ago
        assert last_alive() == 0
        store.write("n", {}, alive_every=3600.0)  # the keep-alive
        assert last_alive() >= first
        age_record()
        store.write("n", {"k": entry})  # every commit records it by default
        assert last_alive() >= first
    finally:
        engine.dispose()
        store.close()


def test_reading_only_creates_neither_a_store_nor_its_tables(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreError, match=r"cannot open the store .*: no such file"):
        Store(f"sqlite:///{missing}", create=False)
    assert not missing.exists()
    other = tmp_path / "other.db"
    with contextlib.closing(sqlite3.connect(other)) as conn:
        conn.execute("CREATE TABLE unrelated (x INTEGER)")
    with pytest.raises(StoreError, match="it has no thespian_dd tables"):
        Store(f"sqlite:///{other}", create=False)
    with contextlib.closing(sqlite3.connect(other)) as conn:
        tables = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
    assert tables == [("unrelated",)]
