"""LWWMap: a map whose values are last-writer-wins registers.

- State: an :class:`~thespian_dd.ormap.ORMap` of :class:`~thespian_dd.lwwregister.LWWRegister`.
- Value: ``{key: value}``.
- Merge: keys as in ORMap (a put concurrent with a remove wins); per key, the later write wins
  (see LWWRegister for the clock, the tie-break and the bound on clock skew).
- Delta: the ORMap's (the changed registers).
- Garbage: the key set's context; pruned through the ORMap.
- Paper: Akka Distributed Data's LWWMap.
"""

from __future__ import annotations

from typing import Any, Generic

from thespian_dd._typevars import K, V
from thespian_dd.data import ReplicaId
from thespian_dd.lwwregister import DEFAULT_MAX_CLOCK_SKEW_MS, Clock, LWWRegister, default_clock
from thespian_dd.ormap import ORMapBacked

__all__ = ["LWWMap"]


class LWWMap(ORMapBacked[K], Generic[K, V]):
    """``LWWMap().put(node, "a", 1).value == {"a": 1}``; ``LWWMap[str, int]()`` for the type
    checker."""

    __slots__ = ()

    @property
    def value(self) -> dict[K, V]:
        """``{key: value}``: the latest write of every present key."""
        return {k: r.value for k, r in self.underlying.entries.items()}

    def get(self, key: K, default: Any = None) -> V | Any:
        """The latest value written under ``key``, or ``default`` when the key is not present."""
        register = self.underlying.get(key)
        return default if register is None else register.value

    def put(
        self,
        node: ReplicaId,
        key: K,
        value: V,
        clock: Clock = default_clock,
        *,
        max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
    ) -> LWWMap[K, V]:
        """Set ``key`` to ``value``, written by ``node`` at ``clock``'s timestamp."""

        def write(register: LWWRegister[V]) -> LWWRegister[V]:
            return register.with_value(node, value, clock, max_clock_skew_ms=max_clock_skew_ms)

        # A new key starts from timestamp 0, so the clock stamps the first write as it likes.
        unset: LWWRegister[Any] = LWWRegister(None, 0, node)
        return self._changed(self.underlying.update(node, key, unset, write))
