"""GCounter: a grow-only counter.

- State: one non-negative int per replica, the sum of the increments that replica made.
- Value: the sum of all slots.
- Merge: the per-replica maximum.  There are no conflicts: increments only add.
- Delta: the slots changed since the last reset (absolute values, so a delta merges like a state).
- Garbage: one slot per replica that ever incremented; ``prune`` adds a removed replica's slot
  into a live one so restarts and departures do not make the counter grow.
- Paper: Shapiro et al., "A comprehensive study of Convergent and Commutative Replicated Data
  Types" (2011), the G-Counter.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self

from thespian_dd.data import (
    DeltaReplicatedData,
    RemovedNodePruning,
    ReplicaId,
    check_count,
    check_replica,
)

__all__ = ["GCounter"]


class GCounter(DeltaReplicatedData, RemovedNodePruning):
    """A counter that only grows.  ``GCounter().increment(node, 5).value == 5``."""

    __slots__ = ("_delta", "state")

    state: Mapping[ReplicaId, int]
    _delta: GCounter | None

    def __init__(
        self, state: Mapping[ReplicaId, int] | None = None, *, _delta: GCounter | None = None
    ) -> None:
        object.__setattr__(self, "state", {r: n for r, n in (state or {}).items() if n})
        object.__setattr__(self, "_delta", _delta)

    def _state(self) -> tuple[Any, ...]:
        return (dict(self.state),)

    def __repr__(self) -> str:
        return f"GCounter({dict(sorted(self.state.items()))!r})"

    @property
    def value(self) -> int:
        return sum(self.state.values())

    def __int__(self) -> int:
        return self.value

    def increment(self, node: ReplicaId, n: int = 1) -> GCounter:
        """Add ``n >= 0`` on behalf of ``node``."""
        check_replica(node)
        if check_count("GCounter increment", n) < 0:
            raise ValueError(f"GCounter can only grow: increment must be >= 0, not {n}")
        if n == 0:
            return self
        slot = self.state.get(node, 0) + n
        state = dict(self.state)
        state[node] = slot
        delta = dict(self._delta.state) if self._delta is not None else {}
        delta[node] = slot
        return GCounter(state, _delta=GCounter(delta))

    def merge(self, other: GCounter) -> GCounter:
        self._require_same_type(other)
        if other.state.items() <= self.state.items():
            return self
        state = dict(self.state)
        for r, n in other.state.items():
            if n > state.get(r, 0):
                state[r] = n
        return GCounter(state, _delta=self._delta)

    @property
    def delta(self) -> GCounter | None:
        return self._delta

    def reset_delta(self) -> GCounter:
        return self if self._delta is None else GCounter(self.state)

    def modified_by_nodes(self) -> frozenset[ReplicaId]:
        return frozenset(self.state)

    def needs_pruning_from(self, removed: ReplicaId) -> bool:
        return removed in self.state

    def prune(self, removed: ReplicaId, collapse_into: ReplicaId) -> Self:
        if removed not in self.state:
            return self
        state = dict(self.state)
        state[collapse_into] = state.get(collapse_into, 0) + state.pop(removed)
        return type(self)(state)

    def pruning_cleanup(self, removed: ReplicaId) -> Self:
        if removed not in self.state:
            return self
        return type(self)({r: n for r, n in self.state.items() if r != removed})
