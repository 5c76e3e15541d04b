"""Membership, through the wired Parts without processes (recording hooks, a fake monotonic
clock, a seeded random): what ``accept`` does with every peer message (a hello learns its sender
and is answered with a hello if asked and a status; another message from an unknown peer or a
newer incarnation teaches the address it came from and gets a hello; an older incarnation keeps
nothing alive; another protocol version is refused, counted and warned once per peer; a removed
or pruned replica is told so outside any window, a PeerRemoved is not answered); a peer with no
version in common (left out, lost if it was known, sent only hellos); the failure detector
through ``round`` (unreachable after ``failure_timeout``, met again when heard, removed after
``removal_timeout`` only on the majority side); each round's statuses (the fan-out and the peers
met since) and heartbeats (the quiet rest), none to a blocked peer; a differing directory digest
asking for the directory at most once a round; ``bytes_in``; and ``send`` writing the pair's
protocol version."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import Clock, FakeNode, address, hello
from thespian.actors import ActorAddress

from thespian_dd import codec
from thespian_dd._runtime.peers import GOSSIP_FANOUT, HEARTBEATS_PER_TIMEOUT, Peer
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    GossipStatus,
    Heartbeat,
    PeerHello,
    PeerMessage,
    PeerRemoved,
    gossip_bytes,
)
from thespian_dd._runtime.settings import Settings
from thespian_dd._runtime.versions import MINE
from thespian_dd.data import ReplicaId

pytestmark = pytest.mark.timeout(60)

FAILURE = 30.0
REMOVAL = 300.0
ME = ReplicaId("me", 1)
HERE = address(ME)
B, C, D = ReplicaId("b", 1), ReplicaId("c", 1), ReplicaId("d", 1)
B2 = ReplicaId("b", 2)
NONE_IN_COMMON = {"protocol": (99,), "format": (99,)}
LOG = "tests.membership"


def status(replica: ReplicaId, directory: bytes, buckets: dict[int, bytes] | None = None) -> Any:
    return GossipStatus(
        PROTOCOL_VERSION,
        replica,
        buckets or {},
        versions=MINE.announcement(),
        format=codec.FORMAT_VERSION,
        directory=directory,
    )


@dataclass
class Node(FakeNode):
    """Node "me", storeless, on a clock from 0, besides what a :class:`FakeNode` records: ``met``
    and ``lost`` (what Membership told the requests)."""

    settings: Settings = field(
        default_factory=lambda: Settings(failure_timeout=FAILURE, removal_timeout=REMOVAL)
    )
    me: ReplicaId = ME
    clock: Clock[float] = field(default_factory=lambda: Clock(0.0))
    log: str = LOG
    strict: bool = True
    met: list[ReplicaId] = field(default_factory=list)
    lost: list[ReplicaId] = field(default_factory=list)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.membership = m = self.parts.membership
        met, lost = m.met, m.lost

        def record_met(peer: Peer) -> None:
            self.met.append(peer.replica)
            met(peer)

        def record_lost(peer: Peer) -> None:
            self.lost.append(peer.replica)
            lost(peer)

        m.met, m.lost = record_met, record_lost

    def to(self, replica: ReplicaId) -> list[PeerMessage]:
        """What went to ``replica``'s address since the last :meth:`out`, delivered."""
        return [message for to, message in self.out() if to == address(replica)]

    def meet(self, *replicas: ReplicaId, digest: bool = True) -> None:
        """Each replica says hello (no reply asked) and, if ``digest``, sends a status with
        this node's directory digest (it gossips by fan-out and knows the same peers)."""
        for replica in replicas:
            self.hello(replica, reply=False)
        if digest:
            for replica in replicas:
                self.membership.on_status(status(replica, self.digest()), address(replica))
        self.out()

    def digest(self) -> bytes:
        return self.membership.peers.directory_digest(ME)

    def round_at(self, now: float) -> tuple[set[str], set[str]]:
        """Run a round at ``now``; returns the nodes sent a status and those sent a heartbeat."""
        self.clock.now = now
        self.out()
        self.membership.round()
        statuses, heartbeats = set(), set()
        for to, message in self.out():
            name = to.addressDetails.split("@")[0]
            if isinstance(message, GossipStatus):
                statuses.add(name)
            else:
                assert isinstance(message, Heartbeat), message
                heartbeats.add(name)
        return statuses, heartbeats


