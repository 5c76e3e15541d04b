"""SendWindow, the transmit slots each peer may take: the window size from Thespian's slots and the
peer count; messages beyond the window held and sent in order as transmits finish; a cut-off
peer (whose transmits never finish) never takes more than its window while other peers' messages
still go out; only the latest GossipStatus held; held messages bounded, the oldest dropped;
``forget`` turning late completions into no-ops; a dead target reported; sends outside any
window; the gossip bytes counted; and a state machine against a reference model of the
windows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import fakes
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from thespian.actors import ActorAddress
from thespian.system.transport import SendStatus

from thespian_dd._runtime.protocol import (
    DeltaPropagation,
    GossipEntries,
    GossipKeys,
    GossipStatus,
    PeerHello,
    PeerMessage,
    PeerWrite,
    gossip_bytes,
)
from thespian_dd._runtime.window import (
    HELD_PER_PEER,
    MIN_PER_PEER,
    RESERVED_TRANSMITS,
    SendWindow,
)
from thespian_dd.data import ReplicaId

pytestmark = pytest.mark.timeout(60)

ME = ReplicaId("me", 1)
B, C, D = ReplicaId("b", 1), ReplicaId("c", 1), ReplicaId("d", 1)
B2 = ReplicaId("b", 2)
SLOTS = 20  # Thespian's MAX_PENDING_TRANSMITS


def address_of(replica: ReplicaId) -> ActorAddress:
    return ActorAddress(f"{replica.node}@{replica.incarnation}")


def delta(seq: int, key: str = "k", payload: bytes = b"v") -> DeltaPropagation:
    return DeltaPropagation(1, ME, seq, {key: payload})


def status(n: int) -> GossipStatus:
    return GossipStatus(1, ME, {n % 64: bytes(8)})


class Wire(fakes.Wire):
    """The recording transmit, addressed by replica."""

    def to(self, replica: Any) -> list[Any]:
        return super().to(address_of(replica))

    def pending(self, replica: Any = None) -> list[fakes.Transmit]:
        return super().pending(None if replica is None else address_of(replica))


class Peers:
    """The peer count the window shares its slots among, settable by the test."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __call__(self) -> int:
        return self.n


def window(peers: int, slots: int = SLOTS) -> tuple[SendWindow, Wire, Peers, list[ReplicaId]]:
    wire, count, dead = Wire(), Peers(peers), list[ReplicaId]()
    return SendWindow(wire, slots, count, dead.append), wire, count, dead


def seqs(messages: list[PeerMessage]) -> list[int]:
    return [m.seq for m in messages if isinstance(m, DeltaPropagation)]


def send(w: SendWindow, replica: ReplicaId, message: PeerMessage) -> None:
    w.send(replica, address_of(replica), message)


# -- the window size ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("slots", "peers", "size"),
    [
        (20, 0, 14),  # no peer yet: the slots less the reserve
        (20, 1, 14),
        (20, 2, 7),
        (20, 4, 3),
        (20, 7, 2),
        (20, 14, 1),
        (20, 15, 1),  # more peers than slots: one each, at least
        (20, 100, 1),
        (6, 1, 1),  # nothing left after the reserve: still one
        (2, 3, 1),
        (200, 3, 64),
    ],
)
def test_the_window_is_the_slots_less_the_reserve_shared_among_peers(
    slots: int, peers: int, size: int
) -> None:
    w, *_ = window(peers, slots)
    assert w.size() == size
    assert RESERVED_TRANSMITS == 6


def test_the_window_follows_the_peer_count() -> None:
    w, _, count, _ = window(1)
    assert w.size() == 14
    count.n = 3
    assert w.size() == 4


# -- slots grown from the peer count ------------------------------------------------------------


class Slots:
    """Thespian's slot limit as the window sets it (``grow``), recorded."""

    def __init__(self) -> None:
        self.set: list[int] = []

    def __call__(self, n: int) -> None:
        self.set.append(n)

    @property
    def limit(self) -> int:
        return self.set[-1] if self.set else SLOTS


def growing(peers: int) -> tuple[SendWindow, Wire, Peers, Slots, fakes.Clock[float]]:
    wire, count, slots, clock = Wire(), Peers(peers), Slots(), fakes.Clock(0.0)
    w = SendWindow(wire, SLOTS, count, lambda _r: None, grow=slots, clock=clock)
    return w, wire, count, slots, clock


