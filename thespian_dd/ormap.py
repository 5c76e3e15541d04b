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
- Updates: ``modify`` gets the key's value (or the empty ``initial``) and must return an
  *inflation* of it, made through the value's own methods; a value built anew is refused with
  ``ValueError``, since merged with a concurrent version it would drop writes.
- Dots: no replica ever numbers two changes of one key's values alike (the invariant of
  :mod:`thespian_dd.data`).  The map keeps, per key, the *marks* of every value the key has held
  (:meth:`~thespian_dd.data.DotBased.marks`: the highest dot of each replica, counters' units
  included) and merges them into the key's value before every update.  So a value created again
  after a remove, or created again by another replica and then updated here, starts above every
  dot of the values it replaced, which a replica that missed the remove may still hold: merged
  with them, the new writes and the concurrent old ones all survive.  Marks are stored only when
  they say more than the key's live versions do (after a remove, or after a merge dropped a
  version), so a map that only updates stores none.
- Delta: per updated key, its new version (the whole value of that key) and the versions it
  replaces; per removed key, the versions removed and the key's marks.  In-order delivery per
  origin keeps the context compact (:class:`~thespian_dd.data.RequiresCausalDelivery`).
- Garbage: no tombstones for removed values: the context is one run of counters per replica that
  ever updated, and a removed key of a dot-based type leaves its marks (one int per replica that
  wrote it, or two for PNCounters), until pruning drops those of removed replicas.
- Paper: Almeida, Shoker, Baquero, "Delta State Replicated Data Types" (2018), the observed-remove
  map of dotted values; Akka Distributed Data's ORMap for the interface.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from functools import reduce
from itertools import filterfalse
from typing import Any, Generic, Self, cast

