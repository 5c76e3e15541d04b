"""Durability coordination: the Replicator's side of its DurableWriter.

- Loading gate: with a store, the Replicator asks for every stored row of its node before it
  serves anyone; requests that arrive meanwhile are stashed and answered in order once it is
  recovered.  A load that fails is retried with backoff and, until it succeeds, requests are
  refused with the reason (nothing is served from a store that cannot be read).
- Group commit: in sync mode a write is sent at once unless a batch is being committed; what
  arrives meanwhile goes in the next batch.  Given ``commit_here`` (see below), the writes of a
  whole turn of the Replicator's loop are one batch instead.  In write-behind mode the first
  write after a commit arms a timer of ``write_behind_interval`` that later writes never push
  back.
- Replies after commit: a sync write is acknowledged only once its batch is committed (the
  failure reply if the commit fails); those replies are sent before the next batch is handed
  over.
- A failed commit answers every request waiting on the store with its failure, keeps its keys
  for the next batch, and is retried: after 0.25 s, doubling to at most 1 s, each delay
  shortened at random by up to half (nodes sharing a store do not retry in step), so a store
  that comes back is used within a second, and a sync write that cannot be committed gets its
  failure within about a second plus one commit attempt.  A DurableWriter that exits is replaced
  and sent again what it had not confirmed.
- Where batches are committed: by the DurableWriter, or, given a ``commit`` callable (the
  Replicator's :class:`~thespian_dd._runtime.commits.CommitThread` on a system whose actors can
  watch a descriptor), by that; its answers come back through :meth:`Durability.committed`.
  Loads always go to the DurableWriter.
- Committed here: given ``commit_here`` too, the caller calls :meth:`Durability.end_of_turn`
  once each turn of its loop has handled every message the turn received, and the turn's sync
  writes are committed then, as one batch, on the Replicator's own thread: answered before the
  loop waits again, without the commit thread's wake-up, the extra turn of the loop to see its
  answer and the two threads taking the GIL in turn.  Writes that arrive during that commit wait
  in their sockets and make the next turn's batch.  ``commit_here`` decides which batches it
  takes (a SQLite file's, while its commits are quick; see
  :class:`~thespian_dd._runtime.commits.CommitThread`); the others go to ``commit``.

The writer is an actor; this class reaches it only through the ``send`` and ``create_writer``
callables it is given, and arms timers through ``wake``, so it runs without processes in tests.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from thespian_dd._log import Log
from thespian_dd._runtime.protocol import FlushTick, LoadOverdue, StoreRetry
from thespian_dd._runtime.settings import Settings
from thespian_dd._runtime.writer import Entry, Load, LoadChunk, Loaded, Write, Written

__all__ = ["Durability", "LoadOutcome"]

log = Log("thespian_dd.replicator")

MIN_RETRY = 0.25
MAX_RETRY = 1.0
"""The store is tried again after MIN_RETRY seconds, doubling to MAX_RETRY while it fails: a
probe that costs one commit attempt, so a store that comes back is used within a second."""


LOAD_RETRY_PER_ROW = 1e-4
"""A failed load is tried again no sooner than this many seconds per row it had read (100,000
rows, a tenth of a second's work: 10 s)."""


LOAD_STRAGGLERS_WAIT = 5.0
"""A Loaded that came before some of its chunks waits for them while they keep coming, at
least one every this many seconds; a load whose chunks stopped coming fails (and is tried
again), as one counted short did before its chunks were waited for.  On purpose far shorter
than Thespian's own patience with a send that failed (tried again 35 s later, given up after 5
minutes): reading the store again takes about a second per 100,000 rows."""


def _jitter() -> float:
    return random.uniform(0.5, 1.0)  # noqa: S311 - spreads retries, no secret


@dataclass(frozen=True)
class LoadOutcome:
    """The end of a load: the node's new incarnation, or why it failed (``first``: the first
    failure since the load began to fail, when stashed requests must be refused)."""

    incarnation: int | None = None
    error: str | None = None
    first: bool = False


class Durability:
    """``send(address, message)``; ``wake(seconds, payload)``; ``create_writer()`` starts a
    DurableWriter and returns its address; ``entry(key, raw)`` is what the store gets for a key
    (None: a tombstone, FORGOTTEN: remove the row); ``jitter()`` is the fraction of each retry
    delay waited (random in [0.5, 1] unless given); ``commit(write)``, if given, commits the
    batches instead of the DurableWriter, and its answers come to :meth:`committed`;
    ``commit_here(write)``, if given, commits a batch at once and returns its answer, or returns
    None if it cannot now (then ``commit`` gets it): sync batches are then made and committed at
    :meth:`end_of_turn`, which the caller calls at the end of each turn of its loop."""

    def __init__(  # noqa: PLR0913 - what it acts through, each a callable
        self,
        *,
        settings: Settings,
        node_name: str,
        send: Callable[[Any, Any], None],
        wake: Callable[[float, Any], None],
        create_writer: Callable[[], Any],
        entry: Callable[[str, bytes | None], Entry | None],
        clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = _jitter,
        commit: Callable[[Write], None] | None = None,
        commit_here: Callable[[Write], Written | None] | None = None,
    ) -> None:
        self._settings = settings
        self._node_name = node_name
        self._send = send
        self._wake = wake
        self._create_writer = create_writer
        self._entry = entry
        self._clock = clock
        self._jitter = jitter
        self._commit_fn = commit
        self._commit_here = commit_here
        self.writer: Any = None
        # Loading.
        self.loading = False
        self.load_error: str | None = None
        self._load_started = 0.0
        self._gc_was_enabled = False
        self.loaded_rows = 0
        self._load = -1  # the number of the load under way (or the last): 0 for the first
        self._chunks_seen: set[int] = set()  # the seq of each of its chunks arrived
        self._loaded: Loaded | None = None  # its Loaded, come before some of its chunks
        self._stash: list[tuple[Any, Any]] = []
        self.recovery_time: float | None = None
        # Writing.
        self._unwritten: dict[str, bytes | None] = {}  # key -> its encoding, if known
        self._committing: set[str] | None = None  # the keys of the batch being committed
        self._overtaken: int | None = None  # a batch a stop sent the next one after
        self._batch = 0
        self._after_commit: list[tuple[int, Any, Any, Any]] = []
        self._flush_timer = False
        self._flush_due = False
        self._retry_delay = 0.0
        self._retry_pending = False
        self.store_failure: str | None = None
        self.store_failures = 0
        self.last_flush: float | None = None
        self.exiting = False

    @property
    def serving(self) -> bool:
        """Whether requests are served (not loading, and the store loaded)."""
        return not self.loading and self.load_error is None

    @property
    def error(self) -> str | None:
        """Why the store cannot be loaded, else the last commit's failure (None: it works)."""
        if self.load_error is not None:
            return f"the store cannot be loaded: {self.load_error}"
        return self.store_failure

    def durable(self, key: str) -> bool:
        return self.writer is not None and self._settings.is_durable(key)

    def queue_depth(self) -> int:
        return len(self._unwritten) + len(self._committing or ())

    # -- loading -----------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the DurableWriter and load."""
        self.writer = self._create_writer()
        self.load()

    def load(self) -> None:
        """Ask the DurableWriter for every stored row of this node (again, after a failure)."""
        if not self.loading:
            # A load makes many long-lived objects; with the cyclic collector on, its full
            # collections rescan all restored so far (100,000 keys: 6.5 s instead of 5.8 s).
            # Reference counting still frees what is dropped.
            self._gc_was_enabled = gc.isenabled()
            gc.disable()
        self.loading = True
        self._load_started = time.perf_counter()
        self._load += 1
        self._chunks_seen = set()
        self._loaded = None
        self.loaded_rows = 0
        settings = self._settings
        self._send(
            self.writer,
            Load(
                settings.store or "",
                self._node_name,
                settings.durable_pruning_marker_ttl,
                settings.signing_key_file,
                self._load,
            ),
        )

    def stash(self, message: Any, sender: Any) -> None:
        """Keep a request that arrived while loading; answered once recovered."""
        self._stash.append((message, sender))

    def take_stash(self) -> list[tuple[Any, Any]]:
        stashed, self._stash = self._stash, []
        return stashed

    def chunk(self, msg: LoadChunk, sender: Any) -> bool:
        """Whether a LoadChunk is new and of the load under way, from its writer (else ignore
        it: a copy, a chunk of an earlier load, or forged); counts its rows.  Thespian may
        deliver a load's messages out of order, and a message twice (see :class:`LoadChunk`);
        once it has the last chunk its Loaded counted, :meth:`ended` ends the load."""
        if (
            not self.loading
            or sender != self.writer
            or msg.load != self._load
            or msg.seq in self._chunks_seen
        ):
            return False
        self._chunks_seen.add(msg.seq)
        self.loaded_rows += len(msg.rows) + len(msg.skipped)
        return True

    def ended(self) -> LoadOutcome | None:
        """The load's end, if its Loaded came before the chunk just counted, the last missing
        (None: it goes on)."""
        loaded = self._loaded
        if loaded is None or len(self._chunks_seen) < loaded.chunks:
            return None
        return self._end(loaded)

    def loaded(self, msg: Loaded, sender: Any) -> LoadOutcome | None:
        """The load ended (None: it goes on, for chunks sent before this message and not yet
        come; or the message is not of the load under way, from its writer)."""
        if not self.loading or sender != self.writer or msg.load != self._load:
            return None
        if msg.error is None and len(self._chunks_seen) < msg.chunks:
            self._loaded = msg  # ended by the last of them (:meth:`ended`), or overdue
            self._wake(LOAD_STRAGGLERS_WAIT, LoadOverdue(self._load, len(self._chunks_seen)))
            return None
        return self._end(msg)

    def on_timer(self, payload: FlushTick | StoreRetry | LoadOverdue) -> LoadOutcome | None:
        """One of its timers is due; the end of the load, if the timer ended it."""
        if isinstance(payload, LoadOverdue):
            return self.overdue(payload)
        if isinstance(payload, FlushTick):
            self.flush_due()
        elif self.retry_due():
            self.load()
        return None

    def overdue(self, payload: LoadOverdue) -> LoadOutcome | None:
        """The wait for the chunks a Loaded overtook is over: the load fails if none came since
        (Thespian lost them, or is trying them again much later), else it waits on (None: it
        goes on, or it is over)."""
        loaded = self._loaded
        if not self.loading or loaded is None or payload.load != self._load:
            return None
        seen = len(self._chunks_seen)
        if seen > payload.seen:
            self._wake(LOAD_STRAGGLERS_WAIT, LoadOverdue(self._load, seen))
            return None
        missing = loaded.chunks - seen
        error = (
            f"{missing} of {loaded.chunks} chunks did not arrive "
            f"(none for {LOAD_STRAGGLERS_WAIT:g} s)"
            if missing
            else "the load did not end once its last chunk came (it could not be restored)"
        )
        return self._end(replace(loaded, error=error))

    def _end(self, msg: Loaded) -> LoadOutcome:
        self._loaded = None
        if self._gc_was_enabled:
            gc.enable()
        error = msg.error
        if error is None and msg.rows != self.loaded_rows:
            error = f"{msg.rows} rows were read but {self.loaded_rows} arrived"
        self.loading = False
        if error is not None:
            first = self.load_error is None
            if first:
                log.error("thespian_dd cannot load its store: %s (retrying)", error)
            # A load that failed after reading many rows (a damaged store) is not read again
            # at once; one that read none (a locked or unreachable store) is.
            self.retry_later(at_least=self.loaded_rows * LOAD_RETRY_PER_ROW)
            self.load_error = error
            self.loaded_rows = 0
            return LoadOutcome(error=error, first=first)
        # From asking to serving: reading, decoding and restoring every row.
        self.recovery_time = time.perf_counter() - self._load_started
        self.load_error = None
        self._retry_delay = 0.0
        return LoadOutcome(incarnation=msg.incarnation)

    # -- writing -----------------------------------------------------------------------------------

    def write(self, key: str, raw: bytes | None) -> None:
        """Queue ``key``'s current state (``raw``: its encoding, if known) if it is durable: in
        sync mode at once (group commit), or at :meth:`end_of_turn` given ``commit_here``; within
        the interval in write-behind mode."""
        if not self.durable(key):
            return
        self._unwritten[key] = raw
        if self._settings.write_mode == "sync":
            if self._commit_here is None:
                self.flush()
        elif not self._flush_timer:
            # Armed by the first write after a flush and never pushed back by later ones, so
            # steady writes cannot postpone the commit.
            self._flush_timer = True
            self._wake(self._settings.write_behind_interval, FlushTick())

    def end_of_turn(self) -> None:
        """The end of a turn of the Replicator's loop, every message it received handled (given
        ``commit_here``): the turn's sync writes are one batch, committed here if
        ``commit_here`` takes it, else handed to ``commit``; or, while a batch is being
        committed, they wait for the turn of its answer."""
        if self._unwritten and self._settings.write_mode == "sync":
            self.flush(here=True)

    def flush(self, *, stopping: bool = False, here: bool = False) -> None:
        """Send what is unwritten as one batch, unless a batch is being committed or the store
        is failing (a retry is due).  ``stopping``: a graceful stop sends it anyway (the
        DurableWriter commits its batches in order, before it handles its own exit request).
        ``here``: commit it here if ``commit_here`` takes it."""
        busy = self._committing is not None or self._retry_pending
        if not self._unwritten or (busy and not stopping):
            return
        if self._committing is not None:
            # Overtaken at a stop: its own answer must still settle its own clients.
            self._overtaken = self._batch
        keys, self._unwritten = self._unwritten, {}
        self._commit(keys, here=here)

    def _commit(self, keys: Mapping[str, bytes | None], *, here: bool = False) -> None:
        self._committing = set(keys)
        self._batch += 1
        try:
            self._send_batch(keys, here=here)
        except Exception as e:  # the batch fails as a commit would, and is retried
            # Its entries could not be made or it could not be handed over: left as it was, the
            # batch would count as being committed for good, and no write after it would be.
            log.exception("thespian_dd could not send a batch of %d keys to the store", len(keys))
            self.committed(Written(self._batch, f"the batch could not be sent: {e}"))

    def _send_batch(self, keys: Mapping[str, bytes | None], *, here: bool = False) -> None:
        entries = {key: self._entry(key, raw) for key, raw in keys.items()}
        settings = self._settings
        write = Write(
            settings.store or "",
            self._node_name,
            self._batch,
            entries,
            settings.signing_key_file,
            # The offline bound errs by at most 1% of its TTL (on the safe side: earlier).
            min(settings.durable_pruning_marker_ttl / 100, 60.0),
        )
        if here and self._commit_here is not None:
            answer = self._commit_here(write)
            if answer is not None:
                self.committed(answer)
                return
        if self._commit_fn is not None:
            self._commit_fn(write)
        else:
            self._send(self.writer, write)

    def reply_when_stored(self, key: str, client: Any, reply: Any, failure: Any) -> None:
        """Send ``reply`` once ``key``'s latest write is committed (``failure(error)`` if it
        fails); at once in memory, in write-behind mode, or when nothing of it is left."""
        if (
            self.writer is None
            or self._settings.write_mode == "write-behind"
            or (key not in self._unwritten and key not in (self._committing or ()))
        ):
            self._send(client, reply)  # not durable, or already committed
            return
        batch = self._batch + (1 if key in self._unwritten else 0)
        self._after_commit.append((batch, client, reply, failure))

    def written(self, msg: Written, sender: Any) -> None:
        """The DurableWriter committed a batch, or failed to."""
        if sender != self.writer or self._commit_fn is not None:
            return  # from a DurableWriter that was replaced (its batch was sent again), or forged
        self.committed(msg)

    def committed(self, msg: Written) -> None:
        """A batch was committed, or failed (the answer of ``commit``, or of the writer)."""
        if msg.seq == self._overtaken and msg.seq < self._batch:
            self._settle_overtaken(msg)
            return
        if msg.seq != self._batch or self._committing is None:
            return  # a batch sent again to a new DurableWriter, answered by the old one too
        committed, self._committing = self._committing, None
        done = [w for w in self._after_commit if w[0] <= msg.seq]
        self._after_commit = [w for w in self._after_commit if w[0] > msg.seq]
        if msg.error is None:
            self.last_flush = self._clock()
            self.store_failure = None
            self._retry_delay = 0.0
            # The replies first, then the next batch.  Handed over first, the batch woke the
            # commit thread, which then took the GIL at each reply's send (a system call) to
            # build its rows: a thread switch each (a send cost this thread 69 µs of CPU, against
            # 58 µs sent first).  Handed over after, its commit starts later, so the batch
            # after it gathers more writes: fewer, larger commits.  See docs/benchmark.md.
            # Given commit_here, the next batch waits for the end of this turn (end_of_turn).
            try:
                for _, client, reply, _ in done:
                    self._send(client, reply)
            finally:
                sync_now = self._settings.write_mode == "sync" and self._commit_here is None
                if sync_now or self._flush_due:
                    self._flush_due = False
                    self.flush()
            return
        # Keep the keys (their state now is at least what failed) and try again with backoff.
        # Every client waiting on the store hears now, also those of the next batch: a reply
        # never waits out a retry delay and a second attempt.  A peer's ack (no failure reply)
        # of the next batch still waits for it: it may be committed in time for the quorum.
        done += [w for w in self._after_commit if w[3] is not None]
        self._after_commit = [w for w in self._after_commit if w[3] is None]
        for key in committed:
            self._unwritten.setdefault(key, None)
        self.store_failures += 1
        if self.store_failure is None:
            log.error("thespian_dd store write failed: %s (retrying)", msg.error)
        self.store_failure = msg.error
        for _, client, _, failure in done:
            if failure is not None:
                self._send(client, failure(msg.error))
        self.retry_later()

    def _settle_overtaken(self, msg: Written) -> None:
        """The answer of the batch a stop sent the next one after: its clients hear how it went
        (never the next batch's outcome)."""
        self._overtaken = None
        done = [w for w in self._after_commit if w[0] <= msg.seq]
        self._after_commit = [w for w in self._after_commit if w[0] > msg.seq]
        for _, client, reply, failure in done:
            if msg.error is None:
                self._send(client, reply)
            elif failure is not None:
                self._send(client, failure(msg.error))

    def retry_later(self, at_least: float = 0.0) -> None:
        """Try the store again after a backoff: 0.25 s doubling to 1 s while it fails, each delay
        times ``jitter()``; and not before ``at_least`` seconds."""
        self._retry_delay = min(max(2 * self._retry_delay, MIN_RETRY), MAX_RETRY)
        self._retry_pending = True
        self._wake(max(self._retry_delay * self._jitter(), at_least), StoreRetry())

    def retry_due(self) -> bool:
        """The retry timer fired: flush again; True if the load must be tried again instead."""
        self._retry_pending = False
        if self.load_error is not None and not self.loading:
            return True
        self.flush()
        return False

    def flush_due(self) -> None:
        """The write-behind timer fired: commit now, or right after the batch being committed."""
        self._flush_timer = False
        if self._committing is None:
            self.flush()
        else:
            self._flush_due = True

    def keep_alive(self) -> None:
        """An idle durable node commits an empty batch now and then, so its store tells how long
        it has really been offline (see ``durable_pruning_marker_ttl``).  Not while writes are
        pending: their commit records it alive, and an empty batch would take the number their
        replies wait for (writes wait for :meth:`end_of_turn`, and a timer's handler can run
        before it)."""
        period = min(self._settings.durable_pruning_marker_ttl / 10, 3600.0)
        idle = self._clock() - (self.last_flush or 0.0)
        ready = (
            self.writer is not None
            and self._committing is None
            and not self._retry_pending
            and not self._unwritten
        )
        if ready and idle > period:
            self._commit({})

    def writer_exited(self, address: Any) -> bool:
        """A child exited: if it is the DurableWriter (and the node is not stopping), start
        another and send it again what the dead one had not confirmed.  True if the load must
        start over (the caller forgets what was restored, then calls :meth:`load`)."""
        if address != self.writer or self.exiting:
            return False
        log.error("thespian_dd DurableWriter exited; starting a new one")
        self.writer = self._create_writer()
        if self.loading:
            return True
        if self._committing is not None and self._commit_fn is None:
            self._send_batch(dict.fromkeys(self._committing))
        return False

    def stop(self) -> None:
        """A graceful stop: commit what is unwritten, even while a batch is in flight."""
        self.exiting = True
        self.flush(stopping=True)
