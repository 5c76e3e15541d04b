"""The wire protocol between Replicators and with their callers: every class that crosses between
nodes pickles under the name the first release gave it (``thespian_dd._peers.<Name>`` for the
peer protocol, ``thespian_dd.replicator.<Name>`` for the start and process messages), so nodes of
either layout read each other; the Introducer is created by Thespian under
``thespian_dd._peers.Introducer``; a sample of each message survives a pickle round trip equal;
the frozen constants; and ``gossip_bytes`` for each kind of message."""

from __future__ import annotations

import importlib
import io
import pickle
from typing import Any

import pytest
from thespian.actors import ActorAddress
from thespian.system.utilis import actualActorClass

from thespian_dd._runtime import protocol
from thespian_dd._runtime.peers import REPLICATOR_CLASS, REPLICATOR_NAME, Introducer
from thespian_dd._runtime.protocol import (
    NODE_CAPABILITY,
    PROTOCOL_VERSION,
    TOMBSTONE,
    DeltaPropagation,
    DescribeProcess,
    GossipEntries,
    GossipKeys,
    GossipStatus,
    Heartbeat,
    Introduce,
    Introduced,
    IntroducerDone,
    PartitionForTests,
    PeerHello,
    PeerMessage,
    PeerRead,
    PeerReadResult,
    PeerRemoved,
    PeerWrite,
    PeerWriteAck,
    ProcessInfo,
    ReplicatorStarted,
    StartReplicator,
    gossip_bytes,
)
from thespian_dd.data import ReplicaId

pytestmark = pytest.mark.timeout(60)

ME, PEER = ReplicaId("me", 7), ReplicaId("peer", 3)
HERE, THERE = ActorAddress("me-address"), ActorAddress("peer-address")
HELLO = PeerHello(PROTOCOL_VERSION, ME, HERE, {"peer": (PEER, THERE)}, reply=False)

# The wire names: frozen by the first release, whatever the modules are called now.
PEERS = "thespian_dd._peers"
REPLICATOR = "thespian_dd.replicator"
SAMPLES: list[tuple[str, str, Any]] = [
    (PEERS, "PeerMessage", PeerMessage(PROTOCOL_VERSION, ME)),
    (PEERS, "PeerHello", HELLO),
    (PEERS, "PeerRemoved", PeerRemoved(PROTOCOL_VERSION, ME, PEER)),
    (
        PEERS,
        "GossipStatus",
        GossipStatus(
            PROTOCOL_VERSION,
            ME,
            {0: bytes(8), 63: b"\xff" * 8},
            {"peer": (PEER, THERE)},
            {"k": 1.5},
        ),
    ),
    (
        PEERS,
        "GossipStatus",
        GossipStatus(PROTOCOL_VERSION, ME, {0: bytes(8)}, {}, {}, directory=bytes(8)),
    ),
    (PEERS, "Heartbeat", Heartbeat(PROTOCOL_VERSION, ME)),
    (
        PEERS,
        "GossipKeys",
        GossipKeys(PROTOCOL_VERSION, ME, {"k": bytes(16), "é": b"\x01" * 16}, frozenset({0, 5})),
    ),
    (
        PEERS,
        "GossipEntries",
        GossipEntries(
            PROTOCOL_VERSION, ME, {"k": b"value", "gone": TOMBSTONE}, frozenset({"w"}), {"k": 2.0}
        ),
    ),
    (
        PEERS,
        "DeltaPropagation",
        DeltaPropagation(PROTOCOL_VERSION, ME, 42, {"k": b"delta"}, {"k": 3.0}),
    ),
    (PEERS, "PeerWrite", PeerWrite(PROTOCOL_VERSION, ME, "req-1", "k", b"payload")),
    (PEERS, "PeerWriteAck", PeerWriteAck(PROTOCOL_VERSION, ME, "req-1")),
    (PEERS, "PeerRead", PeerRead(PROTOCOL_VERSION, ME, "req-2", "k")),
    (PEERS, "PeerReadResult", PeerReadResult(PROTOCOL_VERSION, ME, "req-2", "k", b"payload")),
    (PEERS, "PeerReadResult", PeerReadResult(PROTOCOL_VERSION, ME, "req-3", "k", None)),
    (PEERS, "PartitionForTests", PartitionForTests(frozenset({"a", "b"}))),
    (PEERS, "Introduce", Introduce(HELLO)),
    (PEERS, "Introduced", Introduced()),
    (PEERS, "IntroducerDone", IntroducerDone()),
    (REPLICATOR, "StartReplicator", StartReplicator({"gossip_interval": 1.0}, "token")),
    (
        REPLICATOR,
        "ReplicatorStarted",
        ReplicatorStarted(ME, {"gossip_interval": 1.0, "durable_keys": ("*",)}, "token"),
    ),
    (REPLICATOR, "ReplicatorStarted", ReplicatorStarted(ME, {}, "token", "an error")),
    (REPLICATOR, "DescribeProcess", DescribeProcess()),
    (REPLICATOR, "ProcessInfo", ProcessInfo(1234, 1200)),
]
IDS = [f"{name}-{i}" for i, (_, name, _) in enumerate(SAMPLES)]


