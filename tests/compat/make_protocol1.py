"""Writes the frozen protocol fixtures of ``tests/compat/protocol1/``: one pickled peer message
(as Thespian pickles it) of every class of :mod:`thespian_dd._runtime.protocol` that travels
between processes, built by the parts that build them on a node (key table, anti-entropy, delta
queue, codec), so the payloads, digests and buckets are real.

Run once per release, by hand, and check the files in (``tests/test_compat_protocol.py`` reads
them with the code of every later change).  A file once written is never written again: a class
added later gets its message added (here, in :func:`messages`) and written with ``--missing``,
which leaves the existing files as they are::

    PYTHONPATH=. python tests/compat/make_protocol1.py tests/compat/protocol1/release2 --missing
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import sys
from pathlib import Path
from typing import Any

from thespian.actors import ActorAddress
from thespian.system.transport.IPBase import TCPv4ActorAddress

from thespian_dd import GCounter, LWWRegister, ORSet, ReplicaId
from thespian_dd._runtime import protocol as p
from thespian_dd._runtime.antientropy import AntiEntropy
from thespian_dd._runtime.checks import Rejections
from thespian_dd._runtime.deltas import DeltaQueue
from thespian_dd._runtime.keys import BUCKETS, KeyTable
from thespian_dd._runtime.markers import Performed

A = ReplicaId("node-a", 1_700_000_000_001)
B = ReplicaId("node-b", 1_700_000_000_002)
GONE = ReplicaId("node-c", 1_600_000_000_003)
USED_AT = 1_700_000_123.5


def address(port: int) -> Any:
    return ActorAddress(TCPv4ActorAddress("127.0.0.1", port, external=True))


def values() -> dict[str, Any]:
    """The values the fixtures carry (tests/test_compat_protocol.py states them again)."""
    return {
        "counter": GCounter().increment(A, 5).increment(B, 2),
        "set": ORSet[str]().add(A, "x").add(B, "y").add(A, "z").remove(A, "z"),
        "register": LWWRegister("hello", 1_700_000_000_500, A),
    }


def extra(cls: type, **fields: Any) -> dict[str, Any]:
    """The fields of a later release that ``cls`` has (none in the first release's code)."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in fields.items() if k in names}


def messages() -> dict[str, object]:
    keys = KeyTable(lambda key: 3600.0 if key == "register" else None, clock=lambda: USED_AT)
    for key, value in values().items():
        keys.put(key, value)
    keys.put("counter", values()["counter"], markers={GONE: Performed(1_800_000_000_000)})
    keys.delete("gone-key")
    keys.touch("register")  # used here, now (the clock says USED_AT)
    directory = {"node-b": (B, address(40002))}
    anti_entropy = AntiEntropy(
        keys, lambda: A, lambda *_: False, 1 << 20, Rejections(logging.getLogger(__name__))
    )
    status = anti_entropy.status(directory)
    if hasattr(p.GossipStatus, "versions"):
        status = dataclasses.replace(
            status, **extra(p.GossipStatus, versions={"protocol": (1,), "format": (1,)})
        )
    buckets = frozenset(range(BUCKETS))
    sent: list[object] = []
    anti_entropy.send_entries(sorted(keys.names() | {"gone-key"}), frozenset({"want"}), sent.append)
    deltas = DeltaQueue()
    deltas.add("counter", GCounter().increment(A, 1))
    deltas.add("gone-key", None)
    (due,) = deltas.due(A, [A], 1)
    propagation = deltas.message(A, keys, due.deltas, 1)
    hello = p.PeerHello(
        p.PROTOCOL_VERSION,
        A,
        address(40001),
        directory,
        True,
        **extra(p.PeerHello, versions={"protocol": (1,), "format": (1,)}),
    )
    settings = {"node_name": "node-a", "gossip_interval": 0.2}
    payload = keys.payload("set")
    assert payload is not None
    later = {}  # classes a later release added
    if hasattr(p, "Heartbeat"):
        later["Heartbeat"] = p.Heartbeat(p.PROTOCOL_VERSION, A)
    return {
        **later,
        "PeerHello": hello,
        "PeerRemoved": p.PeerRemoved(p.PROTOCOL_VERSION, A, GONE),
        "GossipStatus": status,
        "GossipKeys": p.GossipKeys(p.PROTOCOL_VERSION, B, keys.digests_in(buckets), buckets),
        "GossipEntries": sent[0],
        "DeltaPropagation": propagation,
        "PeerWrite": p.PeerWrite(p.PROTOCOL_VERSION, A, "req-1", "set", payload),
        "PeerWriteAck": p.PeerWriteAck(p.PROTOCOL_VERSION, B, "req-1"),
        "PeerRead": p.PeerRead(p.PROTOCOL_VERSION, A, "req-2", "set"),
        "PeerReadResult": p.PeerReadResult(p.PROTOCOL_VERSION, B, "req-2", "set", payload),
        "PeerReadResult-none": p.PeerReadResult(p.PROTOCOL_VERSION, B, "req-3", "nothing", None),
        "PartitionForTests": p.PartitionForTests(frozenset({"node-b"})),
        "Introduce": p.Introduce(hello),
        "Introduced": p.Introduced(),
        "IntroducerDone": p.IntroducerDone(),
        "StartReplicator": p.StartReplicator(settings, "token-1"),
        "ReplicatorStarted": p.ReplicatorStarted(A, settings, "token-1", None),
        "DescribeProcess": p.DescribeProcess(),
        "ProcessInfo": p.ProcessInfo(4242, 4240),
    }


def main(directory: Path, *, missing: bool) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, message in messages().items():
        path = directory / f"{name}.pickle"
        if missing and path.exists():
            continue
        # Thespian pickles with the default protocol of its Python.
        path.write_bytes(pickle.dumps(message))


if __name__ == "__main__":
    main(Path(sys.argv[1]), missing="--missing" in sys.argv[2:])
