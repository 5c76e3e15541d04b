"""What a node says of itself: :class:`~thespian_dd.Stats` (counters, cheap, for metrics) and
:class:`~thespian_dd.Status` (peers, keys, store: for an operator), read from the parts."""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any

from thespian_dd._runtime.checks import Rejections
from thespian_dd._runtime.database import safe_url
from thespian_dd._runtime.durability import Durability
from thespian_dd._runtime.keys import KeyTable
from thespian_dd._runtime.membership import Membership
from thespian_dd._runtime.settings import Settings
from thespian_dd._runtime.subscriptions import Subscriptions
from thespian_dd.data import ReplicaId
from thespian_dd.messages import PeerStatus, Stats, Status

__all__ = ["Report"]


@dataclass
class Report:
    """The parts a report reads."""

    settings: Settings
    keys: KeyTable
    membership: Membership
    durability: Durability
    subscriptions: Subscriptions
    rejections: Rejections

    def incompatible(self) -> tuple[str, ...]:
        """The peers this node cannot talk to, each with why."""
        found = self.membership.versions.incompatible
        return tuple(f"{node}: {why}" for node, why in sorted(found.items()))

    def stats(self, node: ReplicaId, refused_rows: int, request: Any) -> Stats:
        durability, membership = self.durability, self.membership
        return Stats(
            node=str(node),
            keys=len(self.keys),
            peers=len(membership.peers),
            gossip_bytes_in=membership.bytes_in,
            gossip_bytes_out=membership.window.bytes_out,
            store_queue_depth=durability.queue_depth(),
            last_flush=durability.last_flush,
            recovery_time=durability.recovery_time,
            rejected_inputs=self.rejections.count,
            subscribers=len(self.subscriptions),
            reachable_peers=membership.peers.reachable_count(),
            gossip_rounds=membership.rounds,
            store_failures=durability.store_failures,
            store_error=durability.error,
            refused_rows=refused_rows,
            serving=durability.serving,
            incompatible_peers=self.incompatible(),
            request=request,
        )

    def status(self, node: ReplicaId, largest: int, request: Any) -> Status:
        durability, settings = self.durability, self.settings
        peers, versions = self.membership.peers, self.membership.versions
        sizes = list(self.keys.sizes())
        return Status(
            node=str(node),
            serving=durability.serving,
            loaded_rows=durability.loaded_rows,
            peers=tuple(
                PeerStatus(
                    p.replica.node,
                    str(p.replica),
                    str(p.address),
                    p.reachable,
                    round(peers.silence(p), 3),
                    versions.describe(p.replica.node),
                )
                for p in sorted(peers, key=lambda p: p.replica.node)
            ),
            removed=tuple(sorted(str(r) for r in peers.departed)),
            keys=len(self.keys),
            tombstones=self.keys.tombstones(),
            value_bytes=sum(size for _, size in sizes),
            largest=tuple(heapq.nlargest(largest, sizes, key=lambda ks: (ks[1], ks[0]))),
            store=safe_url(settings.store) if settings.store else None,
            write_mode=settings.write_mode,
            store_queue_depth=durability.queue_depth(),
            last_flush=durability.last_flush,
            store_error=durability.error,
            recovery_time=durability.recovery_time,
            incompatible_peers=self.incompatible(),
            request=request,
        )
