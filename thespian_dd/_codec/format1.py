"""Format 1: a value as the canonical tree of ``[type name, state]``, written and read by
:mod:`thespian_dd._canonical`; still read, and written for peers of an earlier release.

Each type has a pair here, state to tree and back.  Causal contexts and dots list their replicas
once, sorted, and name them by index (see :class:`_DotWriter`).  The reader accepts a state in
its one spelling only, so equal values have equal bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from thespian_dd._canonical import CodecError, Limits, decode_tree, encode_tree
from thespian_dd._codec.checks import ascending, backed, expect, positive, unknown_type, valid_marks
from thespian_dd._codec.registry import (
    BACKED_VALUES,
    BUILT_IN_TYPES,
    REGISTERED,
    registered_state,
    registered_value,
    type_name,
)
from thespian_dd.data import CausalContext, Dot, ReplicaId, ReplicatedData
from thespian_dd.flag import Flag
from thespian_dd.gcounter import GCounter
from thespian_dd.gset import GSet
from thespian_dd.lwwmap import LWWMap
from thespian_dd.lwwregister import LWWRegister
from thespian_dd.mvregister import MVRegister
from thespian_dd.ormap import ORMap, ORMapBacked
from thespian_dd.ormultimap import ORMultiMap
from thespian_dd.orset import ORSet, dots_of
from thespian_dd.pncounter import PNCounter
from thespian_dd.pncountermap import PNCounterMap


def encode(data: ReplicatedData) -> bytes:
    """The format-1 body of ``data``."""
    return encode_tree(_to_tree(data))


def decode(body: bytes, limits: Limits) -> ReplicatedData:
    """The value a format-1 body spells; raises :class:`CodecError` naming what is wrong."""
    return _from_tree(decode_tree(body, limits), limits)


def _to_tree(data: ReplicatedData) -> list[Any]:
    name = type_name(data)
    encoder = _ENCODERS.get(name)
    return [name, registered_state(data) if encoder is None else encoder(data)]


def _from_tree(tree: Any, limits: Limits) -> ReplicatedData:
    expect(isinstance(tree, list) and len(tree) == 2, "a value is [type name, state]")
    name, state = tree
    try:
        decoder = _DECODERS.get(name) if isinstance(name, str) else None
        if decoder is not None:
            return decoder(state, limits)
        registered = REGISTERED.get(name) if isinstance(name, str) else None
        if registered is not None:
            return registered_value(registered, state)
    except CodecError as e:
        raise CodecError(f"{name}: {e}") from None
    except (TypeError, ValueError) as e:
        raise CodecError(f"{name}: invalid state: {e}") from None
    raise unknown_type(name)


def _gcounter_tree(c: GCounter) -> Any:
    # Units 1..n per replica (every counter but one created again in a map): a slot per replica.
    if c.units.is_contiguous() and not c.units.floor:
        return c.state
    return _DotWriter(c.units).context(c.units)


def _gcounter(state: Any, limits: Limits) -> GCounter:
    if isinstance(state, list):
        units = _DotReader(state).context
        expect(not (units.is_contiguous() and not units.floor), "units 1..n are written as slots")
        return GCounter.of_units(units)
    expect(isinstance(state, dict), "GCounter state is a dict of slots or a units context")
    for r, n in state.items():
        expect(isinstance(r, ReplicaId), "GCounter slots are keyed by ReplicaId")
        positive(n, "a GCounter slot")
    return GCounter(state)


def _pncounter(state: Any, limits: Limits) -> PNCounter:
    expect(isinstance(state, list) and len(state) == 2, "PNCounter state is [p, n]")
    return PNCounter(_gcounter(state[0], limits), _gcounter(state[1], limits))


def _gset(state: Any, limits: Limits) -> GSet:
    expect(isinstance(state, frozenset), "GSet state is a frozenset")
    return GSet(state)


def _flag(state: Any, limits: Limits) -> Flag:
    expect(isinstance(state, bool), "Flag state is a bool")
    return Flag(state)


def _lwwregister_tree(r: LWWRegister) -> Any:
    return [r.val, r.timestamp, r.node]


def _lwwregister(state: Any, limits: Limits) -> LWWRegister:
    expect(isinstance(state, list) and len(state) == 3, "LWWRegister state is [value, ts, node]")
    value, timestamp, node = state
    expect(type(timestamp) is int, "an LWWRegister timestamp is an int")
    expect(isinstance(node, ReplicaId), "an LWWRegister writer is a ReplicaId")
    register = LWWRegister(value, timestamp, node)
    if limits.now_ms is not None:
        register.check_clock_skew(limits.now_ms, limits.max_clock_skew_ms)
    return register


# Dot stores list their replicas once, sorted, and refer to them by index in every dot: a dot
# costs two small ints instead of a node name.


class _DotWriter:
    def __init__(self, context: CausalContext) -> None:
        self.replicas = sorted(context.replicas())
        self.index = {r: i for i, r in enumerate(self.replicas)}

    def flat(self, dots: Any) -> list[int]:
        return [x for r, n in sorted(dots) for x in (self.index[r], n)]

    def context(self, context: CausalContext) -> list[Any]:
        runs = [[self.index[r], list(b)] for r, b in sorted(context.ranges.items())]
        return [self.replicas, runs, self.flat(context.floor.items())]


class _DotReader:
    """Reads a causal context written by :class:`_DotWriter`, in that one spelling only: the
    replicas sorted and each used, runs ascending and apart, floors above what is seen."""

    def __init__(self, tree: Any) -> None:
        expect(isinstance(tree, list) and len(tree) == 3, "a causal context has three parts")
        replicas, runs, floor = tree
        expect(
            isinstance(replicas, list)
            and all(isinstance(r, ReplicaId) for r in replicas)
            and ascending(replicas),
            "replicas are a sorted list of distinct ReplicaId",
        )
        self.replicas = replicas
        expect(isinstance(runs, list), "context runs are a list")
        ranges: dict[ReplicaId, list[int]] = {}
        for entry in runs:
            expect(isinstance(entry, list) and len(entry) == 2, "a run entry is [index, bounds]")
            bounds = entry[1]
            expect(
                isinstance(bounds, list)
                and bool(bounds)
                and len(bounds) % 2 == 0
                and all(type(b) is int for b in bounds)
                and bounds[0] >= 0
                and ascending(bounds),
                "run bounds are ascending ints >= 0 in pairs, the runs apart",
            )
            ranges[self.replica(entry[0])] = bounds
        expect(ascending([entry[0] for entry in runs]), "run entries are sorted by replica")
        floors = self.dots(floor)
        for r, n in floors:
            expect(n > (ranges[r][-1] if r in ranges else 0), "a floor is above what is seen")
        self.context = CausalContext(ranges, dict(floors))
        expect(self.context.replicas() == frozenset(replicas), "every listed replica is used")

    def replica(self, index: Any) -> ReplicaId:
        expect(type(index) is int and 0 <= index < len(self.replicas), "replica index in range")
        replica: ReplicaId = self.replicas[index]
        return replica

    def dots(self, flat: Any) -> list[Dot]:
        expect(isinstance(flat, list) and len(flat) % 2 == 0, "dots are [index, n, ...]")
        pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        expect(ascending(pairs), "dots are sorted, once each")
        return [(self.replica(i), positive(n, "a dot counter")) for i, n in pairs]

    def seen(self, flat: Any) -> list[Dot]:
        dots = self.dots(flat)
        expect(bool(dots), "every entry holds a dot")
        expect(all(d in self.context for d in dots), "every dot is in the causal context")
        return dots


def _orset_tree(s: ORSet) -> Any:
    w = _DotWriter(s.context)
    return [
        w.context(s.context),
        {element: w.flat(dots_of(held)) for element, held in s.entries.items()},
    ]


def _orset(state: Any, limits: Limits) -> ORSet:
    expect(isinstance(state, list) and len(state) == 2, "ORSet state is [context, entries]")
    r = _DotReader(state[0])
    expect(isinstance(state[1], dict), "ORSet entries are a dict")
    return ORSet({e: frozenset(r.seen(flat)) for e, flat in state[1].items()}, r.context)


def _mvregister(state: Any, limits: Limits) -> MVRegister:
    return MVRegister(_orset(state, limits))


def _ormap_tree(m: ORMap) -> Any:
    w = _DotWriter(m.context)
    versions = {
        key: [[*w.flat([dot]), _to_tree(v)] for dot, v in sorted(dots.items())]
        for key, dots in m.versions.items()
    }
    return [w.context(m.context), {key: _to_tree(f) for key, f in m.floors.items()}, versions]


def _ormap(state: Any, limits: Limits) -> ORMap:
    expect(isinstance(state, list) and len(state) == 3, "ORMap state is [context, marks, keys]")
    r = _DotReader(state[0])
    marks = state[1]
    expect(isinstance(marks, dict), "ORMap marks are a dict")
    expect(isinstance(state[2], dict), "ORMap versions are a dict")
    versions = {}
    for key, entries in state[2].items():
        expect(isinstance(entries, list) and bool(entries), "every key holds a version")
        dots: dict[Dot, ReplicatedData] = {}
        for entry in entries:
            expect(isinstance(entry, list) and len(entry) == 3, "a version is [index, n, value]")
            (dot,) = r.seen(entry[:2])
            dots[dot] = _from_tree(entry[2], limits)
        expect(ascending([entry[:2] for entry in entries]), "a key's versions are sorted by dot")
        expect(len({type(v) for v in dots.values()}) == 1, "a key's versions share one type")
        versions[key] = dots
    m = ORMap(versions, r.context)
    floors = {key: valid_marks(m, key, _from_tree(tree, limits)) for key, tree in marks.items()}
    return ORMap(versions, r.context, floors)


def _backed(cls: type[ORMapBacked], state: Any, limits: Limits) -> ReplicatedData:
    return backed(cls, BACKED_VALUES[cls], _ormap(state, limits))


_TYPES: dict[
    type[ReplicatedData], tuple[Callable[[Any], Any], Callable[[Any, Limits], ReplicatedData]]
] = {
    GCounter: (_gcounter_tree, _gcounter),
    PNCounter: (lambda c: [_gcounter_tree(c.p), _gcounter_tree(c.n)], _pncounter),
    GSet: (lambda s: s.elements, _gset),
    ORSet: (_orset_tree, _orset),
    Flag: (lambda f: f.enabled, _flag),
    LWWRegister: (_lwwregister_tree, _lwwregister),
    MVRegister: (lambda r: _orset_tree(r.writes), _mvregister),
    ORMap: (_ormap_tree, _ormap),
    LWWMap: (lambda m: _ormap_tree(m.underlying), partial(_backed, LWWMap)),
    PNCounterMap: (lambda m: _ormap_tree(m.underlying), partial(_backed, PNCounterMap)),
    ORMultiMap: (lambda m: _ormap_tree(m.underlying), partial(_backed, ORMultiMap)),
}
assert set(_TYPES) == BUILT_IN_TYPES, "format 1 spells every built-in type"
_ENCODERS = {cls.__name__: enc for cls, (enc, _) in _TYPES.items()}
_DECODERS = {cls.__name__: dec for cls, (_, dec) in _TYPES.items()}
