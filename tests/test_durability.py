"""Durability: the Replicator's side of its DurableWriter, driven without processes.

Covered: the loading gate (not serving while loading, stashed requests in order, Loaded messages
that do not count, a row count that does not match, the first failure against later ones, the
retry backoff and its reset); group commit in sync mode (one batch in flight, what arrives
meanwhile sent together next, replies only once the batch holding a key's latest write commits);
a failed commit (its keys kept, failure replies, ``store_failures``, nothing sent until the
retry); write-behind mode (acknowledged at once, one timer per interval, a timer that fires
during a commit); keys that are not durable; a DurableWriter that exits; the keep-alive commit;
a graceful stop; ``queue_depth``; batches committed through a ``commit`` callable (the
Replicator's CommitThread, here also for real on an SQLite file, ending mid-commit); a turn's
sync writes committed here at its end (``commit_here``), or by the thread when it cannot.

The writer, the timers and the clock are a recording ``send``, a recording ``wake``, a
``create_writer`` that returns a fresh sentinel each time, and a fake clock.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes import Clock, commit_answers, stored_rows
from hypothesis import given
from hypothesis import strategies as st

from thespian_dd import codec
from thespian_dd._runtime.commits import CommitThread
from thespian_dd._runtime.durability import LOAD_STRAGGLERS_WAIT, Durability, LoadOutcome
from thespian_dd._runtime.protocol import FlushTick, LoadOverdue, StoreRetry
from thespian_dd._runtime.settings import Settings
from thespian_dd._runtime.writer import (
    Entry,
    Load,
    LoadChunk,
    Loaded,
    Write,
    Written,
)

pytestmark = pytest.mark.timeout(60)

URL = "sqlite:///x.db"
ALIVE = 60.0  # how often a commit records the node alive, by default: see Store.write
NODE = "n1"


@dataclass(frozen=True)
class Failed:
    """The failure reply a test registers: ``failure(error)`` makes one."""

    what: str
    error: str


def failure_of(what: str) -> Any:
    return lambda error: Failed(what, error)


def entry(key: str, raw: bytes | None) -> Entry:
    """What the store gets for ``key``: its encoding, or a marker that it was encoded then (with
    the codec's head, so a row of it is labelled and loaded as one of the current format)."""
    marker = b"TDD" + bytes((codec.FORMAT_VERSION,)) + b"encoded:" + key.encode()
    return Entry("GCounter", raw if raw is not None else marker, "")


@dataclass
class Node:
    """A Durability with everything it acts through recorded."""

    settings: Settings
    clock: Clock[float] = field(default_factory=lambda: Clock(1_000_000.0))
    sent: list[tuple[Any, Any]] = field(default_factory=list)
    woken: list[tuple[float, Any]] = field(default_factory=list)
    writers: list[object] = field(default_factory=list)
    commit_fn: Callable[[Write], None] | None = None
    commit_here: Callable[[Write], Written | None] | None = None
    entry: Callable[[str, bytes | None], Any] = entry
    durability: Durability = field(init=False)
    load: int = -1  # the number of the last Load sent, which the writer's answers carry

    def __post_init__(self) -> None:
        self.durability = Durability(
            settings=self.settings,
            node_name=NODE,
            send=self.send,
            wake=self.wake,
            create_writer=self._create_writer,
            entry=self.entry,
            clock=self.clock,
            jitter=lambda: 1.0,
            commit=self.commit_fn,
            commit_here=self.commit_here,
        )

    def send(self, address: Any, message: Any) -> None:
        self.sent.append((address, message))
        if isinstance(message, Load):
            self.load = message.load

    def wake(self, seconds: float, payload: Any) -> None:
        self.woken.append((seconds, payload))

    def _create_writer(self) -> object:
        writer = object()
        self.writers.append(writer)
        return writer

    @property
    def writer(self) -> object:
        return self.writers[-1]

    def take_sent(self) -> list[tuple[Any, Any]]:
        sent, self.sent[:] = list(self.sent), []
        return sent

    def writes(self) -> list[Write]:
        """The batches sent so far (taken: the next call sees only newer ones)."""
        return [m for _, m in self.take_sent() if isinstance(m, Write)]

    def serve(self) -> None:
        """Start and load an empty store."""
        self.durability.start()
        outcome = self.durability.loaded(Loaded(1, 0, load=self.load), self.writer)
        assert outcome == LoadOutcome(incarnation=1)
        self.take_sent()

    def commit(self, seq: int, error: str | None = None) -> None:
        self.durability.written(Written(seq, error), self.writer)

    def retries(self) -> list[float]:
        return [seconds for seconds, payload in self.woken if payload == StoreRetry()]


def sync_node(**settings: Any) -> Node:
    return Node(Settings(store=URL, **settings))


def serving(**settings: Any) -> Node:
    node = sync_node(**settings)
    node.serve()
    return node


def write_behind(**settings: Any) -> Node:
    node = Node(
        Settings(store=URL, write_mode="write-behind", write_behind_interval=1.0, **settings)
    )
    node.serve()
    return node


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    """A load turns the cyclic collector off until it ends; a test that leaves a load unfinished
    must not leave it off for the rest of the session."""
    enabled = gc.isenabled()
    yield
    if enabled:
        gc.enable()


# -- the loading gate ------------------------------------------------------------------------------


def test_start_creates_the_writer_and_asks_it_for_every_stored_row() -> None:
    node = sync_node(durable_pruning_marker_ttl=5000.0, signing_key_file="/keys/k")
    node.durability.start()
    assert node.take_sent() == [(node.writer, Load(URL, NODE, 5000.0, "/keys/k", 0))]
    assert node.durability.loading
    assert not node.durability.serving


def test_requests_that_arrive_while_loading_are_stashed_and_taken_back_in_order() -> None:
    node = sync_node()
    node.durability.start()
    for i in range(5):
        node.durability.stash(f"request {i}", f"client {i}")
    assert node.durability.take_stash() == [(f"request {i}", f"client {i}") for i in range(5)]
    assert node.durability.take_stash() == []


def test_it_serves_once_every_row_arrived_and_the_load_ended() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    assert d.chunk(LoadChunk([("a", b"1"), ("b", None)], [("c", "bad checksum")]), node.writer)
    assert d.chunk(LoadChunk([("d", b"4")], [], seq=1), node.writer)
    assert not d.serving
    assert d.loaded(Loaded(42, 4, chunks=2), node.writer) == LoadOutcome(incarnation=42)
    assert d.serving
    assert d.loaded_rows == 4
    assert d.recovery_time is not None
    assert d.recovery_time >= 0


def test_the_collector_is_off_while_loading_and_back_on_after() -> None:
    gc.enable()
    node = sync_node()
    node.durability.start()
    assert not gc.isenabled()
    node.durability.loaded(Loaded(1, 0), node.writer)
    assert gc.isenabled()


def test_chunks_and_loaded_from_another_actor_do_not_count() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    stranger = object()
    assert not d.chunk(LoadChunk([("a", b"1")], []), stranger)
    assert d.loaded_rows == 0
    assert d.loaded(Loaded(1, 0), stranger) is None
    assert d.loading
    assert not d.serving


def test_a_loaded_when_not_loading_is_ignored() -> None:
    node = serving()
    assert node.durability.loaded(Loaded(99, 0), node.writer) is None
    assert node.durability.loaded(Loaded(99, 0, "late error"), node.writer) is None
    assert node.durability.serving
    assert node.durability.load_error is None


def test_rows_read_but_not_arrived_fail_the_load() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    d.chunk(LoadChunk([("a", b"1"), ("b", b"2")], [("c", "unsigned")]), node.writer)
    outcome = d.loaded(Loaded(1, 4), node.writer)
    assert outcome == LoadOutcome(error="4 rows were read but 3 arrived", first=True)
    assert d.load_error == "4 rows were read but 3 arrived"
    assert not d.loading
    assert not d.serving


def test_regression_a_loaded_that_overtook_chunks_of_its_load_waits_for_them() -> None:
    """Found by loading 100,000 keys with a debug log: one start in ten failed, "100000 rows
    were read but 98000 arrived".  The writer sent chunks 47, 48 and 49, then Loaded; Thespian
    delivered 49 and Loaded first (chunk 49 had gone out on a connection of its own, while 47
    and 48 waited for the one in use), and the load was counted short and failed.  Thespian
    may deliver a load's messages in any order: the load ends once every chunk Loaded counts
    has come, whichever comes last."""
    node = sync_node()
    d = node.durability
    d.start()
    assert d.chunk(LoadChunk([("a", b"1")], [], seq=0), node.writer)
    assert d.chunk(LoadChunk([("c", b"3")], [], seq=2), node.writer)
    assert d.ended() is None  # no Loaded yet
    assert d.loaded(Loaded(7, 3, chunks=3), node.writer) is None  # chunk 1 is on its way
    assert d.loading
    assert not d.serving
    assert d.chunk(LoadChunk([("b", b"2")], [], seq=1), node.writer)
    assert d.ended() == LoadOutcome(incarnation=7)
    assert d.serving
    assert d.loaded_rows == 3
    assert d.ended() is None  # ended once


def test_a_load_whose_overtaken_chunks_stop_coming_fails_and_is_tried_again() -> None:
    """A chunk Thespian gave up on never comes: the Loaded that overtook it does not wait for it
    for good, but fails the load once no chunk came for LOAD_STRAGGLERS_WAIT seconds."""
    node = sync_node()
    d = node.durability
    d.start()
    assert d.chunk(LoadChunk([("a", b"1")], [], seq=0), node.writer)
    assert d.loaded(Loaded(7, 3, chunks=3), node.writer) is None
    assert node.woken == [(LOAD_STRAGGLERS_WAIT, LoadOverdue(0, 1))]
    outcome = d.overdue(LoadOverdue(0, 1))
    assert outcome == LoadOutcome(error="2 of 3 chunks did not arrive (none for 5 s)", first=True)
    assert not d.loading
    assert not d.serving
    assert d.retry_due()  # the load is asked again
    assert not d.chunk(LoadChunk([("b", b"2")], [], seq=1), node.writer)  # too late: ignored


def test_overtaken_chunks_that_keep_coming_are_waited_for() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    assert d.loaded(Loaded(7, 3, chunks=3), node.writer) is None
    assert d.chunk(LoadChunk([("a", b"1")], [], seq=0), node.writer)
    assert d.ended() is None
    node.woken.clear()
    assert d.overdue(LoadOverdue(0, 0)) is None  # one came since: wait on
    assert node.woken == [(LOAD_STRAGGLERS_WAIT, LoadOverdue(0, 1))]
    assert d.chunk(LoadChunk([("b", b"2")], [], seq=1), node.writer)
    assert d.chunk(LoadChunk([("c", b"3")], [], seq=2), node.writer)
    assert d.ended() == LoadOutcome(incarnation=7)
    assert d.overdue(LoadOverdue(0, 1)) is None  # the load is over


def test_a_load_whose_last_chunk_came_without_ending_it_fails_when_overdue() -> None:
    """A chunk counted whose restore raised (its handler never reached :meth:`ended`): the
    load cannot end by its chunks, and fails at the next look, saying so."""
    node = sync_node()
    d = node.durability
    d.start()
    assert d.loaded(Loaded(7, 1, chunks=1), node.writer) is None
    assert d.chunk(LoadChunk([("a", b"1")], [], seq=0), node.writer)  # ended() not called
    assert d.overdue(LoadOverdue(0, 0)) is None  # a chunk came since: wait on
    outcome = d.overdue(LoadOverdue(0, 1))
    assert outcome == LoadOutcome(
        error="the load did not end once its last chunk came (it could not be restored)",
        first=True,
    )


def test_the_durabilitys_timers_each_do_their_part() -> None:
    """:meth:`Durability.on_timer`, which the parts hand the store's timers to."""
    node = write_behind()
    d = node.durability
    d.write("k", b"v")
    assert node.woken[-1] == (1.0, FlushTick())
    assert d.on_timer(FlushTick()) is None
    assert [w.entries for w in node.writes()] == [{"k": entry("k", b"v")}]
    loading = sync_node()
    d = loading.durability
    d.start()
    d.loaded(Loaded(0, 0, "locked"), loading.writer)
    loading.take_sent()
    assert d.on_timer(StoreRetry()) is None
    assert [m for _, m in loading.take_sent()] == [Load(URL, NODE, 10 * 86400.0, None, 1)]
    assert d.loaded(Loaded(7, 1, load=1, chunks=1), loading.writer) is None
    assert d.on_timer(LoadOverdue(1, 0)) == LoadOutcome(
        error="1 of 1 chunks did not arrive (none for 5 s)"
    )


def test_an_overdue_timer_of_an_earlier_load_is_ignored() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    d.loaded(Loaded(0, 0, "locked"), node.writer)
    assert d.retry_due()
    d.load()
    assert d.loaded(Loaded(7, 1, load=1, chunks=1), node.writer) is None
    assert d.overdue(LoadOverdue(0, 0)) is None  # load 0's
    assert d.loading
    assert d.overdue(LoadOverdue(1, 0)) is not None  # this load's


def test_a_chunk_delivered_twice_counts_once() -> None:
    """Thespian sends a message again when its acknowledgement was lost: the copy is ignored,
    neither restored nor counted."""
    node = sync_node()
    d = node.durability
    d.start()
    chunk = LoadChunk([("a", b"1"), ("b", b"2")], [("c", "unsigned")], seq=0)
    assert d.chunk(chunk, node.writer)
    assert not d.chunk(chunk, node.writer)
    assert d.loaded(Loaded(3, 3, chunks=1), node.writer) == LoadOutcome(incarnation=3)
    assert not d.chunk(chunk, node.writer)  # after the load: ignored too


def test_a_chunk_or_loaded_of_an_earlier_load_does_not_count_in_the_next() -> None:
    """A load that failed is asked again; what its writer had sent for the first and comes
    late belongs to no load."""
    node = sync_node()
    d = node.durability
    d.start()
    assert d.chunk(LoadChunk([("a", b"1")], [], 0, 0), node.writer)
    assert d.loaded(Loaded(0, 0, "connection lost", 0), node.writer) is not None
    assert d.retry_due()
    d.load()
    assert not d.chunk(LoadChunk([("late", b"1")], [], 0, 1), node.writer)
    assert d.loaded(Loaded(5, 2, load=0, chunks=2), node.writer) is None
    assert d.chunk(LoadChunk([("a", b"1")], [], 1, 0), node.writer)
    assert d.loaded(Loaded(6, 1, load=1, chunks=1), node.writer) == LoadOutcome(incarnation=6)
    assert d.loaded_rows == 1


def test_a_failed_load_ends_at_once_whatever_chunks_are_missing() -> None:
    """The writer's failure is the load's end: chunks it sent before are not waited for."""
    node = sync_node()
    d = node.durability
    d.start()
    outcome = d.loaded(Loaded(0, 2, "disk I/O error", chunks=2), node.writer)
    assert outcome == LoadOutcome(error="disk I/O error", first=True)
    assert not d.chunk(LoadChunk([("a", b"1")], [], seq=0), node.writer)


def test_the_first_failure_is_first_and_later_ones_are_not() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    assert d.loaded(Loaded(0, 0, "cannot open"), node.writer) == LoadOutcome(
        error="cannot open", first=True
    )
    assert d.retry_due()  # the load must be tried again
    d.load()
    assert d.loading
    assert not d.serving
    assert d.loaded(Loaded(0, 0, "still cannot open", node.load), node.writer) == LoadOutcome(
        error="still cannot open", first=False
    )
    assert d.load_error == "still cannot open"
    assert d.retry_due()
    d.load()
    assert d.loaded(Loaded(3, 0, load=node.load), node.writer) == LoadOutcome(incarnation=3)
    assert d.load_error is None
    assert d.serving


def test_a_retried_load_counts_its_rows_afresh() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    d.chunk(LoadChunk([("a", b"1"), ("b", b"2")], []), node.writer)
    assert d.loaded(Loaded(0, 0, "connection lost"), node.writer) is not None
    assert d.retry_due()
    d.load()
    d.chunk(LoadChunk([("a", b"1"), ("b", b"2"), ("c", b"3")], [], node.load), node.writer)
    assert d.loaded(Loaded(2, 3, load=node.load, chunks=1), node.writer) == LoadOutcome(
        incarnation=2
    )


def test_a_retried_load_asks_the_writer_again() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    node.take_sent()
    d.loaded(Loaded(0, 0, "locked"), node.writer)
    assert node.take_sent() == []
    assert d.retry_due()
    d.load()
    assert node.take_sent() == [(node.writer, Load(URL, NODE, 10 * 86400.0, None, 1))]


def test_load_retries_back_off_from_a_quarter_second_doubling_to_one() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    for _ in range(5):
        d.loaded(Loaded(0, 0, "locked", node.load), node.writer)
        assert d.retry_due()
        d.load()
    assert node.retries() == [0.25, 0.5, 1.0, 1.0, 1.0]
    assert all(payload == StoreRetry() for _, payload in node.woken)


def test_each_retry_delay_is_shortened_at_random_by_up_to_half() -> None:
    """Nodes sharing a store that failed at once do not all try it again at once."""
    delays = []
    for _ in range(50):
        node = sync_node()
        node.durability = Durability(
            settings=node.settings,
            node_name=NODE,
            send=lambda address, message: None,
            wake=node.wake,
            create_writer=object,
            entry=entry,
        )
        d = node.durability
        d.start()
        for load in range(3):
            d.loaded(Loaded(0, 0, "locked", load), d.writer)
            d.retry_due()
            d.load()
        delays.append(node.retries())
    for first, second, third in delays:
        assert 0.125 <= first <= 0.25
        assert 0.25 <= second <= 0.5
        assert 0.5 <= third <= 1.0
    assert len({first for first, _, _ in delays}) > 40


def test_a_load_that_failed_after_reading_rows_is_not_read_again_at_once() -> None:
    """A damaged store that fails after many rows is not read again every second; a store that
    refused at once (locked, unreachable) is tried again soon."""
    node = sync_node()
    d = node.durability
    d.start()
    d.chunk(LoadChunk([("k", b"v")] * 50_000, []), node.writer)
    d.loaded(Loaded(0, 50_000, "database disk image is malformed"), node.writer)
    assert d.retry_due()
    d.load()
    d.loaded(Loaded(0, 0, "database is locked", node.load), node.writer)
    assert node.retries() == [5.0, 0.5]


def test_the_backoff_starts_over_after_a_load_succeeds() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    for _ in range(3):
        d.loaded(Loaded(0, 0, "locked", node.load), node.writer)
        assert d.retry_due()
        d.load()
    d.loaded(Loaded(1, 0, load=node.load), node.writer)
    d.write("k", b"v")
    node.commit(1, "disk full")
    assert node.retries() == [0.25, 0.5, 1.0, 0.25]


# -- group commit (sync mode) ----------------------------------------------------------------------


def test_the_first_write_is_sent_at_once_as_batch_one() -> None:
    node = serving()
    node.durability.write("a", b"A")
    assert node.take_sent() == [
        (node.writer, Write(URL, NODE, 1, {"a": entry("a", b"A")}, None, ALIVE))
    ]


def test_writes_while_a_batch_commits_go_together_in_the_next_batch() -> None:
    node = serving()
    d = node.durability
    d.write("a", b"A1")
    assert [w.seq for w in node.writes()] == [1]
    d.write("b", b"B")
    d.write("c", None)
    d.write("a", b"A2")
    assert node.writes() == []  # batch 1 is being committed
    node.commit(1)
    (batch,) = node.writes()
    assert batch.seq == 2
    assert batch.entries == {"b": entry("b", b"B"), "c": entry("c", None), "a": entry("a", b"A2")}
    node.commit(2)
    assert node.writes() == []  # nothing left


def test_the_replies_of_a_committed_batch_go_before_the_next_batch_is_handed_over() -> None:
    """So the commit thread, woken by the next batch, does not take the GIL at each reply's
    send; no reply goes before its own commit."""
    node = serving()
    d = node.durability
    d.write("a", b"A")
    d.reply_when_stored("a", "client 1", "stored a", failure_of("a"))
    d.write("b", b"B")  # while batch 1 commits
    d.reply_when_stored("b", "client 2", "stored b", failure_of("b"))
    assert [type(m) for _, m in node.take_sent()] == [Write]
    node.commit(1)
    sent = node.take_sent()
    assert [(to, type(m)) for to, m in sent] == [("client 1", str), (node.writer, Write)]
    assert sent[0][1] == "stored a"
    assert sent[1][1].seq == 2
    assert sent[1][1].entries == {"b": entry("b", b"B")}
    node.commit(2)
    assert node.take_sent() == [("client 2", "stored b")]


def test_a_batch_that_cannot_be_built_fails_as_a_commit_would_and_is_retried() -> None:
    """Building the next batch (encoding its entries) raising must not swallow the replies of
    the batch that was committed.  Found in review: nor may it leave the batch counted as being
    committed for good, which held back every write after it (no reply, ever): it fails as a
    commit does, its writers told, its keys kept for the retry."""
    bad = {"bad"}

    def entry_or_raise(key: str, raw: bytes | None) -> Entry:
        if key in bad:
            raise ValueError("cannot encode")
        return entry(key, raw)

    node = Node(Settings(store=URL), entry=entry_or_raise)
    node.serve()
    d = node.durability
    d.write("a", b"A")
    d.reply_when_stored("a", "client a", "stored a", failure_of("a"))
    d.write("bad", b"X")
    d.reply_when_stored("bad", "client bad", "stored bad", failure_of("bad"))
    node.take_sent()
    node.commit(1)
    why = "the batch could not be sent: cannot encode"
    assert node.take_sent() == [("client a", "stored a"), ("client bad", Failed("bad", why))]
    assert d.error == why
    assert d.queue_depth() == 1
    assert node.retries() == [0.25]
    bad.clear()  # it can be encoded now
    assert d.retry_due() is False
    [retry] = node.writes()
    assert retry.entries == {"bad": entry("bad", None)}
    node.commit(retry.seq)
    assert d.error is None
    assert d.queue_depth() == 0


def test_a_reply_waits_for_the_batch_holding_the_keys_latest_write() -> None:
    node = serving()
    d = node.durability
    d.write("a", b"A1")
    d.reply_when_stored("a", "client 1", "stored a1", failure_of("a1"))
    d.write("b", b"B")
    d.reply_when_stored("b", "client 2", "stored b", failure_of("b"))
    d.write("a", b"A2")  # again while batch 1 commits
    d.reply_when_stored("a", "client 3", "stored a2", failure_of("a2"))
    assert [w.seq for w in node.writes()] == [1]  # a2 waits for batch 1
    node.commit(1)
    sent = node.take_sent()
    assert [(to, m) for to, m in sent if not isinstance(m, Write)] == [("client 1", "stored a1")]
    assert [m.seq for _, m in sent if isinstance(m, Write)] == [2]
    node.commit(2)
    assert node.take_sent() == [("client 2", "stored b"), ("client 3", "stored a2")]


def test_a_reply_for_a_key_with_nothing_unwritten_goes_at_once() -> None:
    node = serving()
    d = node.durability
    d.reply_when_stored("never written", "client", "stored", failure_of("x"))
    assert node.take_sent() == [("client", "stored")]
    d.write("a", b"A")
    node.commit(1)
    node.take_sent()
    d.reply_when_stored("a", "client", "stored a", failure_of("a"))
    assert node.take_sent() == [("client", "stored a")]


def test_in_memory_every_reply_goes_at_once() -> None:
    node = Node(Settings())
    d = node.durability
    d.write("a", b"A")
    d.reply_when_stored("a", "client", "stored", failure_of("a"))
    assert node.sent == [("client", "stored")]
    assert d.queue_depth() == 0


def test_a_written_of_another_batch_or_from_another_actor_is_ignored() -> None:
    node = serving()
    d = node.durability
    d.write("a", b"A")
    d.reply_when_stored("a", "client", "stored", failure_of("a"))
    node.take_sent()
    d.written(Written(1), object())
    d.written(Written(2), node.writer)
    d.written(Written(0), node.writer)
    assert node.sent == []
    assert d.queue_depth() == 1
    node.commit(1)
    assert node.take_sent() == [("client", "stored")]
    node.commit(1)  # a second Written of the same batch: nothing is committing
    assert node.sent == []


# -- a failed commit -------------------------------------------------------------------------------


def test_a_failed_commit_sends_the_failure_replies_and_counts() -> None:
    node = serving()
    d = node.durability
    d.write("a", b"A")
    d.reply_when_stored("a", "client 1", "stored a", failure_of("a"))
    d.reply_when_stored("a", "peer", "ack", None)  # a peer's ack has no failure reply
    node.take_sent()
    node.commit(1, "disk full")
    assert node.take_sent() == [("client 1", Failed("a", "disk full"))]
    assert d.store_failures == 1
    assert d.store_failure == "disk full"
    assert node.retries() == [0.25]


def test_a_failed_commit_keeps_its_keys_and_sends_nothing_until_the_retry() -> None:
    node = serving()
    d = node.durability
    d.write("a", b"A")
    d.write("b", b"B")
    d.write("c", b"C1")
    node.commit(1)
    assert [(w.seq, set(w.entries)) for w in node.writes()] == [(1, {"a"}), (2, {"b", "c"})]
    d.write("c", b"C2")  # batch 3, waiting
    node.commit(2, "disk full")
    d.write("d", b"D")
    d.keep_alive()
    node.clock.now += 10 * 86400.0
    d.keep_alive()
    assert node.writes() == []
    assert d.queue_depth() == 3
    assert not d.retry_due()  # a flush, not a load
    (batch,) = node.writes()
    assert batch.seq == 3
    assert batch.entries == {
        "b": entry("b", None),  # encoded again: its state now
        "c": entry("c", b"C2"),  # its latest encoding is kept
        "d": entry("d", b"D"),
    }


def test_a_reply_registered_after_a_failure_waits_for_the_retried_batch() -> None:
    node = serving()
    d = node.durability
    d.write("a", b"A")
    node.commit(1, "disk full")
    node.take_sent()
    d.reply_when_stored("a", "client", "stored a", failure_of("a"))
    assert node.sent == []
    d.retry_due()
    node.commit(2)
    assert ("client", "stored a") in node.take_sent()


def test_a_write_queued_during_a_failed_commit_hears_of_the_failure_with_it() -> None:
    """Its batch is the next one, but it gets its failure now rather than after a retry delay
    and a second attempt; its key is still committed by the retry."""
    node = serving()
    d = node.durability
    d.write("a", b"A1")
    d.write("a", b"A2")
    d.reply_when_stored("a", "client", "stored a2", failure_of("a2"))
    d.reply_when_stored("a", "peer", "ack", None)  # a peer's ack waits: it may be in time
    node.take_sent()
    node.commit(1, "disk full")
    assert node.take_sent() == [("client", Failed("a2", "disk full"))]
    d.retry_due()
    (batch,) = node.writes()
    assert (batch.seq, batch.entries) == (2, {"a": entry("a", b"A2")})
    node.commit(2)
    assert node.take_sent() == [("peer", "ack")]
    assert d.store_failure is None


def test_commit_retries_back_off_and_start_over_after_a_commit_succeeds() -> None:
    node = serving()
    d = node.durability
    d.write("a", b"A")
    for seq in range(1, 9):
        node.commit(seq, "disk full")
        d.retry_due()
    node.commit(9)
    assert d.store_failure is None
    assert d.store_failures == 8
    assert d.last_flush == node.clock.now
    d.write("b", b"B")
    node.commit(10, "disk full again")
    assert node.retries() == [0.25, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.25]


# -- write-behind ----------------------------------------------------------------------------------


def test_write_behind_acknowledges_at_once() -> None:
    node = write_behind()
    d = node.durability
    d.write("a", b"A")
    d.reply_when_stored("a", "client", "stored", failure_of("a"))
    assert node.take_sent() == [("client", "stored")]


def test_write_behind_arms_one_timer_that_later_writes_do_not_push_back() -> None:
    node = write_behind()
    d = node.durability
    d.write("a", b"A")
    d.write("b", b"B")
    d.write("a", b"A2")
    assert node.woken == [(1.0, FlushTick())]
    assert node.writes() == []
    d.flush_due()
    (batch,) = node.writes()
    assert batch.seq == 1
    assert batch.entries == {"a": entry("a", b"A2"), "b": entry("b", b"B")}


def test_write_behind_waits_for_its_timer_after_a_commit() -> None:
    node = write_behind()
    d = node.durability
    d.write("a", b"A")
    d.flush_due()
    d.write("b", b"B")  # the first write since the flush: a new timer
    assert node.woken == [(1.0, FlushTick()), (1.0, FlushTick())]
    node.writes()
    node.commit(1)
    assert node.writes() == []
    d.flush_due()
    assert [w.entries for w in node.writes()] == [{"b": entry("b", b"B")}]


def test_a_timer_that_fires_during_a_commit_flushes_right_after_it() -> None:
    node = write_behind()
    d = node.durability
    d.write("a", b"A")
    d.flush_due()
    d.write("b", b"B")
    node.writes()
    d.flush_due()  # batch 1 is still being committed
    assert node.writes() == []
    node.commit(1)
    assert [(w.seq, set(w.entries)) for w in node.writes()] == [(2, {"b"})]
    node.commit(2)
    assert node.writes() == []


def test_write_behind_with_nothing_written_sends_nothing_when_its_timer_fires() -> None:
    node = write_behind()
    node.durability.flush_due()
    assert node.sent == []


# -- keys that are not durable ---------------------------------------------------------------------


def test_keys_that_match_no_durable_pattern_are_not_written() -> None:
    node = serving(durable_keys=("user:*", "config"))
    d = node.durability
    for key in ("session:1", "configs", "user", "conf"):
        d.write(key, b"x")
        d.reply_when_stored(key, "client", f"stored {key}", failure_of(key))
    assert [m for _, m in node.sent if isinstance(m, Write)] == []
    assert d.queue_depth() == 0
    assert [m for _, m in node.take_sent()] == [
        "stored session:1",
        "stored configs",
        "stored user",
        "stored conf",
    ]
    d.write("user:7", b"x")
    d.write("config", b"y")
    node.commit(1)
    assert [set(w.entries) for w in node.writes()] == [{"user:7"}, {"config"}]


def test_durable_means_a_store_and_a_matching_pattern() -> None:
    node = sync_node(durable_keys=("d*",))
    assert not node.durability.durable("d1")  # no writer yet
    node.serve()
    assert node.durability.durable("d1")
    assert not node.durability.durable("m1")


# -- a DurableWriter that exits --------------------------------------------------------------------


def test_the_exit_of_another_child_changes_nothing() -> None:
    node = serving()
    d = node.durability
    d.write("a", b"A")
    node.take_sent()
    assert not d.writer_exited(object())
    assert node.writers == [d.writer]
    assert node.sent == []


def test_the_writer_exiting_during_a_stop_is_not_replaced() -> None:
    node = serving()
    d = node.durability
    d.stop()
    assert not d.writer_exited(node.writer)
    assert len(node.writers) == 1


def test_the_writer_exiting_during_the_load_asks_for_the_load_again() -> None:
    node = sync_node()
    d = node.durability
    d.start()
    old = node.writer
    d.chunk(LoadChunk([("a", b"1")], []), old)
    node.take_sent()
    assert d.writer_exited(old)
    assert d.writer is node.writer
    assert d.writer is not old
    assert node.sent == []  # the caller forgets what was restored, then loads
    d.load()
    assert d.loaded_rows == 0
    assert node.take_sent() == [(node.writer, Load(URL, NODE, 10 * 86400.0, None, 1))]
    assert d.loaded(Loaded(1, 1, load=1), old) is None  # the dead writer's last word
    d.chunk(LoadChunk([("a", b"1")], [], 1), node.writer)
    assert d.loaded(Loaded(2, 1, load=1, chunks=1), node.writer) == LoadOutcome(incarnation=2)


def test_the_writer_exiting_with_a_batch_in_flight_sends_it_again_with_the_same_number() -> None:
    node = serving()
    d = node.durability
    d.write("a", b"A")
    d.write("b", b"B")
    node.commit(1)
    d.write("c", b"C")  # batch 3, waiting
    d.reply_when_stored("b", "client", "stored b", failure_of("b"))
    old = node.writer
    node.take_sent()
    assert not d.writer_exited(old)
    new = node.writer
    assert new is not old
    assert node.take_sent() == [(new, Write(URL, NODE, 2, {"b": entry("b", None)}, None, ALIVE))]
    d.written(Written(2), old)  # from the dead writer: does not count
    assert node.sent == []
    d.written(Written(2), new)
    assert node.take_sent() == [
        ("client", "stored b"),
        (new, Write(URL, NODE, 3, {"c": entry("c", b"C")}, None, ALIVE)),
    ]


def test_an_idle_writer_that_exits_is_replaced_and_later_batches_go_to_the_new_one() -> None:
    node = serving()
    d = node.durability
    old = node.writer
    assert not d.writer_exited(old)
    assert node.sent == []
    d.write("a", b"A")
    assert node.take_sent() == [
        (node.writer, Write(URL, NODE, 1, {"a": entry("a", b"A")}, None, ALIVE))
    ]
    assert node.writer is not old


# -- keep-alive ------------------------------------------------------------------------------------


def test_an_idle_node_commits_an_empty_batch_after_a_tenth_of_the_marker_ttl() -> None:
    node = serving(durable_pruning_marker_ttl=1000.0)
    d = node.durability
    d.write("a", b"A")
    node.commit(1)
    node.take_sent()
    node.clock.now += 100.0
    d.keep_alive()
    assert node.sent == []
    node.clock.now += 0.5
    d.keep_alive()
    assert node.take_sent() == [(node.writer, Write(URL, NODE, 2, {}, None, 10.0))]  # 1% of the TTL
    node.commit(2)
    assert d.last_flush == node.clock.now
    node.clock.now += 50.0
    d.keep_alive()
    assert node.sent == []


def test_the_keep_alive_period_is_at_most_an_hour() -> None:
    node = serving()  # a tenth of the default 10 days is a day
    d = node.durability
    d.write("a", b"A")
    node.commit(1)
    node.take_sent()
    node.clock.now += 3600.0
    d.keep_alive()
    assert node.sent == []
    node.clock.now += 0.5
    d.keep_alive()
    assert [w.entries for w in node.writes()] == [{}]


def test_no_keep_alive_while_a_batch_is_in_flight_or_a_retry_is_due() -> None:
    node = serving(durable_pruning_marker_ttl=1000.0)
    d = node.durability
    d.write("a", b"A")
    node.take_sent()
    node.clock.now += 1000.0
    d.keep_alive()
    assert node.sent == []  # batch 1 in flight
    node.commit(1, "disk full")
    node.clock.now += 1000.0
    d.keep_alive()
    assert node.sent == []  # a retry is due


def test_no_keep_alive_in_memory() -> None:
    node = Node(Settings(durable_pruning_marker_ttl=1000.0))
    node.clock.now += 10_000.0
    node.durability.keep_alive()
    assert node.sent == []


# -- stopping and the queue ------------------------------------------------------------------------


def test_a_stop_flushes_even_while_a_batch_is_in_flight() -> None:
    node = serving()
    d = node.durability
    d.write("a", b"A")
    d.write("b", b"B")
    node.take_sent()
    d.stop()
    assert d.exiting
    assert node.take_sent() == [
        (node.writer, Write(URL, NODE, 2, {"b": entry("b", b"B")}, None, ALIVE))
    ]


def test_a_stop_in_write_behind_mode_commits_what_waits_for_the_timer() -> None:
    node = write_behind()
    d = node.durability
    d.write("a", b"A")
    d.stop()
    assert [(w.seq, set(w.entries)) for w in node.writes()] == [(1, {"a"})]


def test_a_stop_with_nothing_unwritten_sends_nothing() -> None:
    node = serving()
    node.durability.stop()
    assert node.sent == []


def test_the_queue_depth_counts_the_batch_in_flight_and_what_waits() -> None:
    node = serving()
    d = node.durability
    assert d.queue_depth() == 0
    d.write("a", b"A")
    assert d.queue_depth() == 1
    d.write("b", b"B")
    d.write("c", b"C")
    d.write("b", b"B2")
    assert d.queue_depth() == 3
    node.commit(1)
    assert d.queue_depth() == 2
    node.commit(2)
    assert d.queue_depth() == 0


# -- a property: group commit against a model ------------------------------------------------------

KEYS = ["a", "b", "c"]
operations = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.sampled_from(KEYS)),
        st.tuples(st.just("reply"), st.sampled_from(KEYS)),
        st.tuples(st.sampled_from(["ok", "fail", "retry", "exit", "stale", "idle"])),
    ),
    max_size=40,
)


