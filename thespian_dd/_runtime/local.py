"""This node's copy of the data: every change to a key goes through :class:`LocalData`.

A change (a local write, a peer's value merged, an expiry, a load) is kept in the key table,
told to the key's subscribers, and written to the store, in that order; :func:`stored_entry` is
what the store gets for a key when its batch is written.  Rows refused at load (or, restored
undecoded, when first decoded) are counted here.  A plain class: the actor gives it its parts and
a ``me`` callable (this node's incarnation changes), so it runs without processes in tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from thespian_dd import codec
from thespian_dd._canonical import CodecError, Limits
from thespian_dd._log import Log
from thespian_dd._runtime.checks import Rejections, describe, seconds
from thespian_dd._runtime.deltas import DeltaQueue
from thespian_dd._runtime.durability import Durability
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.markers import Markers
from thespian_dd._runtime.pruning import PrunedHere, merge_payload
from thespian_dd._runtime.subscriptions import Notification, Subscriptions
from thespian_dd._runtime.writer import FORGOTTEN, Entry
from thespian_dd.data import RemovedNodePruning, ReplicaId, ReplicatedData
from thespian_dd.lwwregister import now_ms
from thespian_dd.messages import Changed, Deleted, Expired

__all__ = ["LocalData", "stored_entry"]

log = Log("thespian_dd.replicator")


def stored_entry(keys: KeyTable, key: str, raw: bytes | None) -> Entry | None:
    """What the store gets for ``key``: its current state, encoded once per batch in this
    node's format (a row of an older format is upgraded so); None for a tombstone, ``FORGOTTEN``
    for a key no longer here (expired: its row is deleted)."""
    value = keys.get(key)
    payload = None if value is None else keys.envelope(key, raw)
    if value is None or payload is None:
        return None if keys.is_deleted(key) else FORGOTTEN
    replicas = value.modified_by_nodes() if isinstance(value, RemovedNodePruning) else ()
    return Entry(codec.type_name(value), payload, " ".join(sorted(str(r) for r in replicas)))


@dataclass
class LocalData:
    """Changes to the node's keys.  ``pruned_here()`` is called when a peer's value shows this
    node's own replica pruned (it must take a new incarnation)."""

    keys: KeyTable
    subscriptions: Subscriptions
    deltas: DeltaQueue
    durability: Durability
    rejections: Rejections
    me: Callable[[], ReplicaId]
    max_value_bytes: int
    pruned_here: Callable[[], None]
    refused_rows: int = 0
    """Stored rows refused: at load, or when first decoded."""

    def store(
        self,
        key: str,
        value: ReplicatedData | None,
        raw: bytes | None = None,
        *,
        markers: Markers | None = None,
        notify: bool = True,
    ) -> None:
        """Keep ``value`` for ``key`` (None: a tombstone; ``raw``: its encoding if known;
        ``markers``: its new pruning markers, None: unchanged), tell subscribers (if
        ``notify``), and write it durably."""
        if value is None:
            self.keys.delete(key)
        else:
            self.keys.put(key, value, raw, markers)
        if notify:
            self.subscriptions.changed(key)
        self.durability.write(key, raw)

    def merge(self, key: Any, payload: object, origin: str, used: object = None) -> bool | None:
        """Merge a peer's value into ``key``; returns whether anything changed, None if it was
        refused.  A payload that is malformed, of another type than the local value, or too big
        after the merge is refused for this key only: counted, logged once, and nothing changes
        (a peer's write of it is not acknowledged).  ``used``: when the peer says the key was
        last used, if it expires after inactivity."""
        at = seconds(used)
        if isinstance(key, str) and key not in self.keys and self.keys.expired(key, at):
            return False  # it expired there; it must not come back here
        try:
            merged = merge_payload(
                self.keys,
                key,
                payload,
                me=self.me(),
                max_bytes=self.max_value_bytes,
                at_ms=now_ms(),
            )
        except Exception as e:  # noqa: BLE001 - peer data must never raise in the Replicator
            if isinstance(e, PrunedHere):
                self.pruned_here()
            self.rejections.refuse()
            reason = describe(e)
            self.rejections.warn_once(
                origin, reason, "rejected the value of %r from %s: %s", key, origin, reason
            )
            return None
        if merged is None:
            return False
        if merged.value is None:
            self.store(key, None, notify=merged.changed)
            return True
        self.store(key, merged.value, merged.raw, markers=merged.markers, notify=merged.changed)
        self.keys.touch(key, at)
        return True

    def expire_idle(self) -> None:
        """Remove every key idle longer than its expiry: no tombstone, its row deleted, its
        subscribers told ``Expired``.  Used anywhere meanwhile, it comes back by gossip."""
        for key, used in self.keys.idle():
            self.keys.expire(key)
            self.deltas.drop(key)
            self.subscriptions.changed(key)
            self.durability.write(key, None)
            log.info("key %r expired after %.0f s without use", key, time.time() - used)

    def notify(self) -> None:
        """Tell subscribers what changed since the last time."""
        for key in self.subscriptions.take_changed():
            value = self.keys.get(key)
            message: Notification = (
                Deleted(key)
                if self.keys.is_deleted(key)
                else Expired(key)
                if value is None
                else Changed(key, value)
            )
            self.subscriptions.notify(message)

    # -- loading ---------------------------------------------------------------------------------

    def restore(self, rows: Iterable[Any], skipped: int) -> None:
        """Keep a chunk of stored rows (undecoded); ``skipped``: rows the writer refused."""
        limits = Limits(max_bytes=self.max_value_bytes)
        for key, error in self.keys.restore_rows(rows, limits):
            self.refused_on_decode(key, error)
        self.refuse_rows(skipped)

    def refused_on_decode(self, key: str, error: CodecError) -> None:
        """A stored row refused here (its markers or, when first used, its value do not
        decode): counted and logged as the DurableWriter logs a row refused at load."""
        self.refuse_rows(1)
        log.error("skipped stored key %r of %s: %s", key, self.me().node, error)

    def refuse_rows(self, n: int) -> None:
        self.rejections.refuse(n)
        self.refused_rows += n

    def forget(self) -> None:
        """Drop what a failed or abandoned load restored: the next load starts from nothing."""
        self.keys.clear()
        self.rejections.reset()
        self.refused_rows = 0
