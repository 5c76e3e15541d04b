"""quicken_transport, Thespian's TCP transport made cheaper in the Replicator's process: each
change computes what Thespian's own code computes (the loop's readiness and its work for idle
connections, an idle socket's expiry, an address's hash, the debug descriptions), is never
pickled into what another process reads, and is idempotent.  The multi-node tests run every
Replicator quickened."""

from __future__ import annotations

import collections
import datetime as dt
import errno
import os
import pickle
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import ActorAddress, WatchMessage
from thespian.system import timing
from thespian.system.timing import ExpirationTimer
from thespian.system.transport import (
    IPBase,
    ReceiveEnvelope,
    TCPTransport,
    Thespian__Run_Expired,
    TransmitIntent,
)
from thespian.system.transport.asyncTransportBase import asyncTransportBase

from thespian_dd import Changed, GCounter, Get, ReplicaId, Subscribe, Update, UpdateSuccess
from thespian_dd._runtime import transport
from thespian_dd._runtime.transport import (
    Described,
    KeptPoll,
    at_turn_end,
    idle_connection_seconds,
    idle_turn,
    quicken_transport,
    run_with_expiry,
)
from thespian_dd.testing import FAST, eventually, start_node

pytestmark = pytest.mark.timeout(60)


def _increment(counter: GCounter, node: ReplicaId) -> GCounter:
    return counter.increment(node, 1)


ORIGINAL_IDENTIFY = (TransmitIntent.identify, ReceiveEnvelope.identify)
ORIGINAL_HASH = IPBase.IPActorAddress.__hash__
ORIGINAL_EXPIRED = TCPTransport.IdleSocket.expired
ORIGINAL_LOOP = TCPTransport.TCPTransport._runWithExpiry
ORIGINAL_STEPS = (
    TCPTransport.TCPTransport._handleReadableIncoming,
    TCPTransport.TCPTransport._next_XMIT_2,
    TCPTransport.TCPTransport._next_XMIT_4,
    asyncTransportBase._runQueued,
)
SCAN = "_thespian_dd_idle_scan"
"""Where the quick loop keeps, on the transport, when it next looks for expired connections."""


PATCHED = [
    (TCPTransport.TCPTransport, "_runWithExpiry"),
    (TCPTransport.TCPTransport, "_handleReadableIncoming"),
    (TCPTransport.TCPTransport, "_next_XMIT_2"),
    (TCPTransport.TCPTransport, "_next_XMIT_4"),
    (asyncTransportBase, "_runQueued"),
    (TCPTransport.IdleSocket, "expired"),
    (TCPTransport, "MAX_IDLE_SOCKET_PERIOD"),
    (IPBase.IPActorAddress, "__hash__"),
    (IPBase.IPActorAddress, "__getstate__"),
    (TransmitIntent, "identify"),
    (TransmitIntent, "__str__"),
    (ReceiveEnvelope, "identify"),
    (ReceiveEnvelope, "__str__"),
]
"""What quicken_transport sets: Thespian's own back after each test."""


def _keep_thespians(monkeypatch: pytest.MonkeyPatch) -> None:
    for owner, name in PATCHED:
        monkeypatch.setattr(owner, name, getattr(owner, name))


