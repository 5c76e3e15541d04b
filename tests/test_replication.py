"""Replication between real nodes: each node a separate OS process (``python -m thespian_dd
node``) on its own loopback port, joined through a Thespian convention."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from thespian_dd import (
    Changed,
    Delete,
    Deleted,
    Flag,
    GCounter,
    Get,
    GetDataDeleted,
    GetFailure,
    GetReplicaCount,
    GetStats,
    GetStatus,
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
    Status,
    Subscribe,
    Update,
    UpdateSuccess,
    UpdateTimeout,
    WriteAll,
    WriteMajority,
)
from thespian_dd._peers import PROTOCOL_VERSION, GossipEntries, PartitionForTests
from thespian_dd.codec import encode
from thespian_dd.testing import Cluster, Probe, ProbeTake, Received, eventually

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
    # Cut apart while they write, so the three updates of a key are truly concurrent: without
    # it, a delta can reach a node before its own update (as it did on a loaded machine), and an
    # MVRegister then rightly keeps only the later values.
    cluster.split([0], [1], [2])
    for key, initial, update, _ in TYPES:
        for i in range(3):
            assert cluster.ask(i, Update(key, initial, update(i))) == UpdateSuccess(key, None)
    cluster.heal()
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


def test_a_majority_of_four_nodes_is_three(cluster_factory: Any) -> None:
    cluster = cluster_factory(4)
    _wait_for_peers(cluster, 4)
    write = Update("k", ORSet(), lambda s, n: s.add(n, "x"), WriteMajority(2.0))
    cluster.split([0, 1, 2], [3])  # node 0 reaches 3 of 4: a majority
    assert isinstance(cluster.ask(0, write), UpdateSuccess)
    assert isinstance(cluster.ask(0, Get("k", ReadMajority(2.0))), GetSuccess)
    cluster.split([0, 1], [2, 3])  # 2 of 4 is half, not a majority
    assert isinstance(cluster.ask(0, write), UpdateTimeout)
    assert isinstance(cluster.ask(0, Get("k", ReadMajority(2.0))), GetFailure)
    cluster.heal()


def test_a_killed_node_becomes_unreachable_and_catches_up_after_a_restart(
    cluster_factory: Any,
) -> None:
    cluster = cluster_factory(3)
    _wait_for_peers(cluster, 3)
    cluster.ask(0, Update("k", ORSet(), lambda s, n: s.add(n, "before")))
    _converged(cluster, ["k"])
    cluster.kill(2)
    eventually(lambda: cluster.ask(0, GetReplicaCount()) == ReplicaCount(2), timeout=10)
    status = cluster.ask(0, GetStatus())
    assert isinstance(status, Status)
    assert [(p.name, p.reachable) for p in status.peers] == [("node-2", True), ("node-3", False)]
    assert all(p.last_heard >= 0 for p in status.peers)  # the transport may tell at once
    assert status.peers[1].replica.startswith("node-3#")
    assert status.removed == ()
    # A majority of 3 is still reachable; all of them is not.
    update = Update("k", ORSet(), lambda s, n: s.add(n, "during"), WriteMajority(3.0))
    assert isinstance(cluster.ask(0, update), UpdateSuccess)
    update = Update("k", ORSet(), lambda s, n: s.add(n, "all"), WriteAll(1.0))
    assert isinstance(cluster.ask(1, update), UpdateTimeout)
    cluster.restart(2)
    _wait_for_peers(cluster, 3)
    values = _converged(cluster, ["k"])
    assert values["k"] == {"before", "during", "all"}


def test_a_node_restarted_while_its_peers_cannot_hear_it_joins_them_once_they_can(
    cluster_factory: Any,
) -> None:
    """Found by strengthening test_durable's restart test: node 2 restarts while nodes 0 and 1
    drop its messages, so its hello (sent once, at start) is lost; healed, its gossip reaches
    them every round, but they knew only its old incarnation and ignored it for ever."""
    cluster = cluster_factory(3)
    _wait_for_peers(cluster, 3)
    cluster.kill(2)
    for i in (0, 1):
        cluster.tell(i, PartitionForTests(frozenset({cluster.nodes[2].name})))
    cluster.restart(2)
    assert cluster.ask(0, Update("k", ORSet(), lambda s, n: s.add(n, "x"))) == UpdateSuccess(
        "k", None
    )
    cluster.heal()
    _wait_for_peers(cluster, 3)
    assert _converged(cluster, ["k"]) == {"k": {"x"}}


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


def test_chaos_partition_kill_restart_gives_exact_sums_and_unions(cluster_factory: Any) -> None:
    """Akka's ReplicatorChaosSpec, on five nodes."""
    cluster = cluster_factory(5)
    _wait_for_peers(cluster, 5)

    def add(i: int, amount: int, element: str, level: Any = None) -> Any:
        cluster.ask(i, Update("c", GCounter(), lambda c, n: c.increment(n, amount), level))
        return cluster.ask(i, Update("s", ORSet(), lambda s, n: s.add(n, element), level))

    for i in range(5):
        add(i, i + 1, f"e{i}")
    assert _converged(cluster, ["c", "s"])["c"] == 15
    cluster.split([0, 1], [2, 3, 4])
    add(0, 10, "p0")
    add(3, 20, "p3")
    # Node 4 reaches a majority (itself, 2 and 3) on its side, then dies.
    assert isinstance(add(4, 100, "p4", WriteMajority(5.0)), UpdateSuccess)
    cluster.kill(4)
    add(1, 1000, "p1")
    _converged(cluster, ["c", "s"], nodes=[0, 1])
    _converged(cluster, ["c", "s"], nodes=[2, 3])
    cluster.heal()
    cluster.restart(4)
    _wait_for_peers(cluster, 5)
    values = _converged(cluster, ["c", "s"])
    assert values["c"] == 15 + 10 + 20 + 100 + 1000
    assert values["s"] == {f"e{i}" for i in range(5)} | {"p0", "p1", "p3", "p4"}


