"""What Replicators say to each other, and the Replicator's own internal messages (Akka's
``Internal``), apart from the public protocol of :mod:`thespian_dd.messages`.

Every peer message carries a protocol version (:data:`PROTOCOL_VERSION` until a pair agrees on
another, see :mod:`thespian_dd._runtime.versions`); a Replicator ignores (and counts) messages of
a version it does not speak.  Fields added in a later release have a default, which is what a
message of an earlier release means: such a message unpickles with the class default, and an
earlier release unpickles a later message and ignores the field.  Values travel as codec bytes
(versioned, checksummed, capped on decode), never as pickled CRDTs, so a peer's payload is
validated before it is merged.

Wire names: pickle (and Thespian's ``createActor``) name a class by its module.  The classes here
that cross between nodes keep the module path the first release gave them (``thespian_dd._peers``
for the peer protocol, ``thespian_dd.replicator`` for the start and process messages), where they
stay importable, so nodes of an earlier layout can read what this one sends.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from thespian_dd._shown import shown
from thespian_dd.data import ReplicaId

__all__ = [
    "NODE_CAPABILITY",
    "PROTOCOL_VERSION",
    "TOMBSTONE",
    "DecodeTick",
    "DeltaPropagation",
    "DeltaTick",
    "DescribeProcess",
    "Every",
    "FlushTick",
    "GossipEntries",
    "GossipKeys",
    "GossipStatus",
    "Heartbeat",
    "Introduce",
    "Introduced",
    "IntroducerDone",
    "LoadOverdue",
    "NotifyTick",
    "PartitionForTests",
    "PeerHello",
    "PeerMessage",
    "PeerRead",
    "PeerReadResult",
    "PeerRemoved",
    "PeerWrite",
    "PeerWriteAck",
    "ProcessInfo",
    "ReplicatorStarted",
    "RequestTimeout",
    "StartReplicator",
    "StoreRetry",
    "gossip_bytes",
    "wire_name",
]

PROTOCOL_VERSION = 1
NODE_CAPABILITY = "thespian_dd.node_name"
"""The ActorSystem capability that names a node; introducers are placed by it."""

TOMBSTONE = b""
"""The payload of a deleted key (a tombstone that wins every merge)."""

PEERS_MODULE = "thespian_dd._peers"
REPLICATOR_MODULE = "thespian_dd.replicator"

T = TypeVar("T", bound=type)


def wire_name(module: str) -> Callable[[T], T]:
    """Name the class by ``module`` when pickled or created as an actor (see the module doc);
    ``module`` must re-export it."""

    def pin(cls: T) -> T:
        cls.__module__ = module
        return cls

    return pin


# -- between Replicators --------------------------------------------------------------------------


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class PeerMessage:
    version: int
    sender: ReplicaId

    def __str__(self) -> str:
        # Thespian formats every message it sends: digests, entries and payloads only by size.
        return shown(self)


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class PeerHello(PeerMessage):
    """I am ``sender`` at ``address``; these are the peers I know.  Answered with a PeerHello
    (``reply=False``) by a Replicator that did not know the sender."""

    address: Any
    peers: dict[str, tuple[ReplicaId, Any]] = field(default_factory=dict)
    reply: bool = True
    versions: dict[str, tuple[int, ...]] | None = None
    """The protocol and format versions the sender speaks (None: a node of the first release,
    which speaks 1 and 1); see :mod:`thespian_dd._runtime.versions`."""
    watching: frozenset[str] | None = None
    """The nodes the sender watches on the ring (None: a node of an earlier release, which
    watches none); see :mod:`thespian_dd._runtime.peers`."""
    silent: frozenset[str] = frozenset()
    """Those of ``watching`` the sender has not heard for its failure timeout."""


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class PeerRemoved(PeerMessage):
    """Your replica ``removed`` was removed from the cluster (unreachable past the removal
    timeout) or pruned: take a new incarnation before you write on."""

    removed: ReplicaId


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class GossipStatus(PeerMessage):
    """Heartbeat and anti-entropy summary: the digest of every non-empty bucket; ``used``: keys
    that expire after inactivity and were used on the sender since its last round (when)."""

    buckets: dict[int, bytes]
    peers: dict[str, tuple[ReplicaId, Any]] = field(default_factory=dict)
    used: dict[str, float] = field(default_factory=dict)
    versions: dict[str, tuple[int, ...]] | None = None
    """As in :class:`PeerHello`."""
    format: int = 1
    """The codec format the digests are computed in (the pair's)."""
    directory: bytes | None = None
    """The digest of the sender's directory (see ``PeerTable.directory_digest``); None from a
    node of a release that sends its whole directory in every status instead (and expects a
    status from every peer every round).  A receiver whose own digest differs asks for the
    directory with a PeerHello."""
    watching: frozenset[str] | None = None
    """As in :class:`PeerHello`."""
    silent: frozenset[str] = frozenset()


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class GossipKeys(PeerMessage):
    """The key digests of the buckets that differ (answer to a GossipStatus)."""

    digests: dict[str, bytes]
    buckets: frozenset[int]
    format: int = 1
    """The codec format the digests are computed in (the status's)."""
    part: tuple[int, int] | None = None
    """``(index, count)``: the digests are only of the keys in part ``index`` of ``count`` of
    the one bucket named (:func:`~thespian_dd._runtime.keys.part_of`), a bucket whose key
    digests exceed ``max_gossip_bytes``; None: of every key of the buckets.  Only in format 2
    and later: a node of the first release would take it for the whole bucket."""


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class GossipEntries(PeerMessage):
    """Values (envelopes, or TOMBSTONE) to merge, and keys whose values the sender wants.
    ``used``: when keys that expire after inactivity were last used (wall clock, seconds)."""

    entries: dict[str, bytes]
    want: frozenset[str] = frozenset()
    used: dict[str, float] = field(default_factory=dict)


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class DeltaPropagation(PeerMessage):
    """Deltas of local updates (codec bytes of a delta state, or TOMBSTONE), numbered from 1
    for each receiver by each origin incarnation, so a receiver can tell a gap (a node of the
    first releases numbered them per origin incarnation for every receiver alike)."""

    seq: int
    entries: dict[str, bytes]
    used: dict[str, float] = field(default_factory=dict)


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class PeerWrite(PeerMessage):
    """Merge this value and acknowledge (a quorum write)."""

    request_id: str
    key: str
    payload: bytes


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class PeerWriteAck(PeerMessage):
    request_id: str


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class PeerRead(PeerMessage):
    """Send me your value of ``key`` (a quorum read)."""

    request_id: str
    key: str


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class PeerReadResult(PeerMessage):
    request_id: str
    key: str
    payload: bytes | None  # None: not found here


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class Heartbeat(PeerMessage):
    """I am alive: sent to a peer this node watches (or that is unreachable, or of an earlier
    release) that got no other message from this node for a third of the failure timeout (a
    status goes to a few peers per round), and to every peer when what this node says of its
    watch changed.  Only to peers whose statuses carry a directory digest: a node of the first
    release cannot read it."""

    watching: frozenset[str] | None = None
    """As in :class:`PeerHello`."""
    silent: frozenset[str] = frozenset()


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class PartitionForTests:
    """TEST ONLY: drop every peer message to and from the named nodes (empty: heal).

    A real network partition cannot be made between processes on one host without privileges;
    this switch inside the Replicator gives the same effect to the protocol.  Never send it in
    production: a partitioned node stays cut off until healed.
    """

    blocked: frozenset[str]


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


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class Introduce:
    """To an Introducer: hand this hello to your node's Replicator."""

    hello: PeerHello


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class Introduced:
    """From a Replicator to the Introducer: done, you may exit."""


@wire_name(PEERS_MODULE)
@dataclass(frozen=True)
class IntroducerDone:
    """From an Introducer to its node's Replicator, after the hello: answer Introduced."""


# -- between a caller and its node's Replicator -------------------------------------------------


@wire_name(REPLICATOR_MODULE)
@dataclass(frozen=True)
class StartReplicator:
    """Sent by :func:`thespian_dd.start`: start with these settings (if not running yet) and reply
    :class:`ReplicatorStarted` once ready to serve."""

    settings: dict[str, Any]
    token: str


@wire_name(REPLICATOR_MODULE)
@dataclass(frozen=True)
class ReplicatorStarted:
    node: ReplicaId
    settings: dict[str, Any]
    token: str
    error: str | None = None


@wire_name(REPLICATOR_MODULE)
@dataclass(frozen=True)
class DescribeProcess:
    """Ask a Replicator for its process (the node CLI reports it, so a node can be killed)."""


@wire_name(REPLICATOR_MODULE)
@dataclass(frozen=True)
class ProcessInfo:
    pid: int
    pgid: int


# -- a Replicator's timers (wakeup payloads; only its own are obeyed) ---------------------------


@dataclass(frozen=True)
class DecodeTick:
    """Wakeup payload: decode the next slice of restored values."""


@dataclass(frozen=True)
class DeltaTick:
    """Wakeup payload: send the deltas queued (armed by the first one queued)."""


@dataclass(frozen=True)
class NotifyTick:
    """Wakeup payload: time to send pending changes to subscribers."""


@dataclass(frozen=True)
class Every:
    """Wakeup payload of a periodic round: call the parts' method ``round``, then wake up again
    after the setting ``interval``."""

    round: str  # "gossip_round" | "pruning_round", methods of Parts
    interval: str  # the Settings field


@dataclass(frozen=True)
class StoreRetry:
    """Wakeup payload: try the store again (loading, or a failed batch)."""


@dataclass(frozen=True)
class LoadOverdue:
    """Wakeup payload: load ``load`` had counted ``seen`` chunks when its Loaded came before the
    rest (or when this was last looked at); if none more came, it ends as failed."""

    load: int
    seen: int


@dataclass(frozen=True)
class FlushTick:
    """Wakeup payload: write-behind mode's interval is over; commit what is unwritten."""


@dataclass(frozen=True)
class RequestTimeout:
    """Wakeup payload: a quorum request ran out of time."""

    request_id: str