@pytest.fixture
def quickened(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process quickened for one test, Thespian's own attributes back after it."""
    _keep_thespians(monkeypatch)
    quicken_transport(45.0)


class Shown:
    """A message that counts how often it is formatted."""

    def __init__(self) -> None:
        self.formatted = 0

    def __str__(self) -> str:
        self.formatted += 1
        return "shown-message"


def _address(port: int) -> ActorAddress:
    return ActorAddress(IPBase.TCPv4ActorAddress("127.0.0.1", port))


def test_an_idle_socket_expires_when_its_timer_says(quickened: None) -> None:
    """Asked at every turn for every idle socket: the timer's own answer, without its view."""
    left, right = socket.socketpair()
    with left, right:
        idle = TCPTransport.IdleSocket(left, _address(1))
        assert not idle.expired()
        assert not ORIGINAL_EXPIRED(idle)
        idle.validity = ExpirationTimer(dt.timedelta(seconds=0))
        assert idle.expired()
        assert ORIGINAL_EXPIRED(idle)
        idle.validity = ExpirationTimer(None)  # never
        assert not idle.expired()
        assert not ORIGINAL_EXPIRED(idle)
        idle.validity = ExpirationTimer(dt.timedelta(milliseconds=50))
        assert not idle.expired()
        eventually(idle.expired, timeout=5.0, interval=0.01, what="the 50 ms timer expired")
        assert ORIGINAL_EXPIRED(idle)


def test_an_idle_connection_is_closed_after_the_idle_time_given(quickened: None) -> None:
    """Thespian's own expiry of an idle connection, after ``idle_seconds`` (45 here) rather
    than 20 minutes: three failure timeouts, at least 30 s."""
    left, right = socket.socketpair()
    with left, right:
        idle = TCPTransport.IdleSocket(left, _address(1))
        remaining = idle.validity.view().remainingSeconds()
        assert 44 < remaining <= 45
    assert idle_connection_seconds(2.0) == 30.0
    assert idle_connection_seconds(10.0) == 30.0
    assert idle_connection_seconds(60.0) == 180.0


def test_an_address_keeps_its_hash_and_never_pickles_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The hash is Thespian's own value: a dict filled before the Replicator quickened its
    process still finds its keys.  A pickled address carries no hash, as another process
    hashes strings differently, and reads back equal, with the same hash here."""
    details = IPBase.TCPv4ActorAddress("127.0.0.1", 1900)
    expected = hash(details)
    table = {details: "found"}
    _keep_thespians(monkeypatch)
    quicken_transport(45.0)
    assert hash(details) == expected
    assert hash(details) == expected  # the kept one
    assert "_thespian_dd_hash" in details.__dict__
    assert table[IPBase.TCPv4ActorAddress("127.0.0.1", 1900)] == "found"
    address = ActorAddress(details)
    back = pickle.loads(pickle.dumps(address))
    assert "_thespian_dd_hash" not in back.addressDetails.__dict__
    assert back == address
    assert table[back.addressDetails] == "found"
    assert "_thespian_dd_hash" in back.addressDetails.__dict__
    assert ORIGINAL_HASH(back.addressDetails) == expected


def test_descriptions_are_formatted_only_when_written_and_read_as_before(
    quickened: None,
) -> None:
    """Thespian formats a description of every transmit and receipt for a debug line that is
    dropped unless its own log is at debug level: now only a line written formats it, and it
    reads as Thespian's."""
    message = Shown()
    envelope = ReceiveEnvelope(_address(1901), message)
    described = envelope.identify()
    assert isinstance(described, Described)
    assert message.formatted == 0
    # Thespian's lines are %-formatted.
    assert "ACTOR got %s" % described == "ACTOR got " + ORIGINAL_IDENTIFY[1](envelope)  # noqa: UP031
    assert str(envelope) == ORIGINAL_IDENTIFY[1](envelope)
    assert "shown-message" in str(envelope)

    intent = TransmitIntent(_address(1902), message)
    formatted = message.formatted
    described = intent.identify()
    assert message.formatted == formatted
    line = "actualTransmit of %s" % described  # noqa: UP031 - as Thespian formats it
    assert line.startswith("actualTransmit of TransportIntent(")
    assert "shown-message" in line
    assert str(_address(1902)) in line
    assert str(intent).startswith("************* TransportIntent(")


def test_quickening_twice_changes_nothing(quickened: None) -> None:
    """The Replicator quickens at each start in its process: a second call wraps nothing
    twice (a description still formats to a string)."""
    before = (TransmitIntent.identify, IPBase.IPActorAddress.__hash__)
    quicken_transport(45.0)
    assert (TransmitIntent.identify, IPBase.IPActorAddress.__hash__) == before
    envelope = ReceiveEnvelope(_address(1903), "hello")
    assert str(envelope.identify()) == ORIGINAL_IDENTIFY[1](envelope)


def test_with_this_thespian_the_loop_is_ours(quickened: None) -> None:
    """The loop is replaced only for the Thespian it was written from (the source of its loop,
    checked): CI fails here if the Thespian installed is another, whose loop would stay."""
    assert TCPTransport.TCPTransport._runWithExpiry is run_with_expiry
    assert quicken_transport(45.0) is True  # says so: the Replicator's turn ends need it


def test_another_thespians_loop_is_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    """A Thespian whose loop's source differs from the one ours was written from keeps its own
    loop (the other changes still apply)."""
    _keep_thespians(monkeypatch)
    monkeypatch.setattr(transport, "_THESPIANS_LOOP", "0" * 64)
    assert quicken_transport(45.0) is False
    assert TCPTransport.TCPTransport._runWithExpiry is ORIGINAL_LOOP
    assert _steps() == ORIGINAL_STEPS
    assert TransmitIntent.identify is not ORIGINAL_IDENTIFY[0]


def _steps() -> tuple[Any, ...]:
    steps = TCPTransport.TCPTransport
    return (
        steps._handleReadableIncoming,
        steps._next_XMIT_2,
        steps._next_XMIT_4,
        asyncTransportBase._runQueued,
    )


@pytest.mark.parametrize("step", range(5))
def test_a_thespian_with_another_step_keeps_its_loop_and_steps(
    monkeypatch: pytest.MonkeyPatch, step: int
) -> None:
    """The steps the quick reads and send call or take at once, and the one mended, are checked
    by their sources too: one that differs (here each in turn) leaves the loop and every step
    Thespian's."""
    _keep_thespians(monkeypatch)
    digests = dict(transport._THESPIANS_STEPS)
    changed = list(digests)[step]
    digests[changed] = "0" * 64
    monkeypatch.setattr(transport, "_THESPIANS_STEPS", digests)
    quicken_transport(45.0)
    assert TCPTransport.TCPTransport._runWithExpiry is ORIGINAL_LOOP
    assert _steps() == ORIGINAL_STEPS


def _bare_transport() -> Any:
    """A real TCPTransport with the state its reads and sends use, and no socket of its own
    (its methods run on socket pairs)."""
    tcp = object.__new__(TCPTransport.TCPTransport)
    tcp.myAddress = _address(1910)
    tcp._incomingEnvelopes = []
    tcp._openSockets = {}
    tcp._transmitIntents = {}
    tcp._finished_intents = []
    return tcp


MESSAGE = "a message longer than the 20 bytes Thespian reads first " * 20
SENDER = _address(1911)
WIRE = TCPTransport.toSendBuffer((SENDER, MESSAGE))


def _sending_intent(sock: socket.socket) -> Any:
    """A transmit of MESSAGE on ``sock``, at its step of sending the data."""
    intent = TransmitIntent(SENDER, MESSAGE)
    intent.serMsg = WIRE
    intent.socket = sock
    intent.amtSent = 0
    intent.stage = TCPTransport.TCPTransport._XMITStepSendData
    return intent


def _connection() -> tuple[socket.socket, socket.socket]:
    """A connection's two ends: ours non-blocking, as Thespian's sockets are."""
    mine, theirs = socket.socketpair()
    mine.setblocking(False)
    return mine, theirs


def _sent(tcp: Any, mine: socket.socket, theirs: socket.socket) -> Any:
    """A transmit of MESSAGE on ``mine``, its data sent whole by ``tcp``'s step and read by the
    other end."""
    intent = _sending_intent(mine)
    assert tcp._next_XMIT_2(intent) is True
    received = b""
    while len(received) < len(WIRE):
        received += theirs.recv(len(WIRE))
    assert received == WIRE
    return intent


def test_a_message_that_came_whole_is_read_whole_in_one_turn(quickened: None) -> None:
    """Thespian reads 20 bytes of a message first (its size) and the rest at its loop's next
    turn: now one turn reads it all, acknowledges it and hands it on, and the connection is
    idle again for the next message.  Thespian's own step leaves it unfinished."""
    for read, whole in (
        (TCPTransport.TCPTransport._handleReadableIncoming, True),
        (ORIGINAL_STEPS[0], False),
    ):
        tcp = _bare_transport()
        mine, theirs = _connection()
        with mine, theirs:
            theirs.sendall(WIRE)
            incoming = TCPTransport.TCPIncomingPersistent(SENDER, mine)
            left = read(tcp, incoming)
            if not whole:
                assert left is incoming
                assert tcp._incomingEnvelopes == []
                continue
            assert left is None
            [envelope] = tcp._incomingEnvelopes
            assert (envelope.sender, envelope.message) == (SENDER, MESSAGE)
            assert theirs.recv(100) == TCPTransport.ackMsg
            [idle] = tcp._openSockets.values()
            assert (idle.socket, idle.rmtaddr) == (mine, SENDER)


def test_a_message_still_coming_is_read_as_far_as_it_came(quickened: None) -> None:
    """Part of a message: read as far as it came, without a failed read (which would pause
    the connection), and finished by the turn its rest comes in; a sender that closes
    mid-message has its connection dropped in the same turn, with nothing handed on."""
    tcp = _bare_transport()
    mine, theirs = _connection()
    with mine, theirs:
        theirs.sendall(WIRE[:30])
        incoming = TCPTransport.TCPIncomingPersistent(SENDER, mine)
        assert tcp._handleReadableIncoming(incoming) is incoming
        assert not incoming.backoffPause()
        assert tcp._incomingEnvelopes == []
        theirs.sendall(WIRE[30:])
        assert tcp._handleReadableIncoming(incoming) is None
        assert [e.message for e in tcp._incomingEnvelopes] == [MESSAGE]

    tcp = _bare_transport()
    mine, theirs = _connection()
    with mine:
        theirs.sendall(WIRE[:30])
        theirs.close()
        incoming = TCPTransport.TCPIncomingPersistent(SENDER, mine)
        assert tcp._handleReadableIncoming(incoming) is None
        assert tcp._incomingEnvelopes == []
        assert tcp._openSockets == {}


def test_a_read_stops_at_the_end_of_a_message_or_of_an_acknowledgement(quickened: None) -> None:
    """What follows a message or an acknowledgement on the same connection (the next message)
    is left whole in the socket for the turn that reads it as a message of its own."""
    tcp = _bare_transport()
    mine, theirs = _connection()
    with mine, theirs:
        theirs.sendall(WIRE + WIRE)
        incoming = TCPTransport.TCPIncomingPersistent(SENDER, mine)
        assert tcp._handleReadableIncoming(incoming) is None
        assert [e.message for e in tcp._incomingEnvelopes] == [MESSAGE]
        assert mine.recv(2 * len(WIRE), socket.MSG_PEEK) == WIRE

    tcp = _bare_transport()
    mine, theirs = _connection()
    with mine, theirs:
        intent = _sent(tcp, mine, theirs)
        theirs.sendall(TCPTransport.ackMsg + WIRE)
        assert tcp._next_XMIT_4(intent) is False
        assert tcp._finished_intents == [(intent, TCPTransport.SendStatus.Sent)]
        assert mine.recv(2 * len(WIRE), socket.MSG_PEEK) == WIRE


def test_a_transmit_waiting_for_its_acknowledgement_is_never_paused_by_a_read_of_nothing(
    quickened: None,
) -> None:
    """Thespian's loop takes the acknowledgement step for a transmit it is not told is readable
    when another connection to its target is idle; with nothing come, that step reads nothing
    (Thespian's read failed and paused the transmit 34 ms, out of the loop's wait): the
    acknowledgement that then comes is read at once."""
    tcp = _bare_transport()
    tcp._waitingTransmits = []
    mine, theirs = _connection()
    other, far = socket.socketpair()
    with mine, theirs, other, far:
        tcp._openSockets[TCPTransport.opsKey(SENDER)] = TCPTransport.IdleSocket(other, SENDER)
        intent = _sent(tcp, mine, theirs)
        tcp._transmitIntents[mine.fileno()] = intent
        tcp._processIntentTimeouts()
        assert not intent.backoffPause()
        assert tcp._transmitIntents == {mine.fileno(): intent}
        theirs.sendall(TCPTransport.ackMsg)
        assert tcp._next_XMIT_4(intent) is False
        assert tcp._finished_intents == [(intent, TCPTransport.SendStatus.Sent)]


def test_a_connection_is_read_at_most_sixteen_times_a_turn(quickened: None) -> None:
    """A sender that keeps sending (here bytes with no size, which Thespian reads 20 at a
    time) gets at most 16 reads a turn: the loop goes on to its other connections."""
    tcp = _bare_transport()
    mine, theirs = _connection()
    with mine, theirs:
        theirs.sendall(b"x" * 1000)
        incoming = TCPTransport.TCPIncomingPersistent(SENDER, mine)
        assert tcp._handleReadableIncoming(incoming) is incoming
        assert not incoming.backoffPause()
        assert len(mine.recv(2000)) == 1000 - 16 * 20


def test_a_transmit_sent_whole_waits_for_its_acknowledgement_and_reads_it_in_one_turn(
    quickened: None,
) -> None:
    """A transmit whose data went out whole waits for its acknowledgement at once (Thespian's
    step left it waiting a turn for the socket to be writable); the acknowledgement, come
    whole, is read in one turn (Thespian: 20 bytes, then the rest a turn later) and the transmit
    is done, its connection idle for the next one; one that comes in two parts is read as far
    as it came, without pausing the transmit."""
    steps = TCPTransport.TCPTransport
    for split in (None, 10):
        tcp = _bare_transport()
        mine, theirs = _connection()
        with mine, theirs:
            intent = _sent(tcp, mine, theirs)
            assert intent.stage == steps._XMITStepWaitForAck
            assert not steps._waitForSendable(intent)
            if split is not None:
                theirs.sendall(TCPTransport.ackMsg[:split])
                assert tcp._next_XMIT_4(intent) is True
                assert intent.stage == steps._XMITStepWaitForAck
                assert not intent.backoffPause()
                theirs.sendall(TCPTransport.ackMsg[split:])
            else:
                theirs.sendall(TCPTransport.ackMsg)
            assert tcp._next_XMIT_4(intent) is False
            assert tcp._finished_intents == [(intent, TCPTransport.SendStatus.Sent)]
            [idle] = tcp._openSockets.values()
            assert idle.socket is mine

    # Thespian's own steps, for the contrast: a turn more for each.
    tcp = _bare_transport()
    mine, theirs = _connection()
    with mine, theirs:
        intent = _sending_intent(mine)
        assert ORIGINAL_STEPS[1](tcp, intent) is True
        assert intent.stage == steps._XMITStepShutdownWrite
        assert steps._waitForSendable(intent)
        tcp._next_XMIT_3(intent)
        theirs.sendall(TCPTransport.ackMsg)
        assert ORIGINAL_STEPS[2](tcp, intent) is True
        assert tcp._finished_intents == []


def _selected(fds: dict[int, int]) -> set[tuple[int, int]]:
    """What a new ``selectors.DefaultSelector`` (Thespian's: a new one every turn; epoll here)
    reports for ``fds`` at once, as (descriptor, events)."""
    with selectors.DefaultSelector() as selector:
        for fd, events in fds.items():
            selector.register(fd, events)
        return {(key.fd, events) for key, events in selector.select(0)}


def _kept(poll: KeptPoll, fds: dict[int, int]) -> set[tuple[int, int]]:
    """What ``poll`` reports for ``fds`` at once, in the same form."""
    read, write = selectors.EVENT_READ, selectors.EVENT_WRITE
    rrecv, rsend = poll.select(
        [fd for fd, e in fds.items() if e & read], [fd for fd, e in fds.items() if e & write], 0
    )
    events: dict[int, int] = {}
    for fd in rrecv:
        events[fd] = events.get(fd, 0) | read
    for fd in rsend:
        events[fd] = events.get(fd, 0) | write
    return set(events.items())


def _queueing_transport(*queued: str) -> tuple[Any, list[Any]]:
    """A transport with ``queued`` transmits waiting for a slot, and what it submits (to
    nowhere: the list returned)."""
    tcp = object.__new__(TCPTransport.TCPTransport)
    tcp._aTB_lock = threading.Lock()
    tcp._aTB_processing = False
    tcp._aTB_sending = False
    tcp._aTB_numPendingTransmits = 0
    tcp._aTB_queuedPendingTransmits = collections.deque(
        TransmitIntent(SENDER, message) for message in queued
    )
    submitted: list[Any] = []
    tcp._submitTransmit = lambda intent, has_exclusive_flag=False: submitted.append(intent.message)
    return tcp, submitted


def _from_another_thread(call: Any) -> Any:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.append(call()))
    thread.start()
    thread.join()
    return results[0]


