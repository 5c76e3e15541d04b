"""ORSet: an observed-remove set where a concurrent add wins over a remove.

- State: for each element the *dots* (``(replica, n)`` events) of the adds that put it there, plus
  a causal context: every dot this replica has seen (normally a version vector; see
  :class:`~thespian_dd.data.CausalContext`).
- Value: the elements that hold at least one dot.
- Merge: a dot survives if both sides hold it, or if one side holds it and the other has not seen
  it; a dot the other side has seen but no longer holds was removed there.  So a remove only
  removes the adds it observed: an add concurrent with a remove wins.
- Adding an element again replaces its dots with one new dot (as Akka does), so an element holds
  one dot except briefly after concurrent adds.
- Delta: the new dots and the context of what they replace; a remove's delta is just the removed
  dots.  Deltas must be applied in order per origin to keep the context compact
  (:class:`~thespian_dd.data.RequiresCausalDelivery`).
- Garbage: no tombstones.  A removed element leaves only its dots in the context, which is one
  run of counters per replica that ever added; ``prune`` re-adds a removed replica's elements
  under a live replica and drops its slot.
- Paper: Almeida, Shoker, Baquero, "Delta State Replicated Data Types" (2018), the add-wins
  ORSet with causal context; Bieniusa et al., "An optimized conflict-free replicated set" (2012).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Iterator, Mapping
from typing import Any, Generic

from thespian_dd._typevars import A
from thespian_dd.data import (
    CausalContext,
    DeltaReplicatedData,
    Dot,
    DotBased,
    RemovedNodePruning,
    ReplicaId,
    RequiresCausalDelivery,
    check_hashable,
    check_replica,
    merge_dot_maps,
)

__all__ = ["ORSet"]


_EMPTY_CONTEXT = CausalContext()


class ORSet(DeltaReplicatedData, RemovedNodePruning, RequiresCausalDelivery, DotBased, Generic[A]):
    """An add-wins set of elements of type ``A`` (``ORSet[str]()`` for the type checker).

    ``ORSet().add(node, "a").add(node, "b").remove(node, "a").value == frozenset({"b"})``
    """

    __slots__ = ("_delta", "context", "entries")

    entries: Mapping[Any, frozenset[Dot]]
    context: CausalContext
    _delta: ORSet[A] | None

    def __init__(
        self,
        entries: Mapping[Hashable, frozenset[Dot]] | None = None,
        context: CausalContext = _EMPTY_CONTEXT,
        *,
        _delta: ORSet[A] | None = None,
    ) -> None:
        object.__setattr__(self, "entries", dict(entries or {}))
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "_delta", _delta)

    def _state(self) -> tuple[Any, ...]:
        return (self.entries, self.context)

    @property
    def value(self) -> frozenset[A]:
        """The elements present (those that hold at least one add's dot), as a frozenset."""
        return frozenset(self.entries)

    elements = value

    def __contains__(self, element: object) -> bool:
        return element in self.entries

    def __iter__(self) -> Iterator[A]:
        return iter(self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def add(self, node: ReplicaId, element: A) -> ORSet[A]:
        """Add ``element`` on behalf of ``node`` (a new dot that wins over concurrent removes)."""
        return self.add_all(node, (element,))

    def add_all(self, node: ReplicaId, elements: Iterable[A]) -> ORSet[A]:
        """Add every element of ``elements`` in one step (one copy of the state, not one each)."""
        check_replica(node)
        entries = dict(self.entries)
        added: dict[Hashable, frozenset[Dot]] = {}
        replaced: set[Dot] = set()
        new_dots: list[Dot] = []
        _, n = self.context.next_dot(node)
        for element in elements:
            check_hashable("an ORSet element", element)
            replaced.update(entries.get(element, ()))
            dot = (node, n + len(new_dots))
            new_dots.append(dot)
            entries[element] = added[element] = frozenset((dot,))
        if not added:
            return self
        delta = ORSet(added, CausalContext.of_dots(replaced.union(new_dots)))
        return ORSet(entries, self.context.add(new_dots), _delta=self._with_delta(delta))

    def remove(self, node: ReplicaId, element: A) -> ORSet[A]:
        """Remove ``element`` as observed here; adds this replica has not seen survive."""
        return self.remove_all(node, (element,))

    def remove_all(self, node: ReplicaId, elements: Iterable[A]) -> ORSet[A]:
        """Remove every element of ``elements`` that is present, as observed here."""
        check_replica(node)
        entries = dict(self.entries)
        removed: set[Dot] = set()
        for element in elements:
            check_hashable("an ORSet element", element)
            removed.update(entries.pop(element, ()))
        if not removed:
            return self
        delta = ORSet({}, CausalContext.of_dots(removed))
        return ORSet(entries, self.context, _delta=self._with_delta(delta))

    def clear(self, node: ReplicaId) -> ORSet[A]:
        """Remove every element observed here."""
        check_replica(node)
        if not self.entries:
            return self
        seen = frozenset().union(*self.entries.values())
        delta = ORSet({}, CausalContext.of_dots(seen))
        return ORSet({}, self.context, _delta=self._with_delta(delta))

    def _with_delta(self, delta: ORSet[A]) -> ORSet[A]:
        return delta if self._delta is None else self._delta.merge(delta)

    def merge(self, other: ORSet[A]) -> ORSet[A]:
        """The join of both sets: an add survives where both sides hold it, or where one holds it
        and the other has not seen it (so an add concurrent with a remove wins); keeps this
        value's pending delta."""
        self._require_same_type(other)
        if other is self:
            return self
        entries = merge_dot_maps(self.entries, self.context, other.entries, other.context)
        merged = ORSet.__new__(ORSet)  # entries is a new dict already: no copy
        object.__setattr__(merged, "entries", entries)
        object.__setattr__(merged, "context", self.context.merge(other.context))
        object.__setattr__(merged, "_delta", self._delta)
        return merged

    def is_inflation_of(self, older: ORSet[A]) -> bool:
        """Whether this value is what changes made through the API could make of ``older``: it
        has seen every dot ``older`` has, and merging the two drops nothing this value holds."""
        if type(older) is not ORSet or not self.context.extends(older.context):
            return False
        # The merge drops what this state holds and ``older`` has seen but does not hold.
        seen, theirs = older.context, older.entries
        for element, dots in self.entries.items():
            old = theirs.get(element)
            if old is not dots and any(d in seen for d in (dots if old is None else dots - old)):
                return False
        return True

    @property
    def delta(self) -> ORSet[A] | None:
        """What changed since the last :meth:`reset_delta` (new dots and the context of what they
        replace), or ``None``."""
        return self._delta

    def reset_delta(self) -> ORSet[A]:
        """This value without its pending delta."""
        return self if self._delta is None else ORSet(self.entries, self.context)

    def modified_by_nodes(self) -> frozenset[ReplicaId]:
        """Every replica whose dots this value has seen."""
        return self.context.replicas()

    def needs_pruning_from(self, removed: ReplicaId) -> bool:
        """Whether dots of ``removed`` are still in this value."""
        return removed in self.context.replicas()

    def prune(self, removed: ReplicaId, collapse_into: ReplicaId) -> ORSet[A]:
        """The same value, with every dot of ``removed`` still held replaced by a new dot of
        ``collapse_into``, and ``removed`` dropped from the context."""
        if not self.needs_pruning_from(removed):
            return self
        context = self.context.without(removed)
        entries = {}
        for element, dots in self.entries.items():
            if any(r == removed for r, _ in dots):
                dot = context.next_dot(collapse_into)
                context = context.add((dot,))
                entries[element] = frozenset(d for d in dots if d[0] != removed) | {dot}
            else:
                entries[element] = dots
        return ORSet(entries, context)

    def pruning_cleanup(self, removed: ReplicaId) -> ORSet[A]:
        """This value without any dot of ``removed`` (for a value merged in after pruning)."""
        if not self.needs_pruning_from(removed):
            return self
        entries = {}
        for element, dots in self.entries.items():
            kept = frozenset(d for d in dots if d[0] != removed)
            if kept:
                entries[element] = kept
        return ORSet(entries, self.context.without(removed))

    def marks(self) -> ORSet[A]:
        """An empty value that reserves every dot this one has seen, so a value created again in
        a map writes above them."""
        return ORSet({}, self.context.reserved())

    def is_empty(self) -> bool:
        """Whether the value holds no dots."""
        return not self.entries
