"""Parts: the wiring of a node's parts through Hooks, without processes.

Covered: a peer's new incarnation makes the node forget what it kept for the old one (the delta
numbering, what its send window held, the versions it announced); a transmit that finds its
target's node dead makes the open quorum requests that asked it ask a secondary; a peer heard
again is asked by the open requests that could not reach it; a peer of a pruned replica, learned
from another's directory, is told it was removed; a restored value refused when first decoded
reaches LocalData's count; and two nodes joined by hand, each one's recorded sends delivered to
the other by calling what the Replicator's handlers call, converge on an ORSet written on both
sides: by deltas, by gossip alone, and through quorum writes and reads.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fakes
import pytest
from fakes import FakeNode, replica
from thespian.actors import ActorAddress
from thespian.system.transport import SendStatus

from thespian_dd import GCounter, ORSet, ReplicaId
from thespian_dd._runtime.durability import LoadOutcome
from thespian_dd._runtime.markers import Performed
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    DeltaPropagation,
    DeltaTick,
    Every,
    GossipEntries,
    GossipKeys,
    GossipStatus,
    Heartbeat,
    LoadOverdue,
    PeerHello,
    PeerMessage,
    PeerRead,
    PeerReadResult,
    PeerRemoved,
    PeerWrite,
    PeerWriteAck,
)
from thespian_dd._runtime.settings import Settings
from thespian_dd._runtime.updates import modified
from thespian_dd._runtime.versions import MINE
from thespian_dd._runtime.writer import Loaded
from thespian_dd.codec import FORMAT_VERSION, encode
from thespian_dd.data import ReplicatedData
from thespian_dd.messages import (
    GetSuccess,
    ReadConsistency,
    ReadMajority,
    Update,
    UpdateSuccess,
    WriteAll,
    WriteConsistency,
    WriteLocal,
    WriteMajority,
    WriteTo,
)

pytestmark = pytest.mark.timeout(60)

LOGGER = "thespian_dd.replicator"
CLIENT = ActorAddress("client")


def address(name: str) -> ActorAddress:
    """Node ``name``'s address: its first incarnation's, where its next ones come back too."""
    return fakes.address(replica(name))


class Node(FakeNode):
    """A node whose transmits are finished by the test, or by :class:`Network` as it delivers
    them."""

    # -- what the Replicator's handlers do -------------------------------------------------------

    def update(
        self,
        key: str,
        initial: ReplicatedData,
        modify: Callable[[Any, ReplicaId], Any],
        consistency: WriteConsistency | None = None,
        request: Any = None,
    ) -> None:
        """An Update from CLIENT, applied as ``receiveMsg_Update`` applies it."""
        msg = Update(key, initial, modify, consistency, request)
        new, delta = modified(msg, self.parts.keys.get(key), self.me)
        self.parts.local.store(key, new)
        self.parts.keys.touch(key)
        self.parts.queue_delta(key, delta)
        self.parts.requests.write("update", CLIENT, key, request, msg.consistency)

    def get(self, key: str, consistency: ReadConsistency, request: Any = None) -> None:
        self.parts.requests.read(CLIENT, key, request, consistency)

    def fire(self, kind: type) -> None:
        """The timers of ``kind`` this node armed are due (at least one must be)."""
        due = [payload for _, payload in self.woken if isinstance(payload, kind)]
        assert due, f"no {kind.__name__} armed"
        self.woken[:] = [(t, p) for t, p in self.woken if not isinstance(p, kind)]
        for payload in due:
            self.parts.on_timer(payload)

    def gossip_round(self) -> None:
        """The gossip round's timer is due."""
        self.parts.on_timer(Every("gossip_round", "gossip_interval"))

    def replies(self) -> list[Any]:
        """What CLIENT was sent (taken)."""
        replies = [m for to, m in self.sent if to == CLIENT]
        self.sent[:] = [(to, m) for to, m in self.sent if to != CLIENT]
        return replies

    def peer_writes(self) -> list[tuple[Any, PeerWrite]]:
        return [(t.address, t.message) for t in self.wire.sent if isinstance(t.message, PeerWrite)]


