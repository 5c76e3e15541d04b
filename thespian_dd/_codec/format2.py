"""Format 2 (written by default): canonical CBOR made by cbor2 (compiled), replicas listed
once, dots as small int steps.  This module describes the layout and writes it.

The body is the canonical CBOR (RFC 8949, as cbor2 writes with canonical=True) of
``[replicas, value]``: ``replicas`` is ``[node, incarnation, ...]`` of every replica the value
names, sorted, each once and each used; everything else names a replica by its index there.
A value is ``[type code, *state]`` (a small int per built-in type, the name of a registered
one):

- GCounter ``[0, i, n, ...]`` (units 1..n) or ``[0, runs, floors]`` (any other units);
  PNCounter ``[1, p, n]`` with ``p`` and ``n`` GCounter states without the code, as lists.
- GSet ``[2, {element: null, ...}]``; Flag ``[4, bool]``; LWWRegister ``[5, value, ts, i]``.
- ORSet ``[3, runs, floors, elements, groups, steps, extras]`` (MVRegister ``[6, ...]``):
  the elements in the order of their smallest dot ("first dot"); ``groups`` ``[i, count, ...]``
  says how many consecutive elements have a first dot of replica i, ``steps`` the counter of
  each first dot as the step from the previous one in its group (1 for a run of adds: one
  byte); ``extras`` ``[position, i, n, ...]`` the other dots of the few elements holding more.
- ORMap ``[7, runs, floors, keys, groups, steps, values, extras, marks]`` (LWWMap 8,
  PNCounterMap 9, ORMultiMap 10): keys as ORSet elements, with the value of each first dot;
  ``extras`` ``[position, i, n, value, ...]``; ``marks`` ``{key: value}``.
- A causal context is ``runs`` ``[i, top or [lo, hi, ...], ...]`` and ``floors`` ``[i, n, ...]``.
- User values (elements, keys, register values): None, bools, ints, floats, strs and bytes as
  CBOR; any other value as tag 21572 around its canonical tree bytes (format 1's, so dill
  pickles stay opaque leaves).

The decoder (:mod:`thespian_dd._codec.format2_read`) refuses any other spelling: every CBOR
byte string must be what cbor2 writes for what it decodes (checked by writing it again, in
compiled code), and every structural choice (order, steps >= 1, int tops, one form per counter)
is checked on the way in.
"""

from __future__ import annotations

from collections.abc import Iterable
from operator import itemgetter, sub
from typing import Any

import cbor2
from cbor2 import CBORTag

from thespian_dd._canonical import encode_tree
from thespian_dd._codec.registry import CODES, registered_state, type_name
from thespian_dd.data import CausalContext, ReplicaId, ReplicatedData
from thespian_dd.flag import Flag
from thespian_dd.gcounter import GCounter
from thespian_dd.gset import GSet
from thespian_dd.lwwregister import LWWRegister
from thespian_dd.mvregister import MVRegister
from thespian_dd.ormap import ORMap, ORMapBacked
from thespian_dd.orset import ORSet
from thespian_dd.pncounter import PNCounter

TREE_TAG = 21572  # "TD"
"""The CBOR tag around a user value's canonical tree bytes."""
NATIVE = frozenset({str, int, bytes, float, bool, type(None)})
"""The types of user values that are written as CBOR itself."""


def encode(data: ReplicatedData) -> bytes:
    """The format-2 body of ``data``."""
    writer = _Writer(_top_replicas(data))
    tree = writer.value(data)
    if len(writer.index) != len(writer.replicas):  # replicas met below the top: list them all
        writer = _Writer(sorted(writer.index))
        tree = writer.value(data)
    try:
        return cbor2.dumps([writer.flat_replicas(), tree], canonical=True)
    except UnicodeEncodeError:  # a str with lone surrogates: as a tree, like other values
        writer.careful = True
        return cbor2.dumps([writer.flat_replicas(), writer.value(data)], canonical=True)


