"""Pruning rounds over the key table, and merging a peer's value with the markers that travel
with it (the protocol and its markers: :mod:`thespian_dd._runtime.markers`).

A replica counts as removed when it writes no more: an earlier start of a live node, or a node
that is no member.  A node that is merely new counts too, which is why marking waits
``max_pruning_dissemination``.  Only while every peer is reachable does a round mark (the leader,
the smallest live node name) or prune (the owner of a marker every live node has seen).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from thespian_dd import codec
from thespian_dd._canonical import Limits
from thespian_dd._log import Log
from thespian_dd._runtime.checks import key_error
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.markers import (
    Initialized,
    Marker,
    Markers,
    Performed,
    merge_markers,
    split_envelope,
)
from thespian_dd._runtime.protocol import TOMBSTONE
from thespian_dd._runtime.settings import Settings
from thespian_dd.data import RemovedNodePruning, ReplicaId, ReplicatedData
from thespian_dd.lwwregister import now_ms

__all__ = ["Merge", "PrunedHere", "Pruning", "cleaned", "merge_payload"]

log = Log("thespian_dd.replicator")


def cleaned(value: ReplicatedData, markers: Markers) -> ReplicatedData:
    """``value`` without the slots of every replica whose pruning is performed."""
    if not isinstance(value, RemovedNodePruning):
        return value
    for removed, marker in markers.items():
        if isinstance(marker, Performed) and value.needs_pruning_from(removed):
            value = value.pruning_cleanup(removed)
    return value


def seen_here(markers: Markers, me: ReplicaId, at_ms: int) -> dict[ReplicaId, Marker]:
    """``markers`` with this node added to every Initialized one's ``seen`` (it is merging the
    value that came with them) and Performed ones expired at ``at_ms`` dropped."""
    return {
        removed: Initialized(m.owner, m.seen | {me.node}) if isinstance(m, Initialized) else m
        for removed, m in markers.items()
        if isinstance(m, Initialized) or m.expires_ms > at_ms
    }


class PrunedHere(ValueError):  # noqa: N818 - it is what the peer says, not an error of ours
    """The peer's markers say this node's own replica was pruned."""


@dataclass(frozen=True)
class Merge:
    """A merge's result: the new value (None: a tombstone), its encoding, its markers, and
    whether the value changed (markers alone may have)."""

    value: ReplicatedData | None
    raw: bytes
    markers: Markers
    changed: bool


def merge_payload(  # noqa: PLR0913 - the table, the input, and three facts of this node
    keys: KeyTable, key: object, payload: object, *, me: ReplicaId, max_bytes: int, at_ms: int
) -> Merge | None:
    """``key``'s value and markers with ``payload`` (an envelope, or TOMBSTONE) merged in; None
    if nothing changes.  Slots of pruned replicas are cleaned from both sides first, so they
    cannot come back or count twice.  Raises (CodecError, TypeError, ValueError, PrunedHere) for
    a payload (or a key) that must be refused; nothing changes then."""
    error = key_error(key)
    if error or not isinstance(key, str):
        raise ValueError(error)
    if keys.is_deleted(key):
        return None
    if payload == TOMBSTONE:
        return Merge(None, TOMBSTONE, {}, changed=True)
    if not isinstance(payload, bytes):
        raise TypeError(f"payload is a {type(payload).__name__}, not bytes")
    limits = Limits(max_bytes=max_bytes, now_ms=at_ms)
    markers_in, raw_in = split_envelope(payload, limits)
    if me in markers_in:
        raise PrunedHere(f"the peer pruned this node's replica {markers_in[me]}")
    incoming = codec.decode(raw_in, limits)
    original = current = keys.get(key)
    if current is not None and type(current) is not type(incoming):
        raise TypeError(f"a {type(incoming).__name__} for a key holding a {type(current).__name__}")
    mine = keys.markers(key)
    markers = seen_here(merge_markers(mine, markers_in), me, at_ms)
    incoming = cleaned(incoming, markers)
    merged = incoming if current is None else cleaned(current, markers).merge(incoming)
    if merged == original and markers == mine:
        return None
    raw = codec.encode(merged)
    if len(raw) > max_bytes:
        raise ValueError(f"merged value of {len(raw)} bytes exceeds max_value_bytes={max_bytes}")
    return Merge(merged, raw, markers, merged != original)


class Pruning:
    """The pruning rounds over ``keys``.  ``clock``: monotonic seconds; ``clock_ms``: the wall
    clock in ms (marker expiry travels between nodes)."""

    def __init__(
        self,
        settings: Settings,
        keys: KeyTable,
        clock: Callable[[], float] = time.monotonic,
        clock_ms: Callable[[], int] = now_ms,
    ) -> None:
        self._settings = settings
        self._keys = keys
        self._clock = clock
        self._clock_ms = clock_ms
        self.removed_since: dict[ReplicaId, float] = {}
        """Each removed replica present in the data, since when it has been seen removed."""
        self._present: set[ReplicaId] = set()
        """Every replica in the data, and maybe some no longer in it: those found by the last
        walk over every value, with those of the values written since."""
        self.walks = 0
        """Rounds that walked every value (see :meth:`_note_removed`)."""

    def expire_markers(self, live: Mapping[str, ReplicaId]) -> list[str]:
        """Drop expired Performed markers, and Initialized ones whose owner is gone (the leader
        marks the key again); returns the keys changed."""
        at_ms = self._clock_ms()
        changed = []
        for key in self._keys.keys_with_markers():
            markers = self._keys.markers(key)
            kept = {
                r: m
                for r, m in markers.items()
                if (isinstance(m, Performed) and m.expires_ms > at_ms)
                or (isinstance(m, Initialized) and live.get(m.owner.node) == m.owner)
            }
            value = self._keys.get(key)
            if kept != markers and value is not None:
                self._keys.put(key, value, markers=kept)
                changed.append(key)
        return changed

    def prune(self, me: ReplicaId, live: Mapping[str, ReplicaId]) -> list[str]:
        """A round while every peer is reachable: the leader marks keys that hold state of
        replicas removed for ``max_pruning_dissemination``, and the owner of a marker every
        live node has seen prunes.  Returns the keys changed."""
        self._note_removed(live)
        to_mark: set[ReplicaId] = set()
        if min(live) == me.node:  # the leader
            now = self._clock()
            wait = self._settings.max_pruning_dissemination
            to_mark = {r for r, since in self.removed_since.items() if now - since >= wait}
        # Nothing to mark: only a key with a marker (that this node may perform) can change.
        keys = self._keys
        names = keys.names() if to_mark else keys.keys_with_markers()
        changed: list[str] = []
        for key in names:
            value = keys.get(key)
            if isinstance(value, RemovedNodePruning) and self._prune(key, value, to_mark, me, live):
                changed.append(key)
        return changed

    def _prune(
        self,
        key: str,
        value: RemovedNodePruning,
        to_mark: set[ReplicaId],
        me: ReplicaId,
        live: Mapping[str, ReplicaId],
    ) -> bool:
        markers = self._keys.markers(key)
        updated = dict(markers)
        for removed in to_mark:
            if removed not in markers and value.needs_pruning_from(removed):
                updated[removed] = Initialized(me, frozenset({me.node}))
        pruned = value
        for removed, marker in updated.items():
            if (
                isinstance(marker, Initialized)
                and marker.owner == me
                and marker.seen >= live.keys()
            ):
                pruned = pruned.prune(removed, me)
                ttl_ms = int(self._settings.marker_ttl(key) * 1000)
                updated[removed] = Performed(self._clock_ms() + ttl_ms)
                log.info("pruned %s from %r", removed, key)
        if updated == markers and pruned is value:
            return False
        assert isinstance(pruned, ReplicatedData)
        self._keys.put(key, pruned, markers=updated)
        return True

    def _note_removed(self, live: Mapping[str, ReplicaId]) -> None:
        """Track since when each replica in the data has been removed.  A round looks only at
        the values written since the last, unless a replica it knows of is removed: then it
        walks every value, to tell which removed replicas the data still holds (at 300,000 keys
        a walk is about a second of the Replicator's time; most rounds need none)."""
        present = self._present
        for key in self._keys.take_written():
            value = self._keys.get(key)
            if isinstance(value, RemovedNodePruning):
                present |= value.modified_by_nodes()
        if any(_removed(r, live) for r in present):
            self.walks += 1
            present = set()
            for value in self._keys.values():
                if isinstance(value, RemovedNodePruning):
                    present |= value.modified_by_nodes()
            self._present = present
        removed = {r for r in present if _removed(r, live)}
        now = self._clock()
        self.removed_since = {r: self.removed_since.get(r, now) for r in removed}


def _removed(replica: ReplicaId, live: Mapping[str, ReplicaId]) -> bool:
    """Whether ``replica`` writes no more: an earlier start of a live node, or no member."""
    current = live.get(replica.node)
    return current is None or replica.incarnation < current.incarnation
