"""Format 2 (canonical CBOR, its layout in :mod:`thespian_dd._codec.format2`): bodies that are
well-formed CBOR but not a value's one spelling, of the wrong shape, or past the caps are refused
with a CodecError naming the problem; user values that need care keep their exact types; and
the tags cbor2 would decode itself are refused, not run."""

from __future__ import annotations

import enum
import gc
from collections import namedtuple
from typing import Any
from unittest.mock import patch

import cbor2
import pytest
from cbor2 import CBORTag
from crdt_table import ROWS, states_of
from hypothesis import given
from hypothesis import strategies as st
from test_codec import (  # values of every type, of a fake peer, concurrent ones; helpers
    CODEC_VALUES,
    assert_usable,
    decode_or_codec_error,
    with_valid_checksum,
)

from thespian_dd import (
    Flag,
    GCounter,
    GSet,
    LWWMap,
    LWWRegister,
    ORMap,
    ORSet,
    ReplicaId,
    ReplicatedData,
)
from thespian_dd._canonical import encode_tree
from thespian_dd._codec.format2_read import FOREIGN_TAGS
from thespian_dd.codec import CodecError, Limits, decode, encode
from thespian_dd.data import CausalContext

A, B = ReplicaId("a", 1), ReplicaId("b", 1)
AB = ["a", 1, "b", 1]
TREE = 21572


def _raw(body: bytes) -> bytes:
    return with_valid_checksum(body, 2)


def _value(replicas: list[Any], value: Any) -> bytes:
    """A format-2 encoding of ``[replicas, value]`` with a valid checksum."""
    return _raw(cbor2.dumps([replicas, value], canonical=True))


