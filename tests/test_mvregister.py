"""MVRegister examples (the laws are in test_laws.py)."""

from __future__ import annotations

import time

import pytest

from thespian_dd import MVRegister, ReplicaId

A, B = ReplicaId("a", 1), ReplicaId("b", 1)


def test_concurrent_writes_are_all_kept_until_one_write_sees_them() -> None:
    both = MVRegister().assign(A, "x").merge(MVRegister().assign(B, "y"))
    assert both.value == {"x", "y"}
    assert both.assign(A, "z").value == {"z"}
    assert both.assign(A, "z").merge(both).value == {"z"}


def _merge_all(registers: list[MVRegister]) -> MVRegister:
    while len(registers) > 1:  # pairwise, so building the input is not itself quadratic
        pairs = zip(registers[::2], registers[1::2], strict=False)
        merged = [left.merge(right) for left, right in pairs]
        registers = merged + ([registers[-1]] if len(registers) % 2 else [])
    return registers[0]


def test_merge_is_linear_in_the_number_of_concurrent_values() -> None:
    # actor-ts froze on an O(n^2) multi-value merge; 20,000 concurrent writes must stay quick.
    writers = [MVRegister().assign(ReplicaId(f"n{i}", 1), i) for i in range(20_000)]
    left, right = _merge_all(writers[:10_000]), _merge_all(writers[10_000:])
    started = time.perf_counter()
    merged = left.merge(right)
    elapsed = time.perf_counter() - started
    assert len(merged.value) == 20_000
    assert elapsed < 5.0, f"merging 2 x 10,000 concurrent writes took {elapsed:.1f} s"


def test_values_must_be_hashable() -> None:
    with pytest.raises(TypeError, match="must be hashable"):
        MVRegister().assign(A, [1])
