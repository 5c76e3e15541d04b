"""Report: the Stats and Status a node gives of itself, read from its wired :class:`Parts` in a
state the test builds step by step (peers met by hello, one lost, one removed, one that cannot
be talked to; values merged, written, refused; a store loaded, committing, failing).

Covered: every Stats field (keys, peers and reachable peers, gossip bytes in and out, rounds,
rejected inputs, refused rows, subscribers, the store's queue depth, last flush, recovery time,
failures and error, serving, incompatible peers, the request echoed); Status's peers sorted by
name with reachability, silence and versions, the removed replicas, keys, tombstones, value bytes
(a restored row counted undecoded), the largest keys by size with ties broken by name, the store
URL without its password, and serving False (with the rows read so far) while loading.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest
from fakes import Clock, FakeNode, Wire, address, restore_collector
from thespian.actors import ActorAddress

from thespian_dd import GCounter, ORSet, ReplicaId
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    GossipEntries,
    Heartbeat,
    PeerMessage,
    gossip_bytes,
)
from thespian_dd._runtime.settings import Settings
from thespian_dd._runtime.writer import LoadChunk, Loaded, Write, Written
from thespian_dd.codec import FORMAT_VERSION, encode
from thespian_dd.messages import PeerStatus, Stats, Status

pytestmark = pytest.mark.timeout(60)

A, B, C, D, Z = (ReplicaId(name, 1) for name in "abcdz")
START = 1000.0
FAILURE, REMOVAL = 10.0, 30.0
URL = "sqlite:///x.db"
BAD_MARKERS = b"TDE\x01" + (100).to_bytes(4, "big") + b"short"
PAIR = f"protocol 1, format 1/2 -> protocol 1, format {FORMAT_VERSION}"


_collector_restored = pytest.fixture(autouse=True)(restore_collector)


@dataclass
class Node(FakeNode):
    """A node whose transmits are finished as they are made, on a clock from START."""

    clock: Clock[float] = field(default_factory=lambda: Clock(START))
    wire: Wire = field(default_factory=lambda: Wire(at_once=True))

    def stats(self) -> Stats:
        return self.parts.report.stats(self.me, self.parts.local.refused_rows, "req-1")

    def status(self, largest: int = 3) -> Status:
        return self.parts.report.status(self.me, largest, "req-2")


def loaded(settings: Settings) -> Node:
    """A durable node that loaded two rows (one refused here) and one the writer skipped."""
    node = Node(settings)
    durability = node.parts.durability
    durability.start()
    chunk = LoadChunk(
        [("r1", encode(GCounter().increment(A, 2))), ("bad", BAD_MARKERS)], [("s", "mac")]
    )
    assert durability.chunk(chunk, node.writers[-1])
    node.parts.local.restore(chunk.rows, len(chunk.skipped))
    outcome = durability.loaded(Loaded(2, 3), node.writers[-1])
    assert outcome is not None
    assert outcome.incarnation == 2
    node.me = ReplicaId("a", 2)  # as the Replicator takes the incarnation the load counted
    node.sent.clear()
    return node


def with_peers(node: Node) -> None:
    """Peers b, c and d met; then d falls silent past the removal timeout (removed), c leaves
    (unreachable), and z, which speaks no version in common, says hello."""
    for peer in (C, B, D):
        node.hello(peer)
    node.clock.now = START + REMOVAL + 1
    node.hear(B)
    node.hear(C)
    node.wire.silent.update({"c", "d"})  # d stopped long ago; c is stopping
    node.parts.membership.round()
    assert node.parts.membership.left("c") is not None
    node.hello(Z, versions={"protocol": (99,), "format": (99,)})
    node.clock.now += 1.25
    node.hear(B)
    node.clock.now += 0.5


# -- Stats -------------------------------------------------------------------------------------


def test_stats_says_every_figure_of_a_known_state() -> None:
    node = loaded(Settings(store=URL, failure_timeout=FAILURE, removal_timeout=REMOVAL))
    with_peers(node)
    parts = node.parts
    parts.membership.round()  # a second round
    parts.subscriptions.subscribe("r*", ActorAddress("s1"))
    parts.subscriptions.subscribe("g", ActorAddress("s2"))
    # From b: one value merged and one asked for; bytes in are what gossip carried.
    payload = encode(ORSet[str]().add(B, "e"))
    entries = GossipEntries(PROTOCOL_VERSION, B, {"g": payload}, frozenset({"w1"}))
    bytes_before = parts.membership.bytes_in
    assert parts.membership.accept(entries, address(B))
    parts.anti_entropy.on_entries(entries, None)
    assert parts.membership.bytes_in - bytes_before == len("g") + len(payload) + len("w1")
    assert not parts.local.merge("g", b"\x00junk", str(B))  # refused: one more rejection
    before = time.time()
    node.writes()
    after = time.time()
    # One batch fails while another key waits: both are kept for the retry.
    parts.local.store("q1", GCounter().increment(A))
    parts.local.store("q2", GCounter().increment(A))
    (failing,) = [m for _, m in node.sent if isinstance(m, Write)]
    parts.durability.committed(Written(failing.seq, "disk full"))
    peer_messages = [t.message for t in node.wire.sent if isinstance(t.message, PeerMessage)]

    stats = node.stats()

    assert stats.node == "a#2"
    assert stats.keys == 4  # r1 restored, g merged, q1 and q2 written
    assert stats.peers == 2  # b and c; d was removed, z is not talked to
    assert stats.reachable_peers == 1
    assert stats.gossip_bytes_in == len("g") + len(payload) + len("w1")
    assert stats.gossip_bytes_out == sum(gossip_bytes(m) for m in peer_messages) > 0
    assert stats.gossip_rounds == 2
    assert stats.rejected_inputs == 3  # two rows refused at load, one payload
    assert stats.refused_rows == 2
    assert stats.subscribers == 2
    assert stats.store_queue_depth == 2
    assert stats.last_flush is not None
    assert before <= stats.last_flush <= after
    assert stats.recovery_time is not None
    assert stats.recovery_time >= 0
    assert stats.store_failures == 1
    assert stats.store_error == "disk full"
    assert stats.serving
    assert stats.incompatible_peers == (
        "z: it speaks protocol 99, format 99; this node speaks protocol 1, format 1/2",
    )
    assert stats.request == "req-1"


def test_gossip_bytes_out_grow_by_what_a_gossip_message_carries() -> None:
    node = Node(Settings())
    node.hello(B)
    peer = node.parts.peers.get("b")
    assert peer is not None
    before = node.stats().gossip_bytes_out
    entries = {"key": b"x" * 50, "other": b"y" * 7}
    node.parts.membership.reply(peer, GossipEntries(PROTOCOL_VERSION, A, entries, frozenset({"w"})))
    assert node.stats().gossip_bytes_out - before == 3 + 50 + 5 + 7 + 1
    node.parts.membership.reply(peer, Heartbeat(PROTOCOL_VERSION, A))
    assert node.stats().gossip_bytes_out - before == 3 + 50 + 5 + 7 + 1  # a heartbeat carries none


def test_an_in_memory_node_has_no_store_figures_and_serves() -> None:
    node = Node(Settings())
    stats = node.stats()
    assert (stats.keys, stats.peers, stats.reachable_peers, stats.gossip_rounds) == (0, 0, 0, 0)
    assert (stats.store_queue_depth, stats.store_failures, stats.refused_rows) == (0, 0, 0)
    assert stats.last_flush is None
    assert stats.recovery_time is None
    assert stats.store_error is None
    assert stats.serving
    assert stats.incompatible_peers == ()


# -- Status ------------------------------------------------------------------------------------


def test_status_lists_the_peers_by_name_with_reachability_silence_and_versions() -> None:
    node = Node(Settings(failure_timeout=FAILURE, removal_timeout=REMOVAL))
    with_peers(node)
    status = node.status()
    assert status.peers == (
        PeerStatus("b", "b#1", str(address(B)), True, 0.5, PAIR),
        PeerStatus("c", "c#1", str(address(C)), False, 1.75, PAIR),
    )
    assert status.removed == ("d#1",)
    assert status.incompatible_peers == node.stats().incompatible_peers
    assert len(status.incompatible_peers) == 1
    assert status.request == "req-2"


def test_status_counts_keys_tombstones_and_value_bytes_and_names_the_largest() -> None:
    node = Node(Settings())
    local = node.parts.local
    small = GCounter().increment(A)
    big = ORSet[str]().add(A, "e" * 100)
    restored = GCounter().increment(B, 7).increment(C, 3)
    local.store("x1", small)
    local.store("x2", small)
    local.store("big", big)
    local.store("gone", small)
    local.store("gone", None)
    local.restore([("row", encode(restored))], 0)
    sizes = {"x1": len(encode(small)), "big": len(encode(big)), "row": len(encode(restored))}
    assert sizes["big"] > sizes["row"] > sizes["x1"]

    status = node.status(largest=3)

    assert status.keys == 4
    assert status.tombstones == 1
    assert status.value_bytes == 2 * sizes["x1"] + sizes["big"] + sizes["row"]
    assert node.parts.keys.undecoded() == 1  # a restored row is measured by its bytes
    assert status.largest == (("big", sizes["big"]), ("row", sizes["row"]), ("x2", sizes["x1"]))
    assert node.status(largest=1).largest == (("big", sizes["big"]),)
    assert node.status(largest=0).largest == ()


def test_keys_of_one_size_are_ranked_by_name() -> None:
    node = Node(Settings())
    value = GCounter().increment(A)
    for key in ("m", "z", "a"):
        node.parts.local.store(key, value)
    size = len(encode(value))
    assert node.status(largest=2).largest == (("z", size), ("m", size))


def test_status_shows_the_store_without_its_password() -> None:
    node = Node(
        Settings(store="postgresql://dd:s3cret@db.example:5432/data", write_mode="write-behind")
    )
    status = node.status()
    assert status.store == "postgresql://dd:***@db.example:5432/data"
    assert "s3cret" not in repr(status)
    assert status.write_mode == "write-behind"
    assert Node(Settings()).status().store is None
    assert Node(Settings(store="file:/etc/dd/url")).status().store == "file:/etc/dd/url"


def test_a_node_loading_its_store_says_it_is_not_serving_and_how_far_it_got() -> None:
    node = Node(Settings(store=URL))
    node.parts.durability.start()
    assert not node.stats().serving
    assert not node.status().serving
    chunk = LoadChunk([("r1", encode(GCounter().increment(A)))], [("s", "mac")])
    assert node.parts.durability.chunk(chunk, node.writers[-1])
    node.parts.local.restore(chunk.rows, len(chunk.skipped))
    status = node.status()
    assert not status.serving
    assert status.loaded_rows == 2
    assert status.recovery_time is None
    assert node.stats().refused_rows == 1
    node.parts.durability.loaded(Loaded(5, 2), node.writers[-1])
    assert node.status().serving
    assert node.stats().serving


def test_a_node_whose_store_cannot_be_loaded_says_why() -> None:
    node = Node(Settings(store=URL))
    node.parts.durability.start()
    node.parts.durability.loaded(Loaded(0, 0, "no such table"), node.writers[-1])
    stats, status = node.stats(), node.status()
    assert not stats.serving
    assert not status.serving
    assert stats.store_error == status.store_error == "the store cannot be loaded: no such table"
