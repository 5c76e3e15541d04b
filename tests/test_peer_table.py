"""PeerTable, the Replicator's membership: learning peers (new, a newer incarnation, an older one,
this node, a departed or pruned replica, an address that is no ActorAddress); the failure
detector on a fake monotonic clock (unreachable once ``failure_timeout`` has passed, revived only
by the current incarnation, removed only after ``removal_timeout`` and only on the majority
side); what a quorum request goes to (``targets``), N (``replica_count``), ``in_majority``,
``live``, ``directory`` and ``left``; the gossip fan-out (which peers a round sends its status
and which a heartbeat, on a fake clock with a recording send) and the directory digest; and
whether a quorum request can succeed with unreachable
peers, for the public consistency levels, as ``Quorums.open`` decides it."""

from __future__ import annotations

import itertools
import math
import random
from functools import partial
from typing import Any

import pytest
from fakes import Clock
from thespian.actors import ActorAddress

from thespian_dd._runtime import peers as peers_module
from thespian_dd._runtime.peers import (
    GOSSIP_FANOUT,
    HEARTBEATS_PER_TIMEOUT,
    WATCHERS,
    Admission,
    Peer,
    PeerTable,
    Record,
)
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    GossipStatus,
    RequestTimeout,
)
from thespian_dd._runtime.quorums import Pending, Quorums
from thespian_dd.data import ReplicaId
from thespian_dd.messages import (
    ReadAll,
    ReadConsistency,
    ReadFrom,
    ReadLocal,
    ReadMajority,
    WriteAll,
    WriteConsistency,
    WriteLocal,
    WriteMajority,
    WriteTo,
)

pytestmark = pytest.mark.timeout(60)

FAILURE = 10.0
REMOVAL = 300.0
ME = ReplicaId("me", 1)


class Table:
    """A PeerTable on a fake clock, with what it called back recorded."""

    def __init__(self, pruned: set[ReplicaId] | None = None) -> None:
        self.clock = Clock(0.0)
        self.pruned: set[ReplicaId] = set() if pruned is None else pruned
        self.refused: list[tuple[ReplicaId, Any]] = []
        self.replaced: list[ReplicaId] = []
        self.peers = PeerTable(
            failure_timeout=FAILURE,
            removal_timeout=REMOVAL,
            pruned=self.pruned,
            refused=lambda replica, address: self.refused.append((replica, address)),
            replaced=self.replaced.append,
            clock=self.clock,
        )

    def learn(self, *replicas: ReplicaId) -> None:
        for replica in replicas:
            assert self.peers.learn(ME, replica, address_of(replica))

    def at(self, now: float) -> Table:
        self.clock.now = now
        return self

    def sweep(self) -> tuple[list[ReplicaId], list[ReplicaId], list[tuple[ReplicaId, float]]]:
        kept, lost, removed, revived = self.peers.sweep()
        assert revived == []  # time passing alone revives nobody
        return (
            [p.replica for p in kept],
            [p.replica for p in lost],
            [(p.replica, silent) for p, silent in removed],
        )


def address_of(replica: ReplicaId) -> ActorAddress:
    return ActorAddress(f"{replica.node}@{replica.incarnation}")


A1, A2, A3 = ReplicaId("a", 1), ReplicaId("a", 2), ReplicaId("a", 3)
B, C, D, E = ReplicaId("b", 1), ReplicaId("c", 1), ReplicaId("d", 1), ReplicaId("e", 1)
FIVE = (A1, B, C, D)  # with this node: a cluster of five


# -- learning peers -------------------------------------------------------------------------------


def test_a_new_peer_is_learned_reachable_and_seen_now() -> None:
    t = Table().at(42.0)
    assert t.peers.learn(ME, B, address_of(B))
    peer = t.peers.get("b")
    assert peer == Peer(B, address_of(B), 42.0, reachable=True)
    assert len(t.peers) == 1
    assert [p.replica for p in t.peers] == [B]
    assert t.peers.get(B.node) is peer
    assert t.replaced == []
    assert t.refused == []


def test_a_newer_incarnation_replaces_the_old_one_and_says_so() -> None:
    t = Table()
    t.learn(A1)
    old = t.peers.get("a")
    assert old is not None
    t.at(5.0)
    assert t.peers.learn(ME, A2, address_of(A2))
    new = t.peers.get("a")
    assert new is not None
    assert (new.replica, new.address, new.last_seen) == (A2, address_of(A2), 5.0)
    assert t.replaced == [A1]
    assert t.peers.get("a") is not old
    assert t.peers.get("a") is new
    assert len(t.peers) == 1
    assert t.peers.replica_count() == 2  # one node, whatever its incarnations


def test_an_older_or_equal_incarnation_is_ignored() -> None:
    t = Table()
    t.learn(A2)
    before = t.peers.get("a")
    t.at(100.0)
    assert not t.peers.learn(ME, A1, address_of(A1))
    assert not t.peers.learn(ME, A2, address_of(A2))
    assert not t.peers.learn(ME, A2, ActorAddress("elsewhere"))
    assert t.peers.get("a") is before
    assert before is not None
    assert (before.address, before.last_seen) == (address_of(A2), 0.0)  # not refreshed
    assert t.replaced == []


def test_this_node_is_never_its_own_peer_in_any_incarnation() -> None:
    t = Table()
    for me in (ME, ReplicaId("me", 0), ReplicaId("me", 2)):
        assert not t.peers.learn(ME, me, address_of(me))
    assert len(t.peers) == 0