@pytest.mark.parametrize(
    ("replicas", "value", "message"),
    [
        # The replica list: sorted, each once, each used.
        (["b", 1, "a", 1], [0, 0, 1, 1, 1], "replicas are sorted"),
        (["a", 1, "a", 1], [0, 0, 1, 1, 1], "replicas are sorted"),
        (AB, [0, 0, 1], "every listed replica is used"),
        (["a", -1], [0, 0, 1], "invalid replica id"),
        (["", 1], [0, 0, 1], "invalid replica id"),
        (["a", True], [0, 0, 1], "invalid replica id"),
        # Types and codes.
        (["a", 1], [99, 0, 1], "unknown data type code 99"),
        ([], ["someone.Else", CBORTag(TREE, encode_tree((1,)))], "unknown data type"),
        ([], [4, 1], "Flag state is a bool"),
        ([], [2, {"x": 1}], "GSet state is {element: null}"),
        # GCounter: slots or units, each in its one form.
        (["a", 1], [0, 0, -1], "must be an int > 0"),
        (["a", 1], [0, 0, True], "must be an int > 0"),
        (["a", 1], [0, 1, 3], "replica index in range"),
        (AB, [0, 1, 3, 0, 1], "sorted by replica index"),
        (AB, [0, 0, 3, True, 1], "sorted by replica index"),
        (["a", 1], [0, [0, 3], []], "units 1..n are written as slots"),
        # Contexts.
        (["a", 1], [3, [0, [0, 5]], [], [], [], [], []], "its top alone"),
        (["a", 1], [3, [0, [0, 2, 2, 5]], [], [], [], [], []], "runs apart"),
        (["a", 1], [3, [0, [2, 1]], [], [], [], [], []], "ascending"),
        (["a", 1], [3, [0, 2], [0, 2], [], [], [], []], "floor is above what is seen"),
        (["a", 1], [3, [0, 0], [], [], [], [], []], "top is an int > 0"),
        # ORSet entries.
        (["a", 1], [3, [0, 1], [], ["x"], [0, 1], [2], []], "in the causal context"),
        (["a", 1], [3, [0, 2], [], ["x", "y"], [0, 2], [1, -1], []], "steps are ints >= 0"),
        (["a", 1], [3, [0, 2], [], ["x", "y"], [0, 2], [1, True], []], "steps are ints >= 0"),
        (["a", 1], [3, [0, 2], [], ["x"], [0, 1], [0], []], "counter is >= 1"),
        (["a", 1], [3, [0, 2], [], ["y", "x"], [0, 2], [1, 0], []], "in the order of their CBOR"),
        (
            ["a", 1],
            [7, [0, 1], [], [2, 1], [0, 2], [1, 0], [[4, True], [4, True]], [], {}],
            "order",
        ),
        (["a", 1], [3, [0, 2], [], ["x", "x"], [0, 2], [1, 1], []], "elements are distinct"),
        (["a", 1], [3, [0, 2], [], ["x", "y"], [0, 1], [1, 1], []], "cover every entry"),
        (["a", 1], [3, [0, 2], [], ["x"], [0, 2], [1], []], "within the entries"),
        (["a", 1], [3, [0, 2], [], ["x"], [0, 1], [1, 1], []], "one counter step per entry"),
        (["a", 1], [3, [0, 2], [], ["x"], [0, 1], [2], [0, 0, 1]], "sorted, once each"),
        (["a", 1], [3, [0, 2], [], ["x"], [0, 1], [1], [0, 0, 3]], "in the causal context"),
        (["a", 1], [3, [0, 1], [], ["x"], [0, 1], [1]], "an ORSet state is"),
        # User values: CBOR scalars, or a tagged tree that has no scalar spelling.
        (["a", 1], [3, [0, 1], [], [["x"]], [0, 1], [1], []], "CBOR scalar or a tagged tree"),
        (["a", 1], [3, [0, 1], [], [CBORTag(7, b"")], [0, 1], [1], []], "tagged tree"),
        (
            ["a", 1],
            [3, [0, 1], [], [CBORTag(TREE, encode_tree(5))], [0, 1], [1], []],
            "a value with a CBOR spelling is not a tree",
        ),
        (
            ["a", 1],
            [3, [0, 1], [], [CBORTag(TREE, b"i\x02\x00\x05")], [0, 1], [1], []],
            "shortest form",
        ),
        # Registers.
        (["a", 1], [5, "v", "soon", 0], "timestamp is an int"),
        (["a", 1], [5, "v", 1, 1], "replica index in range"),
        # Maps.
        (
            ["a", 1],
            [7, [0, 2], [], ["k"], [0, 1], [1], [[0, 0, 1]], [0, 0, 2, [4, True]], {}],
            "share one type",
        ),
        (["a", 1], [7, [0, 1], [], ["k"], [0, 1], [1], [[4, True]], [], []], "marks are a map"),
        (["a", 1], [7, [0, 1], [], ["k"], [0, 1], [1], [], [], {}], "one value per key"),
        (
            ["a", 1],
            [9, [0, 1], [], ["k"], [0, 1], [1], [[4, True]], [], {}],
            "value is a PNCounter",
        ),
    ],
)
def test_structurally_invalid_states_are_refused_naming_the_problem(
    replicas: list[Any], value: Any, message: str
) -> None:
    with pytest.raises(CodecError, match=message):
        decode(_value(replicas, value))


