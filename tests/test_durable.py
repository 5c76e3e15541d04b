"""Durability on a real SQLite file per node: restart a node (or the whole cluster, kill -9) and
read every acknowledged value back; the store's rows are checked, and a store that cannot be read
is refused loudly rather than served empty."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from thespian_dd import (
    Changed,
    Delete,
    GCounter,
    Get,
    GetDataDeleted,
    GetStats,
    GetSuccess,
    NotFound,
    ORSet,
    ReplicaId,
    Stats,
    Subscribe,
    Update,
    UpdateSuccess,
    WriteAll,
)
from thespian_dd.codec import encode
from thespian_dd.durable import Store, StoreError
from thespian_dd.testing import Cluster, Probe, ProbeTake, Received, eventually, start_node

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(180)]


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/{{name}}.db"


def _value(cluster: Cluster, i: int, key: str) -> Any:
    reply = cluster.ask(i, Get(key))
    return reply.data if isinstance(reply, GetSuccess) else reply


def test_a_node_killed_and_restarted_recovers_every_acknowledged_value(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(1, store=_store(tmp_path))
    for _ in range(5):
        reply = cluster.ask(0, Update("hits", GCounter(), lambda c, n: c.increment(n, 1)))
        assert reply == UpdateSuccess("hits", None)
    cluster.ask(0, Update("tags", ORSet(), lambda s, n: s.add_all(n, ["a", "b"])))
    cluster.ask(0, Update("gone", GCounter(), lambda c, n: c.increment(n, 1)))
    cluster.ask(0, Delete("gone"))
    cluster.kill(0)
    cluster.restart(0)
    hits = _value(cluster, 0, "hits")
    assert hits.value == 5
    assert _value(cluster, 0, "tags").value == {"a", "b"}
    assert cluster.ask(0, Get("gone")) == GetDataDeleted("gone", None)
    # The restarted node writes under a new incarnation: it never reuses the old slot.
    cluster.ask(0, Update("hits", GCounter(), lambda c, n: c.increment(n, 1)))
    after = _value(cluster, 0, "hits")
    assert after.value == 6
    assert len(after.modified_by_nodes()) == 2
    stats = cluster.ask(0, GetStats())
    assert isinstance(stats, Stats)
    assert stats.recovery_time is not None


def _increment(amount: int) -> Any:
    # A lambda travels by value (dill); node processes cannot import this test module.
    return lambda counter, node: counter.increment(node, amount)


def _add(element: str) -> Any:
    return lambda s, node: s.add(node, element)


def test_a_full_cluster_kill_loses_no_acknowledged_update(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(3, store=_store(tmp_path))
    expected_hits = 0
    expected_items: set[str] = set()
    for k in range(60):
        i = k % 3
        amount = k % 7 + 1
        reply = cluster.ask(i, Update(f"c{k % 5}", GCounter(), _increment(amount)))
        assert isinstance(reply, UpdateSuccess)
        reply = cluster.ask(i, Update("items", ORSet(), _add(f"item-{k}")))
        assert isinstance(reply, UpdateSuccess)
        expected_hits += amount
        expected_items.add(f"item-{k}")
    for i in range(3):
        cluster.kill(i)  # every node at once, no flush, no goodbye
    for i in range(3):
        cluster.restart(i)

    def recovered() -> bool:
        for i in range(3):
            total = sum(_value(cluster, i, f"c{j}").value for j in range(5))
            assert total == expected_hits, (i, total)
            assert _value(cluster, i, "items").value == expected_items
        return True

    eventually(recovered, timeout=30, what="every node holds every acknowledged update")


def test_a_subscriber_of_a_restarted_node_first_sees_the_recovered_value(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(1, store=_store(tmp_path))
    cluster.ask(0, Update("cart", ORSet(), lambda s, n: s.add(n, "apple")))
    cluster.kill(0)
    cluster.restart(0)
    node = cluster.nodes[0]
    probe = node.client.createActor(Probe)
    node.client.tell(node.replicator, Subscribe("cart", subscriber=probe))

    def first() -> Any:
        reply = node.client.ask(probe, ProbeTake(), 5)
        assert isinstance(reply, Received)
        assert reply.messages
        return reply.messages[0]

    message = eventually(first, timeout=20)
    assert isinstance(message, Changed)
    assert message.data.value == {"apple"}


def test_rows_are_one_per_node_and_key_and_corrupted_ones_are_skipped(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/n.db"
    node = start_node(store=url, node_name="n")
    try:
        for key in ("a", "b", "c"):
            node.ask(Update(key, GCounter(), lambda c, n: c.increment(n, 2)))
    finally:
        node.asys.shutdown()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT node, key, data_type FROM thespian_dd_entries")).all()
        assert sorted(rows) == [
            ("n", "a", "GCounter"),
            ("n", "b", "GCounter"),
            ("n", "c", "GCounter"),
        ]
        conn.execute(sa.text("UPDATE thespian_dd_entries SET payload = x'00' WHERE key = 'b'"))
    engine.dispose()
    node = start_node(store=url, node_name="n")
    try:
        assert node.ask(Get("a")).data.value == 2
        assert isinstance(node.ask(Get("b")), NotFound)  # skipped, not loaded as garbage
        assert node.ask(Get("c")).data.value == 2
        stats = node.ask(GetStats())
        assert stats.rejected_inputs == 1
    finally:
        node.asys.shutdown()


def test_a_store_that_cannot_be_opened_is_refused_with_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    with pytest.raises(RuntimeError, match="the store cannot be loaded"):
        start_node(store=f"sqlite:///{blocker}/n.db", node_name="n")


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


def test_the_store_round_trips_rows_and_tombstones(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/r.db")
    counter = GCounter().increment(ReplicaId("n", 1), 4)
    store.write("n", {"k": ("GCounter", encode(counter)), "gone": None})
    store.write("other", {"k": ("GCounter", encode(GCounter()))})
    rows = {key: (payload, error) for key, payload, error in store.load("n")}
    assert rows == {"k": (encode(counter), None), "gone": (None, None)}
    store.write("n", {"k": None})  # an upsert: one row per (node, key)
    assert {key for key, payload, _ in store.load("n") if payload is None} == {"gone", "k"}
    store.close()


def test_quorum_writes_between_durable_nodes_are_acknowledged_after_commit(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(3, store=_store(tmp_path), gossip_interval=30.0, delta_interval=0)
    eventually(lambda: all(cluster.ask(i, GetStats()).peers == 2 for i in range(3)), timeout=20)
    write = Update("q", GCounter(), _increment(1), WriteAll(5.0))
    assert isinstance(cluster.ask(0, write), UpdateSuccess)
    # The same value again: the peers already hold it (nothing new to store) and must still ack.
    same = Update("q", GCounter(), lambda c, n: c, WriteAll(5.0))
    assert isinstance(cluster.ask(0, same), UpdateSuccess)
    for i in range(3):
        cluster.kill(i)
    cluster.restart(1)
    assert _value(cluster, 1, "q").value == 1  # node 1 stored it before acknowledging
