"""LocalData, every change to a node's keys, driven through the wired :class:`Parts` without
processes.

Covered: the key table's digests and buckets follow a write, a delete (a tombstone has a digest),
a peer's merge, an expiry (the key's digest goes, and its bucket if it was alone) and a load (a
restored row has its digest without being decoded); subscribers are told once per change, not
for a merge that changes nothing nor for one that changes only pruning markers; a malformed,
wrong-type, non-bytes, badly keyed or oversize payload is rejected, counted, logged once per
origin and changes nothing (no notification, no store write); a payload that says this node's
replica was pruned makes it take a new incarnation; an expired key is not brought back by a
peer's older use, but is by a recent one; ``expire_idle`` drops the key's queued delta, tells
``Expired`` and deletes its row; what the store gets for a key (:func:`stored_entry`); and rows
refused at restore (or when first decoded) counted until ``forget``.

Parts act through recording hooks: ``transmit`` delivers at once (a subscriber is told as soon as
it is sent to), the writer is a sentinel, and a durable node's store writes are the ``Write``
batches its hooks were sent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import FakeNode, Wire, restore_collector
from thespian.actors import ActorAddress

from thespian_dd import Flag, GCounter, ORSet, ReplicaId
from thespian_dd._canonical import Limits
from thespian_dd._runtime.keys import TOMBSTONE_DIGEST, KeyTable, bucket_digests, bucket_of
from thespian_dd._runtime.local import stored_entry
from thespian_dd._runtime.markers import Initialized, Performed, envelope_digest, join_envelope
from thespian_dd._runtime.protocol import TOMBSTONE
from thespian_dd._runtime.settings import Settings
from thespian_dd._runtime.versions import format_of
from thespian_dd._runtime.writer import FORGOTTEN, Entry, Loaded
from thespian_dd.codec import FORMAT_VERSION, digest, encode
from thespian_dd.data import ReplicatedData
from thespian_dd.messages import Changed, Deleted, Expired

pytestmark = pytest.mark.timeout(60)

LOGGER = "thespian_dd.replicator"
A, B, C = ReplicaId("a", 1), ReplicaId("b", 1), ReplicaId("c", 1)
GONE = ReplicaId("gone", 1)
SUBSCRIBER = ActorAddress("subscriber")
URL = "sqlite:///x.db"
EXPIRES = {"session*": 60.0}
# Keys alone in their buckets among those a test holds (checked below).
LONE, OTHER = "session-1", "k1"


_collector_restored = pytest.fixture(autouse=True)(restore_collector)


@dataclass
class Node(FakeNode):
    """A node whose transmits are finished as they are made (a subscriber is told as soon as it
    is sent to), with SUBSCRIBER subscribed to every key."""

    wire: Wire = field(default_factory=lambda: Wire(at_once=True))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.parts.subscriptions.subscribe("*", SUBSCRIBER)

    def told(self) -> list[Any]:
        """What the subscriber is told now (a notification time): taken."""
        self.parts.local.notify()
        told = self.wire.to(SUBSCRIBER)
        self.wire.sent.clear()
        return told


def durable_node(**settings: Any) -> Node:
    """A node with a store, loaded (empty) and serving."""
    node = Node(Settings(store=URL, **settings))
    node.parts.durability.start()
    node.parts.durability.loaded(Loaded(2, 0), node.writers[-1])
    node.sent.clear()
    return node


def counter(n: int, by: ReplicaId = B) -> GCounter:
    return GCounter().increment(by, n)


def bucket_of_only(node: Node, key: str) -> bytes:
    """The digest ``key``'s bucket must have when ``key`` is alone in it."""
    digests = node.parts.keys.digests()
    return bucket_digests(digests, [key])[bucket_of(key)]


def test_the_chosen_keys_fall_in_buckets_of_their_own() -> None:
    held = [LONE, OTHER, "k", "session-2"]
    assert len({bucket_of(k) for k in held}) == len(held)


# -- digests and buckets ---------------------------------------------------------------------------


def test_a_write_gives_the_key_its_digest_and_bucket_and_a_delete_the_tombstone_digest() -> None:
    node = Node()
    keys = node.parts.keys
    node.parts.local.store(OTHER, counter(1))
    before = keys.buckets()
    node.parts.local.store("k", counter(2))
    assert keys.digests()["k"] == digest(counter(2))
    assert keys.buckets()[bucket_of("k")] == bucket_of_only(node, "k")
    assert keys.buckets()[bucket_of(OTHER)] == before[bucket_of(OTHER)]
    node.parts.local.store("k", counter(3))
    assert keys.digests()["k"] == digest(counter(3))
    written = keys.buckets()
    node.parts.local.store("k", None)
    assert keys.digests()["k"] == TOMBSTONE_DIGEST
    assert keys.is_deleted("k")
    assert keys.buckets()[bucket_of("k")] != written[bucket_of("k")]
    assert keys.buckets()[bucket_of("k")] == bucket_of_only(node, "k")


