"""What Replicators say to each other, and how they find each other.

Thespian conventions are a star (a member hears only about the leader) and a remote globalName
lookup hangs on its second use, so Replicators keep their own directory of peers, keyed by node
name, spread it in every gossip message, and meet a peer they know only from the convention
through a short-lived :class:`Introducer` actor created on that peer's node.

Every peer message carries :data:`PROTOCOL_VERSION`; a Replicator ignores (and counts) messages
of another version.  Values travel as codec bytes (versioned, checksummed, capped on decode),
never as pickled CRDTs, so a peer's payload is validated before it is merged.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from thespian.actors import ActorExitRequest, ActorTypeDispatcher

from thespian_dd.data import ReplicaId

__all__ = [
    "BUCKETS",
    "NODE_CAPABILITY",
    "PROTOCOL_VERSION",
    "TOMBSTONE",
    "DeltaPropagation",
    "GossipEntries",
    "GossipKeys",
    "GossipStatus",
    "Introduce",
    "Introducer",
    "PartitionForTests",
    "PeerHello",
    "PeerRead",
    "PeerReadResult",
    "PeerRemoved",
    "PeerWrite",
    "PeerWriteAck",
    "bucket_digests",
    "bucket_of",
    "gossip_bytes",
]

PROTOCOL_VERSION = 1
NODE_CAPABILITY = "thespian_dd.node_name"
"""The ActorSystem capability that names a node; introducers are placed by it."""

BUCKETS = 64
"""Keys are grouped into this many hashed buckets; gossip compares bucket digests first, so two
nodes that agree exchange a fixed 64 x 8 bytes per round, whatever the number of keys."""

TOMBSTONE = b""
"""The payload of a deleted key (a tombstone that wins every merge)."""


def bucket_of(key: str) -> int:
    return (
        hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=2).digest()[0] % BUCKETS
    )


def bucket_digests(digests: Mapping[str, bytes], keys: Iterable[str]) -> dict[int, bytes]:
    """8-byte digests of the given buckets, from the per-key digests (order-independent)."""
    by_bucket: dict[int, list[str]] = {}
    for key in keys:
        by_bucket.setdefault(bucket_of(key), []).append(key)
    out = {}
    for bucket, members in by_bucket.items():
        h = hashlib.blake2b(digest_size=8)
        for key in sorted(members):
            h.update(key.encode("utf-8", "surrogatepass"))
            h.update(b"\0")
            h.update(digests[key])
        out[bucket] = h.digest()
    return out


@dataclass(frozen=True)
class PeerMessage:
    version: int
    sender: ReplicaId


def gossip_bytes(msg: PeerMessage) -> int:
    """What a gossip message carries: digests, keys and values, counted from its fields (no
    second pickling of what Thespian pickles anyway).  Counts the same for sender and receiver."""
    if isinstance(msg, GossipStatus):
        return sum(1 + len(d) for d in msg.buckets.values()) + sum(8 + len(k) for k in msg.used)
    if isinstance(msg, GossipKeys):
        return sum(len(k) + len(d) for k, d in msg.digests.items())
    if isinstance(msg, (GossipEntries, DeltaPropagation)):
        size = sum(len(k) + len(p) for k, p in msg.entries.items())
        return size + sum(len(k) for k in getattr(msg, "want", ()))
    return 0


@dataclass(frozen=True)
class PeerHello(PeerMessage):
    """I am ``sender`` at ``address``; these are the peers I know.  Answered with a PeerHello
    (``reply=False``) by a Replicator that did not know the sender."""

    address: Any
    peers: dict[str, tuple[ReplicaId, Any]] = field(default_factory=dict)
    reply: bool = True


@dataclass(frozen=True)
class PeerRemoved(PeerMessage):
    """Your replica ``removed`` was removed from the cluster (unreachable past the removal
    timeout) or pruned: take a new incarnation before you write on."""

    removed: ReplicaId


@dataclass(frozen=True)
class GossipStatus(PeerMessage):
    """Heartbeat and anti-entropy summary: the digest of every non-empty bucket; ``used``: keys
    that expire after inactivity and were used on the sender since its last round (when)."""

    buckets: dict[int, bytes]
    peers: dict[str, tuple[ReplicaId, Any]] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class GossipKeys(PeerMessage):
    """The key digests of the buckets that differ (answer to a GossipStatus)."""

    digests: dict[str, bytes]
    buckets: frozenset[int]


@dataclass(frozen=True)
class GossipEntries(PeerMessage):
    """Values (envelopes, or TOMBSTONE) to merge, and keys whose values the sender wants.
    ``used``: when keys that expire after inactivity were last used (wall clock, seconds)."""

    entries: dict[str, bytes]
    want: frozenset[str] = frozenset()
    used: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class DeltaPropagation(PeerMessage):
    """Deltas of local updates (codec bytes of a delta state, or TOMBSTONE), numbered per
    origin incarnation so a receiver can tell a gap."""

    seq: int
    entries: dict[str, bytes]
    used: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class PeerWrite(PeerMessage):
    """Merge this value and acknowledge (a quorum write)."""

    request_id: str
    key: str
    payload: bytes


@dataclass(frozen=True)
class PeerWriteAck(PeerMessage):
    request_id: str


@dataclass(frozen=True)
class PeerRead(PeerMessage):
    """Send me your value of ``key`` (a quorum read)."""

    request_id: str
    key: str


@dataclass(frozen=True)
class PeerReadResult(PeerMessage):
    request_id: str
    key: str
    payload: bytes | None  # None: not found here


@dataclass(frozen=True)
class PartitionForTests:
    """TEST ONLY: drop every peer message to and from the named nodes (empty: heal).

    A real network partition cannot be made between processes on one host without privileges;
    this switch inside the Replicator gives the same effect to the protocol.  Never send it in
    production: a partitioned node stays cut off until healed.
    """

    blocked: frozenset[str]


@dataclass(frozen=True)
class Introduce:
    """To an Introducer: hand this hello to your node's Replicator."""

    hello: PeerHello


@dataclass(frozen=True)
class Introduced:
    """From a Replicator to the Introducer: done, you may exit."""


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
        from thespian_dd.replicator import REPLICATOR_NAME, Replicator

        replicator = self.createActor(Replicator, globalName=REPLICATOR_NAME)
        self.send(replicator, msg.hello)
        self.send(replicator, IntroducerDone())

    def receiveMsg_Introduced(self, msg: Introduced, sender: Any) -> None:  # noqa: N802, ARG002
        # Only now: exiting before the hello is delivered could lose it.
        self.send(self.myAddress, ActorExitRequest())


@dataclass(frozen=True)
class IntroducerDone:
    """From an Introducer to its node's Replicator, after the hello: answer Introduced."""
