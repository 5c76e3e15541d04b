"""Format 1, frozen: the bytes that today's stores and peers hold stay readable, and a node can
still write them (for a rolling upgrade, where old nodes read what new ones send).

``tests/compat/format1/NAME.bin`` are real ``codec.encode`` bytes of the values built below,
written by the code of format 1 and checked in; no script makes them again.  Each is decoded and
compared with its value, and ``encode(value, version=1)`` must give it again byte for byte.
``tests/compat/store-format1.sqlite`` is a SQLite store written by a node of format 1.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from max_register import MaxRegister  # a data type of one's own (samples/)

from thespian_dd import (
    Flag,
    GCounter,
    GSet,
    LWWMap,
    LWWRegister,
    MVRegister,
    ORMap,
    ORMultiMap,
    ORSet,
    PNCounter,
    PNCounterMap,
    ReplicaId,
    ReplicatedData,
    UpdateSuccess,
)
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.markers import Performed, join_envelope
from thespian_dd._runtime.rows import Entry
from thespian_dd._runtime.store import Store
from thespian_dd.codec import (
    FORMAT_VERSION,
    FORMAT_VERSIONS,
    CodecError,
    Limits,
    decode,
    digest,
    encode,
)
from thespian_dd.messages import Get, GetDataDeleted, GetSuccess, Update
from thespian_dd.testing import Cluster

COMPAT = Path(__file__).resolve().parent / "compat"
A, B, C = ReplicaId("a", 1), ReplicaId("b", 1), ReplicaId("b", 2)

# Plain user data of every kind the tree format writes; a Fraction travels as a dill pickle.
PLAIN = (None, True, False, 0, -1, 2**70, -(2**70), 1.5, -0.0, "é\u2603", b"\x00\xff", ("t", 1))


def _clock(ts: int) -> Callable[[int, Any], int]:
    return lambda current, value: ts


def _units_counter() -> GCounter:
    # A counter created again in a map starts above its old units: not 1..n, so written as runs.
    m = ORMap().update(A, "c", GCounter(), lambda c: c.increment(A, 2)).remove(A, "c")
    m = m.update(A, "c", GCounter(), lambda c: c.increment(A, 3).increment(B, 1))
    counter: GCounter | None = m.get("c")
    assert counter is not None
    return counter.reset_delta()


def _ormap() -> ORMap:
    m = ORMap()
    m = m.update(A, "set", ORSet(), lambda s: s.add_all(A, ["x", ("t", 2), frozenset({1, 2})]))
    m = m.update(B, ("k", 1), GCounter(), lambda c: c.increment(B, 9))
    m = m.update(A, "reg", LWWRegister("", 0, A), lambda r: r.with_value(A, {"n": {1}}, _clock(5)))
    m = m.update(A, "flag", Flag(), lambda f: f.switch_on(A))
    m = m.update(
        A, "inner", ORMap(), lambda i: i.update(A, 1, PNCounter(), lambda c: c.decrement(A, 4))
    )
    m = m.update(A, "max", MaxRegister(), lambda r: r.raise_to(A, 7))
    m = m.update(B, "gone", GCounter(), lambda c: c.increment(B, 2))
    # Concurrent updates of one key (two versions), and a removed key (its marks stay).
    other = ORMap().update(C, "set", ORSet(), lambda s: s.add(C, "y"))
    m = m.merge(other).remove(A, "flag").remove(A, "gone")
    return m.reset_delta()


def format1_values() -> dict[str, ReplicatedData]:
    """One value of every built-in data type (and of a registered one), by fixture name."""
    orset = ORSet().add_all(A, PLAIN).add(B, Fraction(1, 3)).remove(A, -1)
    concurrent = ORSet().add(C, "x").merge(ORSet().add(A, "x").add(B, "z")).remove(B, "z")
    return {
        "gcounter": GCounter().increment(A, 3).increment(B, 1).increment(C, 2),
        "gcounter_units": _units_counter(),
        "pncounter": PNCounter().increment(A, 5).decrement(B, 2),
        "gset": GSet().add(A, "x").add(A, ("t", frozenset({"p"}))).add(A, 3),
        "orset": orset.reset_delta(),
        "orset_concurrent": concurrent.reset_delta(),
        "flag": Flag().switch_on(A),
        "lwwregister": LWWRegister.create(A, {"k": [1, 2.5, None], "s": {"a"}}, _clock(1234)),
        "mvregister": MVRegister().assign(A, "v").merge(MVRegister().assign(B, ("w", 1))),
        "ormap": _ormap(),
        "lwwmap": LWWMap()
        .put(A, "k", {"nested": {"s", "e"}}, _clock(42))
        .put(B, 2, [1], _clock(9)),
        "pncountermap": PNCounterMap().increment(A, "x", 3).decrement(B, "y", 4).reset_delta(),
        "ormultimap": ORMultiMap()
        .put(A, "k", ["v1", "v2"])
        .add_binding(B, "j", frozenset({"x"}))
        .remove_binding(A, "k", "v1")
        .reset_delta(),
        "max_register": MaxRegister(41),
    }


def _reset(value: ReplicatedData) -> ReplicatedData:
    reset = getattr(value, "reset_delta", None)
    return value if reset is None else reset()


CASES = sorted(format1_values())


def test_every_built_in_type_has_a_fixture() -> None:
    from thespian_dd.codec import BUILT_IN_TYPES

    kinds = {type(v) for v in format1_values().values()}
    assert kinds >= BUILT_IN_TYPES
    assert sorted(p.stem for p in (COMPAT / "format1").glob("*.bin")) == CASES


@pytest.mark.parametrize("name", CASES)
def test_format1_bytes_decode_to_their_value(name: str) -> None:
    raw = (COMPAT / "format1" / f"{name}.bin").read_bytes()
    assert raw[:4] == b"TDD\x01"
    expected = _reset(format1_values()[name])
    value = decode(raw)
    assert type(value) is type(expected)
    assert value == expected
    assert value.value == expected.value


@pytest.mark.parametrize("name", CASES)
def test_format1_is_still_written_byte_for_byte(name: str) -> None:
    raw = (COMPAT / "format1" / f"{name}.bin").read_bytes()
    value = format1_values()[name]
    assert encode(value, version=1) == raw
    assert digest(value, version=1) == raw[-16:]


@pytest.mark.parametrize("name", CASES)
def test_every_version_round_trips(name: str) -> None:
    value = _reset(format1_values()[name])
    for version in FORMAT_VERSIONS:
        raw = encode(value, version=version)
        assert raw[3] == version
        assert decode(raw) == value
        assert digest(value, version=version) == raw[-16:]
    assert encode(value) == encode(value, version=FORMAT_VERSION)


def test_versions_are_listed_in_order_and_others_refused() -> None:
    assert tuple(sorted(set(FORMAT_VERSIONS))) == FORMAT_VERSIONS
    assert FORMAT_VERSION in FORMAT_VERSIONS
    assert 1 in FORMAT_VERSIONS
    unknown = max(FORMAT_VERSIONS) + 1
    with pytest.raises(ValueError, match=f"format version {unknown}"):
        encode(Flag(), version=unknown)
    raw = bytearray(encode(Flag()))
    raw[3] = unknown
    with pytest.raises(CodecError, match=f"unknown format version {unknown}"):
        decode(bytes(raw))


STORED: dict[str, Any] = {
    "hits": 5,
    "tags": frozenset({"a", ("t", 1)}),
    "carts": {"u1": frozenset({"x", "y"})},
    "stock": {"apples": 7, "pears": -2},
    "prefs": {"theme": {"dark": True}},
    "docs": {"d1": frozenset({"p"})},
    "best": 12,
}
"""What ``store-format1.sqlite`` holds: node-1's keys as a node of format 1 wrote them (and
``gone``, deleted)."""


@pytest.mark.multinode
@pytest.mark.timeout(120)
def test_a_store_written_in_format1_is_read_and_upgraded_as_keys_are_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copyfile(COMPAT / "store-format1.sqlite", tmp_path / "node-1.db")
    before = _versions(tmp_path / "node-1.db")
    assert set(before.values()) == {(1, 1)}
    assert set(before) == {*STORED, "gone"}
    samples = str(Path(__file__).resolve().parent.parent / "samples")
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [samples, os.environ.get("PYTHONPATH")]))
    )
    with Cluster(
        tmp_path, 1, store=f"sqlite:///{tmp_path}/{{name}}.db", data_types="max_register"
    ) as c:
        c.start()
        for key, value in STORED.items():
            reply = c.ask(0, Get(key))
            assert isinstance(reply, GetSuccess), reply
            assert reply.data.value == value, key
        assert c.ask(0, Get("gone")) == GetDataDeleted("gone", None)
        assert c.ask(
            0, Update("hits", GCounter(), lambda x, n: x.increment(n, 1))
        ) == UpdateSuccess("hits", None)
        assert c.ask(0, Update("tags", ORSet(), lambda s, n: s.add(n, "z"))) == UpdateSuccess(
            "tags", None
        )
    after = _versions(tmp_path / "node-1.db")
    # Keys written again are in this code's format; the others are left as they were.
    assert after["hits"] == after["tags"] == (FORMAT_VERSION, FORMAT_VERSION)
    assert {k: v for k, v in after.items() if k not in {"hits", "tags"}} == {
        k: v for k, v in before.items() if k not in {"hits", "tags"}
    }
    with Cluster(
        tmp_path, 1, store=f"sqlite:///{tmp_path}/{{name}}.db", data_types="max_register"
    ) as c:
        c.start()
        expected = {**STORED, "hits": 6, "tags": STORED["tags"] | {"z"}}
        for key, value in expected.items():
            reply = c.ask(0, Get(key))
            assert isinstance(reply, GetSuccess), reply
            assert reply.data.value == value, key


def _versions(path: Path) -> dict[str, tuple[int, int]]:
    """Per key: the row's format version column and the version byte of its payload."""
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            "SELECT key, format_version, payload FROM thespian_dd_entries"
        ).fetchall()
    return {key: (version, payload[3] if payload else version) for key, version, payload in rows}