@given(operations)
def test_every_reply_goes_once_and_only_after_its_write_is_committed(
    plan: list[tuple[str, ...]],
) -> None:
    """Sync mode under writes, replies, commits that succeed or fail, retries, writers that
    exit, stale Written messages and idle periods.  Model: each write makes a key's next
    version; a batch holds the versions current when it is sent; a success reply registered at
    version v goes only once a committed batch held the key at v or later, a failure reply only
    when a batch fails; one batch is in flight at a time, numbered one more than the last (the
    same number when sent again to a new writer).  Drained at the end, every reply went exactly
    once and every key's latest version is committed."""
    version = dict.fromkeys(KEYS, 0)
    sent: list[tuple[Any, Any]] = []
    woken: list[tuple[float, Any]] = []
    writers: list[object] = []
    clock = Clock(1_000_000.0)

    def create_writer() -> object:
        writers.append(object())
        return writers[-1]

    d = Durability(
        settings=Settings(store=URL, durable_pruning_marker_ttl=1000.0),
        node_name=NODE,
        send=lambda address, message: sent.append((address, message)),
        wake=lambda seconds, payload: woken.append((seconds, payload)),
        create_writer=create_writer,
        entry=lambda key, _raw: Entry("v", str(version[key]).encode(), ""),
        clock=clock,
    )
    d.start()
    d.loaded(Loaded(1, 0), writers[-1])
    sent.clear()

    committed = dict.fromkeys(KEYS, 0)
    registered: dict[int, tuple[str, int]] = {}
    answered: set[int] = set()
    in_flight: Write | None = None
    last_seq = 0
    retries_armed = 0

    def observe(op: str) -> None:
        """Check what was sent since the last step."""
        nonlocal in_flight, last_seq
        for address, message in sent:
            if isinstance(message, Write):
                assert address is writers[-1]
                if in_flight is not None:
                    assert op == "exit"
                    assert message.seq == in_flight.seq
                else:
                    assert retries_armed == 0  # nothing goes while a retry is due
                    assert message.seq == last_seq + 1
                    last_seq = message.seq
                in_flight = message
                continue
            assert address == "client"
            outcome, i = message[0], message[1]
            assert i in registered
            assert i not in answered
            answered.add(i)
            key, at = registered[i]
            if outcome == "ok":
                assert committed[key] >= at
            else:
                assert op == "fail"
        sent.clear()

    for step in plan:
        op = step[0]
        if op == "write":
            version[step[1]] += 1
            d.write(step[1], None)
        elif op == "reply":
            i = len(registered)
            registered[i] = (step[1], version[step[1]])
            d.reply_when_stored(
                step[1], "client", ("ok", i), lambda error, i=i: ("failed", i, error)
            )
        elif op in ("ok", "fail") and in_flight is not None:
            batch, in_flight = in_flight, None
            if op == "ok":
                for key, stored in batch.entries.items():
                    assert stored is not None
                    committed[key] = max(committed[key], int(stored.payload))
                d.written(Written(batch.seq), writers[-1])
            else:
                retries_armed += 1
                d.written(Written(batch.seq, "disk full"), writers[-1])
        elif op == "retry" and retries_armed:
            retries_armed -= 1
            assert not d.retry_due()
        elif op == "exit":
            d.writer_exited(writers[-1])
        elif op == "stale":
            d.written(Written(last_seq + 1), writers[-1])
            d.written(Written(max(last_seq - 1, 0)), writers[-1])
            if len(writers) > 1:
                d.written(Written(last_seq), writers[0])
        elif op == "idle":
            clock.now += 150.0
            d.keep_alive()
        observe(op)
    assert retries_armed <= 1  # a failed batch arms one retry, and nothing goes until it fires
    for _ in range(100):
        if in_flight is not None:
            batch, in_flight = in_flight, None
            for key, stored in batch.entries.items():
                assert stored is not None
                committed[key] = max(committed[key], int(stored.payload))
            d.written(Written(batch.seq), writers[-1])
        elif retries_armed:
            retries_armed -= 1
            d.retry_due()
        else:
            break
        observe("drain")
    assert answered == set(registered)
    assert committed == version
    assert d.queue_depth() == 0


