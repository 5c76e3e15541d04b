"""LWWRegister examples (the laws are in test_laws.py)."""

from __future__ import annotations

import pytest

from thespian_dd import LWWRegister, ReplicaId
from thespian_dd.lwwregister import reverse_clock

A, B = ReplicaId("a", 1), ReplicaId("b", 1)


def test_the_later_write_wins() -> None:
    early = LWWRegister.create(A, "early", lambda current, value: 10)
    late = LWWRegister.create(B, "late", lambda current, value: 20)
    assert early.merge(late).value == "late"
    assert late.merge(early).value == "late"


def test_a_write_always_beats_the_value_it_replaces_even_with_a_slow_clock() -> None:
    ahead = LWWRegister.create(B, "ahead", lambda current, value: 10**12 + 10**6)
    ours = ahead.with_value(A, "ours")  # the default clock: max(now, current + 1)
    assert ours.timestamp > ahead.timestamp
    assert ours.merge(ahead).value == "ours"


def test_equal_timestamps_are_broken_by_replica_then_by_value() -> None:
    by_a = LWWRegister("x", 5, A)
    by_b = LWWRegister("y", 5, B)
    assert by_a.merge(by_b).value == "y" == by_b.merge(by_a).value
    tie_1, tie_2 = LWWRegister("p", 5, A), LWWRegister("q", 5, A)
    assert tie_1.merge(tie_2) == tie_2.merge(tie_1)


def test_the_reverse_clock_keeps_the_first_write() -> None:
    first = LWWRegister.create(A, "first", reverse_clock)
    second = first.with_value(B, "second", reverse_clock)
    assert first.merge(second).value == "first"


def test_any_value_is_allowed_even_unhashable() -> None:
    assert LWWRegister.create(A, {"a": [1, 2]}).value == {"a": [1, 2]}


def test_timestamps_must_be_ints() -> None:
    with pytest.raises(TypeError, match="timestamp must be an int"):
        LWWRegister("v", 1.5, A)  # type: ignore[arg-type]