def test_a_row_is_labelled_with_the_format_of_its_own_bytes(tmp_path: Path) -> None:
    # A key restored and written again unchanged keeps its format-1 bytes: its row says 1.
    store = Store(f"sqlite:///{tmp_path}/labels.db")
    try:
        value = GCounter().increment(A, 3)
        old, new = encode(value, version=1), encode(value)
        marked = join_envelope(old, {B: Performed(2**40)})  # pruning markers in front
        entries = {"old": old, "new": new, "marked": marked}
        store.write("n", {key: Entry("GCounter", raw, "") for key, raw in entries.items()})
        store.write("n", {"gone": None})
        labels = {row.key: row.format_version for row in store.rows("n")}
        assert labels == {"old": 1, "new": FORMAT_VERSION, "marked": 1, "gone": FORMAT_VERSION}
        loaded = {key: (payload, error) for key, payload, error in store.load("n")}
        assert loaded == {**{k: (raw, None) for k, raw in entries.items()}, "gone": (None, None)}
    finally:
        store.close()


def test_a_value_kept_in_format1_bytes_has_the_digest_of_this_format() -> None:
    # Peers compare digests: a value restored (or received) in an older format's bytes must not
    # show that format's digest, or gossip would never see two equal values as equal.
    value = ORSet().add_all(A, ["x", ("t", 1)]).reset_delta()
    keys = KeyTable(lambda _key: None)
    keys.restore("old", encode(value, version=1), Limits())
    keys.restore("new", encode(value), Limits())
    keys.put("received", value, encode(value, version=1))
    assert keys.undecoded() == 2
    digests = keys.digests()
    assert digests["old"] == digests["new"] == digests["received"] == digest(value)
    assert digest(value) != digest(value, version=1)
    assert keys.undecoded() == 1  # the format-2 bytes give their digest without a decode
