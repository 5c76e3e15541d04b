"""quicken_transport, Thespian's TCP transport made cheaper in the Replicator's process: each
change computes what Thespian's own code computes (the selector's events, an idle socket's
expiry, an address's hash, the debug descriptions), is never pickled into what another process
reads, and is idempotent.  The multi-node tests run every Replicator quickened."""

from __future__ import annotations

import datetime as dt
import pickle
import selectors
import socket
import time
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import ActorAddress
from thespian.system.timing import ExpirationTimer
from thespian.system.transport import (
    IPBase,
    ReceiveEnvelope,
    TCPTransport,
    TransmitIntent,
)

from thespian_dd import GCounter, Get, ReplicaId, Update
from thespian_dd._runtime.transport import (
    Described,
    OneTurnPoll,
    idle_connection_seconds,
    quicken_transport,
)
from thespian_dd.testing import eventually, start_node

pytestmark = pytest.mark.timeout(60)


def _increment(counter: GCounter, node: ReplicaId) -> GCounter:
    return counter.increment(node, 1)


ORIGINAL_IDENTIFY = (TransmitIntent.identify, ReceiveEnvelope.identify)
ORIGINAL_HASH = IPBase.IPActorAddress.__hash__
ORIGINAL_EXPIRED = TCPTransport.IdleSocket.expired


PATCHED = [
    (TCPTransport, "selectors"),
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


def test_quickened_the_tcp_transport_selects_with_a_one_turn_poll(quickened: None) -> None:
    """The transport builds a selector every turn of its loop: a OneTurnPoll registers in
    user space and cheaply.  A socket pair shows it still reports readiness."""
    made = TCPTransport.selectors.DefaultSelector()
    assert isinstance(made, OneTurnPoll)
    left, right = socket.socketpair()
    with left, right, made:
        made.register(left, TCPTransport.selectors.EVENT_READ)
        assert made.select(0) == []
        right.send(b"x")
        assert [key.fileobj for key, _ in made.select(1)] == [left]


def _ready(selector: Any, fds: dict[int, int]) -> set[tuple[int, int]]:
    for fd, events in fds.items():
        selector.register(fd, events)
    try:
        return {(key.fd, events) for key, events in selector.select(0)}
    finally:
        selector.close()


def test_one_turn_poll_reports_what_a_poll_selector_reports() -> None:
    """Readable, writable, both, a peer that hung up, and a closed descriptor: the same
    (descriptor, events) pairs as selectors.PollSelector, which the transport used before."""
    read, write = selectors.EVENT_READ, selectors.EVENT_WRITE
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    e, f = socket.socketpair()
    gone, other = socket.socketpair()
    with a, b, c, d, e, f, other:
        b.send(b"x")  # a readable (and writable)
        f.close()  # e: its peer hung up
        closed = gone.fileno()
        gone.close()  # a descriptor closed while registered: poll says POLLNVAL
        fds = {a.fileno(): read | write, c.fileno(): read, d.fileno(): write}
        fds |= {e.fileno(): read, closed: read}
        ours = _ready(OneTurnPoll(), fds)
        assert ours == _ready(selectors.PollSelector(), fds)
        assert (a.fileno(), read | write) in ours
        assert (d.fileno(), write) in ours
        assert (e.fileno(), read) in ours
        assert all(fd != c.fileno() for fd, _ in ours)  # nothing to read: not ready


def test_one_turn_poll_refuses_what_a_selector_refuses_and_waits_as_told() -> None:
    """A descriptor registered twice (KeyError), a negative one or no events (ValueError), as
    selectors; a timeout in seconds waits about that long; a registered object is given back
    as its key's fileobj."""
    a, b = socket.socketpair()
    with a, b, OneTurnPoll() as poll:
        poll.register(a, selectors.EVENT_READ, "data")
        with pytest.raises(KeyError):
            poll.register(a.fileno(), selectors.EVENT_WRITE)
        with pytest.raises(ValueError, match="file descriptor"):
            poll.register(-1, selectors.EVENT_READ)
        with pytest.raises(ValueError, match="events"):
            poll.register(b, 0)
        started = time.monotonic()
        assert poll.select(0.05) == []
        assert time.monotonic() - started >= 0.04
        b.send(b"x")
        [(key, events)] = poll.select(None)
        assert (key.fileobj, key.fd, key.data, events) == (
            a,
            a.fileno(),
            "data",
            selectors.EVENT_READ,
        )


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
