"""The frozen peer protocol: messages pickled by earlier code must stay readable.

``tests/compat/protocol1/release1/`` holds one pickled message of every class that travels
between processes as the first release (349b515) sent them; ``release2/`` as this tree sends
them (the same protocol 1, with the version announcements).  Both were written once by
``tests/compat/make_protocol1.py`` and are never written again: a change that makes them
unreadable, changes a field's meaning, or computes other digests for the same values fails
here, and must instead add a field with a default, or a protocol version.  A class added later
fails here until its message is added to the newest release's directory (``--missing``).

The values the messages carry are stated again below (not imported from the generator), and the
digests are computed again by this tree's key table: a node of this tree and a node of the first
release holding equal values must find them equal.
"""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
from thespian.actors import ActorAddress

from thespian_dd import GCounter, LWWRegister, ORSet, ReplicaId, codec
from thespian_dd._canonical import Limits
from thespian_dd._runtime import protocol
from thespian_dd._runtime.keys import BUCKETS, KeyTable
from thespian_dd._runtime.markers import Performed, split_envelope
from thespian_dd._runtime.protocol import TOMBSTONE
from thespian_dd._runtime.versions import LEGACY, Speaks

COMPAT = Path(__file__).parent / "compat"
RELEASES = ["release1", "release2"]
A = ReplicaId("node-a", 1_700_000_000_001)
B = ReplicaId("node-b", 1_700_000_000_002)
GONE = ReplicaId("node-c", 1_600_000_000_003)
USED_AT = 1_700_000_123.5
VALUES: dict[str, Any] = {
    "counter": 7,
    "set": frozenset({"x", "y"}),
    "register": "hello",
}


def load(release: str, name: str) -> Any:
    return pickle.loads((COMPAT / "protocol1" / release / f"{name}.pickle").read_bytes())


def decoded(payload: bytes) -> tuple[dict[ReplicaId, Any], Any]:
    markers, raw = split_envelope(payload, Limits())
    return markers, codec.decode(raw).value


def same_table() -> KeyTable:
    """The key table the fixtures were made from, built again by this tree."""
    keys = KeyTable(lambda key: 3600.0 if key == "register" else None, clock=lambda: USED_AT)
    keys.put("counter", GCounter().increment(A, 5).increment(B, 2))
    keys.put("set", ORSet[str]().add(A, "x").add(B, "y").add(A, "z").remove(A, "z"))
    keys.put("register", LWWRegister("hello", 1_700_000_000_500, A))
    keys.put(
        "counter",
        GCounter().increment(A, 5).increment(B, 2),
        markers={GONE: Performed(1_800_000_000_000)},
    )
    keys.delete("gone-key")
    return keys


def wire_classes() -> list[str]:
    """Every class of the protocol module that crosses between processes (those with a wire
    name); the timers a Replicator sends itself do not."""
    modules = {protocol.PEERS_MODULE, protocol.REPLICATOR_MODULE}
    return sorted(
        name
        for name, cls in vars(protocol).items()
        if isinstance(cls, type) and cls.__module__ in modules and name != "PeerMessage"
    )


def test_every_class_that_crosses_processes_has_a_frozen_message() -> None:
    frozen = {p.stem.split("-")[0] for p in (COMPAT / "protocol1").glob("*/*.pickle")}
    missing = set(wire_classes()) - frozen
    assert not missing, (
        f"no frozen message of {sorted(missing)}: add one to messages() in "
        "tests/compat/make_protocol1.py and run it on the newest release's directory with "
        "--missing"
    )


@pytest.mark.parametrize("release", RELEASES)
def test_every_frozen_message_is_of_a_class_this_tree_has(release: str) -> None:
    for path in (COMPAT / "protocol1" / release).glob("*.pickle"):
        assert path.stem.split("-")[0] in wire_classes(), f"{path.name}: its class is gone"
        assert type(load(release, path.stem)).__name__ == path.stem.split("-")[0]


