"""Where the peer protocol's classes were first defined, kept as their wire names.

Pickle and Thespian's ``createActor`` name a class by its module: nodes of the first layout send
and create ``thespian_dd._peers.GossipStatus``, ``thespian_dd._peers.Introducer`` and the like, and
the classes in :mod:`thespian_dd._runtime.protocol` and :mod:`thespian_dd._runtime.peers` keep
these names on the wire.  Import them from there; this module only has to exist.
"""

from thespian_dd._runtime.peers import Introducer
from thespian_dd._runtime.protocol import (
    NODE_CAPABILITY,
    PROTOCOL_VERSION,
    TOMBSTONE,
    DeltaPropagation,
    GossipEntries,
    GossipKeys,
    GossipStatus,
    Heartbeat,
    Introduce,
    Introduced,
    IntroducerDone,
    PartitionForTests,
    PeerHello,
    PeerMessage,
    PeerRead,
    PeerReadResult,
    PeerRemoved,
    PeerWrite,
    PeerWriteAck,
)

__all__ = [
    "NODE_CAPABILITY",
    "PROTOCOL_VERSION",
    "TOMBSTONE",
    "DeltaPropagation",
    "GossipEntries",
    "GossipKeys",
    "GossipStatus",
    "Heartbeat",
    "Introduce",
    "Introduced",
    "Introducer",
    "IntroducerDone",
    "PartitionForTests",
    "PeerHello",
    "PeerMessage",
    "PeerRead",
    "PeerReadResult",
    "PeerRemoved",
    "PeerWrite",
    "PeerWriteAck",
]
