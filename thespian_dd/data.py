"""What a replicated value can do: the capabilities the Replicator asks for.

Every data type is an immutable value.  Mutators return a new value and take the acting replica
first.  The Replicator never asks *what class* a value is, only *what it can do*:

- :class:`ReplicatedData`: ``merge`` (a join: commutative, associative, idempotent) and ``value``.
- :class:`DeltaReplicatedData`: the value also records the *delta* of the mutations made since the
  last ``reset_delta()``; a peer that has seen the state before those mutations reaches the new
  state with ``merge_delta(delta)``, which costs far less to ship than the whole state.
- :class:`RequiresCausalDelivery`: deltas of this type must reach a peer in the order they were
  made by their origin (the Replicator numbers them per origin and sends full state on a gap).
- :class:`RemovedNodePruning`: the value holds :class:`ReplicaId` slots, and a slot of a replica
  that is gone for good can be folded into a live one (``prune``) and then dropped everywhere
  (``pruning_cleanup``), so that restarts and departures do not make values grow forever.

These mirror Akka Distributed Data's traits of the same names.

Every change a replica makes is numbered: an ORSet add or an MVRegister write is a *dot*
``(replica, n)``, a counter increment of ``k`` is ``k`` dots (its *units*), and a merge keeps or
drops changes by their dots.  So the one invariant every data type keeps is:

    **A replica never issues the same dot twice for two different changes of one value**,
    nested values and values created again after a remove included.

A replica numbers its next change above every dot its state has seen or *reserved*
(:attr:`CausalContext.floor`).  Inside maps, where a key's value can be removed and created again,
the map keeps per key the highest dot each replica has used in it (its *marks*, see
:class:`DotBased`) and every update starts from them; a restarted node is a new replica (a new
incarnation), so it starts its own numbering.  The second rule keeps what was seen: an update
must be an *inflation* of the current state (:meth:`ReplicatedData.is_inflation_of`), so a value
rebuilt from scratch, which could drop or reuse dots, is refused rather than merged.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from bisect import bisect_left
from collections.abc import Collection, Hashable, Iterable, Mapping
from typing import Any, NamedTuple, Self, TypeVar

__all__ = [
    "CausalContext",
    "DeltaReplicatedData",
    "Dot",
    "DotBased",
    "RemovedNodePruning",
    "ReplicaId",
    "ReplicatedData",
    "RequiresCausalDelivery",
    "check_hashable",
]


class _ReplicaIdFields(NamedTuple):
    node: str
    incarnation: int


class ReplicaId(_ReplicaIdFields):
    """Who made a change: the node's name and the incarnation of that node.

    A node gets a new incarnation every time it starts (persisted in its store when durable), so a
    restarted node never writes into a slot that peers may have seen higher.  Totally ordered (by
    node, then incarnation), hashable, picklable, and cheap: it is a tuple.
    """

    __slots__ = ()

    def __new__(cls, node: str, incarnation: int = 0) -> Self:
        if not isinstance(node, str) or not node:
            raise TypeError(f"ReplicaId node must be a non-empty str, not {node!r}")
        if not isinstance(incarnation, int) or isinstance(incarnation, bool) or incarnation < 0:
            raise TypeError(f"ReplicaId incarnation must be an int >= 0, not {incarnation!r}")
        return super().__new__(cls, node, incarnation)

    def __str__(self) -> str:
        return f"{self.node}#{self.incarnation}"

    def __repr__(self) -> str:
        return f"ReplicaId({self.node!r}, {self.incarnation})"


def check_replica(node: object) -> ReplicaId:
    """Return ``node`` if it is a :class:`ReplicaId`, else raise a clear ``TypeError``."""
    if not isinstance(node, ReplicaId):
        raise TypeError(f"the acting node must be a ReplicaId, not {type(node).__name__}: {node!r}")
    return node


def check_hashable(what: str, value: object) -> None:
    """Raise ``TypeError`` naming ``what`` when ``value`` cannot be a set element or map key."""
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"{what} must be hashable, not {type(value).__name__}: {value!r}") from None


def check_count(what: str, n: object) -> int:
    """Return ``n`` if it is a plain int (not bool), else raise ``TypeError``."""
    if not isinstance(n, int) or isinstance(n, bool):
        raise TypeError(f"{what} must be an int, not {type(n).__name__}: {n!r}")
    return n


class ReplicatedData(ABC):
    """A state-based CRDT: a value with a join."""

    __slots__ = ()

    @property
    @abstractmethod
    def value(self) -> Any:
        """The plain Python value this state stands for."""

    @abstractmethod
    def merge(self, other: Self) -> Self:
        """The least upper bound of both states; commutative, associative and idempotent.

        A pending delta (see :class:`DeltaReplicatedData`) is kept: what this replica changed
        and has not shipped yet still has to be shipped.
        """

    def is_inflation_of(self, older: Self) -> bool:
        """Whether this state can be what updates made of ``older``: it holds everything
        ``older`` holds (merging ``older`` into it changes nothing), and every dot it adds is new
        (above every dot ``older`` has seen or reserved), so no other write holds it.

        An update must be one; otherwise the next merge with a replica that still holds
        ``older``, or that has seen a reused dot, would drop part of the update or of ``older``.
        This default is the first half, by a merge; the dot-based types check both, cheaply."""
        return type(older) is type(self) and older.merge(self) == self

    def _require_same_type(self, other: object) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(self).__name__} with {type(other).__name__}")

    @abstractmethod
    def _state(self) -> tuple[Any, ...]:
        """The constructor arguments that make the state (never the transient delta)."""

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: mutators return a new value")

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return self._state() == other._state()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self._state()!r}"

    def __reduce__(self) -> tuple[Any, ...]:
        # The pending delta is local bookkeeping of one replica: never ship or store it.
        return (type(self), self._state())


class DeltaReplicatedData(ReplicatedData):
    """A CRDT that also records the delta of its mutations since the last :meth:`reset_delta`.

    Law: for a state ``old`` and ``new`` made from ``old.reset_delta()`` by mutators,
    ``old.merge_delta(new.delta) == old.merge(new)``.  A delta is itself a state of the same type.
    """

    __slots__ = ()

    @property
    @abstractmethod
    def delta(self) -> Self | None:
        """What the mutations since the last reset added, or ``None`` when nothing changed."""

    @abstractmethod
    def reset_delta(self) -> Self:
        """The same state with no pending delta."""

    def merge_delta(self, delta: Self) -> Self:
        """Apply a delta received from a peer (a delta is a state: this is a merge)."""
        return self.merge(delta)


class RequiresCausalDelivery:
    """Marker: deltas of this type must be applied in the order their origin made them.

    Out-of-order deltas would not be wrong for the dot-based types of this package (their causal
    context records single dots), but they leave the context uncompacted until the gap is filled;
    the Replicator numbers deltas per origin and sends the full state when it sees a gap.
    """

    __slots__ = ()


class RemovedNodePruning(ABC):
    """A CRDT with per-replica slots that can fold a removed replica's slot into a live one."""

    __slots__ = ()

    @abstractmethod
    def modified_by_nodes(self) -> frozenset[ReplicaId]:
        """Every replica that has a slot in this value."""

    @abstractmethod
    def needs_pruning_from(self, removed: ReplicaId) -> bool:
        """Whether ``removed`` still has a slot here."""

    @abstractmethod
    def prune(self, removed: ReplicaId, collapse_into: ReplicaId) -> Self:
        """Fold the slot of ``removed`` into ``collapse_into``; the value stays the same."""

    @abstractmethod
    def pruning_cleanup(self, removed: ReplicaId) -> Self:
        """Drop what ``removed`` contributed (run on data merged in after pruning was done)."""


