"""GCounter examples and argument checks (the laws are in test_laws.py)."""

from __future__ import annotations

import pytest

from thespian_dd import GCounter, ReplicaId

A, B = ReplicaId("a", 1), ReplicaId("b", 1)


def test_increments_from_two_replicas_add_up() -> None:
    assert GCounter().increment(A, 5).merge(GCounter().increment(B, 3)).value == 8


def test_counters_do_not_overflow() -> None:
    assert GCounter().increment(A, 2**70).increment(A, 2**70).value == 2**71


def test_the_delta_holds_only_the_changed_slots() -> None:
    base = GCounter().increment(A, 5).merge(GCounter().increment(B, 3)).reset_delta()
    assert base.increment(A, 1).delta == GCounter({A: 6})


def test_a_gcounter_refuses_to_shrink_or_count_non_ints() -> None:
    with pytest.raises(ValueError, match="can only grow"):
        GCounter().increment(A, -1)
    with pytest.raises(TypeError, match="must be an int"):
        GCounter().increment(A, 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be an int"):
        GCounter().increment(A, True)


def test_pruning_moves_a_slot_into_a_live_replica() -> None:
    counter = GCounter().increment(A, 5).increment(B, 3)
    pruned = counter.prune(B, A)
    assert pruned.state == {A: 8}
    assert pruned.value == 8