@pytest.mark.parametrize(
    ("peers", "size"), [(1, 14), (3, 4), (7, MIN_PER_PEER), (63, MIN_PER_PEER)]
)
def test_with_grow_every_peer_keeps_at_least_its_minimum_window(peers: int, size: int) -> None:
    w, *_ = growing(peers)
    assert w.size() == size
    assert w.slots() == max(SLOTS, RESERVED_TRANSMITS + MIN_PER_PEER * peers)


def test_thirty_silent_peers_leave_the_reserve_free_for_clients() -> None:
    # Thirty of 31 peers frozen: their transmits never finish.  Before, 20 slots were shared
    # and every client reply waited for a transmit to time out (a failure_timeout).
    peers = [ReplicaId(f"n{i:02}", 1) for i in range(31)]
    w, wire, _, slots, _ = growing(len(peers))
    for round_ in range(20):
        for replica in peers:
            send(w, replica, delta(round_))
        for transmit in wire.pending(peers[-1]):  # the one live peer answers
            wire.finish(transmit)
    in_flight = sum(w.in_flight(r) for r in peers)
    assert in_flight == 30 * MIN_PER_PEER
    assert slots.limit - in_flight >= RESERVED_TRANSMITS  # what Thespian lets clients have
    assert all(len(w.held(r)) == 20 - MIN_PER_PEER for r in peers[:30])
    assert [m.seq for m in wire.to(peers[-1])] == list(range(20))


def test_the_slots_grow_as_peers_join_and_are_set_before_the_send_that_needs_them() -> None:
    wire, count, slots = Wire(), Peers(2), Slots()
    limits: list[int] = []  # Thespian's limit when each transmit is made

    def transmit(address: Any, message: Any, done: Callable[[Any], None]) -> None:
        limits.append(slots.limit)
        wire(address, message, done)

    w = SendWindow(transmit, SLOTS, count, lambda _r: None, grow=slots)
    send(w, B, delta(0))
    assert slots.set == []  # 20 are enough for 2 peers
    count.n = 10
    send(w, C, delta(0))
    assert slots.set == [RESERVED_TRANSMITS + 10 * MIN_PER_PEER]
    assert limits == [SLOTS, RESERVED_TRANSMITS + 10 * MIN_PER_PEER]
    count.n = 4  # fewer peers: the slots stay
    send(w, D, delta(0))
    assert slots.set == [RESERVED_TRANSMITS + 10 * MIN_PER_PEER]


def test_quiet_is_the_time_since_anything_was_handed_to_thespian_for_the_peer() -> None:
    w, wire, _, _, clock = growing(1)  # 14 in flight
    assert w.quiet(B) == float("inf")
    clock.now = 5.0
    for i in range(14):
        send(w, B, delta(i))
    clock.now = 7.5
    send(w, B, delta(14))  # held: it does not count until it goes
    assert w.quiet(B) == 2.5
    wire.finish(wire.sent[0])  # the held one goes now
    assert w.quiet(B) == 0.0


# -- holding and releasing ----------------------------------------------------------------------


def test_messages_beyond_the_window_are_held_and_go_out_in_order_as_transmits_finish() -> None:
    w, wire, _, _ = window(7)  # 2 each
    messages = [delta(i) for i in range(6)]
    for m in messages:
        send(w, B, m)
    assert wire.to(B) == messages[:2]
    assert w.in_flight(B) == 2
    assert w.held(B) == messages[2:]
    wire.finish(wire.sent[0])
    assert wire.to(B) == messages[:3]
    assert w.held(B) == messages[3:]
    assert w.in_flight(B) == 2
    wire.finish(wire.sent[1], SendStatus.Failed)  # a failure frees the slot as well
    wire.finish(wire.sent[2], SendStatus.Expired)
    assert wire.to(B) == messages[:5]
    while wire.pending(B):
        wire.finish(wire.pending(B)[0])
    assert wire.to(B) == messages
    assert w.held(B) == []
    assert w.in_flight(B) == 0
    assert all(t.address == address_of(B) for t in wire.sent)


