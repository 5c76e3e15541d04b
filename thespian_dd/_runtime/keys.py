"""The key table: every key a node holds, the one place a key is added or removed.

For each key: its value or a tombstone, its pruning markers, the digest gossip compares, the
hashed bucket it belongs to, and, for keys that expire after inactivity, when it was last used.
The parallel records are kept in step here and nowhere else:

- :meth:`KeyTable.put` keeps a value (with new markers, if given), :meth:`KeyTable.delete` a
  tombstone, :meth:`KeyTable.restore` a stored row; :meth:`KeyTable.expire` removes a key without
  a tombstone and :meth:`KeyTable.clear` forgets everything (a load that failed).
- A restored value is kept as its stored bytes and decoded when it is first used (every read of
  a value goes through :meth:`KeyTable.get`, which decodes it): a node serves as soon as its
  rows are read.  A value that fails its decode then is dropped and reported through
  ``refused(key, error)``, as a row refused at load would be: never served, and its row is not
  written.  Until then its digest is the last 16 bytes of its bytes and gossip ships the bytes
  as they are, if they are of the codec's current format (``FORMAT_VERSION``); bytes of another
  format are decoded for their digest and re-encoded to travel.
- Digests are computed when gossip needs them (:meth:`KeyTable.digests`), not on the path of
  every update, unless the caller has the value's encoding already.  A digest is the checksum of
  an encoding, so it depends on the codec format: during a rolling upgrade a peer of an earlier
  release compares digests in its format, which the table then keeps too (and drops once no
  peer needs it), and a payload for a peer is encoded in the peer's format
  (:meth:`KeyTable.payload`).
- Buckets: keys are grouped into :data:`BUCKETS` hashed buckets; gossip compares the 8-byte bucket
  digests first, so two nodes that agree exchange a fixed 64 x 8 bytes per round.  A bucket's
  digest is the XOR of its keys' hashes (:func:`key_hash`), kept as each key's digest changes:
  what a gossip round costs follows the keys changed since the last, not the keys held (hashing
  a bucket's keys in order, as format 1 does, cost 0.5 s a round at 300,000 keys under a load).
  Format 1's bucket digests (:data:`ORDERED_BUCKETS`, for a peer of the first release) are still
  computed that way, from scratch for each bucket that changed.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable, Iterator, Mapping

from thespian_dd import codec
from thespian_dd._canonical import CodecError, Limits
from thespian_dd._runtime.checks import describe
from thespian_dd._runtime.markers import Marker, Markers, Performed, envelope_digest, join_envelope
from thespian_dd._runtime.markers import split_envelope as _split_envelope
from thespian_dd._runtime.protocol import TOMBSTONE
from thespian_dd._runtime.versions import format_of, format_prefix
from thespian_dd.data import ReplicaId, ReplicatedData

__all__ = [
    "BUCKETS",
    "MAX_PARTS",
    "ORDERED_BUCKETS",
    "TOMBSTONE_DIGEST",
    "KeyTable",
    "bucket_digests",
    "bucket_of",
    "key_hash",
    "part_of",
]

BUCKETS = 64
TOMBSTONE_DIGEST = b"thespian_dd:deleted"[:16]
ORDERED_BUCKETS = 1
"""The codec format whose bucket digests hash the bucket's keys in order (the first release's
digests); in later formats a bucket's digest is the XOR of its keys' :func:`key_hash`."""


def bucket_of(key: str) -> int:
    return (
        hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=2).digest()[0] % BUCKETS
    )


MAX_PARTS = 256
"""The most parts a bucket's key digests go in (see :func:`part_of`)."""


def part_of(key: str, count: int) -> int:
    """Which of ``count`` parts of its bucket ``key`` is in (``count`` at most
    :data:`MAX_PARTS`): a bucket whose key digests exceed the gossip budget is compared a part a
    message.  The other byte of the hash that gave its bucket, so a part holds about
    ``1/count`` of its bucket's keys."""
    return hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=2).digest()[1] % count