# -- hellos --------------------------------------------------------------------------------------


def test_an_unknown_peers_hello_is_learned_met_and_answered_with_a_hello_and_a_status() -> None:
    node = Node()
    node.membership.on_hello(hello(B, reply=True), address(B))
    peer = node.membership.peers.get("b")
    assert peer is not None
    assert (peer.replica, peer.address, peer.reachable) == (B, address(B), True)
    assert node.met == [B]
    answer, then = node.to(B)
    assert isinstance(answer, PeerHello)
    assert (answer.sender, answer.address, answer.reply) == (ME, HERE, False)
    assert answer.peers == {"b": (B, address(B))}
    assert isinstance(then, GossipStatus)
    assert then.sender == ME
    assert then.directory == node.digest()


def test_a_hello_that_asks_no_reply_gets_only_the_status() -> None:
    node = Node()
    node.membership.on_hello(hello(B, reply=False), address(B))
    assert [type(m) for m in node.to(B)] == [GossipStatus]
    assert node.met == [B]


def test_a_hello_of_a_known_peer_is_not_met_again() -> None:
    node = Node()
    node.meet(B)
    node.membership.on_hello(hello(B, reply=False), address(B))
    assert node.met == [B]


def test_the_peers_of_a_hellos_directory_are_learned_met_and_each_sent_a_hello() -> None:
    node = Node()
    node.membership.on_hello(hello(B, peers={"c": (C, address(C))}), address(B))
    assert node.membership.peers.get("c") is not None
    assert set(node.met) == {B, C}
    (to_c,) = node.to(C)
    assert isinstance(to_c, PeerHello)
    assert to_c.reply  # C must answer with its own directory


def test_a_hello_whose_address_is_no_actor_address_is_refused_and_counted() -> None:
    node = Node()
    node.membership.on_hello(
        PeerHello(PROTOCOL_VERSION, B, "not an address", {}, True, versions=MINE.announcement()),
        address(B),
    )
    assert node.membership.peers.get("b") is None
    assert node.rejections.count == 1
    assert node.out() == []


# -- other messages from peers not known, or known as another incarnation ------------------------


def test_a_message_from_an_unknown_peer_teaches_its_address_and_gets_a_hello() -> None:
    node = Node()
    assert node.membership.accept(Heartbeat(PROTOCOL_VERSION, B), address(B))
    peer = node.membership.peers.get("b")
    assert peer is not None
    assert (peer.replica, peer.address) == (B, address(B))
    assert node.met == [B]
    (answer,) = node.to(B)
    assert isinstance(answer, PeerHello)
    assert not answer.reply


def test_a_message_from_a_newer_incarnation_replaces_the_old_one_at_its_address() -> None:
    node = Node()
    node.meet(B)
    old_channel_used = node.parts.window.quiet(B)
    assert old_channel_used != float("inf")
    assert node.membership.accept(Heartbeat(PROTOCOL_VERSION, B2), address(B2))
    peer = node.membership.peers.get("b")
    assert peer is not None
    assert (peer.replica, peer.address) == (B2, address(B2))
    assert node.met == [B, B2]
    assert [type(m) for m in node.to(B2)] == [PeerHello]
    assert node.parts.window.quiet(B) == float("inf")  # the old incarnation's window is forgotten


def test_a_message_from_an_older_incarnation_keeps_nothing_alive() -> None:
    node = Node()
    node.membership.on_hello(hello(B2, reply=False), address(B2))
    node.wire.silent.add("b")  # b#2 is silent from here on
    node.clock.now = FAILURE
    node.membership.accept(Heartbeat(PROTOCOL_VERSION, B), address(B))
    peer = node.membership.peers.get("b")
    assert peer is not None
    assert peer.replica == B2
    node.round_at(FAILURE + 1)
    assert node.lost == [B2]


