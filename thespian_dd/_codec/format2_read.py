"""Format 2, read back (its layout: :mod:`thespian_dd._codec.format2`): a body is taken only in
its one spelling, the canonical CBOR that the value decoded from it encodes to, and every
structural choice is checked on the way in.  The CBOR tags cbor2 would decode itself are
refused, not run."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from itertools import accumulate, repeat
from typing import Any

import cbor2
from cbor2 import CBORTag

from thespian_dd._canonical import CodecError, Limits, decode_counted
from thespian_dd._codec.checks import ascending, backed, expect, positive, unknown_type, valid_marks
from thespian_dd._codec.format2 import NATIVE, TREE_TAG, surrogates
from thespian_dd._codec.registry import BACKED_VALUES, BUILT_IN, REGISTERED, registered_value
from thespian_dd.data import CausalContext, Dot, ReplicaId, ReplicatedData
from thespian_dd.flag import Flag
from thespian_dd.gcounter import GCounter
from thespian_dd.gset import GSet
from thespian_dd.lwwregister import LWWRegister
from thespian_dd.mvregister import MVRegister
from thespian_dd.ormap import ORMap
from thespian_dd.orset import ORSet
from thespian_dd.pncounter import PNCounter

_INT = {int}
# The tags cbor2 decodes itself, but for bignums (2, 3): none is part of format 2, and some run
# code worth refusing (regular expressions, MIME parsing, shared references).
FOREIGN_TAGS: tuple[int, ...] = (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256)
FOREIGN_TAGS += (258, 260, 261, 1004, 43000, 55799)


def _refuse_tag(tag: int) -> Callable[[Any, bool], Any]:
    def refuse(value: Any, immutable: bool) -> Any:  # noqa: ARG001 - what cbor2 passes
        raise CodecError(f"CBOR tag {tag} is not part of format 2")

    return refuse


_SEMANTIC = {tag: _refuse_tag(tag) for tag in FOREIGN_TAGS}


def decode(body: bytes, limits: Limits) -> ReplicatedData:
    """The value a format-2 body spells; raises :class:`CodecError` naming what is wrong."""
    if len(body) > limits.max_bytes:
        raise CodecError(f"input of {len(body)} bytes exceeds max_bytes={limits.max_bytes}")
    try:
        tree = cbor2.loads(
            body, semantic_decoders=_SEMANTIC, max_depth=limits.max_depth, allow_indefinite=False
        )
    except cbor2.CBORDecodeError as e:
        if isinstance(e.__cause__, CodecError):
            raise e.__cause__ from None
        if "nesting depth" in str(e):
            raise CodecError(f"nesting deeper than max_depth={limits.max_depth}") from None
        raise CodecError(f"malformed CBOR: {e}") from None
    except Exception as e:  # noqa: BLE001 - whatever the parser trips on is bad input
        raise CodecError(f"malformed CBOR: {type(e).__name__}: {e}") from None
    try:
        canonical = cbor2.dumps(tree, canonical=True) == body
    except Exception:  # noqa: BLE001 - a decoded object cbor2 cannot write back is not ours
        canonical = False
    if not canonical:
        raise CodecError("the CBOR body is not in its one spelling (or has trailing bytes)")
    expect(type(tree) is list and len(tree) == 2, "a body is [replicas, value]")
    reader = _Reader(tree[0], limits)
    value = reader.value(tree[1])
    expect(len(reader.used) == len(reader.replicas), "every listed replica is used")
    return value


_REPLICAS: dict[tuple[Any, Any], ReplicaId] = {}


def _replica_id(node: Any, incarnation: Any) -> ReplicaId:
    """The ReplicaId (node, incarnation), made once: a cluster has few, every value names them."""
    key = (node, incarnation)
    if type(node) is str and type(incarnation) is int:
        replica = _REPLICAS.get(key)
        if replica is not None:
            return replica
    replica = ReplicaId(node, incarnation)  # TypeError if it is not one
    if len(_REPLICAS) >= 4096:
        _REPLICAS.clear()
    _REPLICAS[key] = replica
    return replica


def _dots(groups: list[tuple[ReplicaId, list[int]]]) -> list[Dot]:
    """The dots of each replica's counters, in order."""
    return [dot for r, counters in groups for dot in zip(repeat(r), counters, strict=False)]


