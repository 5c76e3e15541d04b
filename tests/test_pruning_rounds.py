"""Pruning rounds and the merge of a peer's value with its markers, on a KeyTable with fake
clocks (no processes; the protocol across real nodes is in tests/test_pruning.py).

Covered: the leader (the smallest live name) marks a key that holds a removed replica only once it
has been removed for ``max_pruning_dissemination``, and a non-leader never marks; the owner of a
marker prunes only when every live node is in its ``seen``; Performed markers expire by the ms
clock and Initialized ones whose owner is gone are dropped; ``merge_payload`` (a tombstone wins,
type mismatches, this node pruned by the peer, a result too big, nothing new, bad keys, pruned
slots cleaned from both sides); ``cleaned`` and ``seen_here``.
"""

from __future__ import annotations

import pytest
from fakes import Clock

from thespian_dd import GCounter, GSet, ORSet, ReplicaId
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.markers import Initialized, Marker, Performed, join_envelope
from thespian_dd._runtime.protocol import TOMBSTONE
from thespian_dd._runtime.pruning import (
    Merge,
    PrunedHere,
    Pruning,
    cleaned,
    merge_payload,
    seen_here,
)
from thespian_dd._runtime.settings import Settings
from thespian_dd.codec import encode

pytestmark = pytest.mark.timeout(60)

A, B, C, D = ReplicaId("a", 1), ReplicaId("b", 1), ReplicaId("c", 1), ReplicaId("d", 1)
LIVE = {"a": A, "b": B}
WAIT = 300.0
TTL = 60.0
MB = 1024 * 1024


class Rounds:
    """A key table and the Pruning that works on it."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings(max_pruning_dissemination=WAIT, pruning_marker_ttl=TTL)
        self.keys = KeyTable(lambda _key: None)
        self.clock = Clock(0.0)
        self.ms = Clock(1_700_000_000_000)
        self.pruning = Pruning(self.settings, self.keys, self.clock, self.ms)

    def at(self, seconds: float, me: ReplicaId = A, live: dict[str, ReplicaId] = LIVE) -> list[str]:
        """A round while every peer is reachable, at ``seconds`` on the monotonic clock."""
        self.clock.now = seconds
        return self.pruning.prune(me, live)


# -- marking ---------------------------------------------------------------------------------------


def test_the_leader_marks_a_removed_replica_only_after_max_pruning_dissemination() -> None:
    r = Rounds()
    r.keys.put("k", GCounter({A: 1, C: 5}))
    assert r.at(0.0) == []
    assert r.pruning.removed_since == {C: 0.0}
    assert r.at(WAIT - 0.1) == []
    assert r.keys.markers("k") == {}
    assert r.at(WAIT) == ["k"]
    assert r.keys.markers("k") == {C: Initialized(A, frozenset({"a"}))}
    assert r.keys.get("k") == GCounter({A: 1, C: 5})  # marked, not pruned yet
    assert r.at(WAIT + 1) == []  # marked once


def test_only_keys_that_hold_the_removed_replica_are_marked() -> None:
    r = Rounds()
    r.keys.put("holds c", GCounter({C: 5}))
    r.keys.put("holds a", GCounter({A: 1}))
    r.keys.put("a set", GSet(["x"]))
    r.at(0.0)
    assert r.at(WAIT) == ["holds c"]
    assert r.keys.markers("holds a") == {}
    assert r.keys.markers("a set") == {}


def test_a_key_already_marked_is_not_marked_again() -> None:
    """Another node's marker keeps its owner and its ``seen``; a fresh one would start over."""
    r = Rounds()
    theirs = Initialized(B, frozenset({"b"}))
    r.keys.put("k", GCounter({C: 5}), markers={C: theirs})
    r.at(0.0)
    assert r.at(WAIT) == []
    assert r.keys.markers("k") == {C: theirs}


def test_a_non_leader_never_marks() -> None:
    r = Rounds()
    r.keys.put("k", GCounter({B: 1, C: 5}))
    for seconds in (0.0, WAIT, 10 * WAIT, 1000 * WAIT):
        assert r.at(seconds, me=B) == []
    assert r.keys.markers("k") == {}
    assert r.pruning.removed_since == {C: 0.0}  # it does track them


