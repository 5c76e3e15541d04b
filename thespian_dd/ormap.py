"""ORMap: a map from hashable keys to CRDT values, where an update wins over a concurrent remove.

- State: a causal context of *update events* (dots) and, per key, the value written by each
  surviving update: ``{key: {dot: crdt}}``.  Normally one dot per key; two or more only after
  concurrent updates of the key, until the next update replaces them all.  A key's value type
  never changes: an update or a merge that would change it raises ``TypeError``.
- Value: ``{key: crdt.value}``, where a key's CRDT is the merge of its surviving versions;
  :meth:`get` returns that CRDT.
- Merge: an update survives unless the other side has seen it and replaced or removed it (the
  ORSet rule, applied to update events).  So a remove removes exactly the updates it observed: an
  update concurrent with a remove wins and brings the value as its replica knew it, and a removed
  value never comes back through a stale replica.  This differs from Akka, whose ORMap merges every
  surviving key's values from both sides (which can bring a removed value back, and which is not
  associative: the result then depends on the order of merges).
- A key created again after a remove starts from the given initial value.  Dot-based values
  (ORSet, MVRegister, nested maps) number their dots above every dot the map has used for that
  replica (``floors``), so a new add is never mistaken for a removed one; the initial value of such
  a type must be empty.  Counters restart from zero: if a replica that had not seen the remove
  increments the old counter concurrently, the two versions merge slot by slot, so the re-creating
  replica's new increments count only beyond its old total.
- Delta: per updated key, its new version (the whole value of that key) and the versions it
  replaces; per removed key, the versions removed.  In-order delivery per origin keeps the context
  compact (:class:`~thespian_dd.data.RequiresCausalDelivery`).
- Garbage: no tombstones for removed keys: the context is one run of counters per replica that
  ever updated, plus ``floors``, one int per replica (the highest dot used inside values).
- Paper: Almeida, Shoker, Baquero, "Delta State Replicated Data Types" (2018), the observed-remove
  map of dotted values; Akka Distributed Data's ORMap for the interface.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from functools import reduce
from typing import Any

from thespian_dd.data import (
    CausalContext,
    DeltaReplicatedData,
    Dot,
    DotBased,
    RemovedNodePruning,
    ReplicaId,
    ReplicatedData,
    RequiresCausalDelivery,
    check_hashable,
    check_replica,
    merge_dotted,
)

__all__ = ["ORMap", "ORMapBacked"]

_EMPTY_CONTEXT = CausalContext()


def _join(a: ReplicatedData, b: ReplicatedData) -> ReplicatedData:
    if type(a) is not type(b):
        raise TypeError(
            f"cannot merge a {type(a).__name__} with a {type(b).__name__} under one ORMap key "
            "(a key's value type never changes)"
        )
    return a.merge(b)


class ORMap(DeltaReplicatedData, RemovedNodePruning, RequiresCausalDelivery, DotBased):
    """A map of CRDTs.

    ``ORMap().update(node, "a", GCounter(), lambda c: c.increment(node, 2)).value == {"a": 2}``
    """

    __slots__ = ("_delta", "context", "floors", "versions")

    versions: Mapping[Any, Mapping[Dot, ReplicatedData]]
    context: CausalContext
    floors: Mapping[ReplicaId, int]
    _delta: ORMap | None

    def __init__(
        self,
        versions: Mapping[Hashable, Mapping[Dot, ReplicatedData]] | None = None,
        context: CausalContext = _EMPTY_CONTEXT,
        floors: Mapping[ReplicaId, int] | None = None,
        *,
        _delta: ORMap | None = None,
    ) -> None:
        object.__setattr__(self, "versions", dict(versions or {}))
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "floors", {r: n for r, n in (floors or {}).items() if n})
        object.__setattr__(self, "_delta", _delta)

    def _state(self) -> tuple[Any, ...]:
        return (self.versions, self.context, self.floors)

    def get(self, key: Hashable) -> Any:
        """The CRDT stored under ``key`` (its surviving versions merged), or ``None``."""
        versions = self.versions.get(key)
        if not versions:
            return None
        if len(versions) == 1:
            return next(iter(versions.values()))
        return reduce(_join, (versions[d] for d in sorted(versions)))

    @property
    def entries(self) -> dict[Any, Any]:
        """``{key: crdt}`` for every present key."""
        return {key: self.get(key) for key in self.versions}

    @property
    def value(self) -> dict[Any, Any]:
        return {key: crdt.value for key, crdt in self.entries.items()}

    def __contains__(self, key: object) -> bool:
        return key in self.versions

    def __iter__(self) -> Iterator[Any]:
        return iter(self.versions)

    def __len__(self) -> int:
        return len(self.versions)

    def update(
        self,
        node: ReplicaId,
        key: Hashable,
        initial: ReplicatedData,
        modify: Callable[[Any], Any],
    ) -> ORMap:
        """Set ``key`` to ``modify(current)``; current is the stored value, or ``initial``.

        ``modify`` must return a value of the same type.  The update is made on behalf of
        ``node`` and wins over a concurrent remove of the key.
        """
        check_replica(node)
        check_hashable("an ORMap key", key)
        if not isinstance(initial, ReplicatedData):
            raise TypeError(
                f"ORMap initial value must be a CRDT (ReplicatedData), not {type(initial).__name__}"
            )
        current = self.get(key)
        if current is not None and type(current) is not type(initial):
            raise TypeError(
                f"ORMap key {key!r} holds a {type(current).__name__}; a key's value type never "
                f"changes (initial is a {type(initial).__name__})"
            )
        base = self._fresh(node, initial) if current is None else current
        if isinstance(base, DeltaReplicatedData):
            base = base.reset_delta()
        new = modify(base)
        if type(new) is not type(base):
            raise TypeError(
                f"modify for ORMap key {key!r} must return a {type(base).__name__}, "
                f"not {type(new).__name__}"
            )
        if isinstance(new, DeltaReplicatedData):
            new = new.reset_delta()
        dot = self.context.next_dot(node)
        replaced = frozenset(self.versions.get(key, ()))
        versions = dict(self.versions)
        versions[key] = {dot: new}
        floors = dict(self.floors)
        if isinstance(new, DotBased):
            floors[node] = max(floors.get(node, 0), new.dot_high(node))
        delta = ORMap(
            {key: {dot: new}},
            CausalContext.of_dots(replaced | {dot}),
            {node: floors.get(node, 0)},
        )
        return ORMap(versions, self.context.add((dot,)), floors, _delta=self._with_delta(delta))

    def _fresh(self, node: ReplicaId, initial: ReplicatedData) -> ReplicatedData:
        if not isinstance(initial, DotBased):
            return initial
        if not initial.is_empty():
            raise ValueError(
                f"the initial {type(initial).__name__} of an ORMap key must be empty: "
                "make the first changes in modify"
            )
        return initial.with_floor(node, self.floors.get(node, 0))

    def remove(self, node: ReplicaId, key: Hashable) -> ORMap:
        """Remove ``key`` as observed here (a concurrent update of it wins)."""
        check_replica(node)
        check_hashable("an ORMap key", key)
        if key not in self.versions:
            return self
        versions = dict(self.versions)
        removed = versions.pop(key)
        delta = ORMap({}, CausalContext.of_dots(removed))
        return ORMap(versions, self.context, self.floors, _delta=self._with_delta(delta))

    def _with_delta(self, delta: ORMap) -> ORMap:
        return delta if self._delta is None else self._delta.merge(delta)

    def merge(self, other: ORMap) -> ORMap:
        self._require_same_type(other)
        if other is self:
            return self
        versions = merge_dotted(self.versions, self.context, other.versions, other.context, _join)
        floors = dict(self.floors)
        for r, n in other.floors.items():
            if n > floors.get(r, 0):
                floors[r] = n
        return ORMap(versions, self.context.merge(other.context), floors, _delta=self._delta)

    @property
    def delta(self) -> ORMap | None:
        return self._delta

    def reset_delta(self) -> ORMap:
        return self if self._delta is None else ORMap(self.versions, self.context, self.floors)

    def dot_high(self, node: ReplicaId) -> int:
        return max(self.context.high(node), self.floors.get(node, 0))

    def with_floor(self, node: ReplicaId, n: int) -> ORMap:
        floors = dict(self.floors)
        floors[node] = max(floors.get(node, 0), n)
        return ORMap(self.versions, self.context.with_floor(node, n), floors)

    def is_empty(self) -> bool:
        return not self.versions

    def _all_values(self) -> Iterator[ReplicatedData]:
        for versions in self.versions.values():
            yield from versions.values()

    def modified_by_nodes(self) -> frozenset[ReplicaId]:
        nodes = set(self.context.replicas()) | set(self.floors)
        for v in self._all_values():
            if isinstance(v, RemovedNodePruning):
                nodes.update(v.modified_by_nodes())
        return frozenset(nodes)

    def needs_pruning_from(self, removed: ReplicaId) -> bool:
        return removed in self.modified_by_nodes()

    def prune(self, removed: ReplicaId, collapse_into: ReplicaId) -> ORMap:
        """Re-write every key that ``removed`` touched as one update by ``collapse_into``.

        Each such key's versions are merged, pruned, and stored under one new dot of
        ``collapse_into``: an update that has seen them all, so it replaces them everywhere.
        """
        if not self.needs_pruning_from(removed):
            return self
        context = self.context.without(removed)
        floors = self._floors_without(removed)
        versions: dict[Hashable, Mapping[Dot, ReplicatedData]] = {}
        for key, dots in self.versions.items():
            value = self.get(key)
            if not any(d[0] == removed for d in dots) and not (
                isinstance(value, RemovedNodePruning) and value.needs_pruning_from(removed)
            ):
                versions[key] = dots
                continue
            if isinstance(value, DotBased):
                # New dots made by pruning must not reuse dots of removed versions of the key.
                value = value.with_floor(collapse_into, floors.get(collapse_into, 0))
            if isinstance(value, RemovedNodePruning):
                value = value.prune(removed, collapse_into)
            if isinstance(value, DotBased):
                high = value.dot_high(collapse_into)
                floors[collapse_into] = max(floors.get(collapse_into, 0), high)
            dot = context.next_dot(collapse_into)
            context = context.add((dot,))
            versions[key] = {dot: value}
        return ORMap(versions, context, floors)

    def pruning_cleanup(self, removed: ReplicaId) -> ORMap:
        if not self.needs_pruning_from(removed):
            return self
        versions: dict[Hashable, dict[Dot, ReplicatedData]] = {}
        for key, dots in self.versions.items():
            kept = {
                dot: v.pruning_cleanup(removed) if isinstance(v, RemovedNodePruning) else v
                for dot, v in dots.items()
                if dot[0] != removed
            }
            if kept:
                versions[key] = kept
        return ORMap(versions, self.context.without(removed), self._floors_without(removed))

    def _floors_without(self, removed: ReplicaId) -> dict[ReplicaId, int]:
        return {r: n for r, n in self.floors.items() if r != removed}


class ORMapBacked(DeltaReplicatedData, RemovedNodePruning, RequiresCausalDelivery, DotBased):
    """A specialised map stored as an :class:`ORMap` (``LWWMap``, ``PNCounterMap``, ``ORMultiMap``).

    Merge, deltas and pruning are the ORMap's; subclasses add typed mutators and a plain value.
    """

    __slots__ = ("_delta", "underlying")

    underlying: ORMap
    _delta: Any

    def __init__(self, underlying: ORMap | None = None, *, _delta: Any = None) -> None:
        object.__setattr__(
            self, "underlying", (ORMap() if underlying is None else underlying).reset_delta()
        )
        object.__setattr__(self, "_delta", _delta)

    def _state(self) -> tuple[Any, ...]:
        return (self.underlying,)

    def _changed(self, underlying: ORMap) -> Any:
        if underlying.delta is None:
            return self
        delta = type(self)(underlying.delta)
        if self._delta is not None:
            delta = self._delta.merge(delta)
        return type(self)(underlying, _delta=delta)

    def __contains__(self, key: object) -> bool:
        return key in self.underlying

    def __iter__(self) -> Iterator[Any]:
        return iter(self.underlying)

    def __len__(self) -> int:
        return len(self.underlying)

    def remove(self, node: ReplicaId, key: Hashable) -> Any:
        """Remove ``key`` as observed here (a concurrent update of it wins)."""
        return self._changed(self.underlying.remove(node, key))

    def merge(self, other: Any) -> Any:
        self._require_same_type(other)
        return type(self)(self.underlying.merge(other.underlying), _delta=self._delta)

    @property
    def delta(self) -> Any:
        return self._delta

    def reset_delta(self) -> Any:
        return self if self._delta is None else type(self)(self.underlying)

    def modified_by_nodes(self) -> frozenset[ReplicaId]:
        return self.underlying.modified_by_nodes()

    def needs_pruning_from(self, removed: ReplicaId) -> bool:
        return self.underlying.needs_pruning_from(removed)

    def prune(self, removed: ReplicaId, collapse_into: ReplicaId) -> Any:
        return type(self)(self.underlying.prune(removed, collapse_into))

    def pruning_cleanup(self, removed: ReplicaId) -> Any:
        return type(self)(self.underlying.pruning_cleanup(removed))

    def dot_high(self, node: ReplicaId) -> int:
        return self.underlying.dot_high(node)

    def with_floor(self, node: ReplicaId, n: int) -> Any:
        return type(self)(self.underlying.with_floor(node, n))

    def is_empty(self) -> bool:
        return self.underlying.is_empty()