@dataclass
class Network:
    """Nodes joined by hand: every transmit and send of one node addressed to another is
    finished and delivered, in order, until nothing is left to deliver."""

    nodes: dict[str, Node]
    delivered: list[PeerMessage] = field(default_factory=list)

    def node_at(self, to: Any) -> Node | None:
        return next((n for n in self.nodes.values() if n.address == to), None)

    def run(self, limit: int = 10_000) -> None:
        for _ in range(limit):
            moved = False
            for node in self.nodes.values():
                for transmit in node.wire.pending():
                    if (target := self.node_at(transmit.address)) is not None:
                        node.wire.finish(transmit)
                        self.deliver(target, transmit.message, node.address)
                        moved = True
                to_peers = [(to, m) for to, m in node.sent if self.node_at(to) is not None]
                node.sent[:] = [(to, m) for to, m in node.sent if self.node_at(to) is None]
                for to, message in to_peers:
                    target = self.node_at(to)
                    assert target is not None
                    self.deliver(target, message, node.address)
                    moved = True
            if not moved:
                return
        raise AssertionError("the nodes never stopped talking")

    def deliver(self, target: Node, message: PeerMessage, sender: Any) -> None:
        self.delivered.append(message)
        target.parts.on_peer_message(message, sender)

    def meet(self, a: str, b: str) -> None:
        """``a`` introduces itself to ``b`` (as an Introducer would carry its hello)."""
        self.deliver(self.nodes[b], self.nodes[a].parts.membership.hello(reply=True), None)
        self.run()


def network(*names: str, **settings: Any) -> Network:
    net = Network({name: Node(Settings(**settings), replica(name)) for name in names})
    for other in names[1:]:
        net.meet(names[0], other)
    return net


def add(element: str) -> Callable[[Any, ReplicaId], Any]:
    return lambda s, node: s.add(node, element)


def hello(sender: ReplicaId, peers: dict[str, tuple[ReplicaId, Any]] | None = None) -> PeerHello:
    return fakes.hello(sender, peers=peers, at=address(sender.node))


# -- incarnations --------------------------------------------------------------------------------


def test_a_peers_new_incarnation_forgets_its_deltas_window_and_versions() -> None:
    node = Node(slots=7)  # one message in flight per peer: the rest is held
    old, new = ReplicaId("b", 1), ReplicaId("b", 2)
    parts = node.parts
    node.receive(hello(old), address("b"))
    assert parts.window.in_flight(old) == 1
    assert parts.window.held(old) != []  # the status after the hello's answer
    assert parts.versions.speaks("b") == MINE
    assert parts.versions.format("b") == FORMAT_VERSION
    node.receive(DeltaPropagation(PROTOCOL_VERSION, old, 1, {}), address("b"))
    assert parts.deltas.received(old, 3)  # 2 is missing: numbered per incarnation

    # Its first message as the new incarnation is no hello: it announces no versions.
    node.receive(Heartbeat(PROTOCOL_VERSION, new), address("b"))

    peer = parts.peers.get("b")
    assert peer is not None
    assert peer.replica == new
    assert parts.window.in_flight(old) == 0
    assert parts.window.held(old) == []
    assert not parts.deltas.received(old, 1)  # its count starts again, from 1: no gap
    assert parts.versions.speaks("b") is None  # it may run another release now
    assert parts.versions.format("b") == 1  # the safe guess until it says
    assert parts.report.status(node.me, 0, None).peers[0].versions == ""
    node.receive(hello(new), address("b"))
    assert parts.versions.speaks("b") == MINE


def test_a_new_incarnation_that_announces_first_keeps_its_versions() -> None:
    node = Node()
    node.receive(hello(ReplicaId("b", 1)), address("b"))
    node.receive(hello(ReplicaId("b", 2)), address("b"))
    assert node.parts.versions.speaks("b") == MINE
    assert node.parts.versions.format("b") == FORMAT_VERSION


# -- quorum requests -----------------------------------------------------------------------------


def with_peers(node: Node, names: str) -> None:
    for name in names:
        node.receive(hello(replica(name)), address(name))
    node.out()


