"""Flag: a boolean that can only be switched on.

- State: one bool.
- Value: that bool.
- Merge: logical or: once on anywhere, on everywhere.
- Delta: none (the whole state is one bit; Akka gives Flag no delta either).
- Garbage: none; holds no replica ids.
"""

from __future__ import annotations

from typing import Any

from thespian_dd.data import ReplicaId, ReplicatedData, check_replica

__all__ = ["Flag"]


class Flag(ReplicatedData):
    """``Flag().switch_on(node).value is True``."""

    __slots__ = ("enabled",)

    enabled: bool

    def __init__(self, enabled: bool = False) -> None:
        if not isinstance(enabled, bool):
            raise TypeError(f"Flag takes a bool, not {type(enabled).__name__}: {enabled!r}")
        object.__setattr__(self, "enabled", enabled)

    def _state(self) -> tuple[Any, ...]:
        return (self.enabled,)

    @property
    def value(self) -> bool:
        """Whether the flag is on."""
        return self.enabled

    def __bool__(self) -> bool:
        return self.enabled

    def switch_on(self, node: ReplicaId) -> Flag:
        """Switch the flag on (``node`` is taken for uniformity with the other types)."""
        check_replica(node)
        return self if self.enabled else Flag(True)

    def merge(self, other: Flag) -> Flag:
        """On if either flag is on."""
        self._require_same_type(other)
        return self if self.enabled or not other.enabled else other
