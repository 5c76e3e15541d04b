"""Anti-entropy: how two nodes find the keys they disagree on, and what one gossip message
carries.

Every ``gossip_interval`` each peer gets the digests of the key buckets (a GossipStatus); the
receiver answers the buckets that differ with its digests of their keys (GossipKeys); the first
node then sends the values that differ and asks for those it lacks (GossipEntries).  Values go
within a budget of bytes per message, smallest first, so one big value cannot hold back the
others; what does not fit goes in the next round.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["differing_buckets", "differing_keys", "within_budget"]


def differing_buckets(mine: Mapping[int, bytes], theirs: Mapping[Any, object]) -> frozenset[int]:
    """The buckets whose digests differ, or that only one side has (what the peer sent that is
    no bucket number comes back as it is; the peer's own lookup ignores it)."""
    return frozenset(b for b in set(mine) | set(theirs) if mine.get(b) != theirs.get(b))


def differing_keys(
    mine: Mapping[str, bytes], theirs: Mapping[Any, object]
) -> tuple[list[str], frozenset[str]]:
    """From the key digests of the same buckets on both sides: (the keys whose values to send,
    the keys whose values to ask for).  A key only one side has is in one of them; a key whose
    digests differ, in both."""
    send = [k for k, d in mine.items() if theirs.get(k) != d]
    want = frozenset(k for k, d in theirs.items() if isinstance(k, str) and mine.get(k) != d)
    return send, want


def within_budget(
    payloads: Iterable[tuple[str, bytes]], budget: int
) -> tuple[dict[str, bytes], list[str]]:
    """The payloads that one message carries within ``budget`` bytes, smallest first; a payload
    larger than the budget goes alone.  Also returns the keys sent over the budget."""
    entries: dict[str, bytes] = {}
    over: list[str] = []
    size = 0
    for key, payload in sorted(payloads, key=lambda kp: len(kp[1])):
        if entries and size + len(payload) > budget:
            break
        if len(payload) > budget:
            over.append(key)
        entries[key] = payload
        size += len(payload)
    return entries, over
