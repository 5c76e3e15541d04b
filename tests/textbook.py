"""Textbook models of the OR-Set and the OR-Map, and ONE generic state machine that runs a real
type against its textbook model (:func:`against_textbook`); test_orset.py and test_ormap.py are
its rows.

The models are the textbook constructions, with unique tags and tombstones (Shapiro et al.):
every add or update a new tag, every remove a tombstone for each tag it has seen.  They are
deliberately another construction than the event models of models.py (test_models.py): two
oracles, not one written twice.

The machine keeps three replicas, real and modelled side by side, and steps through random
operations of the row on random replicas, full-state merges between random replicas, and a
replica shipping its delta (every operation since its last shipment, joined into one) to every
other.  After every step: every replica's value is its model's; all replicas merged together hold
the value of all models merged; and when no delta is in flight, every causal context is a
version vector.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, Self

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from thespian_dd import ReplicaId

Tag = tuple[int, int]  # (the replica that made it, a number no other tag has)


class Textbook(Protocol):
    """A textbook model: a value, and a merge that is the union of what both sides know."""

    @property
    def value(self) -> Any: ...

    def merge(self, other: Self) -> None: ...


@dataclass
class TextbookORSet:
    """The OR-Set with unique tags and tombstones (Shapiro et al.): every add a new tag, every
    remove a tombstone for each tag it has seen."""

    tags: set[tuple[object, Tag]] = field(default_factory=set)
    tombstones: set[Tag] = field(default_factory=set)

    def live(self, element: object) -> set[Tag]:
        """The tags of ``element`` no remove has seen."""
        return {t for e, t in self.tags if e == element and t not in self.tombstones}

    @property
    def value(self) -> frozenset[object]:
        return frozenset(e for e, t in self.tags if t not in self.tombstones)

    def merge(self, other: TextbookORSet) -> None:
        self.tags |= other.tags
        self.tombstones |= other.tombstones


@dataclass
class TextbookORMap:
    """An observed-remove map: every update a unique tag carrying the value its replica wrote
    (a TextbookORSet, or a counter as the increments it saw), every remove a tombstone of the
    tags it saw; a key's value joins the versions no one has tombstoned."""

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

    def update(
        self, key: str, empty: Any, change: Callable[[Any], Any], tag: Callable[[], Tag]
    ) -> TextbookORMap:
        """What an update of ``key`` adds: a version of its own, ``change`` applied to a copy of
        the key's current value (or to ``empty``), that replaces every version it saw."""
        current = self.current(key)
        new = change(copy.deepcopy(current) if current is not None else empty)
        seen = set(self.live(key))
        return TextbookORMap({tag(): (key, new)}, seen)

    def remove(self, key: str) -> TextbookORMap:
        """What a remove of ``key`` adds: a tombstone of every version it saw."""
        return TextbookORMap(tombstones=set(self.live(key)))


# -- the machine ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Operation:
    """One operation of a row: a rule of the machine, on a random replica ``i``.

    ``real(value, node, **args)`` returns the real value changed by ``node``.
    ``model(model, tag, **args)`` returns what the operation adds to the replica's model, as a
    model of its own (merged into the replica's model and into what it has not shipped yet); it
    reads the replica's ``model`` without changing it, and ``tag()`` gives it fresh tags.
    ``args``: a strategy for each further argument.
    """

    name: str
    args: dict[str, st.SearchStrategy[Any]]
    real: Callable[..., Any]
    model: Callable[..., Any]


@dataclass(frozen=True)
class Row:
    """A real type and its textbook model: their empty values and their operations."""

    name: str
    real: Callable[[], Any]
    model: Callable[[], Any]
    operations: list[Operation]


REPLICAS = [ReplicaId("a", 1), ReplicaId("b", 1), ReplicaId("c", 1)]
INDEX = st.integers(0, len(REPLICAS) - 1)


class TextbookMachine(RuleBasedStateMachine):
    """The rules every row shares; :func:`against_textbook` adds one rule per operation."""

    row: ClassVar[Row]

    def __init__(self) -> None:
        super().__init__()
        self.real = [self.row.real() for _ in REPLICAS]
        self.model = [self.row.model() for _ in REPLICAS]
        # What each replica did since it last shipped its delta, for the model.
        self.unshipped = [self.row.model() for _ in REPLICAS]
        self.tag = 0

    def _fresh_tag(self, i: int) -> Tag:
        self.tag += 1
        return (i, self.tag)

    def operate(self, operation: Operation, i: int, args: dict[str, Any]) -> None:
        self.real[i] = operation.real(self.real[i], REPLICAS[i], **args)
        added = operation.model(self.model[i], lambda: self._fresh_tag(i), **args)
        self.model[i].merge(added)
        self.unshipped[i].merge(added)

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
        self.unshipped[i] = self.row.model()

    @invariant()
    def every_replica_agrees_with_its_model(self) -> None:
        for real, model in zip(self.real, self.model, strict=True):
            assert real.value == model.value

    @invariant()
    def all_replicas_together_agree_with_the_model(self) -> None:
        merged = self.real[0]
        for real in self.real[1:]:
            merged = merged.merge(real)
        model = self.row.model()
        for m in self.model:
            model.merge(m)
        assert merged.value == model.value

    @invariant()
    def contexts_are_version_vectors_when_no_delta_is_in_flight(self) -> None:
        if all(r.delta is None for r in self.real):
            for real in self.real:
                assert real.context.is_contiguous()


def _rule(operation: Operation) -> Any:
    def apply(self: TextbookMachine, i: int, **args: Any) -> None:
        self.operate(operation, i, args)

    apply.__name__ = apply.__qualname__ = operation.name
    # rule() is typed for arguments written out by name: these come from the row.
    make_rule: Any = rule
    return make_rule(i=INDEX, **operation.args)(apply)


def against_textbook(row: Row) -> type[TextbookMachine]:
    """The state machine of ``row``: the shared rules and invariants, and one rule per
    operation."""
    rules = {operation.name: _rule(operation) for operation in row.operations}
    return type(f"{row.name}AgainstTextbook", (TextbookMachine,), {"row": row, **rules})