def test_a_thread_that_finds_the_transport_held_leaves_the_hold(quickened: None) -> None:
    """Found by loading 100,000 keys with a debug log: one start in ten failed, "100000 rows
    were read but 98000 arrived".  The DurableWriter's read-ahead thread logged a record (the
    store's pool checking a connection out), which Thespian forwards by a send from that thread.
    Thespian's ``_runQueued``, finding the actor's thread in the transport, returned having
    cleared that thread's hold; the thread's next send so ran the transport beside the actor's
    thread, and sent a chunk of the load on a connection of its own, ahead of two chunks waiting
    for the connection in use.  The Loaded message overtook them too.

    Mended: a thread that finds the transport held leaves the hold, and its transmit queued."""
    thespians = ORIGINAL_STEPS[3]
    tcp, submitted = _queueing_transport("a chunk")
    assert tcp._exclusively_processing()  # the actor's thread, in its loop
    assert _from_another_thread(lambda: thespians(tcp)) is False
    assert tcp._aTB_processing is False  # the history: Thespian's took the hold away

    tcp, submitted = _queueing_transport("a chunk")
    assert tcp._exclusively_processing()
    assert _from_another_thread(lambda: asyncTransportBase._runQueued(tcp)) is False
    assert tcp._aTB_processing is True  # still the actor's thread's
    assert submitted == []
    assert [i.message for i in tcp._aTB_queuedPendingTransmits] == ["a chunk"]


