"""Fuzzing stored rows: a row mutated in any column is refused at load (checksum or MAC), never
loaded as a wrong value, and a row signed with another key (or none) is refused by a signed store.

Rows of every type are written to a real SQLite store, then changed byte by byte, character by
character, or to a value of another SQL type, in every column the store has; every row left as
written loads exactly as written, and every changed one is refused with an error naming why.
"""

from __future__ import annotations

import contextlib
import sqlite3
import tempfile
from pathlib import Path
from typing import Any

import pytest
from fuzzing import ROW_VALUES, mutations
from hypothesis import given
from hypothesis import strategies as st

from thespian_dd._runtime.rows import Entry
from thespian_dd._runtime.store import Store
from thespian_dd.codec import decode, encode

ROW_COLUMNS = (
    "payload",
    "checksum",
    "node",
    "key",
    "data_type",
    "replicas",
    "format_version",
    "key_id",
    "updated_at",  # informational (inspect shows it): loading must neither use nor trip on it
)
NODE = "fz-node"


def _entries_to_write() -> dict[str, Entry | None]:
    entries: dict[str, Entry | None] = {
        key: Entry(
            type(value).__name__,
            encode(value),
            " ".join(sorted(str(r) for r in value.modified_by_nodes()))
            if hasattr(value, "modified_by_nodes")
            else "",
        )
        for key, value in ROW_VALUES.items()
    }
    entries["deleted"] = None
    return entries


@st.composite
def _text_mutations(draw: st.DrawFn, text: str) -> str:
    chars = list(text)
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["insert", "delete", "replace", "case"]))
        at = draw(st.integers(0, max(len(chars) - 1, 0)))
        if op == "insert":
            chars.insert(at, draw(st.characters(exclude_categories=["Cs"])))
        elif op == "delete" and chars:
            del chars[at]
        elif op == "replace" and chars:
            chars[at] = draw(st.characters(exclude_categories=["Cs"]))
        elif op == "case" and chars:
            chars[at] = chars[at].swapcase()
    mutated = "".join(chars)
    return mutated if mutated != text else text + " "


@st.composite
def _row_mutations(draw: st.DrawFn, row: dict[str, Any]) -> tuple[str, Any]:
    """A column of ``row`` and its new, different value (sometimes of another SQL type)."""
    column = draw(st.sampled_from(ROW_COLUMNS))
    value = row[column]
    if draw(st.integers(0, 7)) == 0:  # another type altogether: SQLite stores what it gets
        sql_int = st.integers(-(2**63), 2**63 - 1)
        other = draw(st.one_of(sql_int, st.text(max_size=4), st.binary(max_size=4)))
        if other != value and type(other) is not type(value):
            return column, other
    if isinstance(value, bytes):
        return column, draw(mutations(value))
    if isinstance(value, int):
        return column, draw(st.integers(-3, 10).filter(lambda v: v != value))
    if isinstance(value, float):
        return column, draw(st.floats(allow_nan=False).filter(lambda v: v != value))
    return column, draw(_text_mutations(value))


def _raw_rows(path: Path) -> dict[int, dict[str, Any]]:
    """Every row as SQLite holds it, by rowid; each value with its type (SQLite converts some
    values to the column's affinity: what counts is what is stored)."""
    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT rowid AS rowid_, * FROM thespian_dd_entries").fetchall()
    return {row["rowid_"]: {k: row[k] for k in row.keys() if k != "rowid_"} for row in rows}  # noqa: SIM118


def _mutate(path: Path, rowid: int, column: str, value: Any) -> None:
    """Set one column of one row (unless the database refuses it: a duplicate key id)."""
    with (
        contextlib.closing(sqlite3.connect(path)) as conn,
        contextlib.suppress(sqlite3.IntegrityError),
    ):
        conn.execute(
            f"UPDATE thespian_dd_entries SET {column} = ? WHERE rowid = ?",
            (value, rowid),
        )
        conn.commit()


def _typed(row: dict[str, Any]) -> dict[str, tuple[type, Any]]:
    return {k: (type(v), v) for k, v in row.items() if k != "updated_at"}


SIGNING_KEYS = st.one_of(st.none(), st.binary(min_size=1, max_size=40))


@pytest.mark.timeout(900)
@given(signing_key=SIGNING_KEYS, data=st.data())
def test_every_mutated_stored_row_is_refused_never_loaded_wrong(
    signing_key: bytes | None, data: st.DataObject
) -> None:
    entries = _entries_to_write()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store.db"
        store = Store(f"sqlite:///{path}", signing_key=signing_key)
        try:
            store.write(NODE, entries)
            rows = _raw_rows(path)
            assert len(rows) == len(entries)
            for rowid in data.draw(st.lists(st.sampled_from(sorted(rows)), unique=True)):
                for _ in range(data.draw(st.integers(1, 2))):
                    column, value = data.draw(_row_mutations(rows[rowid]))
                    _mutate(path, rowid, column, value)
            after = _raw_rows(path)
            loaded = list(store.load(NODE))
            inspected = list(store.rows())
            elsewhere = [row for row in inspected if row.node != NODE]
        finally:
            store.close()
    mutated = {i: after[i] for i in rows if _typed(after[i]) != _typed(rows[i])}
    # A row whose node changed is another node's now: not loaded here, and refused there.
    moved = {i for i in mutated if after[i]["node"] != NODE}
    assert len(elsewhere) == len(moved)
    assert all(row.error for row in elsewhere)
    refused = [(key, error) for key, payload, error in loaded if error is not None]
    good = {key: payload for key, payload, error in loaded if error is None}
    originals = {row["key"]: row for i, row in rows.items() if i not in mutated}
    # Every row not touched loads exactly as written; every touched one is refused.
    assert good.keys() == originals.keys(), (mutated, refused)
    for key, payload in good.items():
        entry = entries[key]
        assert payload == (None if entry is None else entry.payload), key
        if payload is not None:
            assert decode(payload) == ROW_VALUES[key]
    assert len(refused) == len(mutated) - len(moved), (mutated, refused)
    assert all(isinstance(error, str) and error for _, error in refused)
    # The load's quick check of a good row and the full diagnosis ``inspect`` shows agree.
    diagnosed = sorted((r.key, r.error) for r in inspected if r.node == NODE)
    assert sorted((key, error) for key, _, error in loaded) == diagnosed


@pytest.mark.timeout(300)
@given(
    first=st.binary(min_size=1, max_size=40),
    second=st.binary(min_size=1, max_size=40),
    order=st.sampled_from(["unsigned then signed", "signed then unsigned", "another key"]),
)
def test_rows_are_refused_by_a_store_with_another_signing_key(
    first: bytes, second: bytes, order: str
) -> None:
    if order == "another key" and first == second:
        second = first + b"!"
    write_key, read_key = {
        "unsigned then signed": (None, first),
        "signed then unsigned": (first, None),
        "another key": (first, second),
    }[order]
    entries = _entries_to_write()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/store.db"
        writer = Store(url, signing_key=write_key)
        try:
            writer.write(NODE, entries)
            assert {k for k, _, error in writer.load(NODE) if error is None} == set(entries)
        finally:
            writer.close()
        reader = Store(url, signing_key=read_key)
        try:
            loaded = list(reader.load(NODE))
        finally:
            reader.close()
    assert {key for key, _, _ in loaded} == set(entries)
    assert all(payload is None and error for _, payload, error in loaded), loaded
