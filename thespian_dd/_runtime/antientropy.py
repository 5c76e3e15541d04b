"""Anti-entropy: how two nodes find the keys they disagree on, and what one gossip message
carries.

Every ``gossip_interval`` a few peers get the digests of the key buckets (a GossipStatus); the
receiver answers the buckets that differ with its digests of their keys (GossipKeys); the first
node then sends the values that differ and asks for those it lacks (GossipEntries).  Values go
within a budget of bytes per message, smallest first, so one big value cannot hold back the
others; what does not fit goes in the next round.  So do key digests: a GossipKeys carries the
buckets, in random order, whose digests fit the budget; a bucket whose digests alone exceed it
(about 20,000 keys a bucket at the default budget: 1.2 million keys) goes in parts, by a hash of
the key (:func:`~thespian_dd._runtime.keys.part_of`), one part a message, the parts in turn; to
a node of the first release (codec format 1, which reads no parts) it goes whole.

What anti-entropy sends follows what changed, not how many keys there are: a bucket whose
digest changed here within ``settle`` seconds (a write here, or a delta received: deltas are in
flight to or from the peers) is left out of the comparison, since the deltas bring both sides
level; under a sustained load every bucket changes every round, and comparing them would ship
the digest of every key every round.  A bucket is compared all the same once it was left out
for :data:`SETTLE_LIMIT` times ``settle`` (a bucket written without pause), and every bucket
when ``force`` is asked (a peer met, or heard again after being unreachable: it missed deltas).

Versions: a status says the codec format its digests are in (the pair's, see
:mod:`thespian_dd._runtime.versions`), and the receiver compares its own digests in that format,
so two nodes of different releases that hold equal values find them equal; values are sent in
the format the pair uses.  Which buckets changed is noted in this node's own format.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from thespian_dd import codec
from thespian_dd._runtime.checks import Rejections, seconds
from thespian_dd._runtime.keys import MAX_PARTS, ORDERED_BUCKETS, KeyTable
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    GossipEntries,
    GossipKeys,
    GossipStatus,
    PeerMessage,
)
from thespian_dd.data import ReplicaId

__all__ = ["SETTLE_LIMIT", "AntiEntropy", "differing_buckets", "differing_keys", "within_budget"]

SETTLE_LIMIT = 150
"""A bucket left out of the comparison (changing) for this many times ``settle`` is compared."""


def differing_buckets(mine: Mapping[int, bytes], theirs: Mapping[Any, object]) -> frozenset[int]:
    """The buckets whose digests differ, or that only one side has (what the peer sent that is
    no bucket number comes back as it is; the peer's own lookup ignores it)."""
    return frozenset(b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b))


def differing_keys(
    mine: Mapping[str, bytes], theirs: Mapping[Any, object]
) -> tuple[list[str], frozenset[str]]:
    """From the key digests of the same buckets on both sides: (the keys whose values to send,
    the keys whose values to ask for).  A key only one side has is in one of them; a key whose
    digests differ, in both."""
    send = [k for k, d in mine.items() if theirs.get(k) != d]
    want = frozenset(k for k, d in theirs.items() if isinstance(k, str) and mine.get(k) != d)
    return send, want


def within_budget(
    payloads: Iterable[tuple[str, bytes]], budget: int
) -> tuple[dict[str, bytes], list[str]]:
    """The payloads that one message carries within ``budget`` bytes, smallest first; a payload
    larger than the budget goes alone.  Also returns the keys sent over the budget."""
    entries: dict[str, bytes] = {}
    over: list[str] = []
    size = 0
    for key, payload in sorted(payloads, key=lambda kp: len(kp[1])):
        if entries and size + len(payload) > budget:
            break
        if len(payload) > budget:
            over.append(key)
        entries[key] = payload
        size += len(payload)
    return entries, over


Merge = Callable[[object, object, str, object], bool | None]
"""``merge(key, payload, origin, used)``: merge a peer's value; returns whether it changed
(None: it was refused)."""

