"""MaxRegister: a data type of one's own, registered with the codec (see custom_type.py).

- State: the highest int ever written (a high-water mark: a best score, a last-seen sequence).
- Value: that int.
- Merge: the larger of the two.  No conflicts: a write below the current value changes nothing.
- Garbage: none; holds no replica ids, so nothing to prune.

Every node imports this module before it reads anything (the ``data_types`` setting), so that
the registration below has run wherever a MaxRegister is stored, gossiped or decoded.
"""

from __future__ import annotations

from typing import Any

from thespian_dd import ReplicaId, ReplicatedData, register_data_type


class MaxRegister(ReplicatedData):
    """``MaxRegister().raise_to(node, 3).raise_to(node, 2).value == 3``."""

    __slots__ = ("top",)

    top: int

    def __init__(self, top: int = 0) -> None:
        # The codec decodes a stored or gossiped state as MaxRegister(*state): refuse what
        # _state() would never give.
        if type(top) is not int:
            raise TypeError(f"a MaxRegister holds an int, not {type(top).__name__}")
        object.__setattr__(self, "top", top)

    def _state(self) -> tuple[Any, ...]:
        return (self.top,)

    @property
    def value(self) -> int:
        """The highest value written."""
        return self.top

    def raise_to(self, node: ReplicaId, n: int) -> MaxRegister:
        """At least ``n`` (``node`` is taken for uniformity with the built-in types)."""
        return self if n <= self.top else MaxRegister(n)

    def merge(self, other: MaxRegister) -> MaxRegister:
        """The larger of the two."""
        self._require_same_type(other)
        return self if self.top >= other.top else other


register_data_type(MaxRegister, "samples.MaxRegister")
