"""The Replicator's parts, made and wired together in one place.

The actor (:class:`thespian_dd.replicator.Replicator`) makes one :class:`Parts` when it knows its
settings, and its handlers delegate to them.  Everything the parts do to the world goes through
the :class:`Hooks` they are given, so the same wiring runs without processes in tests, with a
recording ``send`` and ``transmit`` and a clock the test moves (``tests/test_parts.py`` joins
nodes so, message by message).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

from thespian_dd._canonical import CodecError
from thespian_dd._log import Log
from thespian_dd._runtime.antientropy import AntiEntropy
from thespian_dd._runtime.checks import Rejections
from thespian_dd._runtime.deltas import DeltaQueue, rounds_to_reach_all, slice_size
from thespian_dd._runtime.durability import Durability, LoadOutcome
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.local import LocalData, stored_entry
from thespian_dd._runtime.membership import Membership
from thespian_dd._runtime.peers import Peer, PeerTable
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    DecodeTick,
    DeltaPropagation,
    DeltaTick,
    Every,
    FlushTick,
    GossipEntries,
    GossipKeys,
    GossipStatus,
    Heartbeat,
    LoadOverdue,
    NotifyTick,
    PeerHello,
    PeerMessage,
    PeerRead,
    PeerReadResult,
    PeerRemoved,
    PeerWrite,
    PeerWriteAck,
    RequestTimeout,
    StoreRetry,
)
from thespian_dd._runtime.pruning import Pruning
from thespian_dd._runtime.quorums import AskSecondaries, Quorums
from thespian_dd._runtime.report import Report
from thespian_dd._runtime.requests import Requests
from thespian_dd._runtime.settings import Settings, matches
from thespian_dd._runtime.subscriptions import Subscriptions
from thespian_dd._runtime.versions import Versions
from thespian_dd._runtime.window import SendWindow, Transmit
from thespian_dd._runtime.writer import Write, Written
from thespian_dd.data import ReplicaId, ReplicatedData
from thespian_dd.messages import Changed

__all__ = ["Hooks", "Parts"]

log = Log("thespian_dd.replicator")

DECODE_SLICE = 0.02
DECODE_PAUSE = 0.005
"""After a load, restored values are decoded in slices of DECODE_SLICE seconds, DECODE_PAUSE
apart: the node serves at once, and no request waits long behind the decoding."""


@dataclass
class Hooks:
    """What the parts act through: the actor's, or a test's."""

    send: Callable[[Any, Any], None]
    """Send a message now (replies to clients and answers outside a send window)."""
    wake: Callable[[float, Any], None]
    """Arm a timer whose payload comes back as a wakeup."""
    transmit: Transmit
    """Send a message and be told when it was delivered or failed (peers, subscribers)."""
    address: Callable[[], Any]
    """This Replicator's own address."""
    me: Callable[[], ReplicaId]
    """This node's replica in its current incarnation."""
    reincarnate: Callable[[], None]
    """Take a new incarnation (peers pruned this node's replica)."""
    create_writer: Callable[[], Any]
    """Start a DurableWriter and return its address."""
    commit: Callable[[Write], None] | None = None
    """Commit sync batches here instead of in the DurableWriter (the commit thread)."""
    commit_here: Callable[[Write], Written | None] | None = None
    """Commit a sync batch on the caller's thread, if it can now (the commit thread's)."""
    slots: int = 20
    """Thespian's transmit slots for this process at the start."""
    grow: Callable[[int], None] | None = None
    """Give this process more transmit slots."""


