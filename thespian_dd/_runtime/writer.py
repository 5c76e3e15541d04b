"""The DurableWriter: the actor, a child of the Replicator, that owns the store's engine, and
the messages between them.

The engine is created inside the DurableWriter's own process (never before a fork).  The
Replicator sends it one batch of writes at a time and sends the next batch, holding every write
that arrived meanwhile, when the previous one is committed: that is group commit, so a busy node
makes few large transactions instead of many small ones.  Every message carries the store's URL,
so a DurableWriter that died and was created again picks up where the old one was.

Thespian creates the actor from its ``"module.Class"`` path: this module's, or
``thespian_dd.durable.DurableWriter`` where a node of the old layout names it; both lead to this
class (see :mod:`thespian_dd.durable`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorTypeDispatcher

from thespian_dd._runtime.store import (
    FORGOTTEN,
    LOAD_CHUNK_ROWS,
    Entry,
    Store,
    _first_line,
    read_signing_key,
)
from thespian_dd.lwwregister import now_ms

__all__ = [
    "FORGOTTEN",
    "LOAD_CHUNK_BYTES",
    "DurableWriter",
    "Entry",
    "Load",
    "LoadChunk",
    "Loaded",
    "Write",
    "Written",
]

LOAD_CHUNK_BYTES = 4 * 1024 * 1024
"""A :class:`LoadChunk` ends early once its payloads reach this size."""

# The logger the DurableWriter has always logged under, before it moved here.
log = logging.getLogger("thespian_dd.durable")


@dataclass(frozen=True)
class Load:
    """To the DurableWriter: open ``url`` (with the key in ``signing_key_file``, if given),
    check that ``node`` may start (refused if it was offline more than ``max_offline`` seconds),
    send every row of it in :class:`LoadChunk` messages, and only then count a new incarnation
    of it (refused if its record changed meanwhile) and finish with :class:`Loaded`: a store
    whose rows cannot be read is never written to (but for the tables of a new store)."""

    url: str
    node: str
    max_offline: float | None = None
    signing_key_file: str | None = None


@dataclass(frozen=True)
class LoadChunk:
    rows: list[tuple[str, bytes | None]]  # (key, codec bytes or None: deleted)
    skipped: list[tuple[str, str]]  # (key, why)


@dataclass(frozen=True)
class Loaded:
    incarnation: int
    rows: int  # how many rows the chunks held, so the Replicator knows it got them all
    error: str | None = None


@dataclass(frozen=True)
class Write:
    """To the DurableWriter: commit these entries (None: deleted) of ``node`` in ``url`` as
    batch ``seq``, then answer :class:`Written`.  ``signing_key_file`` as for :class:`Load`: a
    DurableWriter started again after a crash opens the store with it too.  ``alive_every``:
    see :meth:`Store.write`."""

    url: str
    node: str
    seq: int
    entries: dict[str, Entry | None]
    signing_key_file: str | None = None
    alive_every: float = 0.0


@dataclass(frozen=True)
class Written:
    seq: int
    error: str | None = None


class DurableWriter(ActorTypeDispatcher):  # type: ignore[misc]
    """A child of the Replicator that owns the store's engine."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.store: Store | None = None

    def _open(self, url: str, signing_key_file: str | None) -> Store:
        if self.store is None:
            # Read here, in this process: only the file's path travels in settings and messages.
            key = read_signing_key(signing_key_file) if signing_key_file else None
            self.store = Store(url, signing_key=key)
        return self.store

    def receiveMsg_Load(self, msg: Load, sender: Any) -> None:
        count = 0
        try:
            store = self._open(msg.url, msg.signing_key_file)
            # Refused (offline too long, a newer schema) before a row is read.
            record = store.node_record(msg.node, msg.max_offline)
            rows: list[tuple[str, bytes | None]] = []
            skipped: list[tuple[str, str]] = []
            size = 0
            for key, payload, error in store.load(msg.node):
                if error:
                    log.error("skipped stored key %r of %s: %s", key, msg.node, error)
                    skipped.append((key, error))
                else:
                    rows.append((key, payload))
                    size += len(payload or b"")
                if len(rows) + len(skipped) >= LOAD_CHUNK_ROWS or size >= LOAD_CHUNK_BYTES:
                    self.send(sender, LoadChunk(rows, skipped))
                    count += len(rows) + len(skipped)
                    rows, skipped, size = [], [], 0
            self.send(sender, LoadChunk(rows, skipped))
            count += len(rows) + len(skipped)
            # Only now, every row read: a store whose rows cannot be read is not written to.
            # Counted only if the record is as it was before the rows: forgotten meanwhile,
            # what was read is gone from the store, and must not be served.
            incarnation = store.next_incarnation(
                msg.node, now_ms(), msg.max_offline, expected=record
            )
        except Exception as e:  # noqa: BLE001 - reported to the Replicator, which retries
            self._close()
            self.send(sender, Loaded(0, count, _first_line(e)))
            return
        self.send(sender, Loaded(incarnation, count))

    def receiveMsg_Write(self, msg: Write, sender: Any) -> None:
        try:
            store = self._open(msg.url, msg.signing_key_file)
            store.write(msg.node, msg.entries, alive_every=msg.alive_every)
        except Exception as e:  # noqa: BLE001 - reported with the batch
            log.warning("store write of %d keys failed: %s", len(msg.entries), e)
            self._close()  # open afresh next time: the server may have restarted
            self.send(sender, Written(msg.seq, _first_line(e)))
            return
        self.send(sender, Written(msg.seq))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        self._close()

    def _close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
