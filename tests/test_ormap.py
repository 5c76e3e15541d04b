"""ORMap: examples, and a state machine against a textbook observed-remove map (every update a
unique tag carrying the value its replica wrote, every remove a tombstone of the tags it saw)."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from test_orset import TextbookORSet

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
        ORMap().update(A, "k", 5, lambda v: v)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="must be empty"):
        ORMap().update(A, "k", ORSet().add(A, "x"), lambda s: s)


def test_specialised_maps() -> None:
    assert LWWMap().put(A, "k", 1).put(A, "k", 2).remove(A, "j").value == {"k": 2}
    assert PNCounterMap().increment(A, "k", 5).decrement(B, "k", 7).value == {"k": -2}
    mm = ORMultiMap().put(A, "k", [1, 2, 3]).remove_binding(A, "k", 2).add_binding(A, "j", 9)
    assert mm.value == {"k": {1, 3}, "j": {9}}
    assert ORMultiMap().add_binding(A, "k", 1).remove_binding(A, "k", 1).value == {}


# -- model-based ---------------------------------------------------------------------------------

Tag = tuple[int, int]


@dataclass
class TextbookORMap:
    updates: dict[Tag, tuple[str, Any]] = field(default_factory=dict)
    tombstones: set[Tag] = field(default_factory=set)

    def live(self, key: str) -> dict[Tag, Any]:
        return {
            t: inner
            for t, (k, inner) in self.updates.items()
            if k == key and t not in self.tombstones
        }

    def current(self, key: str) -> Any:
        versions = list(self.live(key).values())
        if not versions:
            return None
        if isinstance(versions[0], TextbookORSet):
            joined = TextbookORSet()
            for v in versions:
                joined.merge(v)
            return joined
        increments: dict[Tag, int] = {}  # a counter is the increments its versions saw
        for v in versions:
            increments.update(v)
        return increments

    @property
    def value(self) -> dict[str, Any]:
        out = {}
        for key in {k for k, _ in self.updates.values()}:
            current = self.current(key)
            if current is not None:
                out[key] = (
                    current.value if isinstance(current, TextbookORSet) else sum(current.values())
                )
        return out

    def merge(self, other: TextbookORMap) -> None:
        self.updates.update(other.updates)
        self.tombstones |= other.tombstones


REPLICAS = [A, B, C]
INDEX = st.integers(0, len(REPLICAS) - 1)
SET_KEYS = st.sampled_from(["s1", "s2"])
ELEMENTS = st.sampled_from(["x", "y", 1])


class ORMapAgainstTextbook(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.real = [ORMap() for _ in REPLICAS]
        self.model = [TextbookORMap() for _ in REPLICAS]
        self.unshipped = [TextbookORMap() for _ in REPLICAS]
        self.tag = 0

    def _fresh_tag(self, i: int) -> Tag:
        self.tag += 1
        return (i, self.tag)

    def _model_update(self, i: int, key: str, empty: Any, fn: Any) -> None:
        model = self.model[i]
        current = model.current(key)
        new = fn(copy.deepcopy(current) if current is not None else empty)
        seen = set(model.live(key))
        tag = self._fresh_tag(i)
        for target in (model, self.unshipped[i]):
            target.tombstones |= seen
            target.updates[tag] = (key, new)

    @rule(i=INDEX, key=SET_KEYS, element=ELEMENTS)
    def add(self, i: int, key: str, element: object) -> None:
        node = REPLICAS[i]
        self.real[i] = self.real[i].update(node, key, ORSet(), lambda s: s.add(node, element))

        def model_add(s: TextbookORSet) -> TextbookORSet:
            s.tombstones |= {t for e, t in s.tags if e == element}  # an add replaces (see ORSet)
            s.tags.add((element, self._fresh_tag(i)))
            return s

        self._model_update(i, key, TextbookORSet(), model_add)

    @rule(i=INDEX, key=SET_KEYS, element=ELEMENTS)
    def discard(self, i: int, key: str, element: object) -> None:
        node = REPLICAS[i]
        self.real[i] = self.real[i].update(node, key, ORSet(), lambda s: s.remove(node, element))

        def model_discard(s: TextbookORSet) -> TextbookORSet:
            s.tombstones |= {t for e, t in s.tags if e == element}
            return s

        self._model_update(i, key, TextbookORSet(), model_discard)

    @rule(i=INDEX, n=st.integers(1, 3))
    def count(self, i: int, n: int) -> None:
        node = REPLICAS[i]
        self.real[i] = self.real[i].update(node, "c", GCounter(), lambda c: c.increment(node, n))

        def model_count(increments: dict[Tag, int]) -> dict[Tag, int]:
            increments[self._fresh_tag(i)] = n
            return increments

        self._model_update(i, "c", {}, model_count)

    @rule(i=INDEX, key=st.sampled_from(["s1", "s2", "c"]))
    def remove(self, i: int, key: str) -> None:
        self.real[i] = self.real[i].remove(REPLICAS[i], key)
        seen = set(self.model[i].live(key))
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
                    self.model[j].merge(copy.deepcopy(self.unshipped[i]))
        self.real[i] = self.real[i].reset_delta()
        self.unshipped[i] = TextbookORMap()

    @invariant()
    def every_replica_agrees_with_its_model(self) -> None:
        for real, model in zip(self.real, self.model, strict=True):
            assert real.value == model.value


TestORMapAgainstTextbook = ORMapAgainstTextbook.TestCase