def test_a_dead_target_makes_the_open_requests_that_asked_it_ask_a_secondary() -> None:
    node = Node()
    with_peers(node, "bcdef")
    node.update("k", GCounter(), lambda c, n: c.increment(n), WriteTo(2, 5.0), "r1")
    primaries = node.peer_writes()
    assert len(primaries) == 3  # the one needed and two extra; two peers wait as secondaries
    (request_id,) = {w.request_id for _, w in primaries}
    dead_address, _ = primaries[0]
    (dead,) = [t for t in node.wire.pending(dead_address) if isinstance(t.message, PeerWrite)]

    node.wire.finish(dead, SendStatus.DeadTarget)

    dead_name = next(n for n in "bcdef" if address(n) == dead_address)
    dead_peer = node.parts.peers.get(dead_name)
    assert dead_peer is not None
    assert not dead_peer.reachable
    asked = node.peer_writes()
    assert len(asked) == 4
    assert asked[:3] == primaries
    secondary, write = asked[3]
    assert secondary not in [to for to, _ in primaries]  # addresses are not hashable
    assert write.request_id == request_id
    assert node.replies() == []  # still waiting for one answer


def test_a_peer_the_failure_detector_loses_is_replaced_by_a_secondary() -> None:
    node = Node(Settings(failure_timeout=10.0))
    with_peers(node, "bcdef")
    node.update("k", GCounter(), lambda c, n: c.increment(n), WriteTo(2, 5.0), "r1")
    primaries = node.peer_writes()
    silent = next(n for n in "bcdef" if address(n) == primaries[0][0])
    node.clock.now += 11
    for name in "bcdef":
        if name != silent:
            node.receive(Heartbeat(PROTOCOL_VERSION, replica(name)), address(name))
    node.parts.membership.round()
    asked = node.peer_writes()
    assert len(asked) == 4
    assert asked[3][0] not in [to for to, _ in primaries]
    assert asked[3][1].request_id == primaries[0][1].request_id


def test_a_peer_heard_again_is_asked_by_the_requests_that_could_not_reach_it() -> None:
    node = Node()
    with_peers(node, "bc")
    assert node.parts.membership.left("c") is not None  # unreachable: not asked
    node.update("k", GCounter(), lambda c, n: c.increment(n), WriteAll(5.0), "r1")
    assert [to for to, _ in node.peer_writes()] == [address("b")]
    node.receive(Heartbeat(PROTOCOL_VERSION, ReplicaId("c", 1)), address("c"))
    assert [to for to, _ in node.peer_writes()] == [address("b"), address("c")]
    node.out()
    for name in "bc":
        request_id = node.peer_writes()[0][1].request_id
        node.receive(PeerWriteAck(PROTOCOL_VERSION, replica(name), request_id), address(name))
    assert node.replies() == [UpdateSuccess("k", "r1")]


# -- pruned replicas and refused rows ------------------------------------------------------------


def test_a_pruned_replica_learned_from_a_directory_is_told_it_was_removed() -> None:
    node = Node()
    pruned = ReplicaId("b", 1)
    node.parts.local.store("k", GCounter().increment(node.me), markers={pruned: Performed(10**15)})
    node.receive(hello(ReplicaId("c", 1), {"b": (pruned, address("b"))}), address("c"))
    assert (address("b"), PeerRemoved(PROTOCOL_VERSION, node.me, pruned)) in node.sent
    assert node.parts.peers.get("b") is None
    assert node.parts.peers.get("c") is not None


def test_a_restored_value_refused_when_first_decoded_reaches_the_refused_rows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = Node()
    undecodable = b"TDD" + bytes((FORMAT_VERSION,)) + b"\xff" * 24
    node.parts.local.restore([("good", encode(GCounter())), ("late", undecodable)], 0)
    assert node.parts.local.refused_rows == 0  # restored as bytes: not decoded yet
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        assert node.parts.keys.decode_for(1.0) == 0  # the slices after a load
    assert node.parts.local.refused_rows == 1
    assert node.parts.rejections.count == 1
    assert node.parts.keys.names() == {"good"}
    (logged,) = caplog.records
    assert logged.getMessage().startswith("skipped stored key 'late' of a: ")
    stats = node.parts.report.stats(node.me, node.parts.local.refused_rows, None)
    assert stats.refused_rows == 1


# -- two nodes joined by hand ----------------------------------------------------------------------


def values(net: Network, key: str) -> list[Any]:
    return [node.parts.keys.get(key) for node in net.nodes.values()]


def digests(net: Network) -> list[dict[str, bytes]]:
    return [dict(node.parts.keys.digests()) for node in net.nodes.values()]