def test_a_departed_replica_is_not_learned_again_but_its_next_incarnation_is() -> None:
    t = Table()
    t.learn(A1, B, C)
    t.at(FAILURE + 1)
    t.peers.heard(B)
    t.peers.heard(C)
    t.sweep()
    t.at(REMOVAL + 1)
    t.peers.heard(B)
    t.peers.heard(C)
    assert [r for r, _ in t.sweep()[2]] == [A1]
    assert t.peers.departed == {A1}
    assert not t.peers.learn(ME, A1, address_of(A1))
    assert t.peers.get("a") is None
    assert t.refused == []  # it was told when it spoke (the Replicator's _accept), not here
    assert t.peers.learn(ME, A2, address_of(A2))  # restarted: a new incarnation
    assert t.replaced == []  # nothing was kept for A1 any more


def test_a_pruned_replica_is_refused_and_told_but_its_next_incarnation_is_learned() -> None:
    t = Table(pruned={A1})
    address = address_of(A1)
    assert not t.peers.learn(ME, A1, address)
    assert t.peers.get("a") is None
    assert len(t.refused) == 1
    assert t.refused[0][0] == A1
    assert t.refused[0][1] == address
    assert t.peers.learn(ME, A2, address_of(A2))
    assert len(t.refused) == 1


def test_the_pruned_set_is_read_when_learning_not_copied() -> None:
    # The key table adds to it as Performed markers arrive.
    t = Table()
    t.pruned.add(B)
    assert not t.peers.learn(ME, B, address_of(B))
    assert [r for r, _ in t.refused] == [B]


@pytest.mark.parametrize("address", [None, "b@1", ("b", 1), {"b": 1}, 7])
def test_an_address_that_is_no_actor_address_is_ignored(address: object) -> None:
    t = Table(pruned={B})
    assert not t.peers.learn(ME, B, address)
    assert not t.peers.learn(ME, C, address)
    assert len(t.peers) == 0
    assert t.refused == []  # not even told: every send to it would fail


def test_learn_all_learns_the_new_peers_of_a_directory_and_skips_the_rest() -> None:
    t = Table(pruned={D})
    t.learn(A2)
    directory: dict[str, Any] = {
        "a": (A1, address_of(A1)),  # older than known
        "b": (B, address_of(B)),
        "c": (C, address_of(C)),
        "d": (D, address_of(D)),  # pruned
        "me": (ME, address_of(ME)),
        "x": ("not a replica", ActorAddress("x")),
        "y": (ReplicaId("y", 1), "not an address"),
    }
    new = t.peers.learn_all(ME, directory)
    assert [p.replica for p in new] == [B, C]
    assert sorted(p.replica for p in t.peers) == [A2, B, C]
    assert [r for r, _ in t.refused] == [D]


# -- the failure detector ------------------------------------------------------------------------


def test_a_peer_is_reachable_until_exactly_failure_timeout_has_passed() -> None:
    t = Table()
    t.learn(B)
    assert t.at(FAILURE).sweep() == ([B], [], [])
    assert t.peers.targets() == {"b": address_of(B)}
    assert t.at(FAILURE + 0.001).sweep() == ([B], [B], [])
    peer = t.peers.get("b")
    assert peer is not None
    assert not peer.reachable
    assert t.peers.targets() == {}
    assert t.peers.replica_count() == 2  # still counts in N
    assert t.peers.reachable_count() == 0
    assert not t.peers.all_reachable()
    assert t.at(FAILURE + 1).sweep() == ([B], [], [])  # lost once, not every round


def test_a_message_from_the_current_incarnation_revives_a_peer() -> None:
    t = Table()
    t.learn(B)
    t.at(FAILURE + 1).sweep()
    t.at(20.0)
    t.peers.heard(B)
    peer = t.peers.get("b")
    assert peer is not None
    assert (peer.reachable, peer.last_seen) == (True, 20.0)
    assert t.peers.all_reachable()
    assert t.at(20.0 + FAILURE).sweep() == ([B], [], [])
    assert t.at(20.0 + FAILURE + 0.5).sweep() == ([B], [B], [])


def test_a_message_from_an_older_incarnation_or_an_unknown_node_revives_nothing() -> None:
    t = Table()
    t.learn(A1)
    assert t.peers.learn(ME, A2, address_of(A2))
    t.at(FAILURE + 1).sweep()
    t.at(15.0)
    t.peers.heard(A1)  # the old process, still talking
    t.peers.heard(ReplicaId("stranger", 1))
    t.peers.heard(A3)  # not learned yet
    peer = t.peers.get("a")
    assert peer is not None
    assert (peer.replica, peer.reachable, peer.last_seen) == (A2, False, 0.0)
    assert t.peers.get("stranger") is None


def test_the_transport_can_declare_the_current_incarnation_unreachable_at_once() -> None:
    t = Table()
    t.learn(A2, B)
    t.peers.unreachable(A1)  # an old incarnation's dead letters say nothing of A2
    assert t.peers.targets() == {"a": address_of(A2), "b": address_of(B)}
    t.peers.unreachable(A2)
    assert t.peers.targets() == {"b": address_of(B)}
    assert t.peers.replica_count() == 3


def test_a_peer_is_removed_only_once_unreachable_longer_than_removal_timeout() -> None:
    t = Table()
    t.learn(B, C)
    t.at(FAILURE + 1)
    t.peers.heard(C)
    assert t.sweep() == ([B, C], [B], [])
    t.at(REMOVAL)
    t.peers.heard(C)
    assert t.sweep() == ([B, C], [], [])  # silent exactly removal_timeout: not yet
    t.at(REMOVAL + 0.5)
    t.peers.heard(C)
    assert t.sweep() == ([C], [], [(B, REMOVAL + 0.5)])
    assert t.peers.get("b") is None
    assert t.peers.departed == {B}
    assert t.peers.replica_count() == 2
    assert t.peers.live(ME) == {"me": ME, "c": C}


