"""Real network partitions (:mod:`thespian_dd._testkit.netns`): hosts in Linux network
namespaces whose traffic nftables drops, on their own and under ``Cluster(network=True)``.  Needs
root, ``ip`` and ``nft``: skipped without them, failed in CI."""

from __future__ import annotations

import os
import selectors
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import ActorAddress
from thespian.system.messages.status import Thespian_StatusReq

from thespian_dd import (
    Changed,
    GCounter,
    Get,
    GetReplicaCount,
    GetStats,
    GetSuccess,
    ReplicaCount,
    Stats,
    Subscribe,
    Update,
    UpdateSuccess,
)
from thespian_dd._runtime.peers import WATCHERS, PeerTable, Record
from thespian_dd._testkit.netns import Network
from thespian_dd.data import ReplicaId
from thespian_dd.testing import (
    Cluster,
    Probe,
    ProbeSendAll,
    ProbeTake,
    Received,
    eventually,
    require_network_namespaces,
)

# Every test here makes network namespaces (the check that the machine can costs one too).
pytestmark = pytest.mark.multinode


@pytest.fixture
def network() -> Iterator[Callable[[int], Network]]:
    """``network(n)``: a new :class:`Network` of ``n`` hosts, closed after the test."""
    require_network_namespaces()
    made: list[Network] = []

    def make(n: int) -> Network:
        made.append(Network(n))
        return made[-1]

    yield make
    for net in made:
        net.close()


def _ns() -> str:
    return str(Path("/proc/thread-self/ns/net").readlink())


def _connect(net: Network, i: int, address: tuple[str, int], timeout: float = 1.0) -> str:
    """From host ``i``: 'ok', or the name of the error a TCP connect to ``address`` met."""
    with net.inside(i):
        try:
            socket.create_connection(address, timeout).close()
        except OSError as e:
            return type(e).__name__
    return "ok"


@pytest.mark.timeout(60)
def test_inside_enters_a_host_and_always_comes_back(network: Callable[[int], Network]) -> None:
    net = network(2)
    root = _ns()
    with net.inside(0):
        host0 = _ns()
        with net.inside(1):
            host1 = _ns()
        assert _ns() == host0
    assert _ns() == root
    assert len({root, host0, host1}) == 3
    with pytest.raises(ZeroDivisionError), net.inside(1):
        _ = 1 / 0
    assert _ns() == root
    with net.inside(0):
        names = socket.if_nameindex()
    assert sorted(name for _, name in names) == ["eth0", "lo"]


@pytest.mark.timeout(60)
def test_a_split_is_silence_and_heal_ends_it(network: Callable[[int], Network]) -> None:
    net = network(3)
    with net.inside(1):
        server = socket.create_server((net.address(1), 0), backlog=64)
    port = server.getsockname()[1]
    served = (net.address(1), port)
    closed = (net.address(1), port + 1 if port < 65535 else port - 1)
    try:
        assert [_connect(net, i, served) for i in (0, 2)] == ["ok", "ok"]
        assert _connect(net, 0, closed) == "ConnectionRefusedError"

        net.split([0], [1, 2])
        started = time.monotonic()
        assert _connect(net, 0, served, timeout=1.0) == "TimeoutError"
        assert time.monotonic() - started >= 0.9  # silence: nothing came back, not even a reset
        assert _connect(net, 0, closed) == "TimeoutError"  # a refusal is silenced too
        assert _connect(net, 2, served) == "ok"

        net.heal()
        assert [_connect(net, i, served) for i in (0, 2)] == ["ok", "ok"]

        net.split([0], [1])  # host 2 is in no group: it still talks to both sides
        assert [_connect(net, i, served) for i in (0, 2)] == ["TimeoutError", "ok"]
        net.isolate(2)  # replaces the earlier split
        assert [_connect(net, i, served) for i in (0, 2)] == ["ok", "TimeoutError"]
        net.heal()
        assert [_connect(net, i, served) for i in (0, 2)] == ["ok", "ok"]
    finally:
        server.close()


