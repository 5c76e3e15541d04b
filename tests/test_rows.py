"""A row's seal (:mod:`thespian_dd._runtime.rows`): what a load checks each row against is what
a write sealed it with.  The checks of whole rows, mutated or wrongly signed, through a store:
``tests/test_fuzz_rows.py``."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from thespian_dd._runtime.rows import RowSeal, checksum, mac, parts

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
