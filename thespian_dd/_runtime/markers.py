"""Pruning markers, and the envelope that carries them with a value.

Every restart makes a new ReplicaId and every departed node leaves slots in counters, version
vectors and ORSet dots.  Pruning (Akka's protocol) removes them without losing what they
counted:

1. The leader (the smallest live node name, acting only while every peer is reachable) marks a
   key holding state of a removed replica R: ``Initialized(owner=leader, seen={leader})``.
2. The marker travels with the key's full value; every node that merges it adds itself to
   ``seen`` and sends its own full value back with it, so when the owner sees every live node in
   ``seen`` it has merged everything they knew of R.
3. The owner collapses R's contribution into its own slot (``prune``) and replaces the marker by
   ``Performed(expires)``.  Every node that holds the marker removes R's slot from every value it
   merges (``pruning_cleanup``), before merging, so R's state cannot come back through late
   gossip or deltas and is never counted twice.  The marker is dropped when it expires.

Markers ride inside the peer payload and the stored row: an *envelope* is the codec bytes of the
value, preceded by the canonical encoding of the key's markers when it has any (a key without
markers travels and is stored exactly as before).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from thespian_dd._canonical import CodecError, Limits, decode_tree, encode_tree
from thespian_dd.data import ReplicaId

__all__ = [
    "Initialized",
    "Marker",
    "Markers",
    "Performed",
    "envelope_digest",
    "format_version",
    "join_envelope",
    "merge_markers",
    "only_performed",
    "split_envelope",
]

_MAGIC = b"TDE\x01"
_LENGTH = 4


@dataclass(frozen=True)
class Initialized:
    """``owner`` will prune the removed replica once every live node is in ``seen``."""

    owner: ReplicaId
    seen: frozenset[str]


@dataclass(frozen=True)
class Performed:
    """The removed replica was pruned; its slots are cleaned from every merge until
    ``expires_ms`` (wall clock, ms)."""

    expires_ms: int


Marker = Initialized | Performed
Markers = Mapping[ReplicaId, Marker]


def _join(a: Marker, b: Marker) -> Marker:
    """Performed beats Initialized (the later expiry wins); two Initialized markers of the same
    owner pool their ``seen``; of different owners, the smaller owner's wins (deterministic)."""
    if isinstance(a, Performed) or isinstance(b, Performed):
        if isinstance(a, Performed) and isinstance(b, Performed):
            return a if a.expires_ms >= b.expires_ms else b
        return a if isinstance(a, Performed) else b
    if a.owner == b.owner:
        return Initialized(a.owner, a.seen | b.seen)
    return a if a.owner < b.owner else b


def merge_markers(mine: Markers, theirs: Markers) -> dict[ReplicaId, Marker]:
    merged = dict(mine)
    for removed, marker in theirs.items():
        merged[removed] = _join(merged[removed], marker) if removed in merged else marker
    return merged


def only_performed(markers: Markers) -> dict[ReplicaId, Marker]:
    """What a delta may carry: a delta is not the sender's whole state, so it must not claim the
    sender has seen an Initialized marker (the owner relies on that claim)."""
    return {r: m for r, m in markers.items() if isinstance(m, Performed)}


def join_envelope(raw: bytes, markers: Markers) -> bytes:
    """The value's codec bytes ``raw`` with ``markers`` in front (``raw`` alone if none)."""
    if not markers:
        return raw
    tree = [
        [removed, m.owner, m.seen] if isinstance(m, Initialized) else [removed, m.expires_ms]
        for removed, m in markers.items()
    ]
    head = encode_tree(tree)
    return _MAGIC + len(head).to_bytes(_LENGTH, "big") + head + raw


def format_version(payload: bytes) -> int | None:
    """The codec format version of the value an envelope holds (its bytes' version byte), or
    None for a payload too short to hold one (a tombstone's empty payload)."""
    start = 0
    if payload.startswith(_MAGIC):
        start = len(_MAGIC) + _LENGTH
        start += int.from_bytes(payload[len(_MAGIC) : start], "big")
    return payload[start + 3] if len(payload) > start + 3 else None


def split_envelope(payload: bytes, limits: Limits) -> tuple[dict[ReplicaId, Marker], bytes]:
    """(markers, value codec bytes) of an envelope; raises CodecError if it is malformed."""
    if not payload.startswith(_MAGIC):
        return {}, payload
    start = len(_MAGIC) + _LENGTH
    if len(payload) < start:
        raise CodecError("truncated pruning envelope")
    length = int.from_bytes(payload[len(_MAGIC) : start], "big")
    if len(payload) < start + length:
        raise CodecError("truncated pruning envelope")
    tree = decode_tree(payload[start : start + length], limits)
    markers: dict[ReplicaId, Marker] = {}
    if not isinstance(tree, list):
        raise CodecError("pruning markers must be a list")
    for item in tree:
        if isinstance(item, list) and len(item) == 3:
            removed, owner, seen = item
            if not (
                isinstance(owner, ReplicaId)
                and isinstance(seen, frozenset)
                and all(isinstance(s, str) for s in seen)
            ):
                raise CodecError(f"malformed Initialized marker {item!r}")
            marker: Marker = Initialized(owner, seen)
        elif isinstance(item, list) and len(item) == 2 and type(item[1]) is int:
            removed, marker = item[0], Performed(item[1])
        else:
            raise CodecError(f"malformed pruning marker {item!r}")
        if not isinstance(removed, ReplicaId):
            raise CodecError(f"a pruning marker names {removed!r}, not a ReplicaId")
        markers[removed] = marker
    return markers, payload[start + length :]


def envelope_digest(raw_digest: bytes, markers: Markers) -> bytes:
    """The gossip digest of a value with markers: differs whenever the markers do."""
    return hashlib.blake2b(join_envelope(raw_digest, markers), digest_size=16).digest()
