"""The data types are generic in what they hold: ``ORSet[str]`` gives ``frozenset[str]``.

The first tests are checked by the project's own mypy run (tests/ is in its ``files``): each
annotated assignment fails it if a type stops flowing.  The last one runs mypy on code that uses
the types wrongly and expects each mistake to be caught.  At run time nothing changes: a
``ORSet[str]()`` is an ``ORSet``, equal to, encoded and pickled as one.
"""

from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest
from mypy import api

from thespian_dd import (
    GCounter,
    GSet,
    LWWMap,
    LWWRegister,
    MVRegister,
    ORMap,
    ORMultiMap,
    ORSet,
    PNCounterMap,
    ReplicaId,
)
from thespian_dd.codec import decode, encode

A, B = ReplicaId("a", 1), ReplicaId("b", 1)


def test_sets_and_registers_give_their_element_type_back() -> None:
    tags: ORSet[str] = ORSet[str]().add(A, "x").add_all(A, ["y", "z"]).remove(A, "z")
    elements: frozenset[str] = tags.value
    listed: list[str] = sorted(tags)
    seen: GSet[int] = GSet[int]().add(A, 3)
    numbers: frozenset[int] = seen.value
    title: LWWRegister[str] = LWWRegister.create(A, "draft").with_value(A, "final")
    text: str = title.value
    versions: MVRegister[bytes] = MVRegister[bytes]().assign(A, b"v1")
    contents: frozenset[bytes] = versions.value
    assert elements == frozenset({"x", "y"})
    assert listed == ["x", "y"]
    assert numbers == frozenset({3})
    assert text == "final"
    assert contents == frozenset({b"v1"})


def test_maps_give_their_key_and_value_types_back() -> None:
    counters: ORMap[str, GCounter] = ORMap[str, GCounter]().update(
        A, "hits", GCounter(), lambda c: c.increment(A, 2)
    )
    hits: GCounter | None = counters.get("hits")
    by_key: dict[str, GCounter] = counters.entries
    prices: LWWMap[str, int] = LWWMap[str, int]().put(A, "socks", 3).remove(A, "hat")
    socks: int | None = prices.value.get("socks")
    stock: PNCounterMap[str] = PNCounterMap[str]().increment(A, "apples", 5).decrement(A, "apples")
    apples: int | None = stock.get("apples")
    groups: ORMultiMap[str, str] = ORMultiMap[str, str]().add_binding(A, "admins", "ann")
    admins: frozenset[str] | None = groups.get("admins")
    merged: ORMultiMap[str, str] = groups.merge(ORMultiMap[str, str]().put(B, "users", ["al"]))
    assert hits is not None
    assert (hits.value, list(by_key), socks, apples) == (2, ["hits"], 3, 4)
    assert admins == frozenset({"ann"})
    assert merged.value == {"admins": frozenset({"ann"}), "users": frozenset({"al"})}


def test_a_typed_value_is_the_same_value_at_run_time() -> None:
    typed = ORSet[str]().add(A, "x")
    plain = ORSet().add(A, "x")
    assert type(typed) is ORSet
    assert typed == plain
    assert encode(typed) == encode(plain)
    assert decode(encode(typed)) == plain.reset_delta()
    assert pickle.loads(pickle.dumps(typed)) == plain.reset_delta()


MISTAKES = {
    "ORSet[str]().add(A, 5)": 'Argument 2 to "add" of "ORSet" has incompatible type "int"',
    "x: frozenset[int] = ORSet[str]().value": 'has type "frozenset[str]", variable has type',
    'GSet[str]().add(A, b"x")': 'Argument 2 to "add" of "GSet" has incompatible type "bytes"',
    'y: int = LWWRegister.create(A, "s").value': 'has type "str", variable has type "int"',
    'LWWMap[str, int]().put(A, "k", "v")': 'Argument 3 to "put" of "LWWMap" has incompatible type',
    "PNCounterMap[str]().increment(A, 1)": 'Argument 2 to "increment" of "PNCounterMap"',
    'ORMultiMap[str, int]().add_binding(A, "k", "v")': 'Argument 3 to "add_binding"',
    'ORMap[str, GCounter]().update(A, "k", ORSet(), lambda s: s)': 'Argument 3 to "update"',
    'z: GCounter = ORMap[str, ORSet[str]]().entries["k"]': 'has type "ORSet[str]", variable has',
    "MVRegister[str]().assign(A, 1)": 'Argument 2 to "assign" of "MVRegister"',
}


@pytest.mark.timeout(180)
def test_mypy_catches_each_wrong_use_of_a_typed_value(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    header = textwrap.dedent(
        """
        from thespian_dd import (
            GCounter, GSet, LWWMap, LWWRegister, MVRegister, ORMap, ORMultiMap, ORSet,
            PNCounterMap, ReplicaId,
        )
        A = ReplicaId("a", 1)
        """
    )
    # One place across runs, so that mypy's cache (of thespian_dd) is reused and stays right.
    cache = getattr(request.config, "cache", None)  # None with -p no:cacheprovider
    where = cache.mkdir("mypy-typed-values") if cache else tmp_path
    program = where / "mistakes.py"
    program.write_text(header + "\n".join(MISTAKES) + "\n")
    (where / "mypy.ini").write_text("[mypy]\n")  # a user's strict run, not this project's config
    first = header.count("\n") + 1
    out, err, status = api.run(
        [
            "--strict",
            "--no-error-summary",
            "--config-file",
            str(where / "mypy.ini"),
            "--cache-dir",
            str(where / "cache"),
            str(program),
        ]
    )
    assert status == 1, (out, err)
    errors = out.splitlines()
    for line, (code, message) in enumerate(MISTAKES.items(), start=first):
        on_line = [e for e in errors if f"mistakes.py:{line}: error:" in e]
        assert any(message in e for e in on_line), (code, on_line, out, err)
    assert len(errors) == len(MISTAKES), errors  # nothing else is wrong
