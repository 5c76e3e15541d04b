"""The delta queue: local changes waiting for the next delta propagation, and the sequence
numbers that let a receiver tell that deltas were lost.

Deltas of one key between two propagations are merged into one; a delete replaces them by a
tombstone.  Propagations are numbered per origin incarnation; a receiver that sees a gap asks for
the whole value of the keys that need causal delivery instead of merging their delta.
"""

from __future__ import annotations

from thespian_dd.data import ReplicaId, ReplicatedData

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

    def forget(self, origin: ReplicaId) -> None:
        """``origin`` was replaced by a new incarnation, which numbers its own propagations."""
        self._seen.pop(origin, None)


def _number(seq: object) -> bool:
    return isinstance(seq, int) and not isinstance(seq, bool)