from thespian_dd._typevars import D, K
from thespian_dd.data import (
    CausalContext,
    DeltaReplicatedData,
    Dot,
    DotBased,
    RemovedNodePruning,
    ReplicaId,
    ReplicatedData,
    RequiresCausalDelivery,
    add_unseen,
    check_hashable,
    check_replica,
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


def _joined(versions: Mapping[Dot, ReplicatedData]) -> ReplicatedData:
    if len(versions) == 1:
        return next(iter(versions.values()))
    return reduce(_join, (versions[d] for d in sorted(versions)))


def _marks_of(versions: Mapping[Dot, ReplicatedData] | None) -> Any:
    """The marks of the key holding ``versions`` (None: no versions, or not dot-based)."""
    if not versions:
        return None
    value = _joined(versions)
    return value.marks() if isinstance(value, DotBased) else None


def _stored(marks: Any, versions: Mapping[Dot, ReplicatedData] | None) -> Any:
    """What a key with ``versions`` stores of ``marks``: joined with its versions' own marks (so
    stored marks always cover the live values, whatever rewrote them), or None when the
    versions say as much."""
    if marks is None:
        return None
    live = _marks_of(versions)
    if live is None:
        return marks
    joined = _join(marks, live)
    return None if joined == live else joined


def _merge_versions(
    a: ORMap, b: ORMap
) -> tuple[dict[Hashable, Mapping[Dot, ReplicatedData]], set[Hashable], bool]:
    """The versions of ``a`` merged with ``b``'s (an update survives unless the other side has
    seen it and does not hold it), the keys that lost a version, and whether ``a``'s changed."""
    versions: dict[Hashable, Mapping[Dot, ReplicatedData]] = {}
    lost: set[Hashable] = set()
    changed = False
    theirs_of, only_a = b.versions.get, []
    for key, dots in a.versions.items():
        theirs = theirs_of(key)
        if theirs is dots:
            versions[key] = dots
            continue
        if theirs is None:  # a key only ``a`` holds: its versions stay unless ``b`` saw them
            only_a.append(key)
            continue
        kept = _both_sides(dots, a.context, theirs, b.context)
        if len(kept) < len(dots.keys() | theirs.keys()):
            lost.add(key)
        if kept == dots:
            versions[key] = dots
        else:
            changed = True
            if kept:
                versions[key] = kept
    if only_a:
        dropped: set[Hashable] = set()
        add_unseen(versions, a.versions, only_a, b.context, dropped)
        lost |= dropped
        changed = changed or bool(dropped)
    # The keys only ``b`` holds that ``a`` has not seen (a lost one makes its key lost).
    size = len(versions)
    add_unseen(
        versions, b.versions, filterfalse(a.versions.__contains__, b.versions), a.context, lost
    )
    return versions, lost, changed or len(versions) > size


def _both_sides(
    mine: Mapping[Dot, ReplicatedData],
    my_context: CausalContext,
    theirs: Mapping[Dot, ReplicatedData],
    their_context: CausalContext,
) -> dict[Dot, ReplicatedData]:
    """One key's versions on both sides, merged."""
    kept = _surviving(mine, their_context, theirs)
    kept.update(_surviving(theirs, my_context, None, skip=mine))
    return kept


def _surviving(
    dots: Mapping[Dot, ReplicatedData],
    their_context: CausalContext,
    theirs: Mapping[Dot, ReplicatedData] | None,
    skip: Mapping[Dot, ReplicatedData] | None = None,
) -> dict[Dot, ReplicatedData]:
    """The versions of ``dots`` the other side holds too (joined), or has not seen; those in
    ``skip`` (already joined) left out."""
    kept = {}
    for dot, value in dots.items():
        if skip is not None and dot in skip:
            continue
        other = None if theirs is None else theirs.get(dot)
        if other is not None:
            kept[dot] = value if other is value else _join(value, other)
        elif dot not in their_context:
            kept[dot] = value
    return kept


class ORMap(
    DeltaReplicatedData, RemovedNodePruning, RequiresCausalDelivery, DotBased, Generic[K, D]
):
    """A map of CRDTs: keys of type ``K``, values of the data type ``D`` (``ORMap[str,
    GCounter]()`` for the type checker).

    ``ORMap().update(node, "a", GCounter(), lambda c: c.increment(node, 2)).value == {"a": 2}``
    """

    __slots__ = ("_delta", "context", "floors", "versions")

    versions: Mapping[Any, Mapping[Dot, ReplicatedData]]
    context: CausalContext
    floors: Mapping[Any, Any]
    """Per key, the marks of every value it has held, where they say more than its versions."""
    _delta: ORMap[K, D] | None

    def __init__(
        self,
        versions: Mapping[Hashable, Mapping[Dot, ReplicatedData]] | None = None,
        context: CausalContext = _EMPTY_CONTEXT,
        floors: Mapping[Hashable, Any] | None = None,
        *,
        _delta: ORMap[K, D] | None = None,
    ) -> None:
        object.__setattr__(self, "versions", dict(versions or {}))
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "floors", dict(floors or {}))
        object.__setattr__(self, "_delta", _delta)

    def _state(self) -> tuple[Any, ...]:
        return (self.versions, self.context, self.floors)

    def get(self, key: K) -> D | None:
        """The CRDT stored under ``key`` (its surviving versions merged), or ``None``."""
        versions = self.versions.get(key)
        return cast("D", _joined(versions)) if versions else None

    def _marks(self, key: Hashable) -> Any:
        """The marks of every value ``key`` has held (None: none, or not dot-based)."""
        stored = self.floors.get(key)
        return stored if stored is not None else _marks_of(self.versions.get(key))

    @property
    def entries(self) -> dict[K, D]:
        """``{key: crdt}`` for every present key."""
        return {key: cast("D", _joined(versions)) for key, versions in self.versions.items()}

    @property
    def value(self) -> dict[K, Any]:
        """``{key: value}``: the plain value of every present key's CRDT."""
        return {key: crdt.value for key, crdt in self.entries.items()}

    def __contains__(self, key: object) -> bool:
        return key in self.versions

    def __iter__(self) -> Iterator[K]:
        return iter(self.versions)

    def __len__(self) -> int:
        return len(self.versions)

    def update(
        self,
        node: ReplicaId,
        key: K,
        initial: D,
        modify: Callable[[D], D],
    ) -> ORMap[K, D]:
        """Set ``key`` to ``modify(current)``; current is the stored value, or ``initial``.

        ``modify`` must return an inflation of what it is given, of the same type, made through
        its methods on behalf of ``node`` (``ValueError`` otherwise: a value built anew would
        lose writes in the next merge).  The update wins over a concurrent remove of the key.
        """
        check_replica(node)
        check_hashable("an ORMap key", key)
        if not isinstance(initial, ReplicatedData):
            raise TypeError(
                f"ORMap initial value must be a CRDT (ReplicatedData), not {type(initial).__name__}"
            )
        current = self.get(key)
        marks = self.floors.get(key)
        held = current if current is not None else marks
        if held is not None and type(held) is not type(initial):
            raise TypeError(
                f"ORMap key {key!r} holds a {type(held).__name__}; a key's value type never "
                f"changes (initial is a {type(initial).__name__})"
            )
        base = self._fresh(initial) if current is None else current
        if marks is not None:
            base = base.merge(marks)  # start above every dot of the values this key held
        if isinstance(base, DeltaReplicatedData):
            base = base.reset_delta()
        new = modify(base)
        if type(new) is not type(base):
            raise TypeError(
                f"modify for ORMap key {key!r} must return a {type(base).__name__}, "
                f"not {type(new).__name__}"
            )
        if not new.is_inflation_of(base):
            raise ValueError(
                f"modify for ORMap key {key!r} must change the {type(base).__name__} it is "
                "given through its methods: what it returned is not an inflation of it (a value "
                "built anew loses or reuses what the key holds, so a merge would drop writes)"
            )
        if isinstance(new, DeltaReplicatedData):
            new = new.reset_delta()
        dot = self.context.next_dot(node)
        replaced = frozenset(self.versions.get(key, ()))
        versions = dict(self.versions)
        versions[key] = {dot: new}
        floors = self.floors
        if marks is not None:  # the new value reserves them all now
            floors = {k: m for k, m in floors.items() if k != key}
        delta = ORMap({key: {dot: new}}, CausalContext.of_dots(replaced | {dot}))
        return ORMap(versions, self.context.add((dot,)), floors, _delta=self._with_delta(delta))

    def _fresh(self, initial: D) -> D:
        if isinstance(initial, DotBased) and not initial.is_empty():
            raise ValueError(
                f"the initial {type(initial).__name__} of an ORMap key must be empty: "
                "make the first changes in modify"
            )
        return initial

    def remove(self, node: ReplicaId, key: K) -> ORMap[K, D]:
        """Remove ``key`` as observed here (a concurrent update of it wins)."""
        check_replica(node)
        check_hashable("an ORMap key", key)
        if key not in self.versions:
            return self
        marks = self._marks(key)
        versions = dict(self.versions)
        removed = versions.pop(key)
        floors = dict(self.floors)
        kept: dict[Hashable, Any] = {} if marks is None else {key: marks}
        floors.update(kept)
        delta = ORMap({}, CausalContext.of_dots(removed), kept)
        return ORMap(versions, self.context, floors, _delta=self._with_delta(delta))

    def _with_delta(self, delta: ORMap[K, D]) -> ORMap[K, D]:
        return delta if self._delta is None else self._delta.merge(delta)

    def merge(self, other: ORMap[K, D]) -> ORMap[K, D]:
        """The join of both maps: a key's update survives unless the other side has seen it and
        removed or replaced it (an update concurrent with a remove wins); the values of
        concurrent updates of one key are merged; each key's marks are kept. Keeps this value's
        pending delta."""
        self._require_same_type(other)
        if other is self:
            return self
        versions, lost, changed = _merge_versions(self, other)
        # Marks to work out: of keys holding stored marks, or losing a version here (the marks
        # of what they lose must stay).
        floors = {}
        for key in lost.union(self.floors, other.floors):
            a, b = self._marks(key), other._marks(key)
            stored = _stored(a if b is None else b if a is None else _join(a, b), versions.get(key))
            if stored is not None:
                floors[key] = stored
        context = self.context.merge(other.context)
        if not changed and context is self.context and floors == self.floors:
            return self
        return ORMap(versions, context, floors, _delta=self._delta)

    def is_inflation_of(self, older: ORMap[K, D]) -> bool:
        """Whether merging ``older`` in changes nothing, and every version ``older`` holds is
        still held unchanged or replaced (a new version under an old dot would be dropped by a
        replica that replaced that dot)."""
        if type(older) is not type(self) or not self.context.extends(older.context):
            return False
        seen = older.context
        for key, dots in self.versions.items():
            old = older.versions.get(key)
            if old is dots:
                continue
            for dot, value in dots.items():
                if dot not in seen:
                    continue  # a new version: the merge keeps it
                # A version is one write: a replica that replaced it drops it whole, so it
                # cannot take more (a map built anew reuses dots this way).
                old_value = None if old is None else old.get(dot)
                if old_value is None or not (old_value is value or old_value == value):
                    return False
        for key, dots in older.versions.items():
            if self.versions.get(key) is not dots and not self._keeps_marks(key, older):
                return False
        return all(self._keeps_marks(key, older) for key in older.floors)

    def _keeps_marks(self, key: Hashable, older: ORMap[K, D]) -> bool:
        theirs = older._marks(key)
        if theirs is None:
            return True
        mine = self._marks(key)
        return mine is not None and mine.is_inflation_of(theirs)

    @property
    def delta(self) -> ORMap[K, D] | None:
        """The updates and removes since the last :meth:`reset_delta`, or ``None``."""
        return self._delta

    def reset_delta(self) -> ORMap[K, D]:
        """This map without its pending delta."""
        return self if self._delta is None else ORMap(self.versions, self.context, self.floors)

    def marks(self) -> ORMap[K, D]:
        """An empty map that reserves every dot this one has seen, and keeps every key's marks."""
        keys = set(self.versions).union(self.floors)
        floors = {key: self._marks(key) for key in keys}
        kept = {k: m for k, m in floors.items() if m is not None}
        return ORMap({}, self.context.reserved(), kept)

    def is_empty(self) -> bool:
        """Whether the map has no key."""
        return not self.versions

    def _all_values(self) -> Iterator[ReplicatedData]:
        for versions in self.versions.values():
            yield from versions.values()

    def modified_by_nodes(self) -> frozenset[ReplicaId]:
        """Every replica whose dots this map, or a value in it, has seen."""
        nodes = set(self.context.replicas())
        for v in (*self._all_values(), *self.floors.values()):
            if isinstance(v, RemovedNodePruning):
                nodes.update(v.modified_by_nodes())
        return frozenset(nodes)

    def needs_pruning_from(self, removed: ReplicaId) -> bool:
        """Whether ``removed`` is still in this map or in a value in it."""
        return removed in self.modified_by_nodes()

    def prune(self, removed: ReplicaId, collapse_into: ReplicaId) -> ORMap[K, D]:
        """Re-write every key that ``removed`` touched as one update by ``collapse_into``.

        Each such key's versions are merged, pruned, and stored under one new dot of
        ``collapse_into``: an update that has seen them all, so it replaces them everywhere.
        """
        if not self.needs_pruning_from(removed):
            return self
        context = self.context.without(removed)
        versions: dict[Hashable, Mapping[Dot, ReplicatedData]] = {}
        for key, dots in self.versions.items():
            value: Any = self.get(key)
            if not any(d[0] == removed for d in dots) and not (
                isinstance(value, RemovedNodePruning) and value.needs_pruning_from(removed)
            ):
                versions[key] = dots
                continue
            marks = self.floors.get(key)
            if marks is not None:
                # Dots made by pruning must not reuse dots of values this key held before.
                value = value.merge(marks)
            if isinstance(value, RemovedNodePruning):
                value = value.prune(removed, collapse_into)
            dot = context.next_dot(collapse_into)
            context = context.add((dot,))
            versions[key] = {dot: value}
        return ORMap(versions, context, self._floors_without(removed, versions))

    def pruning_cleanup(self, removed: ReplicaId) -> ORMap[K, D]:
        """This map without any version or slot of ``removed`` (for a value merged in after
        pruning)."""
        if not self.needs_pruning_from(removed):
            return self
        versions: dict[Hashable, dict[Dot, ReplicatedData]] = {}
        floors = dict(self.floors)
        for key, dots in self.versions.items():
            kept = {
                dot: v.pruning_cleanup(removed) if isinstance(v, RemovedNodePruning) else v
                for dot, v in dots.items()
                if dot[0] != removed
            }
            if len(kept) < len(dots) and (marks := self._marks(key)) is not None:
                floors[key] = marks  # the marks of the versions it drops stay
            if kept:
                versions[key] = kept
        kept_marks = ORMap(versions, self.context, floors)
        floors = kept_marks._floors_without(removed, versions)
        return ORMap(versions, self.context.without(removed), floors)

    def _floors_without(
        self, removed: ReplicaId, versions: Mapping[Hashable, Mapping[Dot, ReplicatedData]]
    ) -> dict[Hashable, Any]:
        """The stored marks without ``removed``'s, for a map holding ``versions``."""
        floors = {}
        for key, marks in self.floors.items():
            stored = _stored(marks.pruning_cleanup(removed), versions.get(key))
            if stored is not None:
                floors[key] = stored
        return floors


class ORMapBacked(
    DeltaReplicatedData, RemovedNodePruning, RequiresCausalDelivery, DotBased, Generic[K]
):
    """A specialised map stored as an :class:`ORMap` (``LWWMap``, ``PNCounterMap``, ``ORMultiMap``).

    Merge, deltas and pruning are the ORMap's; subclasses add typed mutators and a plain value.
    """

    __slots__ = ("_delta", "underlying")

    underlying: ORMap[K, Any]
    _delta: Any

    def __init__(self, underlying: ORMap[K, Any] | None = None, *, _delta: Any = None) -> None:
        object.__setattr__(
            self, "underlying", (ORMap() if underlying is None else underlying).reset_delta()
        )
        object.__setattr__(self, "_delta", _delta)

    def _state(self) -> tuple[Any, ...]:
        return (self.underlying,)

    def _changed(self, underlying: ORMap[K, Any]) -> Self:
        if underlying.delta is None:
            return self
        delta = type(self)(underlying.delta)
        if self._delta is not None:
            delta = self._delta.merge(delta)
        return type(self)(underlying, _delta=delta)

    def __contains__(self, key: object) -> bool:
        return key in self.underlying

    def __iter__(self) -> Iterator[K]:
        return iter(self.underlying)

    def __len__(self) -> int:
        return len(self.underlying)

    def remove(self, node: ReplicaId, key: K) -> Self:
        """Remove ``key`` as observed here (a concurrent update of it wins)."""
        return self._changed(self.underlying.remove(node, key))

    def merge(self, other: Self) -> Self:
        """The join of both maps (:meth:`ORMap.merge <thespian_dd.ORMap.merge>`); keeps this
        value's pending delta."""
        self._require_same_type(other)
        return type(self)(self.underlying.merge(other.underlying), _delta=self._delta)

    @property
    def delta(self) -> Self | None:
        """What changed since the last :meth:`reset_delta`, or ``None``."""
        delta: Self | None = self._delta
        return delta

    def reset_delta(self) -> Self:
        """This map without its pending delta."""
        return self if self._delta is None else type(self)(self.underlying)

    def modified_by_nodes(self) -> frozenset[ReplicaId]:
        """Every replica whose dots this map, or a value in it, has seen."""
        return self.underlying.modified_by_nodes()

    def needs_pruning_from(self, removed: ReplicaId) -> bool:
        """Whether ``removed`` is still in this map or in a value in it."""
        return self.underlying.needs_pruning_from(removed)

    def prune(self, removed: ReplicaId, collapse_into: ReplicaId) -> Self:
        """The same value, with what ``removed`` wrote re-made by ``collapse_into``
        (:meth:`ORMap.prune <thespian_dd.ORMap.prune>`)."""
        return type(self)(self.underlying.prune(removed, collapse_into))

    def pruning_cleanup(self, removed: ReplicaId) -> Self:
        """This map without what ``removed`` wrote (for a value merged in after pruning)."""
        return type(self)(self.underlying.pruning_cleanup(removed))

    def is_inflation_of(self, older: Self) -> bool:
        """Whether this map is what changes could make of ``older`` (:meth:`ORMap.is_inflation_of
        <thespian_dd.ORMap.is_inflation_of>`)."""
        return type(older) is type(self) and self.underlying.is_inflation_of(older.underlying)

    def marks(self) -> Self:
        """An empty map that reserves every dot this one has seen, and keeps every key's marks."""
        return type(self)(self.underlying.marks())

    def is_empty(self) -> bool:
        """Whether the map has no key."""
        return self.underlying.is_empty()