def test_nodes_joined_by_hand_meet_each_other() -> None:
    net = network("a", "b")
    for name, other in (("a", "b"), ("b", "a")):
        peer = net.nodes[name].parts.peers.get(other)
        assert peer is not None
        assert peer.reachable
        assert peer.replica == replica(other)
    assert {type(m) for m in net.delivered} >= {PeerHello, GossipStatus}


def test_two_nodes_converge_by_deltas_on_an_orset_written_on_both_sides() -> None:
    net = network("a", "b")
    a, b = net.nodes["a"], net.nodes["b"]
    a.update("set", ORSet[str](), add("x"))
    b.update("set", ORSet[str](), add("y"))
    b.update("set", ORSet[str](), add("z"))
    a.fire(DeltaTick)
    b.fire(DeltaTick)
    net.run()
    assert {m.__class__ for m in net.delivered} >= {DeltaPropagation}
    set_a, set_b = values(net, "set")
    assert isinstance(set_a, ORSet)
    assert set_a.elements == {"x", "y", "z"}
    assert set_a == set_b
    assert digests(net)[0] == digests(net)[1]
    a.update("set", ORSet[str](), lambda s, node: s.remove(node, "y"))
    b.update("set", ORSet[str](), add("y"))  # concurrent with the remove: the add wins
    a.fire(DeltaTick)
    b.fire(DeltaTick)
    net.run()
    set_a, set_b = values(net, "set")
    assert isinstance(set_a, ORSet)
    assert set_a.elements == {"x", "y", "z"}
    assert set_a == set_b


def test_deltas_reach_every_peer_a_few_a_tick_within_half_a_gossip_interval() -> None:
    """12 nodes with the node command's intervals (gossip 2 s, deltas 0.2 s): the first change
    goes to all 11 peers at once (each one's first propagation); then a change goes to 3 of the
    11 a tick, in turn, so all hold it after 4 ticks, within the 5 of half a gossip interval; a
    change made meanwhile reaches those served before with the next turn, and those not served
    yet with the first.  The timer is armed again while a peer is owed."""
    names = [f"n{i:02}" for i in range(12)]
    net = network(*names, gossip_interval=2.0, delta_interval=0.2)
    a = net.nodes["n00"]
    assert a.parts.peers.reachable_count() == 11
    a.update("set", ORSet[str](), add("w"))
    a.fire(DeltaTick)
    net.run()
    assert sum(isinstance(m, DeltaPropagation) for m in net.delivered) == 11
    assert not any(isinstance(p, DeltaTick) for _, p in a.woken)
    a.update("set", ORSet[str](), add("x"))
    per_tick = []
    for tick in range(5):
        if tick == 1:
            a.update("set", ORSet[str](), add("y"))
        if not any(isinstance(p, DeltaTick) for _, p in a.woken):
            break
        before = len(net.delivered)
        a.fire(DeltaTick)
        net.run()
        per_tick.append(sum(isinstance(m, DeltaPropagation) for m in net.delivered[before:]))
    # x to n01-n11, 3 a tick; y (made before the second tick) to n04-n11 with x, then n01-n03
    assert per_tick == [3, 3, 3, 3, 2]
    assert not any(isinstance(p, DeltaTick) for _, p in a.woken)
    for name in names:
        held = net.nodes[name].parts.keys.get("set")
        assert isinstance(held, ORSet), name
        assert held.elements == {"w", "x", "y"}, name


def test_two_nodes_converge_by_gossip_alone() -> None:
    net = network("a", "b", delta_interval=0)
    a, b = net.nodes["a"], net.nodes["b"]
    a.update("set", ORSet[str](), add("x"))
    b.update("set", ORSet[str](), add("y"))
    a.update("only-a", GCounter(), lambda c, n: c.increment(n, 3))
    b.update("gone", GCounter(), lambda c, n: c.increment(n))
    b.parts.local.store("gone", None)
    a.gossip_round()
    net.run()
    delivered = {type(m) for m in net.delivered}
    assert delivered >= {GossipStatus, GossipKeys, GossipEntries}
    assert DeltaPropagation not in delivered
    set_a, set_b = values(net, "set")
    assert isinstance(set_a, ORSet)
    assert set_a.elements == {"x", "y"}
    assert set_a == set_b
    assert values(net, "only-a") == [GCounter().increment(a.me, 3)] * 2
    assert all(node.parts.keys.is_deleted("gone") for node in net.nodes.values())
    assert digests(net)[0] == digests(net)[1]
    assert a.parts.keys.buckets() == b.parts.keys.buckets()