# -- batches committed through ``commit`` (the Replicator's CommitThread) --------------------------


def threaded() -> tuple[Node, list[Write]]:
    """A serving node whose batches go to ``commit``, and the batches it got."""
    committed: list[Write] = []
    node = Node(Settings(store=URL), commit_fn=committed.append)
    node.serve()
    return node, committed


def test_with_commit_batches_go_to_it_and_its_answers_release_the_replies() -> None:
    node, committed = threaded()
    d = node.durability
    d.write("a", b"A")
    d.reply_when_stored("a", "client", "stored a", failure_of("a"))
    d.write("b", b"B")  # while batch 1 commits: batch 2
    d.reply_when_stored("b", "client", "stored b", failure_of("b"))
    assert committed == [Write(URL, NODE, 1, {"a": entry("a", b"A")}, None, ALIVE)]
    assert node.sent == []  # nothing to the DurableWriter
    d.committed(Written(1))
    assert node.take_sent() == [("client", "stored a")]
    assert committed[1:] == [Write(URL, NODE, 2, {"b": entry("b", b"B")}, None, ALIVE)]
    d.committed(Written(2))
    assert node.take_sent() == [("client", "stored b")]


@pytest.mark.parametrize(("first", "second"), [("disk full", None), (None, "disk full")])
def test_regression_a_stop_answers_each_batch_s_clients_with_that_batch_s_outcome(
    first: str | None, second: str | None
) -> None:
    """Review finding: batch 1 in flight, batch 2 sent by a graceful stop, both answered at
    the exit.  Batch 1's answer was ignored (not the last batch) and batch 2's answered every
    client: batch 1's client was told its failed write was stored (or, the other way round,
    that its stored write failed)."""
    node, committed = threaded()
    d = node.durability
    d.write("a", b"A")
    d.reply_when_stored("a", "client a", "stored a", failure_of("a"))
    d.write("b", b"B")
    d.reply_when_stored("b", "client b", "stored b", failure_of("b"))
    d.stop()
    assert [w.seq for w in committed] == [1, 2]
    d.committed(Written(1, first))
    d.committed(Written(2, second))
    said = dict(node.take_sent())
    assert said["client a"] == ("stored a" if first is None else failure_of("a")(first))
    assert said["client b"] == ("stored b" if second is None else failure_of("b")(second))


