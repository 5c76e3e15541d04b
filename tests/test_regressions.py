"""Every counterexample found, pinned as a named test with its history spelled out.

The first two came from checks written outside the project, through the public API; the rest
were found by the reference models (tests/test_models.py) and shrunk by Hypothesis.  Each test
says what was lost before the fix.  Replicas are n1, n2, n3 (incarnation 1); ``r1``, ``r2``...
name the state a replica holds after the step.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from thespian_dd import (
    GCounter,
    MVRegister,
    ORMap,
    ORMultiMap,
    ORSet,
    PNCounter,
    PNCounterMap,
    ReplicaId,
)

n1, n2, n3, n4 = (ReplicaId(f"n{i}", 1) for i in range(1, 5))


def _add(node: ReplicaId, element: object) -> Callable[[ORSet], ORSet]:
    return lambda s: s.add(node, element)


# -- found from outside --------------------------------------------------------------------------


def test_a_value_recreated_by_another_replica_does_not_make_a_later_write_reuse_a_dot() -> None:
    r1 = ORMultiMap().add_binding(n1, "k", "A")
    r3 = r1.add_binding(n3, "k", "Y")  # concurrent with n2's remove: it keeps A
    r2 = r1.remove(n2, "k").add_binding(n2, "k", "Z")  # n2 removes k, then creates it again
    r1b = r1.merge(r2).add_binding(n1, "k", "X")
    # Before: n1's X took the inner dot of A, (n1, 1), and the merge dropped both X and A.
    assert r1b.value == {"k": {"X", "Z"}}
    assert r1b.merge(r3).value == {"k": {"A", "X", "Y", "Z"}}
    assert r3.merge(r1b).value == {"k": {"A", "X", "Y", "Z"}}


def test_an_mvregister_value_recreated_by_another_replica_keeps_a_later_assign() -> None:
    r1 = ORMap().update(n1, "k", MVRegister(), lambda r: r.assign(n1, "A"))
    r3 = r1.update(n3, "k", MVRegister(), lambda r: r.assign(n3, "Y"))
    r2 = r1.remove(n2, "k").update(n2, "k", MVRegister(), lambda r: r.assign(n2, "Z"))
    r1b = r1.merge(r2).update(n1, "k", MVRegister(), lambda r: r.assign(n1, "X"))
    # Before: X reused A's dot and was dropped: {"Y"}.  X overwrote Z; Y overwrote A.
    assert r1b.merge(r3).value == {"k": {"X", "Y"}}


def test_a_set_built_anew_in_a_map_update_is_refused() -> None:
    r1 = ORMap().update(n1, "k", ORSet(), _add(n1, "A"))
    r2 = r1.update(n2, "k", ORSet(), _add(n2, "C"))  # concurrent with what follows
    # Before: accepted; the fresh set reused (n1, 1) and the merge with r2 dropped B.
    with pytest.raises(ValueError, match="not an inflation"):
        r1.update(n1, "k", ORSet(), lambda _s: ORSet().add(n1, "B"))
    assert r1.update(n1, "k", ORSet(), _add(n1, "B")).merge(r2).value == {"k": {"A", "B", "C"}}


def test_a_top_level_set_built_anew_is_not_an_inflation_of_the_current_one() -> None:
    # The Replicator's check (its multi-node test is in test_replicator.py): before, the
    # Update was acknowledged, and gossip then erased both A and B on every node.
    current = ORSet().add(n1, "A")
    assert not ORSet().add(n1, "B").is_inflation_of(current)
    assert current.add(n1, "B").is_inflation_of(current)


# -- counters in maps ----------------------------------------------------------------------------


def test_increments_of_a_recreated_counter_are_not_hidden_under_the_old_total() -> None:
    r = PNCounterMap().increment(n1, "hits", 5)
    concurrent = r.increment(n2, "hits", 1)  # has not seen the remove: keeps n1's 5
    recreated = r.remove(n1, "hits").increment(n1, "hits", 2)
    # Before: slot n1 merged as max(5, 2): the 2 new increments were lost (6, not 8).
    assert recreated.merge(concurrent).value == {"hits": 8}
    assert concurrent.merge(recreated).value == {"hits": 8}


def test_decrements_of_a_recreated_counter_start_above_the_old_decrements() -> None:
    r = PNCounterMap().increment(n1, "k", 10).decrement(n1, "k", 3)
    concurrent = r.increment(n2, "k", 1)
    recreated = r.remove(n1, "k").decrement(n1, "k", 2).increment(n1, "k", 20)
    # Each side has its own marks: neither the 2 nor the 20 hides under 3 or 10.
    assert recreated.merge(concurrent).value == {"k": 10 - 3 + 1 - 2 + 20}


def test_a_replica_whose_own_version_was_removed_writes_above_its_old_dots() -> None:
    # n3 re-creates k while n1's version w holds (n1, 2); n2 then removes w (it has not seen
    # n3's), and n4 keeps a copy of w it updated.  n1 goes on from n3's value: its next dot must
    # be above (n1, 2), which only n1's own marks of k remember.
    base = ORMap().update(n1, "k", ORSet(), _add(n1, "a"))
    w = base.update(n1, "k", ORSet(), _add(n1, "b"))
    recreated = base.remove(n3, "k").update(n3, "k", ORSet(), _add(n3, "z"))
    removed_w = w.remove(n2, "k")
    kept_w = w.update(n4, "k", ORSet(), _add(n4, "d"))
    r1 = w.merge(recreated).merge(removed_w)
    assert r1.value == {"k": {"z"}}
    r1 = r1.update(n1, "k", ORSet(), _add(n1, "X"))
    # Before (marks kept only for the map as a whole, applied to fresh keys): X took (n1, 2).
    assert r1.merge(kept_w).value == {"k": {"a", "b", "d", "X", "z"}}


# -- found by the reference models ---------------------------------------------------------------


def test_a_map_built_anew_cannot_reuse_a_version_dot_with_a_new_value() -> None:
    # ORMap, shrunk: n4 updates key s with a remove of an absent element (version (n4, 1): an
    # empty set); n1 gets that delta and adds x (replacing (n4, 1)); n4 then returns a map built
    # anew whose (n4, 1) holds {y}.  It is larger than the old (n4, 1), so the lattice alone
    # accepts it, but n1 has replaced (n4, 1): the merge dropped y.
    r4 = ORMap().update(n4, "s", ORSet(), lambda s: s.remove(n4, "x"))
    rebuilt = ORMap().update(n4, "s", ORSet(), _add(n4, "y"))
    assert r4.merge(rebuilt) == rebuilt  # a lattice inflation...
    assert not rebuilt.is_inflation_of(r4)  # ...but not an update: refused


def test_a_recreated_key_cannot_be_rebuilt_onto_a_reserved_dot() -> None:
    # ORMap of ORMap, shrunk: n1 adds x under m.a (inner dot (n1, 1)); n1 removes m; n1 then
    # builds a fresh set {y} for m.a.  The fresh set's (n1, 1) is at the reservation (n1, 1),
    # so the lattice accepts it, while x still holds (n1, 1) wherever the remove is unknown.
    def inner(modify: Callable[[ORSet], ORSet]) -> Callable[[ORMap], ORMap]:
        return lambda m: m.update(n1, "a", ORSet(), modify)

    r1 = ORMap().update(n1, "m", ORMap(), inner(_add(n1, "x")))
    removed = r1.remove(n1, "m")
    with pytest.raises(ValueError, match="not an inflation"):
        removed.update(n1, "m", ORMap(), inner(lambda _s: ORSet().add(n1, "y")))
    recreated = removed.update(n1, "m", ORMap(), inner(_add(n1, "y")))
    concurrent = r1.update(n2, "m", ORMap(), lambda m: m)  # n2 has not seen the remove
    assert recreated.merge(concurrent).value == {"m": {"a": {"x", "y"}}}


def test_a_value_rebuilt_equal_to_the_current_one_writes_nothing() -> None:
    # MVRegister, shrunk: n1 assigns x; then returns MVRegister().assign(n1, "x"), which is the
    # current state exactly.  Nothing is lost and nothing written: a concurrent assign by n2 that
    # saw x still overwrites it.  (The model had counted it as a new write.)
    r1 = MVRegister().assign(n1, "x")
    rebuilt = MVRegister().assign(n1, "x")
    assert rebuilt == r1
    assert rebuilt.is_inflation_of(r1)
    assert r1.assign(n2, "y").merge(rebuilt).value == {"y"}


def test_a_counter_rebuilt_below_a_reservation_is_refused() -> None:
    removed = PNCounterMap().increment(n1, "k", 3).remove(n1, "k").underlying
    with pytest.raises(ValueError, match="not an inflation"):
        removed.update(n1, "k", PNCounter(), lambda _c: PNCounter().increment(n1, 4))
    assert not GCounter().increment(n1, 4).is_inflation_of(GCounter().increment(n1, 3).marks())


def test_a_key_removed_after_pruning_rewrote_it_keeps_the_pruned_dots_reserved() -> None:
    # ORMap of ORMap, found by a deep run (100,000 histories of 60 steps) and shrunk: n1 writes
    # and removes m while n2 writes it too; n2's first incarnation is pruned into n0, which
    # rewrites m.b's x under (n0, 1); n1 clears m.b; n0 removes m and adds x again.  The map
    # kept m's stored marks (from n1's remove) without the pruned value's, so n0's new x took
    # (n0, 1) again, the dot n1's clear had removed: the merge dropped it.
    n0, gone = ReplicaId("n0", 1), ReplicaId("n2", 1)

    def inner(node: ReplicaId, modify: Callable[[ORSet], ORSet]) -> Callable[[ORMap], ORMap]:
        return lambda m: m.update(node, "b", ORSet(), modify)

    r2 = ORMap().update(gone, "m", ORMap(), inner(gone, _add(gone, "x")))
    r1 = ORMap().update(n1, "m", ORMap(), inner(n1, _add(n1, "x"))).remove(n1, "m")
    r0 = r1.merge(r2).prune(gone, n0)
    r1 = r1.merge(r2).pruning_cleanup(gone).merge(r0)
    r1 = r1.update(n1, "m", ORMap(), inner(n1, lambda s: s.clear(n1)))
    r0 = r0.remove(n0, "m").update(n0, "m", ORMap(), inner(n0, _add(n0, "x")))
    assert r0.merge(r1).value == {"m": {"b": {"x"}}}