def test_a_free_transport_sends_what_waits_in_order_and_frees_itself(quickened: None) -> None:
    """Unheld, each call sends the first transmit waiting and leaves the transport free; a
    caller that holds it (``has_exclusive_flag``) keeps its hold; nothing waiting: nothing."""
    tcp, submitted = _queueing_transport("first", "second")
    assert asyncTransportBase._runQueued(tcp) is True
    assert (tcp._aTB_processing, tcp._aTB_sending) == (False, False)
    assert tcp._exclusively_processing()
    assert asyncTransportBase._runQueued(tcp, has_exclusive_flag=True) is True
    assert (tcp._aTB_processing, tcp._aTB_sending) == (True, False)
    tcp._not_processing()
    assert asyncTransportBase._runQueued(tcp) is False
    assert submitted == ["first", "second"]


def test_a_kept_poll_reports_what_a_new_selector_reports_turn_after_turn() -> None:
    """One KeptPoll over turns whose descriptors change (added, dropped, asked for other
    events, closed while watched, a closed one's number taken by a new socket), against a new
    DefaultSelector each turn, as Thespian makes one: readable, writable, both, a peer that
    hung up; a closed descriptor is refused (OSError) by both."""
    read, write = selectors.EVENT_READ, selectors.EVENT_WRITE
    poll = KeptPoll()
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    e, f = socket.socketpair()
    with a, b, c, d, e, f:
        turns: list[dict[int, int]] = [
            {a.fileno(): read, c.fileno(): read},
            {a.fileno(): read | write, c.fileno(): read, d.fileno(): write},
            {c.fileno(): read, e.fileno(): read},  # a and d dropped
            {a.fileno(): read, e.fileno(): read | write},
        ]
        for fds in turns[:2]:
            assert _kept(poll, fds) == _selected(fds)
        b.send(b"x")  # a readable
        f.close()  # e: its peer hung up
        for fds in turns:
            assert _kept(poll, fds) == _selected(fds)
        assert (a.fileno(), read) in _kept(poll, turns[3])
        assert (e.fileno(), read | write) in _kept(poll, turns[3])
        gone, other = socket.socketpair()
        with other:
            number = gone.fileno()
            fds = {number: read, a.fileno(): read}
            assert _kept(poll, fds) == _selected(fds)
            gone.close()  # closed while watched: refused, as epoll refuses to register it
            with pytest.raises(OSError) as refused:
                _kept(poll, fds)
            assert refused.value.errno == errno.EBADF
            with pytest.raises(OSError):
                _selected(fds)
            again, peer = socket.socketpair()  # the lowest free numbers: the closed one's
            with again, peer:
                assert number in (again.fileno(), peer.fileno())
                fds = {number: read, a.fileno(): read}
                assert _kept(poll, fds) == _selected(fds) == {(a.fileno(), read)}