def _shared_firsts_ordered(spelled: list[Any], steps: list[int]) -> None:
    """Rows that share a first dot (a step of 0) come in the order of their keys' CBOR."""
    if steps and min(steps) == 0:
        for k in (k for k, step in enumerate(steps) if step == 0):
            before, after = (cbor2.dumps(x, canonical=True) for x in spelled[k - 1 : k + 1])
            expect(before < after, "rows sharing a first dot are in the order of their CBOR")


class _Reader:
    """Reads a format-2 value, refusing every other spelling of it.  The hot paths
    (a context of version vectors, one group of first dots, plain elements) are written for
    speed: small values are decoded often, by every node, for every gossiped change."""

    def __init__(self, flat: Any, limits: Limits) -> None:
        expect(type(flat) is list and len(flat) % 2 == 0, "replicas are [node, incarnation, ...]")
        self.limits = limits
        self.items = len(flat) // 2
        self.used: set[int] = set()
        if CBORTag in map(type, flat[::2]):  # a name with no UTF-8 spelling
            flat = [self.user(x) if i % 2 == 0 else x for i, x in enumerate(flat)]
        try:
            replicas = [_replica_id(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        except TypeError as e:
            raise CodecError(f"invalid replica id: {e}") from None
        expect(len(replicas) < 2 or ascending(replicas), "replicas are sorted, each once")
        self.replicas = replicas

    def count(self, n: int) -> None:
        self.items += n
        if self.items > self.limits.max_items:
            raise CodecError(f"more than max_items={self.limits.max_items} items")

    def replica(self, i: Any) -> ReplicaId:
        expect(type(i) is int and 0 <= i < len(self.replicas), "replica index in range")
        self.used.add(i)
        replica: ReplicaId = self.replicas[i]
        return replica

    def pairs(self, flat: Any, what: str) -> list[tuple[ReplicaId, Any]]:
        """``[i, x, ...]`` as (replica, x), the indexes ascending and in range."""
        if type(flat) is not list or len(flat) % 2:
            raise CodecError(f"malformed state: {what} are [index, value, ...]")
        if len(flat) == 2:  # one replica: the usual case
            i = flat[0]
            if type(i) is not int or not 0 <= i < len(self.replicas):
                raise CodecError(f"malformed state: {what}: replica index in range")
            self.count(1)
            self.used.add(i)
            return [(self.replicas[i], flat[1])]
        if not flat:
            return []
        indexes = flat[::2]
        if not (
            set(map(type, indexes)) == _INT
            and indexes[0] >= 0
            and ascending(indexes)
            and indexes[-1] < len(self.replicas)
        ):
            raise CodecError(f"malformed state: {what} are sorted by replica index, each once")
        self.count(len(indexes))
        self.used.update(indexes)
        return list(zip(map(self.replicas.__getitem__, indexes), flat[1::2], strict=True))

    def context(self, runs: Any, floors: Any) -> CausalContext:
        ranges: dict[ReplicaId, tuple[int, ...]] = {}
        for r, bounds in self.pairs(runs, "context runs"):
            if type(bounds) is int and bounds > 0:
                ranges[r] = (0, bounds)
                continue
            expect(
                type(bounds) is list
                and len(bounds) >= 2
                and len(bounds) % 2 == 0
                and all(type(b) is int for b in bounds)
                and bounds[0] >= 0
                and ascending(bounds)
                and (len(bounds) > 2 or bounds[0] > 0),
                "a run's top is an int > 0, run bounds are ascending ints >= 0 in pairs, the "
                "runs apart (one run from 0 is written as its top alone)",
            )
            self.count(len(bounds))
            ranges[r] = tuple(bounds)
        if floors == []:  # exactly an empty list, nothing else
            return CausalContext._normal(ranges, {})
        floor = {}
        for r, n in self.pairs(floors, "context floors"):
            expect(
                type(n) is int and n > (ranges[r][-1] if r in ranges else 0),
                "a floor is above what is seen",
            )
            floor[r] = n
        expect(bool(floor), "context floors are a list")
        return CausalContext._normal(ranges, floor)

    def user(self, x: Any) -> Any:
        if type(x) in NATIVE:
            return x
        expect(
            type(x) is CBORTag and x.tag == TREE_TAG and type(x.value) is bytes,
            "a user value is a CBOR scalar or a tagged tree",
        )
        limits = self.limits
        value, items = decode_counted(
            x.value, replace(limits, max_items=limits.max_items - self.items)
        )
        self.count(items)
        expect(
            type(value) not in NATIVE or (type(value) is str and surrogates(value)),
            "a value with a CBOR spelling is not a tree",
        )
        return value

    def users(self, xs: Any, what: str) -> list[Any]:
        if type(xs) is not list:
            raise CodecError(f"malformed state: {what} are a list")
        self.count(len(xs))
        if set(map(type, xs)) <= NATIVE:
            return xs
        return [self.user(x) for x in xs]

    def gcounter(self, parts: list[Any]) -> GCounter:
        """A GCounter from its state without its code (as format2's ``_Writer.slots`` writes
        it)."""
        if not parts or type(parts[0]) is not list:
            ranges: dict[ReplicaId, tuple[int, ...]] = {}
            for r, n in self.pairs(parts, "GCounter slots"):
                if type(n) is not int or n <= 0:
                    raise CodecError(
                        f"malformed state: a GCounter slot must be an int > 0, not {n!r}"
                    )
                ranges[r] = (0, n)
            return GCounter.of_units(CausalContext._normal(ranges, {}))
        expect(len(parts) == 2, "a GCounter state is [i, n, ...] or [runs, floors]")
        units = self.context(*parts)
        expect(not (units.is_contiguous() and not units.floor), "units 1..n are written as slots")
        return GCounter.of_units(units)

    def firsts(self, context: CausalContext, groups: Any, steps: Any, n: int) -> list[Dot]:
        """The first dot of each of ``n`` rows."""
        return _dots(self.first_counters(context, groups, steps, n))

    def first_counters(
        self, context: CausalContext, groups: Any, steps: Any, n: int
    ) -> list[tuple[ReplicaId, list[int]]]:
        """The counters of the first dots of ``n`` rows, by replica in row order."""
        if type(steps) is not list or len(steps) != n:
            raise CodecError("malformed state: one counter step per entry")
        if n and (set(map(type, steps)) != _INT or min(steps) < 0):
            raise CodecError("malformed state: counter steps are ints >= 0")
        self.count(n)
        tops = context.tops()
        out = []
        start = 0
        for r, size in self.pairs(groups, "groups"):
            if type(size) is not int or not 0 < size <= n - start:
                raise CodecError("malformed state: group sizes are ints > 0 within the entries")
            if steps[start] < 1:
                raise CodecError("malformed state: a dot's counter is >= 1")
            counters = list(accumulate(steps if size == n else steps[start : start + size]))
            if tops is not None:
                expect(counters[-1] <= tops.get(r, 0), "every dot is in the causal context")
            else:
                expect(
                    all((r, c) in context for c in counters), "every dot is in the causal context"
                )
            out.append((r, counters))
            start += size
        expect(start == n, "the groups cover every entry")
        return out

    def extras(
        self, context: CausalContext, flat: Any, width: int, firsts: list[Dot]
    ) -> list[tuple[int, Dot, Any]]:
        """Rows' other dots: (position, dot, rest) from ``[position, i, n, *rest, ...]``."""
        if flat == []:  # exactly an empty list, nothing else
            return []
        expect(
            type(flat) is list and len(flat) % width == 0, "extras are [position, index, n, ...]"
        )
        self.count(len(flat) // width)
        out = []
        previous: tuple[Any, ...] = ()
        index = {r: i for i, r in enumerate(self.replicas)}
        for k in range(0, len(flat), width):
            pos, i, n = flat[k : k + 3]
            expect(type(pos) is int and 0 <= pos < len(firsts), "an extra's position is in range")
            dot = (self.replica(i), positive(n, "a dot counter"))
            first = firsts[pos]
            expect(
                (pos, i, n) > previous and (i, n) > (index[first[0]], first[1]),
                "dots are sorted, once each",
            )
            expect(dot in context, "every dot is in the causal context")
            previous = (pos, i, n)
            out.append((pos, dot, flat[k + 3 : k + width]))
        return out

    def orset(self, parts: list[Any]) -> ORSet:
        if len(parts) != 6:
            raise CodecError(
                "malformed state: an ORSet state is [runs, floors, elements, groups, steps, extras]"
            )
        context = self.context(parts[0], parts[1])
        elements = self.users(parts[2], "ORSet elements")
        groups = self.first_counters(context, parts[3], parts[4], len(elements))
        _shared_firsts_ordered(parts[2], parts[4])
        rows = []
        start = 0
        for r, counters in groups:
            rows.append((r, elements[start : start + len(counters)], counters))
            start += len(counters)
        more = []
        if parts[5] != []:  # elements holding more than one dot: rare
            extras = self.extras(context, parts[5], 3, _dots(groups))
            more = [(elements[pos], dot) for pos, dot, _ in extras]
        s: ORSet = ORSet._of_rows(rows, more, context)
        expect(len(s) == len(elements), "ORSet elements are distinct")
        return s

    def ormap(self, parts: list[Any]) -> ORMap:
        expect(
            len(parts) == 8,
            "an ORMap state is [runs, floors, keys, groups, steps, values, extras, marks]",
        )
        context = self.context(parts[0], parts[1])
        keys = self.users(parts[2], "ORMap keys")
        firsts = self.firsts(context, parts[3], parts[4], len(keys))
        _shared_firsts_ordered(parts[2], parts[4])
        values = parts[5]
        expect(type(values) is list and len(values) == len(keys), "one value per key")
        value = self.value
        versions = {k: {d: value(v)} for k, d, v in zip(keys, firsts, values, strict=True)}
        expect(len(versions) == len(keys), "ORMap keys are distinct")
        for pos, dot, rest in self.extras(context, parts[6], 4, firsts):
            other = value(rest[0])
            dots = versions[keys[pos]]
            expect(
                type(other) is type(next(iter(dots.values()))), "a key's versions share one type"
            )
            dots[dot] = other
        marks = parts[7]
        expect(type(marks) is dict, "ORMap marks are a map")
        self.count(len(marks))
        m = ORMap(versions, context)
        floors = {}
        for spelled, tree in marks.items():
            key = self.user(spelled)
            floors[key] = valid_marks(m, key, value(tree))
        return ORMap(versions, context, floors) if floors else m

    def value(self, tree: Any) -> ReplicatedData:
        if type(tree) is not list or not tree:
            raise CodecError("malformed state: a value is [type code, *state]")
        code = tree[0]
        if code == 0 and type(code) is int and len(tree) == 3:  # GCounter: map values, often
            _, i, n = tree
            if type(i) is int and 0 <= i < len(self.replicas) and type(n) is int and n > 0:
                self.count(1)
                self.used.add(i)
                return GCounter.of_units(CausalContext._normal({self.replicas[i]: (0, n)}, {}))
        if type(code) is str and ("." not in code or code not in REGISTERED):
            raise unknown_type(code)  # not under the type's name, as a fault of its state is
        try:
            return self._value(code, tree)
        except CodecError as e:
            raise CodecError(f"{_name_of(code)}: {e}") from None
        except (TypeError, ValueError) as e:
            raise CodecError(f"{_name_of(code)}: invalid state: {e}") from None

    def _value(  # noqa: C901, PLR0911 - one branch per type
        self, code: Any, tree: list[Any]
    ) -> ReplicatedData:
        if type(code) is str:  # registered (value() refused the others)
            expect(len(tree) == 2, "a registered type's value is [name, state]")
            return registered_value(REGISTERED[code], self.user(tree[1]))
        expect(type(code) is int and 0 <= code < len(BUILT_IN), f"unknown data type code {code!r}")
        cls = BUILT_IN[code]
        parts = tree[1:]
        if cls is GCounter:
            return self.gcounter(parts)
        if cls is ORSet:
            return self.orset(parts)
        if cls is ORMap:
            return self.ormap(parts)
        if cls is PNCounter:
            expect(
                len(parts) == 2 and all(type(p) is list for p in parts),
                "a PNCounter state is [p, n]",
            )
            return PNCounter(self.gcounter(parts[0]), self.gcounter(parts[1]))
        if cls is LWWRegister:
            expect(len(parts) == 3, "an LWWRegister state is [value, ts, node]")
            val, timestamp, node = parts
            expect(type(timestamp) is int, "an LWWRegister timestamp is an int")
            register = LWWRegister(self.user(val), timestamp, self.replica(node))
            if self.limits.now_ms is not None:
                register.check_clock_skew(self.limits.now_ms, self.limits.max_clock_skew_ms)
            return register
        if cls is MVRegister:
            return MVRegister(self.orset(parts))
        if cls is GSet:
            expect(
                len(parts) == 1
                and type(parts[0]) is dict
                and all(v is None for v in parts[0].values()),
                "a GSet state is {element: null}",
            )
            return GSet(self.users(list(parts[0]), "GSet elements"))
        if cls is Flag:
            expect(len(parts) == 1 and type(parts[0]) is bool, "Flag state is a bool")
            return Flag(parts[0])
        return backed(cls, BACKED_VALUES[cls], self.ormap(parts))  # the maps backed by an ORMap


def _name_of(code: Any) -> str:
    if type(code) is int and 0 <= code < len(BUILT_IN):
        return BUILT_IN[code].__name__
    return str(code)
