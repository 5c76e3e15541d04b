"""LWWRegister: a register where the last write wins.

- State: the value, its timestamp (an int, milliseconds by default) and the replica that wrote it.
- Value: the value.
- Merge: the write with the greater ``(timestamp, replica)`` wins.  On a full tie (same timestamp
  and replica, different values: only reachable with a custom clock) the canonical encoding of the
  value breaks it, so merge is commutative in every case.
- Clock: by default ``max(now_ms, current_timestamp + 1)``: a write always beats the value it
  replaces, even when the local clock is behind.  A timestamp further ahead of the local wall clock
  than ``max_clock_skew_ms`` (default 5 minutes) is refused when writing, and refused in data
  received from peers (see :class:`~thespian_dd.codec.Limits`), so a node whose clock runs ahead
  cannot win every conflict for as long as it stays ahead.
- Delta: none: the state is as small as a delta would be (as in Akka).
- Garbage: none.  The writer's replica id is a tie-breaker that is replaced by the next write, not
  a slot that accumulates, so there is nothing to prune.
- Caveat: wall clocks decide; a concurrent write can be lost by design.  Use :class:`MVRegister`
  to keep concurrent writes, or :class:`ORSet` / counters when every write must count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Generic

from thespian_dd._canonical import encode_tree
from thespian_dd._typevars import A, B
from thespian_dd.data import ReplicaId, ReplicatedData, check_count, check_replica

__all__ = ["DEFAULT_MAX_CLOCK_SKEW_MS", "Clock", "LWWRegister", "default_clock", "reverse_clock"]

DEFAULT_MAX_CLOCK_SKEW_MS = 5 * 60 * 1000

Clock = Callable[[int, Any], int]
"""``clock(current_timestamp, new_value) -> timestamp`` of a write."""


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def default_clock(current: int, value: Any) -> int:  # noqa: ARG001 - the Clock signature
    """Wall-clock milliseconds, but always later than the value being replaced."""
    return max(now_ms(), current + 1)


def reverse_clock(current: int, value: Any) -> int:  # noqa: ARG001 - the Clock signature
    """The first write wins: timestamps count down (``-now``, always below the current one)."""
    return min(-now_ms(), current - 1)


class LWWRegister(ReplicatedData, Generic[A]):
    """``LWWRegister.create(node, "a").with_value(node, "b").value == "b"`` (an
    ``LWWRegister[str]`` for the type checker)."""

    __slots__ = ("node", "timestamp", "val")

    val: A
    timestamp: int
    node: ReplicaId

    def __init__(self, value: A, timestamp: int, node: ReplicaId) -> None:
        check_count("LWWRegister timestamp", timestamp)
        object.__setattr__(self, "val", value)
        object.__setattr__(self, "timestamp", timestamp)
        object.__setattr__(self, "node", check_replica(node))

    @classmethod
    def create(
        cls,
        node: ReplicaId,
        value: B,
        clock: Clock = default_clock,
        *,
        max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
    ) -> LWWRegister[B]:
        """A register holding ``value`` written by ``node`` now."""
        unset = LWWRegister(None, 0, check_replica(node))
        return unset._write(node, value, clock, max_clock_skew_ms)

    def _state(self) -> tuple[Any, ...]:
        return (self.val, self.timestamp, self.node)

    @property
    def value(self) -> A:
        """The value of the latest write."""
        return self.val

    def with_value(
        self,
        node: ReplicaId,
        value: A,
        clock: Clock = default_clock,
        *,
        max_clock_skew_ms: int = DEFAULT_MAX_CLOCK_SKEW_MS,
    ) -> LWWRegister[A]:
        """Write ``value`` on behalf of ``node`` with a timestamp from ``clock``."""
        return self._write(check_replica(node), value, clock, max_clock_skew_ms)

    def _write(
        self, node: ReplicaId, value: B, clock: Clock, max_clock_skew_ms: int
    ) -> LWWRegister[B]:
        timestamp = check_count("the clock's timestamp", clock(self.timestamp, value))
        limit = max(now_ms() + max_clock_skew_ms, self.timestamp + 1)
        if timestamp > limit:
            raise ValueError(
                f"timestamp {timestamp} is more than max_clock_skew_ms={max_clock_skew_ms} "
                "ahead of this node's clock"
            )
        return LWWRegister(value, timestamp, node)

    def check_clock_skew(self, now: int, max_clock_skew_ms: int) -> None:
        """Raise ``ValueError`` if the timestamp is too far ahead of ``now`` (data from a peer)."""
        if self.timestamp > now + max_clock_skew_ms:
            raise ValueError(
                f"LWWRegister timestamp {self.timestamp} is {self.timestamp - now} ms ahead of "
                f"this node's clock (max_clock_skew_ms={max_clock_skew_ms})"
            )

    def _order(self) -> tuple[int, ReplicaId, bytes]:
        return (self.timestamp, self.node, encode_tree(self.val))

    def merge(self, other: LWWRegister[A]) -> LWWRegister[A]:
        """The later write: the higher ``(timestamp, node)``, a full tie broken by the values'
        canonical bytes."""
        self._require_same_type(other)
        if (self.timestamp, self.node) != (other.timestamp, other.node):
            return self if (self.timestamp, self.node) > (other.timestamp, other.node) else other
        if self.val == other.val:
            return self
        return self if self._order() >= other._order() else other