def test_a_cut_off_peer_never_takes_more_than_its_window_and_others_still_get_theirs() -> None:
    w, wire, _, _ = window(3)  # 4 each
    for i in range(50):
        send(w, B, delta(i))  # b is cut off: its transmits never finish
        send(w, C, delta(i))
        send(w, D, delta(i))
        for transmit in wire.pending(C) + wire.pending(D):
            if transmit.message.seq == i:
                wire.finish(transmit)
    assert len(wire.to(B)) == 4
    assert w.in_flight(B) == 4
    assert seqs(w.held(B)) == list(range(4, 50))
    assert [m.seq for m in wire.to(C)] == list(range(50))
    assert [m.seq for m in wire.to(D)] == list(range(50))
    assert w.in_flight(C) == w.in_flight(D) == 0
    # Every peer cut off at once takes at most the slots less the reserve.
    for i in range(50, 60):
        send(w, C, delta(i))
        send(w, D, delta(i))
    in_flight = sum(w.in_flight(r) for r in (B, C, D))
    assert in_flight == 12 <= SLOTS - RESERVED_TRANSMITS


def test_a_window_that_shrank_sends_nothing_more_until_below_the_new_size() -> None:
    w, wire, count, _ = window(1)  # 14
    for i in range(14):
        send(w, B, delta(i))
    count.n = 7  # new peers: 2 each
    send(w, B, delta(14))
    assert len(wire.to(B)) == 14
    for transmit in wire.sent[:12]:
        wire.finish(transmit)
    assert len(wire.to(B)) == 14  # 2 still in flight: the window is full
    wire.finish(wire.sent[12])
    assert [m.seq for m in wire.to(B)] == list(range(15))


def test_only_the_latest_status_is_held() -> None:
    w, wire, _, _ = window(14)  # 1 each
    first = delta(0)
    send(w, B, first)
    s1, d1, s2, d2, s3 = status(1), delta(1), status(2), delta(2), status(3)
    for m in (s1, d1, s2, d2):
        send(w, B, m)
    assert w.held(B) == [d1, s2, d2]
    send(w, B, s3)
    assert w.held(B) == [d1, d2, s3]
    for _ in range(4):
        wire.finish(wire.sent[-1])
    assert wire.to(B) == [first, d1, d2, s3]


def test_a_status_sent_within_the_window_is_not_held_back() -> None:
    w, wire, _, _ = window(7)  # 2 each
    s1, s2 = status(1), status(2)
    send(w, B, s1)
    send(w, B, s2)
    assert wire.to(B) == [s1, s2]  # both in flight: only held ones are replaced


def test_held_messages_are_bounded_and_the_oldest_dropped() -> None:
    w, wire, _, _ = window(14)  # 1 each
    total = 1 + HELD_PER_PEER + 10
    for i in range(total):
        send(w, B, delta(i))
    held = w.held(B)
    assert len(held) == HELD_PER_PEER
    assert seqs(held) == list(range(11, total))
    wire.finish(wire.sent[0])
    assert [m.seq for m in wire.to(B)] == [0, 11]


def test_a_held_status_is_dropped_like_any_other_message_when_the_bound_is_passed() -> None:
    w, _, _, _ = window(14)
    send(w, B, delta(-1))
    send(w, B, status(0))
    for i in range(HELD_PER_PEER):
        send(w, B, delta(i))
    held = w.held(B)
    assert len(held) == HELD_PER_PEER
    assert not any(isinstance(m, GossipStatus) for m in held)


# -- forgetting, dead targets, sends outside a window --------------------------------------------


def test_after_forget_late_completions_are_no_ops() -> None:
    w, wire, _, dead = window(7)  # 2 each
    for i in range(5):
        send(w, B, delta(i))
    old = list(wire.sent)
    w.forget(B)
    assert w.held(B) == []
    assert w.in_flight(B) == 0
    wire.finish(old[0])
    wire.finish(old[1], SendStatus.DeadTarget)
    assert len(wire.sent) == 2  # what b held was not sent
    assert dead == []  # nor was the forgotten peer declared dead


def test_a_late_completion_for_a_forgotten_window_frees_no_slot_of_a_new_one() -> None:
    w, wire, _, _ = window(7)  # 2 each
    send(w, B, delta(0))
    send(w, B, delta(1))
    old = list(wire.sent)
    w.forget(B)  # (a replica forgotten and seen again: its window starts empty)
    for i in range(10, 14):
        send(w, B, delta(i))
    assert [m.seq for m in wire.to(B)] == [0, 1, 10, 11]
    for transmit in old:
        wire.finish(transmit)
    assert [m.seq for m in wire.to(B)] == [0, 1, 10, 11]
    assert w.in_flight(B) == 2
    assert seqs(w.held(B)) == [12, 13]


