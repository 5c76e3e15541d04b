"""Format 1 (the canonical tree of ``[type name, state]``, :mod:`thespian_dd._codec.format1`):
well-formed trees of the wrong shape, other spellings of a tree, and nesting past the cap are
refused with a CodecError naming the problem.  Its frozen bytes, still read and written, are
tested in test_compat_format.py; damaged bytes of every format in test_codec.py."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_codec import assert_usable, decode_or_codec_error, with_valid_checksum

from thespian_dd import ReplicaId
from thespian_dd._canonical import decode_tree, encode_tree
from thespian_dd.codec import CodecError, Limits, decode, encode

A, B = ReplicaId("a", 1), ReplicaId("b", 1)


@pytest.mark.parametrize(
    ("tree", "message"),
    [
        (["NoSuchType", {}], "unknown data type"),
        (["GCounter", {"a": 1}], "keyed by ReplicaId"),
        (["GCounter", {A: -1}], "must be an int > 0"),
        (["GCounter", {A: True}], "must be an int > 0"),
        (["Flag", 1], "Flag state is a bool"),
        (["ORSet", [[[A], [[0, [0, 1]]], []], {"x": [0, 2]}]], "in the causal context"),
        (["ORSet", [[[A], [[5, [0, 1]]], []], {}]], "replica index in range"),
        (["ORSet", [[[A], [[0, [1, 0]]], []], {}]], "ascending"),
        (["ORSet", [[[A], [[0, [0, 1]]], []], {"x": []}]], "holds a dot"),
        (["ORSet", [[[A], [[0, [0, 1]]], []], {"x": [0]}]], "dots are"),
        # Every state has one spelling (its digest is that of its bytes): no other is accepted.
        (["ORSet", [[[A], [[0, [0, 2, 2, 5]]], []], {}]], "runs apart"),
        (["ORSet", [[[A], [[0, [0, 2, 3, 3]]], []], {}]], "runs apart"),
        (["ORSet", [[[A], [[0, [0, 2]]], [0, 2]], {}]], "floor is above what is seen"),
        (["ORSet", [[[A], [[0, [0, 2]]], []], {"x": [0, 1, 0, 1]}]], "once each"),
        (["ORSet", [[[A, B], [[0, [0, 2]]], []], {}]], "every listed replica is used"),
        (["ORSet", [[[B, A], [[0, [0, 1]], [1, [0, 1]]], []], {}]], "sorted list of distinct"),
        (["ORSet", [[[A, B], [[1, [0, 1]], [0, [0, 2]]], []], {}]], "sorted by replica"),
        (["GCounter", [[A], [[0, [0, 3]]], []]], "written as slots"),
        (["LWWRegister", ["v", "soon", A]], "timestamp is an int"),
        (["ORMap", [[[A], [[0, [0, 1]]], []], {}, {"k": [[0, 1, 5]]}]], "type name, state"),
        (["ORMap", [[[A], [[0, [0, 1]]], []], [], {}]], "marks are a dict"),
        (
            [
                "ORMap",
                [
                    [[A], [[0, [0, 2]]], []],
                    {},
                    {"k": [[0, 1, ["GCounter", {}]], [0, 2, ["Flag", True]]]},
                ],
            ],
            "share one type",
        ),
        (
            ["PNCounterMap", [[[A], [[0, [0, 1]]], []], {}, {"k": [[0, 1, ["Flag", True]]]}]],
            "value is a PNCounter",
        ),
    ],
)
def test_structurally_invalid_states_are_refused(tree: object, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(with_valid_checksum(encode_tree(tree), 1))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"i\x02\x00\x05", "integer is not in its shortest form"),  # 5 in two bytes
        (b"s\x81\x00", "shortest form"),  # a length of 1 in two bytes
        (b"z\x02i\x01\x02i\x01\x01", "out of order"),  # {2, 1}
        (b"z\x02i\x01\x01i\x01\x01", "repeated"),  # {1, 1}
        (b"d\x02s\x01bi\x01\x01s\x01ai\x01\x02", "out of order"),  # {"b": 1, "a": 2}
    ],
)
def test_trees_have_one_spelling(body: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_tree(body, Limits())


@pytest.mark.timeout(300)
@given(
    tree=st.recursive(
        st.one_of(
            st.none(), st.booleans(), st.integers(), st.text(max_size=5), st.binary(max_size=5)
        ),
        lambda inner: st.one_of(
            st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=3), inner, max_size=3)
        ),
        max_leaves=10,
    ),
    name=st.sampled_from(["GCounter", "ORSet", "ORMap", "LWWMap", "LWWRegister", "Flag", "X"]),
)
def test_well_formed_trees_of_the_wrong_shape_are_refused(tree: Any, name: str) -> None:
    raw = with_valid_checksum(encode_tree([name, tree]), 1)
    result = decode_or_codec_error(raw)
    if not isinstance(result, CodecError):
        assert type(result).__name__ == name
        assert_usable(result)
        assert encode(result, version=1) == raw, result


def test_deep_nesting_is_refused_not_a_crash() -> None:
    # A hostile peer does not need our encoder: 20,000 nested lists in raw bytes.
    body = b"l\x01" * 20_000 + b"N"
    with pytest.raises(CodecError, match="max_depth"):
        decode(with_valid_checksum(b"l\x02s\x04GSet" + body, 1))