def test_a_message_from_a_sender_that_is_no_actor_address_teaches_nothing() -> None:
    node = Node()
    node.membership.accept(Heartbeat(PROTOCOL_VERSION, B), "somewhere")
    assert node.membership.peers.get("b") is None
    assert node.met == []
    assert node.out() == []


# -- refused messages ----------------------------------------------------------------------------


def test_messages_of_another_protocol_version_are_refused_counted_and_warned_once_per_peer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = Node()
    caplog.set_level(logging.WARNING, logger=LOG)
    for sender in (B, B, C):
        newer = Heartbeat(PROTOCOL_VERSION + 98, sender)
        assert not node.membership.accept(newer, address(sender))
    node.membership.on_hello(PeerHello(99, B, address(B)), address(B))
    assert node.rejections.count == 4
    warned = [r for r in caplog.records if r.name == LOG]
    assert len(warned) == 2
    assert "protocol version 99" in warned[0].getMessage()
    assert len(node.membership.peers) == 0
    assert node.met == []
    assert node.out() == []
    assert node.sent == []


def test_a_malformed_versions_announcement_is_refused_and_counted() -> None:
    node = Node()
    node.membership.on_hello(hello(B, versions="every version"), address(B))
    assert node.rejections.count == 1
    assert node.membership.peers.get("b") is None
    assert node.out() == []


@pytest.mark.parametrize("how", ["removed", "pruned"])
def test_a_message_from_a_removed_or_pruned_replica_is_answered_peer_removed_at_once(
    how: str,
) -> None:
    node = Node()
    if how == "removed":
        node.membership.peers.departed.add(B)
    else:
        node.parts.keys.pruned.add(B)
    assert not node.membership.accept(Heartbeat(PROTOCOL_VERSION, B), address(B))
    assert node.sent == [(address(B), PeerRemoved(PROTOCOL_VERSION, ME, B))]
    assert node.out() == []  # outside any window
    assert node.membership.peers.get("b") is None
    # Its next incarnation is welcome.
    node.membership.on_hello(hello(B2, reply=False), address(B2))
    assert node.met == [B2]


def test_a_peer_removed_from_a_removed_replica_gets_no_answer() -> None:
    node = Node()
    node.membership.peers.departed.add(B)
    assert not node.membership.accept(PeerRemoved(PROTOCOL_VERSION, B, ME), address(B))
    assert node.sent == []


def test_a_directory_naming_a_pruned_replica_tells_that_replica_it_was_removed() -> None:
    node = Node()
    node.parts.keys.pruned.add(B)
    node.membership.on_hello(hello(C, peers={"b": (B, address(B))}), address(C))
    assert node.membership.peers.get("b") is None
    assert (address(B), PeerRemoved(PROTOCOL_VERSION, ME, B)) in node.sent


# -- versions ------------------------------------------------------------------------------------


def test_an_unknown_peer_with_no_version_in_common_is_left_out_and_sent_only_a_hello() -> None:
    node = Node()
    node.membership.on_hello(hello(B, versions=NONE_IN_COMMON), address(B))
    assert not node.parts.versions.can_talk("b")
    assert node.membership.peers.get("b") is None
    assert node.met == []
    (answer,) = node.to(B)  # so that it learns why, and says so too
    assert isinstance(answer, PeerHello)
    assert not answer.reply
    # Nor is it learned from another peer's directory.
    node.membership.on_hello(hello(C, peers={"b": (B, address(B))}), address(C))
    assert node.membership.peers.get("b") is None


def test_a_known_peer_announcing_no_version_in_common_is_lost_and_gets_nothing_but_hellos() -> None:
    node = Node()
    node.meet(B, C)
    node.membership.on_hello(hello(B, versions=NONE_IN_COMMON), address(B))
    assert node.lost == [B]
    peer = node.membership.peers.get("b")
    assert peer is not None
    assert not peer.reachable
    assert [type(m) for m in node.to(B)] == [PeerHello]
    node.membership.send("b", address(B), Heartbeat(PROTOCOL_VERSION, ME))
    assert node.to(B) == []
    statuses, heartbeats = node.round_at(FAILURE)
    assert "b" not in statuses | heartbeats
    assert "c" in statuses | heartbeats
    # Said again, it is not lost again.
    node.membership.on_hello(hello(B, versions=NONE_IN_COMMON), address(B))
    assert node.lost == [B]


