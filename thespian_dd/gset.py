"""GSet: a grow-only set.

- State: a frozenset of hashable elements.
- Value: that frozenset.
- Merge: union.  No conflicts: elements are only ever added.
- Delta: the elements added since the last reset.
- Garbage: none beyond the elements; holds no replica ids, so nothing to prune.
- Paper: Shapiro et al. (2011), the G-Set.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Generic

from thespian_dd._typevars import A
from thespian_dd.data import DeltaReplicatedData, ReplicaId, check_hashable, check_replica

__all__ = ["GSet"]


class GSet(DeltaReplicatedData, Generic[A]):
    """``GSet().add(node, "a").value == frozenset({"a"})``; ``GSet[str]()`` for the type checker."""

    __slots__ = ("_delta", "elements")

    elements: frozenset[A]
    _delta: GSet[A] | None

    def __init__(self, elements: Iterable[A] = (), *, _delta: GSet[A] | None = None) -> None:
        object.__setattr__(self, "elements", frozenset(elements))
        object.__setattr__(self, "_delta", _delta)

    def _state(self) -> tuple[Any, ...]:
        return (self.elements,)

    @property
    def value(self) -> frozenset[A]:
        """The elements, as a frozenset."""
        return self.elements

    def __contains__(self, element: object) -> bool:
        return element in self.elements

    def __iter__(self) -> Iterator[A]:
        return iter(self.elements)

    def __len__(self) -> int:
        return len(self.elements)

    def add(self, node: ReplicaId, element: A) -> GSet[A]:
        """Add ``element`` (``node`` is taken for uniformity with the other types; not stored)."""
        check_replica(node)
        check_hashable("a GSet element", element)
        if element in self.elements:
            return self
        delta = (self._delta.elements if self._delta else frozenset()) | {element}
        return GSet(self.elements | {element}, _delta=GSet(delta))

    def merge(self, other: GSet[A]) -> GSet[A]:
        """The union of both sets; keeps this value's pending delta."""
        self._require_same_type(other)
        if other.elements <= self.elements:
            return self
        return GSet(self.elements | other.elements, _delta=self._delta)

    def is_inflation_of(self, older: GSet[A]) -> bool:
        """Whether every element of ``older`` is here."""
        return type(older) is GSet and older.elements <= self.elements

    @property
    def delta(self) -> GSet[A] | None:
        """The elements added since the last :meth:`reset_delta`, or ``None``."""
        return self._delta

    def reset_delta(self) -> GSet[A]:
        """This set without its pending delta."""
        return self if self._delta is None else GSet(self.elements)
