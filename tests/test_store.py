"""The SQL store (:mod:`thespian_dd._runtime.store`) on its own, without a node: rows and
tombstones round trip on every store, incarnations grow, a newer schema is refused.  Mutated and
wrongly signed rows: ``tests/test_fuzz.py``."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from thespian_dd import GCounter, ReplicaId
from thespian_dd._runtime.store import Entry, Store, StoreError
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
