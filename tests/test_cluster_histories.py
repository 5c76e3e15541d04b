"""The shapes the reference models found, through real nodes: a value rebuilt by ``modify``, a map
key removed and created again by one node while others write, counters created again, and
concurrent nested updates, under partitions.

Each history runs on a 3-node cluster and, step by step, on three in-memory replicas merged the
way the partitions allow.  At the end every node's ``ReadAll`` must equal the in-memory result:
every acknowledged write is there, and every refused one (``ModifyFailure``) is nowhere.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from thespian_dd import (
    GCounter,
    Get,
    GetKeys,
    GetStats,
    GetSuccess,
    ModifyFailure,
    ORMap,
    ORMultiMap,
    ORSet,
    PNCounterMap,
    ReadAll,
    ReplicaId,
    Update,
    UpdateSuccess,
)
from thespian_dd.testing import Cluster, eventually

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(180)]

LOCAL = [ReplicaId(f"n{i}", 1) for i in range(3)]
Modify = Callable[[Any, ReplicaId], Any]


class History:
    """Updates on a cluster and on in-memory replicas, merged within the current partition."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.local: list[dict[str, Any]] = [{} for _ in range(3)]
        self.groups = [[0, 1, 2]]
        self.refused: list[tuple[int, str]] = []

    def update(self, i: int, key: str, initial: Any, modify: Modify) -> None:
        reply = self.cluster.ask(i, Update(key, initial, modify))
        current = self.local[i].get(key, initial)
        try:
            new = modify(current, LOCAL[i])
        except ValueError:  # a map refused what a nested modify returned
            new = None
        if isinstance(reply, ModifyFailure):
            assert new is None or not new.is_inflation_of(current), reply
            assert reply.key == key, reply
            assert "not an inflation" in reply.error, reply
            self.refused.append((i, key))
        else:
            assert reply == UpdateSuccess(key, None), reply
            assert new is not None
            assert new.is_inflation_of(current)
            self.local[i][key] = new.reset_delta()
        self._settle()

    def split(self, *groups: list[int]) -> None:
        self.cluster.split(*groups)
        self.groups = list(groups)

    def heal(self) -> None:
        self.cluster.heal()
        self.groups = [[0, 1, 2]]
        self._settle()

    def _settle(self) -> None:
        """Each group merges what its nodes hold; wait until its real nodes read the same."""
        for group in self.groups:
            merged: dict[str, Any] = {}
            for i in group:
                for key, value in self.local[i].items():
                    merged[key] = value if key not in merged else merged[key].merge(value)
            for i in group:
                self.local[i] = dict(merged)

            def caught_up(group: list[int] = group, merged: dict[str, Any] = merged) -> bool:
                for i in group:
                    for key, value in merged.items():
                        reply = self.cluster.ask(i, Get(key))
                        assert isinstance(reply, GetSuccess), reply
                        assert reply.data.value == value.value, (i, key, reply.data.value)
                return True

            eventually(caught_up, timeout=20, what=f"nodes {group} agree")

    def check_read_all(self) -> dict[str, Any]:
        expected = {key: value.value for key, value in self.local[0].items()}
        for i in range(3):
            for key, value in expected.items():
                reply = self.cluster.ask(i, Get(key, ReadAll(5.0)))
                assert isinstance(reply, GetSuccess), reply
                assert reply.data.value == value, (i, key)
        return expected


def _add(element: str) -> Modify:
    return lambda s, n: s.add(n, element)


def _binding(element: str) -> Modify:
    return lambda m, n: m.add_binding(n, "k", element)


def _nested(key: str, modify: Callable[[ORSet, ReplicaId], ORSet]) -> Modify:
    return lambda m, n: m.update(
        n, "m", ORMap(), lambda inner: inner.update(n, key, ORSet(), lambda s: modify(s, n))
    )