def test_with_three_of_five_silent_this_node_is_in_the_minority_and_removes_nobody() -> None:
    t = Table()
    t.learn(*FIVE)
    t.at(FAILURE + 1)
    t.peers.heard(A1)
    assert t.sweep() == (list(FIVE), [B, C, D], [])
    assert not t.peers.in_majority()  # this node and a: 2 of 5
    for now in (REMOVAL + 1, 10 * REMOVAL, 100 * REMOVAL):
        t.at(now)
        t.peers.heard(A1)
        assert t.sweep() == (list(FIVE), [], [])
    assert t.peers.departed == set()
    assert t.peers.replica_count() == 5


def test_with_one_of_five_silent_this_node_is_in_the_majority_and_removes_it() -> None:
    t = Table()
    t.learn(*FIVE)
    t.at(FAILURE + 1)
    for replica in (A1, B, C):
        t.peers.heard(replica)
    assert t.sweep() == (list(FIVE), [D], [])
    assert t.peers.in_majority()
    t.at(REMOVAL + 1)
    for replica in (A1, B, C):
        t.peers.heard(replica)
    assert t.sweep() == ([A1, B, C], [], [(D, REMOVAL + 1)])
    assert t.peers.departed == {D}
    assert t.peers.replica_count() == 4
    assert not t.peers.learn(ME, D, address_of(D))


def test_with_two_of_five_silent_the_majority_side_removes_both() -> None:
    t = Table()
    t.learn(*FIVE)
    t.at(FAILURE + 1)
    for replica in (A1, B):
        t.peers.heard(replica)
    t.sweep()
    t.at(REMOVAL + 1)
    for replica in (A1, B):
        t.peers.heard(replica)
    kept, lost, removed = t.sweep()
    assert (kept, lost) == ([A1, B], [])
    assert [r for r, _ in removed] == [C, D]
    assert t.peers.departed == {C, D}
    assert t.peers.replica_count() == 3


def test_after_a_long_pause_a_node_that_reaches_nobody_removes_nobody() -> None:
    """History: a cluster of five (this node, a, b, c, d), all heard at t=0.  This node's
    Replicator then runs no gossip round for longer than removal_timeout (its process was
    stopped, SIGSTOP or a suspended VM, or a handler blocked it); the four peers, which
    meanwhile removed it, are still flagged reachable here because no sweep ran.  The first
    sweep afterwards (t=301) should find all four silent past failure_timeout, mark them
    unreachable, and then, reaching nobody (1 of 5: the minority), remove none.

    What happened before the fix: sweep() marked ``a`` unreachable and asked
    ``in_majority()`` while b, c and d were still flagged reachable (1+3 > 5/2), so ``a`` was
    removed; then ``b`` (1+2 > 4/2) and ``c`` (1+1 > 3/2); only ``d`` stayed (1 > 2/2 fails):
    removed [a, b, c], departed {a, b, c}.  The Replicator then answers every later message of
    a, b and c with PeerRemoved, so the majority side is made to reincarnate (and their
    replicas to be pruned) by the one node that was cut off: the split-brain removal that
    ``in_majority`` exists to prevent.  Now the majority is decided after every lost peer is
    marked, and all four are kept."""
    t = Table()
    t.learn(*FIVE)
    t.at(REMOVAL + 1)
    kept, lost, removed = t.sweep()
    assert lost == list(FIVE)
    assert removed == []
    assert kept == list(FIVE)
    assert t.peers.departed == set()


def test_a_peer_that_left_the_convention_is_unreachable_until_heard_but_still_counts() -> None:
    t = Table()
    t.learn(B, C)
    gone = t.peers.left("b")
    assert gone is not None
    assert gone.replica == B
    assert t.peers.left("b") is None  # no change the second time
    assert t.peers.left("nobody") is None
    assert t.peers.targets() == {"c": address_of(C)}
    assert t.peers.replica_count() == 3
    assert t.sweep() == ([B, C], [], [])  # already unreachable: not "lost" again
    t.at(1.0)
    t.peers.heard(B)
    assert t.peers.targets() == {"b": address_of(B), "c": address_of(C)}


def test_a_peer_that_left_is_removed_after_removal_timeout_since_last_heard() -> None:
    t = Table()
    t.learn(B, C)
    t.at(5.0)
    t.peers.left("b")
    t.peers.heard(C)
    t.at(REMOVAL + 0.5)
    t.peers.heard(C)
    assert t.sweep() == ([C], [], [(B, REMOVAL + 0.5)])


# -- what the Replicator reads -------------------------------------------------------------------


def test_targets_are_the_reachable_peers_not_cut_off() -> None:
    t = Table()
    t.learn(*FIVE)
    t.peers.unreachable(B)
    t.peers.blocked = frozenset({"c", "nobody"})
    assert t.peers.targets() == {"a": address_of(A1), "d": address_of(D)}
    assert t.peers.replica_count() == 5  # blocked and unreachable peers still count
    assert t.peers.reachable_count() == 3  # cut off by the test switch is not unreachable
    t.peers.blocked = frozenset()
    assert set(t.peers.targets()) == {"a", "c", "d"}


def test_replica_count_is_this_node_and_every_known_peer() -> None:
    t = Table()
    assert t.peers.replica_count() == 1
    t.learn(*FIVE)
    assert t.peers.replica_count() == 5
    for replica in FIVE:
        t.peers.unreachable(replica)
    assert t.peers.replica_count() == 5
    assert t.peers.reachable_count() == 0


