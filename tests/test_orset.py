"""ORSet: examples, and the state machine of textbook.py against the textbook OR-Set (unique tags
and tombstones): adds, removes and clears on three replicas, merges and deltas."""

from __future__ import annotations

import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import strategies as st
from textbook import Operation, Row, Tag, TextbookORSet, against_textbook

from thespian_dd import ORSet, ReplicaId
from thespian_dd.codec import decode, encode
from thespian_dd.data import CausalContext
from thespian_dd.orset import dots_of

A, B, C = ReplicaId("a", 1), ReplicaId("b", 1), ReplicaId("c", 1)


def test_an_add_concurrent_with_a_remove_wins() -> None:
    base = ORSet().add(A, "x").reset_delta()
    removed = base.remove(A, "x")
    added_again = base.add(B, "x")
    assert removed.merge(added_again).value == {"x"}
    assert added_again.merge(removed).value == {"x"}


def test_a_remove_removes_what_it_observed_everywhere() -> None:
    base = ORSet().add(A, "x").add(B, "y")
    removed = base.remove(C, "x")
    assert base.merge(removed).value == {"y"}


def test_removed_elements_leave_no_tombstones() -> None:
    s = ORSet()
    for i in range(100):
        s = s.add(A, i).remove(A, i)
    assert s.value == frozenset()
    assert s.context == CausalContext.of_vv({A: 100})
    assert s.entries == {}


def test_adding_again_keeps_one_dot_per_element() -> None:
    s = ORSet().add(A, "x").add(A, "x").add(B, "x")
    assert s.entries["x"] == (B, 1)  # held as the dot itself, not in a frozenset of one
    assert list(dots_of(s.entries["x"])) == [(B, 1)]


def test_concurrent_adds_hold_both_dots_and_one_dot_again_after_a_re_add() -> None:
    a, b = ORSet().add(A, "x"), ORSet().add(B, "x")
    both = a.merge(b)
    assert both.entries["x"] == frozenset({(A, 1), (B, 1)})
    assert len(both) == 1
    assert list(both) == ["x"]
    assert "x" in both
    assert both == b.merge(a) == ORSet({"x": frozenset({(A, 1), (B, 1)})}, both.context)
    assert both.add(A, "x").entries["x"] == (A, 2)
    assert both.remove(B, "x").merge(a).value == frozenset()


def test_an_element_added_again_on_one_side_is_settled_by_a_merge_either_way() -> None:
    # a holds x by (A, 1); b saw that add, and added x again: (A, 2) replaced (A, 1).
    a = ORSet().add(A, "x").add(A, "y").reset_delta()
    b = a.add(A, "x").reset_delta()
    assert a.merge(b) == b.merge(a) == b
    assert a.merge(b).entries == {"x": (A, 3), "y": (A, 2)}


def test_an_element_holds_two_dots_of_one_replica_after_deltas_out_of_order() -> None:
    # A adds x (dot 1), removes it, and adds it again (dot 2).  One replica gets the first
    # add's delta, another only the second's (out of order): each holds x by a dot the other
    # has not seen, so merged, x holds both dots of A, until a state that has seen both comes.
    first = ORSet().add(A, "x")
    again = first.reset_delta().remove(A, "x").reset_delta().add(A, "x")
    assert first.delta is not None
    assert again.delta is not None
    both = ORSet().merge(first.delta).merge(ORSet().merge(again.delta))
    assert both.entries == {"x": frozenset({(A, 1), (A, 2)})}
    assert len(both) == 1
    assert list(both) == ["x"]
    assert "x" in both
    assert decode(encode(both.reset_delta())) == both.reset_delta()
    assert pickle.loads(pickle.dumps(both)) == both.reset_delta()
    assert both.merge(again).entries == {"x": (A, 2)} == again.merge(both).entries
    assert both.add(B, "x").entries == {"x": (B, 1)}
    assert both.remove(B, "x").value == frozenset()
    assert both.remove(B, "x").merge(both).value == frozenset()


