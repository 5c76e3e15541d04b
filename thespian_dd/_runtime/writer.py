"""The DurableWriter: the actor, a child of the Replicator, that loads the store (and commits
to it where the Replicator cannot: see :class:`CommitThread`), and the messages between them.

The engine is created inside the DurableWriter's own process (never before a fork), or by the
CommitThread's thread.  The Replicator gives either one batch of writes at a time, and the next
batch, holding every write that arrived meanwhile, when the previous one is committed: that is
group commit, so a busy node makes few large transactions instead of many small ones.  Every
message carries the store's URL, so a DurableWriter that died and was created again (or a new
commit thread) picks up where the old one was.

Thespian creates the actor from its ``"module.Class"`` path: this module's, or
``thespian_dd.durable.DurableWriter`` where a node of the old layout names it; both lead to this
class (see :mod:`thespian_dd.durable`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from thespian.actors import ActorTypeDispatcher, WakeupMessage

from thespian_dd._log import Log
from thespian_dd._runtime.database import first_line, read_signing_key
from thespian_dd._runtime.rows import FORGOTTEN, Entry
from thespian_dd._runtime.store import Store
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
log = Log("thespian_dd.durable")


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
    # The Replicator's number for this load (0: its first), which its chunks and Loaded carry.
    load: int = 0


@dataclass(frozen=True, repr=False)
class LoadChunk:
    """Rows of load ``load``, its ``seq``-th message (from 0).  Thespian may deliver a load's
    messages out of order (a message can go out on a connection of its own, ahead of those
    waiting for the one in use) and, when an acknowledgement is lost, twice: the Replicator
    counts each ``seq`` once, and ends the load once it has every one Loaded counts."""

    rows: list[tuple[str, bytes | None]]  # (key, codec bytes or None: deleted)
    skipped: list[tuple[str, str]]  # (key, why)
    load: int = 0
    seq: int = 0

    def __repr__(self) -> str:
        # Thespian formats every message it transmits (for a debug log, whether logged or
        # not): the rows in full took a tenth of a 100,000-key load.
        return (
            f"LoadChunk(<{len(self.rows)} rows>, skipped={self.skipped!r:.200}, "
            f"load={self.load}, seq={self.seq})"
        )


@dataclass(frozen=True)
class Loaded:
    incarnation: int
    rows: int  # how many rows the chunks held, so the Replicator knows it got them all
    error: str | None = None
    load: int = 0
    chunks: int = 0  # how many LoadChunk messages were sent (seq 0 to chunks - 1)


@dataclass(frozen=True)
class _NextChunk:
    """The payload of the DurableWriter's wakeup to read and send the next chunk of load
    ``load``: one handler per chunk, so the Replicator restores one chunk while the next is
    read, instead of getting them all once every row is read.  A wakeup, not a message to
    itself: Thespian's TCP transport handles the messages an actor sends itself before it
    sends or reads anything else (until ``MAX_PENDING_TRANSMITS`` sends wait), so a chain of
    them sent the chunks in bursts of 20; a wakeup lets the transport run first (for up to
    :data:`_CHUNK_PAUSE`)."""

    load: int


_CHUNK_PAUSE = timedelta(milliseconds=1)
"""How long the transport may run between chunks (less if it has nothing to do)."""


_Chunk = tuple[list[tuple[str, bytes | None]], list[tuple[str, str]]]
"""A chunk of :meth:`Store.load_chunks`: (rows loaded, rows refused)."""


class _ReadAhead:
    """The chunks of a load, read (fetched and checked) on a thread of their own, one ahead of
    the chunk being sent: the next chunk's fetch (on a database server, the server's work and
    the wait for it) and check overlap the sending of this one and the transport's turn
    between chunks, where the actor's thread waits.  The query is made, and ended, on that
    thread only; the DurableWriter forks no process, so the thread is never copied.

    ``thread=False``: read on the caller's thread, at each :meth:`next`, for a store whose
    every thread has a database of its own (in-memory SQLite)."""

    def __init__(self, chunks: Generator[_Chunk, None, None], *, thread: bool = True) -> None:
        self._chunks = chunks
        # One chunk waits at most: a load holds at most three (sent, waiting, being read).
        self._queue: queue.Queue[_Chunk | BaseException | None] = queue.Queue(maxsize=1)
        self._stopped = threading.Event()
        self._thread = thread
        if thread:
            threading.Thread(target=self._run, name="thespian_dd load", daemon=True).start()

    def _run(self) -> None:
        try:
            for chunk in self._chunks:
                if not self._put(chunk):
                    return
            item: _Chunk | BaseException | None = None  # the end
        except BaseException as e:  # noqa: BLE001 - raised again by next(), in the actor
            item = e
        finally:
            self._chunks.close()  # ends the query, gives its connection back
        self._put(item)

    def _put(self, item: _Chunk | BaseException | None) -> bool:
        """Queue ``item`` once there is room; False if the load was closed meanwhile."""
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=_STOP_POLL)
            except queue.Full:
                continue
            return True
        return False

    def next(self) -> _Chunk | None:
        """The next chunk (None: there is none), once read; raises what reading raised."""
        if not self._thread:
            return next(self._chunks, None)
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop reading: the thread ends after the fetch under way, if any (or within
        :data:`_STOP_POLL` if it waits to queue a chunk), and ends the query."""
        self._stopped.set()
        if not self._thread:
            self._chunks.close()


_STOP_POLL = 0.05
"""How often a read-ahead thread waiting to queue a chunk looks whether its load was closed."""