def test_deltas_and_full_state_gossip_reach_the_same_values(cluster_factory: Any) -> None:
    """The same random operations through a delta cluster and a gossip-only cluster.

    Node i only removes what node i added, so the outcome does not depend on how fast each
    cluster propagates; batches are separated by convergence."""
    import random

    rng = random.Random(20261125)
    with_deltas = cluster_factory(3, delta_interval=0.05, gossip_interval=0.5)
    gossip_only = cluster_factory(3, delta_interval=0, gossip_interval=0.2)
    for cluster in (with_deltas, gossip_only):
        _wait_for_peers(cluster, 3)
    keys = ["count", "set", "map", "multi"]
    for _batch in range(4):
        ops = []
        for _ in range(30):
            i, item, amount = rng.randrange(3), f"{rng.randrange(3)}", rng.randrange(1, 9)
            own = f"n{i}-{item}"
            kind = rng.choice(["count", "add", "remove", "map", "map-remove", "bind", "unbind"])
            ops.append((i, kind, own, amount))
        for cluster in (with_deltas, gossip_only):
            for i, kind, own, amount in ops:
                cluster.ask(i, _operation(kind, own, amount))
        values = [_converged(cluster, keys) for cluster in (with_deltas, gossip_only)]
        assert values[0] == values[1]


def _operation(kind: str, own: str, amount: int) -> Update:
    if kind == "count":
        return Update("count", PNCounter(), lambda c, n: c.increment(n, amount - 4))
    if kind in ("add", "remove"):
        verb = "add" if kind == "add" else "remove"
        return Update("set", ORSet(), lambda s, n: getattr(s, verb)(n, own))
    if kind == "map":
        return Update(
            "map",
            ORMap(),
            lambda m, n: m.update(n, own, GCounter(), lambda c: c.increment(n, amount)),
        )
    if kind == "map-remove":
        return Update("map", ORMap(), lambda m, n: m.remove(n, own))
    verb = "add_binding" if kind == "bind" else "remove_binding"
    return Update("multi", ORMultiMap(), lambda m, n: getattr(m, verb)(n, own[:2], own))