def test_with_commit_a_written_from_the_writer_does_not_count() -> None:
    node, _ = threaded()
    d = node.durability
    d.write("a", b"A")
    d.reply_when_stored("a", "client", "stored a", failure_of("a"))
    node.commit(1)  # the DurableWriter commits nothing here: forged, or stale
    assert node.sent == []
    assert d.queue_depth() == 1
    d.committed(Written(1))
    assert node.take_sent() == [("client", "stored a")]


def test_with_commit_the_writer_exiting_mid_batch_is_replaced_and_sent_nothing() -> None:
    node, committed = threaded()
    d = node.durability
    d.write("a", b"A")
    old = node.writer
    assert not d.writer_exited(old)
    assert node.writer is not old  # replaced, for the loads
    assert node.sent == []  # the batch is the thread's, not the writer's
    assert len(committed) == 1


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_commit_thread_that_ends_mid_commit_fails_the_waiting_then_a_new_one_commits(
    tmp_path: Path,
) -> None:
    """The CommitThread's equivalent of a killed DurableWriter, for real on an SQLite file:
    every client waiting hears of the failure, the retry waits out the backoff, and the retried
    batch is committed by a new thread."""
    url = f"sqlite:///{tmp_path / 'd.db'}"
    commits = CommitThread()
    dying = {"a"}  # the first commit of "a" ends the thread

    def store_entry(key: str, raw: bytes | None) -> Any:
        if key in dying:
            dying.discard(key)
            return _EndsTheThread()
        return entry(key, raw)

    node = Node(Settings(store=url), commit_fn=commits.submit, entry=store_entry)
    d = node.durability
    try:
        node.serve()
        d.write("a", b"A")
        d.reply_when_stored("a", "client", "stored a", failure_of("a"))
        d.write("b", b"B")  # waits for batch 2
        d.reply_when_stored("b", "client", "stored b", failure_of("b"))
        for written in commit_answers(commits, 1):
            d.committed(written)
        error = "the commit thread ended mid-commit"
        assert node.take_sent() == [("client", Failed("a", error)), ("client", Failed("b", error))]
        assert d.error == error
        assert node.retries() == [0.25]
        assert d.retry_due() is False  # the timer fired: a new thread commits both
        for written in commit_answers(commits, 1):
            d.committed(written)
        assert d.error is None
        assert d.queue_depth() == 0
        assert sorted(stored_rows(url, NODE)) == [("a", entry("a", None).payload), ("b", b"B")]
    finally:
        commits.stop()


