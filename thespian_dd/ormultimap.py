"""ORMultiMap: a map from keys to sets of values.

- State: an :class:`~thespian_dd.ormap.ORMap` of :class:`~thespian_dd.orset.ORSet`.
- Value: ``{key: frozenset(values)}``.
- Merge: keys as in ORMap; each key's set merges as an ORSet (add-wins per value).
- Removing the last value of a key removes the key (as Akka does).
- Delta: the ORMap's, with the sets' own deltas inside.
- Garbage: the contexts of the key set and of each value set; pruned through the ORMap.
- Paper: Akka Distributed Data's ORMultiMap.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Generic

from thespian_dd._typevars import K, V
from thespian_dd.data import ReplicaId, check_hashable
from thespian_dd.ormap import ORMapBacked
from thespian_dd.orset import ORSet

__all__ = ["ORMultiMap"]


class ORMultiMap(ORMapBacked[K], Generic[K, V]):
    """A map of sets (``ORMultiMap[str, int]()`` for the type checker).

    ``ORMultiMap().add_binding(node, "k", 1).add_binding(node, "k", 2).value == {"k": {1, 2}}``
    """

    __slots__ = ()

    @property
    def value(self) -> dict[K, frozenset[V]]:
        """``{key: frozenset of values}`` for every present key."""
        return {k: s.value for k, s in self.underlying.entries.items()}

    def get(self, key: K) -> frozenset[V] | None:
        """The values bound to ``key``, or ``None`` when the key is not present."""
        values = self.underlying.get(key)
        return None if values is None else values.value

    def put(self, node: ReplicaId, key: K, values: Iterable[V]) -> ORMultiMap[K, V]:
        """Replace the values of ``key`` with ``values`` (an empty iterable removes the key)."""
        values = list(values)
        if not values:
            return self.remove(node, key)
        return self._update(node, key, lambda s: s.clear(node).add_all(node, values))

    def add_binding(self, node: ReplicaId, key: K, value: V) -> ORMultiMap[K, V]:
        """Add ``value`` to the set of ``key``."""
        return self._update(node, key, lambda s: s.add(node, value))

    def remove_binding(self, node: ReplicaId, key: K, value: V) -> ORMultiMap[K, V]:
        """Remove ``value`` from the set of ``key``; the key goes when its set becomes empty."""
        check_hashable("an ORMultiMap value", value)
        values = self.underlying.get(key)
        if values is None or value not in values:
            return self
        updated = self._update(node, key, lambda s: s.remove(node, value))
        if updated.underlying.get(key):
            return updated
        return updated.remove(node, key)

    def _update(self, node: ReplicaId, key: K, fn: Any) -> ORMultiMap[K, V]:
        return self._changed(self.underlying.update(node, key, ORSet(), fn))
