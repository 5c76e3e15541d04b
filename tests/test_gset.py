"""GSet examples (the laws are in test_laws.py)."""

from __future__ import annotations

import pytest

from thespian_dd import GSet, ReplicaId

A, B = ReplicaId("a", 1), ReplicaId("b", 1)


def test_adds_from_two_replicas_unite() -> None:
    assert GSet().add(A, 1).merge(GSet().add(B, 2)).value == {1, 2}


def test_adding_an_element_again_changes_nothing() -> None:
    s = GSet().add(A, 1).reset_delta()
    assert s.add(A, 1) is s


def test_unhashable_elements_are_refused() -> None:
    with pytest.raises(TypeError, match="GSet element must be hashable"):
        GSet().add(A, {"a": 1})