def test_a_kept_poll_refuses_a_negative_descriptor_and_waits_as_told() -> None:
    """A negative descriptor (a closed socket's number) raises ValueError as a selector's
    register does, which the loop handles, and the next turn works; a timeout in seconds waits
    about that long; None waits until a descriptor is ready."""
    a, b = socket.socketpair()
    poll = KeptPoll()
    with a, b:
        assert poll.select([a.fileno()], [], 0) == ([], [])
        with pytest.raises(ValueError, match="file descriptor"):
            poll.select([a.fileno(), -1], [], 0)
        started = time.monotonic()
        assert poll.select([a.fileno()], [], 0.05) == ([], [])
        assert time.monotonic() - started >= 0.04
        started = time.monotonic()
        assert poll.select([a.fileno()], [], -1) == ([], [])  # as epoll: not at all
        assert time.monotonic() - started < 0.5
        b.send(b"x")
        assert poll.select([a.fileno()], [b.fileno()], None) == ([a.fileno()], [b.fileno()])
        # Asked twice, and to read and write: once, for both (a selector raises KeyError).
        assert poll.select([a.fileno(), a.fileno()], [a.fileno()], 0) == (
            [a.fileno()],
            [a.fileno()],
        )


def test_a_refused_wait_drops_a_closed_watch_and_cancels_a_closed_socket() -> None:
    """As Thespian's loop answers a wait its selector refused: a watched descriptor that is
    closed is no longer watched, and the loop turns again; with the watches sound, the
    descriptors that are not open are handed back, to be cancelled; an interruption turns
    again; anything else is raised."""
    listening = socket.socket()
    watched, _w = socket.socketpair()
    kept, _k = socket.socketpair()
    gone, _g = socket.socketpair()
    with listening, _w, kept, _k, _g:
        endpoint = Endpoint([])
        endpoint.socket = listening
        endpoint._watches = [watched.fileno(), kept.fileno()]
        wrecv = [listening.fileno(), *endpoint._watches]
        watched.close()
        with pytest.raises(OSError) as refused:
            KeptPoll().select(wrecv, [], 0)
        assert transport._selection_failed(endpoint, refused.value, wrecv, []) is None
        assert endpoint._watches == [kept.fileno()]
        number = gone.fileno()
        gone.close()
        wrecv = [listening.fileno(), number, *endpoint._watches]
        with pytest.raises(OSError) as refused:
            KeptPoll().select(wrecv, [], 0)
        assert transport._selection_failed(endpoint, refused.value, wrecv, []) == [number]
        interrupted = OSError(errno.EINTR, "interrupted")
        assert transport._selection_failed(endpoint, interrupted, wrecv, []) is None
        assert endpoint.indicators_checked == 1
        with pytest.raises(OSError, match="no space"):
            transport._selection_failed(endpoint, OSError(errno.ENOSPC, "no space"), wrecv, [])