@pytest.mark.parametrize(
    ("peers", "unreachable", "majority"),
    [
        (0, 0, True),  # alone: 1 of 1
        (1, 0, True),
        (1, 1, False),  # 1 of 2 is no majority
        (2, 1, True),  # 2 of 3
        (3, 1, True),  # 3 of 4
        (3, 2, False),  # 2 of 4
        (4, 2, True),  # 3 of 5
        (4, 3, False),  # 2 of 5
    ],
)
def test_in_majority_is_more_than_half_of_the_cluster_reached(
    peers: int, unreachable: int, majority: bool
) -> None:
    t = Table()
    replicas = [ReplicaId(f"p{i}", 1) for i in range(peers)]
    t.learn(*replicas)
    for replica in replicas[:unreachable]:
        t.peers.unreachable(replica)
    assert t.peers.in_majority() is majority


def test_live_and_directory_name_the_current_incarnations() -> None:
    t = Table()
    t.learn(A1, B)
    t.peers.learn(ME, A2, address_of(A2))
    t.peers.unreachable(B)
    assert t.peers.live(ME) == {"me": ME, "a": A2, "b": B}
    assert t.peers.directory() == {"a": (A2, address_of(A2)), "b": (B, address_of(B))}


# -- gossip fan-out and heartbeats --------------------------------------------------------------

GOSSIP = 2.0  # the default gossip interval; FAILURE is the default failure timeout
MANY = [ReplicaId(f"n{i:02}", 1) for i in range(31)]


class Sent:
    """A recording send: when each peer was last sent anything, on the table's fake clock."""

    def __init__(self, table: Table) -> None:
        self.table = table
        self.last: dict[ReplicaId, float] = {}
        self.log: list[tuple[float, str, ReplicaId]] = []

    def quiet(self, replica: ReplicaId) -> float:
        return self.table.clock.now - self.last.get(replica, float("-inf"))

    def round(
        self, rng: random.Random, everyone: bool = False
    ) -> tuple[list[ReplicaId], list[ReplicaId]]:
        status, heartbeat = self.table.peers.gossip_targets(self.quiet, rng, everyone=everyone)
        for kind, peers in (("status", status), ("heartbeat", heartbeat)):
            for peer in peers:
                self.last[peer.replica] = self.table.clock.now
                self.log.append((self.table.clock.now, kind, peer.replica))
        return [p.replica for p in status], [p.replica for p in heartbeat]


def settled(n: int = 31) -> tuple[Table, Sent]:
    """A table of ``n`` peers that speak the fan-out and were each sent a status already."""
    t = Table()
    t.learn(*MANY[:n])
    for replica in MANY[:n]:
        peer = t.peers.get(replica.node)
        assert peer is not None
        peer.fanout = True
    sent = Sent(t)
    sent.round(random.Random(0))  # every peer is fresh: each gets the status once
    return t, sent


def test_a_new_peer_gets_the_status_in_the_next_round_and_then_only_its_turn() -> None:
    t = Table()
    t.learn(B, C)
    sent = Sent(t)
    status, heartbeat = sent.round(random.Random(1))
    assert sorted(status) == [B, C]
    assert heartbeat == []
    t.learn(D)
    for peer in (B, C, D):
        p = t.peers.get(peer.node)
        assert p is not None
        p.fanout = True
    status, _ = sent.round(random.Random(1))
    assert D in status


def test_a_round_sends_the_status_to_the_fanout_only_however_many_peers() -> None:
    t, sent = settled()
    rng = random.Random(7)
    for r in range(1, 40):
        t.at(r * GOSSIP)
        status, heartbeat = sent.round(rng)
        assert len(status) == GOSSIP_FANOUT
        assert not set(status) & set(heartbeat)


def test_every_peer_hears_this_node_well_within_the_failure_timeout() -> None:
    t, sent = settled()
    rng = random.Random(3)
    rounds = 200
    for r in range(1, rounds + 1):
        t.at(r * GOSSIP)
        sent.round(rng)
    for replica in MANY:
        times = [when for when, _, to in sent.log if to == replica]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # A heartbeat is due a third of the timeout after the last message, at a round.
        assert max(gaps) <= FAILURE / HEARTBEATS_PER_TIMEOUT + GOSSIP < FAILURE
    # A peer gets something every ceil(due / GOSSIP) rounds, not every round.
    every = math.ceil(FAILURE / HEARTBEATS_PER_TIMEOUT / GOSSIP)
    assert every >= 2
    assert (len(sent.log) - 31) / rounds <= 31 / every + GOSSIP_FANOUT


def test_a_delivery_counts_as_hearing_the_peer_and_revives_it() -> None:
    """A peer this node finds unreachable hears this node's heartbeats, so it sends none back:
    their delivery must revive it here, or it would stay unreachable until removed."""
    t = Table()
    t.learn(B, C)
    t.at(5.0)
    assert t.peers.delivered(B) is None  # reachable already: nothing to meet again
    assert t.peers.delivered(ReplicaId("c", 0)) is None  # an older incarnation's says nothing
    t.at(FAILURE + 1.0)
    assert t.sweep() == ([B, C], [C], [])
    revived = t.peers.delivered(C)
    assert revived is not None
    assert revived.replica == C
    assert revived.resync  # it missed deltas meanwhile
    assert set(t.peers.targets()) == {"b", "c"}


def test_a_peer_heard_from_recently_needs_no_heartbeat() -> None:
    t, sent = settled(5)
    t.at(FAILURE / HEARTBEATS_PER_TIMEOUT + 0.1)
    t.peers.heard(MANY[0])
    status, heartbeat = sent.round(random.Random(2))
    assert MANY[0] not in heartbeat
    assert set(heartbeat) == set(MANY[1:5]) - set(status)


