"""Pruning of removed replicas and replicated deletes, on real node processes with short
intervals: restarts and departures must leave every value exact and the state small."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from thespian_dd import (
    Delete,
    Deleted,
    Expired,
    GCounter,
    Get,
    GetDataDeleted,
    GetKeys,
    GetStats,
    GetSuccess,
    NotFound,
    ORSet,
    ReplicaId,
    Stats,
    Subscribe,
    Update,
    UpdateDataDeleted,
    UpdateSuccess,
    WriteAll,
)
from thespian_dd._peers import PROTOCOL_VERSION, GossipEntries
from thespian_dd.codec import encode
from thespian_dd.testing import Cluster, Probe, ProbeTake, Received, eventually, start_node

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(300)]

PRUNE = {
    "pruning_interval": 0.3,
    "max_pruning_dissemination": 1.0,
    "removal_timeout": 4.0,
}
"""Pruning within seconds: a replica seen removed for 1 s is marked and pruned."""


def _increment(amount: int) -> Any:
    return lambda counter, node: counter.increment(node, amount)


def _add(element: str) -> Any:
    return lambda s, node: s.add(node, element)


def _data(cluster: Cluster, i: int, key: str) -> Any:
    reply = cluster.ask(i, Get(key))
    assert isinstance(reply, GetSuccess), reply
    return reply.data


def _replica(cluster: Cluster, i: int) -> ReplicaId:
    stats = cluster.ask(i, GetStats())
    assert isinstance(stats, Stats)
    name, incarnation = stats.node.rsplit("#", 1)
    return ReplicaId(name, int(incarnation))


def _pruned_everywhere(cluster: Cluster, expected: dict[str, Any], nodes: list[int]) -> bool:
    """Every node holds exactly ``expected``, and each value holds state of live replicas only."""
    live = {_replica(cluster, i) for i in nodes}
    for i in nodes:
        for key, value in expected.items():
            data = _data(cluster, i, key)
            assert data.value == value, (i, key, data.value)
            assert data.modified_by_nodes() <= live, (i, key, data.modified_by_nodes() - live)
    return True


def _idle_gossip_bytes(cluster: Cluster) -> float:
    """Bytes node 0 sends per gossip round, over ten rounds."""
    before = cluster.ask(0, GetStats())
    eventually(
        lambda: cluster.ask(0, GetStats()).gossip_rounds >= before.gossip_rounds + 10, timeout=30
    )
    after = cluster.ask(0, GetStats())
    rounds: int = after.gossip_rounds - before.gossip_rounds
    sent: int = after.gossip_bytes_out - before.gossip_bytes_out
    return float(sent / rounds)


def _full_restart(cluster: Cluster) -> None:
    """Every node killed at once once its store is up to date, then started again."""
    _stored(cluster)
    for i in range(len(cluster.nodes)):
        cluster.kill(i)
    for i in range(len(cluster.nodes)):
        cluster.restart(i)


def _stored(cluster: Cluster) -> None:
    """Wait until every node has committed everything it holds."""
    for i in range(len(cluster.nodes)):
        eventually(lambda i=i: cluster.ask(i, GetStats()).store_queue_depth == 0)  # type: ignore[misc]


def test_thirty_restarts_keep_values_exact_and_state_small(
    cluster_factory: Any, figure: Callable[[str], None]
) -> None:
    cluster = cluster_factory(3, **PRUNE)
    eventually(lambda: all(cluster.ask(i, GetStats()).reachable_peers == 2 for i in range(3)))
    total, elements = 0, set()
    for i in range(3):
        cluster.ask(i, Update("c", GCounter(), _increment(1)))
        cluster.ask(i, Update("s", ORSet(), _add(f"first-{i}")))
        total += 1
        elements.add(f"first-{i}")
    expected = {"c": total, "s": elements}
    eventually(lambda: _pruned_everywhere(cluster, expected, [0, 1, 2]), timeout=30)
    gossip_before = _idle_gossip_bytes(cluster)
    write_all = Update("c", GCounter(), lambda c, n: c, WriteAll(5.0))
    for restart in range(30):
        for i in range(3):
            assert isinstance(
                cluster.ask(i, Update("c", GCounter(), _increment(i + 1))), UpdateSuccess
            )
            element = f"e{restart}-{i}"
            assert isinstance(cluster.ask(i, Update("s", ORSet(), _add(element))), UpdateSuccess)
            total += i + 1
            elements.add(element)
        # Node 3 keeps its state in memory only: its writes must reach a peer before it dies.
        eventually(lambda: isinstance(cluster.ask(2, write_all), UpdateSuccess), timeout=20)
        eventually(lambda: _data(cluster, 0, "s").value == elements, timeout=20)
        cluster.kill(2)
        cluster.restart(2)
    expected = {"c": total, "s": elements}
    eventually(lambda: _pruned_everywhere(cluster, expected, [0, 1, 2]), timeout=60)
    # Once the last pruning has spread (markers included), converged nodes gossip no more
    # than before the restarts: no dead replica, no marker that keeps two nodes differing.
    gossip_after = eventually(
        lambda: (after := _idle_gossip_bytes(cluster)) <= gossip_before and after, timeout=60
    )
    figure(
        f"idle gossip per round: {gossip_before:.0f} bytes before 30 restarts, "
        f"{gossip_after:.0f} after"
    )


def test_a_full_cluster_restart_prunes_every_old_incarnation(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(3, store=f"sqlite:///{tmp_path}/{{name}}.db", **PRUNE)
    for i in range(3):
        cluster.ask(i, Update("c", GCounter(), _increment(10 * (i + 1))))
        cluster.ask(i, Update("s", ORSet(), _add(f"x{i}")))
    expected = {"c": 60, "s": {"x0", "x1", "x2"}}
    eventually(lambda: _pruned_everywhere(cluster, expected, [0, 1, 2]), timeout=30)
    _full_restart(cluster)
    for i in range(3):  # exact at once, from each node's own store
        assert _data(cluster, i, "c").value == 60
    eventually(lambda: _pruned_everywhere(cluster, expected, [0, 1, 2]), timeout=60)
    # Pruned state is durable too: another full restart brings back the pruned values.
    _full_restart(cluster)
    eventually(lambda: _pruned_everywhere(cluster, expected, [0, 1, 2]), timeout=60)


def test_state_of_a_pruned_replica_arriving_late_does_not_come_back(cluster_factory: Any) -> None:
    """Akka's ReplicatorPruningSpec: gossip holding a pruned replica's slot is cleaned."""
    cluster = cluster_factory(2, **PRUNE)
    cluster.ask(1, Update("c", GCounter(), _increment(5)))
    cluster.ask(1, Update("s", ORSet(), _add("old")))
    eventually(lambda: _data(cluster, 0, "c").value == 5)
    eventually(lambda: _data(cluster, 0, "s").value == {"old"})
    late = {"c": encode(_data(cluster, 0, "c")), "s": encode(_data(cluster, 0, "s"))}
    old = _replica(cluster, 1)
    cluster.kill(1)
    cluster.restart(1)
    expected = {"c": 5, "s": {"old"}}
    eventually(lambda: _pruned_everywhere(cluster, expected, [0, 1]), timeout=30)
    assert old not in _data(cluster, 0, "c").modified_by_nodes()
    # The late data comes from the live peer, as a delayed gossip message would.
    cluster.tell(0, GossipEntries(PROTOCOL_VERSION, _replica(cluster, 1), late))
    for _ in range(5):
        assert _data(cluster, 0, "c").value == 5
        assert old not in _data(cluster, 0, "c").modified_by_nodes()
        assert old not in _data(cluster, 0, "s").modified_by_nodes()
    eventually(lambda: _pruned_everywhere(cluster, expected, [0, 1]), timeout=30)


def test_a_node_that_leaves_for_good_is_removed_and_pruned(cluster_factory: Any) -> None:
    cluster = cluster_factory(3, **PRUNE)
    eventually(lambda: all(cluster.ask(i, GetStats()).reachable_peers == 2 for i in range(3)))
    for i in range(3):
        cluster.ask(i, Update("c", GCounter(), _increment(i + 1)))
        cluster.ask(i, Update("s", ORSet(), _add(f"from-{i}")))
    expected = {"c": 6, "s": {"from-0", "from-1", "from-2"}}
    eventually(lambda: _pruned_everywhere(cluster, expected, [0, 1, 2]), timeout=30)
    cluster.kill(2)  # and never comes back
    eventually(lambda: cluster.ask(0, GetStats()).peers == 1, timeout=30)
    eventually(lambda: _pruned_everywhere(cluster, expected, [0, 1]), timeout=30)
    # N is 2 now: WriteAll needs only the two live nodes.
    reply = cluster.ask(0, Update("c", GCounter(), _increment(1), WriteAll(5.0)))
    assert isinstance(reply, UpdateSuccess)


def test_a_delete_wins_everywhere_and_survives_a_full_restart(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(3, store=f"sqlite:///{tmp_path}/{{name}}.db", **PRUNE)
    eventually(lambda: all(cluster.ask(i, GetStats()).reachable_peers == 2 for i in range(3)))
    cluster.ask(0, Update("gone", GCounter(), _increment(1)))
    eventually(lambda: all(_data(cluster, i, "gone").value == 1 for i in range(3)))
    probes = []
    for node in cluster.nodes:
        probe = node.client.createActor(Probe)
        node.client.tell(node.replicator, Subscribe("gone", subscriber=probe))
        probes.append(probe)
    # Node 3 updates the key, cut off, while node 1 deletes it: the delete must win.
    cluster.split([0, 1], [2])
    cluster.ask(0, Delete("gone"))
    assert isinstance(cluster.ask(2, Update("gone", GCounter(), _increment(5))), UpdateSuccess)
    cluster.heal()

    def deleted_everywhere() -> bool:
        for i in range(3):
            assert cluster.ask(i, Get("gone")) == GetDataDeleted("gone", None), i
        return True

    eventually(deleted_everywhere, timeout=30)
    for i, (node, probe) in enumerate(zip(cluster.nodes, probes, strict=True)):

        def told(node: Any = node, probe: Any = probe) -> bool:
            reply = node.client.ask(probe, ProbeTake(), 5)
            assert isinstance(reply, Received)
            return Deleted("gone") in reply.messages

        eventually(told, timeout=20, what=f"node {i + 1}'s subscriber hears of the delete")
    _full_restart(cluster)
    deleted_everywhere()
    reply = cluster.ask(1, Update("gone", GCounter(), _increment(1)))
    assert reply == UpdateDataDeleted("gone", None)


def test_a_node_offline_longer_than_the_durable_marker_ttl_refuses_to_rejoin(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path}/n.db"
    settings: dict[str, Any] = {
        "node_name": "n",
        "durable_pruning_marker_ttl": 3.0,
        "pruning_interval": 0.1,
    }
    node = start_node(store=url, **settings)
    try:
        node.ask(Update("c", GCounter(), _increment(1)))
        first = _last_alive(url)
        # Idle, it still tells its store it is alive (every ttl / 10 here).
        eventually(lambda: _last_alive(url) > first + 0.5, timeout=10)
    finally:
        node.asys.shutdown()
    node = start_node(store=url, **settings)  # back within the bound: fine
    node.asys.shutdown()
    # Offline for longer than the durable marker TTL (3 s): its last commit ages.
    eventually(lambda: time.time() - _last_alive(url) > 3.0, timeout=10, interval=0.2)
    with pytest.raises(RuntimeError, match="durable_pruning_marker_ttl"):
        start_node(store=url, **settings)


def _last_alive(url: str) -> float:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT last_alive FROM thespian_dd_nodes WHERE node = 'n'")
            return float(conn.execute(query).scalar_one())
    finally:
        engine.dispose()


def test_idle_keys_expire_everywhere_and_used_ones_stay(
    cluster_factory: Any, tmp_path: Path
) -> None:
    expiry = {"cache-*": 2.0, "cache-forever": 3600.0}
    cluster = cluster_factory(
        2, store=f"sqlite:///{tmp_path}/{{name}}.db", expire_keys_after_inactivity=expiry
    )
    eventually(lambda: all(cluster.ask(i, GetStats()).reachable_peers == 1 for i in range(2)))
    keys = ("cache-idle", "cache-read", "cache-forever", "kept")
    for key in keys:
        cluster.ask(0, Update(key, GCounter(), _increment(1)))
    node = cluster.nodes[1]
    probe = node.client.createActor(Probe)
    node.client.tell(node.replicator, Subscribe("cache-*", subscriber=probe))
    eventually(lambda: all(isinstance(cluster.ask(1, Get(k)), GetSuccess) for k in keys))
    started = time.monotonic()
    while time.monotonic() - started < 4.0:  # reads keep cache-read alive, on node 1 only
        assert isinstance(cluster.ask(1, Get("cache-read")), GetSuccess)
    for i in range(2):
        assert cluster.ask(i, Get("cache-idle")) == NotFound("cache-idle", None), i
        assert isinstance(cluster.ask(i, Get("cache-read")), GetSuccess), i
        assert _data(cluster, i, "cache-forever").value == 1
        assert _data(cluster, i, "kept").value == 1

    def told() -> bool:
        reply = node.client.ask(probe, ProbeTake(), 5)
        assert isinstance(reply, Received)
        return Expired("cache-idle") in reply.messages

    eventually(told, what="the subscriber hears that cache-idle expired")
    # Not a delete: the key can be created again, and the expired row is gone from the store.
    reply = cluster.ask(0, Update("cache-idle", GCounter(), _increment(7)))
    assert isinstance(reply, UpdateSuccess)
    eventually(lambda: _data(cluster, 1, "cache-idle").value == 7)
    # Reads stopped: it expires too, and so does the new cache-idle (GetKeys is no read).
    lasting = {"cache-forever", "kept"}
    eventually(lambda: all(cluster.ask(i, GetKeys()).keys == lasting for i in range(2)), 10)
    _full_restart(cluster)
    for i in range(2):  # the expired keys' rows are gone; the others' are not
        assert cluster.ask(i, GetKeys()).keys == lasting, i
