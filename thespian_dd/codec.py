"""Versioned bytes for every data type, with a checksum; the store and peers both use it.

An encoding is ``b"TDD"``, one format-version byte, a body, and a 16-byte BLAKE2b checksum of
everything before it.  The body of format 2 (written by default) is canonical CBOR made and read
by cbor2 (its layout is described at the format-2 section below); that of format 1 (still read,
and written for peers of an earlier release) is the canonical tree of ``[type name, state]``
(see :mod:`thespian_dd._canonical`).  Equal values give equal bytes in every process, so the
checksum doubles as the value's :func:`digest`, the change detector that gossip compares.

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

import gc
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import replace
from functools import partial
from itertools import accumulate, pairwise, repeat
from typing import Any

import cbor2
from cbor2 import CBORTag

from thespian_dd._canonical import CodecError, Limits, decode_counted, decode_tree, encode_tree
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

FORMAT_VERSION = 2
"""The format version :func:`encode` writes by default."""
FORMAT_VERSIONS: tuple[int, ...] = (1, 2)
"""Every format version :func:`decode` reads and :func:`encode` can write, ascending: a node
writes an older one for peers that read no newer (a rolling upgrade)."""
_MAGIC = b"TDD"
_CHECKSUM_SIZE = 16
_LIMITS = Limits()
_GC_PAUSE_BYTES = 64 * 1024


def _checksum(raw: bytes) -> bytes:
    return hashlib.blake2b(raw, digest_size=_CHECKSUM_SIZE).digest()


def encode(data: ReplicatedData, version: int = FORMAT_VERSION) -> bytes:
    """The versioned, checksummed, canonical bytes of ``data`` (its pending delta is not kept),
    in format ``version`` (one of :data:`FORMAT_VERSIONS`)."""
    if version not in FORMAT_VERSIONS:
        raise ValueError(
            f"cannot write format version {version!r} (this code writes {FORMAT_VERSIONS})"
        )
    if version == 1:
        body = _MAGIC + b"\x01" + encode_tree(_to_tree(data))
    else:
        body = _MAGIC + b"\x02" + _encode2(data)
    return body + _checksum(body)


def digest(data: ReplicatedData, version: int = FORMAT_VERSION) -> bytes:
    """16 bytes that are equal for equal states, in any process (the checksum of the encoding
    in format ``version``)."""
    return encode(data, version)[-_CHECKSUM_SIZE:]


def decode(raw: bytes, limits: Limits | None = None) -> ReplicatedData:
    """The value ``raw`` encodes; raises :class:`CodecError` naming what is wrong."""
    limits = limits or _LIMITS
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
    if version == 1:
        return _from_tree(decode_tree(body[len(_MAGIC) + 1 :], limits), limits)
    if len(body) < _GC_PAUSE_BYTES or not gc.isenabled():
        return _decode2(body[len(_MAGIC) + 1 :], limits)
    # A large value is many new objects, none garbage yet: the collector, run every few hundred
    # of them, would walk every object of the process again and again (3x the decode time of
    # an ORSet of 100,000 in a process holding a few such values).
    gc.disable()
    try:
        return _decode2(body[len(_MAGIC) + 1 :], limits)
    finally:
        gc.enable()


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


# -- format 2: CBOR (cbor2, compiled), replicas listed once, dots as small int steps -----------
#
# The body is the canonical CBOR (RFC 8949, as cbor2 writes with canonical=True) of
# ``[replicas, value]``: ``replicas`` is ``[node, incarnation, ...]`` of every replica the value
# names, sorted, each once and each used; everything else names a replica by its index there.
# A value is ``[type code, *state]`` (a small int per built-in type, the name of a registered
# one):
#
# - GCounter ``[0, i, n, ...]`` (units 1..n) or ``[0, runs, floors]`` (any other units);
#   PNCounter ``[1, p, n]`` with ``p`` and ``n`` GCounter states without the code, as lists.
# - GSet ``[2, {element: null, ...}]``; Flag ``[4, bool]``; LWWRegister ``[5, value, ts, i]``.
# - ORSet ``[3, runs, floors, elements, groups, steps, extras]`` (MVRegister ``[6, ...]``):
#   the elements in the order of their smallest dot ("first dot"); ``groups`` ``[i, count, ...]``
#   says how many consecutive elements have a first dot of replica i, ``steps`` the counter of
#   each first dot as the step from the previous one in its group (1 for a run of adds: one
#   byte); ``extras`` ``[position, i, n, ...]`` the other dots of the few elements holding more.
# - ORMap ``[7, runs, floors, keys, groups, steps, values, extras, marks]`` (LWWMap 8,
#   PNCounterMap 9, ORMultiMap 10): keys as ORSet elements, with the value of each first dot;
#   ``extras`` ``[position, i, n, value, ...]``; ``marks`` ``{key: value}``.
# - A causal context is ``runs`` ``[i, top or [lo, hi, ...], ...]`` and ``floors`` ``[i, n, ...]``.
# - User values (elements, keys, register values): None, bools, ints, floats, strs and bytes as
#   CBOR; any other value as tag 21572 around its canonical tree bytes (format 1's, so dill
#   pickles stay opaque leaves).
#
# The decoder refuses any other spelling: every CBOR byte string must be what cbor2 writes for
# what it decodes (checked by writing it again, in compiled code), and every structural choice
# (order, steps >= 1, int tops, one form per counter) is checked on the way in.

_TREE_TAG = 21572  # "TD"
_NATIVE = frozenset({str, int, bytes, float, bool, type(None)})
_INT = {int}
# The tags cbor2 decodes itself, but for bignums (2, 3): none is part of format 2, and some run
# code worth refusing (regular expressions, MIME parsing, shared references).
_FOREIGN_TAGS: tuple[int, ...] = (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256)
_FOREIGN_TAGS += (258, 260, 261, 1004, 43000, 55799)


def _refuse_tag(tag: int) -> Callable[[Any, bool], Any]:
    def refuse(value: Any, immutable: bool) -> Any:
        raise CodecError(f"CBOR tag {tag} is not part of format 2")

    return refuse


_SEMANTIC = {tag: _refuse_tag(tag) for tag in _FOREIGN_TAGS}


def _encode2(data: ReplicatedData) -> bytes:
    writer = _Writer2(_top_replicas(data))
    tree = writer.value(data)
    if len(writer.index) != len(writer.replicas):  # replicas met below the top: list them all
        writer = _Writer2(sorted(writer.index))
        tree = writer.value(data)
    try:
        return cbor2.dumps([writer.flat_replicas(), tree], canonical=True)
    except UnicodeEncodeError:  # a str with lone surrogates: as a tree, like other values
        writer.careful = True
        return cbor2.dumps([writer.flat_replicas(), writer.value(data)], canonical=True)


def _decode2(body: bytes, limits: Limits) -> ReplicatedData:
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
    _expect(type(tree) is list and len(tree) == 2, "a body is [replicas, value]")
    reader = _Reader2(tree[0], limits)
    value = reader.value(tree[1])
    _expect(len(reader.used) == len(reader.replicas), "every listed replica is used")
    return value


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


class _Writer2:
    def __init__(self, replicas: list[ReplicaId]) -> None:
        self.replicas = replicas
        self.index = _Index((r, i) for i, r in enumerate(replicas))
        self.careful = False

    def flat_replicas(self) -> list[Any]:
        return [x for r in self.replicas for x in (self.user(r.node), r.incarnation)]

    def user(self, x: Any) -> Any:
        if type(x) in _NATIVE and not (self.careful and type(x) is str and _surrogates(x)):
            return x
        return CBORTag(_TREE_TAG, encode_tree(x))

    def users(self, xs: Iterable[Any]) -> list[Any]:
        if self.careful:
            return [self.user(x) for x in xs]
        return [x if type(x) in _NATIVE else CBORTag(_TREE_TAG, encode_tree(x)) for x in xs]

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
            if len(dots) == 1:
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

    def spelled(self, key: Any) -> bytes:
        """The CBOR of a user value: what orders rows that share a first dot."""
        return cbor2.dumps(self.user(key), canonical=True)

    def orset(self, s: ORSet) -> list[Any]:
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
        code = _CODES.get(t)
        if code is None:
            name = type_name(data)
            state = _ENCODERS[name](data)  # with the registered type's own checks
            return [name, CBORTag(_TREE_TAG, encode_tree(state))]
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


def _shared_firsts_ordered(spelled: list[Any], steps: list[int]) -> None:
    """Rows that share a first dot (a step of 0) come in the order of their keys' CBOR."""
    if steps and min(steps) == 0:
        for k in (k for k, step in enumerate(steps) if step == 0):
            before, after = (cbor2.dumps(x, canonical=True) for x in spelled[k - 1 : k + 1])
            _expect(before < after, "rows sharing a first dot are in the order of their CBOR")