def key_hash(key: str, digest: bytes) -> int:
    """What a key with digest ``digest`` adds to its bucket's digest (from format 2 on): 8 bytes
    of the hash of both, as an int to XOR."""
    data = key.encode("utf-8", "surrogatepass") + b"\0" + digest
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def _ordered(digests: Mapping[str, bytes], members: Iterable[str]) -> bytes:
    h = hashlib.blake2b(digest_size=8)
    for key in sorted(members):
        h.update(key.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
        h.update(digests[key])
    return h.digest()


def _xor(digests: Mapping[str, bytes], members: Iterable[str]) -> int:
    total = 0
    for key in members:
        total ^= key_hash(key, digests[key])
    return total


def bucket_digests(
    digests: Mapping[str, bytes], keys: Iterable[str], version: int = codec.FORMAT_VERSION
) -> dict[int, bytes]:
    """8-byte digests of the given keys' buckets in format ``version``, from the per-key digests
    and from scratch (order-independent): what :meth:`KeyTable.buckets` keeps up to date."""
    by_bucket: dict[int, list[str]] = {}
    for key in keys:
        by_bucket.setdefault(bucket_of(key), []).append(key)
    if version == ORDERED_BUCKETS:
        return {bucket: _ordered(digests, members) for bucket, members in by_bucket.items()}
    return {b: _xor(digests, members).to_bytes(8, "big") for b, members in by_bucket.items()}


class _Digests:
    """The digests of every key and bucket in one codec format.  Invariant: a bucket not in
    ``dirty`` has its digest in ``buckets`` (format 1) or in ``sums`` (later formats: the XOR
    of the :func:`key_hash` of its keys in ``keys``, 0 for none); a key in ``stale`` keeps its
    previous digest in ``keys`` (and in its bucket's sum) until its new one is computed."""

    def __init__(self, version: int) -> None:
        self.version = version
        self.keys: dict[str, bytes] = {}
        self.stale: set[str] = set()  # keys whose digest is computed when next needed
        self.buckets: dict[int, bytes] = {}  # format 1
        self.sums: dict[int, int] = {}  # later formats
        self.dirty: set[int] = set()  # buckets whose digest is computed from scratch

    def set(self, key: str, digest: bytes, bucket: int) -> None:
        """``key`` (of ``bucket``) has the digest ``digest`` now."""
        self.stale.discard(key)
        old = self.keys.get(key)
        if old == digest:
            return
        self.keys[key] = digest
        if self.version == ORDERED_BUCKETS or bucket in self.dirty:
            self.dirty.add(bucket)
            return
        total = self.sums.get(bucket, 0) ^ key_hash(key, digest)
        self.sums[bucket] = total if old is None else total ^ key_hash(key, old)

    def remove(self, key: str, bucket: int) -> None:
        """``key`` (of ``bucket``) left the table."""
        self.stale.discard(key)
        old = self.keys.pop(key, None)
        if self.version == ORDERED_BUCKETS or bucket in self.dirty:
            self.dirty.add(bucket)
        elif old is not None:
            self.sums[bucket] ^= key_hash(key, old)


class KeyTable:
    """A node's keys.  ``expiry(key)`` gives the seconds of inactivity after which a key expires
    (None: never); ``clock`` is the wall clock in seconds (last use travels between nodes)."""

    def __init__(
        self,
        expiry: Callable[[str], float | None],
        clock: Callable[[], float] = time.time,
        refused: Callable[[str, CodecError], None] = lambda _key, _error: None,
    ) -> None:
        self._expiry = expiry
        self._clock = clock
        self._refused = refused
        self._values: dict[str, ReplicatedData] = {}
        self._stored: dict[str, bytes] = {}  # restored and not decoded yet: the codec bytes
        self._limits = Limits()
        self._deleted: set[str] = set()
        self._markers: dict[str, dict[ReplicaId, Marker]] = {}
        self.pruned: set[ReplicaId] = set()
        """Replicas whose pruning was performed in some key: they may never be peers again."""
        self._bucket_keys: dict[int, set[str]] = {}  # the keys of each non-empty bucket
        self._current = _Digests(codec.FORMAT_VERSION)
        self._older: dict[int, _Digests] = {}  # digests in other formats, for older peers
        self._last_used: dict[str, float] = {}
        self._used_here: set[str] = set()  # used on this node since the last take_used_here()
        self._written: set[str] = set()  # given a value since the last take_written()
        # The last encoding made or given: (value, its bytes).  A quorum write sends one value
        # to many peers; it is encoded once.  Values are immutable, so the object is its key.
        self._encoded: tuple[ReplicatedData | None, bytes] = (None, b"")

    # -- reading ----------------------------------------------------------------------------------

    def get(self, key: str) -> ReplicatedData | None:
        """The value of ``key``; None if it is deleted or unknown (or, restored, fails its
        decode now: then it is dropped and reported)."""
        value = self._values.get(key)
        if value is None and key in self._stored:
            value = self._decode(key)
        return value

    def _decode(self, key: str) -> ReplicatedData | None:
        raw = self._stored[key]
        try:
            value = codec.decode(raw, self._limits)
        except Exception as e:  # noqa: BLE001 - any failure refuses the value, never the node
            self._drop(key)
            self._refused(key, e if isinstance(e, CodecError) else CodecError(describe(e)))
            return None
        del self._stored[key]
        self._values[key] = value
        return value

    def _decode_all(self) -> None:
        for key in list(self._stored):
            self._decode(key)

    def undecoded(self) -> int:
        """How many restored values are still kept as their bytes."""
        return len(self._stored)

    def decode_for(self, seconds: float, clock: Callable[[], float] = time.perf_counter) -> int:
        """Decode restored values for about ``seconds`` (at least one); returns how many are
        left.  The Replicator decodes in such slices after a load, between messages."""
        deadline = clock() + seconds
        while self._stored:
            self._decode(next(iter(self._stored)))
            if clock() >= deadline:
                break
        return len(self._stored)

    def is_deleted(self, key: str) -> bool:
        return key in self._deleted

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` holds a value (not a tombstone)."""
        return key in self._values or key in self._stored

    def __len__(self) -> int:
        """The number of keys holding a value."""
        return len(self._values) + len(self._stored)

    def items(self) -> Iterator[tuple[str, ReplicatedData]]:
        """Every key's value (restored ones are decoded now)."""
        self._decode_all()
        return iter(list(self._values.items()))

    def values(self) -> Iterator[ReplicatedData]:
        self._decode_all()
        return iter(list(self._values.values()))

    def names(self) -> frozenset[str]:
        return frozenset(self._values).union(self._stored)

    def tombstones(self) -> int:
        return len(self._deleted)

    def sizes(self) -> Iterator[tuple[str, int]]:
        """Every key holding a value with its encoded size (a restored value is not decoded:
        its stored bytes are its encoding)."""
        for key, stored in list(self._stored.items()):
            yield key, len(stored)
        for key, value in list(self._values.items()):
            yield key, len(codec.encode(value))

    def markers(self, key: str) -> Mapping[ReplicaId, Marker]:
        return self._markers.get(key, {})

    def keys_with_markers(self) -> list[str]:
        return list(self._markers)

    def take_written(self) -> set[str]:
        """The keys given a value (put or restored) since the last call; some may have none now
        (deleted or expired since)."""
        written, self._written = self._written, set()
        return written

    def _raw(self, key: str, version: int) -> bytes | None:
        """The encoding of ``key``'s value in format ``version`` (None: it has no value, or a
        restored one that fails its decode now)."""
        stored = self._stored.get(key)
        if stored is not None and format_of(stored) == version:
            return stored
        value = self.get(key)
        if value is None:
            return None
        last, raw = self._encoded
        if last is not value or format_of(raw) != version:
            raw = codec.encode(value, version)
            self._encoded = (value, raw)
        return raw

    def envelope(
        self, key: str, raw: bytes | None = None, version: int = codec.FORMAT_VERSION
    ) -> bytes | None:
        """The value of ``key`` with its markers, as it travels and is stored, in format
        ``version`` (``raw``: the value's encoding, if the caller has it; a restored value of an
        earlier format is encoded anew, so its row is upgraded when next written).  None: the
        key holds no value."""
        if raw is None or format_of(raw) != version:
            raw = self._raw(key, version)
            if raw is None:
                return None
        return join_envelope(raw, self._markers.get(key, {}))

    def payload(self, key: str, version: int = codec.FORMAT_VERSION) -> bytes | None:
        """What a peer gets for ``key``: its envelope in format ``version``, TOMBSTONE, or None
        if unknown here."""
        if key in self._deleted:
            return TOMBSTONE
        return self.envelope(key, version=version) if key in self else None

    # -- adding and removing keys ------------------------------------------------------------------

    def put(
        self,
        key: str,
        value: ReplicatedData,
        raw: bytes | None = None,
        markers: Markers | None = None,
    ) -> None:
        """Keep ``value`` for ``key``; ``raw``: its encoding if known; ``markers``: its new
        pruning markers (None: unchanged)."""
        if markers is not None:
            self._set_markers(key, markers)
        self._stored.pop(key, None)
        self._values[key] = value
        if raw is not None:
            self._encoded = (value, raw)
        self._changed(key, raw)

    def delete(self, key: str) -> None:
        """Replace ``key``'s value by a tombstone (it wins every merge: the key stays deleted)."""
        self._values.pop(key, None)
        self._stored.pop(key, None)
        self._markers.pop(key, None)
        self._deleted.add(key)
        bucket = self._bucket_add(key)
        for record in self._all():
            record.set(key, TOMBSTONE_DIGEST, bucket)

    def expire(self, key: str) -> None:
        """Remove ``key`` without a tombstone: used again anywhere, it comes back."""
        self._drop(key)

    def _drop(self, key: str) -> None:
        self._values.pop(key, None)
        self._stored.pop(key, None)
        self._markers.pop(key, None)
        self._last_used.pop(key, None)
        self._used_here.discard(key)
        bucket = bucket_of(key)
        members = self._bucket_keys.get(bucket)
        if members is not None:
            members.discard(key)
            if not members:
                del self._bucket_keys[bucket]
        for record in self._all():
            record.remove(key, bucket)

    def restore(self, key: str, payload: bytes | None, limits: Limits) -> None:
        """Put a stored row back (None: a tombstone), its value kept as its bytes until first
        used (see the module doc); its last use before a restart is not stored, so a key that
        expires counts as used now, here.  Raises CodecError, keeping nothing, if the row's
        pruning markers do not decode."""
        if payload is None:
            self.delete(key)
            return
        markers, raw = _split_envelope(payload, limits)
        self._limits = limits
        self._set_markers(key, markers)
        self._values.pop(key, None)
        self._stored[key] = raw
        self._changed(key, raw)
        self.touch(key)

    def restore_rows(
        self, rows: Iterable[tuple[str, bytes | None]], limits: Limits
    ) -> list[tuple[str, CodecError]]:
        """:meth:`restore` every row (a load's chunk); returns the rows refused, whose pruning
        markers do not decode.  The common row, a value of the current format without markers
        for a key not held, is restored inline: a load restores 100,000s of them."""
        refused = []
        self._limits = limits
        stored, values, markers = self._stored, self._values, self._markers
        digests, stale, dirty = self._current.keys, self._current.stale, self._current.dirty
        buckets, expiry, written = self._bucket_keys, self._expiry, self._written
        current = format_prefix(codec.FORMAT_VERSION)
        for key, payload in rows:
            if (
                payload is None
                or self._older  # digests kept in older formats too (a rolling upgrade)
                or not payload.startswith(current)  # an envelope with markers too
                or key in values
                or key in markers
                or key in stale
            ):
                try:
                    self.restore(key, payload, limits)
                except CodecError as e:
                    refused.append((key, e))
                continue
            stored[key] = payload
            written.add(key)
            digests[key] = payload[-16:]  # its bucket's digest is computed from scratch
            bucket = bucket_of(key)
            members = buckets.get(bucket)
            if members is None:
                buckets[bucket] = {key}
            else:
                members.add(key)
            dirty.add(bucket)
            if expiry(key) is not None:
                self.touch(key)
        return refused

    def clear(self) -> None:
        """Forget every key (a load that failed or was abandoned starts again from nothing)."""
        for records in (
            self._values,
            self._stored,
            self._markers,
            self._bucket_keys,
            self._last_used,
        ):
            records.clear()
        for keys in (self._deleted, self._used_here):
            keys.clear()
        self._current = _Digests(codec.FORMAT_VERSION)
        self._older.clear()
        self._encoded = (None, b"")

    def _set_markers(self, key: str, markers: Markers) -> None:
        if markers:
            self._markers[key] = dict(markers)
            self.pruned.update(r for r, m in markers.items() if isinstance(m, Performed))
        else:
            self._markers.pop(key, None)

    def _bucket_add(self, key: str) -> int:
        """Put ``key`` in its bucket; returns the bucket."""
        bucket = bucket_of(key)
        self._bucket_keys.setdefault(bucket, set()).add(key)
        return bucket

    def _all(self) -> list[_Digests]:
        """The digests in every format kept: the current one and older peers'."""
        return [self._current, *self._older.values()] if self._older else [self._current]

    def _changed(self, key: str, raw: bytes | None) -> None:
        """``key`` holds a new value (``raw``: its encoding, if known): its digest in the
        encoding's format is the encoding's checksum; in the other formats it is owed."""
        self._written.add(key)
        version = None if raw is None else format_of(raw)
        bucket = self._bucket_add(key)
        for record in self._all():
            if raw is not None and version == record.version:
                record.set(key, self._digest(key, raw[-16:]), bucket)
            else:
                record.stale.add(key)

    # -- digests -----------------------------------------------------------------------------------

    def _digest(self, key: str, value_digest: bytes) -> bytes:
        markers = self._markers.get(key)
        return envelope_digest(value_digest, markers) if markers else value_digest

    def _records(self, version: int) -> _Digests:
        """The digests in format ``version``.  A format not kept yet (an older peer's) starts
        with every key's digest owed."""
        if version == codec.FORMAT_VERSION:
            return self._current
        older = self._older.get(version)
        if older is None:
            if version not in codec.FORMAT_VERSIONS:
                raise ValueError(f"format version {version!r} is not one the codec writes")
            older = self._older[version] = _Digests(version)
            for key in self._deleted:
                older.set(key, TOMBSTONE_DIGEST, bucket_of(key))
            older.stale = set(self.names())
        return older

    def keep_formats(self, versions: Iterable[int]) -> None:
        """Keep digests only in ``versions`` (those the peers use) and the current format."""
        for version in set(self._older) - set(versions):
            del self._older[version]

    def digests(self, version: int = codec.FORMAT_VERSION) -> Mapping[str, bytes]:
        """Every key's digest (tombstones too) in format ``version``, computing those that
        changed since last asked."""
        record = self._records(version)
        for key in list(record.stale):
            raw = self._raw(key, version)  # a restored value that fails its decode is dropped
            if raw is not None:
                record.set(key, self._digest(key, raw[-16:]), bucket_of(key))
        record.stale.clear()
        return record.keys

    def buckets(self, version: int = codec.FORMAT_VERSION) -> dict[int, bytes]:
        """The digest of every non-empty bucket (a bucket whose last key left has none), in
        format ``version``: work for the keys changed since the last call, and for every key
        of a bucket that format 1 digests or that a load filled."""
        digests = self.digests(version)
        record = self._records(version)
        ordered = version == ORDERED_BUCKETS
        for bucket in record.dirty:
            members = self._bucket_keys.get(bucket)
            if not members:
                record.buckets.pop(bucket, None)
                record.sums.pop(bucket, None)
            elif ordered:
                record.buckets[bucket] = _ordered(digests, members)
            else:
                record.sums[bucket] = _xor(digests, members)
        record.dirty.clear()
        if ordered:
            return {bucket: record.buckets[bucket] for bucket in self._bucket_keys}
        return {bucket: record.sums[bucket].to_bytes(8, "big") for bucket in self._bucket_keys}

    def digests_in(
        self,
        buckets: Iterable[object],
        version: int = codec.FORMAT_VERSION,
        part: tuple[int, int] | None = None,
    ) -> dict[str, bytes]:
        """The digest of every key in ``buckets`` (what is not a bucket number is ignored), in
        format ``version``; ``part`` ``(index, count)``: only of the keys in that part of
        their bucket (:func:`part_of`)."""
        digests = self.digests(version)
        return {
            key: digests[key]
            for b in buckets
            if isinstance(b, int)
            for key in self._bucket_keys.get(b, ())
            if part is None or part_of(key, part[1]) == part[0]
        }

    # -- last use of keys that expire ----------------------------------------------------------

    def touch(self, key: str, at: float | None = None) -> None:
        """``key`` was used (updated or read) at ``at`` (default: now, here), here or on a peer."""
        if self._expiry(key) is None:
            return
        if at is None:
            at = self._clock()
            self._used_here.add(key)  # peers hear of it in the next gossip round
        self._last_used[key] = max(self._last_used.get(key, at), at)

    def expired(self, key: str, used: float | None) -> bool:
        """Whether ``key``, last used at ``used``, is idle longer than its expiry."""
        expiry = self._expiry(key)
        return expiry is not None and used is not None and self._clock() - used > expiry

    def idle(self) -> list[tuple[str, float]]:
        """The keys holding a value that are idle past their expiry, with their last use."""
        return [
            (key, used)
            for key, used in self._last_used.items()
            if key in self and self.expired(key, used)
        ]

    def used(self, keys: Iterable[str]) -> dict[str, float]:
        """When each of ``keys`` that expires was last used."""
        return {k: self._last_used[k] for k in keys if k in self._last_used}

    def take_used_here(self) -> dict[str, float]:
        """The keys used on this node since the last call, with when (for the next status)."""
        used, self._used_here = self.used(self._used_here), set()
        return used
