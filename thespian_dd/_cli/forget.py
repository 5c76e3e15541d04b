"""``python -m thespian_dd forget-node``: remove a node from a store, so it rejoins empty.

What the offline-bound refusal asks for: a node offline longer than
``durable_pruning_marker_ttl`` must not bring back the state its store holds (its peers may
have pruned those replicas).  Forgetting it removes its rows and its node record (incarnation,
last commit) in one transaction; started again, it takes a new incarnation and gets the data
from its peers.  Only for a stopped node: a running one would write its keys again.
"""

from __future__ import annotations

from collections.abc import Callable

from thespian_dd._runtime.database import safe_url
from thespian_dd._runtime.store import Store

__all__ = ["forget_node"]


def forget_node(url: str, node: str, out: Callable[[str], object]) -> int:
    """Remove ``node``'s rows and node record from the store at ``url`` (or ``file:PATH``);
    returns the exit status.  Raises :class:`~thespian_dd._runtime.database.StoreError` if the
    store cannot be opened (nothing is created) or has no such node."""
    store = Store(url, create=False)
    try:
        rows = store.forget(node)
    finally:
        store.close()
    out(f"forgot node {node} in {safe_url(url)}: {rows} rows removed, and its node record")
    return 0
