"""GCounter: a grow-only counter.

- State: the *units* of the increments, as dots: an increment of ``k`` by a replica is ``k`` new
  dots of that replica, numbered on from its highest (see :mod:`thespian_dd.data`).  Normally a
  replica's units are one run ``1..n``, stored as one int per replica; a counter created again
  inside a map starts its units above the removed counter's (reserved, not counted), so a replica
  that still holds the old counter merges both instead of hiding the new increments under the old
  total.
- Value: the number of units.
- Merge: the union of the units (per replica, the maximum when both are one run from 1).  There
  are no conflicts: increments only add.
- Delta: the whole units of the replicas that incremented since the last reset (a delta
  merges like a state, and a lost one is made good by the next).
- Garbage: one run per replica that ever incremented (two after a re-creation in a map);
  ``prune`` adds a removed replica's units to a live one so restarts and departures do not make
  the counter grow.
- Paper: Shapiro et al., "A comprehensive study of Convergent and Commutative Replicated Data
  Types" (2011), the G-Counter; units as dots as in Almeida et al., "Delta State Replicated Data
  Types" (2018).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from thespian_dd.data import (
    CausalContext,
    DeltaReplicatedData,
    DotBased,
    RemovedNodePruning,
    ReplicaId,
    check_count,
    check_replica,
)

__all__ = ["GCounter"]


class GCounter(DeltaReplicatedData, RemovedNodePruning, DotBased):
    """A counter that only grows.  ``GCounter().increment(node, 5).value == 5``."""

    __slots__ = ("_delta", "units")

    units: CausalContext
    _delta: GCounter | None

    def __init__(
        self, state: Mapping[ReplicaId, int] | None = None, *, _delta: GCounter | None = None
    ) -> None:
        """``state``: each replica's total (its units ``1..n``)."""
        if not state:  # the empty counter, most Updates' initial: nothing to check
            self._set(CausalContext._normal({}, {}), _delta)
            return
        ranges = {}
        for r, n in (state or {}).items():
            check_replica(r)
            if check_count("a GCounter slot", n) < 0:
                raise ValueError(f"a GCounter slot must be >= 0, not {n}")
            ranges[r] = (0, n)
        self._set(CausalContext(ranges), _delta)

    @classmethod
    def of_units(cls, units: CausalContext, delta: GCounter | None = None) -> Self:
        """The counter whose increments are ``units`` (see the module docs)."""
        counter = cls.__new__(cls)
        counter._set(units, delta)
        return counter

    def _set(self, units: CausalContext, delta: GCounter | None) -> None:
        object.__setattr__(self, "units", units)
        object.__setattr__(self, "_delta", delta)

    def __reduce__(self) -> tuple[Any, ...]:
        return (_of_units, (type(self), self.units))

    def _state(self) -> tuple[Any, ...]:
        return (self.units,)

    @property
    def state(self) -> dict[ReplicaId, int]:
        """Each replica's total."""
        return {r: self.units.count(r) for r in self.units.ranges}

    def __repr__(self) -> str:
        if self.units.is_contiguous() and not self.units.floor:
            return f"GCounter({dict(sorted(self.state.items()))!r})"
        return f"GCounter.of_units({self.units!r})"

    @property
    def value(self) -> int:
        """The count: the sum of every replica's increments."""
        return sum(self.units.count(r) for r in self.units.ranges)

    def __int__(self) -> int:
        return self.value

    def increment(self, node: ReplicaId, n: int = 1) -> GCounter:
        """Add ``n >= 0`` on behalf of ``node``."""
        check_replica(node)
        if check_count("GCounter increment", n) < 0:
            raise ValueError(f"GCounter can only grow: increment must be >= 0, not {n}")
        if n == 0:
            return self
        runs = self.units.ranges.get(node)
        if node not in self.units.floor and (runs is None or len(runs) == 2):
            # One run of units (or none), nothing reserved above: it grows by n.
            ranges = dict(self.units.ranges)
            ranges[node] = (0, n) if runs is None else (runs[0], runs[1] + n)
            units = CausalContext._normal(ranges, self.units.floor)
        else:
            high = self.units.high(node)
            units = self.units.merge(CausalContext({node: (high, high + n)}))
        # The delta holds the changed replicas' whole units: a lost delta is made good by the next.
        changed = dict(self._delta.units.ranges) if self._delta is not None else {}
        changed[node] = units.ranges[node]
        delta = CausalContext._normal(changed, {})
        return GCounter.of_units(units, GCounter.of_units(delta))

    def merge(self, other: GCounter) -> GCounter:
        """Every increment of either counter, counted once (the union of their units); keeps this
        value's pending delta."""
        self._require_same_type(other)
        units = self.units.merge(other.units)
        return self if units is self.units else GCounter.of_units(units, self._delta)

    def is_inflation_of(self, older: GCounter) -> bool:
        """Whether this counter holds every increment of ``older`` and only new ones above them."""
        return type(older) is GCounter and self.units.extends(older.units)

    @property
    def delta(self) -> GCounter | None:
        """The totals of the replicas that changed since the last :meth:`reset_delta`, or
        ``None``."""
        return self._delta

    def reset_delta(self) -> GCounter:
        """This counter without its pending delta."""
        return self if self._delta is None else GCounter.of_units(self.units)

    def marks(self) -> GCounter:
        """An empty counter that reserves every unit this one holds, so a counter created again
        in a map counts above them."""
        return GCounter.of_units(self.units.reserved())

    def is_empty(self) -> bool:
        """Whether no replica has counted anything here."""
        return not self.units.ranges

    def modified_by_nodes(self) -> frozenset[ReplicaId]:
        """Every replica with a slot in this counter."""
        return self.units.replicas()

    def needs_pruning_from(self, removed: ReplicaId) -> bool:
        """Whether ``removed`` still has a slot in this counter."""
        return removed in self.units.replicas()

    def prune(self, removed: ReplicaId, collapse_into: ReplicaId) -> Self:
        """The same count, with the slot of ``removed`` added to the slot of ``collapse_into``."""
        if not self.needs_pruning_from(removed):
            return self
        moved = self.units.count(removed)
        units = self.units.without(removed)
        if moved:
            high = units.high(collapse_into)
            units = units.merge(CausalContext({collapse_into: (high, high + moved)}))
        return type(self).of_units(units)

    def pruning_cleanup(self, removed: ReplicaId) -> Self:
        """This counter without the slot of ``removed`` (for a value merged in after pruning)."""
        if not self.needs_pruning_from(removed):
            return self
        return type(self).of_units(self.units.without(removed))


def _of_units(cls: type[GCounter], units: CausalContext) -> GCounter:
    """Unpickle a counter of class ``cls`` (its pending delta is never pickled)."""
    return cls.of_units(units)