class Pair:
    """Two idle nodes x and y on one fake clock, rounds ``phase`` seconds apart, each
    heartbeat delivered at once: the receiver hears the sender, and the sender counts the
    delivery.  (No statuses: with one peer, the fan-out would send it one every round.)"""

    X, Y = ReplicaId("x", 1), ReplicaId("y", 1)

    def __init__(self, phase: float) -> None:
        self.clock = Clock(0.0)
        self.phase = phase
        self.tables: dict[ReplicaId, PeerTable] = {}
        self.last: dict[ReplicaId, float] = {self.X: 0.0, self.Y: 0.0}  # last sent, by sender
        self.heard: dict[ReplicaId, list[float]] = {self.X: [0.0], self.Y: [0.0]}
        self.beats = 0
        self.frozen: ReplicaId | None = None
        """A node that runs no round and hears nothing (a stopped process)."""
        for me, other in ((self.X, self.Y), (self.Y, self.X)):
            table = PeerTable(
                failure_timeout=FAILURE,
                removal_timeout=REMOVAL,
                pruned=set(),
                refused=lambda _r, _a: None,
                replaced=lambda _r: None,
                clock=self.clock,
            )
            assert table.learn(me, other, address_of(other))
            peer = table.get(other.node)
            assert peer is not None
            peer.fanout, peer.fresh = True, False
            self.tables[me] = table

    def other(self, me: ReplicaId) -> ReplicaId:
        return self.Y if me == self.X else self.X

    def run(self, start: int, stop: int) -> list[tuple[float, ReplicaId, list[ReplicaId]]]:
        """Rounds ``start`` .. ``stop - 1`` of both; returns who each sweep found lost."""
        rounds = [(r * GOSSIP, self.X) for r in range(start, stop)]
        rounds += [(r * GOSSIP + self.phase, self.Y) for r in range(start, stop)]
        lost = []
        for when, me in sorted(rounds, key=lambda wm: wm[0]):
            if me == self.frozen:
                continue
            self.clock.now = when
            table, other = self.tables[me], self.other(me)
            _, heartbeat = table.gossip_targets(partial(self.quiet, me), random.Random(0))
            for _peer in heartbeat:
                self.beats += 1
                self.last[me] = when
                if other != self.frozen:
                    self.tables[other].heard(me)
                    table.delivered(other)
                    self.heard[other].append(when)
                    self.heard[me].append(when)
            lost.append((when, me, [p.replica for p in table.sweep()[1]]))
        return lost

    def quiet(self, me: ReplicaId, _to: ReplicaId) -> float:
        return self.clock.now - self.last[me]

    def reachable(self, at: ReplicaId) -> bool:
        peer = self.tables[at].get(self.other(at).node)
        assert peer is not None
        return peer.reachable


PHASES = [0.0, 0.3, 0.7, 1.0, 1.5, 1.9]


