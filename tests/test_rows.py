"""A row's seal and checks (:mod:`thespian_dd._runtime.rows`): what a load checks each row
against is what a write sealed it with, and a chunk's check loads the good rows and refuses each
bad one with its reason.  Rows mutated at random, or wrongly signed, through a store:
``tests/test_fuzz_rows.py``."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from thespian_dd import codec
from thespian_dd._runtime.rows import (
    BAD_CHECKSUM,
    BAD_MAC,
    DELETED,
    NOT_SIGNED,
    SIGNED,
    RowSeal,
    checksum,
    key_id,
    mac,
    parts,
)

TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=12)
ROWS = st.lists(
    st.tuples(
        TEXT,
        st.sampled_from(["GCounter", "ORSet", "deleted"]),
        st.integers(0, 300),
        st.binary(max_size=40),
        st.sampled_from(["", "n#1", "n#1 m#2"]),
    ),
    min_size=1,
    max_size=8,
)


@given(node=TEXT, rows=ROWS, signing_key=st.one_of(st.none(), st.binary(min_size=1, max_size=40)))
def test_a_row_seal_is_the_checksum_or_mac_of_the_rows_parts(
    node: str, rows: list[tuple[str, str, int, bytes, str]], signing_key: bytes | None
) -> None:
    """What a load checks each row against (made once per node, the parts its rows share
    remembered) is exactly what a write seals it with."""
    seal = RowSeal(node, signing_key)
    for row in rows:
        columns = parts(node, *row)
        due = checksum(columns) if signing_key is None else mac(signing_key, columns)
        assert seal(*row) == due


def test_a_row_seal_stays_right_past_the_kinds_and_replica_lists_it_remembers() -> None:
    seal = RowSeal("n", None)
    for i in range(1500):  # a tampered store: a data type and replica list per row
        row = (f"k{i}", f"Type{i}", 1, b"payload", f"n#{i}")
        assert seal(*row) == checksum(parts("n", *row))
        again = (f"k{i}", "Type0", 1, b"payload", "n#0")  # remembered from the first row
        assert seal(*again) == checksum(parts("n", *again))


def _stored(
    key: str,
    data_type: str = "GCounter",
    version: int = codec.FORMAT_VERSION,
    payload: bytes = b"x",
    signing_key: bytes | None = None,
) -> list[Any]:
    """The load columns of a row of node "n", sealed as a write seals them."""
    sealed = parts("n", key, data_type, version, payload, "")
    check = checksum(sealed) if signing_key is None else mac(signing_key, sealed)
    return [key_id(key), key, data_type, version, payload, "", check]


def test_a_chunks_check_loads_the_good_rows_and_refuses_each_bad_one_with_why() -> None:
    tampered, wrong_id, wrong_type, view = (_stored(k) for k in ("t", "i", "w", "v"))
    tampered[4] = b"y"
    wrong_id[0] = key_id("another key")
    wrong_type[3] = str(codec.FORMAT_VERSION)
    view[4] = memoryview(view[4])  # a driver may hand binary columns so
    rows = [
        _stored("good"),
        _stored("gone", data_type=DELETED, payload=b""),
        view,
        tampered,
        wrong_id,
        wrong_type,
        _stored("signed", signing_key=b"k"),
        _stored("future", version=99),
    ]
    loaded, refused = RowSeal("n", None).check(rows)
    assert loaded == [("good", b"x"), ("gone", None), ("v", b"x")]
    assert refused == [
        ("t", BAD_CHECKSUM),
        ("i", "the row's key id does not match its key (tampered or corrupted)"),
        ("w", "a column of the row has the wrong type (tampered or corrupted)"),
        ("signed", SIGNED),
        ("future", f"format version 99 is not one this code reads {codec.FORMAT_VERSIONS}"),
    ]
    # With a signing key: only rows signed with it load.
    signed = [_stored("k", signing_key=b"k"), _stored("other", signing_key=b"o"), _stored("none")]
    loaded, refused = RowSeal("n", b"k").check(signed)
    assert loaded == [("k", b"x")]
    assert refused == [("other", BAD_MAC), ("none", NOT_SIGNED)]
    # Another node's row (its node column is not selected, it is the one asked for).
    assert RowSeal("m", None).check([_stored("good")]) == ([], [("good", BAD_CHECKSUM)])
