"""Flag examples (the laws are in test_laws.py)."""

from __future__ import annotations

import pytest

from thespian_dd import Flag, ReplicaId

A = ReplicaId("a", 1)


def test_once_on_anywhere_on_everywhere() -> None:
    assert Flag().merge(Flag().switch_on(A)).value is True
    assert not Flag()


def test_a_flag_takes_only_a_bool() -> None:
    with pytest.raises(TypeError, match="Flag takes a bool"):
        Flag(1)  # type: ignore[arg-type]