@pytest.mark.parametrize("phase", PHASES)
def test_one_heartbeat_a_period_serves_both_ends_of_a_pair(
    phase: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each hears the other well within the failure timeout, and they send together about
    half the heartbeats that both would send each on its own."""
    monkeypatch.setattr(peers_module, "GOSSIP_FANOUT", 0)
    pair = Pair(phase)
    assert all(lost == [] for _, _, lost in pair.run(1, 150))  # never unreachable
    for times in pair.heard.values():
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert max(gaps) <= FAILURE / HEARTBEATS_PER_TIMEOUT + GOSSIP
    each_alone = 2 * 149 / math.ceil(FAILURE / HEARTBEATS_PER_TIMEOUT / GOSSIP)
    assert pair.beats <= 0.6 * each_alone


@pytest.mark.parametrize("phase", PHASES)
def test_regression_a_peer_found_unreachable_is_revived_by_the_delivery_of_heartbeats(
    phase: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    """y stops past the failure timeout, so x finds it unreachable; y resumes and hears x's
    heartbeats, so it sends none back.  x must take their delivery as hearing y (it did not:
    y stayed unreachable at x until removed)."""
    monkeypatch.setattr(peers_module, "GOSSIP_FANOUT", 0)
    pair = Pair(phase)
    pair.run(1, 20)
    pair.frozen = Pair.Y
    lost = pair.run(20, 20 + math.ceil(FAILURE / GOSSIP) + 2)
    assert (Pair.X, [Pair.Y]) in [(me, found) for _, me, found in lost]
    assert not pair.reachable(Pair.X)
    pair.frozen = None
    pair.run(30, 30 + math.ceil(FAILURE / HEARTBEATS_PER_TIMEOUT / GOSSIP) + 1)
    assert pair.reachable(Pair.X)
    assert pair.reachable(Pair.Y)
    assert all(lost == [] for _, _, lost in pair.run(40, 100))


def test_a_peer_sent_something_else_recently_needs_no_heartbeat() -> None:
    t, sent = settled(3)
    t.at(FAILURE / HEARTBEATS_PER_TIMEOUT + 0.1)
    sent.last[MANY[0]] = t.clock.now - 0.5  # a delta, say
    _, heartbeat = sent.round(random.Random(2))
    assert MANY[0] not in heartbeat


def test_an_unreachable_peer_gets_heartbeats_not_statuses_and_a_peer_heard_again_the_status() -> (
    None
):
    t, sent = settled(5)
    lost = MANY[0]
    t.at(FAILURE + 1)
    for replica in MANY[1:5]:
        t.peers.heard(replica)
    t.sweep()
    got: set[str] = set()
    for r in range(20):
        t.at(FAILURE + 1 + r * GOSSIP)
        status, heartbeat = sent.round(random.Random(r))
        assert lost not in status
        got |= {"heartbeat"} if lost in heartbeat else set()
    assert got == {"heartbeat"}
    t.peers.heard(lost)
    status, _ = sent.round(random.Random(0))
    assert lost in status  # back: it is fresh


def test_a_peer_of_an_earlier_release_gets_the_status_every_round() -> None:
    t, sent = settled(6)
    old = t.peers.get(MANY[2].node)
    assert old is not None
    old.fanout = False
    for r in range(1, 10):
        t.at(r * GOSSIP)
        status, heartbeat = sent.round(random.Random(r))
        assert MANY[2] in status
        assert MANY[2] not in heartbeat


def test_everyone_sends_the_status_to_every_peer() -> None:
    t, sent = settled(6)
    t.at(GOSSIP)
    status, heartbeat = sent.round(random.Random(0), everyone=True)
    assert sorted(status) == sorted(MANY[:6])
    assert heartbeat == []


def test_a_peer_cut_off_by_the_test_switch_gets_nothing() -> None:
    t, sent = settled(4)
    t.peers.blocked = frozenset({MANY[1].node})
    for r in range(1, 20):
        t.at(r * GOSSIP)
        status, heartbeat = sent.round(random.Random(r), everyone=r % 2 == 0)
        assert MANY[1] not in status + heartbeat


# -- the ring of watchers (whole clusters: tests/test_watch_ring.py) -------------------------------


def ring(n: int = 8) -> Table:
    """A table of ``n`` peers of this release, each said to watch nobody yet, judged once."""
    t = Table()
    t.learn(*MANY[:n])
    for replica in MANY[:n]:
        t.peers.told(replica, Record())
        peer = t.peers.get(replica.node)
        assert peer is not None
        peer.fanout = True
    t.peers.judge()
    return t


def test_this_node_watches_watchers_reachable_peers_of_the_ring_and_the_unreachable_between() -> (
    None
):
    t = ring()
    watching = t.peers.record.watching
    assert len(watching) == WATCHERS
    assert t.peers.record.silent == frozenset()
    first = min(watching)
    t.peers.unreachable(ReplicaId(first, 1))
    t.peers.judge()
    assert t.peers.record.watching > watching  # past the unreachable one: one more
    assert len(t.peers.record.watching) == WATCHERS + 1
    assert t.peers.record.silent == {first}


HOLD = FAILURE / HEARTBEATS_PER_TIMEOUT


def lost_names(t: Table) -> set[str]:
    return {p.replica.node for p in t.peers.judge()[0]}


def test_a_peer_this_node_does_not_watch_is_reachable_while_a_reachable_watcher_vouches() -> None:
    t = ring()
    me = t.peers.record.watching
    other = sorted({r.node for r in MANY[:8]} - me)
    watcher, watched = other[0], other[1]
    t.peers.told(ReplicaId(watcher, 1), Record(frozenset({watched})))
    t.at(FAILURE + 1)
    for name in me | {watcher}:
        t.peers.heard(ReplicaId(name, 1))
    assert lost_names(t) == set()  # the unvouched are held a heartbeat's period
    t.at(FAILURE + 1 + HOLD + 0.1)
    for name in me | {watcher}:
        t.peers.heard(ReplicaId(name, 1))
    # Vouched for, though not heard here; the others no longer.
    assert lost_names(t) == set(other) - {watcher, watched}
    # Its watcher stops hearing it: unreachable here at once, no hold.
    t.peers.told(ReplicaId(watcher, 1), Record(frozenset({watched}), frozenset({watched})))
    assert lost_names(t) == {watched}
    # And heard again there: reachable again here.
    t.peers.told(ReplicaId(watcher, 1), Record(frozenset({watched})))
    lost, revived = t.peers.judge()
    assert (lost, [p.replica.node for p in revived]) == ([], [watched])


def test_vouching_starts_from_what_this_node_heard_not_from_stale_word() -> None:
    """Two peers that last said they hear each other, neither heard here nor vouched for by a
    peer heard here: both unreachable once held (a split leaves such word behind on the other
    side), and a held peer vouches for nobody meanwhile."""
    t = ring()
    me = t.peers.record.watching
    x, y = sorted({r.node for r in MANY[:8]} - me)[:2]
    t.peers.told(ReplicaId(x, 1), Record(frozenset({y})))
    t.peers.told(ReplicaId(y, 1), Record(frozenset({x})))
    t.at(FAILURE + 1)
    for name in me:
        t.peers.heard(ReplicaId(name, 1))
    assert lost_names(t) == set()
    t.at(FAILURE + 1 + HOLD / 2)
    assert lost_names(t) == set()
    t.at(FAILURE + 1 + HOLD + 0.1)
    for name in me:
        t.peers.heard(ReplicaId(name, 1))
    assert {x, y} <= lost_names(t)


def test_a_peer_this_node_starts_to_watch_stays_reachable_but_unvouched_until_heard() -> None:
    """It watches on past an unreachable peer: the next is not heard here yet (nobody
    heartbeats it from here), but was reachable, vouched for by its watcher until now.  It stays
    reachable here for a heartbeat's period, and is not vouched for to others until heard."""
    t = ring()
    watching = t.peers.record.watching
    t.at(FAILURE + 1)
    for replica in MANY[:8]:
        t.peers.heard(replica)
    t.at(2 * FAILURE + 1.5)
    for name in watching:
        t.peers.heard(ReplicaId(name, 1))
    first = min(watching)
    t.peers.unreachable(ReplicaId(first, 1))
    lost = lost_names(t)
    (new,) = {p.replica.node for p in t.peers if p.watched_since is not None} - watching
    assert new not in lost  # silent here for 10.5 s, but just watched
    assert t.peers.record.watching == watching  # vouches for the new one to nobody yet
    assert first in t.peers.record.silent
    assert t.peers.confirms(ReplicaId(new, 1))
    t.peers.delivered(ReplicaId(new, 1))  # the heartbeat it sent at once
    assert lost_names(t) == set()
    assert t.peers.record.watching == watching | {new}
    assert not t.peers.confirms(ReplicaId(new, 1))
    # Then silent for the failure timeout: unreachable here, and said so.
    t.at(2 * FAILURE + 1.5 + FAILURE + 0.1)
    for name in watching - {first}:
        t.peers.heard(ReplicaId(name, 1))
    assert new in lost_names(t)
    assert t.peers.record.silent == {first, new}


def test_a_peer_lost_when_its_watchers_stop_vouching_is_removed_after_it_was_last_known_alive() -> (
    None
):
    """Heard here last at 0, vouched for until 200 s: removed ``removal_timeout`` after 200 s
    less ``failure_timeout`` (its watcher had not heard it for that long), not after 0."""
    t = ring()
    me = t.peers.record.watching
    watcher, watched = sorted({r.node for r in MANY[:8]} - me)[:2]
    t.peers.told(ReplicaId(watcher, 1), Record(frozenset({watched})))
    t.at(200.0)
    for name in me | {watcher}:
        t.peers.heard(ReplicaId(name, 1))
    t.peers.judge()
    t.peers.told(ReplicaId(watcher, 1), Record(frozenset({watched}), frozenset({watched})))
    assert watched in lost_names(t)
    t.at(200.0 - FAILURE + REMOVAL)
    for name in me | {watcher}:
        t.peers.heard(ReplicaId(name, 1))
    assert watched not in [p.replica.node for p, _ in t.peers.sweep()[2]]
    t.at(200.0 - FAILURE + REMOVAL + 0.5)
    assert (watched, REMOVAL + 0.5) in [(p.replica.node, s) for p, s in t.peers.sweep()[2]]


@pytest.mark.parametrize("how", ["left the convention", "dead target", "watched and silent"])
def test_regression_a_peer_vouched_for_long_is_not_removed_as_soon_as_it_is_lost(how: str) -> None:
    """What happened before the fix (found by review, in simulated 64-node clusters): a node
    may not hear a peer it does not watch for minutes while the peer's watchers vouch for it.
    Lost then (the convention missed its re-registration, a send came back dead, or this node
    started to watch it and its first heartbeat came late), its removal was timed from when it
    was last heard here: 300 s ago, so the next sweep removed a live node for good (and pruned
    it), on a minority side of a split too.  Removal runs from when it was last known alive."""
    t = ring()
    me = t.peers.record.watching
    watcher, watched = sorted({r.node for r in MANY[:8]} - me)[:2]
    t.peers.told(ReplicaId(watcher, 1), Record(frozenset({watched})))
    for now in range(10, 400, 10):  # vouched for all along, never heard here
        t.at(float(now))
        for name in me | {watcher}:
            t.peers.heard(ReplicaId(name, 1))
        t.peers.judge()
    peer = t.peers.get(watched)
    assert peer is not None
    assert peer.reachable
    assert peer.last_seen == 0.0
    if how == "left the convention":
        t.peers.left(watched)
    elif how == "dead target":
        t.peers.unreachable(ReplicaId(watched, 1))
    else:
        peer.watched_since = 390.0 - FAILURE  # as if watched, never heard: silent here
        t.peers._watch = lambda: me | {watched}  # type: ignore[method-assign]
    t.at(400.0)
    for name in me | {watcher}:
        t.peers.heard(ReplicaId(name, 1))
    kept, _, removed, _ = t.peers.sweep()
    assert not peer.reachable
    assert watched not in [p.replica.node for p, _ in removed]
    assert peer in kept


def test_of_the_reachable_ring_only_the_watched_get_heartbeats_and_on_announce_everyone() -> None:
    t = ring()
    watching = t.peers.record.watching
    t.at(FAILURE / HEARTBEATS_PER_TIMEOUT + 0.1)
    rng = random.Random(0)
    status, heartbeat = t.peers.gossip_targets(lambda _r: math.inf, rng)
    assert {p.replica.node for p in heartbeat} == watching - {p.replica.node for p in status}
    status, heartbeat = t.peers.gossip_targets(lambda _r: 0.0, rng, announce=True)
    assert {p.replica for p in status + heartbeat} == set(MANY[:8])


def test_the_directory_digest_is_equal_where_the_replicas_known_are() -> None:
    one, two = Table(), Table()
    one.learn(A1, B)
    two.peers.learn(ME, B, ActorAddress("b as the other process names it"))
    two.peers.learn(ME, A1, ActorAddress("a elsewhere"))
    assert one.peers.directory_digest(ME) == two.peers.directory_digest(ME)
    two.peers.learn(ME, A2, address_of(A2))  # a's next incarnation
    assert one.peers.directory_digest(ME) != two.peers.directory_digest(ME)
    one.peers.learn(ME, A2, address_of(A2))
    assert one.peers.directory_digest(ME) == two.peers.directory_digest(ME)
    assert one.peers.directory_digest(ME) != one.peers.directory_digest(ReplicaId("me", 2))


# -- quorums with unreachable peers -------------------------------------------------------------

Level = WriteConsistency | ReadConsistency


def five_with_two_unreachable() -> Table:
    t = Table()
    t.learn(*FIVE)
    t.at(FAILURE + 1)
    t.peers.heard(A1)
    t.peers.heard(B)
    t.sweep()
    return t


@pytest.mark.parametrize(
    ("level", "can_succeed"),
    [
        (WriteMajority(1.0), True),  # 3 of 5: this node and the 2 reachable
        (WriteMajority(1.0, min_cap=3), True),
        (WriteMajority(1.0, min_cap=4), False),
        (WriteAll(1.0), False),  # the 2 unreachable still count in N
        (WriteTo(2, 1.0), True),
        (WriteTo(3, 1.0), True),
        (WriteTo(4, 1.0), False),
        (WriteTo(50, 1.0), False),  # all 5, capped at N
        (ReadMajority(1.0), True),
        (ReadMajority(1.0, min_cap=5), False),
        (ReadAll(1.0), False),
        (ReadFrom(3, 1.0), True),
        (ReadFrom(4, 1.0), False),
    ],
)
def test_a_quorum_request_the_reachable_peers_cannot_make_waits_for_the_others(
    level: Level, can_succeed: bool
) -> None:
    t = five_with_two_unreachable()
    n, reachable = t.peers.replica_count(), 1 + len(t.peers.targets())
    assert (n, reachable) == (5, 3)
    needed = level.replicas_needed(n)
    assert needed > 1  # the Replicator asks peers only then
    assert (needed <= reachable) is can_succeed
    wakes: list[tuple[float, object]] = []
    quorums = Quorums(lambda seconds, payload: wakes.append((seconds, payload)), random.Random(0))
    pending = Pending("update", ActorAddress("client"), "k", None, needed)
    quorums.open(pending, t.peers.targets(), 1.5)
    assert wakes == [(1.5, RequestTimeout(pending.id_))]
    for replica in (A1, B):
        quorums.answer(pending.id_, replica.node, address_of(replica))
    assert pending.enough() is can_succeed
    # The unreachable peers are heard again: the request asks them, and their answers count.
    for replica in (C, D):
        t.peers.heard(replica)
        assert quorums.meet(replica.node, address_of(replica)) == [pending]
        quorums.answer(pending.id_, replica.node, address_of(replica))
    assert pending.enough()


@pytest.mark.parametrize("level", [WriteLocal(), ReadLocal()])
def test_a_local_level_needs_only_this_node_however_many_are_unreachable(level: Level) -> None:
    t = five_with_two_unreachable()
    assert level.replicas_needed(t.peers.replica_count()) == 1


def test_a_write_all_with_a_peer_down_needs_it_until_it_is_removed() -> None:
    t = Table()
    t.learn(*FIVE)
    t.at(FAILURE + 1)
    for replica in (A1, B, C):
        t.peers.heard(replica)
    t.sweep()
    quorums = Quorums(lambda _seconds, _payload: None, random.Random(0))

    def write_all() -> bool:
        """Whether a WriteAll opened now is satisfied by the reachable peers' answers."""
        needed = WriteAll(1.0).replicas_needed(t.peers.replica_count())
        pending = Pending("update", None, "k", None, needed)
        quorums.open(pending, t.peers.targets(), 1.0)
        for name, address in pending.asked.items():
            quorums.answer(pending.id_, name, address)
        return pending.enough()

    assert not write_all()  # needs 5, reaches 4
    t.at(REMOVAL + 1)
    for replica in (A1, B, C):
        t.peers.heard(replica)
    t.sweep()
    assert t.peers.replica_count() == 4
    assert write_all()


def test_a_peer_cut_off_by_the_test_switch_cannot_answer_a_quorum() -> None:
    t = Table()
    t.learn(B, C)
    t.peers.blocked = frozenset({"b", "c"})
    needed = WriteMajority(1.0).replicas_needed(t.peers.replica_count())
    pending = Pending("update", None, "k", None, needed)
    quorums = Quorums(lambda _s, _p: None, random.Random(0))
    quorums.open(pending, t.peers.targets(), 1.0)
    assert pending.asked == {}
    assert quorums.answer(pending.id_, "b", address_of(B)) is None


def test_an_answer_counts_once_and_only_from_the_peer_asked_at_its_address() -> None:
    t = Table()
    t.learn(*FIVE)
    quorums = Quorums(lambda _s, _p: None, random.Random(0))
    pending = Pending("get", None, "k", None, 3)
    quorums.open(pending, t.peers.targets(), 1.0)
    assert quorums.answer(pending.id_, "b", ActorAddress("impostor")) is None
    assert quorums.answer(pending.id_, "stranger", address_of(B)) is None
    assert quorums.answer("another request", "b", address_of(B)) is None
    assert quorums.answer(None, "b", address_of(B)) is None
    assert quorums.answer(pending.id_, "b", address_of(B)) is pending
    assert not pending.enough()
    assert quorums.answer(pending.id_, "b", address_of(B)) is None  # once
    assert quorums.answer(pending.id_, "c", address_of(C)) is pending
    assert pending.enough()
    quorums.close(pending)
    assert len(quorums) == 0
    assert quorums.timed_out(pending.id_) is None


# -- admission of peer messages ------------------------------------------------------------------


def _status(sender: object, version: int = PROTOCOL_VERSION) -> GossipStatus:
    return GossipStatus(version, sender, {})  # type: ignore[arg-type]


def test_a_message_is_admitted_only_from_a_current_peer_of_this_protocol_version() -> None:
    t = Table()
    me = ME
    a = ReplicaId("a", 1)
    assert t.peers.admit(_status(a), me) is Admission.OK
    assert t.peers.admit(_status(a, version=PROTOCOL_VERSION + 1), me) is Admission.OTHER_VERSION
    assert t.peers.admit(_status("a"), me) is Admission.MALFORMED
    assert t.peers.admit(object(), me) is Admission.MALFORMED
    assert t.peers.admit(_status(me), me) is Admission.IGNORED
    t.peers.blocked = frozenset({"a"})
    assert t.peers.admit(_status(a), me) is Admission.IGNORED
    t.peers.blocked = frozenset()
    t.peers.departed.add(a)
    assert t.peers.admit(_status(a), me) is Admission.REMOVED
    assert t.peers.admit(_status(ReplicaId("a", 2)), me) is Admission.OK  # its next start


def test_a_message_from_a_pruned_replica_is_answered_as_removed() -> None:
    t = Table()
    b = ReplicaId("b", 1)
    t.pruned.add(b)
    assert t.peers.admit(_status(b), ME) is Admission.REMOVED
