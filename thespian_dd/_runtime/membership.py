"""Membership: who the peers are, what they speak, and each gossip round's messages.

Every peer message goes through :meth:`Membership.accept` first: the sender is admitted (right
version, not cut off, not a removed replica), marked alive, and learned if it is new or a new
incarnation.  Peers meet by hellos (directly, or carried by an Introducer) and by the directories
and directory digests in statuses.  A round (:meth:`Membership.round`) sweeps the failure
detector, then sends statuses to a few peers and heartbeats to the quiet rest (see
:meth:`~thespian_dd._runtime.peers.PeerTable.gossip_targets`).

Everything goes out through one :meth:`Membership.send`, which keeps the peer's send window and
never sends a peer bytes of a protocol it cannot read.  A plain class: ``send`` is the actor's,
``me`` and ``address`` say who this node is now (its incarnation changes), and ``met`` / ``lost``
tell the quorum requests when a peer comes or goes.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from thespian.actors import ActorAddress

from thespian_dd._log import Log
from thespian_dd._runtime.antientropy import AntiEntropy
from thespian_dd._runtime.checks import Rejections
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.peers import Admission, Peer, PeerTable, Record
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    GossipStatus,
    Heartbeat,
    PeerHello,
    PeerMessage,
    PeerRemoved,
    gossip_bytes,
)
from thespian_dd._runtime.versions import MINE, PROTOCOL_VERSIONS, Versions
from thespian_dd._runtime.window import SendWindow
from thespian_dd.data import ReplicaId

__all__ = ["Membership"]

log = Log("thespian_dd.replicator")


@dataclass
class Membership:
    """The peer protocol's own side, over the peer table, the versions and the send window."""

    peers: PeerTable
    versions: Versions
    window: SendWindow
    keys: KeyTable
    anti_entropy: AntiEntropy
    rejections: Rejections
    send_now: Callable[[Any, Any], None]
    """The actor's ``send``: an answer outside any send window."""
    me: Callable[[], ReplicaId]
    address: Callable[[], Any]
    met: Callable[[Peer], None]
    lost: Callable[[Peer], None]
    removal_timeout: float
    rng: random.Random = field(default_factory=random.Random)
    rounds: int = 0
    bytes_in: int = 0
    announced: Record = field(default_factory=Record)
    """What this node last told every peer of its watch."""

    # -- sending ---------------------------------------------------------------------------------

    def send(self, name: str, address: Any, message: PeerMessage) -> None:
        """Send ``message`` to peer ``name`` through its send window (to an address not in the
        peer table: once, outside any window), in the protocol version of the pair."""
        if name in self.peers.blocked:
            return
        if not self.versions.can_talk(name) and not isinstance(message, PeerHello):
            return  # never bytes a peer cannot read
        version = self.versions.protocol(name)
        if message.version != version:
            message = replace(message, version=version)
        peer = self.peers.get(name)
        replica = None if peer is None or peer.address != address else peer.replica
        self.window.send(replica, address, message)

    def reply(self, peer: Peer, message: PeerMessage) -> None:
        self.send(peer.replica.node, peer.address, message)

    def hello(self, *, reply: bool) -> PeerHello:
        record = self.peers.record
        return PeerHello(
            PROTOCOL_VERSION,
            self.me(),
            self.address(),
            self.peers.directory(),
            reply,
            versions=MINE.announcement(),
            watching=record.watching,
            silent=record.silent,
        )

    def heartbeat(self) -> Heartbeat:
        record = self.peers.record
        return Heartbeat(PROTOCOL_VERSION, self.me(), record.watching, record.silent)

    def removed(self, replica: ReplicaId) -> PeerRemoved:
        return PeerRemoved(PROTOCOL_VERSION, self.me(), replica)

    def status(self, node: str, lean: bool, used: dict[str, float] | None = None) -> GossipStatus:
        """The status for peer ``node``: digests in the pair's format; ``lean``: with the
        directory's digest only (a peer of an earlier release gets the directory too, as it
        expects)."""
        status = self.anti_entropy.status(
            {} if lean else self.peers.directory(),
            self.peers.directory_digest(self.me()),
            self.versions.format(node),
            used,
            MINE.announcement(),
        )
        record = self.peers.record
        return replace(status, watching=record.watching, silent=record.silent)

    def introduce_again(self) -> None:
        """Tell every peer this node's (new) incarnation."""
        hello = self.hello(reply=True)
        for peer in self.peers:
            self.reply(peer, hello)

    # -- receiving -------------------------------------------------------------------------------

    def accept(self, msg: Any, sender: Any) -> bool:
        """Whether a peer message may be handled: right version, sender not cut off.  Marks the
        sender alive."""
        me = self.me()
        verdict = self.peers.admit(msg, me)
        if verdict is not Admission.OK:
            if verdict in (Admission.MALFORMED, Admission.OTHER_VERSION):
                self.rejections.refuse()
            if verdict is Admission.OTHER_VERSION:
                reason = f"protocol version {msg.version!r} (this node speaks {PROTOCOL_VERSIONS})"
                kind, origin = type(msg).__name__, msg.sender
                self.rejections.warn_once(
                    origin.node, reason, "ignoring %s from %s: %s", kind, origin, reason
                )
            elif (
                verdict is Admission.REMOVED
                and isinstance(sender, ActorAddress)
                and not isinstance(msg, PeerRemoved)  # no answer to an answer
            ):
                self.send_now(sender, self.removed(msg.sender))
            return False
        origin = msg.sender
        if not self._heard_versions(msg):
            return False
        told = False
        with contextlib.suppress(TypeError, AttributeError):  # malformed: the handler rejects it
            self.bytes_in += gossip_bytes(msg)
        peer = self.peers.get(origin.node)
        if (
            (peer is None or peer.replica < origin)
            and not isinstance(msg, PeerHello)
            and self.peers.learn(me, origin, sender)
        ):
            # A peer whose hello never came, or has not come yet (it restarted while this node
            # could not hear it; Thespian may deliver its next messages first): every peer
            # message but the hello (which an Introducer may carry) comes from its Replicator,
            # so that address is the one to learn.
            self._joined(origin)
            self.send(origin.node, sender, self.hello(reply=False))
        elif peer is not None and peer.replica == origin and not peer.reachable:
            self.peers.heard(origin)
            self.met(peer)
            told = True
        told |= self.peers.confirms(origin)  # a peer it started to watch, heard: say so
        self.peers.heard(origin)
        if self._told(msg) or told:
            self.judge()
        return True

    def _told(self, msg: PeerMessage) -> bool:
        """Note what a hello, status or heartbeat says of its sender's watch; returns whether
        that changed."""
        if not isinstance(msg, (PeerHello, GossipStatus, Heartbeat)):
            return False
        record = None if msg.watching is None else Record.of(msg.watching, msg.silent)
        if msg.watching is not None and record is None:
            self.rejections.refuse()  # malformed: what it says of its watch is ignored
            return False
        return self.peers.told(msg.sender, record)

    def judge(self) -> None:
        """Decide again which peers are reachable (what a peer says of its watch changed, or a
        peer was heard again), tell the quorum requests, and every peer if what this node says
        of its watch changed (a peer it started to watch was heard: the others may be holding
        that peer reachable until someone vouches for it)."""
        lost, revived = self.peers.judge()
        self._changed(lost, revived)
        if self.peers.record != self.announced:
            self.announced = self.peers.record
            heartbeat = self.heartbeat()
            for peer in self.peers:
                if peer.fanout and peer.replica.node not in self.peers.blocked:
                    self.reply(peer, heartbeat)

    def _changed(self, lost: list[Peer], revived: list[Peer]) -> None:
        for peer in lost:
            log.warning("peer %s is unreachable", peer.replica)
            self.lost(peer)
        for peer in revived:
            log.info("peer %s is reachable again", peer.replica)
            self.met(peer)

    def sender(self, msg: PeerMessage) -> Peer | None:
        """The peer table's entry for an accepted message's sender."""
        return self.peers.get(msg.sender.node)

    def _heard_versions(self, msg: PeerMessage) -> bool:
        """Note the versions a hello or status announces; returns whether this node can talk
        to its sender (a peer it cannot talk to is said so once in the log, and shown in Stats
        and Status, and kept out of the peer table)."""
        node = msg.sender.node
        if isinstance(msg, (PeerHello, GossipStatus)):
            try:
                reason = self.versions.heard(node, msg.versions, msg.sender)
            except ValueError as e:
                self.rejections.refuse()
                self.rejections.warn_once(
                    node, "versions", "ignoring %s from %s: %s", type(msg).__name__, msg.sender, e
                )
                return False
            if reason is not None:
                log.error(
                    "thespian_dd cannot talk to peer %s: %s (see the upgrade procedure in the "
                    "operations guide); it is left out, this node serves on",
                    msg.sender,
                    reason,
                )
                # Known before (from a directory): unreachable from now on, and removed after
                # removal_timeout like any silent peer.  It still counts in N until then: taken
                # out at once, it would also leave what pruning counts as live, and a node on the
                # minority side of an upgrade could prune the replicas of nodes that still run.
                self.left(node)
        return self.versions.can_talk(node)

    def left(self, name: str) -> Peer | None:
        """Peer ``name`` left (its node said so, or it cannot be talked to): unreachable now."""
        gone = self.peers.left(name)
        if gone is not None:
            self.lost(gone)
        return gone

    def _joined(self, replica: ReplicaId) -> None:
        log.info("peer %s joined (%d peers)", replica, len(self.peers))
        peer = self.peers.get(replica.node)
        if peer is not None:
            self.met(peer)

    def _learn_directory(self, directory: Mapping[str, tuple[ReplicaId, Any]]) -> None:
        talk = self.versions.can_talk
        directory = {name: entry for name, entry in directory.items() if talk(name)}
        for peer in self.peers.learn_all(self.me(), directory):
            self._joined(peer.replica)
            self.reply(peer, self.hello(reply=True))

    def on_hello(self, msg: PeerHello, sender: Any) -> None:
        if not self.accept(msg, sender):
            if (
                msg.reply
                and isinstance(msg, PeerHello)
                and isinstance(msg.sender, ReplicaId)
                and isinstance(msg.address, ActorAddress)
                and not self.versions.can_talk(msg.sender.node)
            ):
                # So that it learns why, and says so too (a hello carries no values).
                self.send(msg.sender.node, msg.address, self.hello(reply=False))
            return
        if not isinstance(msg.address, ActorAddress):
            self.rejections.refuse()
            return
        if self.peers.learn(self.me(), msg.sender, msg.address):
            self._joined(msg.sender)
            if self._told(msg):  # learnt only now: what it says of its watch counts too
                self.judge()
        self._learn_directory(msg.peers)
        if msg.reply:
            self.send(msg.sender.node, msg.address, self.hello(reply=False))
        peer = self.peers.get(msg.sender.node)
        lean = peer is None or peer.fanout
        # The keys used here go out with the round's statuses, to every peer: not to this one.
        status = self.status(msg.sender.node, lean, used={})
        self.send(msg.sender.node, msg.address, status)

    def on_status(self, msg: GossipStatus, sender: Any) -> None:
        if not self.accept(msg, sender):
            return
        self._learn_directory(msg.peers)
        peer = self.sender(msg)
        if peer is None:
            return
        if isinstance(msg.directory, bytes):
            peer.fanout = True
            if (
                msg.directory != self.peers.directory_digest(self.me())
                and peer.directory_asked != self.rounds
            ):
                # The directories differ: ours goes with the hello, its comes back with the
                # answer (at most once a round, while they cannot agree: one side removed a
                # peer the other still has).
                peer.directory_asked = self.rounds
                self.reply(peer, self.hello(reply=True))
        if self.anti_entropy.on_status(msg, partial(self.reply, peer), force=peer.resync):
            peer.resync = False

    # -- rounds ----------------------------------------------------------------------------------

    def round(self) -> None:
        """A gossip round: sweep the failure detector, then statuses and heartbeats."""
        self.rounds += 1
        kept, lost, removed, revived = self.peers.sweep()
        self._changed(lost, revived)
        for peer, silent in removed:
            # Gone for good: it no longer counts in N, and its replica will be pruned.
            self.window.forget(peer.replica)
            self.versions.forget(peer.replica.node)
            log.warning("peer %s removed: unreachable for %.0f s", peer.replica, silent)
        self.versions.forget_silent(self.removal_timeout)
        self.keys.keep_formats(self.versions.formats(p.replica.node for p in kept))
        used = self.keys.take_used_here()
        # Keys used here that expire when idle: every peer must hear of it before it expires
        # them (as every peer did when every round went to all).
        # What this node says of its watch changed: every peer hears it now.
        announce = self.peers.record != self.announced
        self.announced = self.peers.record
        statuses, heartbeats = self.peers.gossip_targets(
            self.window.quiet, self.rng, everyone=bool(used), announce=announce
        )
        # One status per codec format and shape the peers need (one, unless a rolling upgrade
        # is on: an earlier release reads older formats and wants the directory every round).
        made: dict[tuple[int, bool], GossipStatus] = {}
        for peer in statuses:
            node = peer.replica.node
            shape = (self.versions.format(node), peer.fanout)
            if shape not in made:
                made[shape] = self.status(node, peer.fanout, used)
            self.reply(peer, made[shape])
        if heartbeats:
            heartbeat = self.heartbeat()
            for peer in heartbeats:
                self.reply(peer, heartbeat)