def test_the_leader_is_the_smallest_live_name() -> None:
    r = Rounds()
    r.keys.put("k", GCounter({C: 5}))
    live = {"b": B, "d": D}  # a is gone too
    r.at(0.0, me=B, live=live)
    assert r.at(WAIT, me=B, live=live) == ["k"]
    assert r.keys.markers("k") == {C: Initialized(B, frozenset({"b"}))}


def test_an_earlier_start_of_a_live_node_counts_as_removed() -> None:
    r = Rounds()
    old_b = ReplicaId("b", 0)
    r.keys.put("k", GCounter({old_b: 2, B: 1}))
    r.at(0.0)
    assert r.at(WAIT) == ["k"]
    assert r.keys.markers("k") == {old_b: Initialized(A, frozenset({"a"}))}


def test_a_replica_that_comes_back_starts_its_wait_over() -> None:
    """A node merely new counts as removed until it is live: the wait is for that."""
    r = Rounds()
    r.keys.put("k", GCounter({C: 5}))
    r.at(0.0)
    r.at(200.0, live={**LIVE, "c": C})
    assert r.pruning.removed_since == {}
    r.at(250.0)
    assert r.at(WAIT + 100.0) == []
    assert r.at(250.0 + WAIT) == ["k"]


def test_a_round_walks_every_value_only_while_a_replica_it_knows_of_is_removed() -> None:
    """A walk over every value costs about a second at 300,000 keys: a round looks at the
    values written since the last one, and walks them all only to tell which removed replicas
    the data still holds."""
    r = Rounds()
    for i in range(5):
        r.keys.put(f"k{i}", GCounter({A: i + 1, B: 1}))
    r.at(0.0)
    r.at(1.0)
    assert r.pruning.walks == 0  # every replica live
    r.keys.put("holds c", GCounter({C: 5}))  # written since: a replica no longer live
    r.at(2.0)
    assert (r.pruning.walks, r.pruning.removed_since) == (1, {C: 2.0})
    r.at(3.0)
    assert (r.pruning.walks, r.pruning.removed_since) == (2, {C: 2.0})  # held still
    r.keys.expire("holds c")  # gone from the data: the next walk finds no removed replica
    r.at(4.0)
    assert (r.pruning.walks, r.pruning.removed_since) == (3, {})
    r.at(5.0)
    r.at(6.0)
    assert r.pruning.walks == 3
    # A live replica removed (a node left): walked for, found, and its wait starts.
    r.at(7.0, live={"a": A})
    assert (r.pruning.walks, r.pruning.removed_since) == (4, {B: 7.0})


def test_a_round_with_nothing_to_mark_prunes_a_marker_every_live_node_has_seen() -> None:
    """Only a key with a marker can change when nothing is to be marked: the round looks at
    those keys alone, and still performs a marker this node owns."""
    r = Rounds()
    r.keys.put("plain", GCounter({A: 1}))
    r.keys.put("k", GCounter({A: 1, C: 5}), markers={C: Initialized(A, frozenset({"a", "b"}))})
    assert r.at(0.0) == ["k"]
    assert r.keys.get("k") == GCounter({A: 1 + 5})
    assert isinstance(r.keys.markers("k")[C], Performed)


# -- pruning ---------------------------------------------------------------------------------------


def test_the_owner_prunes_only_when_every_live_node_has_seen_the_marker() -> None:
    r = Rounds()
    r.keys.put("k", GCounter({A: 1, C: 5}), markers={C: Initialized(A, frozenset({"a"}))})
    assert r.at(0.0) == []
    live = {**LIVE, "d": D}
    r.keys.put("k", GCounter({A: 1, C: 5}), markers={C: Initialized(A, frozenset({"a", "b"}))})
    assert r.at(1.0, live=live) == []  # d has not seen it
    assert r.at(2.0) == ["k"]
    assert r.keys.get("k") == GCounter({A: 6})  # C's 5 collapsed into the owner's slot
    assert r.keys.markers("k") == {C: Performed(r.ms.now + int(TTL * 1000))}
    assert C in r.keys.pruned


