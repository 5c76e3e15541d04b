"""Durability on a real SQLite file per node: restart a node (or the whole cluster, kill -9) and
read every acknowledged value back; the store's rows are checked, and a store that cannot be read
is refused loudly rather than served empty.  Without nodes: the store in ``tests/test_store.py``,
the DurableWriter in ``tests/test_writer.py``; ``inspect`` in ``tests/test_inspect.py``."""

from __future__ import annotations

import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from thespian.actors import ActorExitRequest, ActorSystem

from thespian_dd import (
    Changed,
    Delete,
    GCounter,
    Get,
    GetDataDeleted,
    GetFailure,
    GetKeys,
    GetReplicaCount,
    GetStats,
    GetStatus,
    GetSuccess,
    InvalidRequest,
    Keys,
    ModifyFailure,
    NotFound,
    ORSet,
    PNCounter,
    ReplicaCount,
    ReplicaId,
    Replicator,
    Stats,
    Status,
    StoreFailure,
    Subscribe,
    Update,
    UpdateSuccess,
    WriteAll,
    WriteMajority,
    start,
)
from thespian_dd._cli.main import main
from thespian_dd._peers import PartitionForTests
from thespian_dd._runtime.protocol import DescribeProcess, ProcessInfo
from thespian_dd._runtime.rows import Entry, checksum, parts
from thespian_dd._runtime.store import Store
from thespian_dd._testkit.harness import _children
from thespian_dd.codec import encode
from thespian_dd.replicator import REPLICATOR_NAME
from thespian_dd.testing import (
    Cluster,
    Probe,
    ProbeTake,
    Received,
    eventually,
    free_port,
    start_node,
)

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(180)]


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/{{name}}.db"


def _rounds_pass(cluster: Cluster, i: int, until: int) -> None:
    """Wait until node ``i`` has run ``until`` gossip rounds in all."""

    def rounds() -> int:
        stats = cluster.ask(i, GetStats())
        assert isinstance(stats, Stats), stats
        return stats.gossip_rounds

    eventually(lambda: rounds() >= until, timeout=30, what=f"{until} gossip rounds")


def _value(cluster: Cluster, i: int, key: str) -> Any:
    reply = cluster.ask(i, Get(key))
    return reply.data if isinstance(reply, GetSuccess) else reply