Dot = tuple[ReplicaId, int]
"""One event: the n-th change (from 1) made by a replica."""


class CausalContext:
    """The set of dots a replica has seen, as runs of counters per replica.

    ``ranges[r] = (lo1, hi1, lo2, hi2, ...)`` means the dots ``(r, n)`` with ``lo1 < n <= hi1``, or
    ``lo2 < n <= hi2``, ... are seen.  With in-order delivery every replica has one run ``(0, n]``
    (a version vector entry), so removed elements leave no tombstones: the context is one pair of
    ints per replica.  A run starting above 0 or a second run appears when a delta arrives before
    its predecessors (the gap fills later) or in a value created again inside a map (its dots start
    above the old ones, see ``floor``).

    ``floor[r]`` reserves counters: replica ``r``'s next dot is above it even if nothing that high
    has been seen.  A map uses it so that a value it creates again never reuses the dots of the
    value it removed, without pretending to have seen them.

    Immutable, and normalised (runs sorted, merged when they touch, a floor kept only while it is
    above every seen dot of its replica), so equal sets of dots have equal representations.
    """

    __slots__ = ("floor", "ranges")

    ranges: Mapping[ReplicaId, tuple[int, ...]]
    floor: Mapping[ReplicaId, int]

    def __init__(
        self,
        ranges: Mapping[ReplicaId, Iterable[int]] | None = None,
        floor: Mapping[ReplicaId, int] | None = None,
    ) -> None:
        normal = {}
        for r, bounds in (ranges or {}).items():
            runs = _normalise_runs(tuple(bounds))
            if runs:
                normal[r] = runs
        floors = {
            r: n for r, n in (floor or {}).items() if n > (normal[r][-1] if r in normal else 0)
        }
        object.__setattr__(self, "ranges", normal)
        object.__setattr__(self, "floor", floors)

    @classmethod
    def _normal(
        cls, ranges: dict[ReplicaId, tuple[int, ...]], floor: Mapping[ReplicaId, int]
    ) -> CausalContext:
        """A context from parts already in normal form (the hot paths' shortcut)."""
        context = cls.__new__(cls)
        object.__setattr__(context, "ranges", ranges)
        object.__setattr__(context, "floor", floor)
        return context

    @classmethod
    def of_vv(cls, vv: Mapping[ReplicaId, int]) -> CausalContext:
        """Dots ``(r, 1) .. (r, vv[r])`` for every ``r``."""
        return cls({r: (0, n) for r, n in vv.items()})

    @classmethod
    def of_dots(cls, dots: Iterable[Dot]) -> CausalContext:
        """Exactly the given dots."""
        by_replica: dict[ReplicaId, list[int]] = {}
        for r, n in dots:
            by_replica.setdefault(r, []).append(n)
        return cls({r: tuple(b for n in ns for b in (n - 1, n)) for r, ns in by_replica.items()})

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("CausalContext is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (CausalContext, (dict(self.ranges), dict(self.floor)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalContext):
            return NotImplemented
        return self.ranges == other.ranges and self.floor == other.floor

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        floor = f", floor={dict(sorted(self.floor.items()))!r}" if self.floor else ""
        return f"CausalContext({dict(sorted(self.ranges.items()))!r}{floor})"

    def __contains__(self, dot: Dot) -> bool:
        runs = self.ranges.get(dot[0])
        if runs is None:
            return False
        n = dot[1]
        if len(runs) == 2:
            return runs[0] < n <= runs[1]
        return bisect_left(runs, n) % 2 == 1

    def tops(self) -> dict[ReplicaId, int] | None:
        """``{r: n}`` when this context has seen exactly the dots ``(r, 1) .. (r, n)`` of each
        replica (a version vector: the usual case), else None: then ``(r, n)`` is seen exactly
        when ``n <= tops.get(r, 0)``, which a loop can ask without a call."""
        tops = {}
        for r, runs in self.ranges.items():
            if len(runs) != 2 or runs[0]:
                return None
            tops[r] = runs[1]
        return tops

    def is_contiguous(self) -> bool:
        """Whether every replica's seen dots are one run from 1 (a plain version vector)."""
        return all(len(runs) == 2 and runs[0] == 0 for runs in self.ranges.values())

    def high(self, node: ReplicaId) -> int:
        """The highest counter of ``node`` seen or reserved."""
        runs = self.ranges.get(node)
        return max(runs[-1] if runs else 0, self.floor.get(node, 0))

    def next_dot(self, node: ReplicaId) -> Dot:
        """The dot ``node`` uses for its next change."""
        return (node, self.high(node) + 1)

    def count(self, node: ReplicaId) -> int:
        """How many dots of ``node`` are seen (reserved ones do not count)."""
        runs = self.ranges.get(node, ())
        return sum(runs[i + 1] - runs[i] for i in range(0, len(runs), 2))

    def add(self, dots: Iterable[Dot]) -> CausalContext:
        return self.merge(CausalContext.of_dots(dots))

    def reserved(self) -> CausalContext:
        """No dot seen, and every replica's next dot above every dot seen or reserved here."""
        return CausalContext({}, {r: self.high(r) for r in self.replicas()})

    def includes(self, other: CausalContext) -> bool:
        """Whether merging ``other`` in changes nothing: every dot it has seen is seen here, and
        every counter it reserves is seen or reserved here."""
        if other is self:
            return True
        for r, runs in other.ranges.items():
            mine = self.ranges.get(r)
            if mine is runs or mine == runs:
                continue
            if mine is None:
                return False
            if len(mine) == 2 and len(runs) == 2:  # one run each: the usual case
                if not mine[0] <= runs[0] < runs[1] <= mine[1]:
                    return False
            elif not _runs_within(runs, mine):
                return False
        return all(n <= self.high(r) for r, n in other.floor.items())

    def extends(self, older: CausalContext) -> bool:
        """Whether this context is ``older``'s with new dots only: it includes ``older``, and
        every dot it adds is above every dot ``older`` has seen or reserved of that replica.
        That is what an update may do; a dot added below could be one another write holds."""
        if not self.includes(older):
            return False
        for r, runs in self.ranges.items():
            theirs = older.ranges.get(r, ())
            if runs is theirs or runs == theirs:
                continue
            if len(runs) == 2 and len(theirs) == 2 and not older.floor:  # one run each
                if runs[0] != theirs[0]:
                    return False
                continue  # includes() has seen that it reaches at least as high
            if _clipped(runs, older.high(r)) != theirs:
                return False
        return True

    def merge(self, other: CausalContext) -> CausalContext:
        if other is self or (
            other.ranges.items() <= self.ranges.items()
            and all(n <= self.high(r) for r, n in other.floor.items())
        ):
            return self
        ranges = dict(self.ranges)
        for r, runs in other.ranges.items():
            mine = ranges.get(r)
            ranges[r] = runs if mine is None or mine == runs else mine + runs
        floor = dict(self.floor)
        for r, n in other.floor.items():
            floor[r] = max(n, floor.get(r, 0))
        return CausalContext(ranges, floor)

    def replicas(self) -> frozenset[ReplicaId]:
        return frozenset(self.ranges).union(self.floor)

    def without(self, removed: ReplicaId) -> CausalContext:
        return CausalContext(
            {r: v for r, v in self.ranges.items() if r != removed},
            {r: n for r, n in self.floor.items() if r != removed},
        )


def _clipped(runs: tuple[int, ...], high: int) -> tuple[int, ...]:
    """``runs`` without the counters above ``high``."""
    out: list[int] = []
    for i in range(0, len(runs), 2):
        if runs[i] >= high:
            break
        out += (runs[i], min(runs[i + 1], high))
    return tuple(out)


def _runs_within(runs: tuple[int, ...], outer: tuple[int, ...]) -> bool:
    """Whether every run of ``runs`` lies inside one run of ``outer`` (both normalised)."""
    for i in range(0, len(runs), 2):
        lo, hi = runs[i], runs[i + 1]
        j = bisect_left(outer, lo + 1)  # odd: lo + 1 falls inside the run ending at outer[j]
        if j % 2 == 0 or outer[j] < hi:
            return False
    return True


def _normalise_runs(bounds: tuple[int, ...]) -> tuple[int, ...]:
    """Sorted, disjoint, non-touching, non-empty runs from any list of ``(lo, hi]`` pairs."""
    if len(bounds) == 2:
        return bounds if bounds[0] < bounds[1] else ()
    pairs = sorted((bounds[i], bounds[i + 1]) for i in range(0, len(bounds), 2))
    out: list[int] = []
    for lo, hi in pairs:
        if lo >= hi:
            continue
        if out and lo <= out[-1]:
            out[-1] = max(out[-1], hi)
        else:
            out += (lo, hi)
    return tuple(out)


S = TypeVar("S", bound=Collection[Any])


def add_unseen(
    out: dict[Hashable, S],
    store: Mapping[Hashable, S],
    keys: Iterable[Hashable],
    context: CausalContext,
    lost: set[Hashable] | None = None,
) -> None:
    """Set ``out[key]`` to the dots (or dotted versions) of ``store[key]`` that ``context`` has not
    seen, for each of ``keys`` that has any: ``store[key]`` itself when that is all of them.
    Each key of which ``context`` has seen some goes into ``lost`` (when given).

    The hot loop of merges: a key holding one dot, under a context that is a version vector (the
    usual case), is decided inline, without a call."""
    tops = context.tops()
    top = (tops or {}).get
    for key in keys:
        dots = store[key]
        if tops is not None and len(dots) == 1:
            for r, n in dots:
                if n > top(r, 0):
                    out[key] = dots
                elif lost is not None:
                    lost.add(key)
            continue
        kept = _unseen(dots, context)
        if kept:
            out[key] = kept
        if lost is not None and kept is not dots:
            lost.add(key)


def _unseen(dots: S, context: CausalContext) -> S:
    """The dots (or dotted versions) ``context`` has not seen: ``dots`` itself when that is all
    of them (most elements have one dot, and most merges keep it)."""
    for dot in dots:
        if dot in context:
            if isinstance(dots, Mapping):
                return {d: v for d, v in dots.items() if d not in context}  # type: ignore[return-value]
            return frozenset(d for d in dots if d not in context)  # type: ignore[return-value]
    return dots


class DotBased(ABC):
    """A value whose changes are dots (ORSet, MVRegister, the counters, the maps).

    Its :meth:`marks` are an empty value of the same type in which every dot this value has seen
    or reserved is reserved again, and none is seen.  Merging marks into a value changes nothing
    it holds; it only makes each replica's next dot start above them.  A map keeps the marks of
    every key, also after the key is removed, and merges them into the key's value before each
    update: so a value created again after a remove, here or by another replica, never reuses a
    dot of the value it replaced, which a replica that missed the remove may still hold.
    """

    __slots__ = ()

    @abstractmethod
    def marks(self) -> Self:
        """An empty value reserving every dot this value has seen or reserved."""

    @abstractmethod
    def is_empty(self) -> bool:
        """Whether the value holds no dots (only then may it start a new map value)."""