@dataclass
class _Loading:
    """A load under way: what it answers, and where it is."""

    message: Load
    replicator: Any
    record: Any  # the node's record as read before its rows (see Store.next_incarnation)
    rows: _ReadAhead
    """The chunks of :meth:`Store.load_chunks`."""
    count: int = 0  # rows sent
    sent: int = 0  # LoadChunk messages sent

    def ended(self, incarnation: int, error: str | None = None) -> Loaded:
        return Loaded(incarnation, self.count, error, self.message.load, self.sent)


def _chunk_pieces(
    rows: list[tuple[str, bytes | None]], skipped: list[tuple[str, str]]
) -> list[tuple[list[tuple[str, bytes | None]], list[tuple[str, str]]]]:
    """The (rows, skipped) of each message of one chunk the store read: one (the common case),
    or pieces that end once their payloads reach :data:`LOAD_CHUNK_BYTES`, so a chunk of large
    values does not make one huge message."""
    if sum([len(payload) for _, payload in rows if payload]) <= LOAD_CHUNK_BYTES:
        return [(rows, skipped)]
    pieces: list[list[tuple[str, bytes | None]]] = [[]]
    size = 0
    for row in rows:
        if size >= LOAD_CHUNK_BYTES:
            pieces.append([])
            size = 0
        pieces[-1].append(row)
        size += len(row[1] or b"")
    return [(piece, skipped if i == 0 else []) for i, piece in enumerate(pieces)]


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

    def __repr__(self) -> str:
        # Thespian formats every message it transmits (as LoadChunk): not the entries, nor the
        # store's URL (a password in it would reach any debug log).
        return f"Write(node={self.node!r}, seq={self.seq}, <{len(self.entries)} entries>)"


@dataclass(frozen=True)
class Written:
    seq: int
    error: str | None = None


def commit(
    msg: Write, open_store: Callable[[str, str | None], Store], close: Callable[[], None]
) -> Written:
    """Commit ``msg``'s batch in the store ``open_store`` gives; on failure ``close`` it (open
    afresh next time: the server may have restarted) and answer the failure."""
    try:
        store = open_store(msg.url, msg.signing_key_file)
        store.write(msg.node, msg.entries, alive_every=msg.alive_every)
    except Exception as e:  # noqa: BLE001 - reported with the batch
        log.warning("store write of %d keys failed: %s", len(msg.entries), e)
        close()
        return Written(msg.seq, first_line(e))
    return Written(msg.seq)


class DurableWriter(ActorTypeDispatcher):  # type: ignore[misc]
    """A child of the Replicator that owns the store's engine."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.store: Store | None = None
        self._loading: _Loading | None = None
        self._loads = 0  # Loads received: a _NextChunk of an earlier one is stale

    def _open(self, url: str, signing_key_file: str | None) -> Store:
        if self.store is None:
            # Read here, in this process: only the file's path travels in settings and messages.
            key = read_signing_key(signing_key_file) if signing_key_file else None
            self.store = Store(url, signing_key=key)
        return self.store

    def receiveMsg_Load(self, msg: Load, sender: Any) -> None:
        self._stop_loading()  # a Load supersedes one under way (its Replicator asks again)
        self._loads += 1
        try:
            store = self._open(msg.url, msg.signing_key_file)
            # Refused (offline too long, a newer schema) before a row is read.
            record = store.node_record(msg.node, msg.max_offline)
            rows = _ReadAhead(store.load_chunks(msg.node), thread=not store.per_thread)
            self._loading = _Loading(msg, sender, record, rows)
        except Exception as e:  # noqa: BLE001 - reported to the Replicator, which retries
            self._close()
            self.send(sender, Loaded(0, 0, first_line(e), msg.load))
            return
        self._send_chunk()

    def receiveMsg_WakeupMessage(self, msg: WakeupMessage, sender: Any) -> None:
        next_chunk = msg.payload
        if (
            isinstance(next_chunk, _NextChunk)
            and next_chunk.load == self._loads
            and self._loading is not None
            and sender == self.myAddress
        ):
            self._send_chunk()

    def _send_chunk(self) -> None:
        """Send the next chunk of the load under way; after the last, count the node's new
        incarnation and answer Loaded."""
        loading = self._loading
        assert loading is not None
        node, replicator = loading.message.node, loading.replicator
        try:
            chunk = loading.rows.next()
            if chunk is not None:
                rows, skipped = chunk
                for key, error in skipped:
                    log.error("skipped stored key %r of %s: %s", key, node, error)
                for piece, piece_skipped in _chunk_pieces(rows, skipped):
                    message = LoadChunk(piece, piece_skipped, loading.message.load, loading.sent)
                    self.send(replicator, message)
                    loading.sent += 1
                    loading.count += len(piece) + len(piece_skipped)
                self.wakeupAfter(_CHUNK_PAUSE, _NextChunk(self._loads))
                return
            self._loading = None
            # Only now, every row read: a store whose rows cannot be read is not written to.
            # Counted only if the record is as it was before the rows: forgotten meanwhile,
            # what was read is gone from the store, and must not be served.
            assert self.store is not None
            msg = loading.message
            incarnation = self.store.next_incarnation(
                node, now_ms(), msg.max_offline, expected=loading.record
            )
        except Exception as e:  # noqa: BLE001 - reported to the Replicator, which retries
            self._stop_loading()
            self._close()
            self.send(replicator, loading.ended(0, first_line(e)))
            return
        self.send(replicator, loading.ended(incarnation))

    def _stop_loading(self) -> None:
        if self._loading is not None:
            rows, self._loading = self._loading.rows, None
            rows.close()

    def receiveMsg_Write(self, msg: Write, sender: Any) -> None:
        self.send(sender, commit(msg, self._open, self._close))

    def receiveMsg_ActorExitRequest(self, msg: Any, sender: Any) -> None:
        self._stop_loading()
        self._close()

    def _close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None