def test_a_seen_set_with_nodes_no_longer_live_is_enough() -> None:
    r = Rounds()
    seen = frozenset({"a", "b", "x"})
    r.keys.put("k", GCounter({A: 1, C: 5}), markers={C: Initialized(A, seen)})
    assert r.at(0.0) == ["k"]
    assert r.keys.get("k") == GCounter({A: 6})


def test_only_the_owner_prunes_and_it_need_not_be_the_leader() -> None:
    r = Rounds()
    everyone = frozenset({"a", "b"})
    r.keys.put("owned by b", GCounter({C: 5}), markers={C: Initialized(B, everyone)})
    r.keys.put("owned by a", GCounter({C: 5}), markers={C: Initialized(A, everyone)})
    assert r.at(0.0, me=B) == ["owned by b"]
    assert r.keys.get("owned by b") == GCounter({B: 5})
    assert r.keys.get("owned by a") == GCounter({C: 5})
    assert r.keys.markers("owned by a") == {C: Initialized(A, everyone)}


def test_the_leader_alone_marks_and_prunes_in_one_round() -> None:
    r = Rounds()
    r.keys.put("k", GCounter({A: 1, C: 5}))
    alone = {"a": A}
    r.at(0.0, live=alone)
    assert r.at(WAIT, live=alone) == ["k"]
    assert r.keys.get("k") == GCounter({A: 6})
    assert isinstance(r.keys.markers("k")[C], Performed)


def test_a_durable_keys_marker_lives_for_the_durable_ttl() -> None:
    r = Rounds(
        Settings(
            store="sqlite:///x.db",
            durable_keys=("d*",),
            pruning_marker_ttl=60.0,
            durable_pruning_marker_ttl=600.0,
        )
    )
    everyone = frozenset({"a", "b"})
    r.keys.put("d1", GCounter({C: 5}), markers={C: Initialized(A, everyone)})
    r.keys.put("m1", GCounter({C: 5}), markers={C: Initialized(A, everyone)})
    assert sorted(r.at(0.0)) == ["d1", "m1"]
    assert r.keys.markers("d1") == {C: Performed(r.ms.now + 600_000)}
    assert r.keys.markers("m1") == {C: Performed(r.ms.now + 60_000)}


# -- expiring markers ------------------------------------------------------------------------------


def test_performed_markers_expire_by_the_ms_clock() -> None:
    r = Rounds()
    r.keys.put("k", GCounter({A: 1}), markers={C: Performed(5000), D: Performed(9000)})
    r.ms.now = 4999
    r.clock.now = 1e9  # the monotonic clock does not matter
    assert r.pruning.expire_markers(LIVE) == []
    r.ms.now = 5000
    assert r.pruning.expire_markers(LIVE) == ["k"]
    assert r.keys.markers("k") == {D: Performed(9000)}
    assert r.keys.get("k") == GCounter({A: 1})
    r.ms.now = 9000
    assert r.pruning.expire_markers(LIVE) == ["k"]
    assert r.keys.markers("k") == {}
    assert r.keys.keys_with_markers() == []


def test_initialized_markers_of_an_owner_that_is_gone_are_dropped() -> None:
    r = Rounds()
    live = {**LIVE, "d": D}
    r.keys.put("owner live", GCounter({C: 1}), markers={C: Initialized(B, frozenset({"b"}))})
    r.keys.put(
        "owner gone",
        GCounter({C: 1}),
        markers={C: Initialized(ReplicaId("x", 1), frozenset({"x"}))},
    )
    r.keys.put(
        "owner restarted",
        GCounter({C: 1}),
        markers={C: Initialized(ReplicaId("d", 0), frozenset({"d"}))},
    )
    assert sorted(r.pruning.expire_markers(live)) == ["owner gone", "owner restarted"]
    assert r.keys.markers("owner live") == {C: Initialized(B, frozenset({"b"}))}
    assert r.keys.markers("owner gone") == {}
    assert r.keys.markers("owner restarted") == {}


def test_a_key_marked_again_after_its_owner_left_is_marked_by_the_leader() -> None:
    r = Rounds()
    r.keys.put("k", GCounter({C: 1}), markers={C: Initialized(ReplicaId("x", 1), frozenset({"x"}))})
    r.at(0.0)
    r.ms.now += 1
    assert r.pruning.expire_markers(LIVE) == ["k"]
    assert r.at(WAIT) == ["k"]
    assert r.keys.markers("k") == {C: Initialized(A, frozenset({"a"}))}


