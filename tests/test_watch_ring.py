"""The ring of watchers (see :mod:`thespian_dd._runtime.peers`), across whole simulated clusters:
real :class:`Parts` of every node on one fake clock, each node's transmits delivered to the
other's peer handler at once unless the two are split or the receiver is stopped (a transmit to
it then fails, as Thespian's does).  What is checked: each node is watched by :data:`WATCHERS`
others and heartbeats only them; a stopped node is unreachable everywhere within the failure
timeout and a few rounds, and reachable again once it runs; each half of a split finds exactly
the other half unreachable, a node whose watchers are all on the other side included; ten of
twelve stopped leave the two live nodes reaching each other; a peer that its watchers stopped
vouching for is removed ``removal_timeout`` after it was last known alive, not after it was last
heard here."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable

import pytest
from fakes import Clock, FakeNode, replica

from thespian_dd._runtime.peers import HEARTBEATS_PER_TIMEOUT, WATCHERS
from thespian_dd._runtime.protocol import Heartbeat, PeerMessage
from thespian_dd._runtime.settings import Settings

pytestmark = pytest.mark.timeout(120)

GOSSIP = 2.0
FAILURE = 10.0
REMOVAL = 300.0


class Mesh:
    """``n`` nodes named n00, n01, ... that have met; ``stopped``: nodes that run no round and
    receive nothing; ``split``: pairs of nodes that cannot reach each other."""

    def __init__(self, n: int, seed: int = 0) -> None:
        self.clock = Clock(1000.0)
        settings = Settings(
            gossip_interval=GOSSIP, failure_timeout=FAILURE, removal_timeout=REMOVAL
        )
        self.nodes = {
            f"n{i:02}": FakeNode(
                settings=settings, me=replica(f"n{i:02}"), clock=self.clock, seed=seed + i
            )
            for i in range(n)
        }
        self.stopped: set[str] = set()
        self.cut: set[frozenset[str]] = set()
        self.sent: Counter[tuple[str, str, str]] = Counter()  # (kind, from, to)
        for a, b in itertools.permutations(self.nodes.values(), 2):
            b.parts.membership.on_hello(a.parts.membership.hello(reply=False), a.address)
        self.settle()

    def names(self) -> list[str]:
        return sorted(self.nodes)

    def reaches(self, a: str, b: str) -> bool:
        return b not in self.stopped and frozenset((a, b)) not in self.cut

    def split(self, side: Iterable[str]) -> None:
        one = set(side)
        other = set(self.nodes) - one
        self.cut = {frozenset(pair) for pair in itertools.product(one, other)}
        self._silence()

    def heal(self) -> None:
        self.cut = set()
        self._silence()

    def stop(self, *names: str) -> None:
        self.stopped |= set(names)
        self._silence()

    def start(self, *names: str) -> None:
        self.stopped -= set(names)
        self._silence()

    def _silence(self) -> None:
        for name, node in self.nodes.items():
            node.wire.silent = {other for other in self.nodes if not self.reaches(name, other)}

    def settle(self) -> None:
        """Deliver everything in flight, and what it makes each node send, until none is."""
        for _ in range(100):
            moved = False
            for name, node in self.nodes.items():
                if name in self.stopped:
                    node.wire.sent.clear()  # a stopped node's messages never leave it
                    continue
                for to, message in node.out():
                    moved = True
                    target = to.addressDetails.split("@")[0]
                    self.sent[type(message).__name__, name, target] += 1
                    if self.reaches(name, target):
                        self.nodes[target].parts.on_peer_message(message, node.address)
            if not moved:
                return
        raise AssertionError("messages still flowing after 100 passes")

    def rounds(self, seconds: float) -> None:
        """Gossip rounds every GOSSIP seconds for ``seconds``."""
        for _ in range(round(seconds / GOSSIP)):
            self.clock.now += GOSSIP
            for name, node in self.nodes.items():
                if name not in self.stopped:
                    node.parts.membership.round()
            self.settle()

    def unreachable(self, name: str) -> set[str]:
        """The peers node ``name`` finds unreachable."""
        return {p.replica.node for p in self.nodes[name].parts.peers if not p.reachable}

    def watching(self, name: str) -> frozenset[str]:
        return self.nodes[name].parts.peers.record.watching


def test_each_node_is_watched_by_watchers_others_and_heartbeats_only_those() -> None:
    mesh = Mesh(12)
    mesh.rounds(30)
    watched_by = Counter(w for name in mesh.names() for w in mesh.watching(name))
    assert all(len(mesh.watching(name)) == WATCHERS for name in mesh.names())
    assert watched_by == dict.fromkeys(mesh.names(), WATCHERS)
    assert all(mesh.unreachable(name) == set() for name in mesh.names())
    mesh.sent.clear()
    mesh.rounds(60)
    heartbeats = {(a, b) for (kind, a, b) in mesh.sent if kind == Heartbeat.__name__}
    assert heartbeats
    assert all(b in mesh.watching(a) for a, b in heartbeats)
    # Idle: a heartbeat per watched pair a third of the failure timeout (at most), not per pair.
    count = sum(n for (kind, _, _), n in mesh.sent.items() if kind == Heartbeat.__name__)
    assert count <= 12 * WATCHERS * 60 / (FAILURE / HEARTBEATS_PER_TIMEOUT)
    assert all(mesh.unreachable(name) == set() for name in mesh.names())


def test_a_stopped_node_is_unreachable_everywhere_soon_and_reachable_again_once_it_runs() -> None:
    mesh = Mesh(12)
    mesh.rounds(30)
    mesh.stop("n05")
    mesh.rounds(FAILURE + 2 * GOSSIP)
    live = [n for n in mesh.names() if n != "n05"]
    assert all(mesh.unreachable(name) == {"n05"} for name in live)
    mesh.start("n05")
    mesh.rounds(2 * GOSSIP)
    assert all(mesh.unreachable(name) == set() for name in mesh.names())


@pytest.mark.parametrize(("n", "seed"), [(12, 0), (12, 1), (12, 2), (32, 3)])
def test_each_half_of_a_split_finds_exactly_the_other_half_unreachable(n: int, seed: int) -> None:
    """Sorted halves, and random ones.  The watchers across the split find theirs silent after
    the failure timeout; the rest of the other side, no longer vouched for by anyone heard here,
    is held a heartbeat's period more: within ``2 * FAILURE`` (16-18 s in these clusters)."""
    mesh = Mesh(n, seed)
    mesh.rounds(30)
    names = mesh.names()
    low = names[: n // 2] if seed % 2 == 0 else random.Random(seed).sample(names, n // 2)
    high = sorted(set(names) - set(low))
    mesh.split(low)
    mesh.rounds(FAILURE)
    for name in names:
        assert mesh.unreachable(name) <= set(high if name in low else low), name
    mesh.rounds(FAILURE)
    for side, other in ((low, high), (high, low)):
        for name in side:
            assert mesh.unreachable(name) == set(other), name
    mesh.heal()
    mesh.rounds(2 * GOSSIP)
    assert all(mesh.unreachable(name) == set() for name in mesh.names())


def test_a_node_whose_watchers_are_all_across_a_split_stays_reachable_on_its_side() -> None:
    """The node's watchers, on the other side, stop vouching for it; on its own side nobody
    watched it yet.  Before the watchers there extend their watch past the unreachable, its
    side must not find it unreachable (nor after)."""
    mesh = Mesh(12)
    mesh.rounds(30)
    lonely = "n03"
    watchers = {name for name in mesh.names() if lonely in mesh.watching(name)}
    assert len(watchers) == WATCHERS
    side = set(mesh.names()) - watchers
    mesh.split(side)
    for _ in range(int(2 * FAILURE / GOSSIP)):
        mesh.rounds(GOSSIP)
        for name in side:
            assert lonely not in mesh.unreachable(name), name
    for name in side:
        assert mesh.unreachable(name) == watchers, name
    for name in watchers:
        assert mesh.unreachable(name) == side, name


def test_ten_of_twelve_stopped_leave_the_two_live_nodes_reaching_each_other() -> None:
    mesh = Mesh(12)
    mesh.rounds(30)
    live = {"n02", "n09"}
    mesh.stop(*(set(mesh.names()) - live))
    mesh.rounds(2 * FAILURE)
    for name in live:
        assert mesh.unreachable(name) == set(mesh.names()) - live, name
    # Each watches the other now: the ring past the unreachable.
    assert all((live - {name}) <= mesh.watching(name) for name in live)


def test_a_peer_its_watchers_stopped_vouching_for_is_removed_after_it_was_last_known_alive() -> (
    None
):
    """A node that does not watch the peer may not have heard it for long (only statuses at
    random reach it): the removal timeout runs from when it was last known alive."""
    mesh = Mesh(8)
    mesh.rounds(30)
    stopped_at = mesh.clock.now
    mesh.stop("n04")
    removed_at: dict[str, float] = {}
    while len(removed_at) < 7:
        mesh.rounds(GOSSIP)
        for name in mesh.names():
            gone = mesh.nodes[name].parts.peers.get("n04") is None
            if name != "n04" and name not in removed_at and gone:
                removed_at[name] = mesh.clock.now
        assert mesh.clock.now < stopped_at + REMOVAL + FAILURE + 4 * GOSSIP
    for name, when in removed_at.items():
        assert when > stopped_at + REMOVAL - FAILURE, name


def test_what_a_peer_says_of_its_watch_is_refused_and_counted_when_malformed() -> None:
    mesh = Mesh(3)
    node, peer = mesh.nodes["n00"], mesh.nodes["n01"]
    before = node.rejections.count
    good = peer.parts.membership.heartbeat()
    bad: list[PeerMessage] = [
        Heartbeat(good.version, good.sender, frozenset({1})),  # type: ignore[arg-type]
        Heartbeat(good.version, good.sender, ["n02"]),  # type: ignore[arg-type]
        Heartbeat(good.version, good.sender, frozenset({"n02"}), frozenset({"n00"})),
    ]
    record = node.parts.peers.get("n01")
    assert record is not None
    said = record.record
    for message in bad:
        assert node.parts.membership.accept(message, peer.address)  # the sender is alive
    assert node.rejections.count == before + len(bad)
    assert record.record == said