class Endpoint:
    """What the loop's parts read and call of a TCP transport: its table of idle connections
    (by opsKey of the remote address), its incoming sockets, the handling of a readable one
    (recorded, and kept as incoming, as Thespian's does with a message begun), its watches,
    its listening socket and the check of its indicators (counted)."""

    def __init__(self, idle: list[Any]) -> None:
        self._openSockets = {TCPTransport.opsKey(s.rmtaddr): s for s in idle}
        self._incomingSockets: dict[int, Any] = {}
        self._watches: list[int] = []
        self.socket: socket.socket | None = None
        self.handled: list[tuple[Any, int]] = []
        self.indicators_checked = 0

    def _check_indicators(self) -> None:
        self.indicators_checked += 1

    def _handlePossibleIncoming(
        self, incoming: Any, fileno: int, *, has_exclusive_flag: bool
    ) -> Any:
        assert has_exclusive_flag
        self.handled.append((incoming, fileno))
        return incoming


def _idle_pair(port: int) -> tuple[Any, socket.socket]:
    """An idle connection to address ``port`` and its other end."""
    mine, theirs = socket.socketpair()
    return TCPTransport.IdleSocket(mine, _address(port)), theirs


def _turn(endpoint: Endpoint, idle: list[Any], rrecv: list[int]) -> None:
    idle_turn(endpoint, idle, [s.socket.fileno() for s in idle], rrecv)


def test_idle_turn_hands_a_readable_connection_over_and_leaves_the_rest(quickened: None) -> None:
    """A readable idle connection (a message, or the other end closing) leaves the table and
    is handled as incoming on its socket; the others, unreadable and in time, stay open."""
    (quiet, q), (busy, b) = _idle_pair(2001), _idle_pair(2002)
    with q, b, quiet.socket, busy.socket:
        endpoint = Endpoint([quiet, busy])
        _turn(endpoint, [quiet, busy], [busy.socket.fileno()])
        assert list(endpoint._openSockets.values()) == [quiet]
        [(incoming, fileno)] = endpoint.handled
        assert isinstance(incoming, TCPTransport.TCPIncomingPersistent)
        assert (incoming.socket, incoming.fromAddress, fileno) == (
            busy.socket,
            busy.rmtaddr,
            busy.socket.fileno(),
        )
        assert endpoint._incomingSockets == {busy.socket.fileno(): incoming}
        assert quiet.socket.fileno() != -1


def test_idle_turn_closes_a_replaced_connection_and_spares_one_a_send_took(
    quickened: None,
) -> None:
    """A connection the table now holds another for (the same address) is closed; one whose
    address left the table (a send took its socket) stays open while unread and in time, as
    Thespian's walk leaves it."""
    (old, o), (taken, t) = _idle_pair(2003), _idle_pair(2004)
    newer, n = _idle_pair(2003)
    with o, t, n, newer.socket, taken.socket:
        endpoint = Endpoint([old, taken])
        endpoint._openSockets[TCPTransport.opsKey(old.rmtaddr)] = newer
        del endpoint._openSockets[TCPTransport.opsKey(taken.rmtaddr)]
        _turn(endpoint, [old, taken], [])
        assert old.socket.fileno() == -1  # closed
        assert taken.socket.fileno() != -1
        assert list(endpoint._openSockets.values()) == [newer]
        assert endpoint.handled == []


def test_idle_turn_closes_an_expired_connection_at_its_scan_once_a_second(
    quickened: None,
) -> None:
    """A connection unused for the idle period is closed and leaves the table at the next scan
    for expired ones: a turn scans, and sets the next scan a second on; a turn before it
    leaves the expired connection open, the first turn from it closes it."""
    (stale, s), (fresh, f) = _idle_pair(2005), _idle_pair(2006)
    with s, f, fresh.socket:
        endpoint = Endpoint([stale, fresh])
        before = timing.currentTime()
        _turn(endpoint, [stale, fresh], [])  # the first turn scans
        after = timing.currentTime()
        next_scan = endpoint.__dict__[SCAN]
        assert before + 1.0 <= next_scan <= after + 1.0
        stale.validity = ExpirationTimer(dt.timedelta(seconds=0))
        endpoint.__dict__[SCAN] = timing.currentTime() + 60.0  # no scan due
        _turn(endpoint, [stale, fresh], [])
        assert stale.socket.fileno() != -1
        assert list(endpoint._openSockets.values()) == [stale, fresh]
        endpoint.__dict__[SCAN] = timing.currentTime()  # the scan is due
        _turn(endpoint, [stale, fresh], [])
        assert stale.socket.fileno() == -1
        assert list(endpoint._openSockets.values()) == [fresh]
        assert fresh.socket.fileno() != -1