def test_malformed_entries_are_refused_naming_the_problem() -> None:
    with pytest.raises(TypeError, match=r"holds a \(replica, n\) dot"):
        ORSet({"x": 5})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"not \('a', 1, 2\)"):
        ORSet({"x": ("a", 1, 2)})  # type: ignore[dict-item]
    with pytest.raises(
        TypeError, match=r"n an int >= 1\) or a collection of them, not \('a', 'x'\)"
    ):
        ORSet({"x": ("a", "x")})  # type: ignore[dict-item]
    # Each of these was taken, and broke later: a counter of 0 (or below) sat outside a version
    # vector unnoticed, so its merges skipped the look for elements both sides hold differently
    # and were not commutative; a tuple as a counter was kept as several, unsorted; an empty set
    # of dots kept an element that holds no add.
    bad: list[Any] = [(A, 0), (A, -2), (A, (2, 1)), (A, True), (A, 1.0), frozenset(), {(A, 0)}]
    for held in bad:
        with pytest.raises(TypeError, match=r"n an int >= 1\) or a collection of them, not "):
            ORSet({"x": held}, CausalContext.of_vv({A: 3}))
    with pytest.raises(TypeError, match="context is a CausalContext, not NoneType"):
        ORSet({}, None)  # type: ignore[arg-type]


def test_a_frozenset_of_one_dot_given_to_the_constructor_is_held_as_the_dot() -> None:
    made = ORSet({"x": frozenset({(A, 1)})}, ORSet().add(A, "x").context)
    assert made.entries["x"] == (A, 1)
    assert made == ORSet().add(A, "x").reset_delta()
    assert pickle.loads(pickle.dumps(made)) == made
    # Pickled as earlier releases pickled it (and read it): each element's dots in a frozenset.
    assert made.__reduce__() == (ORSet, ({"x": frozenset({(A, 1)})}, made.context))


class _Tags(ORSet[str]):
    """A set of one's own."""


def test_a_subclass_unpickles_as_itself() -> None:
    tags = _Tags().add(A, "x")  # a mutator's result is a plain ORSet; the constructor's is not
    made = _Tags(tags.entries, tags.context)
    assert type(pickle.loads(pickle.dumps(made))) is _Tags


def test_a_delta_applied_out_of_order_leaves_a_gap_until_the_missing_one_arrives() -> None:
    first = ORSet().add(A, "x")
    second = first.reset_delta().add(A, "y")
    assert second.delta is not None
    assert first.delta is not None
    receiver = ORSet().merge_delta(second.delta)
    assert receiver.value == {"y"}
    assert not receiver.context.is_contiguous()
    receiver = receiver.merge_delta(first.delta)
    assert receiver.value == {"x", "y"}
    assert receiver.context.is_contiguous()


def test_unhashable_elements_are_refused_with_a_clear_error() -> None:
    with pytest.raises(TypeError, match="ORSet element must be hashable"):
        ORSet().add(A, ["a", "list"])


def test_the_acting_node_must_be_a_replica_id() -> None:
    with pytest.raises(TypeError, match="acting node must be a ReplicaId"):
        ORSet().add("a", "x")  # type: ignore[arg-type]


def test_values_are_immutable() -> None:
    s = ORSet()
    with pytest.raises(AttributeError, match="immutable"):
        s.context = CausalContext()


# -- model-based: a row of the state machine of textbook.py ---------------------------------------

ELEMENTS = st.sampled_from(["x", "y", "z", 1, 2])


def _add(model: TextbookORSet, tag: Callable[[], Tag], element: object) -> TextbookORSet:
    # An add replaces the adds of the element it has seen (so a later remove that sees this add
    # also removes those), as in Akka and Bieniusa et al.'s optimised OR-Set.
    return TextbookORSet({(element, tag())}, model.live(element))


def _remove(model: TextbookORSet, tag: Callable[[], Tag], element: object) -> TextbookORSet:
    return TextbookORSet(tombstones=model.live(element))


def _clear(model: TextbookORSet, tag: Callable[[], Tag]) -> TextbookORSet:
    return TextbookORSet(tombstones={t for _, t in model.tags if t not in model.tombstones})


ORSET = Row(
    "ORSet",
    ORSet,
    TextbookORSet,
    [
        Operation(
            "add", {"element": ELEMENTS}, lambda s, node, element: s.add(node, element), _add
        ),
        Operation(
            "remove",
            {"element": ELEMENTS},
            lambda s, node, element: s.remove(node, element),
            _remove,
        ),
        Operation("clear", {}, lambda s, node: s.clear(node), _clear),
    ],
)

TestORSetAgainstTextbook = against_textbook(ORSET).TestCase