def _orset_body() -> bytes:
    return encode(ORSet().add_all(A, ["x", "y"]).reset_delta())[4:-16]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"\x18\x01", "one spelling"),  # 1 in two bytes
        (_orset_body() + b"\x00", "trailing bytes"),
        (b"\x9f\x80\x82\x04\xf5\xff", "malformed CBOR"),  # an indefinite-length array
        (cbor2.dumps([[], [4, True]]).replace(b"\xf5", b"\xf9\x3c\x00"), "a bool"),  # 1.0
        # A GSet's elements are a map's keys, in cbor2's canonical order and each once.
        (b"\x82\x80\x82\x02\xa2\x61y\xf6\x61x\xf6", "one spelling"),
        (b"\x82\x80\x82\x02\xa2\x61x\xf6\x61x\xf6", "one spelling"),
        # 1.5 as a double instead of a half; 5 as a bignum.
        (b"\x82\x80\x82\x02\xa1\xfb\x3f\xf8\x00\x00\x00\x00\x00\x00\xf6", "one spelling"),
        (b"\x82\x80\x82\x02\xa1\xc2\x41\x05\xf6", "one spelling"),
    ],
)
def test_other_spellings_of_the_cbor_are_refused(body: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(_raw(body))


def test_the_gset_spellings_above_are_one_away_from_the_real_one() -> None:
    # Guards the test above: the same bodies, spelled right, decode.
    assert decode(_raw(b"\x82\x80\x82\x02\xa2\x61x\xf6\x61y\xf6")) == GSet({"x", "y"})
    assert decode(_raw(b"\x82\x80\x82\x02\xa1\xf9\x3e\x00\xf6")) == GSet({1.5})
    assert decode(_raw(b"\x82\x80\x82\x02\xa1\x05\xf6")) == GSet({5})


@pytest.mark.parametrize("tag", [t for t in FOREIGN_TAGS if t not in {28, 29}])
def test_tags_that_cbor2_decodes_itself_are_refused(tag: int) -> None:
    for payload in (0, "2020-01-01T00:00:00Z", b"x", [1, 2], "a.*"):
        element = CBORTag(tag, payload)
        raw = _value(["a", 1], [3, [0, 1], [], [element], [0, 1], [1], []])
        assert isinstance(decode_or_codec_error(raw), CodecError)


def test_shared_references_are_refused() -> None:
    # Tag 28 marks a value as shareable, 29 refers to it: a way to build cycles.
    shared = b"\x82\x81\xd8\x1c\x80\x81\xd8\x1d\x00"
    with pytest.raises(CodecError):
        decode(_raw(shared))


def test_every_tag_cbor2_decodes_itself_is_known_to_the_codec() -> None:
    # If an upgrade of cbor2 decodes a new tag itself, the codec must refuse it too.
    own = set()
    for tag in range(65536):
        for payload in (0, "x", [0]):
            try:
                decoded = cbor2.loads(cbor2.dumps(CBORTag(tag, payload)))
            except Exception:  # noqa: BLE001 - a tag it decodes, refusing this payload
                own.add(tag)
                break
            if not (type(decoded) is CBORTag and decoded.tag == tag):
                own.add(tag)
                break
    assert own <= {2, 3, *FOREIGN_TAGS}


def test_caps_apply_to_format_2() -> None:
    # 20,000 nested arrays: refused before any recursion of the codec's own.
    with pytest.raises(CodecError, match="max_depth"):
        decode(_raw(b"\x82\x80" + b"\x81" * 20_000 + b"\x00"))
    # (The caps every format has: test_codec.)  The items of values in tagged trees count too.
    big = encode(GSet({frozenset(range(100)), frozenset(range(100, 200))}))
    with pytest.raises(CodecError, match="max_items"):
        decode(big, Limits(max_items=150))


class Colour(enum.IntEnum):
    RED = 1


class Name(str):
    __slots__ = ()


Pair = namedtuple("Pair", "x y")  # noqa: PYI024 - a namedtuple is what users have


@pytest.mark.parametrize(
    "element",
    [
        Colour.RED,  # an int subclass: not the int 1
        Name("n"),  # a str subclass: not the str "n"
        Pair(1, 2),  # a tuple subclass: not the tuple (1, 2)
        "\ud800 lone surrogate",  # no UTF-8 spelling: a tree
        2**70,
        -(2**70),
        1.5,
        -0.0,
        b"\x00",
        A,
        ("t", frozenset({1, "x"})),
    ],
)
def test_user_values_keep_their_exact_type(element: Any) -> None:
    s = ORSet().add(A, element).reset_delta()
    back = decode(encode(s))
    assert back == s
    (got,) = back.value
    assert type(got) is type(element)
    assert repr(got) == repr(element)
    assert type(_register_value(LWWRegister(element, 1, A))) is type(element)


def test_values_python_calls_equal_stay_apart() -> None:
    for a, b in [(1, True), (1, 1.0), (0.0, -0.0), ("1", b"1"), ((1,), [1])]:
        left, right = LWWRegister(a, 1, A), LWWRegister(b, 1, A)
        assert encode(left) != encode(right)
        assert type(_register_value(left)) is type(a)
        assert type(_register_value(right)) is type(b)


def _register_value(register: LWWRegister[Any]) -> Any:
    back = decode(encode(register))
    assert isinstance(back, LWWRegister)
    return back.val


def test_replicas_met_below_the_top_are_listed_too() -> None:
    # A map's context names a; the value under "k" holds units of b (merged in from elsewhere).
    m = ORMap().update(A, "k", GCounter(), lambda c: c.merge(GCounter().increment(B, 2)))
    raw = encode(m.reset_delta())
    assert decode(raw) == m.reset_delta()
    assert cbor2.loads(raw[4:-16])[0] == AB


def test_a_big_orset_is_small_and_each_element_is_written_once() -> None:
    s = ORSet().add_all(A, range(10_000)).remove_all(A, range(0, 10_000, 10)).reset_delta()
    raw = encode(s)
    assert decode(raw) == s
    # Each element costs its own CBOR bytes and one byte for its dot.
    assert len(raw) < len(cbor2.dumps(sorted(s.value))) + len(s.value) + 64


@given(data=st.data())
def test_an_orset_is_written_from_its_replicas_dicts_as_element_by_element(
    data: st.DataObject,
) -> None:
    row = next(row for row in ROWS if row.name == "ORSet")
    s = data.draw(states_of(row, 1))[0].reset_delta()
    written = encode(s)
    with patch.object(ORSet, "_one_dot_each", return_value=None):  # element by element
        assert encode(s) == written
    assert decode(written) == s


# -- fuzzed: well-formed CBOR of the wrong shape ---------------------------------------------

_LEAVES = st.one_of(
    st.integers(-2, 4),
    st.booleans(),
    st.none(),
    st.sampled_from(["x", "y", "a.b", "samples.MaxRegister"]),
    st.binary(max_size=2),
    st.just(CBORTag(TREE, encode_tree((1, 2)))),
)
_TREES = st.recursive(
    _LEAVES,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.sampled_from(["x", "y", 1]), inner, max_size=2),
    ),
    max_leaves=20,
)