def test_a_new_incarnation_has_its_own_window() -> None:
    w, wire, _, _ = window(14)  # 1 each
    send(w, B, delta(0))
    send(w, B, delta(1))
    w.forget(B)  # replaced by b#2
    send(w, B2, delta(2))
    assert [m.seq for m in wire.to(B)] == [0]
    assert [m.seq for m in wire.to(B2)] == [2]


def test_a_dead_target_is_reported_by_its_replica() -> None:
    w, wire, _, dead = window(7)
    send(w, B, delta(0))
    send(w, C, delta(0))
    send(w, C, delta(1))
    wire.finish(wire.sent[0], SendStatus.DeadTarget)
    assert dead == [B]
    wire.finish(wire.sent[1], SendStatus.Failed)
    wire.finish(wire.sent[2], SendStatus.Expired)
    assert dead == [B]  # other failures wait for the failure detector


def test_a_delivery_is_reported_by_its_replica_and_nothing_else_is() -> None:
    wire, delivered = Wire(), list[ReplicaId]()
    w = SendWindow(wire, SLOTS, Peers(7), lambda _r: None, delivered=delivered.append)
    send(w, B, delta(0))
    send(w, C, delta(0))
    send(w, C, delta(1))
    w.send(None, address_of(D), delta(0))  # outside any window: no peer to report
    wire.finish(wire.sent[0], SendStatus.Failed)
    wire.finish(wire.sent[1], SendStatus.Sent)
    wire.finish(wire.sent[2], SendStatus.DeadTarget)
    wire.finish(wire.sent[3], SendStatus.Sent)
    assert delivered == [C]


def test_a_dead_target_still_frees_its_slot() -> None:
    w, wire, _, dead = window(14)  # 1 each
    send(w, B, delta(0))
    send(w, B, delta(1))
    wire.finish(wire.sent[0], SendStatus.DeadTarget)
    assert dead == [B]
    assert w.in_flight(B) == 1  # the next one went: it fails fast, freeing the window again
    assert [m.seq for m in wire.to(B)] == [0, 1]


def test_a_send_without_a_replica_goes_out_at_once_outside_any_window() -> None:
    w, wire, _, dead = window(14)  # 1 each
    send(w, B, delta(0))
    send(w, B, delta(1))  # held: b's window is full
    hello = PeerHello(1, ME, ActorAddress("me"), {}, reply=True)
    for _ in range(3):
        w.send(None, address_of(B), hello)
    assert wire.to(B) == [delta(0), hello, hello, hello]
    assert w.in_flight(B) == 1
    assert w.held(B) == [delta(1)]
    for transmit in wire.sent[1:]:
        wire.finish(transmit, SendStatus.DeadTarget)
    assert dead == []
    assert w.in_flight(B) == 1
    assert len(wire.sent) == 4  # no slot of b was freed by them


def test_a_transmit_that_finishes_at_once_holds_nothing() -> None:
    # simpleSystemBase has no transmit intents: the Replicator's transmit calls done at once.
    sent: list[Any] = []

    def immediate(address: Any, message: Any, done: Callable[[Any], None]) -> None:
        sent.append(message)
        done(SendStatus.Sent)

    w = SendWindow(immediate, SLOTS, lambda: 1, lambda _r: None)
    messages = [delta(i) for i in range(HELD_PER_PEER + 20)]
    for m in messages:
        send(w, B, m)
    assert sent == messages
    assert w.held(B) == []
    assert w.in_flight(B) == 0


# -- bytes out ----------------------------------------------------------------------------------


def test_bytes_out_counts_the_gossip_bytes_of_what_was_transmitted() -> None:
    w, wire, _, _ = window(14)  # 1 each
    s = GossipStatus(1, ME, {1: bytes(8), 2: bytes(8)}, {}, {"key": 1.0})
    keys = GossipKeys(1, ME, {"a": bytes(16)}, frozenset({1}))
    entries = GossipEntries(1, ME, {"a": b"12345"}, frozenset({"bb"}))
    d = delta(0, "key", b"payload")
    write = PeerWrite(1, ME, "r", "k", b"not gossip")
    send(w, B, s)
    assert w.bytes_out == gossip_bytes(s) == 2 * 9 + 8 + 3
    send(w, B, d)  # held: not sent yet
    assert w.bytes_out == gossip_bytes(s)
    w.send(None, address_of(C), keys)
    w.send(None, address_of(C), entries)
    w.send(None, address_of(C), write)
    assert w.bytes_out == gossip_bytes(s) + 17 + 8
    wire.finish(wire.sent[0])
    assert w.bytes_out == gossip_bytes(s) + 17 + 8 + len("key") + len(b"payload")


