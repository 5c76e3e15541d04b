"""Versioned bytes for every data type, with a checksum; the store and peers both use it.

An encoding is ``b"TDD"``, one format-version byte, the canonical tree of ``[type name, state]``
(see :mod:`thespian_dd._canonical`), and a 16-byte BLAKE2b checksum of everything before it.
Equal values give equal bytes in every process, so the checksum doubles as the value's
:func:`digest`, the change detector that gossip compares.

:func:`decode` refuses, with :class:`CodecError`, anything that is truncated, corrupted, of an
unknown format version or type, structurally invalid (a dot outside its causal context, an index
out of range, a negative count) or over the :class:`Limits`.  It never returns a wrong value.
User values inside a state (set elements, map keys, register values) are plain data or, for other
objects, dill pickles: decoding a pickle runs code, so only decode bytes from a trusted store or
peer (see the trust model, on the deployment page of the documentation).

A data type of one's own joins the table with :func:`~thespian_dd.register_data_type`; every
node that holds or receives its values must register it too (name its module in the
``data_types`` setting).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import partial
from itertools import pairwise
from typing import Any

from thespian_dd._canonical import CodecError, Limits, decode_tree, encode_tree
from thespian_dd.data import CausalContext, Dot, DotBased, ReplicaId, ReplicatedData
from thespian_dd.flag import Flag
from thespian_dd.gcounter import GCounter
from thespian_dd.gset import GSet
from thespian_dd.lwwmap import LWWMap
from thespian_dd.lwwregister import LWWRegister
from thespian_dd.mvregister import MVRegister
from thespian_dd.ormap import ORMap, ORMapBacked
from thespian_dd.ormultimap import ORMultiMap
from thespian_dd.orset import ORSet
from thespian_dd.pncounter import PNCounter
from thespian_dd.pncountermap import PNCounterMap

__all__ = [
    "FORMAT_VERSION",
    "FORMAT_VERSIONS",
    "CodecError",
    "Limits",
    "decode",
    "digest",
    "encode",
    "register_data_type",
    "type_name",
]

FORMAT_VERSION = 1
"""The format version :func:`encode` writes by default."""
FORMAT_VERSIONS: tuple[int, ...] = (1,)
"""Every format version :func:`decode` reads and :func:`encode` can write, ascending: a node
writes an older one for peers that read no newer (a rolling upgrade)."""
_MAGIC = b"TDD"
_CHECKSUM_SIZE = 16


def _checksum(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=_CHECKSUM_SIZE).digest()


def encode(data: ReplicatedData, version: int = FORMAT_VERSION) -> bytes:
    """The versioned, checksummed, canonical bytes of ``data`` (its pending delta is not kept),
    in format ``version`` (one of :data:`FORMAT_VERSIONS`)."""
    if version not in FORMAT_VERSIONS:
        raise ValueError(
            f"cannot write format version {version!r} (this code writes {FORMAT_VERSIONS})"
        )
    body = _MAGIC + bytes((version,)) + encode_tree(_to_tree(data))
    return body + _checksum(body)


def digest(data: ReplicatedData, version: int = FORMAT_VERSION) -> bytes:
    """16 bytes that are equal for equal states, in any process (the checksum of the encoding
    in format ``version``)."""
    return encode(data, version)[-_CHECKSUM_SIZE:]


def decode(raw: bytes, limits: Limits | None = None) -> ReplicatedData:
    """The value ``raw`` encodes; raises :class:`CodecError` naming what is wrong."""
    limits = limits or Limits()
    if not isinstance(raw, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, not {type(raw).__name__}")
    raw = bytes(raw)
    if len(raw) < len(_MAGIC) + 1 + _CHECKSUM_SIZE:
        raise CodecError(f"truncated: {len(raw)} bytes is shorter than any encoding")
    if not raw.startswith(_MAGIC):
        raise CodecError("not a thespian_dd encoding (bad magic bytes)")
    version = raw[len(_MAGIC)]
    if version not in FORMAT_VERSIONS:
        raise CodecError(f"unknown format version {version} (this code reads {FORMAT_VERSIONS})")
    body, checksum = raw[:-_CHECKSUM_SIZE], raw[-_CHECKSUM_SIZE:]
    if _checksum(body) != checksum:
        raise CodecError("checksum mismatch: the bytes are corrupted or truncated")
    return _from_tree(decode_tree(body[len(_MAGIC) + 1 :], limits), limits)


def type_name(data: ReplicatedData) -> str:
    """The name under which ``data``'s type is encoded (stored in the ``data type`` column)."""
    try:
        return _NAMES[type(data)]
    except KeyError:
        raise TypeError(
            f"{type(data).__name__} is not a known thespian_dd data type (a type of your own "
            "must be registered: see register_data_type)"
        ) from None