@pytest.mark.timeout(300)
@given(
    replicas=st.sampled_from([[], ["a", 1], AB]),
    code=st.integers(0, 10),
    parts=st.lists(_TREES, max_size=8),
)
def test_well_formed_cbor_of_the_wrong_shape_is_refused_or_is_its_own_encoding(
    replicas: list[Any], code: int, parts: list[Any]
) -> None:
    raw = _value(replicas, [code, *parts])
    result = decode_or_codec_error(raw, Limits(max_items=10_000, max_depth=32))
    if not isinstance(result, CodecError):
        assert_usable(result)
        assert encode(result) == raw, result


def _copy(tree: Any) -> Any:
    if type(tree) is list:
        return [_copy(x) for x in tree]
    if type(tree) is dict:
        return {k: _copy(v) for k, v in tree.items()}
    return tree  # scalars, and tags (immutable)


def _paths(tree: Any, path: tuple[int, ...] = ()) -> list[tuple[int, ...]]:
    """The path of every node of ``tree`` inside a list (the ones a mutation can change)."""
    if type(tree) is not list:
        return []
    return [p for i, x in enumerate(tree) for p in [(*path, i), *_paths(x, (*path, i))]]


@pytest.mark.timeout(300)
@given(value=st.sampled_from(CODEC_VALUES), data=st.data())
def test_a_real_value_mutated_as_a_tree_is_refused_or_is_its_own_encoding(
    value: Any, data: st.DataObject
) -> None:
    # Mutations of the decoded CBOR, written back canonically: past the CBOR checks, straight at
    # the structural ones (an index, a step, a count, a code one off; an item gone or swapped).
    tree = _copy(cbor2.loads(encode(value)[4:-16]))
    for _ in range(data.draw(st.integers(1, 2))):
        path = data.draw(st.sampled_from(_paths(tree)))
        parent = tree
        for i in path[:-1]:
            parent = parent[i]
        at = path[-1]
        how = data.draw(st.sampled_from(["nudge", "replace", "delete", "insert", "swap"]))
        if how == "nudge" and type(parent[at]) is int:
            parent[at] += data.draw(st.sampled_from([-2, -1, 1, 2]))
        elif how in {"nudge", "replace"}:
            parent[at] = data.draw(_LEAVES)
        elif how == "delete":
            del parent[at]
        elif how == "insert":
            parent.insert(at, data.draw(_LEAVES))
        else:
            other = data.draw(st.integers(0, len(parent) - 1))
            parent[at], parent[other] = parent[other], parent[at]
    raw = _raw(cbor2.dumps(tree, canonical=True))
    result = decode_or_codec_error(raw, Limits(max_items=10_000, max_depth=32))
    if not isinstance(result, CodecError):
        assert_usable(result)
        assert encode(result) == raw, result


