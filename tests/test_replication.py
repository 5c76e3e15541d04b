"""Replication between real nodes: each node a separate OS process (``python -m thespian_dd
node``) on its own loopback port, joined through a Thespian convention."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from thespian_dd import (
    Delete,
    Flag,
    GCounter,
    Get,
    GetDataDeleted,
    GetFailure,
    GetReplicaCount,
    GetStats,
    GetSuccess,
    GSet,
    LWWMap,
    MVRegister,
    NotFound,
    ORMap,
    ORMultiMap,
    ORSet,
    PNCounter,
    PNCounterMap,
    ReadAll,
    ReadMajority,
    ReplicaCount,
    ReplicaId,
    Stats,
    Update,
    UpdateSuccess,
    UpdateTimeout,
    WriteAll,
    WriteMajority,
)
from thespian_dd._peers import PROTOCOL_VERSION, GossipEntries
from thespian_dd.codec import encode
from thespian_dd.testing import Cluster, eventually

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(180)]


def _value(cluster: Cluster, i: int, key: str) -> Any:
    reply = cluster.ask(i, Get(key))
    return reply.data.value if isinstance(reply, GetSuccess) else reply


def _converged(cluster: Cluster, keys: list[str], nodes: list[int] | None = None) -> dict[str, Any]:
    """Wait until every node has the same value for every key; return those values."""
    nodes = list(range(len(cluster.nodes))) if nodes is None else nodes

    def same() -> dict[str, Any]:
        values = {key: [_value(cluster, i, key) for i in nodes] for key in keys}
        for key, seen in values.items():
            assert all(v == seen[0] for v in seen), (key, seen)
        return {key: seen[0] for key, seen in values.items()}

    return eventually(same, timeout=20, what="convergence")


def _wait_for_peers(cluster: Cluster, n: int) -> None:
    def all_see_n() -> bool:
        counts = [cluster.ask(i, GetReplicaCount()) for i in range(len(cluster.nodes))]
        assert all(c == ReplicaCount(n) for c in counts), counts
        return True

    eventually(all_see_n, timeout=20, what=f"every node sees {n} replicas")


# Each data type, and an update every node applies concurrently (node index i).
TYPES: list[tuple[str, Any, Callable[[int], Any], Any]] = [
    ("gcounter", GCounter(), lambda i: lambda c, n: c.increment(n, i + 1), 1 + 2 + 3),
    ("pncounter", PNCounter(), lambda i: lambda c, n: c.decrement(n, i), -3),
    ("gset", GSet(), lambda i: lambda s, n: s.add(n, i), {0, 1, 2}),
    ("orset", ORSet(), lambda i: lambda s, n: s.add(n, f"e{i}"), {"e0", "e1", "e2"}),
    ("flag", Flag(), lambda i: lambda f, n: f.switch_on(n) if i == 2 else f, True),
    ("mvreg", MVRegister(), lambda i: lambda r, n: r.assign(n, i), {0, 1, 2}),
    (
        "ormap",
        ORMap(),
        lambda i: lambda m, n: m.update(n, "c", GCounter(), lambda c: c.increment(n, 1)),
        {"c": 3},
    ),
    (
        "lwwmap",
        LWWMap(),
        lambda i: lambda m, n: m.put(n, f"k{i}", i),
        {"k0": 0, "k1": 1, "k2": 2},
    ),
    (
        "pncountermap",
        PNCounterMap(),
        lambda i: lambda m, n: m.increment(n, "x", 10),
        {"x": 30},
    ),
    (
        "ormultimap",
        ORMultiMap(),
        lambda i: lambda m, n: m.add_binding(n, "k", i),
        {"k": {0, 1, 2}},
    ),
]


def test_concurrent_updates_of_every_type_converge(cluster_factory: Any) -> None:
    cluster = cluster_factory(3)
    _wait_for_peers(cluster, 3)
    for key, initial, update, _ in TYPES:
        for i in range(3):
            assert cluster.ask(i, Update(key, initial, update(i))) == UpdateSuccess(key, None)
    values = _converged(cluster, [key for key, *_ in TYPES])
    for key, _, _, expected in TYPES:
        assert values[key] == expected, key


def test_a_majority_write_is_seen_by_a_majority_read_elsewhere(cluster_factory: Any) -> None:
    cluster = cluster_factory(3, gossip_interval=30.0, delta_interval=0)  # no background sync
    _wait_for_peers(cluster, 3)
    update = Update("k", ORSet(), lambda s, n: s.add(n, "x"), WriteMajority(5.0), request=1)
    assert cluster.ask(0, update) == UpdateSuccess("k", 1)
    reply = cluster.ask(2, Get("k", ReadMajority(5.0)))
    assert isinstance(reply, GetSuccess)
    assert reply.data.value == {"x"}
    # Read repair: the majority read stored the value on node 2 too.
    assert _value(cluster, 2, "k") == {"x"}


def test_write_all_times_out_across_a_partition_and_converges_after_healing(
    cluster_factory: Any,
) -> None:
    cluster = cluster_factory(3)
    _wait_for_peers(cluster, 3)
    cluster.partition(2, 0, 1)
    reply = cluster.ask(0, Update("k", GCounter(), lambda c, n: c.increment(n, 5), WriteAll(1.0)))
    assert isinstance(reply, UpdateTimeout)
    assert _value(cluster, 0, "k") == 5  # the local write stays
    assert cluster.ask(2, Update("k", GCounter(), lambda c, n: c.increment(n, 2))) == UpdateSuccess(
        "k", None
    )
    assert isinstance(cluster.ask(2, Get("k", ReadAll(1.0))), GetFailure)  # cut off: no quorum
    cluster.heal()
    assert _converged(cluster, ["k"]) == {"k": 7}


def test_a_killed_node_becomes_unreachable_and_catches_up_after_a_restart(
    cluster_factory: Any,
) -> None:
    cluster = cluster_factory(3)
    _wait_for_peers(cluster, 3)
    cluster.ask(0, Update("k", ORSet(), lambda s, n: s.add(n, "before")))
    _converged(cluster, ["k"])
    cluster.kill(2)
    eventually(lambda: cluster.ask(0, GetReplicaCount()) == ReplicaCount(2), timeout=10)
    # A majority of 3 is still reachable; all of them is not.
    update = Update("k", ORSet(), lambda s, n: s.add(n, "during"), WriteMajority(3.0))
    assert isinstance(cluster.ask(0, update), UpdateSuccess)
    update = Update("k", ORSet(), lambda s, n: s.add(n, "all"), WriteAll(1.0))
    assert isinstance(cluster.ask(1, update), UpdateTimeout)
    cluster.restart(2)
    _wait_for_peers(cluster, 3)
    values = _converged(cluster, ["k"])
    assert values["k"] == {"before", "during", "all"}


def test_deletes_replicate(cluster_factory: Any) -> None:
    cluster = cluster_factory(3)
    _wait_for_peers(cluster, 3)
    cluster.ask(0, Update("gone", GCounter(), lambda c, n: c.increment(n, 1)))
    _converged(cluster, ["gone"])
    cluster.ask(1, Delete("gone"))
    eventually(
        lambda: all(cluster.ask(i, Get("gone")) == GetDataDeleted("gone", None) for i in range(3)),
        timeout=20,
    )


def test_bad_peer_payloads_are_rejected_per_key_and_the_rest_converges(
    cluster_factory: Any,
) -> None:
    cluster = cluster_factory(2)
    _wait_for_peers(cluster, 2)
    cluster.ask(0, Update("counter", GCounter(), lambda c, n: c.increment(n, 1)))
    _converged(cluster, ["counter"])
    stats = cluster.ask(1, GetStats())
    assert isinstance(stats, Stats)
    name, incarnation = stats.node.rsplit("#", 1)
    peer = ReplicaId(name, int(incarnation))
    good = encode(GCounter().increment(ReplicaId("elsewhere", 1), 7))
    garbage = {
        "junk": b"not an encoding",
        "truncated": good[:-3],
        "wrong-type": encode(ORSet().add(ReplicaId("x", 1), "a")),  # "counter" is a GCounter
        "not-bytes": 12345,
        "good": good,
    }
    entries = {("counter" if k == "wrong-type" else k): v for k, v in garbage.items()}
    cluster.tell(0, GossipEntries(PROTOCOL_VERSION, peer, entries))  # type: ignore[arg-type]
    cluster.tell(0, GossipEntries(PROTOCOL_VERSION + 1, peer, {"future": good}))
    eventually(lambda: cluster.ask(0, GetStats()).rejected_inputs >= 5, timeout=10)
    assert _value(cluster, 0, "good") == 7
    assert _value(cluster, 0, "counter") == 1
    for key in ["junk", "truncated", "not-bytes", "future"]:
        assert isinstance(cluster.ask(0, Get(key)), NotFound), key
    # The node keeps serving and converging.
    cluster.ask(1, Update("after", GCounter(), lambda c, n: c.increment(n, 2)))
    assert _converged(cluster, ["after", "good"]) == {"after": 2, "good": 7}
