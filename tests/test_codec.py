"""The codec's public face (:mod:`thespian_dd.codec`), in every format it reads: it refuses every
damaged or hostile input with CodecError and never returns garbage (truncated, flipped, random,
mutated and spliced bytes, bodies mutated under a valid checksum, input past its caps), and
equal states have equal bytes and digests in every process.

What each format refuses of well-formed bodies of the wrong shape is tested in the file named
for it: test_format1.py, test_format2.py."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from typing import Any

import pytest
from crdt_table import ROWS, states_of
from fuzzing import ROW_VALUES, mutations, sample_values
from hypothesis import given
from hypothesis import strategies as st
from test_compat_format import _reset, format1_values

from thespian_dd import (
    GCounter,
    LWWMap,
    LWWRegister,
    ORMap,
    ORSet,
    ReplicaId,
    ReplicatedData,
)
from thespian_dd.codec import (
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    CodecError,
    Limits,
    decode,
    digest,
    encode,
)

A, B = ReplicaId("a", 1), ReplicaId("b", 1)


@dataclass(frozen=True)
class Point:
    """A user value that is not plain data: it travels as a dill pickle."""

    x: int
    y: int


def _big_set(n: int) -> ORSet:
    return ORSet().add_all(A, range(n)).reset_delta()


def test_user_objects_round_trip_through_dill() -> None:
    s = ORSet().add(A, Point(1, 2)).add(A, lambda_free := (1, "two", b"3", None, 4.5))
    assert decode(encode(s)).value == {Point(1, 2), lambda_free}


def test_encoding_is_the_same_whatever_order_a_state_was_built_in() -> None:
    left = ORSet().add(A, "x").add(B, "y")
    right = ORSet().add(B, "y").merge(ORSet().add(A, "x"))
    assert left.reset_delta() == right
    assert encode(left) == encode(right)


def test_unknown_format_version_is_refused() -> None:
    raw = bytearray(encode(GCounter().increment(A, 3)))
    raw[3] = FORMAT_VERSION + 1
    with pytest.raises(CodecError, match=f"unknown format version {FORMAT_VERSION + 1}"):
        decode(bytes(raw))


def test_a_foreign_blob_is_refused() -> None:
    with pytest.raises(CodecError, match="bad magic"):
        decode(b"\x80\x04" + b"\x00" * 40)
    with pytest.raises(CodecError, match="expected bytes"):
        decode("TDD")  # type: ignore[arg-type]


@given(data=st.data())
def test_every_truncation_is_refused(data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(ROWS))
    (state,) = data.draw(states_of(row, 1))
    raw = encode(state)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(CodecError):
        decode(raw[:cut])


@given(data=st.data())
def test_every_flipped_byte_is_refused(data: st.DataObject) -> None:
    row = data.draw(st.sampled_from(ROWS))
    (state,) = data.draw(states_of(row, 1))
    raw = bytearray(encode(state))
    at = data.draw(st.integers(0, len(raw) - 1))
    raw[at] ^= data.draw(st.integers(1, 255))
    with pytest.raises(CodecError):
        decode(bytes(raw))


def with_valid_checksum(body: bytes, version: int) -> bytes:
    """A well-formed envelope of format ``version`` around an arbitrary body: only the structure
    checks stand (test_format1 and test_format2 use it too)."""
    head = b"TDD" + bytes((version,)) + body
    return head + hashlib.blake2b(head, digest_size=16).digest()


# -- fuzzed: damaged bytes and mutated bodies, in every format ------------------------------------

CODEC_VALUES = [
    *ROW_VALUES.values(),
    *sample_values().values(),
    # Concurrent dots, marks, a registered type; not the ORSet holding a pickle, which may
    # still load when damaged (a pickle is canonical only as far as pickle is).
    *(_reset(v) for name, v in format1_values().items() if name != "orset"),
]


def decode_or_codec_error(raw: bytes, limits: Limits | None = None) -> Any:
    """decode(raw); only CodecError may come out of it (returned, not raised)."""
    try:
        return decode(raw, limits)
    except CodecError as e:
        return e


@pytest.mark.timeout(300)
@pytest.mark.parametrize("version", FORMAT_VERSIONS)
@given(
    value=st.sampled_from(CODEC_VALUES),
    data=st.data(),
    how=st.sampled_from(["mutated", "random", "spliced"]),
)
def test_decoding_damaged_bytes_raises_codec_error_only(
    version: int, value: Any, data: st.DataObject, how: str
) -> None:
    raw = encode(value, version)
    if how == "mutated":
        damaged = data.draw(mutations(raw))
    elif how == "random":
        damaged = data.draw(st.binary(max_size=200))
    else:  # the head of one value and the tail of another
        other = encode(data.draw(st.sampled_from(CODEC_VALUES)), version)
        cut = data.draw(st.integers(0, len(raw)))
        damaged = raw[:cut] + other[data.draw(st.integers(0, len(other))) :]
    result = decode_or_codec_error(damaged)
    if damaged in {encode(v, version) for v in CODEC_VALUES}:
        assert not isinstance(result, CodecError)
        assert encode(result, version) == damaged  # a real encoding, spliced back together
    else:
        assert isinstance(result, CodecError), (damaged, result)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("version", FORMAT_VERSIONS)
@given(value=st.sampled_from(CODEC_VALUES), data=st.data())
def test_a_mutated_body_with_a_valid_checksum_decodes_to_its_own_encoding_or_is_refused(
    version: int, value: Any, data: st.DataObject
) -> None:
    # With the checksum out of the way only the structural checks stand between a corrupted body
    # and the Replicator: they must raise CodecError, or give a value that is what the bytes say.
    body = encode(value, version)[4:-16]
    damaged = with_valid_checksum(data.draw(mutations(body)), version)
    limits = Limits(max_items=10_000, max_depth=32)
    result = decode_or_codec_error(damaged, limits)
    if not isinstance(result, CodecError):
        assert_usable(result)
        # Bytes that decode are the one encoding of what they decode to: equal values have
        # equal bytes (digests compare them), so no second spelling may be accepted.
        assert encode(result, version) == damaged, result


def assert_usable(value: Any) -> None:
    """A decoded value is a sound state of its type: it has a value, merges with itself, and
    encodes to bytes that decode to it again."""
    assert isinstance(value, ReplicatedData)
    value.value  # noqa: B018 - computing it must not raise
    assert value.merge(value) == value
    for version in FORMAT_VERSIONS:
        assert decode(encode(value, version)) == value


@pytest.mark.parametrize("version", FORMAT_VERSIONS)
def test_caps_apply_to_what_a_decode_produces(version: int) -> None:
    raw = encode(_big_set(1000), version)
    assert len(decode(raw, Limits(max_items=5000)).value) == 1000
    with pytest.raises(CodecError, match="max_items"):
        decode(raw, Limits(max_items=500))
    with pytest.raises(CodecError, match="max_bytes"):
        decode(raw, Limits(max_bytes=100))


@pytest.mark.parametrize("version", FORMAT_VERSIONS)
def test_nested_maps_count_toward_the_depth_cap(version: int) -> None:
    inner = ORMap().update(A, "k", GCounter(), lambda c: c.increment(A))
    outer = ORMap().update(A, "m", ORMap(), lambda m: inner)
    assert decode(encode(outer, version), Limits(max_depth=16)) == outer.reset_delta()
    with pytest.raises(CodecError, match="max_depth"):
        decode(encode(outer, version), Limits(max_depth=5))


def test_far_future_lww_timestamps_from_peers_are_refused() -> None:
    now = 1_000_000_000
    register = LWWRegister("v", now + 10 * 60 * 1000, A)
    raw = encode(register)
    assert decode(raw) == register  # no clock given: stored data is not judged
    with pytest.raises(CodecError, match="ahead of this node's clock"):
        decode(raw, Limits(now_ms=now, max_clock_skew_ms=5 * 60 * 1000))
    in_a_map = encode(LWWMap().put(A, "k", "v", lambda current, value: now + 10 * 60 * 1000))
    with pytest.raises(CodecError, match="ahead of this node's clock"):
        decode(in_a_map, Limits(now_ms=now))


def test_a_clock_far_ahead_is_refused_when_writing() -> None:
    with pytest.raises(ValueError, match="max_clock_skew_ms"):
        LWWRegister.create(A, "v", lambda current, value: 2**62)


def test_digest_ignores_the_pending_delta() -> None:
    counter = GCounter().increment(A, 2)
    assert counter.delta is not None
    assert digest(counter) == digest(counter.reset_delta())


DIGEST_PROGRAM = textwrap.dedent(
    """
    from thespian_dd import *
    from thespian_dd.codec import digest
    a, b = ReplicaId("a", 1), ReplicaId("b", 7)
    values = [
        ORSet().add_all(a, [f"e{i}" for i in range(200)] + [(1, "t"), frozenset({"f", 2})]),
        GSet().add(a, "x").add(a, "y").add(a, frozenset({"p", "q"})),
        ORMap().update(a, "m", ORSet(), lambda s: s.add_all(a, "abcdef"))
              .update(b, ("tuple", 1), GCounter(), lambda c: c.increment(b, 9)),
        PNCounterMap().increment(a, "x", 3).decrement(b, "y", 4),
        LWWMap().put(a, "k", {"nested": {"s", "e", "t"}}, lambda c, v: 42),
        ORMultiMap().put(a, "k", ["v1", "v2", "v3"]).add_binding(b, "j", frozenset({"x", "y"})),
        MVRegister().assign(a, "v").merge(MVRegister().assign(b, "w")),
    ]
    print(",".join(digest(v).hex() for v in values))
    """
)


@pytest.mark.subprocess
def test_digests_agree_across_processes_with_different_hash_seeds() -> None:
    outputs = set()
    for seed in ("1", "2", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        result = subprocess.run(
            [sys.executable, "-c", DIGEST_PROGRAM],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        outputs.add(result.stdout.strip())
    assert len(outputs) == 1
    assert len(outputs.pop().split(",")) == 7


@pytest.mark.subprocess
def test_set_order_really_differs_between_those_seeds() -> None:
    # Guards the test above: if iteration order were the same anyway, it would prove nothing.
    program = 'print(list({"e%d" % i for i in range(50)}))'
    orders = {
        subprocess.run(
            [sys.executable, "-c", program],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(orders) == 2
