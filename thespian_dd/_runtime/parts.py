"""The Replicator's parts, made and wired together in one place.

The actor (:class:`thespian_dd.replicator.Replicator`) makes one :class:`Parts` when it knows its
settings, and its handlers delegate to them.  Everything the parts do to the world goes through
the :class:`Hooks` they are given, so the same wiring runs without processes in tests, with a
recording ``send`` and ``transmit`` and a clock the test moves (``tests/test_parts.py`` joins
nodes so, message by message).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from thespian_dd._canonical import CodecError
from thespian_dd._runtime.antientropy import AntiEntropy
from thespian_dd._runtime.checks import Rejections
from thespian_dd._runtime.deltas import DeltaQueue
from thespian_dd._runtime.durability import Durability
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.local import LocalData, stored_entry
from thespian_dd._runtime.membership import Membership
from thespian_dd._runtime.peers import Peer, PeerTable
from thespian_dd._runtime.pruning import Pruning
from thespian_dd._runtime.quorums import Quorums
from thespian_dd._runtime.report import Report
from thespian_dd._runtime.requests import Requests
from thespian_dd._runtime.settings import Settings
from thespian_dd._runtime.subscriptions import Subscriptions
from thespian_dd._runtime.versions import Versions
from thespian_dd._runtime.window import SendWindow, Transmit
from thespian_dd._runtime.writer import Write
from thespian_dd.data import ReplicaId

__all__ = ["Hooks", "Parts"]

log = logging.getLogger("thespian_dd.replicator")


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
        self.settings = settings
        self.rejections = rejections
        self.keys = keys = KeyTable(settings.expiry, refused=self._refused_on_decode)
        self.peers = PeerTable(
            failure_timeout=settings.failure_timeout,
            removal_timeout=settings.removal_timeout,
            pruned=keys.pruned,
            refused=lambda replica, address: hooks.send(address, self.membership.removed(replica)),
            replaced=self._forget_incarnation,
            clock=clock,
        )
        self.window = SendWindow(
            hooks.transmit,
            hooks.slots,
            peer_count=lambda: len(self.peers),
            dead=self._dead,
            grow=hooks.grow,
            clock=clock,
        )
        self.deltas = DeltaQueue()
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

    # The parts made later, reached from those made before them.

    def _refused_on_decode(self, key: str, error: CodecError) -> None:
        self.local.refused_on_decode(key, error)

    def _dead(self, replica: ReplicaId) -> None:
        self.requests.dead(replica)

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