# -- the failure detector, through rounds --------------------------------------------------------


def test_a_peer_silent_for_the_failure_timeout_is_lost_once_and_met_again_when_heard() -> None:
    node = Node()
    node.meet(B, C)
    node.wire.silent.add("b")
    node.clock.now = FAILURE / 2
    node.hear(C)
    node.round_at(FAILURE)
    assert node.lost == []  # not past the timeout yet
    node.round_at(FAILURE + 0.5)
    assert node.lost == [B]
    peer = node.membership.peers.get("b")
    assert peer is not None
    assert not peer.reachable
    assert node.membership.peers.targets() == {"c": address(C)}
    node.round_at(FAILURE + 1)
    assert node.lost == [B]  # once
    node.wire.silent.discard("b")
    node.hear(B)
    assert node.met == [B, C, B]
    assert peer.reachable
    assert set(node.membership.peers.targets()) == {"b", "c"}
    # Heard again, it is fresh: the next round sends it a status.
    statuses, _ = node.round_at(FAILURE + 2)
    assert "b" in statuses


def test_a_peer_unreachable_past_the_removal_timeout_is_removed_on_the_majority_side() -> None:
    node = Node()
    node.meet(B, C, D)
    node.wire.silent.add("b")
    node.clock.now = FAILURE
    node.hear(C, D)
    node.round_at(FAILURE + 1)
    assert node.lost == [B]
    node.clock.now = REMOVAL - 1
    node.hear(C, D)
    node.round_at(REMOVAL)
    assert node.membership.peers.get("b") is not None  # silent for exactly the timeout
    node.clock.now = REMOVAL + 1
    node.hear(C, D)
    node.round_at(REMOVAL + 1)
    assert node.membership.peers.get("b") is None
    assert B in node.membership.peers.departed
    assert node.membership.peers.replica_count() == 3  # no longer counted in N
    # It is told so when it speaks again.
    node.membership.accept(Heartbeat(PROTOCOL_VERSION, B), address(B))
    assert node.sent == [(address(B), PeerRemoved(PROTOCOL_VERSION, ME, B))]


def test_no_peer_is_removed_on_the_minority_side() -> None:
    node = Node()
    node.meet(B, C, D)
    node.clock.now = FAILURE
    node.hear(D)
    node.round_at(FAILURE + 1)
    assert node.lost == [B, C]  # this node and D: two of four, no majority
    node.clock.now = 10 * REMOVAL
    node.hear(D)
    node.round_at(10 * REMOVAL)
    assert {p.replica for p in node.membership.peers} == {B, C, D}
    assert node.membership.peers.departed == set()


# -- what a round sends ---------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_a_round_sends_statuses_to_the_fanout_and_the_peers_met_since_and_heartbeats_to_the_rest(
    seed: int,
) -> None:
    node = Node(seed=seed)
    five = [ReplicaId(name, 1) for name in "bcdef"]
    node.meet(*five)
    names = {r.node for r in five}
    statuses, heartbeats = node.round_at(0.0)
    assert (statuses, heartbeats) == (names, set())  # all met since the last round
    due = FAILURE / HEARTBEATS_PER_TIMEOUT
    statuses, heartbeats = node.round_at(due / 2)
    assert len(statuses) == GOSSIP_FANOUT
    assert heartbeats == set()  # none quiet for long enough yet
    statuses, heartbeats = node.round_at(due * 1.5)
    assert len(statuses) == GOSSIP_FANOUT
    assert statuses | heartbeats == names
    assert not statuses & heartbeats
    # A peer met since gets a status besides the fan-out.
    g = ReplicaId("g", 1)
    node.clock.now = due * 1.6
    node.meet(g)
    node.hear(*five)  # keep them alive: this test is not about the detector
    statuses, heartbeats = node.round_at(due * 3)
    assert "g" in statuses
    assert len(statuses) == GOSSIP_FANOUT + 1
    assert not statuses & heartbeats
    assert statuses | heartbeats == names | {"g"}


