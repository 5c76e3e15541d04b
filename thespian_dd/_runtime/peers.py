"""The peer table (the other nodes' Replicators, by node name) and the Introducer.

Thespian conventions are a star (a member hears only about the leader) and a remote globalName
lookup hangs on its second use, so Replicators keep their own directory of peers, keyed by node
name, spread it in every status, and meet a peer they know only from the convention through a
short-lived :class:`Introducer` actor created on that peer's node.

Gossip fan-out: a round sends the status to at most :data:`GOSSIP_FANOUT` peers chosen at random,
plus the peers met or heard again since the last round, plus every peer of an earlier release
(which sends its whole directory every round and expects a status from everyone); the others get
a :class:`~thespian_dd._runtime.protocol.Heartbeat` once nothing else went to them, and nothing
came from them, for a third of ``failure_timeout`` (see :meth:`PeerTable.gossip_targets`).  So a
round costs a few messages whatever the number of nodes, and every peer still hears this node
within the failure timeout.
A status carries the digest of the directory, not the directory: a peer whose digest differs
asks for it.

Failure detection: every peer message is a heartbeat, and so is the delivery of a message to a
peer (Thespian's transport acknowledges each one: the peer's process took it).  So one heartbeat a
period serves both ends of a pair: the peer that receives it hears the sender, the sender hears
of its delivery, and the peer, having heard the sender, sends none back.

Heartbeats between every pair would grow with n² (at 32 nodes idle, most of the work there was),
so nodes of this release watch each other on a ring, as Akka's cluster does: the ring orders the
nodes by a hash of their names, and each node watches the :data:`WATCHERS` nodes after it that it
can reach (and the unreachable ones between them), heartbeating them when quiet.  Each says, in
its hellos, statuses and heartbeats, whom it watches and which of them it has not heard for
``failure_timeout`` (a :class:`Record`), and tells every peer when that changes.  A peer
is reachable here (:meth:`PeerTable.judge`) if this node heard it within ``failure_timeout``, or
if a reachable node watches it and still hears it: vouching starts from what this node heard
itself, so a peer that nobody on this side of a partition hears is unreachable however its old
watchers vouched for it.  A peer this node watches, or that the transport or the convention said
is gone, is judged by this node's own hearing alone.  A node of an earlier release watches no
ring: it is judged by this node's own hearing, and gets heartbeats when quiet, as every peer did.

Unreachable peers get no quorum requests and cannot acknowledge, but still count in N (so
``WriteAll`` with a node down fails), until they are unreachable and have been silent, since
last known alive (:attr:`Peer.alive_at`), for ``removal_timeout``, and this node is on the
majority side: then they are removed for good (departed), and their replicas will be pruned.
"""

from __future__ import annotations

import enum
import hashlib
import random
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from thespian.actors import ActorAddress, ActorExitRequest, ActorTypeDispatcher

from thespian_dd._runtime.protocol import (
    NODE_CAPABILITY,
    PEERS_MODULE,
    Introduce,
    Introduced,
    IntroducerDone,
    PeerMessage,
    wire_name,
)
from thespian_dd._runtime.versions import PROTOCOL_VERSIONS
from thespian_dd.data import ReplicaId

__all__ = [
    "GOSSIP_FANOUT",
    "HEARTBEATS_PER_TIMEOUT",
    "WATCHERS",
    "Admission",
    "Introducer",
    "Peer",
    "PeerTable",
    "Record",
]

GOSSIP_FANOUT = 2
"""Peers chosen at random for each round's status (besides those met or heard again)."""

HEARTBEATS_PER_TIMEOUT = 3
"""A peer that got nothing from this node for ``failure_timeout / HEARTBEATS_PER_TIMEOUT``
gets a heartbeat: the failure timeout then covers two lost or late ones."""

WATCHERS = 4
"""How many reachable nodes watch each node of the ring (Akka's ``monitored-by-nr-of-members``):
in a cluster of at most ``WATCHERS + 1`` nodes, every node watches every other."""