def _hosts_beyond_the_neighbour_table() -> int:
    """The fewest hosts whose pairs need more ARP entries than the kernel's neighbour table
    holds (``gc_thresh3``: one limit for every network namespace of the machine together)."""
    limit = int(Path("/proc/sys/net/ipv4/neigh/default/gc_thresh3").read_text())
    n = 2
    while n * (n - 1) <= limit and n < 253:
        n += 1
    return n


@pytest.mark.timeout(120)
def test_every_host_reaches_every_host_beyond_the_kernels_neighbour_table(
    network: Callable[[int], Network],
) -> None:
    """Regression: 64 nodes on a Network never meshed, 33 knew 32 peers and 31 none.  The ARP
    entries of all namespaces share one table of 1,024 (``gc_thresh3``); 32 hosts with 32 entries
    each filled it ("neighbor table overflow" in the kernel log), and no later host could
    resolve any address, not even the convention leader's.  The hosts now know each other's
    addresses from the start (permanent entries, which the limit does not count)."""
    n = _hosts_beyond_the_neighbour_table()
    net = network(n)
    servers = []
    for i in range(n):
        with net.inside(i):
            servers.append(socket.create_server((net.address(i), 0), backlog=n))
    # Every pair at once, without blocking: a pair that cannot resolve its peer never connects.
    pending: dict[socket.socket, tuple[int, int]] = {}
    with selectors.DefaultSelector() as selector:
        try:
            for i in range(n):
                for j in range(n):
                    if i != j:
                        with net.inside(i):
                            s = socket.socket()
                        s.setblocking(False)
                        s.connect_ex(servers[j].getsockname())
                        pending[s] = (i, j)
                        selector.register(s, selectors.EVENT_WRITE)
            deadline = time.monotonic() + 20
            while pending and time.monotonic() < deadline:
                for key, _ in selector.select(0.5):
                    done = key.fileobj
                    assert isinstance(done, socket.socket)
                    error = done.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    assert error == 0, (pending[done], os.strerror(error))
                    selector.unregister(done)
                    del pending[done]
                    done.close()
            assert not pending, f"{len(pending)} of {n * (n - 1)} pairs never connected"
        finally:
            for s in [*pending, *servers]:
                s.close()


def _value(cluster: Cluster, i: int, key: str, timeout: float = 5.0) -> Any:
    reply = cluster.ask(i, Get(key), timeout)
    return reply.data.value if isinstance(reply, GetSuccess) else reply


def _add(cluster: Cluster, i: int, key: str, n: int) -> None:
    def increment(counter: GCounter, node: Any) -> GCounter:
        return counter.increment(node, n)

    reply = cluster.ask(i, Update(key, GCounter(), increment), 5)
    assert reply == UpdateSuccess(key, None), reply


def _gossip_rounds(cluster: Cluster, i: int) -> int:
    stats = cluster.ask(i, GetStats(), 5)
    assert isinstance(stats, Stats), stats
    return stats.gossip_rounds


def _replicas(cluster: Cluster, i: int, timeout: float = 5.0) -> int | None:
    reply = cluster.ask(i, GetReplicaCount(), timeout)
    return reply.n if isinstance(reply, ReplicaCount) else None


def _convention_members(cluster: Cluster) -> int | None:
    """How many members the leader's admin counts (itself aside), or None."""
    assert cluster.net is not None
    client = cluster.nodes[0].client
    where = (cluster.net.address(0), cluster.nodes[0].port)
    admin = client._systemBase.transport.getAddressFromString(where)
    status = client.ask(admin, Thespian_StatusReq(), 2)
    return None if status is None else len(status.conventionAttendees)