def test_the_fanout_picks_different_peers_from_round_to_round() -> None:
    node = Node(seed=7)
    many = [ReplicaId(f"n{i}", 1) for i in range(8)]
    node.meet(*many)
    node.round_at(0.0)
    picked = set()
    for i in range(1, 20):
        statuses, _ = node.round_at(float(i))
        picked |= statuses
    assert len(picked) > GOSSIP_FANOUT


def test_a_round_sends_nothing_to_a_blocked_peer() -> None:
    node = Node()
    node.meet(B, C, D)
    node.membership.peers.blocked = frozenset({"c"})
    for now in (0.0, FAILURE / 2, FAILURE):
        statuses, heartbeats = node.round_at(now)
        assert "c" not in statuses | heartbeats
        assert statuses | heartbeats
    node.membership.send("c", address(C), Heartbeat(PROTOCOL_VERSION, ME))
    assert node.to(C) == []


def test_a_peer_of_an_earlier_release_gets_a_status_every_round_with_the_directory() -> None:
    node = Node()
    node.meet(B, C, D, digest=False)  # no status with a digest: they want the directory
    node.round_at(0.0)
    for now in (1.0, 2.0):
        statuses, heartbeats = node.round_at(now)
        assert (statuses, heartbeats) == ({"b", "c", "d"}, set())
    node.membership.round()
    for message in node.to(B):
        assert isinstance(message, GossipStatus)
        assert set(message.peers) == {"b", "c", "d"}


# -- directories -----------------------------------------------------------------------------------


def test_a_differing_directory_digest_asks_for_the_directory_at_most_once_a_round() -> None:
    node = Node()
    node.meet(B)
    other = bytes(8)
    assert other != node.digest()
    node.membership.on_status(status(B, other), address(B))
    (ask,) = node.to(B)
    assert isinstance(ask, PeerHello)
    assert ask.reply
    node.membership.on_status(status(B, other), address(B))
    assert node.to(B) == []  # once this round
    node.round_at(1.0)
    node.membership.on_status(status(B, other), address(B))
    assert [type(m) for m in node.to(B)] == [PeerHello]


def test_an_equal_directory_digest_asks_nothing() -> None:
    node = Node()
    node.meet(B)
    node.membership.on_status(status(B, node.digest()), address(B))
    assert node.to(B) == []


def test_a_status_teaches_the_peers_of_its_directory() -> None:
    node = Node()
    node.meet(B)
    node.membership.on_status(
        GossipStatus(PROTOCOL_VERSION, B, {}, {"c": (C, address(C))}, versions=MINE.announcement()),
        address(B),
    )
    assert node.membership.peers.get("c") is not None
    assert node.met == [B, C]
    assert [type(m) for m in node.to(C)] == [PeerHello]


# -- counting and sending --------------------------------------------------------------------------


def test_bytes_in_counts_what_accepted_gossip_carries_and_nothing_refused() -> None:
    node = Node()
    node.meet(B)
    before = node.membership.bytes_in
    carrying = status(B, node.digest(), {3: b"12345678", 9: b"abcdefgh"})
    node.membership.on_status(carrying, address(B))
    assert node.membership.bytes_in - before == gossip_bytes(carrying) == 18
    refused = GossipStatus(99, B, {3: b"12345678"})
    node.membership.on_status(refused, address(B))
    assert node.membership.bytes_in - before == 18


def test_send_writes_the_pairs_protocol_version_and_keeps_the_peers_window() -> None:
    node = Node()
    node.meet(B)
    node.membership.send("b", address(B), Heartbeat(PROTOCOL_VERSION + 6, ME))
    (sent,) = node.wire.pending()
    assert sent.message == Heartbeat(node.parts.versions.protocol("b"), ME)
    assert node.parts.window.in_flight(B) == 1
    node.out()
    # To an address not in the peer table: once, outside any window.
    node.membership.send("b", ActorAddress("b elsewhere"), Heartbeat(PROTOCOL_VERSION, ME))
    assert node.parts.window.in_flight(B) == 0
    assert [to for to, _ in node.out()] == [ActorAddress("b elsewhere")]
