"""The delta queue: local changes waiting to be propagated, each tick to a few peers in turn, and
the numbers that let a receiver tell that deltas were lost.

Deltas of one key between two ticks are merged into one; a delete replaces them by a tombstone.
At each tick what is queued becomes the next *batch*, and a few reachable peers in turn (as
Akka's Replicator does: :func:`slice_size` of them) get, in one propagation, every batch made
since their last one, merged.  So a node that writes sends a few propagations a tick, not one to
every peer, and every peer still gets each change within :func:`rounds_to_reach_all` ticks (half
a gossip interval).  A batch is kept until every reachable peer has had it.

Propagations are numbered per receiver (and incarnation of this node), 1, 2, 3 without gaps.
A receiver that sees a gap asks for the whole value of the keys that need causal delivery
instead of merging their delta; so a peer that was away while batches it never had were dropped
gets its next propagation with a number skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from thespian_dd import codec
from thespian_dd._runtime.antientropy import Merge
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.markers import join_envelope, only_performed
from thespian_dd._runtime.protocol import PROTOCOL_VERSION, TOMBSTONE, DeltaPropagation
from thespian_dd.data import ReplicaId, ReplicatedData, RequiresCausalDelivery

__all__ = ["DeltaQueue", "Due", "rounds_to_reach_all", "slice_size"]

Deltas = dict[str, ReplicatedData | None]
"""Deltas by key (None: a tombstone)."""


def rounds_to_reach_all(gossip_interval: float, delta_interval: float) -> int:
    """The ticks within which every peer gets each change: those of half a gossip interval (at
    least one; 5 with the defaults, so within a second)."""
    return max(1, int(gossip_interval / (2 * delta_interval) + 1e-9))


def slice_size(peers: int, rounds: int) -> int:
    """How many of ``peers`` a tick sends to, so that ``rounds`` ticks reach them all: at least
    two (all of them at 3 nodes)."""
    return max(min(2, peers), -(-peers // rounds))


@dataclass(frozen=True)
class Due:
    """Deltas owed to some peers at a tick (merged), and the number of each one's propagation."""

    deltas: Deltas
    numbers: dict[ReplicaId, int]


def _fold(into: Deltas, key: str, delta: ReplicatedData | None) -> None:
    queued = into.get(key)
    if delta is None or queued is None:
        into[key] = delta
    else:
        into[key] = queued.merge(delta)