class NamesRead(pickle.Unpickler):
    """An unpickler that records every class it is asked for, by (module, name)."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.names: list[tuple[str, str]] = []

    def find_class(self, module: str, name: str, /) -> Any:
        self.names.append((module, name))
        return super().find_class(module, name)


def test_every_class_that_crosses_between_nodes_has_a_sample() -> None:
    crossing = {
        name
        for name in protocol.__all__
        if isinstance(getattr(protocol, name), type)
        and getattr(protocol, name).__module__ in (PEERS, REPLICATOR)
    }
    assert crossing == {name for _, name, _ in SAMPLES}
    assert "Introducer" not in crossing  # an actor, not a message: see below
    # A peer message kind added later keeps the peer protocol's module too.
    for name in protocol.__all__:
        cls = getattr(protocol, name)
        if isinstance(cls, type) and issubclass(cls, PeerMessage):
            assert cls.__module__ == PEERS, name


@pytest.mark.parametrize(("module", "name", "message"), SAMPLES, ids=IDS)
@pytest.mark.parametrize("proto", range(2, pickle.HIGHEST_PROTOCOL + 1))
def test_a_message_pickles_under_its_frozen_wire_name(
    module: str, name: str, message: Any, proto: int
) -> None:
    cls = type(message)
    assert (cls.__module__, cls.__qualname__) == (module, name)
    reader = NamesRead(pickle.dumps(message, protocol=proto))
    loaded = reader.load()
    assert reader.names[0] == (module, name)  # the message's own class comes first
    assert type(loaded) is cls
    assert loaded == message
    # Only wire names and plain types: no module path of the new layout travels.
    assert all(not m.startswith("thespian_dd._runtime") for m, _ in reader.names)


@pytest.mark.parametrize(("module", "name", "message"), SAMPLES, ids=IDS)
def test_the_wire_name_is_importable_and_is_the_class(module: str, name: str, message: Any) -> None:
    assert getattr(importlib.import_module(module), name) is type(message)


@pytest.mark.parametrize(("module", "name", "message"), SAMPLES, ids=IDS)
def test_a_message_survives_a_round_trip_equal(module: str, name: str, message: Any) -> None:
    again = pickle.loads(pickle.dumps(message))
    assert again == message
    assert type(again) is type(message)
    assert pickle.loads(pickle.dumps(again)) == message  # and again, as a relay would


def test_a_pickle_written_by_a_node_of_the_first_layout_is_read() -> None:
    # Protocol 2 names a class with GLOBAL "module\nname\n"; an earlier node wrote this.
    status = GossipStatus(PROTOCOL_VERSION, PEER, {1: bytes(8)})
    data = pickle.dumps(status, protocol=2)
    assert b"cthespian_dd._peers\nGossipStatus\n" in data
    assert pickle.loads(data) == status


def test_a_status_of_a_release_without_the_directory_digest_reads_as_none() -> None:
    # What a node of the release before the digest pickles: no ``directory`` in the state.
    old = GossipStatus(PROTOCOL_VERSION, PEER, {1: bytes(8)}, {"me": (ME, HERE)})
    del old.__dict__["directory"]
    read = pickle.loads(pickle.dumps(old))
    assert read.directory is None
    assert read.peers == {"me": (ME, HERE)}


def test_the_introducer_is_created_under_its_wire_name() -> None:
    assert Introducer.__module__ == PEERS
    peers = importlib.import_module(PEERS)
    assert peers.Introducer is Introducer
    # How Thespian names an actor class for another process or node, and finds it there.
    thespian_name = f"{Introducer.__module__}.{Introducer.__name__}"
    assert thespian_name == "thespian_dd._peers.Introducer"
    assert actualActorClass(thespian_name) is Introducer


def test_the_introducer_finds_the_replicator_by_its_frozen_names() -> None:
    from thespian_dd import replicator

    assert REPLICATOR_CLASS == "thespian_dd.replicator.Replicator"
    assert actualActorClass(REPLICATOR_CLASS) is replicator.Replicator
    assert REPLICATOR_NAME == replicator.REPLICATOR_NAME == "thespian_dd.replicator"


def test_the_introducer_goes_only_to_the_node_it_names() -> None:
    check = Introducer.actorSystemCapabilityCheck
    assert check({NODE_CAPABILITY: "b"}, {NODE_CAPABILITY: "b"})
    assert not check({NODE_CAPABILITY: "a"}, {NODE_CAPABILITY: "b"})
    assert not check({}, {NODE_CAPABILITY: "b"})
    assert check({NODE_CAPABILITY: "a"}, {})


def test_the_frozen_constants() -> None:
    assert PROTOCOL_VERSION == 1
    assert TOMBSTONE == b""
    assert NODE_CAPABILITY == "thespian_dd.node_name"


def test_the_replicator_module_still_offers_the_start_and_process_messages() -> None:
    from thespian_dd import replicator

    for name in ("StartReplicator", "ReplicatorStarted", "DescribeProcess", "ProcessInfo"):
        assert name in replicator.__all__
        assert getattr(replicator, name) is getattr(protocol, name)


# -- gossip bytes -------------------------------------------------------------------------------


def test_gossip_bytes_of_a_status_counts_its_bucket_digests_and_last_uses() -> None:
    status = GossipStatus(
        PROTOCOL_VERSION, ME, {0: bytes(8), 9: bytes(8), 63: bytes(8)}, {"p": (PEER, THERE)}
    )
    assert gossip_bytes(status) == 3 * (1 + 8)  # the directory is not counted
    used = GossipStatus(PROTOCOL_VERSION, ME, {0: bytes(8)}, {}, {"key": 1.0, "k2": 2.0})
    assert gossip_bytes(used) == 9 + (8 + 3) + (8 + 2)
    assert gossip_bytes(GossipStatus(PROTOCOL_VERSION, ME, {})) == 0


def test_gossip_bytes_of_keys_counts_each_key_and_its_digest() -> None:
    keys = GossipKeys(PROTOCOL_VERSION, ME, {"a": bytes(16), "bcd": bytes(16)}, frozenset({1}))
    assert gossip_bytes(keys) == (1 + 16) + (3 + 16)
    assert gossip_bytes(GossipKeys(PROTOCOL_VERSION, ME, {}, frozenset({1, 2}))) == 0


def test_gossip_bytes_of_entries_counts_keys_values_and_wanted_keys() -> None:
    entries = GossipEntries(
        PROTOCOL_VERSION, ME, {"k": b"12345", "gone": TOMBSTONE}, frozenset({"w", "ww"})
    )
    assert gossip_bytes(entries) == (1 + 5) + (4 + 0) + (1 + 2)
    want_only = GossipEntries(PROTOCOL_VERSION, ME, {}, frozenset({"abc"}))
    assert gossip_bytes(want_only) == 3


def test_gossip_bytes_of_deltas_counts_keys_and_values() -> None:
    deltas = DeltaPropagation(PROTOCOL_VERSION, ME, 1, {"k": b"123", "gone": TOMBSTONE})
    assert gossip_bytes(deltas) == (1 + 3) + 4
    assert gossip_bytes(DeltaPropagation(PROTOCOL_VERSION, ME, 2, {})) == 0


@pytest.mark.parametrize(
    "message",
    [
        HELLO,
        PeerRemoved(PROTOCOL_VERSION, ME, PEER),
        PeerWrite(PROTOCOL_VERSION, ME, "r", "k", b"a payload is no gossip"),
        PeerWriteAck(PROTOCOL_VERSION, ME, "r"),
        PeerRead(PROTOCOL_VERSION, ME, "r", "k"),
        PeerReadResult(PROTOCOL_VERSION, ME, "r", "k", b"payload"),
        PeerMessage(PROTOCOL_VERSION, ME),
    ],
    ids=lambda m: type(m).__name__,
)
def test_gossip_bytes_of_a_message_that_is_no_gossip_is_zero(message: PeerMessage) -> None:
    assert gossip_bytes(message) == 0


@pytest.mark.parametrize(("module", "name", "message"), SAMPLES, ids=IDS)
def test_gossip_bytes_are_the_same_for_sender_and_receiver(
    module: str, name: str, message: Any
) -> None:
    if isinstance(message, PeerMessage):
        assert gossip_bytes(pickle.loads(pickle.dumps(message))) == gossip_bytes(message)
