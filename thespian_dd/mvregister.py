"""MVRegister: a multi-value register that keeps every concurrent write.

- State: the written values with the dots of the writes that put them there, plus a causal
  context (the same dot store as :class:`~thespian_dd.orset.ORSet`).
- Value: a frozenset: one value normally, several after concurrent writes, until a write that
  has seen them all replaces them.  Values must be hashable.
- Merge: as ORSet: a write survives unless the other side has seen it and overwritten it.
  Merge is linear in the number of values (no pairwise comparison of writes).
- Delta: the new write and the dots it overwrote.
- Garbage: one context slot per replica that ever wrote; pruned like ORSet.
- Not in Akka; this is the Dynamo/Riak multi-value register built as a delta-state CRDT
  (Almeida et al., "Delta State Replicated Data Types", 2018).
"""

from __future__ import annotations

from typing import Any, Generic

from thespian_dd._typevars import A
from thespian_dd.data import (
    DeltaReplicatedData,
    DotBased,
    RemovedNodePruning,
    ReplicaId,
    RequiresCausalDelivery,
)
from thespian_dd.orset import ORSet

__all__ = ["MVRegister"]


_EMPTY = ORSet()


class MVRegister(
    DeltaReplicatedData, RemovedNodePruning, RequiresCausalDelivery, DotBased, Generic[A]
):
    """``MVRegister().assign(node, "a").value == frozenset({"a"})``; ``MVRegister[str]()``
    for the type checker."""

    __slots__ = ("_delta", "writes")

    writes: ORSet[A]
    _delta: MVRegister[A] | None

    def __init__(self, writes: ORSet[A] = _EMPTY, *, _delta: MVRegister[A] | None = None) -> None:
        object.__setattr__(self, "writes", writes.reset_delta())
        object.__setattr__(self, "_delta", _delta)

    def _state(self) -> tuple[Any, ...]:
        return (self.writes,)

    @property
    def value(self) -> frozenset[A]:
        """Every value written and not yet overwritten by a write that saw it: one normally,
        several after concurrent writes."""
        return self.writes.value

    def assign(self, node: ReplicaId, value: A) -> MVRegister[A]:
        """Replace every value this replica has seen with ``value``."""
        return self._change(self.writes.clear(node).add(node, value))

    def clear(self, node: ReplicaId) -> MVRegister[A]:
        """Remove every value this replica has seen."""
        return self._change(self.writes.clear(node))

    def _change(self, writes: ORSet[A]) -> MVRegister[A]:
        if writes.delta is None:
            return self
        delta = MVRegister(writes.delta)
        return MVRegister(writes, _delta=delta if self._delta is None else self._delta.merge(delta))

    def merge(self, other: MVRegister[A]) -> MVRegister[A]:
        """The join of both registers: a write survives unless the other side has seen it and
        overwritten it; keeps this value's pending delta."""
        self._require_same_type(other)
        return MVRegister(self.writes.merge(other.writes), _delta=self._delta)

    @property
    def delta(self) -> MVRegister[A] | None:
        """The writes since the last :meth:`reset_delta` and the dots they overwrote, or
        ``None``."""
        return self._delta

    def reset_delta(self) -> MVRegister[A]:
        """This register without its pending delta."""
        return self if self._delta is None else MVRegister(self.writes)

    def modified_by_nodes(self) -> frozenset[ReplicaId]:
        """Every replica whose writes this register has seen."""
        return self.writes.modified_by_nodes()

    def needs_pruning_from(self, removed: ReplicaId) -> bool:
        """Whether dots of ``removed`` are still in this register."""
        return self.writes.needs_pruning_from(removed)

    def prune(self, removed: ReplicaId, collapse_into: ReplicaId) -> MVRegister[A]:
        """The same values, with the writes of ``removed`` re-made by ``collapse_into`` (as
        :meth:`ORSet.prune <thespian_dd.ORSet.prune>`)."""
        return MVRegister(self.writes.prune(removed, collapse_into))

    def pruning_cleanup(self, removed: ReplicaId) -> MVRegister[A]:
        """This register without any write of ``removed`` (for a value merged in after pruning)."""
        return MVRegister(self.writes.pruning_cleanup(removed))

    def is_inflation_of(self, older: MVRegister[A]) -> bool:
        """Whether this register is what writes could make of ``older`` (as
        :meth:`ORSet.is_inflation_of <thespian_dd.ORSet.is_inflation_of>`)."""
        return type(older) is MVRegister and self.writes.is_inflation_of(older.writes)

    def marks(self) -> MVRegister[A]:
        """An empty register that reserves every dot this one has seen."""
        return MVRegister(self.writes.marks())

    def is_empty(self) -> bool:
        """Whether the register holds no write."""
        return self.writes.is_empty()