class Parts:
    """One node's parts (see :mod:`thespian_dd.replicator` for what each does), wired.
    ``clock``: monotonic seconds; ``rng`` picks gossip peers and quorum primaries."""

    def __init__(  # noqa: PLR0913 - the settings, the node, what it acts through, and inputs
        self,
        settings: Settings,
        node_name: str,
        hooks: Hooks,
        rejections: Rejections,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        rng = rng or random.Random()  # noqa: S311 - no secret
        self.hooks = hooks
        self.settings = settings
        self._delta_armed = False  # a DeltaTick is due
        self.rejections = rejections
        self.keys = keys = KeyTable(settings.expiry, refused=self._refused_on_decode)
        self.peers = PeerTable(
            failure_timeout=settings.failure_timeout,
            removal_timeout=settings.removal_timeout,
            pruned=keys.pruned,
            refused=lambda replica, address: hooks.send(address, self.membership.removed(replica)),
            replaced=self._forget_incarnation,
            clock=clock,
            node=node_name,
        )
        self.window = SendWindow(
            hooks.transmit,
            hooks.slots,
            peer_count=lambda: len(self.peers),
            dead=self._dead,
            grow=hooks.grow,
            delivered=self._delivered,
            clock=clock,
        )
        self.deltas = DeltaQueue()
        self._delta_rounds = (
            rounds_to_reach_all(settings.gossip_interval, settings.delta_interval)
            if settings.delta_interval
            else 1
        )
        self.versions = Versions(clock=clock)
        self.subscriptions = Subscriptions(
            transmit=hooks.transmit,
            wake=hooks.wake,
            interval=settings.notify_interval,
            dropped=lambda address: log.info("dropped a subscriber that is gone: %s", address),
        )
        self.pruning = Pruning(settings, keys, clock=clock)
        self.durability = Durability(
            settings=settings,
            node_name=node_name,
            send=hooks.send,
            wake=hooks.wake,
            create_writer=hooks.create_writer,
            entry=partial(stored_entry, keys),
            commit=hooks.commit,
            commit_here=hooks.commit_here,
        )
        self.local = LocalData(
            keys,
            self.subscriptions,
            self.deltas,
            self.durability,
            rejections,
            me=hooks.me,
            max_value_bytes=settings.max_value_bytes,
            pruned_here=hooks.reincarnate,
        )
        self.anti_entropy = AntiEntropy(
            keys,
            hooks.me,
            self.local.merge,
            settings.max_gossip_bytes,
            rejections,
            format_for=self.versions.format,
            # Deltas bring changing buckets level; without deltas, gossip is all there is.
            settle=settings.gossip_interval if settings.delta_interval else 0.0,
            clock=clock,
        )
        self.membership = Membership(
            self.peers,
            self.versions,
            self.window,
            keys,
            self.anti_entropy,
            rejections,
            send_now=hooks.send,
            me=hooks.me,
            address=hooks.address,
            met=self._met,
            lost=self._lost,
            removal_timeout=settings.removal_timeout,
            rng=rng,
        )
        self.requests = Requests(
            Quorums(hooks.wake, rng),
            keys,
            self.membership,
            self.durability,
            hooks.send,
            self.local.merge,
        )
        self.report = Report(
            settings, keys, self.membership, self.durability, self.subscriptions, rejections
        )

    # -- the peer protocol ----------------------------------------------------------------------

    def on_peer_message(self, msg: PeerMessage, sender: Any) -> None:
        """A message that claims to come from a peer's Replicator, handled as its kind says:
        the Replicator's handler of every peer message."""
        membership = self.membership
        if isinstance(msg, PeerHello):
            membership.on_hello(msg, sender)
        elif isinstance(msg, GossipStatus):
            membership.on_status(msg, sender)
        elif isinstance(msg, PeerRemoved):
            if msg.removed == self.hooks.me():
                self.hooks.reincarnate()
        elif not isinstance(msg, _ADMITTED):
            self.rejections.refuse()  # a peer message of a kind this version does not know
        elif membership.accept(msg, sender):
            self._admitted(msg, sender)

    def _admitted(self, msg: PeerMessage, sender: Any) -> None:
        membership = self.membership
        if isinstance(msg, (GossipKeys, GossipEntries)):
            peer = membership.sender(msg)
            reply = None if peer is None else partial(membership.reply, peer)
            if isinstance(msg, GossipEntries):
                self.anti_entropy.on_entries(msg, reply)
            elif reply is not None:
                self.anti_entropy.on_keys(msg, reply)
        elif isinstance(msg, DeltaPropagation):
            self._on_deltas(msg)
        elif isinstance(msg, PeerWrite):
            self.requests.on_write(msg)
        elif isinstance(msg, PeerRead):
            self.requests.on_read(msg)
        elif isinstance(msg, (PeerWriteAck, PeerReadResult)):
            self.requests.on_answer(msg, sender)
        # A Heartbeat says only that its sender is alive: accept() noted it.

    def _on_deltas(self, msg: DeltaPropagation) -> None:
        want = self.deltas.on_propagation(msg, self.keys, self.local.merge)
        peer = self.membership.sender(msg)
        if want and peer is not None:  # deltas were lost: ask for the whole values instead
            entries = GossipEntries(PROTOCOL_VERSION, self.hooks.me(), {}, frozenset(want))
            self.membership.reply(peer, entries)

    # -- timers and rounds -----------------------------------------------------------------------

    def start_rounds(self) -> None:
        """Arm the periodic rounds (the node serves from now on)."""
        for method, interval in (
            ("gossip_round", "gossip_interval"),
            ("pruning_round", "pruning_interval"),
        ):
            self.hooks.wake(getattr(self.settings, interval), Every(method, interval))

    def on_timer(self, payload: Any) -> LoadOutcome | None:
        """One of this node's own timers is due (the Replicator checked it is its own); the end
        of the load, if the timer ended it (the wait for chunks a Loaded overtook)."""
        if isinstance(payload, (FlushTick, StoreRetry, LoadOverdue)):
            return self.durability.on_timer(payload)
        if isinstance(payload, Every):
            try:
                getattr(self, payload.round)()
            finally:  # a round that fails must not end the rounds
                self.hooks.wake(getattr(self.settings, payload.interval), payload)
        elif isinstance(payload, NotifyTick):
            self.subscriptions.due()
            self.local.notify()
        elif isinstance(payload, DeltaTick):
            self.send_deltas()
        elif isinstance(payload, DecodeTick):
            if self.keys.decode_for(DECODE_SLICE):
                self.hooks.wake(DECODE_PAUSE, payload)
        elif isinstance(payload, (RequestTimeout, AskSecondaries)):
            self.requests.timer(payload)
        return None

    def decode_restored(self) -> None:
        """Decode the values a load restored, a slice at a time, while the node serves."""
        if self.keys.undecoded():
            self.hooks.wake(DECODE_PAUSE, DecodeTick())

    def gossip_round(self) -> None:
        """Expire idle keys, then a round of membership and anti-entropy."""
        self.local.expire_idle()
        self.membership.round()

    def pruning_round(self) -> None:
        """Expire markers; then, only while every peer is reachable, mark and prune."""
        me = self.hooks.me()
        live = self.peers.live(me)
        for key in self.pruning.expire_markers(live):
            self.durability.write(key, None)
        self.durability.keep_alive()
        # Which replicas the data holds is known once every restored value is decoded.
        if self.peers.all_reachable() and not self.keys.undecoded():
            for key in self.pruning.prune(me, live):
                self.durability.write(key, None)

    # -- subscriptions ---------------------------------------------------------------------------

    def subscribe(self, pattern: str, subscriber: Any) -> None:
        """Subscribe ``subscriber`` to ``pattern``, and tell it the value of each key that
        matches, in key order."""
        self.subscriptions.subscribe(pattern, subscriber)
        for key in sorted(self.keys.names()):
            if matches(pattern, key) and (value := self.keys.get(key)) is not None:
                self.subscriptions.tell(subscriber, Changed(key, value))

    # -- deltas ----------------------------------------------------------------------------------

    def queue_delta(self, key: str, delta: ReplicatedData | None) -> None:
        """Queue a local change's delta (None: a delete) for the next propagation."""
        if self.settings.delta_interval and len(self.peers):
            self.deltas.add(key, delta)
            self._arm_deltas()

    def _arm_deltas(self) -> None:
        # Armed by the first delta and while peers are owed some, not every interval: an idle
        # node has no timer to serve (at 32 nodes, 0.2 s timers cost about a third of a core).
        if not self._delta_armed:
            self._delta_armed = True
            self.hooks.wake(self.settings.delta_interval, DeltaTick())

    def send_deltas(self) -> None:
        """The delta timer: what is queued becomes the next batch, and a few reachable peers in
        turn get the batches they have not had (see :mod:`~thespian_dd._runtime.deltas`)."""
        self._delta_armed = False
        reachable = {peer.replica: peer for peer in self.peers if peer.reachable}
        me = self.hooks.me()
        size = slice_size(len(reachable), self._delta_rounds)
        try:
            for due in self.deltas.due(me, reachable, size):
                encoded: dict[int, DeltaPropagation] = {}  # one per codec format the peers use
                for replica, number in due.numbers.items():
                    version = self.versions.format(replica.node)
                    if version not in encoded:
                        deltas = due.deltas
                        encoded[version] = self.deltas.message(me, self.keys, deltas, 0, version)
                    message = replace(encoded[version], seq=number)
                    self.membership.reply(reachable[replica], message)
        finally:  # peers still owed batches get them at the next ticks, whatever failed here
            if self.deltas.waiting:
                self._arm_deltas()

    # The parts made later, reached from those made before them.

    def _refused_on_decode(self, key: str, error: CodecError) -> None:
        self.local.refused_on_decode(key, error)

    def _dead(self, replica: ReplicaId) -> None:
        self.requests.dead(replica)

    def _delivered(self, replica: ReplicaId) -> None:
        """A message to ``replica`` was delivered: it is alive, and met again if it was not."""
        confirms = self.peers.confirms(replica)  # a peer it started to watch: say so at once
        if (peer := self.peers.delivered(replica)) is not None:
            self.requests.met(peer)
        if confirms:
            self.membership.judge()

    def _met(self, peer: Peer) -> None:
        self.requests.met(peer)

    def _lost(self, peer: Peer) -> None:
        self.requests.lost(peer)

    def _forget_incarnation(self, old: ReplicaId) -> None:
        """A peer's new incarnation replaced ``old``: its deltas were numbered per incarnation,
        and what its window held is moot."""
        self.deltas.forget(old)
        self.window.forget(old)
        self.versions.replaced(old)  # it may have restarted on another release


_ADMITTED = (
    Heartbeat,
    GossipKeys,
    GossipEntries,
    DeltaPropagation,
    PeerWrite,
    PeerRead,
    PeerWriteAck,
    PeerReadResult,
)
"""The peer messages handled once their sender is admitted (:meth:`Membership.accept`)."""
