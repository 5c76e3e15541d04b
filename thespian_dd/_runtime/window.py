"""The send window: how many messages each peer may have in flight, and what waits meanwhile.

Thespian lets an actor have ``MAX_PENDING_TRANSMITS`` (20) transmits in flight, for all targets
together, and keeps a transmit to a silent host (a real partition) in flight for minutes: a few
gossip rounds to a cut-off peer would stall every other send of the Replicator, its replies to
clients too.  So each peer gets a share of the slots (after a reserve for clients, subscribers and
the store); what exceeds it waits (bounded, newest kept, only the latest status), and the
transmit function given fails a transmit that is not delivered within ``failure_timeout``, which
frees its slot.

The slots grow with the peer count (``grow``: Thespian's limit is a module global of the
Replicator's process), to :data:`RESERVED_TRANSMITS` plus :data:`MIN_PER_PEER` a peer: however many
peers fall silent, their transmits leave the reserve free, and the Replicator's clients are
answered at once, not after a transmit times out (a ``failure_timeout``) and frees a slot.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from thespian.system.transport import SendStatus, TransmitIntent

from thespian_dd._runtime.protocol import GossipStatus, PeerMessage, gossip_bytes
from thespian_dd.data import ReplicaId

__all__ = [
    "HELD_PER_PEER",
    "MIN_PER_PEER",
    "RESERVED_TRANSMITS",
    "SendWindow",
    "Transmit",
    "transmit_within",
]

HELD_PER_PEER = 256
"""Messages kept for a peer whose window is full; beyond it the oldest is dropped (anti-entropy
repairs what a dropped delta or status carried; a dropped quorum request times out)."""

RESERVED_TRANSMITS = 6
"""Thespian's transmit slots kept for clients, subscribers and the store."""

MIN_PER_PEER = 4
"""The least window of a peer: the slots grow to hold it for every peer (a quorum request, a
delta, a status and a heartbeat can be in flight to each at once)."""

Transmit = Callable[[Any, Any, Callable[[Any], None]], None]
"""``transmit(address, message, done)``: send, then call ``done(status)`` once the message is
delivered or has failed (a SendStatus)."""


def transmit_within(actor: Any, seconds: float) -> Transmit:
    """The :data:`Transmit` of ``actor`` (a Thespian Actor): a transmit not delivered within
    ``seconds`` fails (Thespian's own limit is minutes).  On a base without transmit intents
    (simpleSystemBase) a send is done at once."""

    def transmit(address: Any, message: Any, done: Callable[[Any], None]) -> None:
        send_intent = getattr(actor._myRef, "_send_intent", None)
        if send_intent is None:
            actor.send(address, message)
            done(SendStatus.Sent)
            return

        def finished(status: Any, _intent: Any) -> None:
            done(status)

        limit = dt.timedelta(seconds=seconds)
        send_intent(
            TransmitIntent(address, message, onSuccess=finished, onError=finished, maxPeriod=limit)
        )

    return transmit


@dataclass
class _Channel:
    replica: ReplicaId
    in_flight: int = 0  # handed to Thespian and not yet delivered or failed
    held: deque[PeerMessage] = field(default_factory=deque)  # waiting for the window
    last_sent: float = float("-inf")  # when the last message was handed to Thespian


class SendWindow:
    """Peer messages through ``transmit``, at most :meth:`size` in flight per peer.

    ``slots``: Thespian's transmit slots at the start; ``peer_count()``: how many peers share
    them; ``dead(replica)``: the transport says the peer's node is gone; ``delivered(replica)``:
    a message to the peer was delivered (its process is alive); ``grow(n)``: make Thespian's
    slots ``n`` (called as the peers become more); ``clock``: monotonic seconds."""

    def __init__(  # noqa: PLR0913 - the transport's four hooks, its slots, the peers, a clock
        self,
        transmit: Transmit,
        slots: int,
        peer_count: Callable[[], int],
        dead: Callable[[ReplicaId], None],
        *,
        grow: Callable[[int], None] | None = None,
        delivered: Callable[[ReplicaId], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._transmit_fn = transmit
        self._slots = slots
        self._peer_count = peer_count
        self._dead = dead
        self._grow = grow
        self._delivered = delivered
        self._granted = slots
        self._clock = clock
        self._channels: dict[ReplicaId, _Channel] = {}
        self.bytes_out = 0
        """What the gossip messages sent carried (see :func:`gossip_bytes`)."""

    def slots(self) -> int:
        """Thespian's transmit slots: those it started with, or the reserve and
        :data:`MIN_PER_PEER` for each peer if that is more (and ``grow`` was given)."""
        if self._grow is None:
            return self._slots
        return max(self._slots, RESERVED_TRANSMITS + MIN_PER_PEER * self._peer_count())

    def size(self) -> int:
        """How many messages each peer may have in flight: the slots less the reserve, shared
        among the peers (at least one each)."""
        return max(1, (self.slots() - RESERVED_TRANSMITS) // max(1, self._peer_count()))

    def quiet(self, replica: ReplicaId) -> float:
        """Seconds since a message to ``replica`` was last handed to Thespian (infinite if
        none was)."""
        channel = self._channels.get(replica)
        return float("inf") if channel is None else self._clock() - channel.last_sent

    def send(self, replica: ReplicaId | None, address: Any, message: PeerMessage) -> None:
        """Send ``message`` to the peer ``replica`` at ``address``, or hold it while its window
        is full.  ``replica`` None: an address not (yet) in the peer table, sent once, outside
        any window (a hello)."""
        if replica is None:
            self._transmit(None, address, message)
            return
        channel = self._channels.setdefault(replica, _Channel(replica))
        if channel.in_flight < self.size():
            self._transmit(channel, address, message)
            return
        if isinstance(message, GossipStatus):  # only the latest status matters
            channel.held = deque(m for m in channel.held if not isinstance(m, GossipStatus))
        channel.held.append(message)
        while len(channel.held) > HELD_PER_PEER:
            channel.held.popleft()

    def forget(self, replica: ReplicaId) -> None:
        """The peer was removed or replaced by a new incarnation: what it held is moot."""
        self._channels.pop(replica, None)

    def in_flight(self, replica: ReplicaId) -> int:
        channel = self._channels.get(replica)
        return 0 if channel is None else channel.in_flight

    def held(self, replica: ReplicaId) -> list[PeerMessage]:
        channel = self._channels.get(replica)
        return [] if channel is None else list(channel.held)

    def _transmit(self, channel: _Channel | None, address: Any, message: PeerMessage) -> None:
        self.bytes_out += gossip_bytes(message)
        if self._grow is not None and (slots := self.slots()) > self._granted:
            self._granted = slots
            self._grow(slots)
        if channel is not None:
            channel.in_flight += 1
            channel.last_sent = self._clock()
        self._transmit_fn(address, message, partial(self._done, channel, address))

    def _done(self, channel: _Channel | None, address: Any, status: Any) -> None:
        """A message was delivered, or failed: its slot is free for the next held one."""
        if channel is None:
            return
        channel.in_flight -= 1
        if self._channels.get(channel.replica) is not channel:
            return  # removed, or a new incarnation
        if status == SendStatus.DeadTarget:
            self._dead(channel.replica)  # its node is gone: no need to wait for the timeout
        elif status == SendStatus.Sent and self._delivered is not None:
            self._delivered(channel.replica)
        while channel.held and channel.in_flight < self.size():
            self._transmit(channel, address, channel.held.popleft())