def surrogates(s: str) -> bool:
    """Whether ``s`` holds lone surrogates (no UTF-8 spelling: written as a tree)."""
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _top_replicas(data: ReplicatedData) -> list[ReplicaId]:
    """The replicas the top of ``data`` names (its context's): most values name no others."""
    while isinstance(data, (ORMapBacked, MVRegister)):
        data = data.underlying if isinstance(data, ORMapBacked) else data.writes
    if isinstance(data, (ORSet, ORMap)):
        return sorted(data.context.replicas())
    if isinstance(data, GCounter):
        return sorted(data.units.replicas())
    if isinstance(data, PNCounter):
        return sorted(data.p.units.replicas() | data.n.units.replicas())
    if isinstance(data, LWWRegister):
        return [data.node]
    return []


class _Index(dict[ReplicaId, int]):
    """Replica -> index, numbering a replica not met before (the writer then starts again)."""

    def __missing__(self, replica: ReplicaId) -> int:
        self[replica] = n = len(self)
        return n


_counter = itemgetter(0)


def _first(row: tuple[Any, ...]) -> tuple[int, int]:
    return row[0], row[1]


def _steps(rows: list[tuple[Any, ...]]) -> tuple[list[int], list[int]]:
    """The groups ``[i, count, ...]`` and counter steps of rows in first-dot order."""
    groups: list[int] = []
    steps: list[int] = []
    previous, top = -1, 0
    for i, n, *_ in rows:
        if i != previous:
            groups += (i, 0)
            previous, top = i, 0
        groups[-1] += 1
        steps.append(n - top)
        top = n
    return groups, steps


