"""``thespian-dd migrate`` and the store's upgrade path, on every store (SQLite, and PostgreSQL
and MariaDB when their servers are set up: skipped here without them, failing under CI=true).

The store written by the previous release is written by its own code: the frozen package of
``tests/compat/`` run in a process of its own.  While the codec has one format, migrate finds no
row to rewrite; once it has more, the same tests upgrade the rows of the earlier one."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import sqlalchemy as sa

import thespian_dd
from thespian_dd import GCounter, ORSet, ReplicaId, codec
from thespian_dd._cli.main import main
from thespian_dd._cli.migrate import migrate_store
from thespian_dd._runtime.database import StoreError
from thespian_dd._runtime.rows import Entry, checksum, parts
from thespian_dd._runtime.schema import SCHEMA_VERSION
from thespian_dd._runtime.store import Store

pytestmark = pytest.mark.timeout(180)

COMPAT = Path(__file__).parent / "compat"
A = ReplicaId("n", 1)
COUNTER = GCounter().increment(A, 3)
SET = ORSet[str]().add(A, "x")

WRITE_WITH_THE_PREVIOUS_RELEASE = """
import sys
import thespian_dd
from thespian_dd import GCounter, ORSet, ReplicaId
from thespian_dd.codec import encode
from thespian_dd._runtime.store import Entry, Store
assert thespian_dd.__file__.startswith(sys.argv[1]), thespian_dd.__file__
a = ReplicaId("n", 1)
store = Store(sys.argv[2])
store.next_incarnation("n", 1)
store.write("n", {
    "counter": Entry("GCounter", encode(GCounter().increment(a, 3)), "n#1"),
    "set": Entry("ORSet", encode(ORSet().add(a, "x")), "n#1"),
    "gone": None,
})
store.close()
"""


def write_with_the_previous_release(tmp_path: Path, url: str) -> None:
    with tarfile.open(COMPAT / "thespian_dd-349b515.tar.xz") as archive:
        archive.extractall(tmp_path / "previous", filter="data")
    done = subprocess.run(
        [sys.executable, "-c", WRITE_WITH_THE_PREVIOUS_RELEASE, str(tmp_path / "previous"), url],
        env={"PYTHONPATH": str(tmp_path / "previous"), "PYTHONSAFEPATH": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def formats(url: str) -> dict[str, int]:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            entries = thespian_dd.store_metadata.tables["thespian_dd_entries"]
            rows = conn.execute(sa.select(entries.c.key, entries.c.format_version))
            return {row.key: row.format_version for row in rows}
    finally:
        engine.dispose()


def loaded(url: str) -> dict[str, object]:
    store = Store(url, create=False)
    try:
        return {
            key: None if payload is None else codec.decode(payload)
            for key, payload, error in store.load("n")
            if error is None
        }
    finally:
        store.close()


@pytest.mark.subprocess
def test_migrate_brings_a_store_of_the_previous_release_to_this_one_and_twice_is_once(
    tmp_path: Path, store_url: str
) -> None:
    url = store_url.format(name="m")
    write_with_the_previous_release(tmp_path, url)
    older = sum(v < codec.FORMAT_VERSION for v in formats(url).values())
    # This tree reads it as it is (every earlier format), before any migration.
    assert loaded(url) == {"counter": COUNTER, "set": SET, "gone": None}
    lines: list[str] = []
    assert migrate_store(url, lines.append) == 0
    assert len(lines) == 1
    assert f"schema version {SCHEMA_VERSION} (current), 1 nodes; " in lines[0]
    assert lines[0].endswith(
        f"{older} rows upgraded to format {codec.FORMAT_VERSION}, 0 left as they were"
    )
    assert set(formats(url).values()) == {codec.FORMAT_VERSION}
    assert loaded(url) == {"counter": COUNTER, "set": SET, "gone": None}
    again: list[str] = []
    assert migrate_store(url, again.append) == 0
    assert "0 rows upgraded" in again[0]
    assert loaded(url) == {"counter": COUNTER, "set": SET, "gone": None}


def test_a_row_that_fails_its_checks_is_left_as_it_is_and_named(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/t.db"
    store = Store(url)
    store.next_incarnation("n", 1)
    store.write("n", {"good": Entry("GCounter", codec.encode(COUNTER), "n#1")})
    store.write("n", {"bad": Entry("GCounter", codec.encode(COUNTER), "n#1")})
    store.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # a format this code never wrote: its checksum fails too
        conn.execute(sa.text("UPDATE thespian_dd_entries SET format_version = 0 WHERE key='bad'"))
    engine.dispose()
    lines: list[str] = []
    assert migrate_store(url, lines.append) == 1
    assert "0 rows upgraded" in lines[0]
    assert "1 left as they were" in lines[0]
    assert lines[1].startswith("  left n 'bad': ")
    assert formats(url) == {"good": codec.FORMAT_VERSION, "bad": 0}


def test_migrate_keeps_signed_rows_signed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    store = Store(url, signing_key=b"secret")
    store.next_incarnation("n", 1)
    store.write("n", {"counter": Entry("GCounter", codec.encode(COUNTER), "n#1")})
    store.close()
    assert migrate_store(url, lambda _line: None, signing_key=b"secret") == 0
    signed = Store(url, create=False, signing_key=b"secret")
    try:
        assert [(k, e) for k, _, e in signed.load("n")] == [("counter", None)]
    finally:
        signed.close()


def test_migrate_refuses_a_store_of_a_newer_schema_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/n.db"
    Store(url).next_incarnation("n")
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE thespian_dd_nodes SET schema_version = 99"))
    engine.dispose()
    with pytest.raises(SystemExit) as exit_:
        main(["migrate", "--store", url])
    message = str(exit_.value)
    assert message.startswith("migrate: the store has schema version 99")
    assert "\n" not in message


def test_migrate_of_a_missing_store_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=r"^migrate: cannot open the store .*no such file"):
        main(["migrate", "--store", f"sqlite:///{tmp_path}/none.db"])
    assert not (tmp_path / "none.db").exists()
    sqlite3.connect(tmp_path / "empty.db").close()  # a database without the tables
    with pytest.raises(StoreError, match="no thespian_dd tables"):
        migrate_store(f"sqlite:///{tmp_path}/empty.db", lambda _line: None)


def test_the_command_prints_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path}/c.db"
    Store(url).next_incarnation("n")
    assert main(["migrate", "--store", url]) == 0
    assert capsys.readouterr().out.startswith(f"migrated {url}: schema version {SCHEMA_VERSION}")


def test_the_tables_metadata_is_public_and_is_the_stores(tmp_path: Path) -> None:
    assert set(thespian_dd.store_metadata.tables) == {"thespian_dd_entries", "thespian_dd_nodes"}
    # A user's own migrations may create the tables from it: a node's store then opens.
    url = f"sqlite:///{tmp_path}/alembic.db"
    engine = sa.create_engine(url)
    thespian_dd.store_metadata.create_all(engine)
    engine.dispose()
    store = Store(url, create=False)
    try:
        assert store.next_incarnation("n", 5) == 5
    finally:
        store.close()


@pytest.mark.parametrize("version", codec.FORMAT_VERSIONS)
def test_a_row_of_every_format_the_codec_reads_is_loaded(tmp_path: Path, version: int) -> None:
    """The load check takes every format the codec reads, not only the current one: a row
    written by a release whose format was ``version`` (its payload and its sealed column)."""
    url = f"sqlite:///{tmp_path}/f.db"
    payload = codec.encode(COUNTER, version)
    seal = checksum(parts("n", "c", "GCounter", version, payload, "n#1"))
    store = Store(url)
    try:
        store.write("n", {"c": Entry("GCounter", payload, "n#1")})
        with store.engine.begin() as conn:
            conn.execute(
                sa.text("UPDATE thespian_dd_entries SET format_version = :v, checksum = :c"),
                {"v": version, "c": seal},
            )
        rows = list(store.load("n"))
    finally:
        store.close()
    assert [(k, e) for k, _, e in rows] == [("c", None)]
    assert codec.decode(rows[0][1] or b"") == COUNTER
