"""A store copied whole (:mod:`thespian_dd._runtime.backup`): backed up into a new SQLite file
and restored into an empty store of every kind, the same rows and records."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from conftest import server_database

from thespian_dd import GCounter, ReplicaId
from thespian_dd._runtime.backup import backup, restore
from thespian_dd._runtime.database import StoreError, store_url
from thespian_dd._runtime.rows import Entry
from thespian_dd._runtime.store import Store
from thespian_dd.codec import encode

pytestmark = pytest.mark.timeout(180)


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
