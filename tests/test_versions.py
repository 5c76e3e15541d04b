"""Version negotiation (thespian_dd._runtime.versions) without processes; the key table's
digests and payloads per codec format; and a Replicator that meets a peer it cannot talk to."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from thespian.actors import ActorSystem

from thespian_dd import GCounter, GetStats, GetSuccess, ORSet, ReplicaId, Stats, Update, codec
from thespian_dd._canonical import Limits
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.markers import split_envelope
from thespian_dd._runtime.protocol import PROTOCOL_VERSION, PeerHello
from thespian_dd._runtime.versions import LEGACY, MINE, Speaks, Versions, common, format_of
from thespian_dd._testkit.harness import Node
from thespian_dd.messages import Get, GetStatus, Status
from thespian_dd.replicator import start

pytestmark = pytest.mark.timeout(60)

A = ReplicaId("a", 1)
ME = Speaks((1,), (1, 2))


def announce(protocols: tuple[int, ...], formats: tuple[int, ...]) -> dict[str, tuple[int, ...]]:
    return {"protocol": protocols, "format": formats}


def test_a_pair_uses_the_highest_protocol_and_format_both_speak() -> None:
    assert common(Speaks((1, 2), (1, 2, 3)), Speaks((1, 2, 5), (2, 3, 4))) == (2, 3)
    assert common(Speaks((1,), (1,)), Speaks((1,), (2,))) is None
    assert common(Speaks((1,), (1,)), Speaks((2,), (1,))) is None


def test_a_peer_that_announces_nothing_is_of_the_first_release() -> None:
    versions = Versions(ME)
    assert versions.heard("old", None) is None
    assert versions.speaks("old") == LEGACY
    assert (versions.protocol("old"), versions.format("old")) == (1, 1)
    assert "the first release" in versions.describe("old")


def test_a_peer_not_heard_yet_gets_the_lowest_versions_and_no_description() -> None:
    versions = Versions(ME)
    assert (versions.protocol("new"), versions.format("new")) == (1, 1)
    assert versions.can_talk("new")
    assert versions.describe("new") == ""


def test_a_peer_that_speaks_more_gets_the_highest_format_in_common() -> None:
    versions = Versions(ME)
    assert versions.heard("b", announce((1, 2), (1, 2, 3))) is None
    assert versions.format("b") == 2
    assert versions.describe("b") == "protocol 1/2, format 1/2/3 -> protocol 1, format 2"
    versions.heard("old", None)
    assert versions.formats(["b", "old"]) == {1, 2}


def test_a_peer_with_nothing_in_common_is_reported_once_until_it_changes() -> None:
    versions = Versions(ME)
    reason = versions.heard("far", announce((2,), (3,)))
    assert reason == "it speaks protocol 2, format 3; this node speaks protocol 1, format 1/2"
    assert not versions.can_talk("far")
    assert versions.incompatible == {"far": reason}
    assert versions.heard("far", announce((2,), (3,))) is None  # said once
    assert versions.describe("far").endswith("-> none in common")
    assert versions.heard("far", announce((1, 2), (2, 3))) is None  # upgraded: it talks again
    assert versions.can_talk("far")
    assert versions.format("far") == 2
    assert versions.incompatible == {}


@pytest.mark.parametrize(
    "announced",
    [
        "protocol 1",
        {"protocol": (1,)},
        {"protocol": (), "format": (1,)},
        {"protocol": [1], "format": (1,)},
        {"protocol": (1,), "format": (0,)},
        {"protocol": (True,), "format": (1,)},
        {"protocol": (1,), "format": ("1",)},
    ],
)
def test_a_malformed_announcement_is_refused_and_changes_nothing(announced: object) -> None:
    versions = Versions(ME)
    versions.heard("b", announce((1,), (1, 2)))
    with pytest.raises(ValueError, match=r"announce|versions"):
        versions.heard("b", announced)
    assert versions.format("b") == 2


def test_a_peer_it_cannot_talk_to_is_forgotten_once_silent_long_enough() -> None:
    now = [100.0]
    versions = Versions(ME, clock=lambda: now[0])
    versions.heard("far", announce((9,), (9,)))
    versions.heard("b", announce((1,), (1,)))
    now[0] += 30
    versions.forget_silent(60)
    assert set(versions.incompatible) == {"far"}
    now[0] += 31
    versions.forget_silent(60)
    assert versions.incompatible == {}
    assert versions.speaks("b") is not None  # a peer it talks to goes with the peer table


def test_forgetting_a_peer_forgets_what_it_spoke() -> None:
    versions = Versions(ME)
    versions.heard("far", announce((9,), (9,)))
    versions.forget("far")
    assert versions.can_talk("far")
    assert versions.speaks("far") is None


def test_a_peer_restarted_on_another_release_is_not_sent_what_its_old_incarnation_read() -> None:
    """Found in review: the pair was kept by node name.  b#1 spoke format 2; b restarts as b#2
    on the first release (a rollback) and is learned from a directory before it announces
    anything: it was sent format 2, refused it, and still acknowledged the write."""
    versions = Versions(ME)
    old, new = ReplicaId("b", 1), ReplicaId("b", 2)
    versions.heard("b", announce((1, 2), (1, 2)), old)
    assert versions.format("b") == 2
    versions.replaced(old)
    assert versions.format("b") == 1  # the safe guess until b#2 says more
    # A new incarnation that announced before its old one was seen replaced keeps what it said.
    versions.heard("b", announce((1, 2), (1, 2)), new)
    versions.replaced(old)
    assert versions.format("b") == 2


def test_this_node_announces_the_codec_formats_and_the_protocol_it_speaks() -> None:
    assert MINE.formats == codec.FORMAT_VERSIONS
    assert PROTOCOL_VERSION in MINE.protocols
    assert codec.FORMAT_VERSION in codec.FORMAT_VERSIONS
    assert Speaks.parse(MINE.announcement()) == MINE


def test_format_of_reads_the_version_byte_of_an_encoding() -> None:
    assert format_of(codec.encode(GCounter())) == codec.FORMAT_VERSION
    assert format_of(b"") is None
    assert format_of(b"XYZ\x01") is None


# -- the key table in every format the codec writes ----------------------------------------------

VALUE = ORSet[str]().add(A, "x").add(A, "y")


@pytest.mark.parametrize("version", codec.FORMAT_VERSIONS)
def test_a_payload_for_a_peer_is_in_the_format_asked(version: int) -> None:
    keys = KeyTable(lambda _key: None)
    keys.put("k", VALUE, codec.encode(VALUE))
    payload = keys.payload("k", version)
    assert payload is not None
    _, raw = split_envelope(payload, Limits())
    assert format_of(raw) == version
    assert codec.decode(raw) == VALUE


@pytest.mark.parametrize("version", codec.FORMAT_VERSIONS)
def test_digests_in_a_format_are_the_checksums_of_encodings_in_it(version: int) -> None:
    keys = KeyTable(lambda _key: None)
    keys.put("k", VALUE, codec.encode(VALUE))
    keys.put("lazy", GCounter().increment(A, 3))
    keys.delete("gone")
    assert dict(keys.digests(version)) == {
        "k": codec.digest(VALUE, version),
        "lazy": codec.digest(GCounter().increment(A, 3), version),
        "gone": keys.digests()["gone"],
    }
    assert set(keys.buckets(version)) == set(keys.buckets())


@pytest.mark.parametrize("version", codec.FORMAT_VERSIONS)
def test_a_restored_row_of_a_format_gives_its_digest_in_that_format_without_decoding(
    version: int,
) -> None:
    keys = KeyTable(lambda _key: None)
    keys.restore("k", codec.encode(VALUE, version), Limits())
    assert keys.digests(version)["k"] == codec.digest(VALUE, version)
    assert keys.undecoded() == 1
    # The store gets it in this node's format (a row of an older one is upgraded when written).
    envelope = keys.envelope("k")
    assert envelope is not None
    assert format_of(split_envelope(envelope, Limits())[1]) == codec.FORMAT_VERSION


def test_a_format_no_codec_writes_is_refused_by_the_key_table() -> None:
    keys = KeyTable(lambda _key: None)
    with pytest.raises(ValueError, match="format version"):
        keys.digests(max(codec.FORMAT_VERSIONS) + 1)
    keys.keep_formats([])  # this node's own format always stays
    assert keys.buckets() == {}


# -- a Replicator meets a peer it cannot talk to ---------------------------------------------------


@pytest.fixture
def node() -> Iterator[Node]:
    asys = ActorSystem("simpleSystemBase", transientUnique=True, logDefs=None)
    try:
        yield Node(asys, 0, start(asys))
    finally:
        asys.shutdown()


def test_a_peer_it_cannot_talk_to_is_logged_once_shown_and_left_out_and_the_node_serves(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    far = ReplicaId("far", 5)
    probe = node.probe()
    hello = PeerHello(
        PROTOCOL_VERSION, far, probe, {}, True, versions={"protocol": (1,), "format": (99,)}
    )
    with caplog.at_level(logging.ERROR, logger="thespian_dd"):
        node.asys.tell(node.replicator, hello)
        node.asys.tell(node.replicator, hello)
        stats = node.ask(GetStats())
    assert isinstance(stats, Stats)
    assert stats.peers == 0
    assert stats.incompatible_peers == (
        f"far: it speaks protocol 1, format 99; this node speaks {MINE}",
    )
    assert sum("cannot talk to peer far" in r.getMessage() for r in caplog.records) == 1
    status = node.ask(GetStatus())
    assert isinstance(status, Status)
    assert status.incompatible_peers == stats.incompatible_peers
    # It is answered with this node's hello, so that it can tell its operator too.
    answers = node.received(probe)
    assert [type(m) for m in answers] == [PeerHello, PeerHello]
    assert all(m.versions == MINE.announcement() for m in answers)
    # A peer's directory that names it does not bring it in.
    near = PeerHello(PROTOCOL_VERSION, ReplicaId("near", 6), node.probe(), {"far": (far, probe)})
    node.asys.tell(node.replicator, near)
    stats = node.ask(GetStats())
    assert isinstance(stats, Stats)
    assert stats.peers == 1
    node.ask(Update("c", GCounter(), lambda c, n: c.increment(n, 1)))
    got = node.ask(Get("c"))
    assert isinstance(got, GetSuccess)
    assert got.data.value == 1