def register_data_type(cls: type[ReplicatedData], name: str) -> None:
    """Let the codec encode, store and gossip values of ``cls``, a data type of one's own,
    under ``name``.

    ``name`` is what the store's rows and peers' messages carry instead of the class: keep it
    when the class moves or is renamed.  It must contain a dot (``"myapp.MaxRegister"``; names
    without one are kept for the built-in types) and be registered once: a second registration of
    a name or of a class raises :class:`ValueError` (a class that is no
    :class:`~thespian_dd.data.ReplicatedData`: :class:`TypeError`).

    A value is encoded as its ``_state()`` (the constructor arguments, as the base class
    :class:`~thespian_dd.data.ReplicatedData` and pickling already use), made of plain data:
    ``None``, bools, ints, floats, strs, bytes, tuples, lists, sets, frozensets, dicts and
    :class:`~thespian_dd.data.ReplicaId` (other objects travel as dill pickles).  It is decoded as
    ``cls(*state)``, so the constructor must refuse, with ``ValueError`` or ``TypeError``, any
    arguments its ``_state()`` would not give.  The codec holds the type to what it holds its
    own types to: encoding checks that the bytes decode to an equal value, and decoding refuses
    (with :class:`~thespian_dd.codec.CodecError`) a state the constructor refuses, and any state
    other than the one spelling that the decoded value encodes to, so equal values have equal
    bytes and digests.

    Register at import of the module that defines ``cls``, and have every node import that
    module before it reads a value (the Replicator's ``data_types`` setting, ``--data-types`` of
    the node command): a node that does not know the type refuses its stored rows and its
    values from peers.  Run the project's laws on the type (docs: custom types).
    """
    if not (isinstance(cls, type) and issubclass(cls, ReplicatedData)):
        raise TypeError(f"a data type must be a ReplicatedData subclass, not {cls!r}")
    if cls.__module__ == "__main__":
        raise ValueError(
            f"{cls.__qualname__} is defined in __main__, which other processes cannot import: "
            "define it in a module that every node imports"
        )
    if not isinstance(name, str) or "." not in name.strip(".") or name != name.strip():
        raise ValueError(
            f"a data type's name must be a str with a dot, e.g. 'myapp.{cls.__name__}' "
            f"(names without one are kept for the built-in types), not {name!r}"
        )
    if name in _DECODERS:
        raise ValueError(f"the data type name {name!r} is already registered")
    if cls in _NAMES:
        raise ValueError(f"{cls.__qualname__} is already registered as {_NAMES[cls]!r}")
    _NAMES[cls] = name
    _ENCODERS[name] = partial(_user_tree, cls)
    _DECODERS[name] = partial(_user_type, cls)


# -- state <-> tree, one pair per type ---------------------------------------------------------


def _to_tree(data: ReplicatedData) -> list[Any]:
    name = type_name(data)
    return [name, _ENCODERS[name](data)]


def _from_tree(tree: Any, limits: Limits) -> ReplicatedData:
    _expect(isinstance(tree, list) and len(tree) == 2, "a value is [type name, state]")
    name, state = tree
    decoder = _DECODERS.get(name) if isinstance(name, str) else None
    if decoder is None:
        raise CodecError(
            f"unknown data type {name!r} (a data type of one's own must be registered on every "
            "node that reads it: name its module in the data_types setting)"
        )
    try:
        return decoder(state, limits)
    except CodecError as e:
        raise CodecError(f"{name}: {e}") from None
    except (TypeError, ValueError) as e:
        raise CodecError(f"{name}: invalid state: {e}") from None


def _expect(condition: bool, what: str) -> None:
    if not condition:
        raise CodecError(f"malformed state: {what}")


def _count(n: Any, what: str) -> int:
    _expect(type(n) is int and n > 0, f"{what} must be an int > 0, not {n!r}")
    result: int = n
    return result


def _user_tree(cls: type[ReplicatedData], data: ReplicatedData) -> Any:
    state = data._state()
    try:
        back = _user_type(cls, decode_tree(encode_tree(state), Limits()), Limits())
    except CodecError as e:
        raise ValueError(f"{_NAMES[cls]}: its own state does not decode: {e}") from None
    if back != data:
        raise ValueError(
            f"{_NAMES[cls]}: {data!r} does not decode to an equal value (got {back!r}): its "
            "_state() must give the constructor's arguments, in plain data"
        )
    return state


