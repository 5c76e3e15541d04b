"""Requests, through the wired Parts without processes (recording hooks, a fake monotonic clock,
a seeded random), peer messages dispatched as the Replicator's handlers do (``accept`` first).

The coordinating side: N counts unreachable peers while only reachable ones are asked (a
``WriteAll`` with a peer unreachable times out when its RequestTimeout comes back); majority
with ``min_cap`` over a grid of N; the primaries (``needed - 1 + EXTRA_PRIMARIES``) asked first,
the secondaries after ``AskSecondaries``; an answer counts only from the address asked, once, and
while the request is open; successes replied through Durability (in memory: at once); a quorum
read merges what the peers answer (read repair) and replies with the merged value, NotFound or
GetDataDeleted; a peer met while a request is open is asked; a dead primary is replaced by a
secondary.  The answering side: ``on_write`` merges and acknowledges to the peer's address (not
a blocked peer; a malformed payload is refused and counted, nothing changes), ``on_read``
answers with the payload in the pair's format (None for a missing key)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from fakes import Clock, FakeNode, address, replica
from thespian.actors import ActorAddress
from thespian.system.transport import SendStatus

from thespian_dd import GCounter, GSet
from thespian_dd._runtime.markers import format_version
from thespian_dd._runtime.peers import Peer
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    TOMBSTONE,
    Heartbeat,
    PeerRead,
    PeerReadResult,
    PeerWrite,
    PeerWriteAck,
    RequestTimeout,
)
from thespian_dd._runtime.quorums import EXTRA_PRIMARIES, AskSecondaries, secondary_delay
from thespian_dd.codec import FORMAT_VERSION
from thespian_dd.data import ReplicaId, ReplicatedData
from thespian_dd.messages import (
    DeleteSuccess,
    GetDataDeleted,
    GetFailure,
    GetSuccess,
    NotFound,
    ReadAll,
    ReadConsistency,
    ReadLocal,
    ReadMajority,
    ReplicationDeleteFailure,
    UpdateSuccess,
    UpdateTimeout,
    WriteAll,
    WriteConsistency,
    WriteLocal,
    WriteMajority,
    WriteTo,
)

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 2.0
CLIENT = ActorAddress("client")
A = replica("a")
KEY = "k"


def name_at(to: ActorAddress) -> str:
    return str(to.addressDetails).split("@")[0]


@dataclass
class Node(FakeNode):
    """A storeless node on a clock from 0: client replies are on ``sent``, timers on ``woken``."""

    clock: Clock[float] = field(default_factory=lambda: Clock(0.0))
    strict: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.requests = self.parts.requests
        self.membership = self.parts.membership

    def meet(self, *names: str, versions: object = None) -> None:
        """Each peer says hello (announcing ``versions``, or what this release speaks)."""
        for name in names:
            self.hello(replica(name), reply=False, versions=versions)
        self.out()

    def asked(self) -> dict[str, Any]:
        """The peers sent a PeerWrite or PeerRead since the last :meth:`out`, by name."""
        return {name_at(to): m for to, m in self.out() if isinstance(m, (PeerWrite, PeerRead))}

    def ack(self, name: str, request_id: str, sender: Any = None) -> None:
        self.receive(PeerWriteAck(PROTOCOL_VERSION, replica(name), request_id), sender)

    def write(
        self, consistency: WriteConsistency, value: ReplicatedData | None = None, kind: str = ""
    ) -> None:
        """An Update (``value``) or a Delete (None), stored here, then replicated."""
        self.parts.local.store(KEY, value)
        kind = kind or ("update" if value is not None else "delete")
        self.requests.write(kind, CLIENT, KEY, "request", consistency)

    def replies(self) -> list[Any]:
        """What the client was sent so far."""
        return [message for to, message in self.sent if to == CLIENT]

    def timer(self, kind: type) -> Any:
        (payload,) = [p for _, p in self.woken if isinstance(p, kind)]
        return payload

    def unreachable(self, *names: str) -> None:
        for name in names:
            self.membership.peers.unreachable(replica(name))


def counter(of: ReplicaId, n: int) -> GCounter:
    return GCounter().increment(of, n)


# -- how many peers are needed, and which are asked ----------------------------------------------


@pytest.mark.parametrize("level", [WriteLocal(), WriteTo(1, TIMEOUT), WriteMajority(TIMEOUT)])
def test_a_write_needing_only_this_node_is_acknowledged_at_once_without_asking(
    level: WriteConsistency,
) -> None:
    node = Node()
    if not isinstance(level, WriteMajority):
        node.meet("b", "c")
    node.write(level, counter(A, 1))
    assert node.replies() == [UpdateSuccess(KEY, "request")]
    assert node.asked() == {}
    assert [p for _, p in node.woken if isinstance(p, (RequestTimeout, AskSecondaries))] == []


def test_n_counts_unreachable_peers_and_only_reachable_ones_are_asked() -> None:
    node = Node()
    node.meet("b", "c", "d", "e")
    node.unreachable("c", "d")
    node.write(WriteMajority(TIMEOUT), counter(A, 1))  # N = 5: needs 3
    ask = node.asked()
    assert set(ask) == {"b", "e"}
    node.ack("b", ask["b"].request_id)
    assert node.replies() == []
    node.ack("e", ask["e"].request_id)
    assert node.replies() == [UpdateSuccess(KEY, "request")]


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("update", UpdateTimeout(KEY, "request")),
        (
            "delete",
            ReplicationDeleteFailure(KEY, "request", "not confirmed by enough replicas in time"),
        ),
    ],
)
def test_write_all_with_a_peer_unreachable_times_out_when_its_timer_comes_back(
    kind: str, expected: Any
) -> None:
    node = Node()
    node.meet("b", "c")
    node.unreachable("c")
    node.write(WriteAll(TIMEOUT), counter(A, 1) if kind == "update" else None)
    ask = node.asked()
    assert set(ask) == {"b"}
    timeout = node.timer(RequestTimeout)
    assert (TIMEOUT, timeout) in node.woken
    node.ack("b", ask["b"].request_id)
    assert node.replies() == []  # 2 of 3
    node.requests.timer(timeout)
    assert node.replies() == [expected]
    node.requests.timer(timeout)  # closed: once
    node.ack("c", ask["b"].request_id)
    assert node.replies() == [expected]


def test_a_read_all_with_a_peer_unreachable_fails_when_its_timer_comes_back() -> None:
    node = Node()
    node.meet("b", "c")
    node.unreachable("c")
    node.requests.read(CLIENT, KEY, "request", ReadAll(TIMEOUT))
    assert set(node.asked()) == {"b"}
    node.requests.timer(node.timer(RequestTimeout))
    assert node.replies() == [GetFailure(KEY, "request", "not enough replicas answered in time")]


@pytest.mark.parametrize("n", range(1, 8))
@pytest.mark.parametrize("min_cap", range(9))
def test_a_majority_write_with_min_cap_asks_and_waits_for_the_right_number(
    n: int, min_cap: int
) -> None:
    node = Node()
    node.meet(*(f"p{i}" for i in range(n - 1)))
    needed = min(n, max(n // 2 + 1, min_cap))
    node.write(WriteMajority(TIMEOUT, min_cap=min_cap), counter(A, 1))
    ask = node.asked()
    if needed <= 1:
        assert ask == {}
        assert node.replies() == [UpdateSuccess(KEY, "request")]
        return
    assert len(ask) == min(needed - 1 + EXTRA_PRIMARIES, n - 1)
    for count, (name, message) in enumerate(ask.items(), start=1):
        assert node.replies() == []
        node.ack(name, message.request_id)
        if count == needed - 1:
            break
    assert node.replies() == [UpdateSuccess(KEY, "request")]


def test_the_primaries_are_asked_first_and_the_secondaries_after_their_delay() -> None:
    node = Node()
    nine = [f"p{i}" for i in range(9)]
    node.meet(*nine)
    node.write(WriteTo(3, TIMEOUT), counter(A, 1))
    primaries = node.asked()
    assert len(primaries) == 3 - 1 + EXTRA_PRIMARIES
    ask_secondaries = node.timer(AskSecondaries)
    assert (secondary_delay(TIMEOUT), ask_secondaries) in node.woken
    node.requests.timer(ask_secondaries)
    secondaries = node.asked()
    assert set(primaries) | set(secondaries) == set(nine)
    assert not set(primaries) & set(secondaries)
    node.requests.timer(ask_secondaries)  # once
    assert node.asked() == {}
    # A secondary's answer counts as a primary's.
    first, second = list(secondaries)[:2]
    node.ack(first, secondaries[first].request_id)
    node.ack(second, secondaries[second].request_id)
    assert node.replies() == [UpdateSuccess(KEY, "request")]


def test_the_secondaries_are_not_asked_once_the_primaries_made_it() -> None:
    node = Node()
    node.meet(*(f"p{i}" for i in range(9)))
    node.write(WriteTo(2, TIMEOUT), counter(A, 1))
    name, message = next(iter(node.asked().items()))
    node.ack(name, message.request_id)
    assert node.replies() == [UpdateSuccess(KEY, "request")]
    node.requests.timer(node.timer(AskSecondaries))
    assert node.asked() == {}


# -- what counts as an answer --------------------------------------------------------------------


def test_an_answer_counts_only_from_the_address_asked_once_and_while_open() -> None:
    node = Node()
    node.meet("b", "c", "d")
    node.write(WriteTo(3, TIMEOUT), counter(A, 1))
    ask = node.asked()
    assert set(ask) == {"b", "c", "d"}
    request_id = ask["b"].request_id
    node.ack("b", request_id, sender=ActorAddress("impostor"))
    node.ack("c", request_id)
    node.ack("c", request_id)
    assert node.replies() == []  # an impostor's and a duplicate: still one of two
    node.ack("b", "another request")
    assert node.replies() == []
    node.ack("b", request_id)
    assert node.replies() == [UpdateSuccess(KEY, "request")]
    node.ack("d", request_id)  # after close
    node.requests.timer(node.timer(RequestTimeout))
    assert node.replies() == [UpdateSuccess(KEY, "request")]


def test_a_delete_with_enough_acks_replies_delete_success_at_once_in_memory() -> None:
    node = Node()
    node.meet("b", "c")
    node.write(WriteMajority(TIMEOUT), None)
    ask = node.asked()
    assert all(m.payload == TOMBSTONE for m in ask.values())
    name, message = next(iter(ask.items()))
    node.ack(name, message.request_id)
    assert node.replies() == [DeleteSuccess(KEY, "request")]


# -- reads -----------------------------------------------------------------------------------------


def _answer_reads(node: Node, peers: dict[str, Node]) -> None:
    """Each asked peer answers the PeerRead as its own Parts do."""
    for name, message in node.asked().items():
        peer = peers[name]
        peer.receive(message)
        for to, result in peer.out():
            assert to == address(node.me)
            node.receive(result)


def _peers(node: Node, *names: str) -> dict[str, Node]:
    peers = {name: Node(me=replica(name)) for name in names}
    node.meet(*names)
    for peer in peers.values():
        peer.meet("a")
    return peers


def test_a_majority_read_merges_the_peers_values_and_replies_with_the_merged_value() -> None:
    node = Node()
    peers = _peers(node, "b", "c")
    node.parts.local.store(KEY, counter(A, 2))
    peers["b"].parts.local.store(KEY, counter(replica("b"), 5))
    node.requests.read(CLIENT, KEY, "request", ReadMajority(TIMEOUT, min_cap=3))
    _answer_reads(node, peers)
    (reply,) = node.replies()
    assert isinstance(reply, GetSuccess)
    assert reply.data.value == 7
    stored = node.parts.keys.get(KEY)
    assert isinstance(stored, GCounter)
    assert stored.value == 7  # read repair: the peer's value is here now


def test_a_read_of_a_key_only_a_peer_has_brings_it_here() -> None:
    node = Node()
    peers = _peers(node, "b", "c")
    peers["c"].parts.local.store(KEY, GSet().add(replica("c"), "x"))
    node.requests.read(CLIENT, KEY, "request", ReadMajority(TIMEOUT, min_cap=3))
    _answer_reads(node, peers)
    (reply,) = node.replies()
    assert isinstance(reply, GetSuccess)
    assert reply.data == GSet().add(replica("c"), "x")
    assert node.parts.keys.get(KEY) == reply.data


def test_a_read_of_a_key_nobody_has_replies_not_found() -> None:
    node = Node()
    peers = _peers(node, "b", "c")
    node.requests.read(CLIENT, KEY, "request", ReadMajority(TIMEOUT))
    _answer_reads(node, peers)
    assert node.replies() == [NotFound(KEY, "request")]


def test_a_read_answered_with_a_tombstone_deletes_here_and_replies_data_deleted() -> None:
    node = Node()
    peers = _peers(node, "b", "c")
    node.parts.local.store(KEY, counter(A, 1))
    peers["b"].parts.local.store(KEY, None)
    peers["c"].parts.local.store(KEY, None)
    node.requests.read(CLIENT, KEY, "request", ReadMajority(TIMEOUT, min_cap=3))
    _answer_reads(node, peers)
    assert node.replies() == [GetDataDeleted(KEY, "request")]
    assert node.parts.keys.is_deleted(KEY)


@pytest.mark.parametrize("level", [ReadLocal(), ReadMajority(TIMEOUT)])
def test_a_read_of_a_key_deleted_here_replies_data_deleted_without_asking(
    level: ReadConsistency,
) -> None:
    node = Node()
    node.meet("b", "c")
    node.parts.local.store(KEY, None)
    node.requests.read(CLIENT, KEY, "request", level)
    assert node.replies() == [GetDataDeleted(KEY, "request")]
    assert node.asked() == {}


def test_a_malformed_read_result_is_refused_and_the_local_value_replied() -> None:
    node = Node()
    node.meet("b", "c")
    node.parts.local.store(KEY, counter(A, 2))
    node.requests.read(CLIENT, KEY, "request", ReadMajority(TIMEOUT))
    name, message = next(iter(node.asked().items()))
    node.receive(
        PeerReadResult(PROTOCOL_VERSION, replica(name), message.request_id, KEY, b"not a value")
    )
    (reply,) = node.replies()
    assert isinstance(reply, GetSuccess)
    assert reply.data == counter(A, 2)
    assert node.rejections.count == 1


# -- peers that come and go while a request is open ----------------------------------------------


def test_a_peer_met_while_a_request_is_open_is_asked_and_its_answer_counts() -> None:
    node = Node()
    node.meet("b", "c")
    node.unreachable("c")
    node.write(WriteAll(TIMEOUT), counter(A, 1))
    ask = node.asked()
    assert set(ask) == {"b"}
    node.ack("b", ask["b"].request_id)
    node.receive(Heartbeat(PROTOCOL_VERSION, replica("c")))  # C is heard again
    again = node.asked()
    assert set(again) == {"c"}
    assert isinstance(again["c"], PeerWrite)
    node.ack("c", again["c"].request_id)
    assert node.replies() == [UpdateSuccess(KEY, "request")]


def test_a_peer_that_joins_while_a_request_is_open_is_asked_once() -> None:
    node = Node()
    node.meet("b")
    node.write(WriteTo(3, TIMEOUT), counter(A, 1))  # N = 2 now: needs b
    assert set(node.asked()) == {"b"}
    node.meet("c")  # its hello: joined, so met
    ask = [
        t.message
        for t in node.wire.sent
        if isinstance(t.message, PeerWrite) and name_at(t.address) == "c"
    ]
    assert len(ask) == 1
    joined = node.membership.peers.get("c")
    assert joined is not None
    node.requests.met(joined)  # met again at the same address: not asked twice
    assert node.asked() == {}
    node.ack("c", ask[0].request_id)
    assert node.replies() == [UpdateSuccess(KEY, "request")]


def test_a_dead_primary_is_replaced_by_a_secondary_at_once() -> None:
    node = Node()
    nine = [f"p{i}" for i in range(9)]
    node.meet(*nine)
    node.write(WriteTo(2, TIMEOUT), counter(A, 1))
    first = node.wire.pending()
    assert len(first) == 2 - 1 + EXTRA_PRIMARIES
    dead = first[0]
    node.wire.finish(dead, SendStatus.DeadTarget)
    gone = node.membership.peers.get(name_at(dead.address))
    assert gone is not None
    assert not gone.reachable
    primaries = {name_at(t.address) for t in first}
    replacement = {name for name in node.asked() if name not in primaries}
    assert len(replacement) == 1
    # The dead peer's secondary counts; the others asked still do too.
    (name,) = replacement
    node.ack(name, dead.message.request_id)
    assert node.replies() == [UpdateSuccess(KEY, "request")]


def test_dead_is_ignored_for_an_older_incarnation() -> None:
    node = Node()
    node.meet("b")
    node.requests.dead(ReplicaId("b", 0))
    peer: Peer | None = node.membership.peers.get("b")
    assert peer is not None
    assert peer.reachable


# -- answering peers -------------------------------------------------------------------------------


def _write_from(name: str, value: ReplicatedData | None, request_id: str = "r1") -> PeerWrite:
    peer = Node(me=replica(name))
    peer.parts.local.store(KEY, value)
    payload = peer.parts.keys.payload(KEY)
    assert payload is not None
    return PeerWrite(PROTOCOL_VERSION, replica(name), request_id, KEY, payload)


def test_a_peer_write_is_merged_and_acknowledged_to_the_peers_address() -> None:
    node = Node()
    node.meet("b")
    node.parts.local.store(KEY, counter(A, 1))
    node.receive(_write_from("b", counter(replica("b"), 4)))
    stored = node.parts.keys.get(KEY)
    assert isinstance(stored, GCounter)
    assert stored.value == 5
    assert node.sent == [(address(replica("b")), PeerWriteAck(PROTOCOL_VERSION, A, "r1"))]


def test_a_peer_write_of_a_value_already_here_is_acknowledged_too() -> None:
    node = Node()
    node.meet("b")
    node.parts.local.store(KEY, counter(replica("b"), 4))
    node.receive(_write_from("b", counter(replica("b"), 4)))
    assert node.sent == [(address(replica("b")), PeerWriteAck(PROTOCOL_VERSION, A, "r1"))]


def test_a_blocked_peers_write_is_neither_merged_nor_acknowledged() -> None:
    node = Node()
    node.meet("b")
    node.membership.peers.blocked = frozenset({"b"})
    write = _write_from("b", counter(replica("b"), 4))
    node.receive(write)
    assert KEY not in node.parts.keys
    node.requests.on_write(write)  # even past admission, a blocked peer gets no ack
    assert node.sent == []


def test_a_malformed_peer_write_is_refused_and_counted_and_changes_nothing() -> None:
    node = Node()
    node.meet("b")
    node.parts.local.store(KEY, counter(A, 1))
    before = node.parts.keys.payload(KEY)
    node.receive(PeerWrite(PROTOCOL_VERSION, replica("b"), "r1", KEY, b"TDD\x02 garbage"))
    assert node.rejections.count == 1
    assert node.parts.keys.payload(KEY) == before
    node.receive(PeerWrite(PROTOCOL_VERSION, replica("b"), "r2", KEY, "not bytes"))  # type: ignore[arg-type]
    assert node.rejections.count == 2
    assert node.parts.keys.payload(KEY) == before


def test_regression_a_refused_peer_write_is_not_acknowledged() -> None:
    """Found while writing these tests (issue 13): ``Requests.on_write`` (before it, the
    Replicator's ``receiveMsg_PeerWrite``) acknowledges every PeerWrite from a known peer, even
    one whose value ``LocalData.merge`` refused (malformed, or of another type than the key's
    value here).  The coordinator then counts this node as holding the value: two nodes that
    create a key with different types each get ``UpdateSuccess`` for a ``WriteAll`` while neither
    holds the other's value.  Akka's Replicator answers such a write with ``WriteNack``; here no
    ack (the request asks its secondaries, then times out) says the same."""
    node = Node()
    node.meet("b")
    node.parts.local.store(KEY, GSet().add(A, "x"))
    node.receive(_write_from("b", counter(replica("b"), 4)))
    assert node.rejections.count == 1
    assert node.sent == []


def test_a_peer_read_is_answered_with_the_payload_in_the_pairs_format() -> None:
    node = Node()
    node.meet("b")
    node.meet("old", versions={"protocol": (1,), "format": (1,)})
    node.parts.local.store(KEY, counter(A, 3))
    for name, version in (("b", FORMAT_VERSION), ("old", 1)):
        node.receive(PeerRead(PROTOCOL_VERSION, replica(name), f"r-{name}", KEY))
        ((to, result),) = node.out()
        assert to == address(replica(name))
        assert isinstance(result, PeerReadResult)
        assert (result.sender, result.request_id, result.key) == (A, f"r-{name}", KEY)
        assert result.payload == node.parts.keys.payload(KEY, version)
        assert result.payload is not None
        assert format_version(result.payload) == version


@pytest.mark.parametrize(("stored", "expected"), [(False, None), (True, TOMBSTONE)])
def test_a_peer_read_of_a_key_missing_or_deleted_here_is_answered_none_or_a_tombstone(
    stored: bool, expected: bytes | None
) -> None:
    node = Node()
    node.meet("b")
    if stored:
        node.parts.local.store(KEY, None)
    node.receive(PeerRead(PROTOCOL_VERSION, replica("b"), "r1", KEY))
    ((_, result),) = node.out()
    assert result == PeerReadResult(PROTOCOL_VERSION, A, "r1", KEY, expected)
