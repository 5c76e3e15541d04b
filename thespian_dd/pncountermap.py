"""PNCounterMap: a map of named counters.

- State: an :class:`~thespian_dd.ormap.ORMap` of :class:`~thespian_dd.pncounter.PNCounter`.
- Value: ``{key: int}``.
- Merge: keys as in ORMap (an increment concurrent with a remove wins, and carries the counter's
  history with it, as in Akka); counters merge per replica slot.
- Delta: the ORMap's, with the counters' own deltas inside.
- Garbage: two slots per replica per counter plus the key set's context; pruned through the ORMap.
- Paper: Akka Distributed Data's PNCounterMap.
"""

from __future__ import annotations

from typing import Generic

from thespian_dd._typevars import K
from thespian_dd.data import ReplicaId, check_count
from thespian_dd.ormap import ORMapBacked
from thespian_dd.pncounter import PNCounter

__all__ = ["PNCounterMap"]


class PNCounterMap(ORMapBacked[K], Generic[K]):
    """``PNCounterMap().increment(node, "hits", 3).value == {"hits": 3}``;
    ``PNCounterMap[str]()`` for the type checker."""

    __slots__ = ()

    @property
    def value(self) -> dict[K, int]:
        """``{key: count}`` for every present key."""
        return {k: c.value for k, c in self.underlying.entries.items()}

    def get(self, key: K) -> int | None:
        """The count under ``key``, or ``None`` when the key is not present."""
        counter = self.underlying.get(key)
        return None if counter is None else counter.value

    def increment(self, node: ReplicaId, key: K, n: int = 1) -> PNCounterMap[K]:
        """Add ``n`` (negative: subtract) to the counter ``key`` on behalf of ``node``."""
        check_count("PNCounterMap increment", n)
        return self._changed(
            self.underlying.update(node, key, PNCounter(), lambda c: c.increment(node, n))
        )

    def decrement(self, node: ReplicaId, key: K, n: int = 1) -> PNCounterMap[K]:
        """Subtract ``n`` from the counter ``key`` on behalf of ``node``."""
        return self.increment(node, key, -check_count("PNCounterMap decrement", n))