@pytest.mark.timeout(300)
def test_a_new_node_catches_up_on_20000_keys_and_idle_gossip_does_not_grow_with_keys(
    tmp_path: Any,
) -> None:
    with Cluster(tmp_path, 2, gossip_interval=0.2) as cluster:
        cluster.start_node(0)

        def load(start: int, stop: int) -> None:
            # One ask each: unread replies to tells would fill the Replicator's send queue.
            # A lambda travels by value; a function of this module would travel by reference,
            # and node processes cannot import test modules.
            increment = lambda c, n: c.increment(n, 1)  # noqa: E731
            for k in range(start, stop):
                update = Update(f"key-{k}", GCounter(), increment)
                assert isinstance(cluster.ask(0, update), UpdateSuccess)

        def idle_bytes_per_round() -> float:
            settled = cluster.ask(0, GetStats()).gossip_rounds + 5  # let the last exchange end
            eventually(lambda: cluster.ask(0, GetStats()).gossip_rounds >= settled)
            before = cluster.ask(0, GetStats())
            eventually(
                lambda: cluster.ask(0, GetStats()).gossip_rounds >= before.gossip_rounds + 10
            )
            after = cluster.ask(0, GetStats())
            sent: int = after.gossip_bytes_out - before.gossip_bytes_out
            rounds: int = after.gossip_rounds - before.gossip_rounds
            return sent / rounds

        def node_1_has(n: int) -> bool:
            stats = cluster.ask(1, GetStats())
            assert stats.keys == n, stats.keys
            return True

        load(0, 2_000)
        cluster.start_node(1)
        eventually(lambda: node_1_has(2_000), timeout=60, what="node 1 catches up on 2,000 keys")
        small = idle_bytes_per_round()
        load(2_000, 20_000)
        eventually(lambda: node_1_has(20_000), timeout=120, what="node 1 catches up on 20,000 keys")
        large = idle_bytes_per_round()
        assert _value(cluster, 1, "key-19999") == 1
        # The same 64 bucket digests per round, whatever the number of keys.
        assert large < small * 1.2, (small, large)


def test_a_value_too_big_after_merging_is_refused_and_the_rest_still_converges(
    cluster_factory: Any,
) -> None:
    cluster = cluster_factory(2, max_value_bytes=4000, max_gossip_bytes=3000)
    _wait_for_peers(cluster, 2)
    big = Update("big", ORSet(), lambda s, n: s.add_all(n, range(2000)))  # ~24 KB encoded
    assert cluster.ask(0, big) == UpdateSuccess("big", None)  # local values are not capped
    for k in range(20):
        cluster.ask(0, Update(f"small-{k}", GCounter(), lambda c, n: c.increment(n, 3)))
    values = _converged(cluster, [f"small-{k}" for k in range(20)])
    assert set(values.values()) == {3}  # the big value does not hold back the small ones
    assert isinstance(cluster.ask(1, Get("big")), NotFound)
    eventually(lambda: cluster.ask(1, GetStats()).rejected_inputs > 0, timeout=10)


def test_a_subscriber_hears_of_changes_made_on_other_nodes(cluster_factory: Any) -> None:
    cluster = cluster_factory(3)
    _wait_for_peers(cluster, 3)
    node = cluster.nodes[2]
    probe = node.client.createActor(Probe)
    node.client.tell(node.replicator, Subscribe("cart-*", subscriber=probe))
    cluster.ask(0, Update("cart-1", ORSet(), lambda s, n: s.add(n, "apple")))
    cluster.ask(1, Update("cart-1", ORSet(), lambda s, n: s.add(n, "pear")))

    def heard(wanted: Any) -> bool:
        reply = node.client.ask(probe, ProbeTake(), 5)
        assert isinstance(reply, Received)
        assert any(wanted(m) for m in reply.messages), reply.messages
        return True

    both = {"apple", "pear"}
    eventually(lambda: heard(lambda m: isinstance(m, Changed) and m.data.value == both), 20)
    # Changes within one notify interval reach subscribers as one notification: the delete
    # comes after the merged value has been told.
    cluster.ask(1, Delete("cart-1"))
    eventually(lambda: heard(lambda m: m == Deleted("cart-1")), 20)


def test_a_restarted_convention_leader_rejoins_its_members(cluster_factory: Any) -> None:
    cluster = cluster_factory(3)
    _wait_for_peers(cluster, 3)
    cluster.ask(1, Update("k", GCounter(), lambda c, n: c.increment(n, 2)))
    _converged(cluster, ["k"])
    cluster.kill(0)  # the leader: the members only ever heard of each other through it
    cluster.ask(1, Update("k", GCounter(), lambda c, n: c.increment(n, 3)))
    cluster.restart(0)
    _wait_for_peers(cluster, 3)
    assert _converged(cluster, ["k"]) == {"k": 5}