class _EndsTheThread:
    """An entry whose reading ends the thread that reads it (as only what is not an
    ``Exception`` can)."""

    def __iter__(self) -> Iterator[Any]:
        raise SystemExit


# -- batches committed here (``commit_here``: the CommitThread on the Replicator's thread) -----


class Here:
    """A ``commit_here`` that commits what it is given at once (or, ``able`` False, cannot)."""

    def __init__(self) -> None:
        self.able = True
        self.error: str | None = None
        self.batches: list[Write] = []

    def __call__(self, write: Write) -> Written | None:
        if not self.able:
            return None
        self.batches.append(write)
        return Written(write.seq, self.error)


def here_node(mode: str = "sync") -> tuple[Node, list[Write], Here]:
    committed: list[Write] = []
    here = Here()
    node = Node(Settings(store=URL, write_mode=mode), commit_fn=committed.append, commit_here=here)
    node.serve()
    return node, committed, here


def client_write(node: Node, key: str, raw: bytes) -> None:
    """An Update's write and its reply, waiting for the commit."""
    d = node.durability
    d.write(key, raw)
    d.reply_when_stored(key, f"client {key}", f"stored {key}", failure_of(key))


def test_given_commit_here_a_turn_s_sync_writes_are_one_batch_committed_here_at_its_end() -> None:
    node, committed, here = here_node()
    d = node.durability
    client_write(node, "a", b"A")
    client_write(node, "b", b"B")
    assert here.batches == []
    assert committed == []
    assert node.sent == []
    d.end_of_turn()
    assert here.batches == [
        Write(URL, NODE, 1, {"a": entry("a", b"A"), "b": entry("b", b"B")}, None, ALIVE)
    ]
    assert node.take_sent() == [("client a", "stored a"), ("client b", "stored b")]
    assert committed == []  # nothing went to the thread
    assert d.queue_depth() == 0
    d.end_of_turn()  # a turn with no write commits nothing
    assert len(here.batches) == 1


