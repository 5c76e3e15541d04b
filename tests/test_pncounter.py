"""PNCounter examples (the laws are in test_laws.py)."""

from __future__ import annotations

import pytest

from thespian_dd import PNCounter, ReplicaId

A, B = ReplicaId("a", 1), ReplicaId("b", 1)


def test_increments_and_decrements_from_two_replicas() -> None:
    left = PNCounter().increment(A, 10).decrement(A, 3)
    right = PNCounter().decrement(B, 4)
    assert left.merge(right).value == 3


def test_a_negative_increment_decrements() -> None:
    assert PNCounter().increment(A, -4).value == -4
    assert PNCounter().decrement(A, -4).value == 4


def test_the_delta_holds_only_the_changed_side() -> None:
    base = PNCounter().increment(A, 10).reset_delta()
    delta = base.decrement(A, 2).delta
    assert delta is not None
    assert delta.p.value == 0
    assert delta.n.value == 2


def test_non_int_amounts_are_refused() -> None:
    with pytest.raises(TypeError, match="must be an int"):
        PNCounter().increment(A, "1")  # type: ignore[arg-type]