def test_a_peers_value_merged_in_changes_the_digest_to_the_merged_values() -> None:
    node = Node()
    mine, theirs = counter(2, A), counter(5, B)
    node.parts.local.store("k", mine)
    bucket = node.parts.keys.buckets()[bucket_of("k")]
    assert node.parts.local.merge("k", encode(theirs), str(B))
    merged = mine.merge(theirs)
    assert node.parts.keys.get("k") == merged
    assert node.parts.keys.digests()["k"] == digest(merged)
    assert node.parts.keys.buckets()[bucket_of("k")] not in (bucket, None)


def test_an_expired_key_loses_its_digest_and_its_bucket_if_it_was_alone() -> None:
    node = Node(Settings(expire_keys_after_inactivity=EXPIRES))
    keys = node.parts.keys
    node.parts.local.store(LONE, counter(1))
    node.parts.local.store(OTHER, counter(1))
    keys.touch(LONE, time.time() - 120)  # idle for two minutes; it expires after one
    assert bucket_of(LONE) in keys.buckets()
    other = keys.buckets()[bucket_of(OTHER)]
    node.parts.local.expire_idle()
    assert LONE not in keys
    assert not keys.is_deleted(LONE)  # no tombstone: used again, it comes back
    assert LONE not in keys.digests()
    assert bucket_of(LONE) not in keys.buckets()
    assert keys.buckets()[bucket_of(OTHER)] == other


def test_a_restored_row_has_its_digest_and_bucket_without_being_decoded() -> None:
    node = Node()
    keys = node.parts.keys
    value = counter(7)
    node.parts.local.restore([("k", encode(value)), (OTHER, None)], 0)
    assert keys.undecoded() == 1
    assert keys.digests() == {"k": digest(value), OTHER: TOMBSTONE_DIGEST}
    assert keys.buckets()[bucket_of("k")] == bucket_of_only(node, "k")
    assert keys.undecoded() == 1  # gossip's digests need no decode
    assert keys.get("k") == value
    assert node.parts.local.refused_rows == 0


# -- subscribers -----------------------------------------------------------------------------------


def test_subscribers_are_told_once_per_change_with_the_latest_state() -> None:
    node = Node()
    node.parts.local.store("k", counter(1))
    node.parts.local.store("k", counter(2))
    assert node.told() == [Changed("k", counter(2))]
    assert node.told() == []
    node.parts.local.store("k", None)
    assert node.told() == [Deleted("k")]


def test_a_merge_that_changes_the_value_tells_subscribers_one_that_changes_nothing_not() -> None:
    node = Node()
    node.parts.local.store("k", counter(1, A))
    node.told()
    payload = encode(counter(4, B))
    assert node.parts.local.merge("k", payload, str(B))
    assert node.told() == [Changed("k", counter(1, A).merge(counter(4, B)))]
    assert not node.parts.local.merge("k", payload, str(B))  # nothing new
    assert not node.parts.local.merge("k", encode(counter(2, B)), str(B))  # older: nothing new
    assert node.told() == []
    assert node.rejections.count == 0


def test_a_merge_that_changes_only_the_markers_is_kept_but_tells_no_subscriber() -> None:
    node = Node()
    value = counter(1, A).merge(counter(1, GONE))
    node.parts.local.store("k", value)
    node.told()
    markers = {GONE: Initialized(B, frozenset({"b"}))}
    assert node.parts.local.merge("k", join_envelope(encode(value), markers), str(B))
    kept = node.parts.keys.markers("k")
    assert kept == {GONE: Initialized(B, frozenset({"a", "b"}))}  # this node has seen it now
    assert node.parts.keys.digests()["k"] == envelope_digest(digest(value), kept)
    assert node.told() == []


def test_a_tombstone_from_a_peer_deletes_the_key_and_tells_deleted() -> None:
    node = Node()
    node.parts.local.store("k", counter(1))
    node.told()
    assert node.parts.local.merge("k", TOMBSTONE, str(B))
    assert node.parts.keys.is_deleted("k")
    assert node.told() == [Deleted("k")]
    assert not node.parts.local.merge("k", encode(counter(9)), str(B))  # it stays deleted
    assert node.told() == []