@pytest.mark.parametrize("release", RELEASES)
def test_frozen_peer_messages_unpickle_with_their_fields(release: str) -> None:
    hello = load(release, "PeerHello")
    assert type(hello) is protocol.PeerHello
    assert (hello.version, hello.sender, hello.reply) == (1, A, True)
    assert isinstance(hello.address, ActorAddress)
    assert set(hello.peers) == {"node-b"}
    assert hello.peers["node-b"][0] == B
    assert isinstance(hello.peers["node-b"][1], ActorAddress)
    announced = Speaks.parse(hello.versions)
    assert announced == (None if release == "release1" else Speaks((1,), (1,)))
    assert load(release, "Introduce").hello == hello
    assert load(release, "PeerRemoved").removed == GONE

    status = load(release, "GossipStatus")
    assert (status.version, status.sender, status.format) == (1, A, 1)
    assert set(status.peers) == {"node-b"}
    assert status.used == {"register": USED_AT}
    assert (Speaks.parse(status.versions) or LEGACY) == Speaks((1,), (1,))

    entries = load(release, "GossipEntries")
    assert entries.sender == A
    assert entries.want == frozenset({"want"})
    assert entries.entries["gone-key"] == TOMBSTONE
    assert {k: decoded(p)[1] for k, p in entries.entries.items() if p} == VALUES
    assert decoded(entries.entries["counter"])[0] == {GONE: Performed(1_800_000_000_000)}
    assert entries.used == {"register": USED_AT}

    deltas = load(release, "DeltaPropagation")
    assert (deltas.sender, deltas.seq) == (A, 1)
    assert deltas.entries["gone-key"] == TOMBSTONE
    assert decoded(deltas.entries["counter"]) == ({GONE: Performed(1_800_000_000_000)}, 1)

    write = load(release, "PeerWrite")
    assert (write.request_id, write.key, decoded(write.payload)[1]) == ("req-1", "set", {"x", "y"})
    assert load(release, "PeerWriteAck").request_id == "req-1"
    assert (load(release, "PeerRead").request_id, load(release, "PeerRead").key) == ("req-2", "set")
    result = load(release, "PeerReadResult")
    assert (result.request_id, decoded(result.payload)[1]) == ("req-2", {"x", "y"})
    assert load(release, "PeerReadResult-none").payload is None


@pytest.mark.parametrize("release", RELEASES)
def test_frozen_digests_are_the_ones_this_tree_computes_in_format_1(release: str) -> None:
    keys = same_table()
    status, digests = load(release, "GossipStatus"), load(release, "GossipKeys")
    assert status.buckets == keys.buckets(1)
    assert digests.format == 1
    assert digests.buckets == frozenset(range(BUCKETS))
    assert digests.digests == keys.digests_in(range(BUCKETS), 1)


@pytest.mark.parametrize("release", RELEASES)
def test_frozen_process_messages_unpickle_with_their_fields(release: str) -> None:
    settings = {"node_name": "node-a", "gossip_interval": 0.2}
    start = load(release, "StartReplicator")
    assert (start.settings, start.token) == (settings, "token-1")
    started = load(release, "ReplicatorStarted")
    assert (started.node, started.settings, started.token, started.error) == (
        A,
        settings,
        "token-1",
        None,
    )
    assert load(release, "PartitionForTests").blocked == frozenset({"node-b"})
    assert load(release, "ProcessInfo") == protocol.ProcessInfo(4242, 4240)
    for name in ("Introduced", "IntroducerDone", "DescribeProcess"):
        assert dataclasses.is_dataclass(load(release, name))


NEWER_PEERS_ONLY = {"Heartbeat"}
"""Messages a node sends only to peers of a later release than the first: a Heartbeat goes only
to a peer whose statuses carry the directory's digest (an old peer gets a status every round)."""


@pytest.mark.subprocess
def test_the_first_release_reads_what_this_tree_sends(tmp_path: Path) -> None:
    """What an old node does during a rolling upgrade: unpickle this tree's messages (the
    fields added since are ignored) and decode their payloads, with the first release's code."""
    with tarfile.open(COMPAT / "thespian_dd-349b515.tar.xz") as archive:
        archive.extractall(tmp_path, filter="data")
    script = """
import pickle, sys
from pathlib import Path
import thespian_dd
from thespian_dd import codec
from thespian_dd._canonical import Limits
from thespian_dd._runtime.markers import split_envelope
assert thespian_dd.__file__.startswith(sys.argv[1]), thespian_dd.__file__
for path in sorted(Path(sys.argv[2]).glob("*.pickle")):
    if path.stem in sys.argv[3:]:
        continue
    message = pickle.loads(path.read_bytes())
    for payload in [*getattr(message, "entries", {}).values(), getattr(message, "payload", b"")]:
        if payload:
            codec.decode(split_envelope(payload, Limits())[1])
    print(path.stem, type(message).__name__, getattr(message, "version", "-"))
"""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            str(tmp_path),
            str(COMPAT / "protocol1" / "release2"),
            *NEWER_PEERS_ONLY,
        ],
        env={"PYTHONPATH": str(tmp_path), "PYTHONSAFEPATH": "1"},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    read = {line.split()[0] for line in done.stdout.splitlines()}
    sent = {p.stem for p in (COMPAT / "protocol1" / "release2").glob("*.pickle")}
    assert read == sent - NEWER_PEERS_ONLY