# -- cleaned and seen_here -------------------------------------------------------------------------


def test_cleaned_removes_the_slots_of_performed_markers_only() -> None:
    value = GCounter({A: 1, C: 5, D: 7})
    markers: dict[ReplicaId, Marker] = {
        C: Performed(1),
        D: Initialized(A, frozenset({"a"})),
    }
    assert cleaned(value, markers) == GCounter({A: 1, D: 7})
    assert cleaned(value, {}) is value
    a_set = GSet(["x"])
    assert cleaned(a_set, markers) is a_set


def test_cleaned_removes_a_pruned_replicas_orset_dots() -> None:
    value = ORSet().add(C, "only c").add(C, "then a").add(A, "then a").add(A, "kept")
    assert cleaned(value, {C: Performed(1)}).value == {"kept", "then a"}


def test_seen_here_adds_this_node_and_drops_expired_performed_markers() -> None:
    markers: dict[ReplicaId, Marker] = {
        C: Initialized(B, frozenset({"b"})),
        D: Performed(1000),
        ReplicaId("e", 1): Performed(1001),
    }
    assert seen_here(markers, A, 1000) == {
        C: Initialized(B, frozenset({"a", "b"})),
        ReplicaId("e", 1): Performed(1001),
    }


# -- merge_payload ---------------------------------------------------------------------------------

NOW_MS = 1_700_000_000_000
FAR = NOW_MS + 10**9


def merge(keys: KeyTable, key: object, payload: object, max_bytes: int = MB) -> Merge | None:
    return merge_payload(keys, key, payload, me=A, max_bytes=max_bytes, at_ms=NOW_MS)


def table(**values: GCounter | ORSet) -> KeyTable:
    keys = KeyTable(lambda _key: None)
    for key, value in values.items():
        keys.put(key, value)
    return keys


def test_a_new_key_takes_the_peers_value() -> None:
    keys = table()
    value = GCounter({B: 3})
    assert merge(keys, "k", encode(value)) == Merge(value, encode(value), {}, changed=True)


def test_a_merge_joins_both_values() -> None:
    keys = table(k=GCounter({A: 1, B: 1}))
    result = merge(keys, "k", encode(GCounter({B: 4})))
    assert result is not None
    assert result.value == GCounter({A: 1, B: 4})
    assert result.raw == encode(GCounter({A: 1, B: 4}))
    assert result.changed


def test_a_tombstone_wins() -> None:
    keys = table(k=GCounter({A: 1}))
    assert merge(keys, "k", TOMBSTONE) == Merge(None, TOMBSTONE, {}, changed=True)
    keys.delete("k")
    assert merge(keys, "k", encode(GCounter({B: 9}))) is None  # deleted stays deleted
    assert merge(keys, "k", TOMBSTONE) is None
    assert merge(keys, "k", "not even bytes") is None


def test_a_value_of_another_type_is_refused() -> None:
    keys = table(k=GCounter({A: 1}))
    with pytest.raises(TypeError, match="ORSet for a key holding a GCounter"):
        merge(keys, "k", encode(ORSet().add(B, "x")))


@pytest.mark.parametrize("payload", ["text", None, 7, bytearray(b"x"), [b""]])
def test_a_payload_that_is_not_bytes_is_refused(payload: object) -> None:
    with pytest.raises(TypeError, match="not bytes"):
        merge(table(k=GCounter({A: 1})), "k", payload)


def test_markers_that_say_this_node_was_pruned_are_refused() -> None:
    keys = table(k=GCounter({A: 1}))
    for marker in (Performed(FAR), Initialized(B, frozenset({"b"}))):
        payload = join_envelope(encode(GCounter({B: 2})), {A: marker})
        with pytest.raises(PrunedHere):
            merge(keys, "k", payload)
    assert keys.get("k") == GCounter({A: 1})
    assert keys.markers("k") == {}


