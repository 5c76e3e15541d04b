"""Pruning markers: their merge converges (a join), and the envelope that carries them with a
value round-trips and refuses malformed bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from thespian_dd import GCounter, ReplicaId
from thespian_dd._canonical import CodecError, Limits, encode_tree
from thespian_dd._runtime.markers import (
    Initialized,
    Marker,
    Performed,
    envelope_digest,
    join_envelope,
    merge_markers,
    only_performed,
    split_envelope,
)
from thespian_dd.codec import encode

NODES = ["a", "b", "c"]
replicas = st.builds(ReplicaId, st.sampled_from(NODES), st.integers(1, 3))
markers_of = st.one_of(
    st.builds(Initialized, replicas, st.frozensets(st.sampled_from(NODES))),
    st.builds(Performed, st.integers(0, 10)),
)
marker_maps = st.dictionaries(replicas, markers_of, max_size=4)


@given(marker_maps, marker_maps, marker_maps)
def test_merging_markers_is_a_join(
    a: dict[ReplicaId, Marker], b: dict[ReplicaId, Marker], c: dict[ReplicaId, Marker]
) -> None:
    assert merge_markers(a, b) == merge_markers(b, a)
    assert merge_markers(merge_markers(a, b), c) == merge_markers(a, merge_markers(b, c))
    assert merge_markers(a, a) == a


def test_performed_wins_and_seen_sets_pool() -> None:
    r, owner = ReplicaId("gone", 1), ReplicaId("a", 1)
    one, two = Initialized(owner, frozenset({"a"})), Initialized(owner, frozenset({"b"}))
    assert merge_markers({r: one}, {r: two}) == {r: Initialized(owner, frozenset({"a", "b"}))}
    assert merge_markers({r: one}, {r: Performed(5)}) == {r: Performed(5)}
    assert merge_markers({r: Performed(9)}, {r: Performed(5)}) == {r: Performed(9)}
    assert only_performed({r: one, owner: Performed(1)}) == {owner: Performed(1)}


@given(marker_maps)
def test_the_envelope_round_trips(markers: dict[ReplicaId, Marker]) -> None:
    raw = encode(GCounter().increment(ReplicaId("a", 1), 3))
    envelope = join_envelope(raw, markers)
    assert split_envelope(envelope, Limits()) == (markers, raw)
    if not markers:
        assert envelope == raw  # a key without markers travels and is stored as before
    else:
        assert envelope_digest(raw[-16:], markers) != raw[-16:]


def test_a_truncated_envelope_is_refused() -> None:
    raw = encode(GCounter())
    envelope = join_envelope(raw, {ReplicaId("gone", 1): Performed(7)})
    markers_end = len(envelope) - len(raw)
    for cut in (5, 9, markers_end - 1):  # inside the length, the markers
        with pytest.raises(CodecError):
            split_envelope(envelope[:cut], Limits())


def test_a_malformed_marker_is_refused() -> None:
    head = encode_tree([["not a replica", 7]])
    envelope = b"TDE\x01" + len(head).to_bytes(4, "big") + head + encode(GCounter())
    with pytest.raises(CodecError, match="not a ReplicaId"):
        split_envelope(envelope, Limits())