class _Writer:
    def __init__(self, replicas: list[ReplicaId]) -> None:
        self.replicas = replicas
        self.index = _Index((r, i) for i, r in enumerate(replicas))
        self.careful = False

    def flat_replicas(self) -> list[Any]:
        return [x for r in self.replicas for x in (self.user(r.node), r.incarnation)]

    def user(self, x: Any) -> Any:
        if type(x) in NATIVE and not (self.careful and type(x) is str and surrogates(x)):
            return x
        return CBORTag(TREE_TAG, encode_tree(x))

    def users(self, xs: Iterable[Any]) -> list[Any]:
        if self.careful:
            return [self.user(x) for x in xs]
        return [x if type(x) in NATIVE else CBORTag(TREE_TAG, encode_tree(x)) for x in xs]

    def context(self, context: CausalContext) -> list[Any]:
        index = self.index
        runs = sorted(
            (index[r], b[1] if len(b) == 2 and not b[0] else list(b))
            for r, b in context.ranges.items()
        )
        floors = sorted((index[r], n) for r, n in context.floor.items())
        return [[x for run in runs for x in run], [x for f in floors for x in f]]

    def slots(self, c: GCounter) -> list[Any]:
        """A GCounter's state without its code: its slots ``[i, n, ...]``, or ``[runs, floors]``
        for units other than 1..n."""
        units = c.units
        if units.is_contiguous() and not units.floor:
            index = self.index
            slots = sorted((index[r], b[1]) for r, b in units.ranges.items())
            return [x for s in slots for x in s]
        return self.context(units)

    def dotted(self, items: Iterable[tuple[Any, Any]]) -> tuple[list[Any], ...]:
        """Rows (first dot index, counter, key, other dots, item) in first-dot order, and the
        groups and steps of their first dots."""
        index = self.index
        rows: list[tuple[int, int, Any, list[tuple[int, int]], Any]] = []
        for key, dots in items:
            if isinstance(dots, tuple):  # an ORSet element's one dot, held as it is
                r, n = dots
                rows.append((index[r], n, key, [], dots))
            elif len(dots) == 1:
                ((r, n),) = dots
                rows.append((index[r], n, key, [], dots))
            else:
                ds = sorted((index[r], n) for r, n in dots)
                rows.append((ds[0][0], ds[0][1], key, ds[1:], dots))
        rows.sort(key=_first)
        groups, steps = _steps(rows)
        if 0 in steps:  # rows sharing a first dot (a value made before such dots were refused)
            rows.sort(key=lambda row: (row[0], row[1], self.spelled(row[2])))
            groups, steps = _steps(rows)
        return rows, groups, steps

    def one_dot_each(self, by: dict[ReplicaId, dict[Any, int]]) -> list[Any] | None:
        """The elements, groups and steps of an ORSet whose elements hold one dot each (``by``:
        each replica's elements and counters), as :meth:`dotted` writes them; None when two
        elements share a dot (that ordering is :meth:`dotted`'s)."""
        index = self.index
        elements: list[Any] = []
        groups: list[int] = []
        steps: list[int] = []
        for i, held_here in sorted((index[r], held_here) for r, held_here in by.items()):
            pairs = sorted(zip(held_here.values(), held_here, strict=True), key=_counter)
            counters, these = zip(*pairs, strict=True)
            these_steps = list(map(sub, counters, (0, *counters[:-1])))
            if 0 in these_steps:
                return None
            groups += (i, len(counters))
            steps += these_steps
            elements += these
        return [self.users(elements), groups, steps]

    def spelled(self, key: Any) -> bytes:
        """The CBOR of a user value: what orders rows that share a first dot."""
        return cbor2.dumps(self.user(key), canonical=True)

    def orset(self, s: ORSet) -> list[Any]:
        by = s._one_dot_each()
        if by is not None:  # the usual case: each replica's rows from its dict, at C speed
            written = self.one_dot_each(by)
            if written is not None:
                return [*self.context(s.context), *written, []]
        rows, groups, steps = self.dotted(s.entries.items())
        extras = [x for pos, row in enumerate(rows) for d in row[3] for x in (pos, *d)]
        elements = self.users([row[2] for row in rows])
        return [*self.context(s.context), elements, groups, steps, extras]

    def ormap(self, m: ORMap) -> list[Any]:
        rows, groups, steps = self.dotted(m.versions.items())
        index, value = self.index, self.value
        values: list[Any] = []
        extras: list[Any] = []
        for pos, row in enumerate(rows):
            versions = row[4]
            if not row[3]:
                values.append(value(next(iter(versions.values()))))
                continue
            by_dot = {(index[r], n): v for (r, n), v in versions.items()}
            values.append(value(by_dot[_first(row)]))
            for d in row[3]:
                extras += (pos, *d, value(by_dot[d]))
        keys = self.users([row[2] for row in rows])
        marks = {self.user(k): value(f) for k, f in m.floors.items()}
        return [*self.context(m.context), keys, groups, steps, values, extras, marks]

    def value(self, data: ReplicatedData) -> list[Any]:  # noqa: PLR0911 - one branch per type
        t = type(data)
        code = CODES.get(t)
        if code is None:
            name = type_name(data)  # TypeError for a type not registered
            state = registered_state(data)  # with the registered type's own checks
            return [name, CBORTag(TREE_TAG, encode_tree(state))]
        # The type is exactly one of the built-in ones: isinstance only tells the type checker.
        if isinstance(data, GCounter):
            return [code, *self.slots(data)]
        if isinstance(data, ORSet):
            return [code, *self.orset(data)]
        if isinstance(data, ORMap):
            return [code, *self.ormap(data)]
        if isinstance(data, PNCounter):
            return [code, self.slots(data.p), self.slots(data.n)]
        if isinstance(data, LWWRegister):
            return [code, self.user(data.val), data.timestamp, self.index[data.node]]
        if isinstance(data, MVRegister):
            return [code, *self.orset(data.writes)]
        if isinstance(data, GSet):
            return [code, dict.fromkeys(self.users(data.elements))]
        if isinstance(data, Flag):
            return [code, data.enabled]
        assert isinstance(data, ORMapBacked)
        return [code, *self.ormap(data.underlying)]  # the maps backed by an ORMap
