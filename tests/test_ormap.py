"""ORMap: examples, and the state machine of textbook.py against a textbook observed-remove map
(every update a unique tag carrying the value its replica wrote, every remove a tombstone of the
tags it saw): set adds and discards and counter increments under keys, key removes, on three
replicas, merges and deltas."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import strategies as st
from textbook import Operation, Row, Tag, TextbookORMap, TextbookORSet, against_textbook

from thespian_dd import GCounter, LWWMap, ORMap, ORMultiMap, ORSet, PNCounterMap, ReplicaId

A, B, C = ReplicaId("a", 1), ReplicaId("b", 1), ReplicaId("c", 1)


def _add(node: ReplicaId, element: object) -> Any:
    return lambda s: s.add(node, element)


def test_values_are_crdts_and_merge() -> None:
    left = ORMap().update(A, "hits", GCounter(), lambda c: c.increment(A, 2))
    right = ORMap().update(B, "hits", GCounter(), lambda c: c.increment(B, 3))
    assert left.merge(right).value == {"hits": 5}


def test_an_update_concurrent_with_a_remove_wins() -> None:
    base = ORMap().update(A, "k", ORSet(), _add(A, "x")).reset_delta()
    removed = base.remove(A, "k")
    updated = base.update(B, "k", ORSet(), _add(B, "y"))
    assert removed.merge(updated).value == {"k": {"x", "y"}}


def test_a_removed_value_does_not_come_back_when_the_key_is_created_again() -> None:
    # Akka merges the stale value back in; here the remove observed it, so it stays removed.
    base = ORMap().update(A, "k", ORSet(), _add(A, "old")).reset_delta()
    recreated = base.remove(A, "k").update(A, "k", ORSet(), _add(A, "new"))
    assert base.merge(recreated).value == {"k": {"new"}}
    assert recreated.merge(base).value == {"k": {"new"}}


def test_a_recreated_set_does_not_reuse_the_dots_of_the_removed_one() -> None:
    base = ORMap().update(A, "k", ORSet(), _add(A, "old")).reset_delta()
    concurrent = base.update(B, "k", ORSet(), _add(B, "b"))  # has not seen the remove
    recreated = base.remove(A, "k").update(A, "k", ORSet(), _add(A, "new"))
    # Without care "new" would get the inner dot of "old" (same replica, fresh set) and the two
    # adds would cancel out.  B's update, concurrent with the remove, keeps the value B knew.
    assert recreated.merge(concurrent).value == {"k": {"new", "b", "old"}}
    assert concurrent.merge(recreated).value == {"k": {"new", "b", "old"}}


def test_a_key_keeps_its_value_type() -> None:
    m = ORMap().update(A, "k", GCounter(), lambda c: c.increment(A))
    with pytest.raises(TypeError, match="value type never changes"):
        m.update(A, "k", ORSet(), _add(A, "x"))
    with pytest.raises(TypeError, match="must return a GCounter"):
        m.update(A, "k", GCounter(), lambda c: ORSet())


def test_merging_two_value_types_under_one_key_is_refused() -> None:
    left = ORMap().update(A, "k", GCounter(), lambda c: c.increment(A))
    right = ORMap().update(B, "k", ORSet(), _add(B, "x"))
    with pytest.raises(TypeError, match="value type never changes"):
        left.merge(right).get("k")


def test_initial_values_must_be_crdts_and_dot_based_ones_empty() -> None:
    with pytest.raises(TypeError, match="must be a CRDT"):
        ORMap().update(A, "k", 5, lambda v: v)
    with pytest.raises(ValueError, match="must be empty"):
        ORMap().update(A, "k", ORSet().add(A, "x"), lambda s: s)


def test_specialised_maps() -> None:
    assert LWWMap().put(A, "k", 1).put(A, "k", 2).remove(A, "j").value == {"k": 2}
    assert PNCounterMap().increment(A, "k", 5).decrement(B, "k", 7).value == {"k": -2}
    mm = ORMultiMap().put(A, "k", [1, 2, 3]).remove_binding(A, "k", 2).add_binding(A, "j", 9)
    assert mm.value == {"k": {1, 3}, "j": {9}}
    assert ORMultiMap().add_binding(A, "k", 1).remove_binding(A, "k", 1).value == {}


# -- model-based: a row of the state machine of textbook.py ---------------------------------------

SET_KEYS = st.sampled_from(["s1", "s2"])
ELEMENTS = st.sampled_from(["x", "y", 1])


def _real_add(m: ORMap, node: ReplicaId, key: str, element: object) -> ORMap:
    return m.update(node, key, ORSet(), lambda s: s.add(node, element))


def _model_add(
    model: TextbookORMap, tag: Callable[[], Tag], key: str, element: object
) -> TextbookORMap:
    def add(s: TextbookORSet) -> TextbookORSet:
        s.tombstones |= {t for e, t in s.tags if e == element}  # an add replaces (see ORSet)
        s.tags.add((element, tag()))
        return s

    return model.update(key, TextbookORSet(), add, tag)


def _real_discard(m: ORMap, node: ReplicaId, key: str, element: object) -> ORMap:
    return m.update(node, key, ORSet(), lambda s: s.remove(node, element))


def _model_discard(
    model: TextbookORMap, tag: Callable[[], Tag], key: str, element: object
) -> TextbookORMap:
    def discard(s: TextbookORSet) -> TextbookORSet:
        s.tombstones |= {t for e, t in s.tags if e == element}
        return s

    return model.update(key, TextbookORSet(), discard, tag)


def _real_count(m: ORMap, node: ReplicaId, n: int) -> ORMap:
    return m.update(node, "c", GCounter(), lambda c: c.increment(node, n))


def _model_count(model: TextbookORMap, tag: Callable[[], Tag], n: int) -> TextbookORMap:
    def count(increments: dict[Tag, int]) -> dict[Tag, int]:
        increments[tag()] = n
        return increments

    return model.update("c", {}, count, tag)


ORMAP = Row(
    "ORMap",
    ORMap,
    TextbookORMap,
    [
        Operation("add", {"key": SET_KEYS, "element": ELEMENTS}, _real_add, _model_add),
        Operation("discard", {"key": SET_KEYS, "element": ELEMENTS}, _real_discard, _model_discard),
        Operation("count", {"n": st.integers(1, 3)}, _real_count, _model_count),
        Operation(
            "remove",
            {"key": st.sampled_from(["s1", "s2", "c"])},
            lambda m, node, key: m.remove(node, key),
            lambda model, tag, key: model.remove(key),
        ),
    ],
)

TestORMapAgainstTextbook = against_textbook(ORMAP).TestCase
