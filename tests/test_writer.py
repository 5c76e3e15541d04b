"""The DurableWriter (:mod:`thespian_dd._runtime.writer`) on a real SQLite file, in an ActorSystem
inside the test's process (``simpleSystemBase``: no node, no other process): a load comes in
chunks bounded by rows and by bytes, then the count; a store that fails is reported with the
message it failed, and opened afresh for the next one.  With real nodes: ``tests/test_durable.py``
(restarts, a killed DurableWriter, store outages).  The commit thread: ``tests/test_commits.py``."""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from thespian.actors import ActorSystem
from thespian.system.transport import asyncTransportBase

from thespian_dd import GCounter
from thespian_dd._runtime.rows import Entry
from thespian_dd._runtime.store import LOAD_CHUNK_ROWS, Store
from thespian_dd._runtime.writer import (
    LOAD_CHUNK_BYTES,
    DurableWriter,
    Load,
    LoadChunk,
    Loaded,
    Write,
    Written,
    _ReadAhead,
)
from thespian_dd._testkit.harness import (
    Probe,
    ProbeSendAll,
    ProbeTake,
    Received,
    eventually,
    free_port,
)
from thespian_dd.codec import encode
from thespian_dd.lwwregister import now_ms

pytestmark = pytest.mark.timeout(60)

ENTRY = Entry("GCounter", encode(GCounter()), "")


@pytest.fixture
def asys() -> Iterator[Any]:
    system = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=None)
    try:
        yield system
    finally:
        system.shutdown()


def _load(asys: Any, message: Load) -> tuple[list[LoadChunk], Loaded]:
    """What a new DurableWriter answers ``message``: its chunks, then the final Loaded."""
    writer = asys.createActor(DurableWriter)
    reply = asys.ask(writer, message, 10)
    chunks = []
    while isinstance(reply, LoadChunk):
        chunks.append(reply)
        reply = asys.listen(10)
    assert isinstance(reply, Loaded), reply
    return chunks, reply