def test_every_type_decodes_from_its_own_format_2_bytes() -> None:
    values: list[ReplicatedData] = [
        GCounter(),
        Flag(),
        GSet(),
        ORSet(),
        ORMap(),
        LWWMap(),
        LWWMap().put(A, "k", {"doc": [1, 2]}, lambda current, value: 7),
    ]
    for value in values:
        assert decode(encode(value)) == value


def test_a_large_decode_leaves_the_garbage_collector_as_it_found_it() -> None:
    # The collector is paused while a large value is decoded: it must come back on, also after
    # a refusal, and stay off for a caller that had turned it off.
    raw = encode(ORSet().add_all(A, range(50_000)).reset_delta())
    assert len(raw) > 64 * 1024
    damaged = _raw(raw[4:-17] + b"\x00")
    assert gc.isenabled()
    assert len(decode(raw).value) == 50_000
    assert gc.isenabled()
    with pytest.raises(CodecError):
        decode(damaged)
    assert gc.isenabled()
    gc.disable()
    try:
        decode(raw)
        assert not gc.isenabled()
    finally:
        gc.enable()


def test_rows_sharing_a_first_dot_are_written_in_one_order_and_read_back() -> None:
    # No replica makes such states any more, but a value made before may hold them (format 1
    # read them): format 2 must write them in one order, and read what it wrote.
    context = CausalContext.of_vv({A: 2})
    one, two = frozenset({(A, 1)}), frozenset({(A, 2)})
    left = ORSet({"y": one, "x": one, "z": two}, context)
    right = ORSet({"z": two, "x": one, "y": one}, context)
    assert encode(left) == encode(right)
    assert decode(encode(left)) == left
    counter = GCounter().increment(A)
    m = ORMap({"k": {(A, 1): counter}, "j": {(A, 1): counter}}, context)
    assert decode(encode(m)) == m
    assert decode(encode(m, version=1)) == m


def test_a_node_name_with_no_utf8_spelling_is_kept() -> None:
    # Python decodes undecodable command-line bytes to lone surrogates; format 1 kept such
    # names, so format 2 does (as a tagged tree, like any value CBOR cannot spell).
    odd = ReplicaId("node-\udcff", 1)
    values: list[ReplicatedData] = [
        GCounter().increment(odd, 2),
        ORSet().add(odd, "x").add(A, "y").reset_delta(),
        LWWRegister("v", 1, odd),
    ]
    for value in values:
        assert decode(encode(value)) == value
