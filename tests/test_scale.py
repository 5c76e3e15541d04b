"""The scale bounds on real nodes, at a size CI affords: a 12-node cluster gossips to a few peers
a round (idle gossip bytes per round and node bounded by the fan-out, not the cluster size),
loads 20,000 keys with gossip proportional to the values (not to the keys held) and converges;
and 30 frozen peers of 32 leave a live node's clients answered (the transmit slots grow with the
peer count); a majority write whose primaries are frozen is completed by its secondaries.  The
bench's ``scale`` section measures the same at full size."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from thespian_dd import (
    GCounter,
    Get,
    GetStats,
    GetStatus,
    GetSuccess,
    Stats,
    Status,
    Update,
    WriteMajority,
)
from thespian_dd._cli.bench_scale import _Fill, _Filled, _Loader
from thespian_dd._runtime.keys import BUCKETS
from thespian_dd._runtime.peers import GOSSIP_FANOUT
from thespian_dd.testing import Cluster, eventually

pytestmark = [pytest.mark.multinode, pytest.mark.timeout(300)]

MODERATE = {"gossip_interval": 0.5, "delta_interval": 0.1, "failure_timeout": 4.0}
"""Faster than the defaults, slow enough for 12 or 32 nodes on two shared cores."""


def _stats(cluster: Cluster, i: int) -> Stats:
    stats = cluster.ask(i, GetStats(), timeout=30)
    assert isinstance(stats, Stats), stats
    return stats


def _meshed(cluster: Cluster) -> None:
    n = len(cluster.nodes)
    eventually(
        lambda: all(_stats(cluster, i).reachable_peers == n - 1 for i in range(n)),
        timeout=120,
        what=f"{n} nodes reach each other",
    )


def _rounds_pass(cluster: Cluster, rounds: int) -> None:
    """Wait until every node has run ``rounds`` more gossip rounds."""
    n = len(cluster.nodes)
    start = [_stats(cluster, i).gossip_rounds for i in range(n)]
    eventually(
        lambda: all(_stats(cluster, i).gossip_rounds >= start[i] + rounds for i in range(n)),
        timeout=rounds * MODERATE["gossip_interval"] * 10,
        what=f"{rounds} gossip rounds on every node",
    )


def _load(cluster: Cluster, keys: int, loaders: int = 4) -> None:
    """Node 0 updates ``key-0`` .. ``key-<keys - 1>``, ``loaders`` actors at once."""
    node = cluster.nodes[0]
    actors = [node.client.createActor(_Loader) for _ in range(loaders)]
    step = keys // loaders
    for j, actor in enumerate(actors):
        stop = keys if j == loaders - 1 else (j + 1) * step
        node.client.tell(actor, _Fill(node.replicator, j * step, stop))
    done = 0
    deadline = time.monotonic() + 240
    while done < loaders:
        reply = node.client.listen(max(0.1, deadline - time.monotonic()))
        assert reply is not None, "the loaders did not finish"
        done += isinstance(reply, _Filled)


def test_twelve_nodes_gossip_to_a_few_peers_a_round_and_load_in_proportion_to_the_values(
    cluster_factory: Any, figure: Callable[[str], None]
) -> None:
    n, keys = 12, 20_000
    cluster = cluster_factory(n, **MODERATE)
    _meshed(cluster)
    _load(cluster, 2000)  # every bucket holds keys: a status carries all 64 digests
    eventually(lambda: all(_stats(cluster, i).keys == 2000 for i in range(n)), timeout=120)

    # Idle: a status to GOSSIP_FANOUT peers a round (heartbeats carry no gossip bytes), where
    # every node used to send one to each of its 11 peers.
    _rounds_pass(cluster, 4)  # the load's deltas and comparisons are over
    before = [_stats(cluster, i) for i in range(n)]
    _rounds_pass(cluster, 20)
    after = [_stats(cluster, i) for i in range(n)]
    sent = sum(a.gossip_bytes_out - b.gossip_bytes_out for a, b in zip(after, before, strict=True))
    rounds = sum(a.gossip_rounds - b.gossip_rounds for a, b in zip(after, before, strict=True))
    status_bytes = BUCKETS * 9
    assert sent / rounds <= (GOSSIP_FANOUT + 0.5) * status_bytes < (n - 1) * status_bytes
    idle = sent / rounds

    # Loading: gossip follows what changed (deltas, and the few buckets compared), not the keys
    # held: under 3x the values times the 11 replicas that must receive each.
    sent_before = sum(_stats(cluster, i).gossip_bytes_out for i in range(n))
    _load(cluster, keys)
    eventually(
        lambda: all(_stats(cluster, i).keys == keys for i in range(n)),
        timeout=120,
        what=f"every node holds {keys} keys",
    )
    sent = sum(_stats(cluster, i).gossip_bytes_out for i in range(n)) - sent_before
    status = cluster.ask(0, GetStatus(), timeout=30)
    assert isinstance(status, Status)
    assert sent < 3 * status.value_bytes * (n - 1)
    figure(
        f"12 nodes: idle gossip {idle:,.0f} bytes a round a node (a status to all 11 peers: "
        f"{(n - 1) * status_bytes:,}); loading {keys:,} keys sent {sent:,} gossip bytes, "
        f"{sent / (status.value_bytes * (n - 1)):.2f}x the values times 11 replicas"
    )
    reply = cluster.ask(n - 1, Get(f"key-{keys - 1}"))
    assert isinstance(reply, GetSuccess)
    assert reply.data.value == 1


def _freeze(cluster: Cluster, i: int, sig: signal.Signals) -> None:
    node = cluster.nodes[i]
    for group in (node.actors_pgid, node.popen.pid if node.popen else None):
        if group:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, sig)


def test_thirty_frozen_peers_of_thirty_two_leave_the_clients_of_a_live_node_answered(
    cluster_factory: Any, figure: Callable[[str], None]
) -> None:
    """With Thespian's 20 transmit slots shared among 31 peers, 23 silent peers were enough for
    every client request to wait for a transmit to time out (``failure_timeout``)."""
    failure = 20.0
    cluster = cluster_factory(32, gossip_interval=0.5, delta_interval=0.1, failure_timeout=failure)
    _meshed(cluster)
    frozen = range(2, 32)
    try:
        for i in frozen:
            _freeze(cluster, i, signal.SIGSTOP)
        # Writes make deltas for every peer still counted reachable; rounds, statuses and
        # heartbeats: the frozen peers' transmits hang until failure_timeout.
        started = time.monotonic()
        for r in range(200):
            update = Update(f"during-{r % 10}", GCounter(), lambda c, n: c.increment(n, 1))
            reply = cluster.ask(0, update, timeout=failure / 4)
            assert type(reply).__name__ == "UpdateSuccess", (r, reply)
        # Within the failure timeout: the frozen peers are not even unreachable yet, and every
        # one of 200 requests was answered meanwhile, none waiting for a transmit to time out.
        took = time.monotonic() - started
        assert took < failure
        assert _stats(cluster, 0).reachable_peers >= 1
        figure(f"30 of 32 nodes frozen: 200 updates answered in {took:.1f} s")
    finally:
        for i in frozen:
            _freeze(cluster, i, signal.SIGCONT)


def test_a_majority_write_whose_primaries_are_frozen_is_completed_by_the_secondaries(
    cluster_factory: Any,
) -> None:
    """7 nodes: a ``WriteMajority`` needs 3 peers and asks 5 of the 6 at once (the primaries),
    the sixth only if still short after the delay.  With 3 peers frozen but not found
    unreachable (``failure_timeout`` far off), about half the writes draw all 3 among their
    primaries: only the secondary asked after the delay completes them."""
    cluster = cluster_factory(7, gossip_interval=0.5, delta_interval=0.1, failure_timeout=60.0)
    _meshed(cluster)
    frozen = (4, 5, 6)
    try:
        for i in frozen:
            _freeze(cluster, i, signal.SIGSTOP)
        for r in range(12):  # all 12 drawing a live third primary: 1 chance in 4096
            update = Update(
                f"w-{r}", GCounter(), lambda c, n: c.increment(n, 1), WriteMajority(5.0)
            )
            reply = cluster.ask(0, update, timeout=30)
            assert type(reply).__name__ == "UpdateSuccess", (r, reply)
        assert _stats(cluster, 0).reachable_peers == 6  # the frozen ones still count as reachable
    finally:
        for i in frozen:
            _freeze(cluster, i, signal.SIGCONT)