@pytest.fixture
def turn_ends() -> Iterator[list[str]]:
    """What this test's turn-end callbacks record; the process's callbacks as they were after
    it (the list itself is kept: a fork clears that one)."""
    before = list(transport._TURN_ENDS)
    events: list[str] = []
    try:
        yield events
    finally:
        transport._TURN_ENDS[:] = before


class LoopEndpoint:
    """What :func:`run_with_expiry` reads and calls of a TCP transport with no connection and no
    transmit: its listening socket, one watched descriptor, messages already received, and
    transmits another thread queued (``sent`` once sent)."""

    def __init__(
        self, listener: socket.socket, watch: int, received: list[str], queued: list[str]
    ) -> None:
        self.myAddress = _address(1920)
        self.socket = listener
        self._watches = [watch]
        self._incomingEnvelopes = [ReceiveEnvelope(SENDER, m) for m in received]
        self._transmitIntents: dict[int, Any] = {}
        self._waitingTransmits: list[Any] = []
        self._incomingSockets: dict[int, Any] = {}
        self._openSockets: dict[Any, Any] = {}
        self._finished_intents: list[Any] = []
        self.run_time = ExpirationTimer(dt.timedelta(seconds=10))
        self._aTB_queuedPendingTransmits: collections.deque[str] = collections.deque(queued)
        self.sent: list[str] = []
        self.held = 0  # how many tries find the transport held by another thread

    def _exclusively_processing(self) -> bool:
        return True

    def _canSendNow(self) -> bool:
        return True

    def _runQueued(self) -> bool:
        if self.held:
            self.held -= 1
            return False
        self.sent.append(self._aTB_queuedPendingTransmits.popleft())
        return True

    def _not_processing(self) -> None:
        pass

    def _processIntentTimeouts(self) -> None:
        pass

    def _processIntents(self, fileno: int) -> None:
        pass  # the loop asks for every descriptor readable; no transmit has one here


def _run_loop(received: list[str], events: list[str], queued: list[str] | None = None) -> Any:
    """The quick loop on a :class:`LoopEndpoint` holding ``received``, its watched pipe
    readable: each message handled, and the pipe's wake-up, go into ``events``.  Handling the
    wake-up makes a timer due (the run's time is up), so the loop returns, as it does for
    Thespian to run a due timer's handler."""
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"!")
        with socket.create_server(("127.0.0.1", 0)) as listener:  # nobody connects
            endpoint = LoopEndpoint(listener, read_end, received, queued or [])

            def handler(envelope: Any) -> bool:
                message = envelope.message
                if isinstance(message, WatchMessage):
                    os.read(read_end, 1)
                    events.append("woken")
                    endpoint.run_time = ExpirationTimer(dt.timedelta(seconds=0))
                else:
                    events.append(message)
                return True

            result = run_with_expiry(endpoint, handler)
        assert isinstance(result, Thespian__Run_Expired)
        return endpoint
    finally:
        os.close(read_end)
        os.close(write_end)


def test_a_transmit_queued_while_another_thread_held_the_transport_is_tried_again_soon() -> None:
    """The actor's Loaded, queued while the read-ahead thread held the transport, with nothing
    else to send or read: Thespian's loop waited for an event that never came (no timer was
    due, nothing was in flight), and the Replicator waited for the Loaded for good.  The loop
    waits at most a millisecond while a transmit waits in the queue, and tries again."""
    with socket.create_server(("127.0.0.1", 0)) as listener:  # nobody connects
        read_end, write_end = os.pipe()  # never readable
        try:
            endpoint = LoopEndpoint(listener, read_end, [], ["Loaded"])
            endpoint.held = 3
            endpoint.run_time = ExpirationTimer(dt.timedelta(seconds=0.3))
            assert isinstance(
                run_with_expiry(endpoint, lambda envelope: True), Thespian__Run_Expired
            )
        finally:
            os.close(read_end)
            os.close(write_end)
    assert endpoint.sent == ["Loaded"]  # tried four times; Thespian's loop: once, at its start


class AlmostDue:
    """A run's end less than half a microsecond away when the loop first looks at it (as a
    timedelta: zero), and past when it looks again."""

    def __init__(self) -> None:
        self.looks = 0

    def view(self, curtime: float | None = None) -> AlmostDue:
        return self

    def expired(self) -> bool:
        self.looks += 1
        return self.looks > 1

    def remaining(self) -> dt.timedelta:
        return dt.timedelta(seconds=3e-7)

    def remainingSeconds(self) -> float:
        return 3e-7


def test_regression_a_timer_due_in_less_than_a_microsecond_ends_the_wait() -> None:
    """Found by starting a node on 100,000 keys again and again: one start in about fifty
    never ended.  The DurableWriter pauses 1 ms (a timer) between the chunks of a load; when
    its loop looked with less than half a microsecond left, Thespian's loop took the time left
    as a timedelta (zero) and dropped it as no delay, and waited for the next event: there was
    none, and the load stopped for good, the Replicator waiting for its next chunk.  The loop
    waits until the timer, however close."""
    with socket.create_server(("127.0.0.1", 0)) as listener:  # nobody connects
        read_end, write_end = os.pipe()
        # What ends the wait if the timer does not: a write to the watched pipe, 2 s later.
        rescue = threading.Timer(2.0, lambda: os.write(write_end, b"!"))
        rescue.start()
        try:
            endpoint = LoopEndpoint(listener, read_end, [], [])
            endpoint.run_time = AlmostDue()
            started = time.monotonic()
            result = run_with_expiry(endpoint, lambda envelope: True)
            waited = time.monotonic() - started
        finally:
            rescue.cancel()
            rescue.join()
            os.close(read_end)
            os.close(write_end)
    assert isinstance(result, Thespian__Run_Expired)
    assert waited < 1.0


