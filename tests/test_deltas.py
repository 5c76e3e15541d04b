"""The delta queue (DeltaQueue): deltas of one key merge until the next propagation, a delete
replaces them by a tombstone, propagations are numbered 1, 2, 3 (an empty one uses no number),
an expired key is dropped; and the receiver's gap detection per origin, which a new incarnation
starts over.  A property: whatever the interleaving of adds and takes, merging everything taken
gives what merging everything added gives.  Then propagations as sent (deltas with only their
Performed markers) and as received (after a gap, the keys that need causal delivery are asked for).
"""

from __future__ import annotations

from functools import reduce

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thespian_dd import GCounter, ORSet, ReplicaId, codec
from thespian_dd._canonical import Limits
from thespian_dd._runtime.deltas import DeltaQueue
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.markers import Initialized, Marker, Performed, split_envelope
from thespian_dd._runtime.protocol import PROTOCOL_VERSION, TOMBSTONE, DeltaPropagation

pytestmark = pytest.mark.timeout(60)

A, B, C = ReplicaId("a", 1), ReplicaId("b", 1), ReplicaId("c", 1)


def test_deltas_of_one_key_merge_into_one() -> None:
    q = DeltaQueue()
    q.add("k", GCounter().increment(A, 2))
    q.add("k", GCounter().increment(B, 3))
    q.add("k", GCounter().increment(A, 5))
    assert len(q) == 1
    assert q.take() == {"k": GCounter({A: 5, B: 3})}


def test_deltas_of_different_keys_stay_apart() -> None:
    q = DeltaQueue()
    q.add("x", ORSet().add(A, 1))
    q.add("y", ORSet().add(A, 2))
    taken = q.take()
    assert set(taken) == {"x", "y"}
    assert taken["x"] is not None
    assert taken["x"].value == {1}
    assert taken["y"] is not None
    assert taken["y"].value == {2}


def test_a_tombstone_replaces_the_deltas_queued_before_it() -> None:
    q = DeltaQueue()
    q.add("k", GCounter().increment(A, 2))
    q.add("k", None)
    assert q.take() == {"k": None}


def test_take_numbers_propagations_and_an_empty_take_uses_no_number() -> None:
    q = DeltaQueue()
    assert q.seq == 0
    assert q.take() == {}
    assert q.seq == 0
    for expected in (1, 2, 3):
        q.add("k", GCounter().increment(A, expected))
        assert q.take() == {"k": GCounter({A: expected})}
        assert q.seq == expected
        assert q.take() == {}
        assert q.seq == expected
    assert len(q) == 0


def test_a_dropped_key_is_not_propagated() -> None:
    q = DeltaQueue()
    q.add("expired", GCounter().increment(A, 1))
    q.add("kept", GCounter().increment(A, 2))
    q.drop("expired")
    q.drop("never queued")
    assert q.take() == {"kept": GCounter({A: 2})}


def test_dropping_the_only_key_leaves_nothing_to_number() -> None:
    q = DeltaQueue()
    q.add("expired", GCounter().increment(A, 1))
    q.drop("expired")
    assert q.take() == {}
    assert q.seq == 0


# -- gaps ------------------------------------------------------------------------------------------


def test_the_first_propagation_heard_from_an_origin_is_no_gap() -> None:
    q = DeltaQueue()
    assert not q.received(A, 1)
    assert not q.received(B, 17)  # a node that started hearing late


def test_the_next_number_is_no_gap_and_a_skip_or_a_repeat_is() -> None:
    q = DeltaQueue()
    assert not q.received(A, 1)
    assert not q.received(A, 2)
    assert q.received(A, 4)  # 3 was lost
    assert not q.received(A, 5)  # counted from 4
    assert q.received(A, 5)  # a repeat
    assert q.received(A, 3)  # an old one
    assert not q.received(A, 4)


def test_origins_are_counted_apart() -> None:
    q = DeltaQueue()
    assert not q.received(A, 1)
    assert not q.received(B, 7)
    assert not q.received(A, 2)
    assert not q.received(B, 8)
    assert q.received(B, 10)
    assert not q.received(A, 3)


def test_a_new_incarnation_starts_its_own_count() -> None:
    q = DeltaQueue()
    assert not q.received(A, 1)
    assert not q.received(A, 2)
    q.forget(A)
    assert not q.received(A, 1)  # the replacement numbers from 1 again
    assert not q.received(A, 2)
    q.forget(C)  # never heard of: harmless


def test_forgetting_one_origin_keeps_the_others_count() -> None:
    q = DeltaQueue()
    q.received(A, 1)
    q.received(B, 1)
    q.forget(A)
    assert q.received(B, 1)


def test_the_queue_numbers_what_a_receiver_sees_without_gaps() -> None:
    sender, receiver = DeltaQueue(), DeltaQueue()
    for i in range(5):
        sender.add("k", GCounter().increment(A, i + 1))
        sender.take()
        assert not receiver.received(A, sender.seq)
        sender.take()  # nothing queued: no number, so still no gap


