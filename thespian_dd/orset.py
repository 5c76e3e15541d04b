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
- Layout: the dots are kept by replica, ``{replica: {element: n}}`` (a sorted tuple of counters
  for an element holding several dots of one replica, which only out-of-order deltas make).  A
  merge then works replica by replica with plain int compares against the other side's runs of
  that replica, never reading a dot tuple, and hands on unchanged replicas' dicts as they are;
  an update copies only the dicts of the replicas whose dots it replaces.  :attr:`ORSet.entries`
  gives the per-element view (each element's dot, or a frozenset of several).
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

from bisect import bisect_left
from collections.abc import Collection, Hashable, Iterable, Iterator, Mapping
from itertools import repeat
from typing import Any, Generic, NoReturn

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
"""The dots of one element as :attr:`ORSet.entries` gives them: the dot itself when it is one
(nearly always), else a frozenset of two or more (after concurrent adds)."""

Counters = int | tuple[int, ...]
"""The counters of one replica's dots that one element holds: the counter when it is one (nearly
always), else a sorted tuple of two or more."""

ByReplica = dict[ReplicaId, dict[Any, Counters]]
"""An ORSet's dots: for each replica, the elements holding dots of it and their counters.  No
replica's dict is empty, and no dict is ever changed once a value holds it."""

Runs = tuple[int, ...] | None
"""One replica's runs of a causal context (see :class:`~thespian_dd.data.CausalContext`), None
when it has seen no dot of that replica."""


_EMPTY_CONTEXT = CausalContext()


def dots_of(held: Held) -> Collection[Dot]:
    """The dots an element holds (as :attr:`ORSet.entries` gives them), as a collection."""
    return held if isinstance(held, frozenset) else (held,)


def _counters(c: Counters) -> tuple[int, ...]:
    return c if isinstance(c, tuple) else (c,)


def _counters_of(counters: Iterable[int]) -> Counters | None:
    """What an element holding ``counters`` of one replica stores, None for none."""
    kept = sorted(set(counters))
    if len(kept) > 1:
        return tuple(kept)
    return kept[0] if kept else None


def _by_replica(entries: Mapping[Any, Any]) -> ByReplica:
    """The layout of entries given as ``{element: dot or collection of dots}``; raises
    ``TypeError`` naming what an element holds if that is not one or more dots."""
    by: ByReplica = {}
    last: Any = _NO_REPLICA  # the replica of the last dot (runs of one are usual), and its dict
    held_here: dict[Any, Counters] = {}
    for element, held in entries.items():
        try:
            dot = held
            if not isinstance(held, tuple) and len(held) == 1:  # one dot in a set: as pickled
                (dot,) = held
            if isinstance(dot, tuple):  # one dot: nearly always
                r, n = dot
                if type(n) is not int or n < 1:
                    _refuse(held)
                if r is not last:
                    last, held_here = r, by.setdefault(r, {})
                held_here[element] = n
                continue
            for r, c in _by_replica_of(held).items():
                by.setdefault(r, {})[element] = c
        except (TypeError, ValueError):
            _refuse(held)
    return by


def _by_replica_of(dots: Iterable[Any]) -> dict[ReplicaId, Counters]:
    """Each replica's counters in a collection of dots, which must not be empty."""
    grouped: dict[ReplicaId, list[int]] = {}
    for r, n in dots:
        if type(n) is not int or n < 1:
            _refuse(dots)
        grouped.setdefault(r, []).append(n)
    if not grouped:
        _refuse(dots)
    return {r: _counters_of(ns) for r, ns in grouped.items()}  # type: ignore[misc]


_NO_REPLICA = object()


def _refuse(held: Any) -> NoReturn:
    raise TypeError(
        "an ORSet element holds a (replica, n) dot (n an int >= 1) or a collection of them, "
        f"not {held!r}"
    ) from None


def _entries_of(by: ByReplica) -> dict[Any, Held]:
    """The per-element view of ``by``: each element's dot, or a frozenset of its dots."""
    entries: dict[Any, Held] = {}
    for r, held_here in by.items():
        if _plain(held_here):  # one counter each: the dots are made at C speed
            dots = zip(repeat(r), held_here.values(), strict=False)
            part: dict[Any, Any] = dict(zip(held_here, dots, strict=True))
        else:
            part = {e: _held_of(r, c) for e, c in held_here.items()}
        if not entries:
            entries = part
            continue
        for e in part.keys() & entries.keys():  # elements holding dots of several replicas
            part[e] = frozenset((*dots_of(entries[e]), *dots_of(part[e])))
        entries.update(part)
    return entries


def _plain(held_here: dict[Any, Counters]) -> bool:
    """Whether every element of one replica's dict holds one counter (an int, not a tuple)."""
    return _highest(held_here) is not None


def _highest(held_here: dict[Any, Counters]) -> int | None:
    """The highest counter of one replica's dict (0 for none) if every element holds one,
    else None."""
    try:
        top = max(held_here.values(), default=0)
    except TypeError:  # an int and a tuple do not compare
        return None
    return None if isinstance(top, tuple) else top


def _held_of(r: ReplicaId, c: Counters) -> Held:
    return frozenset((r, n) for n in c) if isinstance(c, tuple) else (r, c)


def _outside(by: ByReplica, context: CausalContext) -> bool:
    """Whether some dot of ``by`` is outside ``context``."""
    for r, held_here in by.items():
        runs = context.ranges.get(r)
        if runs is None:
            return True
        top = _highest(held_here) if len(runs) == 2 and not runs[0] else None
        if top is not None:  # a version vector's entry: counters are >= 1, the highest decides
            if top > runs[1]:
                return True
            continue
        if not all(_seen(runs, n) for c in held_here.values() for n in _counters(c)):
            return True
    return False


def _seen(runs: Runs, n: int) -> bool:
    """Whether a context whose runs of a replica are ``runs`` has seen that replica's dot ``n``."""
    if runs is None:
        return False
    if len(runs) == 2:
        return runs[0] < n <= runs[1]
    return bisect_left(runs, n) % 2 == 1


class ORSet(DeltaReplicatedData, RemovedNodePruning, RequiresCausalDelivery, DotBased, Generic[A]):
    """An add-wins set of elements of type ``A`` (``ORSet[str]()`` for the type checker).

    ``ORSet().add(node, "a").add(node, "b").remove(node, "a").value == frozenset({"b"})``
    """

    __slots__ = ("_by", "_delta", "_entries", "_loose", "context")

    _by: ByReplica
    context: CausalContext
    _delta: ORSet[A] | None
    _entries: dict[Any, Held] | None
    _loose: bool
    """Whether this value may hold a dot outside its own context: only one built by hand can
    (merges of such a value look for what the usual case rules out)."""

    def __init__(
        self,
        entries: Mapping[Hashable, frozenset[Dot] | Dot] | None = None,
        context: CausalContext = _EMPTY_CONTEXT,
    ) -> None:
        if not isinstance(context, CausalContext):
            raise TypeError(f"an ORSet's context is a CausalContext, not {type(context).__name__}")
        by = _by_replica(entries or {})
        object.__setattr__(self, "_by", by)
        object.__setattr__(self, "context", context)
        object.__setattr__(self, "_delta", None)
        object.__setattr__(self, "_entries", None)
        object.__setattr__(self, "_loose", _outside(by, context))

    @classmethod
    def _of(
        cls,
        by: ByReplica,
        context: CausalContext,
        delta: ORSet[A] | None = None,
        *,
        loose: bool = False,
    ) -> ORSet[A]:
        """A set from its dots by replica, taken as they are (no copy, no empty dict);
        ``loose``: some dot may be outside ``context``."""
        made = cls.__new__(cls)
        object.__setattr__(made, "_by", by)
        object.__setattr__(made, "context", context)
        object.__setattr__(made, "_delta", delta)
        object.__setattr__(made, "_entries", None)
        object.__setattr__(made, "_loose", loose)
        return made

    @classmethod
    def _of_rows(
        cls,
        rows: Iterable[tuple[ReplicaId, Iterable[Any], Iterable[int]]],
        more: Iterable[tuple[Any, Dot]],
        context: CausalContext,
    ) -> ORSet[A]:
        """A set from each replica's elements with the counters of their dots, and more dots
        of those elements, every dot in ``context`` (a decoder's shortcut: nothing is checked,
        and each replica comes once in ``rows``)."""
        by: ByReplica = {r: dict(zip(es, ns, strict=True)) for r, es, ns in rows}
        for element, (r, n) in more:
            held_here = by.setdefault(r, {})
            old = held_here.get(element)
            held_here[element] = n if old is None else _counters_of((*_counters(old), n))  # type: ignore[assignment]
        return cls._of(by, context)

    @property
    def entries(self) -> Mapping[Any, Held]:
        """Each element with its dots: the dot itself when it is one, else a frozenset."""
        entries = self._entries
        if entries is None:
            entries = _entries_of(self._by)
            object.__setattr__(self, "_entries", entries)
        return entries

    def _one_dot_each(self) -> dict[ReplicaId, dict[Any, int]] | None:
        """The dots by replica when every element holds exactly one dot (nearly always), else
        None."""
        by = self._by
        if not all(map(_plain, by.values())):
            return None
        if len(by) > 1 and sum(map(len, by.values())) != len(self):
            return None  # an element holds dots of several replicas
        return by  # type: ignore[return-value]

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._by == other._by and self.context == other.context

    __hash__ = None  # type: ignore[assignment]

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
        by = self._by
        if len(by) == 1:
            for held_here in by.values():
                return frozenset(held_here)
        return frozenset().union(*by.values())

    elements = value

    def __contains__(self, element: object) -> bool:
        return any(element in held_here for held_here in self._by.values())

    def __iter__(self) -> Iterator[A]:
        by = self._by
        if len(by) == 1:
            for held_here in by.values():
                return iter(held_here)
        return iter(self.entries)

    def __len__(self) -> int:
        by = self._by
        if len(by) == 1:
            for held_here in by.values():
                return len(held_here)
        return len(self.value)

    def add(self, node: ReplicaId, element: A) -> ORSet[A]:
        """Add ``element`` on behalf of ``node`` (a new dot that wins over concurrent removes)."""
        return self.add_all(node, (element,))

    def add_all(self, node: ReplicaId, elements: Iterable[A]) -> ORSet[A]:
        """Add every element of ``elements`` in one step (one copy of the state, not one each)."""
        check_replica(node)
        _, first = self.context.next_dot(node)
        changed = _Changes(self._by)
        mine = changed.writable(node)
        added: dict[Any, Counters] = {}
        replaced: list[Dot] = []
        n = first
        for element in elements:
            check_hashable("an ORSet element", element)
            replaced += changed.pop(element, but=node)
            mine[element] = added[element] = n
            n += 1
        if not added:
            return self
        new_dots = [(node, c) for c in range(first, n)]
        delta = ORSet._of({node: added}, CausalContext.of_dots({*replaced, *new_dots}))
        return ORSet._of(
            changed.result(), self.context.add(new_dots), self._with_delta(delta), loose=self._loose
        )

    def remove(self, node: ReplicaId, element: A) -> ORSet[A]:
        """Remove ``element`` as observed here; adds this replica has not seen survive."""
        return self.remove_all(node, (element,))

    def remove_all(self, node: ReplicaId, elements: Iterable[A]) -> ORSet[A]:
        """Remove every element of ``elements`` that is present, as observed here."""
        check_replica(node)
        changed = _Changes(self._by)
        removed: set[Dot] = set()
        for element in elements:
            check_hashable("an ORSet element", element)
            removed.update(changed.pop(element))
        if not removed:
            return self
        delta = ORSet._of({}, CausalContext.of_dots(removed))
        return ORSet._of(changed.result(), self.context, self._with_delta(delta), loose=self._loose)

    def clear(self, node: ReplicaId) -> ORSet[A]:
        """Remove every element observed here."""
        check_replica(node)
        if not self._by:
            return self
        seen = [
            (r, n)
            for r, held_here in self._by.items()
            for c in held_here.values()
            for n in _counters(c)
        ]
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
        a, b = self._by, other._by
        a_runs, b_runs = self.context.ranges, other.context.ranges
        loose = self._loose or other._loose
        by: ByReplica = {}
        for r in a if b.keys() <= a.keys() else [*a, *[r for r in b if r not in a]]:
            merged = _merge_replica(a.get(r), a_runs.get(r), b.get(r), b_runs.get(r), loose=loose)
            if merged:
                by[r] = merged
        return ORSet._of(by, self.context.merge(other.context), self._delta, loose=loose)

    def is_inflation_of(self, older: ORSet[A]) -> bool:
        """Whether this value is what changes made through the API could make of ``older``: it
        has seen every dot ``older`` has, and merging the two drops nothing this value holds."""
        if type(older) is not ORSet or not self.context.extends(older.context):
            return False
        # The merge drops what this state holds and ``older`` has seen but does not hold.
        seen = older.context.ranges
        for r, held_here in self._by.items():
            old = older._by.get(r)
            runs = seen.get(r)
            if held_here is old or runs is None:
                continue
            old_get = (old or {}).get
            for element in [e for e, c in held_here.items() if old_get(e) != c]:
                theirs = old_get(element)
                new = set(_counters(held_here[element]))
                new.difference_update(() if theirs is None else _counters(theirs))
                if any(_seen(runs, n) for n in new):
                    return False
        return True

    @property
    def delta(self) -> ORSet[A] | None:
        """What changed since the last :meth:`reset_delta` (new dots and the context of what they
        replace), or ``None``."""
        return self._delta

    def reset_delta(self) -> ORSet[A]:
        """This value without its pending delta."""
        return self if self._delta is None else ORSet._of(self._by, self.context, loose=self._loose)

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
        by = _by_replica(entries)
        return ORSet._of(by, context, loose=_outside(by, context))

    def pruning_cleanup(self, removed: ReplicaId) -> ORSet[A]:
        """This value without any dot of ``removed`` (for a value merged in after pruning)."""
        if not self.needs_pruning_from(removed):
            return self
        by = {r: held_here for r, held_here in self._by.items() if r != removed}
        return ORSet._of(by, self.context.without(removed), loose=self._loose)

    def marks(self) -> ORSet[A]:
        """An empty value that reserves every dot this one has seen, so a value created again in
        a map writes above them."""
        return ORSet._of({}, self.context.reserved())

    def is_empty(self) -> bool:
        """Whether the value holds no dots."""
        return not self._by


class _Changes:
    """An update's changes to a value's dots (``by``): each replica's dict copied once, when
    first changed; the dicts of the others are handed on as they are."""

    __slots__ = ("_copied", "by")

    def __init__(self, by: ByReplica) -> None:
        self.by = dict(by)
        self._copied: set[ReplicaId] = set()

    def writable(self, r: ReplicaId) -> dict[Any, Counters]:
        held_here = self.by.get(r)
        if held_here is None or r not in self._copied:
            held_here = self.by[r] = held_here.copy() if held_here else {}
            self._copied.add(r)
        return held_here

    def pop(self, element: Any, *, but: ReplicaId | None = None) -> list[Dot]:
        """Take ``element`` out, but from the dict of ``but``, where the caller sets it again
        (which keeps the element's object and place there); the dots it held."""
        dots: list[Dot] = []
        for r, held_here in self.by.items():
            c = held_here.get(element)
            if c is None:
                continue
            if r != but:
                del self.writable(r)[element]  # replaces the value of a key: iterating is safe
            if isinstance(c, tuple):
                dots += ((r, n) for n in c)
            else:
                dots.append((r, c))
        return dots

    def result(self) -> ByReplica:
        return {r: held_here for r, held_here in self.by.items() if held_here}


def _merge_replica(
    a: dict[Any, Counters] | None,
    a_runs: Runs,
    b: dict[Any, Counters] | None,
    b_runs: Runs,
    *,
    loose: bool,
) -> dict[Any, Counters] | None:
    """One replica's dots of two sets merged: ``a`` and ``b`` the elements holding them on each
    side, under each side's runs of that replica; ``loose``: a side may hold dots outside its
    own context.

    A side's dict is handed on as it is where that is the answer.  Otherwise the merge starts
    from both copied at C speed and settles only the elements that can differ from that copy
    (see :func:`_unsettled`).  An element costs an int compare with the other side's runs, and
    a lookup if the other side has seen its counter."""
    if a is b:
        return a
    if a is None or b is None:
        return _unseen(b, a_runs) if a is None else _unseen(a, b_runs)  # type: ignore[arg-type]
    if a_runs is None or b_runs is None:  # a side holds dots it has not seen: built by hand
        return _merge_exact(a, a_runs, b, b_runs)
    try:
        unsettled = _unsettled(a, a_runs, b, b_runs, loose=loose)
    except TypeError:  # an element holds several dots of this replica
        return _merge_exact(a, a_runs, b, b_runs)
    if not unsettled:
        return _union(a, b)
    out = a.copy()  # a clone of the table, where {**a} would insert each item
    out.update(b)
    a_get, b_get = a.get, b.get
    for e in unsettled:
        mine, theirs = a_get(e), b_get(e)
        kept = None if mine is None or theirs is None else _join(mine, a_runs, theirs, b_runs)
        if kept is None:  # held on one side only, by a counter the other side has seen
            out.pop(e, None)
        else:
            out[e] = kept
    return out


def _union(a: dict[Any, Counters], b: dict[Any, Counters]) -> dict[Any, Counters]:
    """The union of two sides with nothing to settle: a side that holds all of it already, as
    it is, else a new dict."""
    if len(a) >= len(b) and b.keys() <= a.keys():
        return a
    if a.keys() <= b.keys():
        return b
    out = a.copy()
    out.update(b)
    return out


def _unsettled(
    a: Mapping[Any, Counters],
    a_runs: tuple[int, ...],
    b: Mapping[Any, Counters],
    b_runs: tuple[int, ...],
    *,
    loose: bool,
) -> list[Any]:
    """The elements whose counters in the union of ``a`` and ``b`` can be wrong: those whose
    counter the other side has seen and does not hold alike (removed there), and those both
    hold with different counters.  The second kind always is of the first when both sides'
    runs start at 0 (version vectors) and neither holds a dot outside them, so then it is not
    looked for.  Raises ``TypeError`` for an element holding several counters."""
    unsettled = _dropped(a, b, b_runs) + _dropped(b, a, a_runs)
    if loose or a_runs[0] or b_runs[0] or len(a_runs) > 2 or len(b_runs) > 2:
        small, big = (a, b) if len(a) <= len(b) else (b, a)
        big_get = big.get
        unsettled += [
            e for e, c in small.items() if (theirs := big_get(e)) is not None and theirs != c
        ]
    return unsettled


def _dropped(
    a: Mapping[Any, Counters], b: Mapping[Any, Counters], b_runs: tuple[int, ...]
) -> list[Any]:
    """The elements of ``a`` (one replica's dots) whose counter ``b``'s runs have seen but ``b``
    does not hold alike.  Raises ``TypeError`` for an element of ``a`` holding several."""
    b_get = b.get
    if len(b_runs) == 2:
        lo, hi = b_runs
        return [e for e, c in a.items() if lo < c <= hi and b_get(e) != c]  # type: ignore[operator]
    return [e for e, c in a.items() if bisect_left(b_runs, c) % 2 and b_get(e) != c]


def _unseen(a: dict[Any, Counters], runs: Runs) -> dict[Any, Counters] | None:
    """What ``a`` (one replica's dots) keeps in a merge with a side that holds none of them:
    the counters ``runs`` has not seen; ``a`` itself when that is all."""
    if runs is None:
        return a
    try:
        gone = _dropped(a, {}, runs)
    except TypeError:
        return _merge_exact(a, None, {}, runs)
    if not gone:
        return a
    out = a.copy()
    for e in gone:
        del out[e]
    return out or None


def _merge_exact(
    a: Mapping[Any, Counters], a_runs: Runs, b: Mapping[Any, Counters], b_runs: Runs
) -> dict[Any, Counters] | None:
    """:func:`_merge_replica` element by element, for any dicts and runs."""
    out: dict[Any, Counters] = {}
    b_get = b.get
    for e, mine in a.items():
        kept = _join(mine, a_runs, b_get(e), b_runs)
        if kept is not None:
            out[e] = kept
    for e, theirs in b.items():
        if e not in a and (kept := _join(None, a_runs, theirs, b_runs)) is not None:
            out[e] = kept
    return out or None


def _join(
    mine: Counters | None, my_runs: Runs, theirs: Counters | None, their_runs: Runs
) -> Counters | None:
    """One element's counters of one replica merged: those both sides hold, and those one side
    holds and the other has not seen."""
    if mine == theirs:
        return mine
    m = _counters(mine) if mine is not None else ()
    t = _counters(theirs) if theirs is not None else ()
    kept = [n for n in m if n in t or not _seen(their_runs, n)]
    kept += (n for n in t if n not in m and not _seen(my_runs, n))
    return _counters_of(kept)