# Named by its path, not imported: replicator.py imports this module.
REPLICATOR_CLASS = "thespian_dd.replicator.Replicator"
REPLICATOR_NAME = "thespian_dd.replicator"


class Admission(enum.Enum):
    """What becomes of a message that claims to come from a peer."""

    OK = "handled"
    MALFORMED = "no peer message, or no ReplicaId as its sender: counted as rejected"
    IGNORED = "from a node cut off (TEST ONLY), or from this node itself"
    REMOVED = "from a replica removed for good or pruned: told so, so it takes a new one"
    OTHER_VERSION = "of another protocol version: counted, and logged once per peer"


@dataclass(frozen=True)
class Record:
    """What a node says of its watch: the nodes it watches, and those of them it has not heard
    for ``failure_timeout`` (by node name)."""

    watching: frozenset[str] = frozenset()
    silent: frozenset[str] = frozenset()

    @classmethod
    def of(cls, watching: object, silent: object) -> Record | None:
        """The record of a message's two fields; None if they are malformed."""
        if not (isinstance(watching, frozenset) and isinstance(silent, frozenset)):
            return None
        if not all(isinstance(n, str) for n in watching) or not silent <= watching:
            return None
        return cls(watching, silent)


@dataclass
class Peer:
    replica: ReplicaId
    address: Any
    last_seen: float
    reachable: bool = True
    fresh: bool = True
    """Met, or heard again after being unreachable, since the last round: gets its status."""
    fanout: bool = False
    """Its statuses carry a directory digest: it gossips to a few peers a round, and reads
    heartbeats.  False until then (a node of an earlier release, or not heard yet)."""
    resync: bool = True
    """Met, or heard again after being unreachable, and not compared in full since: its next
    status is compared bucket by bucket, changing ones too (it missed deltas meanwhile)."""
    directory_asked: int = -1
    """The round in which this node last asked it for its directory (once a round at most)."""
    record: Record | None = None
    """What it last said of its watch (None: a node of an earlier release, or not heard yet:
    it is no part of the ring)."""
    gone: bool = False
    """The transport or the convention said it is gone: unreachable until heard again."""
    watched_since: float | None = None
    """Since when this node watches it (None: it does not)."""
    alive_at: float = 0.0
    """When it was last known alive here: when last heard, or ``failure_timeout`` before the last
    time a reachable watcher vouched for it (see :meth:`PeerTable.judge`)."""
    held_since: float | None = None
    """Since when it is reachable here only by a hold (its vouchers became unreachable)."""