def _surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class _Reader2:
    """Reads a format-2 value, refusing every other spelling of it (see above).  The hot paths
    (a context of version vectors, one group of first dots, plain elements) are written for
    speed: small values are decoded often, by every node, for every gossiped change."""

    def __init__(self, flat: Any, limits: Limits) -> None:
        _expect(type(flat) is list and len(flat) % 2 == 0, "replicas are [node, incarnation, ...]")
        self.limits = limits
        self.items = len(flat) // 2
        self.used: set[int] = set()
        if CBORTag in map(type, flat[::2]):  # a name with no UTF-8 spelling
            flat = [self.user(x) if i % 2 == 0 else x for i, x in enumerate(flat)]
        try:
            replicas = [_replica_id(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]
        except TypeError as e:
            raise CodecError(f"invalid replica id: {e}") from None
        _expect(len(replicas) < 2 or _ascending(replicas), "replicas are sorted, each once")
        self.replicas = replicas

    def count(self, n: int) -> None:
        self.items += n
        if self.items > self.limits.max_items:
            raise CodecError(f"more than max_items={self.limits.max_items} items")

    def replica(self, i: Any) -> ReplicaId:
        _expect(type(i) is int and 0 <= i < len(self.replicas), "replica index in range")
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
            and _ascending(indexes)
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
            _expect(
                type(bounds) is list
                and len(bounds) >= 2
                and len(bounds) % 2 == 0
                and all(type(b) is int for b in bounds)
                and bounds[0] >= 0
                and _ascending(bounds)
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
            _expect(
                type(n) is int and n > (ranges[r][-1] if r in ranges else 0),
                "a floor is above what is seen",
            )
            floor[r] = n
        _expect(bool(floor), "context floors are a list")
        return CausalContext._normal(ranges, floor)

    def user(self, x: Any) -> Any:
        if type(x) in _NATIVE:
            return x
        _expect(
            type(x) is CBORTag and x.tag == _TREE_TAG and type(x.value) is bytes,
            "a user value is a CBOR scalar or a tagged tree",
        )
        limits = self.limits
        value, items = decode_counted(
            x.value, replace(limits, max_items=limits.max_items - self.items)
        )
        self.count(items)
        _expect(
            type(value) not in _NATIVE or (type(value) is str and _surrogates(value)),
            "a value with a CBOR spelling is not a tree",
        )
        return value

    def users(self, xs: Any, what: str) -> list[Any]:
        if type(xs) is not list:
            raise CodecError(f"malformed state: {what} are a list")
        self.count(len(xs))
        if set(map(type, xs)) <= _NATIVE:
            return xs
        return [self.user(x) for x in xs]

    def gcounter(self, parts: list[Any]) -> GCounter:
        """A GCounter from its state without its code (see :meth:`_Writer2.slots`)."""
        if not parts or type(parts[0]) is not list:
            ranges: dict[ReplicaId, tuple[int, ...]] = {}
            for r, n in self.pairs(parts, "GCounter slots"):
                if type(n) is not int or n <= 0:
                    raise CodecError(
                        f"malformed state: a GCounter slot must be an int > 0, not {n!r}"
                    )
                ranges[r] = (0, n)
            return GCounter.of_units(CausalContext._normal(ranges, {}))
        _expect(len(parts) == 2, "a GCounter state is [i, n, ...] or [runs, floors]")
        units = self.context(*parts)
        _expect(not (units.is_contiguous() and not units.floor), "units 1..n are written as slots")
        return GCounter.of_units(units)

    def firsts(self, context: CausalContext, groups: Any, steps: Any, n: int) -> list[Dot]:
        """The first dot of each of ``n`` rows."""
        if type(steps) is not list or len(steps) != n:
            raise CodecError("malformed state: one counter step per entry")
        if n and (set(map(type, steps)) != _INT or min(steps) < 0):
            raise CodecError("malformed state: counter steps are ints >= 0")
        self.count(n)
        tops = context.tops()
        dots: list[Dot] = []
        for r, size in self.pairs(groups, "groups"):
            start = len(dots)
            if type(size) is not int or not 0 < size <= n - start:
                raise CodecError("malformed state: group sizes are ints > 0 within the entries")
            if steps[start] < 1:
                raise CodecError("malformed state: a dot's counter is >= 1")
            counters = list(accumulate(steps if size == n else steps[start : start + size]))
            if tops is not None:
                _expect(counters[-1] <= tops.get(r, 0), "every dot is in the causal context")
            else:
                _expect(
                    all((r, c) in context for c in counters), "every dot is in the causal context"
                )
            dots += zip(repeat(r, size), counters, strict=True)
        _expect(len(dots) == n, "the groups cover every entry")
        return dots

    def extras(
        self, context: CausalContext, flat: Any, width: int, firsts: list[Dot]
    ) -> list[tuple[int, Dot, Any]]:
        """Rows' other dots: (position, dot, rest) from ``[position, i, n, *rest, ...]``."""
        if flat == []:  # exactly an empty list, nothing else
            return []
        _expect(
            type(flat) is list and len(flat) % width == 0, "extras are [position, index, n, ...]"
        )
        self.count(len(flat) // width)
        out = []
        previous: tuple[Any, ...] = ()
        index = {r: i for i, r in enumerate(self.replicas)}
        for k in range(0, len(flat), width):
            pos, i, n = flat[k : k + 3]
            _expect(type(pos) is int and 0 <= pos < len(firsts), "an extra's position is in range")
            dot = (self.replica(i), _count(n, "a dot counter"))
            first = firsts[pos]
            _expect(
                (pos, i, n) > previous and (i, n) > (index[first[0]], first[1]),
                "dots are sorted, once each",
            )
            _expect(dot in context, "every dot is in the causal context")
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
        firsts = self.firsts(context, parts[3], parts[4], len(elements))
        _shared_firsts_ordered(parts[2], parts[4])
        entries = dict(zip(elements, map(frozenset, zip(firsts)), strict=True))
        if len(entries) != len(elements):
            raise CodecError("malformed state: ORSet elements are distinct")
        for pos, dot, _ in self.extras(context, parts[5], 3, firsts):
            element = elements[pos]
            entries[element] = entries[element] | {dot}
        return ORSet(entries, context)

    def ormap(self, parts: list[Any]) -> ORMap:
        _expect(
            len(parts) == 8,
            "an ORMap state is [runs, floors, keys, groups, steps, values, extras, marks]",
        )
        context = self.context(parts[0], parts[1])
        keys = self.users(parts[2], "ORMap keys")
        firsts = self.firsts(context, parts[3], parts[4], len(keys))
        _shared_firsts_ordered(parts[2], parts[4])
        values = parts[5]
        _expect(type(values) is list and len(values) == len(keys), "one value per key")
        value = self.value
        versions = {k: {d: value(v)} for k, d, v in zip(keys, firsts, values, strict=True)}
        _expect(len(versions) == len(keys), "ORMap keys are distinct")
        for pos, dot, rest in self.extras(context, parts[6], 4, firsts):
            other = value(rest[0])
            dots = versions[keys[pos]]
            _expect(
                type(other) is type(next(iter(dots.values()))), "a key's versions share one type"
            )
            dots[dot] = other
        marks = parts[7]
        _expect(type(marks) is dict, "ORMap marks are a map")
        self.count(len(marks))
        m = ORMap(versions, context)
        floors = {}
        for spelled, tree in marks.items():
            key = self.user(spelled)
            floor = value(tree)
            _expect(
                isinstance(floor, DotBased) and floor == floor.marks(), "marks reserve dots only"
            )
            live = m.get(key)
            _expect(live is None or type(live) is type(floor), "a key's marks share its type")
            _expect(
                live is None or (floor.is_inflation_of(live.marks()) and floor != live.marks()),
                "marks are stored only where they reserve more than the key's versions",
            )
            floors[key] = floor
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
        if type(code) is str and ("." not in code or code not in _DECODERS):
            # Said as format 1 says it (an operator's inspect shows this line), not under the
            # type's name as a fault of its state would be.
            raise CodecError(
                f"unknown data type {code!r} (a data type of one's own must be registered on "
                "every node that reads it: name its module in the data_types setting)"
            )
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
            decoder = _DECODERS[code]
            _expect(len(tree) == 2, "a registered type's value is [name, state]")
            state = self.user(tree[1])
            return decoder(state, self.limits)
        _expect(type(code) is int and 0 <= code < len(_BY_CODE), f"unknown data type code {code!r}")
        cls = _BY_CODE[code]
        parts = tree[1:]
        if cls is GCounter:
            return self.gcounter(parts)
        if cls is ORSet:
            return self.orset(parts)
        if cls is ORMap:
            return self.ormap(parts)
        if cls is PNCounter:
            _expect(
                len(parts) == 2 and all(type(p) is list for p in parts),
                "a PNCounter state is [p, n]",
            )
            return PNCounter(self.gcounter(parts[0]), self.gcounter(parts[1]))
        if cls is LWWRegister:
            _expect(len(parts) == 3, "an LWWRegister state is [value, ts, node]")
            val, timestamp, node = parts
            _expect(type(timestamp) is int, "an LWWRegister timestamp is an int")
            register = LWWRegister(self.user(val), timestamp, self.replica(node))
            if self.limits.now_ms is not None:
                register.check_clock_skew(self.limits.now_ms, self.limits.max_clock_skew_ms)
            return register
        if cls is MVRegister:
            return MVRegister(self.orset(parts))
        if cls is GSet:
            _expect(
                len(parts) == 1
                and type(parts[0]) is dict
                and all(v is None for v in parts[0].values()),
                "a GSet state is {element: null}",
            )
            return GSet(self.users(list(parts[0]), "GSet elements"))
        if cls is Flag:
            _expect(len(parts) == 1 and type(parts[0]) is bool, "Flag state is a bool")
            return Flag(parts[0])
        underlying = self.ormap(parts)
        value_type = _BACKED_VALUES[cls]
        _expect(
            all(type(v) is value_type for v in underlying._all_values())
            and all(type(v) is value_type for v in underlying.floors.values()),
            f"every {cls.__name__} value is a {value_type.__name__}",
        )
        backed: ReplicatedData = cls(underlying)
        return backed


_CODES = {cls: code for code, (cls, _, _) in enumerate(_TYPES)}
_BY_CODE = [cls for cls, _, _ in _TYPES]
_BACKED_VALUES: dict[type[ReplicatedData], type[ReplicatedData]] = {
    LWWMap: LWWRegister,
    PNCounterMap: PNCounter,
    ORMultiMap: ORSet,
}


def _name_of(code: Any) -> str:
    if type(code) is int and 0 <= code < len(_BY_CODE):
        return _BY_CODE[code].__name__
    return str(code)