def test_a_load_sends_every_row_in_chunks_of_load_chunk_rows_then_the_count(
    asys: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "w.db"
    url = f"sqlite:///{path}"
    keys = {f"k{i}" for i in range(2 * LOAD_CHUNK_ROWS + 2)}
    store = Store(url)
    store.write("n", {**dict.fromkeys(keys, ENTRY), "gone": None})
    store.write("other", {"theirs": ENTRY})  # another node's row: not this load's
    store.close()
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("UPDATE thespian_dd_entries SET payload = x'00' WHERE key = 'k7'")
        conn.commit()
    started = now_ms()
    with caplog.at_level(logging.ERROR):
        chunks, loaded = _load(asys, Load(url, "n"))
    total = 2 * LOAD_CHUNK_ROWS + 3
    assert [len(c.rows) + len(c.skipped) for c in chunks] == [LOAD_CHUNK_ROWS, LOAD_CHUNK_ROWS, 3]
    assert [(c.load, c.seq) for c in chunks] == [(0, 0), (0, 1), (0, 2)]
    assert loaded.chunks == 3
    rows = dict(row for chunk in chunks for row in chunk.rows)
    assert rows == {**dict.fromkeys(keys - {"k7"}, ENTRY.payload), "gone": None}
    skipped = [s for chunk in chunks for s in chunk.skipped]
    assert [key for key, _ in skipped] == ["k7"]
    assert "checksum does not match" in skipped[0][1]
    assert loaded.rows == total
    assert loaded.error is None
    assert loaded.incarnation >= started  # at least the time in ms: above any earlier run's
    # The skipped row is logged, under the logger the DurableWriter has always used.
    logged = [r.name for r in caplog.records if "skipped stored key 'k7'" in r.getMessage()]
    assert logged == ["thespian_dd.durable"]
    chunks, again = _load(asys, Load(url, "n", load=1))  # the Replicator's next
    assert again.incarnation > loaded.incarnation
    assert (again.rows, again.load, again.chunks) == (total, 1, 3)
    assert {c.load for c in chunks} == {1}


def test_regression_an_in_memory_store_is_loaded_on_the_writers_own_thread(asys: Any) -> None:
    """An in-memory SQLite store (``sqlite://``, which the node command accepts) is a database
    per thread.  Read on a read-ahead thread, the load found none of the tables the
    DurableWriter had just made ("no such table"), and the node retried forever, never
    serving.  It is read on the DurableWriter's own thread."""
    chunks, loaded = _load(asys, Load("sqlite://", "n"))
    assert (chunks, loaded.rows, loaded.error) == ([], 0, None)


def test_a_chunk_ends_early_once_its_payloads_reach_load_chunk_bytes(
    asys: Any, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/w.db"
    big = Entry("GCounter", bytes(LOAD_CHUNK_BYTES // 4), "")
    store = Store(url)
    store.write("n", {f"big{i}": big for i in range(6)})
    store.close()
    chunks, loaded = _load(asys, Load(url, "n"))
    assert [(len(chunk.rows), chunk.seq) for chunk in chunks] == [(4, 0), (2, 1)]
    assert loaded == Loaded(loaded.incarnation, 6, chunks=2)


def _chunks(
    n: int, ended: threading.Event, fail: bool = False, go: Any = None, third: Any = None
) -> Any:
    """``n`` chunks of one row each, then a failure if ``fail``; from the third on, each only
    once ``go`` is set (if given), ``third`` set as the third is handed over; ``ended`` is set
    once the generator is closed or done (as a query is ended)."""
    try:
        for i in range(n):
            if go is not None and i >= 2:
                go.wait()
            if third is not None and i == 2:
                third.set()
            yield [(f"k{i}", b"x")], []
        if fail:
            raise sa.exc.OperationalError("SELECT", {}, Exception("the server went away"))
    finally:
        ended.set()


def test_a_read_ahead_gives_every_chunk_in_order_then_none_and_ends_the_query() -> None:
    ended = threading.Event()
    rows = _ReadAhead(_chunks(5, ended))
    got = []
    while (chunk := rows.next()) is not None:
        got.append(chunk[0][0][0])
    assert got == [f"k{i}" for i in range(5)]
    assert ended.is_set()


def test_a_read_ahead_raises_what_reading_raised_after_the_chunks_read_before() -> None:
    ended = threading.Event()
    rows = _ReadAhead(_chunks(2, ended, fail=True))
    assert rows.next() is not None
    assert rows.next() is not None
    with pytest.raises(sa.exc.OperationalError, match="the server went away"):
        rows.next()
    assert ended.is_set()


@pytest.mark.parametrize("closed", ["while reading", "with a chunk waiting to be queued"])
def test_a_read_ahead_closed_midway_ends_its_query_and_its_thread(closed: str) -> None:
    """Closed while its thread reads the next chunk, or while it holds one and the queue is
    full (the actor took one chunk, and one waits): either way the query and the thread end,
    and nobody waits for the actor to take another chunk."""
    ended, go, third = threading.Event(), threading.Event(), threading.Event()
    before = threading.active_count()
    rows = _ReadAhead(_chunks(1000, ended, go=go, third=third))
    assert rows.next() is not None
    eventually(rows._queue.full)  # the second chunk waits; the thread reads the third
    if closed == "while reading":
        rows.close()
        go.set()
    else:
        go.set()
        assert third.wait(10)  # the thread goes on to queue it: the queue is full
        rows.close()
    assert ended.wait(10)
    eventually(lambda: threading.active_count() == before, timeout=10)


@pytest.mark.multinode
def test_a_load_under_way_lets_the_transport_run_between_its_chunks(tmp_path: Path) -> None:
    """Regression: the DurableWriter chained its chunks through messages to itself, which
    Thespian's TCP transport handles before it sends or reads anything else, until
    MAX_PENDING_TRANSMITS (20) chunks wait: the Replicator got them in bursts of 20, restoring
    nothing meanwhile, and a Load sent meanwhile waited as long.  Now the transport runs after
    every chunk: a Load sent right behind the first supersedes it after a few chunks, on real
    processes."""
    url = f"sqlite:///{tmp_path}/w.db"
    chunks = 30
    store = Store(url)
    store.write("n", {f"k{i}": ENTRY for i in range(chunks * LOAD_CHUNK_ROWS)})
    store.write("m", {"m": ENTRY})
    store.close()
    port = free_port()
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": port}, transientUnique=True)
    try:
        # The chunks go to an actor, as they go to the Replicator: an ActorSystem's own endpoint
        # lost one now and then (a Thespian matter, not the load's).
        writer, probe = asys.createActor(DurableWriter), asys.createActor(Probe)

        def received() -> list[Any]:
            took = asys.ask(probe, ProbeTake(), 10)
            assert isinstance(took, Received), took
            return took.messages

        # Back to back: the second Load waits in the transport while the first sends chunks.
        asys.tell(probe, ProbeSendAll(writer, [Load(url, "n"), Load(url, "m")]))
        eventually(lambda: any(isinstance(r, Loaded) for r in received()), timeout=20)
        replies = received()
    finally:
        asys.shutdown()
    loaded = replies[-1]
    assert (loaded.rows, loaded.error) == (1, None)  # the second load's, the first's never came
    of_n = [r for r in replies if isinstance(r, LoadChunk) and r.rows and r.rows[0][0] != "m"]
    assert 1 <= len(of_n) < asyncTransportBase.MAX_PENDING_TRANSMITS
    assert [r.rows for r in replies if isinstance(r, LoadChunk) and r not in of_n] == [
        [("m", ENTRY.payload)]
    ]


def test_a_load_that_cannot_open_the_store_is_answered_with_the_reason(
    asys: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    chunks, loaded = _load(asys, Load(f"sqlite:///{blocker}/n.db", "n"))
    assert chunks == []
    assert (loaded.incarnation, loaded.rows) == (0, 0)
    assert (loaded.error or "").startswith(f"StoreError: cannot open the store sqlite:///{blocker}")
    missing = str(tmp_path / "nowhere.key")
    url = f"sqlite:///{tmp_path}/n.db"
    chunks, loaded = _load(asys, Load(url, "n", signing_key_file=missing))
    assert chunks == []
    assert (loaded.error or "").startswith(
        f"StoreError: cannot read the signing key file {missing}"
    )


def test_a_node_refused_at_start_gets_no_row(asys: Any, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/old.db"
    store = Store(url)
    store.write("n", {f"k{i}": ENTRY for i in range(10)})
    store.next_incarnation("n", 5)
    store.close()
    engine = sa.create_engine(url)
    with engine.begin() as conn:  # its last commit two hours ago
        conn.execute(sa.text("UPDATE thespian_dd_nodes SET last_alive = last_alive - 7200"))
    engine.dispose()
    chunks, loaded = _load(asys, Load(url, "n", max_offline=3600.0))
    assert chunks == []
    assert loaded.error is not None
    assert "last committed" in loaded.error


def test_a_failed_write_is_answered_with_its_batch_and_the_next_opens_the_store_afresh(
    asys: Any, tmp_path: Path
) -> None:
    path = tmp_path / "w.db"
    url = f"sqlite:///{path}"
    writer = asys.createActor(DurableWriter)
    assert asys.ask(writer, Write(url, "n", 1, {"a": ENTRY}), 10) == Written(1)
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("DROP TABLE thespian_dd_entries")  # the store loses its table under it
        conn.commit()
    failed = asys.ask(writer, Write(url, "n", 2, {"b": ENTRY}), 10)
    assert isinstance(failed, Written)
    assert failed.seq == 2
    assert "no such table" in (failed.error or "")
    # Opened afresh, which creates the missing table again: the next batch commits.
    assert asys.ask(writer, Write(url, "n", 3, {"c": ENTRY}), 10) == Written(3)
    store = Store(url)
    try:
        assert [(key, payload) for key, payload, _ in store.load("n")] == [("c", ENTRY.payload)]
    finally:
        store.close()