class PeerTable:
    """The peers this node knows.

    ``pruned``: replicas pruned from the data (kept by the key table); such a replica may not
    join, and ``refused(replica, address)`` is called to tell it.  ``replaced(old)`` is called
    when a peer's new incarnation replaces ``old`` (what was kept per incarnation is moot).
    ``clock``: monotonic seconds; ``node``: this node's name (its place on the ring)."""

    def __init__(  # noqa: PLR0913 - the detector's two timeouts, two callbacks, two inputs
        self,
        *,
        failure_timeout: float,
        removal_timeout: float,
        pruned: set[ReplicaId],
        refused: Callable[[ReplicaId, Any], None],
        replaced: Callable[[ReplicaId], None],
        clock: Callable[[], float] = time.monotonic,
        node: str = "",
    ) -> None:
        self._failure_timeout = failure_timeout
        self._removal_timeout = removal_timeout
        self._pruned = pruned
        self._refused = refused
        self._replaced = replaced
        self._clock = clock
        self._peers: dict[str, Peer] = {}
        self.departed: set[ReplicaId] = set()
        """Replicas removed for good: they may never be peers again."""
        self.blocked: frozenset[str] = frozenset()
        """TEST ONLY: node names whose messages are dropped (see PartitionForTests)."""
        self._node = node
        self.record = Record()
        """What this node says of its watch (see :meth:`judge`)."""
        self._places: dict[str, bytes] = {}

    def get(self, name: str) -> Peer | None:
        return self._peers.get(name)

    def __len__(self) -> int:
        return len(self._peers)

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def admit(self, msg: object, me: ReplicaId) -> Admission:
        """Whether the message ``msg`` may be handled (see :class:`Admission`)."""
        if not isinstance(msg, PeerMessage) or not isinstance(msg.sender, ReplicaId):
            return Admission.MALFORMED
        origin = msg.sender
        if origin.node in self.blocked or origin == me:
            return Admission.IGNORED
        if origin in self.departed or origin in self._pruned:
            return Admission.REMOVED
        if msg.version not in PROTOCOL_VERSIONS:
            return Admission.OTHER_VERSION
        return Admission.OK

    def learn(self, me: ReplicaId, replica: ReplicaId, address: object) -> bool:
        """Add ``replica`` at ``address``, or replace an older incarnation of its node; returns
        whether it is new.  Not this node, nor a departed or pruned replica, nor an address that
        is no ActorAddress (every send to it would fail)."""
        if not isinstance(address, ActorAddress):
            return False
        if replica.node == me.node or replica in self.departed:
            return False
        if replica in self._pruned:
            self._refused(replica, address)
            return False
        known = self._peers.get(replica.node)
        if known is not None and known.replica >= replica:
            return False
        self._peers[replica.node] = Peer(replica, address, self._clock())
        if known is not None:
            self._replaced(known.replica)
        return True

    def heard(self, replica: ReplicaId) -> None:
        """A message from ``replica``: it is alive, if it is the current incarnation."""
        peer = self._peers.get(replica.node)
        if peer is not None and peer.replica == replica:
            peer.last_seen = self._clock()
            peer.fresh |= not peer.reachable
            peer.resync |= not peer.reachable
            peer.reachable = True
            peer.gone = False

    def told(self, replica: ReplicaId, record: Record | None) -> bool:
        """``replica`` said ``record`` of its watch; returns whether that changed what it had
        said (for the current incarnation only)."""
        peer = self._peers.get(replica.node)
        if peer is None or peer.replica != replica or peer.record == record:
            return False
        peer.record = record
        return True

    def left(self, name: str) -> Peer | None:
        """The convention saw node ``name`` go: it is unreachable until heard again (it still
        counts in N until removed).  Returns the peer if this changed its state."""
        peer = self._peers.get(name)
        if peer is None or not peer.reachable:
            return None
        self._down(peer, peer.last_seen)
        peer.gone = True
        return peer

    def delivered(self, replica: ReplicaId) -> Peer | None:
        """A message to ``replica`` was delivered: its process is alive, as a message from it
        would say (see :meth:`heard`).  Returns the peer if this made it reachable again (the
        Replicator meets it again, as when a message from it revives it).  An unreachable peer
        must be revived so: having heard this node's heartbeats, it sends none back."""
        peer = self._peers.get(replica.node)
        if peer is None or peer.replica != replica:
            return None
        revived = not peer.reachable
        self.heard(replica)
        return peer if revived else None

    def unreachable(self, replica: ReplicaId) -> None:
        """The transport says ``replica``'s node is gone (no need to wait for the timeout)."""
        peer = self._peers.get(replica.node)
        if peer is not None and peer.replica == replica:
            if peer.reachable:
                self._down(peer, peer.last_seen)
            peer.gone = True

    @staticmethod
    def _down(peer: Peer, alive_at: float) -> None:
        peer.reachable = False
        peer.held_since = None
        peer.alive_at = max(peer.alive_at, alive_at)

    # -- the ring ------------------------------------------------------------------------------

    def _place(self, name: str) -> bytes:
        """A node's place on the ring: a hash of its name, so that the nodes of one rack or one
        half of a sorted list do not all watch each other."""
        place = self._places.get(name)
        if place is None:
            place = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
            self._places[name] = place
        return place

    def _watch(self) -> frozenset[str]:
        """Whom this node watches: the ring's nodes after it, up to :data:`WATCHERS` reachable
        ones, with the unreachable ones between them."""
        ring = sorted(
            (n for n, p in self._peers.items() if p.record is not None),
            key=self._place,
        )
        mine = self._place(self._node)
        start = next((i for i, n in enumerate(ring) if self._place(n) > mine), 0)
        watched: list[str] = []
        reachable = 0
        for name in ring[start:] + ring[:start]:
            if reachable == WATCHERS:
                break
            watched.append(name)
            reachable += self._peers[name].reachable
        return frozenset(watched)

    def judge(self) -> tuple[list[Peer], list[Peer]]:
        """Decide which peers are reachable now: (those that just became unreachable, those that
        just became reachable again), and whom this node watches (:attr:`record`, what it tells
        its peers).

        A peer is reachable if this node heard it (or a message to it was delivered) within
        ``failure_timeout``, or if a node reachable so says it watches it and hears it: vouching
        starts from what this node heard itself.  A peer this node watches, a node of an earlier
        release, and a peer the transport or the convention said is gone are judged by this
        node's own hearing alone.  Two short holds, each a heartbeat's period (``failure_timeout
        /`` :data:`HEARTBEATS_PER_TIMEOUT`), bridge a change of watchers: a reachable peer this
        node starts to watch stays reachable here until a heartbeat could have been delivered,
        and a reachable peer whose vouchers all became unreachable (none of them said it is
        silent) stays reachable until a new watcher could vouch for it.  Neither is vouched for
        to others, nor vouches for anyone: stale word from across a partition props nobody up.
        Every peer reachable on first-hand or vouched-for evidence was alive ``failure_timeout``
        ago at least (:attr:`Peer.alive_at`, from which removal is timed)."""
        now = self._clock()
        hold = self._failure_timeout / HEARTBEATS_PER_TIMEOUT
        reach, own, grace = self._heard_here(now, hold)
        vouchers = [self._peers[name].record for name in reach]
        flagged: set[str] = set()
        while vouchers:
            record = vouchers.pop()
            if record is None:
                continue
            flagged |= record.silent
            for name in record.watching - record.silent:
                peer = self._peers.get(name)
                if peer is not None and name not in reach and name not in own:
                    reach.add(name)
                    vouchers.append(peer.record)
        return self._settle(reach, (own | flagged) - grace, grace, now, hold)

    def _settle(
        self, reach: set[str], down: set[str], grace: set[str], now: float, hold: float
    ) -> tuple[list[Peer], list[Peer]]:
        """Mark each peer reachable if in ``reach`` (or ``grace``); else unreachable now if in
        ``down``, else after a hold (see :meth:`judge`)."""
        lost: list[Peer] = []
        revived: list[Peer] = []
        for name, peer in self._peers.items():
            if name in reach:
                peer.held_since = None
                peer.alive_at = max(peer.alive_at, peer.last_seen, now - self._failure_timeout)
                if not peer.reachable:
                    peer.reachable = True
                    peer.fresh = peer.resync = True
                    revived.append(peer)
            elif not peer.reachable or name in grace:
                continue
            elif name in down:
                self._down(peer, peer.last_seen)
                lost.append(peer)
            elif peer.held_since is None:
                peer.held_since = now
            elif now - peer.held_since > hold:
                self._down(peer, peer.last_seen)
                lost.append(peer)
        return lost, revived

    def _heard_here(self, now: float, grace: float) -> tuple[set[str], set[str], set[str]]:
        """(The peers heard here within ``failure_timeout``, the peers judged by this node's own
        hearing alone, the reachable peers this node watches since less than ``grace`` and has
        not heard yet); sets :attr:`record`, which leaves the latter out."""
        timeout = self._failure_timeout
        watching = self._watch()
        silent = set()
        own: set[str] = set()
        reach: set[str] = set()
        unsure: set[str] = set()
        for name, peer in self._peers.items():
            since = None
            if name in watching:
                if peer.watched_since is None:
                    peer.watched_since = now
                since = peer.watched_since
            else:
                peer.watched_since = None
            blocked = name in self.blocked
            if since is not None or peer.gone or peer.record is None or blocked:
                own.add(name)
            if now - peer.last_seen <= timeout and not peer.gone and not blocked:
                reach.add(name)
            elif since is None:
                continue
            elif peer.reachable and now - since <= grace and not blocked:
                unsure.add(name)
            else:
                silent.add(name)
        self.record = Record(watching - unsure, frozenset(silent))
        return reach, own, unsure

    def confirms(self, replica: ReplicaId) -> bool:
        """Whether ``replica`` is a peer this node watches and has not vouched for yet (a
        message to it was just delivered: it can, and should say so at once)."""
        peer = self._peers.get(replica.node)
        return (
            peer is not None
            and peer.replica == replica
            and peer.watched_since is not None
            and replica.node not in self.record.watching
        )

    def sweep(
        self,
    ) -> tuple[list[Peer], list[Peer], list[tuple[Peer, float]], list[Peer]]:
        """Apply the failure detector: (peers kept, peers that just became unreachable, peers
        removed for good with how long they were silent, peers that just became reachable
        again).  Every peer is judged first (:meth:`judge`), and only then is the majority
        decided, once: a node that ran no round for a while (stopped, suspended) must not count
        as reachable the peers it is about to find silent, and so remove the majority it cannot
        reach.  A peer is removed once it has been silent, as far as this node can tell, for
        ``removal_timeout`` (since ``alive_at``: a peer this node does not watch may be heard here
        rarely)."""
        lost, revived = self.judge()
        now = self._clock()
        majority = self.in_majority()
        kept: list[Peer] = []
        removed: list[tuple[Peer, float]] = []
        for name, peer in list(self._peers.items()):
            silent = now - max(peer.last_seen, peer.alive_at)
            if majority and not peer.reachable and silent > self._removal_timeout:
                del self._peers[name]
                self.departed.add(peer.replica)
                removed.append((peer, silent))
            else:
                kept.append(peer)
        return kept, lost, removed, revived

    def silence(self, peer: Peer) -> float:
        """Seconds since ``peer`` was last heard."""
        return self._clock() - peer.last_seen

    def replica_count(self) -> int:
        """N: this replica and every known peer, reachable or not."""
        return 1 + len(self._peers)

    def reachable_count(self) -> int:
        return sum(1 for p in self._peers.values() if p.reachable)

    def all_reachable(self) -> bool:
        return all(p.reachable for p in self._peers.values())

    def in_majority(self) -> bool:
        """Whether this node and the peers it reaches are more than half the cluster: only such a
        side may remove a peer (on both sides of a partition, each would remove the other and
        prune what the other counted)."""
        return 1 + self.reachable_count() > (1 + len(self._peers)) / 2

    def targets(self) -> dict[str, Any]:
        """The peers a quorum request goes to: the reachable ones not cut off, by name."""
        return {
            name: peer.address
            for name, peer in self._peers.items()
            if peer.reachable and name not in self.blocked
        }

    def directory(self) -> dict[str, tuple[ReplicaId, Any]]:
        """What a hello or a status tells of the peers: name -> (replica, address)."""
        return {name: (p.replica, p.address) for name, p in self._peers.items()}

    def live(self, me: ReplicaId) -> dict[str, ReplicaId]:
        """The current replica of this node and of every peer, by node name."""
        return {me.node: me, **{n: p.replica for n, p in self._peers.items()}}

    def directory_digest(self, me: ReplicaId) -> bytes:
        """A digest of :meth:`live` (names and incarnations, not addresses, whose text differs
        per process): equal on two nodes that know the same replicas."""
        h = hashlib.blake2b(digest_size=8)
        for name, replica in sorted(self.live(me).items()):
            h.update(f"{len(name)}:{name}:{replica.incarnation};".encode("utf-8", "surrogatepass"))
        return h.digest()

    def gossip_targets(
        self,
        quiet: Callable[[ReplicaId], float],
        rng: random.Random,
        *,
        everyone: bool = False,
        announce: bool = False,
    ) -> tuple[list[Peer], list[Peer]]:
        """This round's (peers to send the status, peers to send a heartbeat).  The status goes
        to every fresh peer, every peer of an earlier release, and :data:`GOSSIP_FANOUT` other
        reachable peers at random; the heartbeat to every other peer (reachable or not: a peer
        that thinks this node unreachable must hear it to change its mind) that got nothing
        from this node for ``quiet(replica)`` >= ``failure_timeout /``
        :data:`HEARTBEATS_PER_TIMEOUT` seconds and was not heard from (nor had a message
        delivered) for as long: a peer heard from recently heard this node then (its message
        was delivered), or it heard this node's heartbeat and got its delivery for one.  Of the
        reachable peers of the ring, only those this node watches get heartbeats (the others'
        watchers vouch for them).  ``everyone``: the status to every peer (it carries what every
        peer must hear); ``announce``: a heartbeat to every peer the status does not go to (this
        node's :attr:`record` changed).  Clears ``fresh``."""
        peers = [p for n, p in self._peers.items() if n not in self.blocked]
        status = [p for p in peers if everyone or p.fresh or not p.fanout]
        others = [p for p in peers if not (everyone or p.fresh or not p.fanout) and p.reachable]
        status += rng.sample(others, min(GOSSIP_FANOUT, len(others)))
        for peer in status:
            peer.fresh = False
        due = self._failure_timeout / HEARTBEATS_PER_TIMEOUT
        chosen = {id(p) for p in status}
        now = self._clock()
        heartbeat = [
            p
            for p in peers
            if id(p) not in chosen
            and (
                announce
                or (
                    (p.record is None or p.watched_since is not None or not p.reachable)
                    and quiet(p.replica) >= due
                    and now - p.last_seen >= due
                )
            )
        ]
        return status, heartbeat

    def learn_all(
        self, me: ReplicaId, directory: Mapping[str, tuple[ReplicaId, Any]]
    ) -> list[Peer]:
        """Learn every peer of another node's directory; returns those that are new."""
        new = []
        for replica, address in directory.values():
            if isinstance(replica, ReplicaId) and self.learn(me, replica, address):
                peer = self._peers[replica.node]
                new.append(peer)
        return new


@wire_name(PEERS_MODULE)
class Introducer(ActorTypeDispatcher):  # type: ignore[misc]
    """Created on a chosen node (by its node-name capability) to pass a hello to its Replicator,
    since a remote globalName lookup cannot be used (see the module docstring)."""

    @staticmethod
    def actorSystemCapabilityCheck(  # noqa: N802 - Thespian's name
        capabilities: Mapping[str, Any], requirements: Mapping[str, Any]
    ) -> bool:
        wanted = requirements.get(NODE_CAPABILITY)
        return wanted is None or capabilities.get(NODE_CAPABILITY) == wanted

    def receiveMsg_Introduce(self, msg: Introduce, sender: Any) -> None:  # noqa: N802, ARG002
        replicator = self.createActor(REPLICATOR_CLASS, globalName=REPLICATOR_NAME)
        self.send(replicator, msg.hello)
        self.send(replicator, IntroducerDone())

    def receiveMsg_Introduced(self, msg: Introduced, sender: Any) -> None:  # noqa: N802, ARG002
        # Only now: exiting before the hello is delivered could lose it.
        self.send(self.myAddress, ActorExitRequest())