def test_a_propagation_after_one_numbered_with_a_non_number_is_a_gap_not_an_error() -> None:
    """History (the peer's sequence numbers arrive unchecked from DeltaPropagation.seq):

    1. ``received(A, "1")``: the first from A, no gap; ``"1"`` is stored as A's last number.
    2. ``received(A, 2)`` raises ``TypeError: can only concatenate str (not "int") to str``
       from ``last + 1``, after it stored 2: the Replicator refuses the whole propagation as
       malformed (none of its deltas is merged).
    3. ``received(A, 3)`` is then "no gap", so the deltas of propagation 2 are lost without the
       receiver asking for the whole values of the keys that need causal delivery.

    The stored number is kept "as the peer sent it: compared, never added to", but it is added
    to; a number that cannot be followed should count as a gap instead.
    """
    q = DeltaQueue()
    assert not q.received(A, "1")
    assert q.received(A, 2)


# -- a property ------------------------------------------------------------------------------------

KEYS = ["x", "y", "z"]
increments = st.tuples(st.sampled_from(KEYS), st.sampled_from([A, B, C]), st.integers(1, 5))
steps = st.lists(st.one_of(increments, st.just("take")), max_size=40)


@given(steps)
def test_merging_everything_taken_equals_merging_everything_added(
    plan: list[tuple[str, ReplicaId, int] | str],
) -> None:
    """Each key's counter is incremented on some replica and its delta queued (as the
    Replicator does); takes come in between.  Reference: per key, the merge of every delta
    added.  Also: the number of the last propagation is the number of takes that sent some."""
    q = DeltaQueue()
    counters: dict[str, GCounter] = {}
    added: dict[str, list[GCounter]] = {}
    taken: dict[str, list[GCounter]] = {}
    sends = 0
    for step in [*plan, "take"]:
        if step == "take":
            batch = q.take()
            sends += 1 if batch else 0
            for key, delta in batch.items():
                assert delta is not None
                assert isinstance(delta, GCounter)
                taken.setdefault(key, []).append(delta)
            assert len(q) == 0
            continue
        assert isinstance(step, tuple)
        key, replica, n = step
        counter = counters.get(key, GCounter()).increment(replica, n)
        delta = counter.delta
        assert delta is not None
        counters[key] = counter.reset_delta()
        q.add(key, delta)
        added.setdefault(key, []).append(delta)
    assert q.seq == sends
    assert set(taken) == set(added)
    for key, deltas in added.items():
        assert reduce(GCounter.merge, taken[key]) == reduce(GCounter.merge, deltas)
        assert reduce(GCounter.merge, taken[key]).value == counters[key].value


# -- propagations, as sent and received --------------------------------------------------------


def test_a_propagation_carries_the_queued_deltas_their_performed_markers_and_last_use() -> None:
    """A delta carries only its key's Performed markers (it is not the sender's whole state, so
    it must not claim the sender has seen an Initialized marker), a tombstone as TOMBSTONE, and
    the last use of keys that expire."""
    gone, other = ReplicaId("gone", 1), ReplicaId("other", 1)
    keys = KeyTable(lambda key: 60.0 if key == "x" else None, clock=lambda: 100.0)
    markers: dict[ReplicaId, Marker] = {
        gone: Performed(10**15),
        other: Initialized(A, frozenset({"a"})),
    }
    keys.put("x", GCounter().increment(A, 1), markers=markers)
    keys.touch("x")
    q = DeltaQueue()
    assert q.propagation(A, keys) is None  # nothing queued: nothing sent, no number used
    q.add("x", GCounter().increment(A, 1))
    q.add("y", None)
    message = q.propagation(A, keys)
    assert message is not None
    assert (message.sender, message.seq) == (A, 1)
    assert message.entries["y"] == TOMBSTONE
    sent_markers, raw = split_envelope(message.entries["x"], Limits())
    assert sent_markers == {gone: Performed(10**15)}
    assert codec.decode(raw) == GCounter().increment(A, 1)
    assert message.used == {"x": 100.0}


def test_after_a_gap_keys_that_need_causal_delivery_are_asked_for_and_the_rest_merged() -> None:
    keys = KeyTable(lambda _key: None)
    keys.put("set", ORSet().add(B, "e"))
    keys.put("count", GCounter().increment(B, 1))
    merged: list[object] = []

    def merge(key: object, payload: object, origin: str, used: object) -> bool:
        merged.append(key)
        return True

    def propagation(seq: int) -> DeltaPropagation:
        entries = {"set": b"delta", "count": b"delta", "new": b"delta"}
        return DeltaPropagation(PROTOCOL_VERSION, A, seq, entries)

    q = DeltaQueue()
    assert q.on_propagation(propagation(1), keys, merge) == []
    assert merged == ["set", "count", "new"]
    merged.clear()
    assert q.on_propagation(propagation(3), keys, merge) == ["set"]  # 2 was lost
    assert merged == ["count", "new"]


def test_a_propagation_whose_entries_are_no_dict_is_ignored_and_numbers_nothing() -> None:
    q = DeltaQueue()
    bad = DeltaPropagation(PROTOCOL_VERSION, A, 5, ["not", "a", "dict"])  # type: ignore[arg-type]
    assert q.on_propagation(bad, KeyTable(lambda _key: None), lambda *_: True) == []
    assert not q.received(A, 1)  # the first heard from A: 5 was not counted