def test_the_writes_of_one_message_are_one_commit_here_not_one_each() -> None:
    """Found in review (of the commits here of a lone writer, before turns): every write was
    committed here as it came, so a message that writes many keys (a peer's delta, an expiry, a
    pruning round) ran up to 15 commits (fsyncs) one after the other on the Replicator's
    thread.  They are one batch, committed at the end of the turn."""
    node, committed, here = here_node()
    d = node.durability
    for k in range(40):  # one message's writes
        d.write(f"m{k}", b"x")
    assert here.batches == []  # none yet: the turn is still handling messages
    d.end_of_turn()
    assert [sorted(batch.entries) for batch in here.batches] == [sorted(f"m{k}" for k in range(40))]
    assert committed == []
    assert d.queue_depth() == 0


def test_a_batch_commit_here_refuses_goes_to_the_thread_and_the_next_waits_for_a_turn() -> None:
    """``commit_here`` refuses (a batch of the thread unanswered, no store open yet, a slow
    last commit): the turn's batch goes to the thread.  Writes of the turns while it commits
    wait; its answer's turn sends its replies, and the end of that turn commits the rest here."""
    node, committed, here = here_node()
    d = node.durability
    here.able = False
    client_write(node, "a", b"A")
    d.end_of_turn()
    assert committed[-1].entries == {"a": entry("a", b"A")}
    here.able = True
    client_write(node, "b", b"B")
    d.end_of_turn()  # a batch is being committed: b waits
    assert len(committed) == 1
    assert here.batches == []
    assert node.sent == []
    d.committed(Written(committed[-1].seq))  # the thread's answer, in a later turn
    assert node.take_sent() == [("client a", "stored a")]
    assert here.batches == []
    assert len(committed) == 1
    d.end_of_turn()
    assert [batch.entries for batch in here.batches] == [{"b": entry("b", b"B")}]
    assert node.take_sent() == [("client b", "stored b")]