# -- payloads refused --------------------------------------------------------------------------


def oversize() -> tuple[ORSet[str], ORSet[str], int]:
    """A value here, a peer's, and a max_value_bytes each fits but their merge does not."""
    mine = ORSet[str]().add(A, "x" * 60)
    theirs = ORSet[str]().add(B, "y" * 60)
    limit = max(len(encode(mine)), len(encode(theirs))) + 8
    assert len(encode(mine.merge(theirs))) > limit
    return mine, theirs, limit


BIG_HERE, BIG_THERE, LIMIT = oversize()
ANY_SIZE = Settings().max_value_bytes

# name: (max_value_bytes, the value here of "k", the key merged, the payload merged)
REFUSED: dict[str, tuple[int, ReplicatedData, object, object]] = {
    "not the codec's bytes": (ANY_SIZE, counter(1), "k", b"\x00not a value"),
    "a damaged encoding": (ANY_SIZE, counter(1), "k", encode(counter(2))[:-3]),
    "bytes of no value": (ANY_SIZE, counter(1), "k", b"TDD\x02" + b"\xff" * 20),
    "another type": (ANY_SIZE, counter(1), "k", encode(ORSet[str]().add(B, "e"))),
    "not bytes": (ANY_SIZE, counter(1), "k", 42),
    "a key that is no str": (ANY_SIZE, counter(1), 42, encode(counter(2))),
    "an empty key": (ANY_SIZE, counter(1), "", encode(counter(2))),
    "too big once merged": (LIMIT, BIG_HERE, "k", encode(BIG_THERE)),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_payload_that_must_be_refused_is_counted_and_changes_nothing(case: str) -> None:
    max_value_bytes, value, key, payload = REFUSED[case]
    node = durable_node(max_value_bytes=max_value_bytes)
    node.parts.local.store("k", value)
    node.writes()
    node.told()
    digests, buckets = dict(node.parts.keys.digests()), node.parts.keys.buckets()
    assert not node.parts.local.merge(key, payload, str(B))
    assert node.rejections.count == 1
    assert node.parts.keys.get("k") == value
    assert node.parts.keys.names() == {"k"}
    assert dict(node.parts.keys.digests()) == digests
    assert node.parts.keys.buckets() == buckets
    assert node.told() == []
    assert node.writes() == []
    assert node.reincarnations == 0


def test_a_refused_payload_is_logged_once_per_origin(caplog: pytest.LogCaptureFixture) -> None:
    node = Node()
    node.parts.local.store("k", counter(1))
    wrong = encode(ORSet[str]().add(B, "e"))
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for origin in (str(B), str(B), str(C), str(B), str(C)):
            assert not node.parts.local.merge("k", wrong, origin)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert str(B) in warnings[0]
    assert str(C) in warnings[1]
    assert all("ORSet" in w and "GCounter" in w for w in warnings)
    assert node.rejections.count == 5  # every one counted


def test_a_payload_saying_this_replica_was_pruned_is_refused_and_takes_a_new_incarnation() -> None:
    node = Node()
    node.parts.local.store("k", counter(1))
    far = int(time.time() * 1000) + 3_600_000
    payload = join_envelope(encode(counter(5, B)), {A: Performed(far)})
    assert not node.parts.local.merge("k", payload, str(B))
    assert node.reincarnations == 1
    assert node.rejections.count == 1
    assert node.parts.keys.get("k") == counter(1)
    assert node.parts.keys.markers("k") == {}


# -- expiry ----------------------------------------------------------------------------------------


def test_an_expired_key_is_not_brought_back_by_a_peers_older_use_but_is_by_a_recent_one() -> None:
    node = Node(Settings(expire_keys_after_inactivity=EXPIRES))
    node.parts.local.store(LONE, counter(1))
    node.parts.keys.touch(LONE, time.time() - 120)
    node.parts.local.expire_idle()
    node.told()
    payload = encode(counter(3))
    assert not node.parts.local.merge(LONE, payload, str(B), time.time() - 120)
    assert LONE not in node.parts.keys
    assert LONE not in node.parts.keys.digests()
    assert node.told() == []
    assert node.rejections.count == 0  # not a bad input: the peer has not expired it yet
    used = time.time() - 5
    assert node.parts.local.merge(LONE, payload, str(B), used)
    assert node.parts.keys.get(LONE) == counter(3)
    assert node.parts.keys.used([LONE]) == {LONE: used}  # its last use came with it
    assert node.told() == [Changed(LONE, counter(3))]


def test_expire_idle_drops_the_queued_delta_tells_expired_and_deletes_the_row() -> None:
    node = durable_node(expire_keys_after_inactivity=EXPIRES)
    local, deltas = node.parts.local, node.parts.deltas
    for key in (LONE, "session-2", OTHER):
        local.store(key, counter(1))
        deltas.add(key, counter(1))
    node.parts.keys.touch(LONE, time.time() - 120)
    node.parts.keys.touch("session-2", time.time() - 30)  # used within its expiry
    node.writes()
    node.told()
    local.expire_idle()
    assert node.parts.keys.names() == {"session-2", OTHER}
    (due,) = deltas.due(A, [ReplicaId("peer", 1)], 1)
    assert due.deltas == {"session-2": counter(1), OTHER: counter(1)}
    assert node.told() == [Expired(LONE)]
    assert node.writes() == [{LONE: FORGOTTEN}]
    local.expire_idle()  # once gone, nothing more
    assert node.told() == []
    assert node.writes() == []


# -- what the store gets -----------------------------------------------------------------------


def test_the_store_gets_a_keys_envelope_its_type_and_the_replicas_it_holds() -> None:
    node = durable_node()
    value = GCounter()
    for name in "fbdaec":  # enough replicas that a set's order is not sorted by chance
        value = value.increment(ReplicaId(name, 3))
    node.parts.local.store("k", value, encode(value))
    node.parts.local.store("f", Flag().switch_on(A))
    assert node.writes() == [
        {"k": Entry("GCounter", encode(value), "a#3 b#3 c#3 d#3 e#3 f#3")},
        {"f": Entry("Flag", encode(Flag().switch_on(A)), "")},  # a type without replicas
    ]
    node.parts.local.store("k", None)
    assert node.writes() == [{"k": None}]


def test_stored_entry_of_a_value_a_tombstone_and_a_key_no_longer_here() -> None:
    keys = KeyTable(lambda _key: None)
    value = ORSet[str]().add(A, "e").add(B, "f")
    markers = {GONE: Performed(10**15)}
    keys.put("k", value, None, markers)
    assert stored_entry(keys, "k", None) == Entry(
        "ORSet", join_envelope(encode(value), markers), "a#1 b#1"
    )
    keys.delete("d")
    assert stored_entry(keys, "d", None) is None
    assert stored_entry(keys, "never", None) is FORGOTTEN
    keys.put("x", value)
    keys.expire("x")
    assert stored_entry(keys, "x", None) is FORGOTTEN


def test_stored_entry_upgrades_an_older_format_to_this_nodes() -> None:
    assert FORMAT_VERSION > 1
    keys = KeyTable(lambda _key: None)
    value = counter(3)
    old = encode(value, 1)
    keys.restore("row", old, Limits())
    entry = stored_entry(keys, "row", None)
    assert isinstance(entry, Entry)
    assert entry is not FORGOTTEN
    assert format_of(entry.payload) == FORMAT_VERSION
    assert entry.payload == encode(value)
    keys.put("k", value, old)  # an encoding of another format given: encoded anew
    entry = stored_entry(keys, "k", old)
    assert isinstance(entry, Entry)
    assert entry is not FORGOTTEN
    assert entry.payload == encode(value)


# -- loading -----------------------------------------------------------------------------------


def test_rows_refused_at_restore_or_first_decode_are_counted_until_forget() -> None:
    node = Node()
    local, keys = node.parts.local, node.parts.keys
    bad_markers = b"TDE\x01" + (100).to_bytes(4, "big") + b"short"
    undecodable = b"TDD" + bytes((FORMAT_VERSION,)) + b"\xff" * 24
    local.restore([("good", encode(counter(1))), ("marked", bad_markers), ("late", undecodable)], 2)
    assert local.refused_rows == 3  # the writer's two, and the markers refused here
    assert node.rejections.count == 3
    assert keys.names() == {"good", "late"}
    assert keys.get("late") is None  # first used: its value does not decode
    assert local.refused_rows == 4
    assert node.rejections.count == 4
    assert keys.names() == {"good"}
    assert "late" not in keys.digests()
    local.forget()
    assert local.refused_rows == 0
    assert node.rejections.count == 0
    assert len(keys) == 0
    assert keys.digests() == {}
    assert keys.buckets() == {}