def test_a_majority_write_is_acknowledged_once_the_peer_has_it_and_a_majority_read_merges() -> None:
    net = network("a", "b", delta_interval=0)
    a, b = net.nodes["a"], net.nodes["b"]
    b.update("set", ORSet[str](), add("y"))  # only b has it: no deltas, no round yet
    a.update("set", ORSet[str](), add("x"), WriteMajority(5.0), "w1")
    assert a.replies() == []  # needs b's ack
    net.run()
    assert a.replies() == [UpdateSuccess("set", "w1")]
    set_b = b.parts.keys.get("set")
    assert isinstance(set_b, ORSet)
    assert set_b.elements == {"x", "y"}  # the PeerWrite merged there
    a.get("set", ReadMajority(5.0), "g1")
    net.run()
    (reply,) = a.replies()
    assert isinstance(reply, GetSuccess)
    assert reply.data.elements == {"x", "y"}  # b's value merged in before the reply
    assert a.parts.keys.get("set") == set_b
    assert {type(m) for m in net.delivered} >= {PeerWrite, PeerWriteAck, PeerRead, PeerReadResult}


def test_a_local_write_needs_no_peer() -> None:
    net = network("a", "b")
    a = net.nodes["a"]
    a.update("set", ORSet[str](), add("x"), WriteLocal(), "w1")
    assert a.replies() == [UpdateSuccess("set", "w1")]
    assert a.peer_writes() == []


# -- timers, rounds, subscriptions ----------------------------------------------------------------


def test_a_round_that_fails_is_armed_again() -> None:
    """A gossip round that raises must not end the rounds: its timer is armed again first."""
    node = Node()
    node.parts.start_rounds()
    assert sorted(type(p).__name__ for _, p in node.woken) == ["Every", "Every"]

    def broken() -> None:
        raise RuntimeError("a broken round")

    node.parts.membership.round = broken  # type: ignore[method-assign]
    node.woken.clear()
    with pytest.raises(RuntimeError, match="a broken round"):
        node.gossip_round()
    assert node.woken == [(node.settings.gossip_interval, Every("gossip_round", "gossip_interval"))]


def test_a_delta_timer_is_armed_once_for_the_deltas_queued_before_it() -> None:
    net = network("a", "b")
    a = net.nodes["a"]
    for element in "xyz":
        a.update("set", ORSet[str](), add(element))
    assert [p for _, p in a.woken if isinstance(p, DeltaTick)] == [DeltaTick()]
    a.fire(DeltaTick)
    net.run()
    (propagation,) = [m for m in net.delivered if isinstance(m, DeltaPropagation)]
    assert set(propagation.entries) == {"set"}
    a.update("set", ORSet[str](), add("w"))
    assert [p for _, p in a.woken if isinstance(p, DeltaTick)] == [DeltaTick()]  # armed again


def test_a_new_subscriber_is_told_each_matching_value_in_key_order() -> None:
    node = Node()
    node.wire.at_once = True  # each notification delivered: the next is not held behind it
    for key in ("cart-b", "other", "cart-a"):
        node.update(key, GCounter(), lambda c, n: c.increment(n))
    node.parts.local.store("cart-c", None)  # deleted: nothing to tell
    subscriber = ActorAddress("subscriber")
    node.parts.subscribe("cart-*", subscriber)
    told = [t.message for t in node.wire.sent if t.address == subscriber]
    assert [m.key for m in told] == ["cart-a", "cart-b"]
    assert all(m.data == GCounter().increment(node.me) for m in told)


def test_a_timer_that_ends_the_load_gives_its_end_back_for_the_replicator() -> None:
    """The store's timers go to the Durability, and the end of a load one of them made comes
    back from on_timer (the Replicator serves, or refuses, on it: see its timer handler)."""
    node = FakeNode(Settings(store="sqlite:///x.db"))
    durability = node.parts.durability
    durability.start()
    writer = node.writers[-1]
    assert durability.loaded(Loaded(7, 1, chunks=1), writer) is None  # its chunk is late
    assert node.parts.on_timer(LoadOverdue(0, 0)) == LoadOutcome(
        error="1 of 1 chunks did not arrive (none for 5 s)", first=True
    )
    assert node.parts.on_timer(DeltaTick()) is None  # any other timer: no load's end
