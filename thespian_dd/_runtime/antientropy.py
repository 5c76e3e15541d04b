"""Anti-entropy: how two nodes find the keys they disagree on, and what one gossip message
carries.

Every ``gossip_interval`` each peer gets the digests of the key buckets (a GossipStatus); the
receiver answers the buckets that differ with its digests of their keys (GossipKeys); the first
node then sends the values that differ and asks for those it lacks (GossipEntries).  Values go
within a budget of bytes per message, smallest first, so one big value cannot hold back the
others; what does not fit goes in the next round.

Versions: a status says the codec format its digests are in (the pair's, see
:mod:`thespian_dd._runtime.versions`), and the receiver compares its own digests in that format,
so two nodes of different releases that hold equal values find them equal; values are sent in
the format the pair uses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from thespian_dd import codec
from thespian_dd._runtime.checks import Rejections, seconds
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.protocol import (
    PROTOCOL_VERSION,
    GossipEntries,
    GossipKeys,
    GossipStatus,
    PeerMessage,
)
from thespian_dd.data import ReplicaId

__all__ = ["AntiEntropy", "differing_buckets", "differing_keys", "within_budget"]


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


Merge = Callable[[object, object, str, object], bool]
"""``merge(key, payload, origin, used)``: merge a peer's value; returns whether it changed."""

Reply = Callable[[PeerMessage], None]
"""Send a message to the peer whose message is being answered."""


class AntiEntropy:
    """One node's side of the exchange, over its key table.  ``me()`` is the node's current
    replica; ``merge`` merges what a peer sends; ``budget``: ``max_gossip_bytes``;
    ``format_for(node)``: the codec format of values sent to that peer."""

    def __init__(  # noqa: PLR0913, PLR0917 - the table, four callbacks and a budget
        self,
        keys: KeyTable,
        me: Callable[[], ReplicaId],
        merge: Merge,
        budget: int,
        rejections: Rejections,
        format_for: Callable[[str], int] = lambda _node: codec.FORMAT_VERSION,
    ) -> None:
        self._keys = keys
        self._me = me
        self._merge = merge
        self._budget = budget
        self._rejections = rejections
        self._format_for = format_for

    def status(
        self,
        directory: dict[str, tuple[ReplicaId, Any]],
        version: int = codec.FORMAT_VERSION,
        used: dict[str, float] | None = None,
        versions: dict[str, tuple[int, ...]] | None = None,
    ) -> GossipStatus:
        """This round's status: the bucket digests in format ``version``, the peer directory,
        the keys that expire used here since the last status (``used``: taken already, for
        statuses in several formats), and the versions this node speaks."""
        buckets = self._keys.buckets(version)
        used = self._keys.take_used_here() if used is None else used
        return GossipStatus(
            PROTOCOL_VERSION,
            self._me(),
            buckets,
            directory,
            used,
            versions=versions,
            format=version,
        )

    def on_status(self, msg: GossipStatus, reply: Reply) -> None:
        """A peer's status: note when it used keys, and answer the buckets that differ with the
        digests of their keys here."""
        if not isinstance(msg.buckets, dict):
            return
        if isinstance(msg.used, dict):
            for key, at in msg.used.items():
                if key in self._keys and (when := seconds(at)) is not None:
                    self._keys.touch(key, when)
        version = msg.format
        if version not in codec.FORMAT_VERSIONS:
            return  # digests this node cannot compute: no pair uses such a format
        differ = differing_buckets(self._keys.buckets(version), msg.buckets)
        if differ:
            digests = self._keys.digests_in(differ, version)
            reply(GossipKeys(PROTOCOL_VERSION, self._me(), digests, differ, format=version))

    def on_keys(self, msg: GossipKeys, reply: Reply) -> None:
        """A peer's key digests of the buckets that differ: send the values that differ, and
        ask for those it has and this node lacks or holds otherwise."""
        if not isinstance(msg.digests, dict) or msg.format not in codec.FORMAT_VERSIONS:
            return
        send, want = differing_keys(self._keys.digests_in(msg.buckets, msg.format), msg.digests)
        self.send_entries(send, want, reply, self._format_for(msg.sender.node))

    def on_entries(self, msg: GossipEntries, reply: Reply | None) -> None:
        """A peer's values: merge them, and send the values it asked for (``reply`` None: a
        sender not in the peer table, which gets none)."""
        if not isinstance(msg.entries, dict):
            return
        used = msg.used if isinstance(msg.used, dict) else {}
        for key, payload in msg.entries.items():
            self._merge(key, payload, str(msg.sender), used.get(key))
        if msg.want and reply is not None:
            wanted = [k for k in msg.want if isinstance(k, str)]
            self.send_entries(wanted, frozenset(), reply, self._format_for(msg.sender.node))

    def send_entries(
        self,
        keys: list[str],
        want: frozenset[str],
        reply: Reply,
        version: int = codec.FORMAT_VERSION,
    ) -> None:
        """Send the values of ``keys`` in format ``version`` within the budget (the rest goes
        next round), and ask for ``want``."""
        payloads = [(k, p) for k in keys if (p := self._keys.payload(k, version)) is not None]
        entries, over = within_budget(payloads, self._budget)
        for key in over:
            self._rejections.warn_once(
                "budget",
                key,
                "value of %r (%d bytes) exceeds max_gossip_bytes: sent alone",
                key,
                len(entries[key]),
            )
        if entries or want:
            used = self._keys.used(entries)
            reply(GossipEntries(PROTOCOL_VERSION, self._me(), entries, want, used))