class DeltaQueue:
    def __init__(self) -> None:
        self._queued: Deltas = {}
        self._batches: dict[int, Deltas] = {}  # by number, oldest first
        self._made = 0  # the number of the last batch made
        self._had: dict[ReplicaId, int] = {}  # peer -> the last batch it had (or did not need)
        self._numbers: dict[ReplicaId, int] = {}  # peer -> the number of its last propagation
        self._gap: set[ReplicaId] = set()  # peers whose next propagation must show a gap
        self._last_served: ReplicaId | None = None  # the turn goes on with the peers after it
        self._origin: ReplicaId | None = None  # this node, as it numbers what it sends
        self.waiting = False
        """Whether a reachable peer is owed batches after the last tick (tick again)."""
        self._seen: dict[ReplicaId, object] = {}  # the last seq of each origin, as it was sent

    def add(self, key: str, delta: ReplicatedData | None) -> None:
        """Queue ``delta`` of ``key`` (None: the key was deleted)."""
        _fold(self._queued, key, delta)

    def drop(self, key: str) -> None:
        """``key`` expired: nothing of it is propagated (it must not come back elsewhere)."""
        self._queued.pop(key, None)
        for batch in self._batches.values():
            batch.pop(key, None)

    def held(self) -> int:
        """Batches kept for peers that have not had them."""
        return len(self._batches)

    def due(self, origin: ReplicaId, peers: Iterable[ReplicaId], size: int) -> list[Due]:
        """A tick of ``origin`` (this node): what is queued becomes the next batch; of ``peers``
        (the reachable ones), those owed batches that were never sent one, and the next ``size``
        in turn of the others, get every batch they have not had, merged (one :class:`Due` for
        those owed the same batches; none where that is nothing, an expired key's).

        A peer never sent a propagation is met anew at every tick until it is: it gets the
        batches from that tick on, and its first propagation, number 1, at once.  So the first
        number a peer hears is always 1, and it misses no batch before it (a node of an earlier
        release takes any first number for a start).  A new incarnation of this node meets
        every peer anew (they hear a new origin)."""
        if origin != self._origin:
            self._origin = origin
            self._numbers.clear()
            self._gap.clear()
        before = self._made
        if self._queued:
            self._made += 1
            self._batches[self._made] = self._queued
            self._queued = {}
        present = sorted(peers)
        oldest = next(iter(self._batches), self._made + 1)
        for peer in present:
            if peer not in self._numbers:
                self._had[peer] = before
            elif self._had[peer] < oldest - 1:  # away while batches it never had were dropped
                self._gap.add(peer)
                self._had[peer] = oldest - 1
        owed = [peer for peer in present if self._had[peer] < self._made]
        first = [peer for peer in owed if peer not in self._numbers]
        rest = [peer for peer in owed if peer in self._numbers]
        last = self._last_served
        turn = 0 if last is None else next((i for i, p in enumerate(rest) if p > last), 0)
        chosen = (rest[turn:] + rest[:turn])[: max(size, 1)]
        if chosen:
            self._last_served = chosen[-1]
        groups: dict[int, list[ReplicaId]] = {}
        for peer in first + chosen:
            groups.setdefault(self._had[peer], []).append(peer)
        dues = [due for had, group in groups.items() if (due := self._serve(had, group))]
        low = min((self._had[peer] for peer in present), default=self._made)
        for number in [n for n in self._batches if n <= low]:
            del self._batches[number]
        self.waiting = low < self._made
        return dues

    def _serve(self, had: int, peers: list[ReplicaId]) -> Due | None:
        """``peers``, which had batch ``had``, get the rest, numbered (None: they hold nothing,
        every key of theirs expired; no number is used then, and a gap owed stays owed)."""
        deltas: Deltas = {}
        for number in range(had + 1, self._made + 1):
            for key, delta in self._batches[number].items():
                _fold(deltas, key, delta)
        for peer in peers:
            self._had[peer] = self._made
        if not deltas:
            return None
        numbers = {}
        for peer in peers:
            step = 2 if peer in self._gap else 1
            self._gap.discard(peer)
            numbers[peer] = self._numbers[peer] = self._numbers.get(peer, 0) + step
        return Due(deltas, numbers)

    def message(
        self,
        me: ReplicaId,
        keys: KeyTable,
        deltas: Deltas,
        seq: int,
        version: int = codec.FORMAT_VERSION,
    ) -> DeltaPropagation:
        """``deltas`` (of a :class:`Due`) as propagation ``seq`` from ``me``, encoded in format
        ``version``.  A delta carries only the Performed markers of its key: it is not the
        sender's whole state, so it must not claim the sender has seen an Initialized one."""
        entries = {
            key: TOMBSTONE
            if delta is None
            else join_envelope(codec.encode(delta, version), only_performed(keys.markers(key)))
            for key, delta in deltas.items()
        }
        return DeltaPropagation(PROTOCOL_VERSION, me, seq, entries, keys.used(entries))

    def received(self, origin: ReplicaId, seq: object) -> bool:
        """Note propagation ``seq`` from ``origin``; returns whether deltas were lost before it.
        An origin numbers the propagations it sends this node from 1, so the first one heard
        is a gap unless it is 1 (a node of the first releases numbered all its propagations
        alike: heard late, its first one costs the keys that need causal delivery asked for
        once); a number that cannot be followed, because the peer sent no int, is a gap too."""
        last = self._seen.get(origin)
        self._seen[origin] = seq
        if last is None:
            return not (_number(seq) and seq == 1)
        return not (_number(last) and _number(seq)) or seq != last + 1  # type: ignore[operator]

    def on_propagation(self, msg: DeltaPropagation, keys: KeyTable, merge: Merge) -> list[str]:
        """Merge a peer's propagation; returns the keys whose whole values to ask for instead
        (after a gap, those whose type needs causal delivery)."""
        if not isinstance(msg.entries, dict):
            return []
        used = msg.used if isinstance(msg.used, dict) else {}
        gap = self.received(msg.sender, msg.seq)
        want: list[str] = []
        for key, payload in msg.entries.items():
            current = keys.get(key) if isinstance(key, str) else None
            if gap and isinstance(current, RequiresCausalDelivery):
                want.append(key)
            else:
                merge(key, payload, str(msg.sender), used.get(key))
        return want

    def forget(self, replica: ReplicaId) -> None:
        """``replica`` was replaced by a new incarnation: its propagations are numbered anew, and
        so are those it is sent (the new one is a peer first met)."""
        self._seen.pop(replica, None)
        self._had.pop(replica, None)
        self._numbers.pop(replica, None)
        self._gap.discard(replica)


def _number(seq: object) -> bool:
    return isinstance(seq, int) and not isinstance(seq, bool)
