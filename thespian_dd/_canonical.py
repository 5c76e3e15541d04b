"""A canonical, self-describing binary encoding of plain Python trees.

The codec turns every CRDT into a tree of ``None``, bools, ints, floats, strs, bytes, lists,
tuples, frozensets, sets, dicts and :class:`~thespian_dd.data.ReplicaId` s, and this module turns
such a tree into bytes and back.  Sets and dicts are written in the order of their members'
encodings, so equal trees give equal bytes in every process, whatever ``PYTHONHASHSEED`` is.
Pickle is not canonical (its memo depends on object identity, set order on the hash seed), which
is why this exists.

Any other object is written with dill, as an opaque leaf: canonical only as far as its pickle is
(instances of importable classes holding plain data are).  Values that Python calls equal but
whose types differ (``1``, ``1.0``, ``True``; ``0.0`` and ``-0.0``) encode differently.

Decoding is bounded: a :class:`Limits` caps input bytes, nesting depth and the number of decoded
items, so hostile input cannot exhaust memory or the stack, and any malformed input raises
:class:`CodecError` instead of returning garbage.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import dill

from thespian_dd.data import ReplicaId

__all__ = ["CodecError", "Limits", "decode_counted", "decode_tree", "encode_tree"]


class CodecError(ValueError):
    """Bytes that are not a valid encoding, or that break a size limit."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Caps that apply to what a decode produces, not only to the bytes it reads.

    - ``max_bytes``: the largest input accepted.
    - ``max_items``: the most items (set or map members, list entries, counter slots) decoded in
      all, nested ones included.
    - ``max_depth``: the deepest nesting of containers (CRDTs in maps count one level each).
    - ``max_clock_skew_ms`` with ``now_ms``: when ``now_ms`` is given, a last-writer-wins timestamp
      further in the future than the skew is refused, so a peer with a fast clock cannot win every
      conflict for as long as its clock is ahead.
    """

    max_bytes: int = 256 * 1024 * 1024
    max_items: int = 10_000_000
    max_depth: int = 64
    max_clock_skew_ms: int = 5 * 60 * 1000
    now_ms: int | None = None


_NONE, _TRUE, _FALSE = b"N", b"T", b"F"
_INT, _FLOAT, _STR, _BYTES = b"i", b"f", b"s", b"b"
_LIST, _TUPLE, _FROZENSET, _SET, _DICT = b"l", b"t", b"z", b"S", b"d"
_REPLICA, _PICKLED = b"r", b"p"

_double = struct.Struct(">d")


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _int_bytes(n: int) -> bytes:
    return n.to_bytes((n.bit_length() + 8) // 8, "big", signed=True)


def encode_tree(tree: Any) -> bytes:
    """The canonical bytes of ``tree``."""
    out = bytearray()
    _encode(tree, out)
    return bytes(out)


def _encode(x: Any, out: bytearray) -> None:  # noqa: C901, PLR0912 - one branch per tag
    t = type(x)
    if t is str:
        raw = x.encode("utf-8", "surrogatepass")
        out += _STR + _varint(len(raw)) + raw
    elif t is int:
        raw = _int_bytes(x)
        out += _INT + _varint(len(raw)) + raw
    elif t is ReplicaId:
        raw = x.node.encode("utf-8", "surrogatepass")
        out += _REPLICA + _varint(len(raw)) + raw + _varint(x.incarnation)
    elif t is list or t is tuple:
        out += (_LIST if t is list else _TUPLE) + _varint(len(x))
        for item in x:
            _encode(item, out)
    elif t is frozenset or t is set:
        out += (_FROZENSET if t is frozenset else _SET) + _varint(len(x))
        for raw in sorted(encode_tree(item) for item in x):
            out += raw
    elif t is dict:
        out += _DICT + _varint(len(x))
        for raw_key, value in sorted((encode_tree(k), v) for k, v in x.items()):
            out += raw_key
            _encode(value, out)
    elif x is None:
        out += _NONE
    elif t is bool:
        out += _TRUE if x else _FALSE
    elif t is float:
        out += _FLOAT + _double.pack(x)
    elif t is bytes:
        out += _BYTES + _varint(len(x)) + x
    else:
        raw = dill.dumps(x, protocol=5)
        out += _PICKLED + _varint(len(raw)) + raw


def decode_tree(raw: bytes, limits: Limits) -> Any:
    """The tree ``raw`` encodes; raises :class:`CodecError` on anything malformed or too big."""
    return decode_counted(raw, limits)[0]


def decode_counted(raw: bytes, limits: Limits) -> tuple[Any, int]:
    """The tree ``raw`` encodes and the number of items it holds (what ``max_items`` counts)."""
    if len(raw) > limits.max_bytes:
        raise CodecError(f"input of {len(raw)} bytes exceeds max_bytes={limits.max_bytes}")
    reader = _Reader(raw, limits)
    tree = reader.read(0)
    if reader.pos != len(raw):
        raise CodecError(f"{len(raw) - reader.pos} trailing bytes after the value")
    return tree, reader.items


class _Reader:
    __slots__ = ("buf", "items", "limits", "pos")

    def __init__(self, buf: bytes, limits: Limits) -> None:
        self.buf = memoryview(buf)
        self.pos = 0
        self.items = 0
        self.limits = limits

    def take(self, n: int) -> memoryview:
        end = self.pos + n
        if end > len(self.buf):
            raise CodecError(f"truncated input: wanted {n} bytes at offset {self.pos}")
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def varint(self) -> int:
        n = shift = 0
        while True:
            if self.pos >= len(self.buf):
                raise CodecError("truncated input inside a length")
            byte = self.buf[self.pos]
            self.pos += 1
            n |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise CodecError("a length field is not in its shortest form")
                return n
            shift += 7
            if shift > 63:
                raise CodecError("length field too long")

    def count(self) -> int:
        n = self.varint()
        self.items += n
        if self.items > self.limits.max_items:
            raise CodecError(f"more than max_items={self.limits.max_items} items")
        if n > len(self.buf) - self.pos:  # every item takes at least one byte
            raise CodecError(f"truncated input: {n} items announced at offset {self.pos}")
        return n

    def _ascending(self, start: int, previous: bytes) -> bytes:
        """The bytes of the member read from ``start``, which must sort after ``previous``: set
        members and dict keys are written in the order of their bytes, each once."""
        raw = bytes(self.buf[start : self.pos])
        if raw <= previous:
            raise CodecError("set members or dict keys out of order, or repeated")
        return raw

    def text(self) -> str:
        try:
            return str(self.take(self.varint()), "utf-8", "surrogatepass")
        except UnicodeDecodeError as e:
            raise CodecError(f"invalid UTF-8 in a string: {e}") from None

    def read(self, depth: int) -> Any:  # noqa: C901, PLR0911, PLR0912 - one branch per tag
        if depth > self.limits.max_depth:
            raise CodecError(f"nesting deeper than max_depth={self.limits.max_depth}")
        tag = bytes(self.take(1))
        if tag == _STR:
            return self.text()
        if tag == _INT:
            size = self.varint()
            if size > 4096:
                raise CodecError(f"integer of {size} bytes is too large")
            n = int.from_bytes(self.take(size), "big", signed=True)
            if size != (n.bit_length() + 8) // 8:
                raise CodecError("an integer is not in its shortest form")
            return n
        if tag == _REPLICA:
            node = self.text()
            try:
                return ReplicaId(node, self.varint())
            except TypeError as e:
                raise CodecError(f"invalid replica id: {e}") from None
        if tag in (_LIST, _TUPLE):
            items = [self.read(depth + 1) for _ in range(self.count())]
            return items if tag == _LIST else tuple(items)
        if tag in (_FROZENSET, _SET):
            members = []
            previous = b""
            for _ in range(self.count()):
                start = self.pos
                members.append(self.read(depth + 1))
                previous = self._ascending(start, previous)
            try:
                return frozenset(members) if tag == _FROZENSET else set(members)
            except TypeError as e:
                raise CodecError(f"unhashable set member: {e}") from None
        if tag == _DICT:
            pairs = []
            previous = b""
            for _ in range(self.count()):
                start = self.pos
                key = self.read(depth + 1)
                previous = self._ascending(start, previous)
                pairs.append((key, self.read(depth + 1)))
            try:
                return dict(pairs)
            except TypeError as e:
                raise CodecError(f"unhashable dict key: {e}") from None
        if tag == _NONE:
            return None
        if tag == _TRUE:
            return True
        if tag == _FALSE:
            return False
        if tag == _FLOAT:
            value: float = _double.unpack(self.take(8))[0]
            return value
        if tag == _BYTES:
            return bytes(self.take(self.varint()))
        if tag == _PICKLED:
            raw = self.take(self.varint())
            try:
                return dill.loads(raw)
            except Exception as e:  # noqa: BLE001 - any unpickling failure is bad input
                raise CodecError(
                    f"a pickled value does not load: {type(e).__name__}: {e}"
                ) from None
        raise CodecError(f"unknown tag {tag!r} at offset {self.pos - 1}")