@pytest.fixture
def cluster(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """Two nodes, each in a host of its own, with the test settings; stopped after the test."""
    return cluster_factory(2, network=True)


@pytest.mark.timeout(30)
def test_a_cluster_on_a_network_refuses_a_server_store(tmp_path: Path) -> None:
    require_network_namespaces()
    with pytest.raises(ValueError, match="cannot reach"):
        Cluster(tmp_path, 2, network=True, store="postgresql://user@localhost/db")


@pytest.mark.timeout(60)
def test_replicas_diverge_in_a_real_partition_and_converge_after_heal(
    cluster: Cluster, record_property: Callable[[str, object], None]
) -> None:
    eventually(lambda: [_replicas(cluster, i) for i in range(2)] == [2, 2], 20, what="2 replicas")
    assert _convention_members(cluster) == 1
    _add(cluster, 0, "k", 1)
    eventually(lambda: _value(cluster, 1, "k") == 1, 10, what="gossip to node 1")

    cluster.split([0], [1])
    _add(cluster, 0, "k", 10)
    _add(cluster, 1, "k", 100)
    # Five gossip rounds (and ten delta rounds) on both nodes would have carried the updates
    # across, were the network not cut.
    start = [_gossip_rounds(cluster, i) for i in range(2)]
    eventually(
        lambda: all(_gossip_rounds(cluster, i) >= start[i] + 5 for i in range(2)),
        10,
        what="five gossip rounds on each side",
    )
    assert [_value(cluster, i, "k") for i in range(2)] == [11, 101]

    cluster.heal()
    healed = time.monotonic()
    eventually(
        lambda: [_value(cluster, i, "k", 1) for i in range(2)] == [111, 111],
        30,
        what="convergence",
    )
    record_property("seconds to converge after heal", round(time.monotonic() - healed, 2))
    eventually(lambda: [_replicas(cluster, i) for i in range(2)] == [2, 2], 10, what="2 replicas")


def _watchers(names: list[str], of: str) -> list[str]:
    """The nodes that watch node ``of`` on the ring, all nodes reachable (as the Replicators'
    own peer tables decide it)."""
    watchers = []
    for name in names:
        table = PeerTable(
            failure_timeout=1.0,
            removal_timeout=2.0,
            pruned=set(),
            refused=lambda _r, _a: None,
            replaced=lambda _r: None,
            node=name,
        )
        for other in names:
            replica = ReplicaId(other, 1)
            if table.learn(ReplicaId(name, 1), replica, ActorAddress(other)):
                table.told(replica, Record())
        table.judge()
        if of in table.record.watching:
            watchers.append(name)
    return watchers


def _reachable(cluster: Cluster, i: int) -> int | None:
    stats = cluster.ask(i, GetStats(), 5)
    return stats.reachable_peers if isinstance(stats, Stats) else None


@pytest.mark.timeout(240)
def test_eight_nodes_watching_on_a_ring_each_find_exactly_their_side_of_a_real_split(
    cluster_factory: Callable[..., Cluster],
) -> None:
    """Beyond five nodes each node heartbeats only the 4 it watches.  The split puts one node
    with the three of its side that do not watch it, and its 4 watchers on the other side: its
    side must keep it reachable (no one there watched it), and find the other side unreachable
    (the watchers across the split stop vouching); and after the heal, all 7 peers again."""
    cluster = cluster_factory(8, network=True)
    n = len(cluster.nodes)
    eventually(lambda: all(_reachable(cluster, i) == n - 1 for i in range(n)), 60, what="mesh")
    lonely = cluster.names.index("node-1")
    watchers = [cluster.names.index(w) for w in _watchers(cluster.names, "node-1")]
    assert len(watchers) == WATCHERS
    side = [i for i in range(n) if i not in watchers]
    cluster.split(side, watchers)
    _add(cluster, lonely, "k", 1)
    eventually(
        lambda: (
            [_reachable(cluster, i) for i in range(n)]
            == [len(side) - 1 if i in side else len(watchers) - 1 for i in range(n)]
        ),
        30,
        what="each side reaching only itself",
    )
    for i in side:
        assert _value(cluster, i, "k") == 1  # the lonely node's update reached its side
    cluster.heal()
    eventually(lambda: all(_reachable(cluster, i) == n - 1 for i in range(n)), 30, what="heal")
    eventually(lambda: all(_value(cluster, i, "k") == 1 for i in range(n)), 30, what="converge")


@pytest.mark.timeout(60)
def test_twenty_sends_to_a_silent_peer_stall_every_send_of_the_actor(cluster: Cluster) -> None:
    """Thespian (4.0.1) lets an actor have 20 transmits in flight (THESPIAN_MAX_PENDING_TRANSMITS)
    and queues the rest in one FIFO, whatever their target.  A peer cut off by a partition never
    completes a connect, so its 20th message stalls everything the sender sends afterwards,
    replies to local clients included, until the network heals (or 5 minutes pass)."""
    near, far = cluster.nodes[0].client, cluster.nodes[1].client
    target = far.createActor(Probe)
    senders = [near.createActor(Probe) for _ in range(2)]
    cluster.split([0], [1])
    for sender, n in zip(senders, [19, 20], strict=True):
        near.tell(sender, ProbeSendAll(target, list(range(n))))
    assert isinstance(near.ask(senders[0], ProbeTake(), 3), Received)  # 19: fine
    assert near.ask(senders[1], ProbeTake(), 3) is None  # 20: stalled

    cluster.heal()

    # The stalled connect goes through at the kernel's next SYN retransmission (1, 3, 7, 15 s
    # after the first try), then the queue drains, and everything is delivered.
    def received(client: Any, probe: Any) -> list[Any] | None:
        reply = client.ask(probe, ProbeTake(), 1)
        return reply.messages if isinstance(reply, Received) else None

    eventually(
        lambda: len(received(far, target) or []) == 19 + 20, 30, what="every message delivered"
    )
    eventually(lambda: received(near, senders[1]) is not None, 10, what="the sender answers")


@pytest.mark.timeout(90)
def test_a_cut_off_replicator_keeps_answering_its_clients_while_it_writes(
    cluster_factory: Callable[..., Cluster],
) -> None:
    """Thespian keeps a transmit to a silent host in flight for as long as it may take (here
    ``failure_timeout``, 10 s), and stalls every send of an actor with 20 in flight: a node cut
    off from its two peers, updated back to back (a delta to each peer every 0.1 s), must still
    answer every request at once, and the cluster converge after the heal."""
    cluster = cluster_factory(3, network=True, failure_timeout=10.0)
    eventually(lambda: [_replicas(cluster, i) for i in range(3)] == [3] * 3, 20, what="3 replicas")
    cluster.split([0], [1, 2])
    end, writes = time.monotonic() + 12, 0
    while time.monotonic() < end:
        began = time.monotonic()
        _add(cluster, 0, "k", 1)
        _add(cluster, 1, "k", 1)
        assert time.monotonic() - began < 2.0, "a cut-off Replicator answered late"
        writes += 1
    assert _replicas(cluster, 0) == 1  # it saw its peers go
    cluster.heal()
    eventually(
        lambda: [_value(cluster, i, "k") for i in range(3)] == [2 * writes] * 3,
        40,
        what="convergence after the heal",
    )


@pytest.mark.timeout(90)
def test_a_subscriber_on_a_cut_off_node_does_not_stall_the_replicator(
    cluster_factory: Callable[..., Cluster],
) -> None:
    """Notifications to a subscriber whose node is cut off wait (one in flight, the latest value
    per key held): the Replicator keeps answering, and the subscriber hears the last value once
    the network heals."""
    cluster = cluster_factory(2, network=True, failure_timeout=10.0)
    eventually(lambda: [_replicas(cluster, i) for i in range(2)] == [2, 2], 20, what="2 replicas")
    far = cluster.nodes[1].client
    probe = far.createActor(Probe)
    cluster.tell(0, Subscribe("k", subscriber=probe))
    _add(cluster, 0, "k", 1)

    def last_heard() -> Any:
        reply = far.ask(probe, ProbeTake(), 2)
        changes = [m for m in reply.messages if isinstance(m, Changed)]
        return changes[-1].data.value if changes else None

    eventually(lambda: last_heard() == 1, 10, what="the subscriber hears the first value")
    cluster.split([0], [1])
    end, writes = time.monotonic() + 12, 1
    while time.monotonic() < end:
        began = time.monotonic()
        _add(cluster, 0, "k", 1)
        assert time.monotonic() - began < 2.0, "the Replicator answered late"
        writes += 1
    cluster.heal()
    eventually(lambda: last_heard() == writes, 40, what="the last value after the heal")