def _user_type(cls: type[ReplicatedData], state: Any, limits: Limits) -> ReplicatedData:
    _expect(isinstance(state, tuple), f"a {_NAMES[cls]} state is a tuple of its arguments")
    try:
        value = cls(*state)
    except Exception as e:  # noqa: BLE001 - the type's own constructor: whatever it refuses
        raise CodecError(f"invalid state: {type(e).__name__}: {e}") from None
    _expect(type(value) is cls, f"{cls.__qualname__}(...) gives a {cls.__qualname__}")
    _expect(
        encode_tree(value._state()) == encode_tree(state),
        "the state is the one spelling of its value",
    )
    return value


def _gcounter_tree(c: GCounter) -> Any:
    # Units 1..n per replica (every counter but one created again in a map): a slot per replica.
    if c.units.is_contiguous() and not c.units.floor:
        return c.state
    return _DotWriter(c.units).context(c.units)


def _gcounter(state: Any, limits: Limits) -> GCounter:
    if isinstance(state, list):
        units = _DotReader(state).context
        _expect(not (units.is_contiguous() and not units.floor), "units 1..n are written as slots")
        return GCounter.of_units(units)
    _expect(isinstance(state, dict), "GCounter state is a dict of slots or a units context")
    for r, n in state.items():
        _expect(isinstance(r, ReplicaId), "GCounter slots are keyed by ReplicaId")
        _count(n, "a GCounter slot")
    return GCounter(state)


def _pncounter(state: Any, limits: Limits) -> PNCounter:
    _expect(isinstance(state, list) and len(state) == 2, "PNCounter state is [p, n]")
    return PNCounter(_gcounter(state[0], limits), _gcounter(state[1], limits))


def _gset(state: Any, limits: Limits) -> GSet:
    _expect(isinstance(state, frozenset), "GSet state is a frozenset")
    return GSet(state)


def _flag(state: Any, limits: Limits) -> Flag:
    _expect(isinstance(state, bool), "Flag state is a bool")
    return Flag(state)


def _lwwregister_tree(r: LWWRegister) -> Any:
    return [r.val, r.timestamp, r.node]


def _lwwregister(state: Any, limits: Limits) -> LWWRegister:
    _expect(isinstance(state, list) and len(state) == 3, "LWWRegister state is [value, ts, node]")
    value, timestamp, node = state
    _expect(type(timestamp) is int, "an LWWRegister timestamp is an int")
    _expect(isinstance(node, ReplicaId), "an LWWRegister writer is a ReplicaId")
    register = LWWRegister(value, timestamp, node)
    if limits.now_ms is not None:
        register.check_clock_skew(limits.now_ms, limits.max_clock_skew_ms)
    return register


# Dot stores list their replicas once, sorted, and refer to them by index in every dot: a dot
# costs two small ints instead of a node name.


def _ascending(items: list[Any]) -> bool:
    """Whether ``items`` are in strictly ascending order (sorted, each once)."""
    return all(a < b for a, b in pairwise(items))


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
        _expect(isinstance(tree, list) and len(tree) == 3, "a causal context has three parts")
        replicas, runs, floor = tree
        _expect(
            isinstance(replicas, list)
            and all(isinstance(r, ReplicaId) for r in replicas)
            and _ascending(replicas),
            "replicas are a sorted list of distinct ReplicaId",
        )
        self.replicas = replicas
        _expect(isinstance(runs, list), "context runs are a list")
        ranges: dict[ReplicaId, list[int]] = {}
        for entry in runs:
            _expect(isinstance(entry, list) and len(entry) == 2, "a run entry is [index, bounds]")
            bounds = entry[1]
            _expect(
                isinstance(bounds, list)
                and bool(bounds)
                and len(bounds) % 2 == 0
                and all(type(b) is int for b in bounds)
                and bounds[0] >= 0
                and _ascending(bounds),
                "run bounds are ascending ints >= 0 in pairs, the runs apart",
            )
            ranges[self.replica(entry[0])] = bounds
        _expect(_ascending([entry[0] for entry in runs]), "run entries are sorted by replica")
        floors = self.dots(floor)
        for r, n in floors:
            _expect(n > (ranges[r][-1] if r in ranges else 0), "a floor is above what is seen")
        self.context = CausalContext(ranges, dict(floors))
        _expect(self.context.replicas() == frozenset(replicas), "every listed replica is used")

    def replica(self, index: Any) -> ReplicaId:
        _expect(type(index) is int and 0 <= index < len(self.replicas), "replica index in range")
        replica: ReplicaId = self.replicas[index]
        return replica

    def dots(self, flat: Any) -> list[Dot]:
        _expect(isinstance(flat, list) and len(flat) % 2 == 0, "dots are [index, n, ...]")
        pairs = [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        _expect(_ascending(pairs), "dots are sorted, once each")
        return [(self.replica(i), _count(n, "a dot counter")) for i, n in pairs]

    def seen(self, flat: Any) -> list[Dot]:
        dots = self.dots(flat)
        _expect(bool(dots), "every entry holds a dot")
        _expect(all(d in self.context for d in dots), "every dot is in the causal context")
        return dots


def _orset_tree(s: ORSet) -> Any:
    w = _DotWriter(s.context)
    return [w.context(s.context), {element: w.flat(dots) for element, dots in s.entries.items()}]


def _orset(state: Any, limits: Limits) -> ORSet:
    _expect(isinstance(state, list) and len(state) == 2, "ORSet state is [context, entries]")
    r = _DotReader(state[0])
    _expect(isinstance(state[1], dict), "ORSet entries are a dict")
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
    _expect(isinstance(state, list) and len(state) == 3, "ORMap state is [context, marks, keys]")
    r = _DotReader(state[0])
    marks = state[1]
    _expect(isinstance(marks, dict), "ORMap marks are a dict")
    _expect(isinstance(state[2], dict), "ORMap versions are a dict")
    versions = {}
    for key, entries in state[2].items():
        _expect(isinstance(entries, list) and bool(entries), "every key holds a version")
        dots: dict[Dot, ReplicatedData] = {}
        for entry in entries:
            _expect(isinstance(entry, list) and len(entry) == 3, "a version is [index, n, value]")
            (dot,) = r.seen(entry[:2])
            dots[dot] = _from_tree(entry[2], limits)
        _expect(_ascending([entry[:2] for entry in entries]), "a key's versions are sorted by dot")
        _expect(len({type(v) for v in dots.values()}) == 1, "a key's versions share one type")
        versions[key] = dots
    m = ORMap(versions, r.context)
    floors = {}
    for key, tree in marks.items():
        floor = _from_tree(tree, limits)
        _expect(isinstance(floor, DotBased) and floor == floor.marks(), "marks reserve dots only")
        live = m.get(key)
        _expect(live is None or type(live) is type(floor), "a key's marks share its type")
        _expect(
            live is None or (floor.is_inflation_of(live.marks()) and floor != live.marks()),
            "marks are stored only where they reserve more than the key's versions",
        )
        floors[key] = floor
    return ORMap(versions, r.context, floors)


def _backed(cls: type[ORMapBacked], value_type: type[ReplicatedData]) -> Callable[..., Any]:
    def decode_backed(state: Any, limits: Limits) -> ORMapBacked:
        underlying = _ormap(state, limits)
        _expect(
            all(type(v) is value_type for v in underlying._all_values())
            and all(type(v) is value_type for v in underlying.floors.values()),
            f"every {cls.__name__} value is a {value_type.__name__}",
        )
        return cls(underlying)

    return decode_backed


_TYPES: list[
    tuple[type[ReplicatedData], Callable[[Any], Any], Callable[[Any, Limits], ReplicatedData]]
] = [
    (GCounter, _gcounter_tree, _gcounter),
    (PNCounter, lambda c: [_gcounter_tree(c.p), _gcounter_tree(c.n)], _pncounter),
    (GSet, lambda s: s.elements, _gset),
    (ORSet, _orset_tree, _orset),
    (Flag, lambda f: f.enabled, _flag),
    (LWWRegister, _lwwregister_tree, _lwwregister),
    (MVRegister, lambda r: _orset_tree(r.writes), _mvregister),
    (ORMap, _ormap_tree, _ormap),
    (LWWMap, lambda m: _ormap_tree(m.underlying), _backed(LWWMap, LWWRegister)),
    (PNCounterMap, lambda m: _ormap_tree(m.underlying), _backed(PNCounterMap, PNCounter)),
    (ORMultiMap, lambda m: _ormap_tree(m.underlying), _backed(ORMultiMap, ORSet)),
]
BUILT_IN_TYPES = frozenset(cls for cls, _, _ in _TYPES)
"""The types the codec knows without :func:`~thespian_dd.register_data_type`."""
_NAMES = {cls: cls.__name__ for cls, _, _ in _TYPES}
_ENCODERS = {cls.__name__: enc for cls, enc, _ in _TYPES}
_DECODERS = {cls.__name__: dec for cls, _, dec in _TYPES}
