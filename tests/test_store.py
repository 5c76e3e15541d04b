"""The SQL store (:mod:`thespian_dd._runtime.store`) on its own, without a node: rows and
tombstones round trip on every store, incarnations grow, a newer schema, a node offline too long
and a store that is not there are refused, forgotten keys leave no row, and neither a signing key
nor a password leaks into an error.  Mutated and wrongly signed rows: ``tests/test_fuzz.py``."""

from __future__ import annotations

import contextlib
import socket
import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import server_database
from hypothesis import given
from hypothesis import strategies as st

from thespian_dd import GCounter, ReplicaId
from thespian_dd._runtime.rows import RowSeal, checksum, mac, parts
from thespian_dd._runtime.store import (
    FORGOTTEN,
    Entry,
    Store,
    StoreError,
    backup,
    read_signing_key,
    restore,
    safe_url,
    store_url,
)
from thespian_dd.codec import encode

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


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
ROWS = st.lists(
    st.tuples(
        TEXT,
        st.sampled_from(["GCounter", "ORSet", "deleted"]),
        st.integers(0, 300),
        st.binary(max_size=40),
        st.sampled_from(["", "n#1", "n#1 m#2"]),
    ),
    min_size=1,
    max_size=8,
)


@given(node=TEXT, rows=ROWS, signing_key=st.one_of(st.none(), st.binary(min_size=1, max_size=40)))
def test_a_row_seal_is_the_checksum_or_mac_of_the_rows_parts(
    node: str, rows: list[tuple[str, str, int, bytes, str]], signing_key: bytes | None
) -> None:
    """What a load checks each row against (made once per node, the parts its rows share
    remembered) is exactly what a write seals it with."""
    seal = RowSeal(node, signing_key)
    for row in rows:
        columns = parts(node, *row)
        due = checksum(columns) if signing_key is None else mac(signing_key, columns)
        assert seal(*row) == due


def test_a_row_seal_stays_right_past_the_kinds_and_replica_lists_it_remembers() -> None:
    seal = RowSeal("n", None)
    for i in range(1500):  # a tampered store: a data type and replica list per row
        row = (f"k{i}", f"Type{i}", 1, b"payload", f"n#{i}")
        assert seal(*row) == checksum(parts("n", *row))
        again = (f"k{i}", "Type0", 1, b"payload", "n#0")  # remembered from the first row
        assert seal(*again) == checksum(parts("n", *again))


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


def test_a_signing_key_file_is_read_whole_and_a_bad_one_named(tmp_path: Path) -> None:
    key_file = tmp_path / "signing.key"
    key_file.write_bytes(b"a secret\n")
    assert read_signing_key(str(key_file)) == b"a secret\n"  # every byte, the newline too
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    with pytest.raises(StoreError, match=r"the signing key file .*empty\.key is empty"):
        read_signing_key(str(empty))
    with pytest.raises(StoreError, match=r"cannot read the signing key file .*nowhere\.key: "):
        read_signing_key(str(tmp_path / "nowhere.key"))
    bad_keys: list[Any] = [b"", "a secret as text"]
    for bad in bad_keys:
        with pytest.raises(StoreError, match="the signing key must be non-empty bytes"):
            Store(f"sqlite:///{tmp_path}/k.db", signing_key=bad)


def test_urls_in_messages_never_show_a_password() -> None:
    url = "postgresql+psycopg://dd:hunter2@db.invalid/dd"
    assert safe_url(url) == "postgresql+psycopg://dd:***@db.invalid/dd"
    assert safe_url("sqlite:///n1.db") == "sqlite:///n1.db"
    assert safe_url("hunter2, not a URL") == "<not an SQLAlchemy URL>"
    # Port 1 of loopback refuses at once: the error names the store, password hidden.
    with pytest.raises(StoreError, match="cannot open the store") as refused:
        Store("postgresql+psycopg://dd:hunter2@127.0.0.1:1/dd")
    assert "dd:***@127.0.0.1:1/dd" in str(refused.value)
    assert "hunter2" not in str(refused.value)


@pytest.fixture
def silent_server() -> Any:
    """A port that accepts connections (the kernel completes them) but never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    try:
        yield server.getsockname()[1]
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_a_server_store_that_never_answers_fails_within_the_connect_timeout(
    silent_server: int,
) -> None:
    with pytest.raises(StoreError, match="timeout"):
        Store(f"postgresql+psycopg://u:secret@127.0.0.1:{silent_server}/db")


@pytest.mark.timeout(30)
def test_a_timeout_in_the_url_is_the_one_used(silent_server: int) -> None:
    # MariaDB's driver would wait 30 s for the greeting (IO_TIMEOUT); the URL asks for 1 s.
    url = f"mysql+pymysql://u:secret@127.0.0.1:{silent_server}/db?read_timeout=1"
    with pytest.raises(StoreError, match="Lost connection"):
        Store(url)


# -- backup and restore -------------------------------------------------------------------------


def _everything(url: str) -> tuple[list[Any], list[Any]]:
    """Every node record and row of a store, as stored."""
    engine = sa.create_engine(store_url(url))
    try:
        with engine.connect() as conn:
            nodes = conn.execute(sa.text("SELECT * FROM thespian_dd_nodes ORDER BY node")).all()
            rows = conn.execute(
                sa.text("SELECT * FROM thespian_dd_entries ORDER BY node, key_id")
            ).all()
        return [tuple(r) for r in nodes], [(*r[:-1], float(r[-1])) for r in rows]
    finally:
        engine.dispose()


@pytest.mark.parametrize("kind", ["sqlite", "postgresql", "mariadb"])
def test_a_backup_restores_into_an_empty_store_of_every_kind(kind: str, tmp_path: Path) -> None:
    source_url = f"sqlite:///{tmp_path}/source.db"
    source = Store(source_url)
    counter = GCounter().increment(ReplicaId("n1", 1), 3)
    source.write("n1", {f"k{i}": Entry("GCounter", encode(counter), "n1#1") for i in range(2500)})
    source.write("n2", {"gone": None, "k0": Entry("GCounter", encode(counter), "n1#1")})
    source.next_incarnation("n1", 7)
    source.next_incarnation("n2", 9)
    source.close()
    path = tmp_path / "backup.db"
    assert backup(source_url, path) == (2, 2502)
    with pytest.raises(StoreError, match="exists: a backup goes into a new file"):
        backup(source_url, path)
    server = contextlib.nullcontext(f"sqlite:///{tmp_path}/target.db")
    with server if kind == "sqlite" else server_database(kind) as target_url:
        assert restore(path, target_url) == (2, 2502)
        assert _everything(target_url) == _everything(source_url)
        restored = Store(target_url)
        try:
            assert restored.next_incarnation("n1", 1) == 8  # counted on from the backup
            assert {k for k, payload, _ in restored.load("n2") if payload is None} == {"gone"}
        finally:
            restored.close()
        with pytest.raises(StoreError, match="is not empty: restore into a new database"):
            restore(path, target_url)
        # Backed up again from the server (one REPEATABLE READ transaction): the same rows.
        again = tmp_path / "again.db"
        assert backup(target_url, again) == (2, 2502)
        assert _everything(f"sqlite:///{again}")[1] == _everything(source_url)[1]


def test_a_backup_of_a_store_that_is_not_there_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="no such file"):
        backup(f"sqlite:///{tmp_path}/missing.db", tmp_path / "b.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == []
