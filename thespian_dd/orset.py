"""ORSet: an observed-remove set where a concurrent add wins over a remove.

- State: for each element the *dots* (``(replica, n)`` events) of the adds that put it there, plus
  a causal context: every dot this replica has seen (normally a version vector; see
  :class:`~thespian_dd.data.CausalContext`).
- Value: the elements that hold at least one dot.
- Merge: a dot survives if both sides hold it, or if one side holds it and the other has not seen
  it; a dot the other side has seen but no longer holds was removed there.  So a remove only
  removes the adds it observed: an add concurrent with a remove wins.
- Adding an element again replaces its dots with one new dot (as Akka does), so an element holds
  one dot except briefly after concurrent adds.  Such an element holds its dot as it is (the
  tuple), not in a frozenset of one: that saves a frozenset per element, and lets a merge read
  the dot without iterating a set (see :func:`dots_of`).
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

from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping
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
)

__all__ = ["ORSet"]


Held = Dot | frozenset[Dot]
"""The dots of one element: the dot itself when it is one (nearly always), else a frozenset of
two or more (after concurrent adds)."""


_EMPTY_CONTEXT = CausalContext()


def dots_of(held: Held) -> Collection[Dot]:
    """The dots an element holds (as stored in :attr:`ORSet.entries`), as a collection."""
    return held if isinstance(held, frozenset) else (held,)


def held_of(dots: Collection[Dot]) -> Held | None:
    """What an element holding ``dots`` (distinct) stores: the dot when it is one, None for none."""
    if len(dots) > 1:
        return dots if isinstance(dots, frozenset) else frozenset(dots)
    for dot in dots:
        return dot
    return None


def _normal(held: Any) -> Any:
    """``held`` as the constructor stores it: a frozenset of one dot becomes that dot."""
    if isinstance(held, frozenset) and len(held) == 1:
        for dot in held:
            return dot
    return held


class ORSet(DeltaReplicatedData, RemovedNodePruning, RequiresCausalDelivery, DotBased, Generic[A]):
    """An add-wins set of elements of type ``A`` (``ORSet[str]()`` for the type checker).

    ``ORSet().add(node, "a").add(node, "b").remove(node, "a").value == frozenset({"b"})``
    """

    __slots__ = ("_delta", "context", "entries")

    entries: Mapping[Any, Held]
    context: CausalContext
    _delta: ORSet[A] | None

    def __init__(
        self,
        entries: Mapping[Hashable, frozenset[Dot] | Dot] | None = None,
        context: CausalContext = _EMPTY_CONTEXT,
    ) -> None:
        object.__setattr__(self, "entries", {e: _normal(h) for e, h in (entries or {}).items()})
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "_delta", None)

    @classmethod
    def _of(
        cls, entries: dict[Any, Held], context: CausalContext, delta: ORSet[A] | None = None
    ) -> ORSet[A]:
        """A set from entries already in the stored form, taken as they are (no copy)."""
        made = cls.__new__(cls)
        object.__setattr__(made, "entries", entries)
        object.__setattr__(made, "context", context)
        object.__setattr__(made, "_delta", delta)
        return made

    def __reduce__(self) -> tuple[Any, ...]:
        # Each element's dots as a frozenset, as releases before the one-dot form pickled them,
        # so that they unpickle what this one pickles.
        entries = {e: frozenset(dots_of(h)) for e, h in self.entries.items()}
        return (type(self), (entries, self.context))

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
        added: dict[Hashable, Held] = {}
        replaced: list[Dot] = []
        new_dots: list[Dot] = []
        _, n = self.context.next_dot(node)
        for element in elements:
            check_hashable("an ORSet element", element)
            old = entries.get(element)
            if old is not None:
                replaced += dots_of(old)
            dot = (node, n + len(new_dots))
            new_dots.append(dot)
            entries[element] = added[element] = dot
        if not added:
            return self
        delta = ORSet._of(added, CausalContext.of_dots({*replaced, *new_dots}))
        return ORSet._of(entries, self.context.add(new_dots), self._with_delta(delta))

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
            old = entries.pop(element, None)
            if old is not None:
                removed.update(dots_of(old))
        if not removed:
            return self
        delta = ORSet._of({}, CausalContext.of_dots(removed))
        return ORSet._of(entries, self.context, self._with_delta(delta))

    def clear(self, node: ReplicaId) -> ORSet[A]:
        """Remove every element observed here."""
        check_replica(node)
        if not self.entries:
            return self
        seen = [d for held in self.entries.values() for d in dots_of(held)]
        delta = ORSet._of({}, CausalContext.of_dots(seen))
        return ORSet._of({}, self.context, self._with_delta(delta))

    def _with_delta(self, delta: ORSet[A]) -> ORSet[A]:
        return delta if self._delta is None else self._delta.merge(delta)

    def merge(self, other: ORSet[A]) -> ORSet[A]:
        """The join of both sets: an add survives where both sides hold it, or where one holds it
        and the other has not seen it (so an add concurrent with a remove wins); keeps this
        value's pending delta."""
        self._require_same_type(other)
        if other is self:
            return self
        entries = _merge_entries(self.entries, self.context, other.entries, other.context)
        return ORSet._of(entries, self.context.merge(other.context), self._delta)

    def is_inflation_of(self, older: ORSet[A]) -> bool:
        """Whether this value is what changes made through the API could make of ``older``: it
        has seen every dot ``older`` has, and merging the two drops nothing this value holds."""
        if type(older) is not ORSet or not self.context.extends(older.context):
            return False
        # The merge drops what this state holds and ``older`` has seen but does not hold.
        seen, theirs = older.context, older.entries
        for element, held in self.entries.items():
            old = theirs.get(element)
            if old is held or old == held:
                continue
            new = dots_of(held) if old is None else set(dots_of(held)).difference(dots_of(old))
            if any(d in seen for d in new):
                return False
        return True

    @property
    def delta(self) -> ORSet[A] | None:
        """What changed since the last :meth:`reset_delta` (new dots and the context of what they
        replace), or ``None``."""
        return self._delta

    def reset_delta(self) -> ORSet[A]:
        """This value without its pending delta."""
        return self if self._delta is None else ORSet._of(dict(self.entries), self.context)

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
        for element, held in self.entries.items():
            dots = dots_of(held)
            if any(r == removed for r, _ in dots):
                dot = context.next_dot(collapse_into)
                context = context.add((dot,))
                kept = {d for d in dots if d[0] != removed} | {dot}
                entries[element] = dot if len(kept) == 1 else frozenset(kept)
            else:
                entries[element] = held
        return ORSet._of(entries, context)

    def pruning_cleanup(self, removed: ReplicaId) -> ORSet[A]:
        """This value without any dot of ``removed`` (for a value merged in after pruning)."""
        if not self.needs_pruning_from(removed):
            return self
        entries = {}
        for element, held in self.entries.items():
            kept = held_of([d for d in dots_of(held) if d[0] != removed])
            if kept is not None:
                entries[element] = kept
        return ORSet._of(entries, self.context.without(removed))

    def marks(self) -> ORSet[A]:
        """An empty value that reserves every dot this one has seen, so a value created again in
        a map writes above them."""
        return ORSet._of({}, self.context.reserved())

    def is_empty(self) -> bool:
        """Whether the value holds no dots."""
        return not self.entries


def _merge_entries(
    a: Mapping[Any, Held], a_ctx: CausalContext, b: Mapping[Any, Held], b_ctx: CausalContext
) -> dict[Any, Held]:
    """The join of two sets' entries under their causal contexts.

    A dot survives when both sides have it, or when one side has it and the other has not seen it
    (a dot the other side has seen but does not hold was removed there).  Elements left without
    dots are gone.  This is the ORSet merge of Almeida et al., "Delta State Replicated Data Types".

    When both contexts are version vectors (the usual case: states, not deltas) the merge starts
    from both entries copied at C speed and only settles the elements that can differ from that
    copy: one both sides hold with different dots, or one held on one side by a dot the other
    side's version vector covers (it was removed there).  An element both hold alike costs one
    lookup and a compare; one held on one side by one dot costs a compare with the other side's
    top counter of the dot's replica.  Other contexts take :func:`_merge_by_element`.
    """
    if a is b:
        return dict(a)
    a_tops, b_tops = a_ctx.tops(), b_ctx.tops()
    if a_tops is None or b_tops is None:
        return _merge_by_element(a, a_ctx, b, b_ctx)
    # Each side's top counter per replica, and 0 for a replica it has never seen whose dots the
    # other side holds (their dots are in that side's context).
    a_top = dict.fromkeys(b_ctx.ranges, 0) | a_tops
    b_top = dict.fromkeys(a_ctx.ranges, 0) | b_tops
    try:
        unsettled = _unsettled(a, b, b_top) + _unsettled(b, a, a_top, shared=False)
    except KeyError:  # a dot outside its own side's context (a state built by hand)
        return _merge_by_element(a, a_ctx, b, b_ctx)
    b_get = b.get
    out = {**a, **b}
    a_get = a.get
    for e in unsettled:
        mine, theirs = a_get(e), b_get(e)
        if mine is None or theirs is None:
            only = theirs if mine is None else mine
            if not isinstance(only, frozenset):  # one dot, listed above as seen by the other side
                del out[e]
                continue
            kept = _unseen(only, a_ctx if mine is None else b_ctx)
        else:
            kept = _join(mine, a_ctx, theirs, b_ctx)
        if kept is None:
            del out[e]
        else:
            out[e] = kept
    return out


def _unsettled(
    a: Mapping[Any, Held],
    b: Mapping[Any, Held],
    b_top: Mapping[ReplicaId, int],
    *,
    shared: bool = True,
) -> list[Any]:
    """The elements ``a`` holds that ``b`` does not hold alike, under ``b``'s version vector
    ``b_top``: those ``a`` alone holds by a dot ``b`` has seen (or by several), and, if
    ``shared``, those both hold with different dots.  Raises ``KeyError`` for a dot of a replica
    ``b_top`` does not know.

    The first try reads every element as one dot, which is nearly always true and saves a type
    check per element; an element holding several (a frozenset, not subscriptable) makes it
    raise ``TypeError``, and the second asks each element."""
    b_get = b.get
    try:
        if shared:
            return [
                e
                for e, mine in a.items()
                if ((theirs := b_get(e)) is None and mine[1] <= b_top[mine[0]])  # type: ignore[index]
                or (theirs is not mine and theirs is not None and theirs != mine)
            ]
        return [e for e, mine in a.items() if e not in b and mine[1] <= b_top[mine[0]]]  # type: ignore[index]
    except TypeError:
        pass
    if shared:
        return [
            e
            for e, mine in a.items()
            if (
                (theirs := b_get(e)) is None
                and (isinstance(mine, frozenset) or mine[1] <= b_top[mine[0]])
            )
            or (theirs is not mine and theirs is not None and theirs != mine)
        ]
    return [
        e
        for e, mine in a.items()
        if e not in b and (isinstance(mine, frozenset) or mine[1] <= b_top[mine[0]])
    ]


def _merge_by_element(
    a: Mapping[Any, Held], a_ctx: CausalContext, b: Mapping[Any, Held], b_ctx: CausalContext
) -> dict[Any, Held]:
    """:func:`_merge_entries` for any contexts, element by element (runs with gaps: deltas,
    values created again in a map)."""
    out: dict[Any, Held] = {}
    b_get = b.get
    for e, mine in a.items():
        theirs = b_get(e)
        kept = _unseen(mine, b_ctx) if theirs is None else _join(mine, a_ctx, theirs, b_ctx)
        if kept is not None:
            out[e] = kept
    for e, theirs in b.items():
        if e not in a and (kept := _unseen(theirs, a_ctx)) is not None:
            out[e] = kept
    return out


def _join(mine: Held, my_ctx: CausalContext, theirs: Held, their_ctx: CausalContext) -> Held | None:
    """One element's dots merged, both sides holding it: those both hold, and those one side
    holds and the other has not seen."""
    if mine == theirs:
        return mine
    m, t = set(dots_of(mine)), set(dots_of(theirs))
    kept = m & t
    kept.update(d for d in m - t if d not in their_ctx)
    kept.update(d for d in t - m if d not in my_ctx)
    return held_of(kept)


def _unseen(held: Held, context: CausalContext) -> Held | None:
    """The dots of ``held`` that ``context`` has not seen: ``held`` itself when that is all."""
    if not isinstance(held, frozenset):
        return None if held in context else held
    kept = [d for d in held if d not in context]
    return held if len(kept) == len(held) else held_of(kept)