def test_a_failed_commit_here_tells_its_writer_at_once_and_keeps_the_key_for_the_thread() -> None:
    """A failure tells the writer at once, as one on the thread does, and the key is kept and
    retried on the thread."""
    node, committed, here = here_node()
    d = node.durability
    here.error = "disk full"
    client_write(node, "a", b"A")
    d.end_of_turn()
    assert node.take_sent() == [("client a", Failed("a", "disk full"))]  # not acknowledged
    assert d.error == "disk full"
    assert d.queue_depth() == 1
    assert node.retries() == [0.25]
    d.end_of_turn()  # a retry is due: nothing is committed before it
    assert len(here.batches) == 1
    assert d.retry_due() is False  # the retry goes to the thread
    assert committed[-1].entries == {"a": entry("a", None)}  # encoded again: its state now
    d.committed(Written(committed[-1].seq))
    assert d.error is None
    assert d.queue_depth() == 0


def test_in_write_behind_mode_the_end_of_a_turn_commits_nothing() -> None:
    node, committed, here = here_node("write-behind")
    d = node.durability
    d.write("a", b"A")
    d.end_of_turn()
    assert here.batches == []
    assert committed == []
    assert [payload for _, payload in node.woken] == [FlushTick()]
    d.flush_due()
    assert [batch.entries for batch in committed] == [{"a": entry("a", b"A")}]


def test_a_keep_alive_between_turns_never_acknowledges_writes_waiting_for_the_turn_end() -> None:
    """Found in review: a turn's writes wait for its end, and a timer's handler can run before it
    (Thespian runs due timers between two runs of its loop).  The pruning round's keep-alive
    then committed an empty batch under the number the writes' replies waited for, and its
    answer acknowledged them, uncommitted.  A keep-alive now waits while writes are pending
    (their own commit records the node alive)."""
    node, committed, here = here_node()
    d = node.durability
    client_write(node, "k", b"K")
    d.keep_alive()  # a long-idle node: its first keep-alive is due
    for batch in list(committed):
        d.committed(Written(batch.seq))  # whatever went to the thread, answered
    assert node.take_sent() == []  # k is not acknowledged before its commit
    d.end_of_turn()
    assert [batch.entries for batch in here.batches] == [{"k": entry("k", b"K")}]
    assert node.take_sent() == [("client k", "stored k")]
    d.keep_alive()  # nothing pending now, and the commit was just made: not due
    assert committed == []  # no empty batch went to the thread, before or after