def test_what_a_thread_queued_while_the_loop_held_the_transport_is_sent_at_its_next_turn(
    turn_ends: list[str],
) -> None:
    """A thread that sends while the loop holds the transport queues its transmit and wakes the
    loop (:func:`run_queued` no longer takes the hold from it): the loop's next turn sends it."""
    endpoint = _run_loop([], turn_ends, queued=["from a thread", "and another"])
    assert endpoint.sent == ["from a thread", "and another"]
    assert not endpoint._aTB_queuedPendingTransmits


def test_the_loop_calls_the_turn_end_once_a_turn_s_messages_are_handled_before_it_waits(
    turn_ends: list[str],
) -> None:
    """Two messages received, then a wake-up: each turn's messages are all handled before the
    turn-end callback, which runs before the loop waits again, and before it returns for a
    timer due (whose handler Thespian runs outside the loop)."""
    at_turn_end(lambda: turn_ends.append("end"))
    _run_loop(["a", "b"], turn_ends)
    assert turn_ends == ["a", "b", "end", "woken", "end"]


def test_a_turn_end_that_raises_is_logged_and_the_loop_goes_on(
    turn_ends: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    def fails() -> None:
        turn_ends.append("end")
        raise RuntimeError("broken")

    at_turn_end(fails)
    _run_loop(["a"], turn_ends)
    assert turn_ends == ["a", "end", "woken", "end"]
    assert "the end of a turn failed" in caplog.text
    assert "broken" in caplog.text


# The child only compares a list and exits: no lock another thread holds is touched.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
def test_a_process_forked_from_one_with_turn_ends_has_none(turn_ends: list[str]) -> None:
    """The DurableWriter's process is forked from the Replicator's: the Replicator's callback,
    copied with its state, must never run there."""
    at_turn_end(lambda: turn_ends.append("end"))
    pid = os.fork()
    if pid == 0:  # the child: exits at once, telling what it holds
        os._exit(0 if transport._TURN_ENDS == [] else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert len(transport._TURN_ENDS) >= 1  # the parent keeps its own


@pytest.mark.multinode
def test_a_node_started_quickened_answers_through_the_quick_loop(quickened: None) -> None:
    """This process quickened, then a real node started from it: its admin and Replicator
    (forked from it) and this process's own endpoint all run the quick loop (asks, tells,
    creating a probe, a subscription's notifications), and every reply is right.  (With the
    loop's sends left undone, this test fails.)"""
    node = start_node(None, **FAST)
    try:
        probe = node.probe()
        node.asys.tell(node.replicator, Subscribe("k", probe))
        for _ in range(40):
            node.asys.tell(node.replicator, Update("k", GCounter(), _increment))
        for _ in range(40):
            reply = node.ask(Update("k", GCounter(), _increment))
            assert isinstance(reply, UpdateSuccess), reply
        assert node.ask(Get("k")).data.value == 80

        def told() -> list[int]:
            return [m.data.value for m in node.received(probe) if isinstance(m, Changed)]

        eventually(lambda: 80 in told(), timeout=10.0, what="the subscriber was told 80")
        assert told() == sorted(told())
        # This process's endpoint waited through the quick loop's kept poll (the processes
        # forked from it have the same class, so the same loop).
        endpoint = node.asys._systemBase.transport
        assert isinstance(endpoint.__dict__.get("_thespian_dd_poll"), KeptPoll)
    finally:
        node.asys.shutdown()


def _connections_to(port: int) -> list[str]:
    """The states (``/proc/net/tcp``'s hex codes: 01 established, 08 close-wait) of this
    process's TCP connections to ``port``."""
    states = []
    for line in Path("/proc/self/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if int(fields[2].rsplit(":", 1)[1], 16) == port:
            states.append(fields[3])
    return states


@pytest.mark.multinode
@pytest.mark.timeout(120)
@pytest.mark.skipif(not Path("/proc/self/net/tcp").exists(), reason="reads Linux's /proc")
def test_a_replicator_closes_a_connection_left_unused_for_three_failure_timeouts() -> None:
    """A real node (failure_timeout 10 s: 30 s): the connection this process's ask opened to
    its Replicator is not closed before 25 s unused (seen within half a second), is closed by
    the Replicator within 30 s and a few turns of its loop (this end, whose loop does not run
    between asks, sees it half-closed), and the next ask opens another and is answered."""
    node = start_node(failure_timeout=10.0)
    try:
        assert node.ask(Update("k", GCounter(), _increment)) is not None
        port = node.replicator.addressDetails.sockname[1]
        assert "01" in _connections_to(port)
        asked = time.monotonic()
        eventually(
            lambda: "01" not in _connections_to(port),
            timeout=idle_connection_seconds(10.0) + 20.0,
            interval=0.5,
            what="the Replicator closed the unused connection",
        )
        assert time.monotonic() - asked >= 25.0  # not closed before its time
        reply = node.ask(Get("k"))
        assert reply.data.value == 1
    finally:
        node.asys.shutdown()