Reply = Callable[[PeerMessage], None]
"""Send a message to the peer whose message is being answered."""


class AntiEntropy:
    """One node's side of the exchange, over its key table.  ``me()`` is the node's current
    replica; ``merge`` merges what a peer sends; ``budget``: ``max_gossip_bytes``;
    ``format_for(node)``: the codec format of values sent to that peer; ``settle``: seconds a
    changed bucket is left out of the comparison (0: never; see the module doc); ``clock``:
    monotonic seconds."""

    def __init__(  # noqa: PLR0913 - the table, the node, the merge, limits, formats, log, clock
        self,
        keys: KeyTable,
        me: Callable[[], ReplicaId],
        merge: Merge,
        budget: int,
        rejections: Rejections,
        *,
        format_for: Callable[[str], int] = lambda _node: codec.FORMAT_VERSION,
        settle: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._keys = keys
        self._me = me
        self._merge = merge
        self._budget = budget
        self._rejections = rejections
        self._format_for = format_for
        self._settle = settle
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - orders buckets, guards no secret
        self._seen: dict[int, bytes] = {}  # the bucket digests when last looked at
        self._changed: dict[int, float] = {}  # when each bucket's digest was seen to change
        # Per peer (node name), the buckets that differ from it: when each was last compared
        # with it (its key digests sent), or first found differing.  Per peer: a bucket compared
        # with one peer says nothing of another, and shared, a bucket compared with one peer
        # each round would never count as left out too long for the others.
        self._compared: dict[str, dict[int, float]] = {}
        # Per peer (node name), the buckets being sent in parts (see _answer_part): its
        # incarnation, whether the sweeps began forced, and per bucket the part count and the
        # parts sent (a bit each).
        self._sweeps: dict[str, _Sweeps] = {}

    def buckets(self, version: int = codec.FORMAT_VERSION) -> dict[int, bytes]:
        """The bucket digests here in format ``version``, noting which changed since the last
        look (in this node's own format)."""
        buckets = self._keys.buckets()
        self._note_changes(buckets)
        return buckets if version == codec.FORMAT_VERSION else self._keys.buckets(version)

    def _note_changes(self, buckets: dict[int, bytes]) -> None:
        if self._settle:
            now = self._clock()
            for bucket in set(buckets) | set(self._seen):
                if buckets.get(bucket) != self._seen.get(bucket):
                    self._changed[bucket] = now
            self._seen = buckets

    def _settled(self, buckets: Iterable[Any], compared: dict[int, float]) -> list[Any]:
        """Those of ``buckets`` to compare now with a peer (``compared``: its bookkeeping): not
        changed here within ``settle``, or left out too long."""
        now, settle = self._clock(), self._settle
        return [
            b
            for b in buckets
            if now - self._changed.get(b, -settle) >= settle
            or now - compared[b] >= settle * SETTLE_LIMIT
        ]

    def status(
        self,
        directory: dict[str, tuple[ReplicaId, Any]],
        digest: bytes | None = None,
        version: int = codec.FORMAT_VERSION,
        used: dict[str, float] | None = None,
        versions: dict[str, tuple[int, ...]] | None = None,
    ) -> GossipStatus:
        """This round's status: the bucket digests in format ``version``, the peer directory
        (or none) and its ``digest``, the keys that expire used here since the last status
        (``used``: taken already, for statuses in several formats), and the versions this node
        speaks."""
        buckets = self.buckets(version)
        used = self._keys.take_used_here() if used is None else used
        return GossipStatus(
            PROTOCOL_VERSION,
            self._me(),
            buckets,
            directory,
            used,
            versions=versions,
            format=version,
            directory=digest,
        )

    def on_status(self, msg: GossipStatus, reply: Reply, *, force: bool = False) -> bool:
        """A peer's status: note when it used keys, and answer the buckets that differ (those
        settled, unless ``force``) with the digests of their keys here, as many buckets as fit
        the budget.  Returns whether every bucket that differs was answered (so False when
        buckets were left out, or when the status could not be compared at all: a peer that
        must be compared in full still must)."""
        if not isinstance(msg.buckets, dict):
            return False
        if isinstance(msg.used, dict):
            for key, at in msg.used.items():
                if key in self._keys and (when := seconds(at)) is not None:
                    self._keys.touch(key, when)
        version = msg.format
        if version not in codec.FORMAT_VERSIONS:
            return False  # digests this node cannot compute: no pair uses such a format
        differ = list(differing_buckets(self.buckets(version), msg.buckets))
        # A bucket that differs keeps the time it was last compared with this peer, or first
        # found differing (counts towards SETTLE_LIMIT); one that agrees is dropped.
        now, known = self._clock(), self._compared.get(msg.sender.node, {})
        compared = {bucket: known.get(bucket, now) for bucket in differ}
        self._compared[msg.sender.node] = compared
        sweeps = self._sweeps_of(msg.sender, differ, force=force)
        chosen = differ if force or not self._settle else self._settled(differ, compared)
        return self._answer(chosen, reply, version, compared, sweeps) == len(differ)

    def _sweeps_of(self, peer: ReplicaId, differ: list[Any], *, force: bool) -> _Sweeps:
        """The sweeps of buckets in parts with ``peer``, kept only where they still hold: for
        its incarnation, for buckets that still differ, and not across the start of a forced
        comparison (the peer missed deltas: every part is owed again)."""
        sweeps = self._sweeps.get(peer.node)
        if sweeps is None or sweeps.replica != peer or (force and not sweeps.forced):
            sweeps = self._sweeps[peer.node] = _Sweeps(peer, force)
        sweeps.forced = force
        kept = set(differ)
        for bucket in [b for b in sweeps.parts if b not in kept]:
            del sweeps.parts[bucket]
        return sweeps

    def _answer(
        self,
        differ: list[Any],
        reply: Reply,
        version: int,
        compared: dict[int, float],
        sweeps: _Sweeps,
    ) -> int:
        """Send the key digests of ``differ``'s buckets, in random order, as many as fit the
        budget, noting them in ``compared``; returns how many went.  A bucket whose digests
        alone exceed the budget goes in parts (the next part of its sweep in ``sweeps``), and
        counts as sent once every part went; in format 1 (a peer of the first release, which
        reads no parts) it goes whole."""
        self._rng.shuffle(differ)
        chosen: list[Any] = []
        digests: dict[str, bytes] = {}
        size = 0
        for bucket in differ:
            these = self._keys.digests_in([bucket], version)
            cost = _cost(these)
            if not chosen and cost > self._budget and version != ORDERED_BUCKETS:
                return self._answer_part(bucket, cost, reply, version, compared, sweeps)
            if chosen and size + cost > self._budget:
                break
            chosen.append(bucket)
            digests.update(these)
            size += cost
        if chosen:
            now = self._clock()
            for bucket in chosen:
                compared[bucket] = now
            chosen_buckets = frozenset(chosen)
            reply(GossipKeys(PROTOCOL_VERSION, self._me(), digests, chosen_buckets, format=version))
        return len(chosen)

    def _answer_part(  # noqa: PLR0913, PLR0917 - as _answer, and the bucket and its size
        self,
        bucket: int,
        cost: int,
        reply: Reply,
        version: int,
        compared: dict[int, float],
        sweeps: _Sweeps,
    ) -> int:
        """Send the next part of ``bucket``'s key digests (``cost`` bytes whole) not sent in
        its sweep.  The parts: as many as make each a quarter to a half of the budget (the
        keys fall in parts by a hash, so a part has room for more than its share), a power of
        two, at most :data:`MAX_PARTS`; a sweep whose count changes starts again.  Returns 1
        once every part of the sweep went (the sweep ends), else 0."""
        count = 2
        while count < MAX_PARTS and 2 * cost > self._budget * count:
            count *= 2
        swept_count, sent = sweeps.parts.get(bucket, (count, 0))
        if swept_count != count:
            sent = 0
        index = next(i for i in range(count) if not sent >> i & 1)
        sent |= 1 << index
        part = (index, count)
        digests = self._keys.digests_in([bucket], version, part)
        reply(GossipKeys(PROTOCOL_VERSION, self._me(), digests, frozenset({bucket}), version, part))
        if (size := _cost(digests)) > self._budget:
            self._rejections.warn_once(
                "digest budget",
                f"bucket {bucket}",
                "key digests of part %d of %d of bucket %d (%d bytes) exceed max_gossip_bytes",
                index,
                count,
                bucket,
                size,
            )
        if sent != (1 << count) - 1:
            sweeps.parts[bucket] = (count, sent)
            return 0
        sweeps.parts.pop(bucket, None)
        compared[bucket] = self._clock()
        return 1

    def on_keys(self, msg: GossipKeys, reply: Reply) -> None:
        """A peer's key digests of the buckets that differ: send the values that differ, and
        ask for those it has and this node lacks or holds otherwise."""
        if not isinstance(msg.digests, dict) or msg.format not in codec.FORMAT_VERSIONS:
            return
        part = msg.part
        if part is not None and not _a_part(part, msg.buckets):
            return
        here = self._keys.digests_in(msg.buckets, msg.format, part)
        send, want = differing_keys(here, msg.digests)
        self.send_entries(send, want, reply, self._format_for(msg.sender.node))

    def on_entries(self, msg: GossipEntries, reply: Reply | None) -> None:
        """A peer's values: merge them, and send the values it asked for (``reply`` None: a
        sender not in the peer table, which gets none)."""
        if not isinstance(msg.entries, dict):
            return
        used = msg.used if isinstance(msg.used, dict) else {}
        for key, payload in msg.entries.items():
            self._merge(key, payload, str(msg.sender), used.get(key))
        if msg.want and reply is not None:
            wanted = [k for k in msg.want if isinstance(k, str)]
            self.send_entries(wanted, frozenset(), reply, self._format_for(msg.sender.node))

    def send_entries(
        self,
        keys: list[str],
        want: frozenset[str],
        reply: Reply,
        version: int = codec.FORMAT_VERSION,
    ) -> None:
        """Send the values of ``keys`` in format ``version`` within the budget (the rest goes
        next round), and ask for ``want``."""
        payloads = [(k, p) for k in keys if (p := self._keys.payload(k, version)) is not None]
        entries, over = within_budget(payloads, self._budget)
        for key in over:
            self._rejections.warn_once(
                "budget",
                key,
                "value of %r (%d bytes) exceeds max_gossip_bytes: sent alone",
                key,
                len(entries[key]),
            )
        if entries or want:
            used = self._keys.used(entries)
            reply(GossipEntries(PROTOCOL_VERSION, self._me(), entries, want, used))


@dataclass
class _Sweeps:
    """A peer's buckets being sent in parts: for which incarnation of it, whether its last
    status was compared forced, and per bucket (part count, a bit per part sent)."""

    replica: ReplicaId
    forced: bool
    parts: dict[int, tuple[int, int]] = field(default_factory=dict)


def _cost(digests: Mapping[str, bytes]) -> int:
    """What key digests weigh against the budget: their keys' and digests' lengths."""
    return sum(len(k) + len(d) for k, d in digests.items())


def _a_part(part: object, buckets: object) -> bool:
    """Whether a GossipKeys's ``part`` names a part, ``(index, count)``, of one bucket."""
    return (
        isinstance(part, tuple)
        and len(part) == 2
        and all(type(n) is int for n in part)
        and 0 <= part[0] < part[1] <= MAX_PARTS
        and isinstance(buckets, frozenset)
        and len(buckets) == 1
    )
