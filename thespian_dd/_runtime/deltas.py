"""The delta queue: local changes waiting for the next delta propagation, and the sequence
numbers that let a receiver tell that deltas were lost.

Deltas of one key between two propagations are merged into one; a delete replaces them by a
tombstone.  Propagations are numbered per origin incarnation; a receiver that sees a gap asks for
the whole value of the keys that need causal delivery instead of merging their delta.
"""

from __future__ import annotations

from thespian_dd import codec
from thespian_dd._runtime.antientropy import Merge
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.markers import join_envelope, only_performed
from thespian_dd._runtime.protocol import PROTOCOL_VERSION, TOMBSTONE, DeltaPropagation
from thespian_dd.data import ReplicaId, ReplicatedData, RequiresCausalDelivery

__all__ = ["DeltaQueue"]


class DeltaQueue:
    def __init__(self) -> None:
        self._queued: dict[str, ReplicatedData | None] = {}  # None: a tombstone
        self.seq = 0
        """The number of the last propagation taken."""
        self._seen: dict[ReplicaId, object] = {}  # the last seq of each origin, as it was sent

    def add(self, key: str, delta: ReplicatedData | None) -> None:
        """Queue ``delta`` of ``key`` (None: the key was deleted)."""
        queued = self._queued.get(key)
        if delta is None or queued is None:
            self._queued[key] = delta
        else:
            self._queued[key] = queued.merge(delta)

    def drop(self, key: str) -> None:
        """``key`` expired: nothing of it is propagated."""
        self._queued.pop(key, None)

    def __len__(self) -> int:
        return len(self._queued)

    def take(self) -> dict[str, ReplicatedData | None]:
        """What is queued, under the next sequence number (``seq``); empty: nothing to send and
        no number used."""
        if not self._queued:
            return {}
        queued, self._queued = self._queued, {}
        self.seq += 1
        return queued

    def received(self, origin: ReplicaId, seq: object) -> bool:
        """Note propagation ``seq`` from ``origin``; returns whether deltas were lost before it
        (a propagation from an origin not heard before starts its count; a number that cannot
        be followed, because the peer sent no int, counts as a gap)."""
        last = self._seen.get(origin)
        self._seen[origin] = seq
        if last is None:
            return False
        return not (_number(last) and _number(seq)) or seq != last + 1  # type: ignore[operator]

    def propagation(
        self, me: ReplicaId, keys: KeyTable, version: int = codec.FORMAT_VERSION
    ) -> DeltaPropagation | None:
        """What is queued, as the next propagation from ``me`` (None: nothing queued), in
        format ``version``."""
        deltas = self.take()
        return self.message(me, keys, deltas, version) if deltas else None

    def message(
        self,
        me: ReplicaId,
        keys: KeyTable,
        deltas: dict[str, ReplicatedData | None],
        version: int = codec.FORMAT_VERSION,
    ) -> DeltaPropagation:
        """``deltas`` (what :meth:`take` took) as propagation ``seq`` from ``me``, encoded in
        format ``version`` (one message per format the peers use, all with the same number).
        A delta carries only the Performed markers of its key: it is not the sender's whole
        state, so it must not claim the sender has seen an Initialized one."""
        entries = {
            key: TOMBSTONE
            if delta is None
            else join_envelope(codec.encode(delta, version), only_performed(keys.markers(key)))
            for key, delta in deltas.items()
        }
        return DeltaPropagation(PROTOCOL_VERSION, me, self.seq, entries, keys.used(entries))

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

    def forget(self, origin: ReplicaId) -> None:
        """``origin`` was replaced by a new incarnation, which numbers its own propagations."""
        self._seen.pop(origin, None)


def _number(seq: object) -> bool:
    return isinstance(seq, int) and not isinstance(seq, bool)
