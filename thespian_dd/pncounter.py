"""PNCounter: a counter that goes up and down.

- State: two :class:`GCounter` s, ``p`` for increments and ``n`` for decrements.
- Value: ``p.value - n.value`` (an unbounded Python int).
- Merge: each GCounter merged on its own; no conflicts.
- Delta: the changed slots of either side.
- Garbage: two slots per replica that ever changed it; pruned like GCounter.
- Inside a map, a counter created again after a remove starts both sides above the removed
  counter's units (see :class:`~thespian_dd.gcounter.GCounter`), so no increment is ever hidden.
- Paper: Shapiro et al. (2011), the PN-Counter.
"""

from __future__ import annotations

from typing import Any

from thespian_dd.data import (
    DeltaReplicatedData,
    DotBased,
    RemovedNodePruning,
    ReplicaId,
    check_count,
)
from thespian_dd.gcounter import GCounter

__all__ = ["PNCounter"]

_ZERO = GCounter()


class PNCounter(DeltaReplicatedData, RemovedNodePruning, DotBased):
    """``PNCounter().increment(node, 5).decrement(node, 2).value == 3``."""

    __slots__ = ("_delta", "n", "p")

    p: GCounter
    n: GCounter
    _delta: PNCounter | None

    def __init__(
        self,
        p: GCounter = _ZERO,
        n: GCounter = _ZERO,
        *,
        _delta: PNCounter | None = None,
    ) -> None:
        object.__setattr__(self, "p", p.reset_delta())
        object.__setattr__(self, "n", n.reset_delta())
        object.__setattr__(self, "_delta", _delta)

    def _state(self) -> tuple[Any, ...]:
        return (self.p, self.n)

    @property
    def value(self) -> int:
        """The count: every increment minus every decrement."""
        return self.p.value - self.n.value

    def __int__(self) -> int:
        return self.value

    def increment(self, node: ReplicaId, n: int = 1) -> PNCounter:
        """Add ``n`` on behalf of ``node``; a negative ``n`` decrements."""
        if check_count("PNCounter increment", n) < 0:
            return self.decrement(node, -n)
        return self._change(self.p.increment(node, n), self.n)

    def decrement(self, node: ReplicaId, n: int = 1) -> PNCounter:
        """Subtract ``n`` on behalf of ``node``; a negative ``n`` increments."""
        if check_count("PNCounter decrement", n) < 0:
            return self.increment(node, -n)
        return self._change(self.p, self.n.increment(node, n))

    def _change(self, p: GCounter, n: GCounter) -> PNCounter:
        if p is self.p and n is self.n:
            return self
        d = self._delta or PNCounter()
        delta = PNCounter(d.p.merge(p.delta or _ZERO), d.n.merge(n.delta or _ZERO))
        return PNCounter(p, n, _delta=delta)

    def merge(self, other: PNCounter) -> PNCounter:
        """Every increment and decrement of either counter, counted once (the union of their
        units); keeps this value's pending delta."""
        self._require_same_type(other)
        return PNCounter(self.p.merge(other.p), self.n.merge(other.n), _delta=self._delta)

    def is_inflation_of(self, older: PNCounter) -> bool:
        """Whether this counter holds every increment and decrement of ``older`` and only new
        ones above them."""
        return (
            type(older) is PNCounter
            and self.p.is_inflation_of(older.p)
            and self.n.is_inflation_of(older.n)
        )

    def marks(self) -> PNCounter:
        """An empty counter that reserves every unit this one holds, so a counter created again
        in a map counts above them."""
        return PNCounter(self.p.marks(), self.n.marks())

    def is_empty(self) -> bool:
        """Whether no replica has counted anything here."""
        return self.p.is_empty() and self.n.is_empty()

    @property
    def delta(self) -> PNCounter | None:
        """The totals of the replicas that changed since the last :meth:`reset_delta`, or
        ``None``."""
        return self._delta

    def reset_delta(self) -> PNCounter:
        """This counter without its pending delta."""
        return self if self._delta is None else PNCounter(self.p, self.n)

    def modified_by_nodes(self) -> frozenset[ReplicaId]:
        """Every replica with a slot in this counter."""
        return self.p.modified_by_nodes() | self.n.modified_by_nodes()

    def needs_pruning_from(self, removed: ReplicaId) -> bool:
        """Whether ``removed`` still has a slot in this counter."""
        return self.p.needs_pruning_from(removed) or self.n.needs_pruning_from(removed)

    def prune(self, removed: ReplicaId, collapse_into: ReplicaId) -> PNCounter:
        """The same count, with the slot of ``removed`` added to the slot of ``collapse_into``."""
        return PNCounter(self.p.prune(removed, collapse_into), self.n.prune(removed, collapse_into))

    def pruning_cleanup(self, removed: ReplicaId) -> PNCounter:
        """This counter without the slot of ``removed`` (for a value merged in after pruning)."""
        return PNCounter(self.p.pruning_cleanup(removed), self.n.pruning_cleanup(removed))