def test_acknowledged_writes_survive_recreated_keys_and_rebuilt_values_are_refused(
    cluster_factory: Any,
) -> None:
    cluster = cluster_factory(3, gossip_interval=0.3)
    eventually(lambda: all(cluster.ask(i, GetStats()).reachable_peers == 2 for i in range(3)))
    h = History(cluster)
    h.update(0, "tags", ORSet(), _add("A"))
    h.update(0, "mm", ORMultiMap(), _binding("A"))
    h.update(0, "hits", PNCounterMap(), lambda m, n: m.increment(n, "c", 5))
    h.update(0, "nested", ORMap(), _nested("a", lambda s, n: s.add(n, "x")))

    h.split([0], [1], [2])
    # A set built anew: refused (it reused n0's dot of A; gossip erased both A and B).
    h.update(0, "tags", ORSet(), lambda s, n: ORSet().add(n, "B"))
    h.update(1, "tags", ORSet(), _add("C"))
    # n1 removes k and creates it again; n2 writes to the k it knows.
    h.update(2, "mm", ORMultiMap(), _binding("Y"))
    h.update(1, "mm", ORMultiMap(), lambda m, n: m.remove(n, "k").add_binding(n, "k", "Z"))
    # A counter created again: its new increments must not hide under the old total.
    h.update(1, "hits", PNCounterMap(), lambda m, n: m.remove(n, "c").increment(n, "c", 2))
    h.update(2, "hits", PNCounterMap(), lambda m, n: m.increment(n, "c", 1))
    # Nested: n1 removes the inner map and writes into it again; n2 and n0 update it.
    h.update(1, "nested", ORMap(), lambda m, n: m.remove(n, "m"))
    h.update(1, "nested", ORMap(), _nested("a", lambda s, n: s.add(n, "y")))
    h.update(2, "nested", ORMap(), _nested("b", lambda s, n: s.add(n, "z")))
    h.update(0, "nested", ORMap(), _nested("a", lambda s, n: s.remove(n, "x").add(n, "w")))
    # A nested set built anew inside the map: refused by the map.
    h.update(2, "nested", ORMap(), _nested("a", lambda _s, n: ORSet().add(n, "q")))

    h.split([0, 1], [2])  # n0 now writes into the key n1 created again
    h.update(0, "mm", ORMultiMap(), _binding("X"))
    h.update(0, "nested", ORMap(), _nested("a", lambda s, n: s.add(n, "v")))
    h.heal()

    assert h.check_read_all() == {
        "tags": {"A", "C"},
        "mm": {"k": {"A", "X", "Y", "Z"}},
        "hits": {"c": 8},
        "nested": {"m": {"a": {"y", "w", "v"}, "b": {"z"}}},  # n0 saw x and removed it
    }
    assert h.refused == [(0, "tags"), (2, "nested")]


def test_a_node_stops_advertising_a_bucket_whose_last_key_expired(cluster_factory: Any) -> None:
    """The gossip status lists the digest of every non-empty bucket; a bucket emptied by expiry
    must leave it, or the node would advertise it for ever (nine bytes a round a peer, and the
    two nodes would compare a bucket neither holds)."""
    cluster = cluster_factory(2, gossip_interval=0.2, expire_keys_after_inactivity={"tmp-*": 1.0})
    eventually(lambda: all(cluster.ask(i, GetStats()).reachable_peers == 1 for i in range(2)))
    assert cluster.ask(0, Update("tmp-1", GCounter(), lambda c, n: c.increment(n))) == (
        UpdateSuccess("tmp-1", None)
    )
    eventually(lambda: isinstance(cluster.ask(1, Get("tmp-1")), GetSuccess))
    eventually(lambda: all(cluster.ask(i, GetKeys()).keys == frozenset() for i in range(2)))

    def quiet() -> bool:
        before = [cluster.ask(i, GetStats()) for i in range(2)]
        eventually(
            lambda: all(
                cluster.ask(i, GetStats()).gossip_rounds >= before[i].gossip_rounds + 5
                for i in range(2)
            )
        )
        after = [cluster.ask(i, GetStats()) for i in range(2)]
        assert [
            a.gossip_bytes_out - b.gossip_bytes_out for a, b in zip(after, before, strict=True)
        ] == [0, 0]
        return True

    # Once the expiry has reached both nodes' gossip, five rounds carry no digest at all.
    eventually(quiet, timeout=20, what="gossip with no bucket advertised")