def test_a_node_killed_and_restarted_recovers_every_acknowledged_value(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(1, store=_store(tmp_path))
    for _ in range(5):
        reply = cluster.ask(0, Update("hits", GCounter(), lambda c, n: c.increment(n, 1)))
        assert reply == UpdateSuccess("hits", None)
    cluster.ask(0, Update("tags", ORSet(), lambda s, n: s.add_all(n, ["a", "b"])))
    cluster.ask(0, Update("gone", GCounter(), lambda c, n: c.increment(n, 1)))
    cluster.ask(0, Delete("gone"))
    cluster.kill(0)
    cluster.restart(0)
    hits = _value(cluster, 0, "hits")
    assert hits.value == 5
    assert _value(cluster, 0, "tags").value == {"a", "b"}
    assert cluster.ask(0, Get("gone")) == GetDataDeleted("gone", None)
    # The restarted node writes under a new incarnation: it never reuses the old slot.
    cluster.ask(0, Update("hits", GCounter(), lambda c, n: c.increment(n, 1)))
    after = _value(cluster, 0, "hits")
    assert after.value == 6
    assert len(after.modified_by_nodes()) == 2
    stats = cluster.ask(0, GetStats())
    assert isinstance(stats, Stats)
    assert stats.recovery_time is not None


def test_a_lone_writer_killed_right_after_an_acknowledgement_loses_nothing(
    cluster_factory: Any, tmp_path: Path
) -> None:
    """A lone client waits for each reply before its next write: each write is its turn's batch,
    committed on the Replicator's own thread at the end of the turn (``commit_here``, see
    tests/test_durability.py) and its reply sent after that commit returned.  kill -9 right
    after the last acknowledgement: all are there."""
    cluster = cluster_factory(1, store=_store(tmp_path))
    for k in range(1, 61):
        reply = cluster.ask(0, Update("hits", GCounter(), _increment(1)))
        assert reply == UpdateSuccess("hits", None)
        if k % 20 == 0:  # other messages between writes do not count as company
            assert _value(cluster, 0, "hits").value == k
    cluster.kill(0)
    cluster.restart(0)
    assert _value(cluster, 0, "hits").value == 60


def _increment(amount: int) -> Any:
    # A lambda travels by value (dill); node processes cannot import this test module.
    return lambda counter, node: counter.increment(node, amount)


def _add(element: str) -> Any:
    return lambda s, node: s.add(node, element)


def _decrement(amount: int) -> Any:
    return lambda counter, node: counter.decrement(node, amount)


def test_a_full_cluster_kill_loses_no_acknowledged_update(
    cluster_factory: Any, store_url: str
) -> None:
    """1,000 acknowledged updates (GCounter, PNCounter, ORSet) across 20 keys on 3 nodes, then
    every process group killed at once, on every store, the last update just acknowledged.
    Each node restarted alone, its peers still down, holds every update it acknowledged (from its
    own store, nothing else can give it); all restarted, every node holds every update, exactly."""
    cluster = cluster_factory(3, store=store_url)
    counters = dict.fromkeys([f"c{j}" for j in range(8)], 0)
    pn = dict.fromkeys([f"p{j}" for j in range(4)], 0)
    sets: dict[str, set[str]] = {f"s{j}": set() for j in range(8)}
    # What each node acknowledged itself: key -> (increments, decrements) or elements.
    own: list[dict[str, Any]] = [{} for _ in range(3)]
    for k in range(1000):
        i, amount = k % 3, k % 7 + 1
        if k % 3 == 0:
            key = f"c{k % 8}"
            reply = cluster.ask(i, Update(key, GCounter(), _increment(amount)))
            counters[key] += amount
            own[i][key] = own[i].get(key, 0) + amount
        elif k % 3 == 1:
            key = f"p{k % 4}"
            step = _increment(amount) if k % 2 else _decrement(amount)
            reply = cluster.ask(i, Update(key, PNCounter(), step))
            pn[key] += amount if k % 2 else -amount
            up, down = own[i].get(key, (0, 0))
            own[i][key] = (up + amount, down) if k % 2 else (up, down + amount)
        else:
            key = f"s{k % 8}"
            reply = cluster.ask(i, Update(key, ORSet(), _add(f"item-{k}")))
            sets[key].add(f"item-{k}")
            own[i][key] = own[i].get(key, set()) | {f"item-{k}"}
        assert isinstance(reply, UpdateSuccess), reply
    for i in range(3):
        cluster.kill(i)  # every node at once, no flush, no goodbye
    for i in range(3):
        cluster.restart(i)  # alone: the others are down
        name = cluster.nodes[i].name
        for key, mine in own[i].items():
            data = _value(cluster, i, key)
            if isinstance(mine, set):
                assert mine <= data.value, (name, key)
            elif isinstance(mine, tuple):
                assert _slots_of(data.p, name) == mine[0], (name, key)
                assert _slots_of(data.n, name) == mine[1], (name, key)
            else:
                assert _slots_of(data, name) == mine, (name, key)
        cluster.kill(i)
    for i in range(3):
        cluster.restart(i)

    def recovered() -> bool:
        for i in range(3):
            for key, total in {**counters, **pn}.items():
                assert _value(cluster, i, key).value == total, (i, key)
            for key, elements in sets.items():
                assert _value(cluster, i, key).value == elements, (i, key)
        return True

    eventually(recovered, timeout=30, what="every node holds every acknowledged update")


def _slots_of(counter: GCounter, node: str) -> int:
    """What the incarnations of ``node`` added to ``counter``."""
    return sum(n for r, n in counter.state.items() if r.node == node)


def test_a_subscriber_of_a_restarted_node_first_sees_the_recovered_value(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(1, store=_store(tmp_path))
    cluster.ask(0, Update("cart", ORSet(), lambda s, n: s.add(n, "apple")))
    cluster.kill(0)
    cluster.restart(0)
    node = cluster.nodes[0]
    probe = node.client.createActor(Probe)
    node.client.tell(node.replicator, Subscribe("cart", subscriber=probe))

    def first() -> Any:
        reply = node.client.ask(probe, ProbeTake(), 5)
        assert isinstance(reply, Received)
        assert reply.messages
        return reply.messages[0]

    message = eventually(first, timeout=20)
    assert isinstance(message, Changed)
    assert message.data.value == {"apple"}


def _reseal(conn: Any, key: str) -> None:
    """Give ``key``'s row a valid checksum again after a change (as a careless tool would)."""
    row = conn.execute(
        sa.text(
            "SELECT node, data_type, format_version, payload, replicas FROM thespian_dd_entries "
            "WHERE key = :k"
        ),
        {"k": key},
    ).one()
    columns = parts(
        row.node, key, row.data_type, row.format_version, bytes(row.payload), row.replicas
    )
    check = checksum(columns)
    conn.execute(
        sa.text("UPDATE thespian_dd_entries SET checksum = :c WHERE key = :k"),
        {"c": check, "k": key},
    )


def test_rows_are_one_per_node_and_key_and_corrupted_ones_are_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/n.db"
    node = start_node(store=url, node_name="n")
    try:
        for key in ("a", "flipped", "truncated", "future", "e"):
            node.ask(Update(key, GCounter(), lambda c, n: c.increment(n, 2)))
        node.ask(Update("swapped-1", GCounter(), lambda c, n: c.increment(n, 1)))
        node.ask(Update("swapped-2", GCounter(), lambda c, n: c.increment(n, 9)))
    finally:
        node.asys.shutdown()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT node, key, data_type FROM thespian_dd_entries")).all()
        keys = ("a", "e", "flipped", "future", "swapped-1", "swapped-2", "truncated")
        assert sorted(rows) == [("n", key, "GCounter") for key in keys]
        # Two valid payloads swapped between keys: the codec cannot tell, the row's checksum can.
        payloads: dict[str, bytes] = dict(
            conn.execute(
                sa.text(
                    "SELECT key, payload FROM thespian_dd_entries "
                    "WHERE key IN ('swapped-1', 'swapped-2')"
                )
            ).all()
        )
        for key, other in (("swapped-1", "swapped-2"), ("swapped-2", "swapped-1")):
            conn.execute(
                sa.text("UPDATE thespian_dd_entries SET payload = :p WHERE key = :k"),
                {"p": payloads[other], "k": key},
            )
        payload = bytes(
            conn.execute(
                sa.text("SELECT payload FROM thespian_dd_entries WHERE key = 'flipped'")
            ).scalar_one()
        )
        flipped = payload[:5] + bytes([payload[5] ^ 0x01]) + payload[6:]
        conn.execute(
            sa.text("UPDATE thespian_dd_entries SET payload = :p WHERE key = 'flipped'"),
            {"p": flipped},
        )
        conn.execute(
            sa.text("UPDATE thespian_dd_entries SET payload = :p WHERE key = 'truncated'"),
            {"p": payload[: len(payload) // 2]},
        )
        _reseal(conn, "truncated")  # the checksum passes: the codec must refuse it
        conn.execute(
            sa.text("UPDATE thespian_dd_entries SET format_version = 99 WHERE key = 'future'")
        )
        _reseal(conn, "future")
    engine.dispose()
    assert main(["inspect", "--store", url]) == 0
    out = capsys.readouterr().out
    assert out.count("UNREADABLE") == 5
    assert "format version 99" in out
    node = start_node(store=url, node_name="n")
    try:
        assert node.ask(Get("a")).data.value == 2
        assert node.ask(Get("e")).data.value == 2
        # Skipped, never loaded as garbage nor as another key's value.
        for key in ("flipped", "truncated", "future", "swapped-1", "swapped-2"):
            assert isinstance(node.ask(Get(key)), NotFound), key
        stats = node.ask(GetStats())
        assert stats.rejected_inputs == 5
    finally:
        node.asys.shutdown()


def test_a_value_whose_row_check_passes_but_decode_fails_is_refused_at_first_use_and_kept(
    cluster_factory: Any, tmp_path: Path
) -> None:
    """A row whose checksum vouches for bytes the codec refuses (written so, or resealed by a
    careless tool) loads as its bytes, as every value now loads; its first use refuses it as a
    row refused at load is: never served, counted in ``refused_rows``, logged the same way, and
    its row is never overwritten nor deleted (by the decode in slices after the load, by a read,
    by an update of another key, by gossip and pruning rounds, nor by a restart)."""
    cluster = cluster_factory(1, store=_store(tmp_path))
    for key in ("good", "bad", "other"):
        cluster.ask(0, Update(key, GCounter(), _increment(3)))
    cluster.kill(0)
    engine = sa.create_engine(cluster.store_url(0))
    query = sa.text("SELECT payload, checksum FROM thespian_dd_entries WHERE key = 'bad'")
    with engine.begin() as conn:
        payload = bytes(conn.execute(query).one().payload)
        # One bit of the codec body: the value's own checksum no longer matches.
        damaged = payload[:6] + bytes([payload[6] ^ 0x01]) + payload[7:]
        conn.execute(
            sa.text("UPDATE thespian_dd_entries SET payload = :p WHERE key = 'bad'"),
            {"p": damaged},
        )
        _reseal(conn, "bad")  # the row's checksum passes: only the decode can tell
        stored = conn.execute(query).one()
    for restart in range(2):
        cluster.restart(0)
        assert isinstance(cluster.ask(0, Get("bad")), NotFound)
        assert _value(cluster, 0, "good").value == 3
        cluster.ask(0, Update("other", GCounter(), _increment(1)))
        assert _value(cluster, 0, "other").value == 4 + restart
        stats = cluster.ask(0, GetStats())
        assert isinstance(stats, Stats)
        assert (stats.keys, stats.refused_rows, stats.rejected_inputs) == (2, 1, 1), stats
        # Gossip rounds (and the pruning rounds between them) pass over the refused key.
        _rounds_pass(cluster, 0, stats.gossip_rounds + 3)
        cluster.kill(0)
        with engine.begin() as conn:
            assert tuple(conn.execute(query).one()) == tuple(stored)
    engine.dispose()
    log = (cluster.workdir / "node-1.log").read_text()
    assert log.count("skipped stored key 'bad' of node-1: ") == 2, log


def _set_column(url: str, key: str, column: str, value: Any) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE thespian_dd_entries SET {column} = :v WHERE key = :k"),
            {"v": value, "k": key},
        )
    engine.dispose()


def test_a_signed_store_loads_only_rows_signed_with_its_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path}/n.db"
    key_file, other_file = tmp_path / "signing.key", tmp_path / "other.key"
    key_file.write_bytes(b"a secret of the nodes' operators")
    other_file.write_bytes(b"someone else's secret")
    node = start_node(store=url, node_name="n")  # no key yet: a checksum only
    try:
        assert isinstance(node.ask(Update("plain", GCounter(), _increment(1))), UpdateSuccess)
    finally:
        node.asys.shutdown()
    node = start_node(store=url, node_name="n", signing_key_file=str(key_file))
    try:
        assert isinstance(node.ask(Get("plain")), NotFound)  # not signed: refused
        assert node.ask(GetStats()).refused_rows == 1
        for key in ("signed", "tampered", "moved"):
            assert isinstance(node.ask(Update(key, GCounter(), _increment(7))), UpdateSuccess)
    finally:
        node.asys.shutdown()
    _set_column(url, "tampered", "replicas", "n#1")  # any column the MAC covers
    _set_column(url, "moved", "node", "m")  # a row passed off as another node's
    # A careless tool recomputing the plain checksum does not make a row loadable either.
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        _reseal(conn, "plain")
    engine.dispose()

    assert main(["inspect", "--store", url, "--signing-key-file", str(key_file)]) == 0
    out = capsys.readouterr().out
    assert out.count("UNREADABLE") == 2  # plain, tampered ("moved" is now unknown node m's)
    assert "not signed" in out
    assert "MAC does not match" in out
    assert main(["inspect", "--store", url, "--node", "n"]) == 0  # without the key
    assert "signing key" in capsys.readouterr().out

    node = start_node(store=url, node_name="n", signing_key_file=str(key_file))
    try:
        assert node.ask(Get("signed")).data.value == 7
        for key in ("plain", "tampered", "moved"):
            assert isinstance(node.ask(Get(key)), NotFound), key
        stats = node.ask(GetStats())
        assert stats.refused_rows == 2  # "moved" is node m's row now, and m is not loaded
    finally:
        node.asys.shutdown()
    # Another key verifies no row; no key verifies only the plain checksum.
    for other, refused in ((str(other_file), 3), (None, 2)):
        node = start_node(store=url, node_name="n", signing_key_file=other)
        try:
            assert isinstance(node.ask(Get("signed")), NotFound)
            assert node.ask(GetStats()).refused_rows == refused
        finally:
            node.asys.shutdown()


def test_a_missing_signing_key_file_fails_the_start_with_the_reason(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.key"
    with pytest.raises(RuntimeError, match=r"signing key file .*nowhere\.key"):
        start_node(store=f"sqlite:///{tmp_path}/n.db", signing_key_file=str(missing))


def test_a_store_that_cannot_be_opened_is_refused_with_the_reason(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the store's directory should be")
    with pytest.raises(RuntimeError, match="the store cannot be loaded"):
        start_node(store=f"sqlite:///{blocker}/n.db", node_name="n")


def test_a_sync_write_to_a_node_with_no_timer_due_is_committed_and_acknowledged(
    tmp_path: Path,
) -> None:
    """Found while moving sync commits to the end of the loop's turn: the loop that runs the
    turn ends is installed as the Replicator starts, but the loop already running is Thespian's,
    which goes on until a timer ends its run.  A node whose timers were all far off (gossip
    every 30 s, deltas with it) never ran the new loop, never committed its writes, and every
    sync Update timed out.  The Replicator now ends that run at once."""
    node = start_node(
        store=f"sqlite:///{tmp_path}/n.db",
        node_name="n",
        gossip_interval=30.0,
        delta_interval=0,
        pruning_interval=600.0,
    )
    try:
        for _ in range(3):
            reply = node.ask(Update("hits", GCounter(), _increment(1)), timeout=5.0)
            assert reply == UpdateSuccess("hits", None), reply
        assert node.ask(GetStats()).store_queue_depth == 0
    finally:
        node.asys.shutdown()
    node = start_node(store=f"sqlite:///{tmp_path}/n.db", node_name="n")
    try:
        assert node.ask(Get("hits")).data.value == 3
    finally:
        node.asys.shutdown()


def test_quorum_writes_between_durable_nodes_are_acknowledged_after_commit(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(3, store=_store(tmp_path), gossip_interval=30.0, delta_interval=0)
    eventually(lambda: all(cluster.ask(i, GetStats()).peers == 2 for i in range(3)), timeout=20)
    write = Update("q", GCounter(), _increment(1), WriteAll(5.0))
    assert isinstance(cluster.ask(0, write), UpdateSuccess)
    # The same value again: the peers already hold it (nothing new to store) and must still ack.
    same = Update("q", GCounter(), lambda c, n: c, WriteAll(5.0))
    assert isinstance(cluster.ask(0, same), UpdateSuccess)
    for i in range(3):
        cluster.kill(i)
    cluster.restart(1)
    assert _value(cluster, 1, "q").value == 1  # node 1 stored it before acknowledging


# -- every store -----------------------------------------------------------------------------------


def test_restarts_restore_the_merged_view_on_every_store(
    cluster_factory: Any, store_url: str
) -> None:
    """The seed's verification on SQLite, PostgreSQL and MariaDB: two replicas write the same
    key (5 and 3), both restart, and the merged value (8) is back; a subscriber of a restarted
    node gets the recovered value before anything else."""
    cluster = cluster_factory(2, store=store_url)
    assert isinstance(cluster.ask(0, Update("k", GCounter(), _increment(5))), UpdateSuccess)
    assert isinstance(cluster.ask(1, Update("k", GCounter(), _increment(3))), UpdateSuccess)
    assert isinstance(cluster.ask(0, Update("cart", ORSet(), _add("apple"))), UpdateSuccess)
    assert isinstance(cluster.ask(0, Update("big", ORSet(), _add("x" * 100_000))), UpdateSuccess)

    def merged_and_stored() -> bool:
        for i in range(2):
            assert getattr(_value(cluster, i, "k"), "value", None) == 8
            assert getattr(_value(cluster, i, "cart"), "value", None) == {"apple"}
            assert cluster.ask(i, GetStats()).store_queue_depth == 0
        return True

    eventually(merged_and_stored, timeout=30, what="both nodes merged and stored 8")
    for i in range(2):
        cluster.kill(i)
    for i in range(2):
        cluster.restart(i)
    node = cluster.nodes[1]
    probe = node.client.createActor(Probe)
    node.client.tell(node.replicator, Subscribe("k", subscriber=probe))
    first = eventually(lambda: _first_message(node, probe), timeout=20)
    assert isinstance(first, Changed)
    assert first.data.value == 8
    for i in range(2):
        assert _value(cluster, i, "k").value == 8
        assert _value(cluster, i, "cart").value == {"apple"}
        assert _value(cluster, i, "big").value == {"x" * 100_000}  # > MariaDB's 64 KiB BLOB


def _first_message(node: Any, probe: Any) -> Any:
    reply = node.client.ask(probe, ProbeTake(), 5)
    assert isinstance(reply, Received)
    assert reply.messages
    return reply.messages[0]


# -- write modes and durable keys -----------------------------------------------------------------


def _rows(url: str) -> dict[str, float]:
    """key -> updated_at of every stored row of a SQLite store, read directly."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            query = sa.text("SELECT key, updated_at FROM thespian_dd_entries")
            return {str(row[0]): float(row[1]) for row in conn.execute(query)}
    finally:
        engine.dispose()


def test_write_behind_commits_every_interval_even_under_steady_writes(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/wb.db"
    node = start_node(
        store=url, node_name="wb", write_mode="write-behind", write_behind_interval=0.5
    )
    try:
        started = time.time()
        first_commit = None
        # Writes back to back for 3 s: the flush timer must not be pushed back.
        while time.time() - started < 3.0:
            assert isinstance(node.ask(Update("hot", GCounter(), _increment(1))), UpdateSuccess)
            if first_commit is None and "hot" in _rows(url):
                first_commit = time.time() - started
        assert first_commit is not None, "nothing committed during 3 s of steady writes"
        assert first_commit < 2.0, "the commit waited for the writes to stop"
        # Coalesced: one row, holding the latest value, once the interval is over.
        eventually(lambda: node.ask(GetStats()).store_queue_depth == 0, timeout=5)
        assert node.ask(GetStats()).last_flush is not None
    finally:
        node.asys.shutdown()
    node = start_node(store=url, node_name="wb")
    try:
        total = node.ask(Get("hot")).data.value
        assert total > 50
    finally:
        node.asys.shutdown()


def test_write_behind_flushes_on_a_graceful_stop(cluster_factory: Any, tmp_path: Path) -> None:
    cluster = cluster_factory(
        1, store=_store(tmp_path), write_mode="write-behind", write_behind_interval=600.0
    )
    for k in range(20):
        assert isinstance(cluster.ask(0, Update(f"k{k}", GCounter(), _increment(k))), UpdateSuccess)
    assert cluster.ask(0, GetStats()).store_queue_depth == 20  # nothing committed yet
    cluster.stop()  # SIGTERM: the node flushes before it exits
    cluster.restart(0)
    for k in range(20):
        assert _value(cluster, 0, f"k{k}").value == k


WRITE_BEHIND_INTERVAL = 0.5
LOSS_BOUND = WRITE_BEHIND_INTERVAL + 1.0
"""The bound of docs/durability.md ("Write modes, and what a crash can lose"): a crash loses at
most the updates acknowledged in the last write_behind_interval plus the time one commit takes
(a second here, generously)."""


def test_write_behind_keeps_its_bound_when_a_commit_outlasts_the_interval(
    cluster_factory: Any, tmp_path: Path
) -> None:
    """A flush tick that fires while a slow batch commits must flush right after that batch:
    dropped, what was acknowledged meanwhile would wait for the next write, for ever if none
    comes, and a crash would lose it beyond the bound."""
    cluster = cluster_factory(
        1,
        store=_store(tmp_path),
        write_mode="write-behind",
        write_behind_interval=WRITE_BEHIND_INTERVAL,
    )
    acknowledged = 0
    outage = cluster.store_outage(0)  # a commit now waits for the lock (SQLite busy timeout 5 s)
    try:
        started = time.monotonic()
        while time.monotonic() - started < 3 * WRITE_BEHIND_INTERVAL:  # the first batch hangs
            reply = cluster.ask(0, Update("c", GCounter(), _increment(1)))
            assert isinstance(reply, UpdateSuccess)
            acknowledged += 1
        stopped = time.monotonic()
        while time.monotonic() - stopped < 2 * WRITE_BEHIND_INTERVAL:  # the last tick fires
            assert isinstance(cluster.ask(0, Get("c")), GetSuccess)  # reads arm no timer
    finally:
        outage.end()
    released = time.monotonic()
    while time.monotonic() - released < LOSS_BOUND:  # every write is now older than the bound
        assert isinstance(cluster.ask(0, Get("c")), GetSuccess)
    cluster.kill(0)
    cluster.restart(0)
    assert _value(cluster, 0, "c").value == acknowledged


def test_write_behind_loses_only_the_last_interval_in_a_full_cluster_kill(
    cluster_factory: Any, tmp_path: Path, figure: Callable[[str], None]
) -> None:
    cluster = cluster_factory(
        3,
        store=_store(tmp_path),
        write_mode="write-behind",
        write_behind_interval=WRITE_BEHIND_INTERVAL,
    )
    acked: dict[str, float] = {}
    for k in range(600):
        element = f"e{k}"
        reply = cluster.ask(k % 3, Update(f"s{k % 10}", ORSet(), _add(element)))
        assert isinstance(reply, UpdateSuccess)
        acked[element] = time.time()
    killed_at = time.time()
    for i in range(3):
        cluster.kill(i)
    for i in range(3):
        cluster.restart(i)
    present: set[str] = set()
    for j in range(10):
        for i in range(3):
            value = _value(cluster, i, f"s{j}")
            present |= set() if isinstance(value, NotFound) else value.value
    lost = {e: killed_at - at for e, at in acked.items() if e not in present}
    figure(
        f"write-behind full-cluster kill: {len(lost)} of {len(acked)} acknowledged updates lost, "
        f"all acknowledged within {max(lost.values(), default=0):.2f} s before the kill "
        f"(bound {LOSS_BOUND} s)"
    )
    assert all(age <= LOSS_BOUND for age in lost.values()), sorted(lost.values())[-5:]


def test_only_keys_matching_durable_keys_persist(cluster_factory: Any, tmp_path: Path) -> None:
    cluster = cluster_factory(1, store=_store(tmp_path), durable_keys=["cart-*", "settings"])
    for key in ("cart-1", "cart-2", "settings", "session-9", "cartography"):
        assert isinstance(cluster.ask(0, Update(key, GCounter(), _increment(1))), UpdateSuccess)
    cluster.kill(0)
    cluster.restart(0)
    assert sorted(cluster.ask(0, GetKeys()).keys) == ["cart-1", "cart-2", "settings"]


# -- recovery -------------------------------------------------------------------------------------


def _actor_system(port: int, **settings: Any) -> Any:
    """A node whose Replicator takes its settings from capabilities (not started yet)."""
    capabilities = {"Admin Port": port, **{f"thespian_dd.{k}": v for k, v in settings.items()}}
    return ActorSystem("multiprocTCPBase", capabilities, transientUnique=True, logDefs=None)


def _big_store(tmp_path: Path) -> str:
    """A store of node "n" with 25,000 filler keys and "hits" = 5: its load takes seconds, in
    many chunks."""
    url = f"sqlite:///{tmp_path}/l.db"
    store = Store(url)
    old = ReplicaId("n", store.next_incarnation("n"))
    filler = encode(GCounter().increment(old, 1))
    store.write("n", {f"f{k}": Entry("GCounter", filler, str(old)) for k in range(25_000)})
    store.write("n", {"hits": Entry("GCounter", encode(GCounter().increment(old, 5)), str(old))})
    store.close()
    return url


def test_a_subscribe_and_a_get_sent_while_loading_see_the_recovered_value(tmp_path: Path) -> None:
    asys = _actor_system(free_port(), store=_big_store(tmp_path), node_name="n")
    try:
        replicator = asys.createActor(Replicator, globalName=REPLICATOR_NAME)
        probe = asys.createActor(Probe)
        asys.tell(replicator, Subscribe("hits", subscriber=probe))
        assert asys.ask(replicator, GetReplicaCount(), 10) == ReplicaCount(0)  # still loading
        assert _reply(asys, replicator, Get("hits"), GetSuccess).data.value == 5

        def first() -> Any:
            reply = asys.ask(probe, ProbeTake(), 5)
            assert isinstance(reply, Received)
            assert reply.messages
            return reply.messages[0]

        message = eventually(first, timeout=20, what="the subscriber hears the recovered value")
        assert isinstance(message, Changed)
        assert message.data.value == 5
    finally:
        asys.shutdown()


def test_an_update_sent_while_loading_is_applied_after_the_load(tmp_path: Path) -> None:
    """Akka #22150: an Update applied before the load, under the same node id, loses counts.
    25,000 stored keys make the load long enough to be seen (ReplicaCount 0), in many chunks."""
    url = _big_store(tmp_path)
    asys = _actor_system(free_port(), store=url, node_name="n")
    try:
        replicator = asys.createActor(Replicator, globalName=REPLICATOR_NAME)
        for _ in range(10):
            asys.tell(replicator, Update("hits", GCounter(), _increment(1)))
        seen_loading = asys.ask(replicator, GetReplicaCount(), 10)
        start(asys)
        assert seen_loading == ReplicaCount(0)
        # The endpoint also receives the ten UpdateSuccess replies: skip them.
        assert _reply(asys, replicator, Get("hits"), GetSuccess).data.value == 15
        assert len(_reply(asys, replicator, GetKeys(), Keys).keys) == 25_001
    finally:
        asys.shutdown()


def _reply(asys: Any, target: Any, message: Any, kind: type) -> Any:
    """The first reply of type ``kind`` to ``message`` (other messages are skipped)."""
    reply = asys.ask(target, message, 10)
    while reply is not None and not isinstance(reply, kind):
        reply = asys.listen(10)
    assert reply is not None, f"no {kind.__name__} within 10 s"
    return reply


def test_a_killed_durable_writer_is_replaced_and_nothing_acknowledged_is_lost(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(1, store=_store(tmp_path))
    acknowledged = 0
    kills = 0
    for k in range(300):
        if k % 60 == 30:  # SIGKILL the DurableWriter mid-stream, five times
            assert cluster.kill_writer(0), "the Replicator has no DurableWriter process"
            kills += 1
            cluster.tell(0, Update("hits", GCounter(), _increment(1)))  # in flight at the kill
        reply = cluster.ask(0, Update("hits", GCounter(), _increment(1)), timeout=20)
        if isinstance(reply, UpdateSuccess):
            acknowledged += 1
    assert kills == 5
    assert acknowledged == 300  # a new writer took over every time
    cluster.kill(0)
    cluster.restart(0)
    # Every increment exactly once: the acknowledged ones, and the one told at each kill (applied
    # before the next acknowledged one, so committed with it).  The batches are committed on the
    # Replicator's commit thread, ended for each fork of a new writer and started again after.
    assert _value(cluster, 0, "hits").value == acknowledged + kills


def _threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_the_replicator_forks_its_children_with_no_commit_thread_running(
    cluster_factory: Any, tmp_path: Path
) -> None:
    """Sync batches are committed on a thread of the Replicator's process; a child (a new
    DurableWriter, an Introducer) is created by forking that process, which must copy no other
    thread: the thread ends before each fork, and the next write starts another."""
    cluster = cluster_factory(1, store=_store(tmp_path))
    replicator = cluster.ask(0, DescribeProcess())
    assert isinstance(replicator, ProcessInfo)
    assert cluster.ask(0, Update("hits", GCounter(), _increment(1))) == UpdateSuccess("hits", None)
    assert _threads(replicator.pid) == 2  # the actor's own, and the commit thread
    [writer] = _children(replicator.pid)
    assert cluster.kill_writer(0) == 1
    eventually(lambda: _children(replicator.pid) not in ([], [writer]), what="a new DurableWriter")
    assert _threads(replicator.pid) == 1  # ended for the fork; no write since
    assert cluster.ask(0, Update("hits", GCounter(), _increment(1))) == UpdateSuccess("hits", None)
    assert _threads(replicator.pid) == 2
    cluster.kill(0)
    cluster.restart(0)
    assert _value(cluster, 0, "hits").value == 2


def test_regression_sync_writes_committed_at_a_graceful_stop_are_acknowledged(
    tmp_path: Path,
) -> None:
    """History: five sync Updates, then the Replicator's ActorExitRequest, told back to back.
    The stop committed every write (the commit thread finishes what it was given), but their
    replies came from the thread's answers, which only a later watch wakeup delivered, and none
    comes to an actor that exits: the writes were stored and never acknowledged."""
    url = f"sqlite:///{tmp_path}/n.db"
    asys = _actor_system(free_port(), store=url, node_name="n")
    try:
        replicator = asys.createActor(Replicator, globalName=REPLICATOR_NAME)
        eventually(lambda: asys.ask(replicator, GetStats(), 5).serving, what="the load")
        keys = [f"k{i}" for i in range(5)]
        for key in keys:
            asys.tell(replicator, Update(key, GCounter(), _increment(1)))
        asys.tell(replicator, ActorExitRequest())
        replies: list[str] = []
        deadline = time.monotonic() + 20
        while len(replies) < len(keys) and time.monotonic() < deadline:
            reply = asys.listen(1)
            if isinstance(reply, UpdateSuccess):
                replies.append(reply.key)
        assert sorted(replies) == keys
    finally:
        asys.shutdown()
    store = Store(url)
    try:
        stored = {key: payload for key, payload, _error in store.load("n")}
        assert all(stored.get(key) is not None for key in keys)
    finally:
        store.close()


def test_a_store_outage_while_running_fails_writes_then_they_resume(tmp_path: Path) -> None:
    path = tmp_path / "o.db"
    url = f"sqlite:///{path}"
    node = start_node(store=url, node_name="o")
    try:
        assert isinstance(node.ask(Update("k", GCounter(), _increment(1))), UpdateSuccess)
        lock = sqlite3.connect(path, isolation_level=None)
        lock.execute("BEGIN EXCLUSIVE")  # the store is down for writers
        try:
            reply = node.ask(Update("k", GCounter(), _increment(1)), timeout=20)
            assert isinstance(reply, StoreFailure), reply
            assert "locked" in reply.error
            assert node.ask(Get("k")).data.value == 2  # applied in memory, as in Akka
            stats = node.ask(GetStats())
            assert stats.store_failures >= 1
            assert stats.store_error is not None
        finally:
            lock.execute("ROLLBACK")
            lock.close()

        def resumed() -> bool:
            stats = node.ask(GetStats())
            assert stats.store_error is None
            assert stats.store_queue_depth == 0
            return True

        eventually(resumed, timeout=10, what="the failed write committed once the store is back")
        assert isinstance(node.ask(Update("k", GCounter(), _increment(1))), UpdateSuccess)
    finally:
        node.asys.shutdown()
    node = start_node(store=url, node_name="o")
    try:
        assert node.ask(Get("k")).data.value == 3
    finally:
        node.asys.shutdown()


def test_a_store_unreadable_at_start_is_never_overwritten_and_served_when_back(
    tmp_path: Path,
) -> None:
    path = tmp_path / "u.db"
    url = f"sqlite:///{path}"
    node = start_node(store=url, node_name="u")
    try:
        node.ask(Update("k", GCounter(), _increment(4)))
    finally:
        node.asys.shutdown()
    before = _rows(url)
    asys = _actor_system(free_port(), store=url, node_name="u")
    # Locked only now: an SQLite connection must not be open when the ActorSystem forks.
    lock = sqlite3.connect(path, isolation_level=None)
    lock.execute("BEGIN EXCLUSIVE")
    try:
        replicator = asys.createActor(Replicator, globalName=REPLICATOR_NAME)

        def refused() -> GetFailure:
            reply = asys.ask(replicator, Get("k"), 10)
            assert isinstance(reply, GetFailure), reply
            return reply

        failure = eventually(refused, timeout=20)
        assert "the store cannot be loaded" in failure.error
        assert "locked" in failure.error
        update = asys.ask(replicator, Update("k", GCounter(), _increment(1)), 10)
        assert isinstance(update, ModifyFailure)
        stats = asys.ask(replicator, GetStats(), 10)  # still answered: it says why
        assert isinstance(stats, Stats)
        assert "the store cannot be loaded" in (stats.store_error or "")
        assert not stats.serving
        status = asys.ask(replicator, GetStatus(), 10)  # answered too, not serving
        assert isinstance(status, Status)
        assert not status.serving
        assert status.store == url
        assert "the store cannot be loaded" in (status.store_error or "")
        malformed = object.__new__(GetStatus)  # as another version might send it
        object.__setattr__(malformed, "largest", "all")
        object.__setattr__(malformed, "request", "m")
        refused = asys.ask(replicator, malformed, 10)
        assert isinstance(refused, InvalidRequest), refused  # not Thespian's PoisonMessage
        assert "malformed GetStatus" in refused.error
        lock.execute("ROLLBACK")
        lock.close()

        def served() -> bool:
            reply = asys.ask(replicator, Get("k"), 5)
            assert isinstance(reply, GetSuccess), reply
            return bool(reply.data.value == 4)

        eventually(served, timeout=40, what="the stored value, once the store is back")
    finally:
        asys.shutdown()
    assert _rows(url) == before  # nothing was written while the store could not be read


def test_a_store_that_fails_to_load_is_left_byte_for_byte_as_it_was(tmp_path: Path) -> None:
    """Regression: a start on a damaged SQLite file wrote into it before failing.  History: a
    node stores 300 keys and stops; one page in the middle of the file is overwritten with
    garbage (its header and schema intact, so the store opens); a new start reads rows until
    the damaged page fails the SELECT.  The DurableWriter used to commit the node's next
    incarnation before reading a row, and closing the engine then checkpointed that write into
    the file; each retry of the load wrote again."""
    path = tmp_path / "d.db"
    url = f"sqlite:///{path}"
    node = start_node(store=url, node_name="d")
    try:
        for i in range(300):
            node.asys.tell(node.replicator, Update(f"key-{i:04}", GCounter(), _increment(1)))
        assert isinstance(node.ask(Update("last", GCounter(), _increment(1))), UpdateSuccess)
    finally:
        node.asys.shutdown()
    data = bytearray(path.read_bytes())
    page = 4096
    middle = len(data) // page // 2 * page
    data[middle + 8 : middle + page] = bytes(range(256)) * ((page - 8) // 256) + bytes(248)
    path.write_bytes(bytes(data))
    with pytest.raises(RuntimeError, match="malformed"):
        start_node(store=url, node_name="d")
    assert path.read_bytes() == bytes(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.db"]


@pytest.mark.timeout(300)
def test_write_majority_through_rolling_restarts_never_times_out(
    cluster_factory: Any, tmp_path: Path, figure: Callable[[str], None]
) -> None:
    """Regression: in a restart storm about 8% of quorum writes timed out.  History: each node
    in turn is killed (``kill -9``) and restarted from its store; at once, every node takes
    ``WriteMajority`` updates.  A node's request failed at once when the peers it could reach
    were too few (the restarted node's peers not met yet), and a peer whose first message came
    before its hello (Thespian may reorder them) was ignored, so its ack never came: the write
    timed out though 2 of 3 nodes were up.  Now a request waits for the peers it meets, and a
    peer is learned from any message of its Replicator."""
    cluster = cluster_factory(3, store=_store(tmp_path))
    replies: Counter[str] = Counter()
    for _ in range(2):
        for restarted in range(3):
            cluster.kill(restarted)
            cluster.restart(restarted)
            for k in range(10):
                for i in (restarted, (restarted + 1) % 3, (restarted + 2) % 3):
                    update = Update(f"k{k}", GCounter(), _increment(1), WriteMajority(5.0))
                    replies[type(cluster.ask(i, update, timeout=15)).__name__] += 1
    figure(
        f"WriteMajority through 6 rolling restarts of 3 nodes: {sum(replies.values())} writes, "
        f"{replies['UpdateTimeout']} timed out"
    )
    assert replies == {"UpdateSuccess": 180}
    eventually(lambda: [_value(cluster, i, "k0").value for i in range(3)] == [18] * 3, timeout=30)


def test_a_restarted_node_recovers_from_its_store_then_catches_up_by_gossip(
    cluster_factory: Any, tmp_path: Path
) -> None:
    cluster = cluster_factory(3, store=_store(tmp_path))
    cluster.ask(2, Update("k", GCounter(), _increment(1)))
    eventually(lambda: cluster.ask(2, GetStats()).store_queue_depth == 0, timeout=10)
    cluster.kill(2)
    cluster.ask(0, Update("k", GCounter(), _increment(10)))
    cluster.ask(1, Update("later", ORSet(), _add("news")))
    # Its peers ignore it until it has been read: what it holds then came from its own store.
    for i in (0, 1):
        cluster.tell(i, PartitionForTests(frozenset({cluster.nodes[2].name})))
    cluster.restart(2)
    stats = cluster.ask(2, GetStats())
    assert stats.recovery_time is not None
    assert _value(cluster, 2, "k").value == 1
    assert cluster.ask(2, Get("later")) == NotFound("later", None)
    cluster.heal()
    eventually(lambda: _value(cluster, 2, "k").value == 11, timeout=30)
    eventually(lambda: _value(cluster, 2, "later").value == {"news"}, timeout=30)