def test_a_held_message_dropped_for_the_bound_is_never_counted() -> None:
    w, _, _, _ = window(14)
    for i in range(1 + HELD_PER_PEER + 5):
        send(w, B, delta(i, "k", b"12345"))
    assert w.bytes_out == 6  # only the one in flight


# -- against a model ------------------------------------------------------------------------------

PEERS = [B, C, D]
STATUSES = [SendStatus.Sent, SendStatus.Failed, SendStatus.Expired, SendStatus.DeadTarget]


@dataclass
class ModelChannel:
    in_flight: int = 0
    held: list[PeerMessage] = field(default_factory=list)
    sent: list[PeerMessage] = field(default_factory=list)


class WindowMachine(RuleBasedStateMachine):
    """Sends, completions (in any order, of any status) and forgets, on three peers with small
    windows: what goes out, what is held and what is in flight match a reference model."""

    def __init__(self) -> None:
        super().__init__()
        self.wire = Wire()
        self.dead: list[ReplicaId] = []
        self.window = SendWindow(self.wire, SLOTS, Peers(7), self.dead.append)  # 2 each
        self.model = {r: ModelChannel() for r in PEERS}
        self.forgotten: list[fakes.Transmit] = []  # transmits of forgotten windows, still pending
        self.expected_dead: list[ReplicaId] = []
        self.seq = 0

    def _model_send(self, replica: ReplicaId, message: PeerMessage) -> None:
        channel = self.model[replica]
        channel.in_flight += 1
        channel.sent.append(message)

    @rule(replica=st.sampled_from(PEERS), is_status=st.booleans())
    def send(self, replica: ReplicaId, is_status: bool) -> None:
        self.seq += 1
        message = status(self.seq) if is_status else delta(self.seq)
        send(self.window, replica, message)
        channel = self.model[replica]
        if channel.in_flight < 2:
            self._model_send(replica, message)
            return
        if is_status:
            channel.held = [m for m in channel.held if not isinstance(m, GossipStatus)]
        channel.held.append(message)
        del channel.held[:-HELD_PER_PEER]

    @rule(data=st.data(), outcome=st.sampled_from(STATUSES))
    def finish(self, data: st.DataObject, outcome: Any) -> None:
        pending = [t for t in self.wire.pending() if t not in self.forgotten]
        if not pending:
            return
        transmit = data.draw(st.sampled_from(pending))
        replica = next(r for r in PEERS if address_of(r) == transmit.address)
        channel = self.model[replica]
        channel.in_flight -= 1
        if outcome == SendStatus.DeadTarget:
            self.expected_dead.append(replica)
        while channel.held and channel.in_flight < 2:
            self._model_send(replica, channel.held.pop(0))
        self.wire.finish(transmit, outcome)

    @rule(data=st.data(), outcome=st.sampled_from(STATUSES))
    def finish_forgotten(self, data: st.DataObject, outcome: Any) -> None:
        if self.forgotten:
            transmit = data.draw(st.sampled_from(self.forgotten))
            self.forgotten.remove(transmit)
            self.wire.finish(transmit, outcome)

    @rule(replica=st.sampled_from(PEERS))
    def forget(self, replica: ReplicaId) -> None:
        self.window.forget(replica)
        self.forgotten += [t for t in self.wire.pending(replica) if t not in self.forgotten]
        self.model[replica] = ModelChannel(sent=self.model[replica].sent)

    @invariant()
    def windows_match_the_model(self) -> None:
        for replica in PEERS:
            channel = self.model[replica]
            assert self.window.in_flight(replica) == channel.in_flight <= self.window.size()
            assert self.window.held(replica) == channel.held
            assert self.wire.to(replica) == channel.sent
        assert self.dead == self.expected_dead


TestWindowMachine = WindowMachine.TestCase