def test_a_marker_for_an_earlier_start_of_this_node_is_merged() -> None:
    earlier = ReplicaId("a", 0)
    keys = table(k=GCounter({A: 1, earlier: 4}))
    payload = join_envelope(encode(GCounter({B: 4})), {earlier: Performed(FAR)})
    result = merge(keys, "k", payload)
    assert result is not None
    assert result.value == GCounter({A: 1, B: 4})
    assert result.markers == {earlier: Performed(FAR)}


def test_a_merged_value_over_max_bytes_is_refused() -> None:
    mine, theirs = GCounter({A: 1}), GCounter({B: 2})
    limit = max(len(encode(mine)), len(encode(theirs)))
    assert len(encode(mine.merge(theirs))) > limit
    keys = table(k=mine)
    with pytest.raises(ValueError, match="exceeds max_value_bytes"):
        merge(keys, "k", encode(theirs), max_bytes=limit)
    assert keys.get("k") == mine
    assert merge(keys, "k", encode(theirs), max_bytes=limit + 100) is not None


def test_an_identical_payload_changes_nothing() -> None:
    value = GCounter({A: 1, B: 2})
    keys = table(k=value)
    assert merge(keys, "k", encode(value)) is None
    assert merge(keys, "k", encode(GCounter({B: 1}))) is None  # already included


def test_markers_alone_are_a_change_of_markers_not_of_the_value() -> None:
    value = GCounter({A: 1})
    keys = table(k=value)
    marker = Initialized(B, frozenset({"b"}))
    result = merge(keys, "k", join_envelope(encode(value), {C: marker}))
    assert result == Merge(
        value, encode(value), {C: Initialized(B, frozenset({"a", "b"}))}, changed=False
    )


@pytest.mark.parametrize("key", [7, None, b"k", "", "a\x00b", "\ud800"])
def test_a_bad_key_is_refused(key: object) -> None:
    with pytest.raises(ValueError, match="key must"):
        merge(table(), key, encode(GCounter({B: 1})))


def test_a_pruned_replicas_slot_is_cleaned_from_the_local_value() -> None:
    """The peer pruned C (collapsing its 5 into b's slot): its marker cleans C's 5 out of the
    value here before the merge, so the 5 is not counted twice."""
    keys = table(k=GCounter({A: 1, C: 5}))
    theirs = GCounter({C: 5}).prune(C, B)
    payload = join_envelope(encode(theirs), {C: Performed(FAR)})
    result = merge(keys, "k", payload)
    assert result is not None
    assert result.value == GCounter({A: 1, B: 5})
    assert result.value.value == 6
    assert result.markers == {C: Performed(FAR)}


def test_a_pruned_replicas_slot_is_cleaned_from_the_incoming_value() -> None:
    """This node holds C's Performed marker; a peer that has not heard of it sends C's slot
    back: it must not return."""
    keys = KeyTable(lambda _key: None)
    keys.put("k", GCounter({B: 5, A: 1}), markers={C: Performed(FAR)})
    result = merge(keys, "k", encode(GCounter({A: 1, C: 5})))
    assert result is None  # nothing of the peer's is new once C is cleaned
    result = merge(keys, "k", encode(GCounter({A: 2, C: 5})))
    assert result is not None
    assert result.value == GCounter({A: 2, B: 5})
    assert result.markers == {C: Performed(FAR)}


def test_a_pruned_replicas_dots_are_cleaned_from_an_incoming_orset() -> None:
    keys = KeyTable(lambda _key: None)
    keys.put("k", ORSet().add(A, "x"), markers={C: Performed(FAR)})
    result = merge(keys, "k", encode(ORSet().add(C, "from c").add(B, "from b")))
    assert result is not None
    assert result.value is not None
    assert result.value.value == {"x", "from b"}


def test_a_new_key_arriving_with_a_performed_marker_is_cleaned_too() -> None:
    keys = table()
    payload = join_envelope(encode(GCounter({B: 1, C: 5})), {C: Performed(FAR)})
    result = merge(keys, "k", payload)
    assert result is not None
    assert result.value == GCounter({B: 1})


def test_an_expired_performed_marker_that_arrives_is_dropped() -> None:
    keys = table()
    payload = join_envelope(encode(GCounter({B: 1, C: 5})), {C: Performed(NOW_MS)})
    result = merge(keys, "k", payload)
    assert result is not None
    assert result.markers == {}
    assert result.value == GCounter({B: 1, C: 5})
