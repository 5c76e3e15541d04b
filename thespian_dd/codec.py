"""Versioned bytes for every data type, with a checksum; the store and peers both use it.

An encoding is ``b"TDD"``, one format-version byte, a body, and a 16-byte BLAKE2b checksum of
everything before it.  The body of format 2 (written by default) is canonical CBOR made and read
by cbor2 (its layout: :mod:`thespian_dd._codec.format2`); that of format 1 (still read, and
written for peers of an earlier release) is the canonical tree of ``[type name, state]``
(:mod:`thespian_dd._codec.format1`).  Equal values give equal bytes in every process, so the
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

from thespian_dd._canonical import CodecError, Limits
from thespian_dd._codec import format1, format2, format2_read
from thespian_dd._codec.registry import BUILT_IN_TYPES, register_data_type, type_name
from thespian_dd.data import ReplicatedData

__all__ = [
    "BUILT_IN_TYPES",
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
        body = _MAGIC + b"\x01" + format1.encode(data)
    else:
        body = _MAGIC + b"\x02" + format2.encode(data)
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
        return format1.decode(body[len(_MAGIC) + 1 :], limits)
    if len(body) < _GC_PAUSE_BYTES or not gc.isenabled():
        return format2_read.decode(body[len(_MAGIC) + 1 :], limits)
    # A large value is many new objects, none garbage yet: the collector, run every few hundred
    # of them, would walk every object of the process again and again (3x the decode time of
    # an ORSet of 100,000 in a process holding a few such values).
    gc.disable()
    try:
        return format2_read.decode(body[len(_MAGIC) + 1 :], limits)
    finally:
        gc.enable()
