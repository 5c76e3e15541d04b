"""ORSet: examples, and a state machine against the textbook OR-Set (unique tags and tombstones)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from thespian_dd import ORSet, ReplicaId
from thespian_dd.data import CausalContext

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
    assert len(s.entries["x"]) == 1


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
        ORSet().add(A, ["a", "list"])  # type: ignore[arg-type]


def test_the_acting_node_must_be_a_replica_id() -> None:
    with pytest.raises(TypeError, match="acting node must be a ReplicaId"):
        ORSet().add("a", "x")  # type: ignore[arg-type]


def test_values_are_immutable() -> None:
    s = ORSet()
    with pytest.raises(AttributeError, match="immutable"):
        s.entries = {}


# -- model-based ---------------------------------------------------------------------------------


@dataclass
class TextbookORSet:
    """The OR-Set with unique tags and tombstones (Shapiro et al.): every add a new tag, every
    remove a tombstone for each tag it has seen."""

    tags: set[tuple[object, tuple[int, int]]] = field(default_factory=set)
    tombstones: set[tuple[int, int]] = field(default_factory=set)

    @property
    def value(self) -> frozenset[object]:
        return frozenset(e for e, t in self.tags if t not in self.tombstones)

    def merge(self, other: TextbookORSet) -> None:
        self.tags |= other.tags
        self.tombstones |= other.tombstones


REPLICAS = [A, B, C]
ELEMENTS = st.sampled_from(["x", "y", "z", 1, 2])
INDEX = st.integers(0, len(REPLICAS) - 1)


class ORSetAgainstTextbook(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.real = [ORSet() for _ in REPLICAS]
        self.model = [TextbookORSet() for _ in REPLICAS]
        # What each replica did since it last shipped its delta, for the model.
        self.unshipped = [TextbookORSet() for _ in REPLICAS]
        self.tag = 0

    def _fresh_tag(self, i: int) -> tuple[int, int]:
        self.tag += 1
        return (i, self.tag)

    @rule(i=INDEX, element=ELEMENTS)
    def add(self, i: int, element: object) -> None:
        self.real[i] = self.real[i].add(REPLICAS[i], element)
        # An add replaces the adds of the element it has seen (so a later remove that sees this
        # add also removes those), as in Akka and Bieniusa et al.'s optimised OR-Set.
        model = self.model[i]
        seen = {t for e, t in model.tags if e == element and t not in model.tombstones}
        tag = (element, self._fresh_tag(i))
        for target in (model, self.unshipped[i]):
            target.tombstones |= seen
            target.tags.add(tag)

    @rule(i=INDEX, element=ELEMENTS)
    def remove(self, i: int, element: object) -> None:
        self.real[i] = self.real[i].remove(REPLICAS[i], element)
        model = self.model[i]
        seen = {t for e, t in model.tags if e == element and t not in model.tombstones}
        self.model[i].tombstones |= seen
        self.unshipped[i].tombstones |= seen

    @rule(i=INDEX)
    def clear(self, i: int) -> None:
        self.real[i] = self.real[i].clear(REPLICAS[i])
        model = self.model[i]
        seen = {t for _, t in model.tags if t not in model.tombstones}
        self.model[i].tombstones |= seen
        self.unshipped[i].tombstones |= seen

    @rule(i=INDEX, j=INDEX)
    def merge_full_state(self, i: int, j: int) -> None:
        self.real[i] = self.real[i].merge(self.real[j])
        self.model[i].merge(self.model[j])

    @rule(i=INDEX)
    def ship_deltas_to_everyone(self, i: int) -> None:
        delta = self.real[i].delta
        if delta is not None:
            for j in range(len(REPLICAS)):
                if j != i:
                    self.real[j] = self.real[j].merge_delta(delta)
                    self.model[j].merge(self.unshipped[i])
        self.real[i] = self.real[i].reset_delta()
        self.unshipped[i] = TextbookORSet()

    @invariant()
    def every_replica_agrees_with_its_model(self) -> None:
        for real, model in zip(self.real, self.model, strict=True):
            assert real.value == model.value

    @invariant()
    def all_replicas_together_agree_with_the_model(self) -> None:
        merged = self.real[0].merge(self.real[1]).merge(self.real[2])
        model = TextbookORSet()
        for m in self.model:
            model.merge(m)
        assert merged.value == model.value

    @invariant()
    def contexts_are_version_vectors_when_no_delta_is_in_flight(self) -> None:
        if all(r.delta is None for r in self.real):
            for real in self.real:
                assert real.context.is_contiguous()


TestORSetAgainstTextbook = ORSetAgainstTextbook.TestCase
