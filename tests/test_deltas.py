"""The delta queue (DeltaQueue): deltas of one key merge until the next propagation, a delete
replaces them by a tombstone, propagations are numbered 1, 2, 3 (an empty one uses no number),
an expired key is dropped; and the receiver's gap detection per origin, which a new incarnation
starts over.  A property: whatever the interleaving of adds and takes, merging everything taken
gives what merging everything added gives.  Then propagations as sent (deltas with only their
Performed markers) and as received (after a gap, the keys that need causal delivery are asked for).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thespian_dd import GCounter, GSet, ORSet, ReplicaId, codec
from thespian_dd._canonical import Limits
from thespian_dd._runtime.deltas import DeltaQueue, rounds_to_reach_all, slice_size
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.markers import Initialized, Marker, Performed, split_envelope
from thespian_dd._runtime.protocol import PROTOCOL_VERSION, TOMBSTONE, DeltaPropagation

pytestmark = pytest.mark.timeout(60)

A, B, C = ReplicaId("a", 1), ReplicaId("b", 1), ReplicaId("c", 1)
P, Q, R, S, NEW = (ReplicaId(name, 1) for name in ("p", "q", "r", "s", "new"))


def tick(q: DeltaQueue, peers: tuple[ReplicaId, ...] = (P,), size: int = 8) -> dict[ReplicaId, Any]:
    """One tick to ``peers``: what each peer served gets, as (deltas, number)."""
    return {
        name: (due.deltas, n) for due in q.due(A, peers, size) for name, n in due.numbers.items()
    }


def test_deltas_of_one_key_merge_into_one() -> None:
    q = DeltaQueue()
    q.add("k", GCounter().increment(A, 2))
    q.add("k", GCounter().increment(B, 3))
    q.add("k", GCounter().increment(A, 5))
    assert tick(q) == {P: ({"k": GCounter({A: 5, B: 3})}, 1)}


def test_deltas_of_different_keys_stay_apart() -> None:
    q = DeltaQueue()
    q.add("x", ORSet().add(A, 1))
    q.add("y", ORSet().add(A, 2))
    taken, _ = tick(q)[P]
    assert set(taken) == {"x", "y"}
    assert taken["x"].value == {1}
    assert taken["y"].value == {2}


def test_a_tombstone_replaces_the_deltas_queued_before_it() -> None:
    q = DeltaQueue()
    q.add("k", GCounter().increment(A, 2))
    q.add("k", None)
    assert tick(q) == {P: ({"k": None}, 1)}


def test_each_peer_numbers_its_propagations_and_a_tick_with_nothing_uses_no_number() -> None:
    q = DeltaQueue()
    assert tick(q, (P, Q)) == {}
    for expected in (1, 2, 3):
        q.add("k", GCounter().increment(A, expected))
        assert tick(q, (P, Q)) == {
            P: ({"k": GCounter({A: expected})}, expected),
            Q: ({"k": GCounter({A: expected})}, expected),
        }
        assert tick(q, (P, Q)) == {}
    q.add("k", GCounter().increment(A, 4))
    assert tick(q, (P,)) == {P: ({"k": GCounter({A: 4})}, 4)}  # Q away: P's count only
    assert (q.held(), q.waiting) == (0, False)


def warm(q: DeltaQueue, peers: tuple[ReplicaId, ...]) -> None:
    """Each of ``peers`` gets its first propagation (number 1): from now on it is served in
    turn, a few a tick."""
    q.add("warm", GCounter().increment(A, 1))
    assert {n for _, n in tick(q, peers, size=1).values()} == {1}


def test_a_dropped_key_is_not_propagated_even_from_a_batch_some_peers_had() -> None:
    q = DeltaQueue()
    warm(q, (P, Q))
    q.add("expired", GCounter().increment(A, 1))
    q.add("kept", GCounter().increment(A, 2))
    assert set(tick(q, (P, Q), size=1)[P][0]) == {"expired", "kept"}
    q.drop("expired")
    q.drop("never queued")
    assert tick(q, (P, Q), size=1) == {Q: ({"kept": GCounter({A: 2})}, 2)}


def test_a_batch_emptied_by_expiry_sends_nothing_and_uses_no_number() -> None:
    q = DeltaQueue()
    warm(q, (P, Q))
    q.add("expired", GCounter().increment(A, 1))
    assert set(tick(q, (P, Q), size=1)) == {P}
    q.drop("expired")
    assert tick(q, (P, Q), size=1) == {}  # Q had nothing left to get
    assert (q.held(), q.waiting) == (0, False)
    q.add("k", GCounter().increment(A, 1))
    assert {p: n for p, (_, n) in tick(q, (P, Q)).items()} == {P: 3, Q: 2}


def test_dropping_the_only_key_leaves_nothing_to_send() -> None:
    q = DeltaQueue()
    q.add("expired", GCounter().increment(A, 1))
    q.drop("expired")
    assert tick(q) == {}
    assert not q.waiting


# -- a few peers a tick ----------------------------------------------------------------------------


def test_the_defaults_reach_every_peer_within_a_second_a_few_peers_a_tick() -> None:
    assert rounds_to_reach_all(2.0, 0.2) == 5  # the node command's defaults: 5 ticks, 1 s
    assert rounds_to_reach_all(0.2, 0.1) == 1  # the test kit's: every peer every tick
    assert rounds_to_reach_all(1.0, 0.3) == 1
    assert rounds_to_reach_all(30.0, 0.1) == 150
    assert [slice_size(n, 5) for n in (0, 1, 2, 3, 10, 11, 31, 63)] == [0, 1, 2, 2, 2, 3, 7, 13]
    assert slice_size(31, 1) == 31


def test_peers_are_served_in_turn_each_once_and_a_later_one_gets_every_batch_merged() -> None:
    """Ten peers, three a tick once each had its first propagation: the batch of a tick goes
    to a0-a2, then a3-a5 get it with the next tick's batch in one propagation, and so on round
    the ring; a batch is held until every peer had it, and the timer is wanted until then."""
    peers = tuple(ReplicaId(f"a{i}", 1) for i in range(10))
    q = DeltaQueue()
    warm(q, peers)
    q.add("k", GCounter().increment(A, 1))
    first = tick(q, peers, size=3)
    assert set(first) == {peers[0], peers[1], peers[2]}
    assert first[peers[0]] == ({"k": GCounter({A: 1})}, 2)
    assert (q.held(), q.waiting) == (1, True)
    q.add("k", GCounter().increment(B, 1))
    second = tick(q, peers, size=3)
    assert set(second) == {peers[3], peers[4], peers[5]}
    assert second[peers[3]] == ({"k": GCounter({A: 1, B: 1})}, 2)  # both batches, merged
    third = tick(q, peers, size=3)
    assert set(third) == {peers[6], peers[7], peers[8]}
    fourth = tick(q, peers, size=3)  # a9, then round again: a0-a2 are owed the second batch
    assert set(fourth) == {peers[0], peers[1], peers[9]}
    assert fourth[peers[0]] == ({"k": GCounter({B: 1})}, 3)
    assert fourth[peers[9]] == ({"k": GCounter({A: 1, B: 1})}, 2)
    assert set(tick(q, peers, size=3)) == {peers[2]}
    assert (q.held(), q.waiting) == (0, False)
    assert tick(q, peers, size=3) == {}


def test_a_peer_never_sent_a_propagation_gets_its_first_at_once_numbered_1() -> None:
    """A node of an earlier release takes the first number it hears for a start: so each
    peer's first propagation is number 1 and holds every change since the peer was met.  A
    peer away before it had one is met anew when it is back."""
    q = DeltaQueue()
    warm(q, (P, Q))
    q.add("k", GCounter().increment(A, 1))
    assert set(tick(q, (P, Q, R), size=1)) == {P, R}  # R: met now, served outside the turn
    assert tick(q, (P, Q, R), size=1)[Q][1] == 2
    q.add("k", GCounter().increment(A, 2))
    tick(q, (P, Q), size=2)  # S is not there yet; nor is R
    q.add("k", GCounter().increment(A, 3))
    got = tick(q, (P, Q, R, S), size=1)
    assert got[S] == ({"k": GCounter({A: 3})}, 1)  # met now: from this tick on, no gap
    assert got[R][1] == 3  # had one already: missed a dropped batch, so a number skipped


def test_a_peer_away_holds_nothing_back_and_sees_a_gap_if_it_missed_a_batch() -> None:
    """p and q; q is away for a tick.  The batches go on without it (none is kept for it);
    when it is back, its next number skips one, so it asks for the whole values of the keys
    that need causal delivery.  Back while what it missed is still held, it gets it, no gap."""
    q = DeltaQueue()
    q.add("k", GCounter().increment(A, 1))
    assert tick(q, (P, Q))[Q][1] == 1
    q.add("k", GCounter().increment(A, 2))
    assert tick(q, (P,)) == {P: ({"k": GCounter({A: 2})}, 2)}
    assert (q.held(), q.waiting) == (0, False)
    q.add("k", GCounter().increment(A, 3))
    assert tick(q, (P, Q)) == {
        P: ({"k": GCounter({A: 3})}, 3),
        Q: ({"k": GCounter({A: 3})}, 3),  # 2 skipped: it missed the second batch
    }
    # Away while a peer still here is owed the batch: it is kept, and R gets it, no gap.
    q, four = DeltaQueue(), (P, Q, R, S)
    warm(q, four)
    q.add("k", GCounter().increment(A, 4))
    assert set(tick(q, four, size=1)) == {P}
    assert set(tick(q, (P, Q, S), size=1)) == {Q}  # R away
    assert (q.held(), q.waiting) == (1, True)  # S has not had it
    assert tick(q, four, size=1) == {R: ({"k": GCounter({A: 4})}, 2)}
    assert set(tick(q, four, size=1)) == {S}
    assert (q.held(), q.waiting) == (0, False)


def test_a_new_incarnation_of_this_node_numbers_its_propagations_from_1_again() -> None:
    """Pruned while it ran, this node goes on as a new incarnation: its peers hear a new origin,
    whose first propagation must be number 1 to be no gap; it meets each peer anew."""
    q = DeltaQueue()
    for n in (1, 2):
        q.add("k", GCounter().increment(A, n))
        assert tick(q, (P, Q))[P][1] == n
    q.add("k", GCounter().increment(A, 3))
    tick(q, (P,))  # Q away
    q.add("k", GCounter().increment(A, 4))
    again = ReplicaId("a", 2)
    sent = {p: n for due in q.due(again, (P, Q), 1) for p, n in due.numbers.items()}
    assert sent == {P: 1, Q: 1}  # both met anew, at once
    assert not DeltaQueue().received(again, sent[P])


def test_a_peer_met_later_gets_the_batches_from_then_on_and_no_gap() -> None:
    q = DeltaQueue()
    q.add("k", GCounter().increment(A, 1))
    tick(q, (P,))
    q.add("k", GCounter().increment(A, 2))
    assert tick(q, (P, NEW)) == {
        P: ({"k": GCounter({A: 2})}, 2),
        NEW: ({"k": GCounter({A: 2})}, 1),
    }


# -- gaps ------------------------------------------------------------------------------------------


def test_the_first_propagation_heard_from_an_origin_is_a_gap_unless_it_is_number_1() -> None:
    """An origin numbers what it sends each peer from 1: a first one numbered otherwise means
    the ones before it were lost (or it is a node of an earlier release, heard late)."""
    q = DeltaQueue()
    assert not q.received(A, 1)
    assert q.received(B, 17)
    assert not q.received(B, 18)


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
    assert not q.received(B, 1)
    assert not q.received(A, 2)
    assert not q.received(B, 2)
    assert q.received(B, 4)
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


def test_the_queue_numbers_what_each_receiver_sees_without_gaps() -> None:
    sender = DeltaQueue()
    receivers = {peer: DeltaQueue() for peer in (P, Q, R)}
    for i in range(6):
        sender.add("k", GCounter().increment(A, i + 1))
        for _ in range(3):  # one peer a tick: each gets the batches it has not had, merged
            for name, (_, number) in tick(sender, tuple(receivers), size=1).items():
                assert not receivers[name].received(A, number)


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
    assert q.received(A, "1")  # now a gap already: a first one must be the number 1
    assert q.received(A, 2)
    assert q.received(B, True)  # True == 1 in Python, but no number


# -- against a model: every peer gets each change once, or sees a gap -----------------------------

KEYS = ["x", "y", "z"]
PEERS = tuple(ReplicaId(f"a{i}", 1) for i in range(5))
steps = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(KEYS)),
        st.tuples(st.just("tick"), st.frozensets(st.sampled_from(PEERS)), st.integers(1, 5)),
        st.tuples(st.just("drop"), st.sampled_from(KEYS)),
    ),
    max_size=60,
)


@given(steps, st.integers(1, 5))
def test_every_peer_gets_each_change_once_or_sees_a_gap(
    plan: list[tuple[Any, ...]], size: int
) -> None:
    """Each change adds an element of its own to a key's GSet, so what a peer got shows which
    changes reached it.  Ticks go to random subsets of five peers (the reachable ones), a random
    number of them a tick; keys expire (are dropped) now and then.  Each peer's propagations
    pass through a receiver's gap check.  Then one more change, and ticks to every peer until
    none is owed.  For every peer (met: the last tick it came back, or first came, before it
    was sent anything):

    - its first propagation was number 1 (what a node of an earlier release, which takes any
      first number for a start, needs to see every later gap);
    - it got no change twice, and none made before it was met;
    - it got every change made from the tick it was met, or from the last propagation that
      showed it a gap (to this release's receiver and to an earlier one's alike), except those
      of a key dropped since, and none of a key dropped before it had them (an expired key is
      not propagated);
    - at most ``size`` peers a tick were served besides those getting their first;
    - at the end nothing is held, no tick is wanted, and the last change reached every peer
      within ``ceil(5 / size)`` ticks.
    """
    q = DeltaQueue()
    receivers = {name: DeltaQueue() for name in PEERS}
    batch_of: dict[int, int] = {}  # change -> the tick whose batch holds it
    key_of: dict[int, str] = {}
    dropped_at: dict[str, int] = {}  # key -> the last change made before its last drop
    met: dict[ReplicaId, int] = {}  # peer -> the first tick it was reachable at
    since: dict[ReplicaId, int] = {}  # peer -> the tick of its last propagation that showed a gap
    numbers: dict[ReplicaId, list[int]] = {name: [] for name in PEERS}  # as each peer got them
    since_earlier: dict[ReplicaId, int] = {}  # the same, to a receiver of an earlier release
    got: dict[ReplicaId, list[int]] = {name: [] for name in PEERS}
    forbidden: dict[ReplicaId, set[int]] = {}  # changes of a key dropped before they were had
    queued: list[int] = []
    previous: set[ReplicaId] = set()  # the peers of the tick before
    ticks = 0

    def run_tick(present: frozenset[ReplicaId], n: int) -> bool:
        nonlocal ticks
        ticks += 1
        for change in queued:
            batch_of[change] = ticks
        queued.clear()
        for name in present - previous:  # back (or new), and never sent anything: met now
            if not numbers[name]:
                met[name] = ticks
        previous.clear()
        previous.update(present)
        sent = False
        dues = q.due(A, present, n)
        assert sum(1 for due in dues for name in due.numbers if numbers[name]) <= n
        for due in dues:
            changes = [c for d in due.deltas.values() if isinstance(d, GSet) for c in d]
            for name, number in due.numbers.items():
                assert name in present
                sent = True
                got[name].extend(changes)
                if receivers[name].received(A, number):
                    since[name] = ticks
                if numbers[name] and number != numbers[name][-1] + 1:
                    since_earlier[name] = ticks
                numbers[name].append(number)
        return sent

    for step in [*plan, ("add", KEYS[0])]:
        if step[0] == "add":
            change = len(key_of)
            key_of[change] = step[1]
            queued.append(change)
            q.add(step[1], GSet([change]))
        elif step[0] == "drop":
            q.drop(step[1])
            for name in PEERS:  # what it has not had of the key, it never gets
                gone = {c for c, key in key_of.items() if key == step[1]} - set(got[name])
                forbidden.setdefault(name, set()).update(gone)
            dropped_at[step[1]] = len(key_of) - 1
            queued[:] = [c for c in queued if key_of[c] != step[1]]
        else:
            run_tick(step[1], step[2])
    last = len(key_of) - 1
    flush = 0
    while run_tick(frozenset(PEERS), size):
        flush += 1
        assert flush <= -(-len(PEERS) // size)
    assert (q.held(), q.waiting) == (0, False)
    for name in PEERS:
        assert len(got[name]) == len(set(got[name])), f"{name} got a change twice"
        assert all(batch_of[c] >= met[name] for c in got[name])
        assert not forbidden.get(name, set()) & set(got[name]), f"{name} got an expired key"
        assert last in got[name]
        assert numbers[name][0] == 1
        for gaps in (since, since_earlier):
            owed = {
                c
                for c, batch in batch_of.items()
                if batch >= max(met[name], gaps.get(name, 0)) and c > dropped_at.get(key_of[c], -1)
            }
            assert owed <= set(got[name]), f"{name} missed {sorted(owed - set(got[name]))}"


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
    q.add("x", GCounter().increment(A, 1))
    q.add("y", None)
    (due,) = q.due(A, [P], 1)
    message = q.message(A, keys, due.deltas, due.numbers[P])
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
